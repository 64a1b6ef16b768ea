
/*
 * nginx-llm-gateway: the provider request on top of ngx_http_upstream.
 *
 * The request to the provider is built by the provider's format; the
 * reply is read as HTTP/1.1 (content length, chunked, or until close) and
 * passed to the client without buffering, so that every SSE event of a
 * stream reaches the client as soon as it arrives.  The bytes of a stream
 * also go through the SSE parser, which hands each event to the format.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_reinit_request(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_process_status_line(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_process_header(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_interim_reply(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static void ngx_http_llm_hop_headers(ngx_http_request_t *r);
static ngx_uint_t ngx_http_llm_wait_body(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_process_body_start(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_error_body(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *body);
static ngx_uint_t ngx_http_llm_error_type(ngx_str_t *body);
static ngx_int_t ngx_http_llm_error_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_error_field(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_reply_ready(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_send_filter(void *data, ngx_chain_t *in);
static void ngx_http_llm_backoff_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_llm_input_filter_init(void *data);
static ngx_int_t ngx_http_llm_copy_filter(void *data, ssize_t bytes);
static ngx_int_t ngx_http_llm_drain(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ssize_t bytes);
static void ngx_http_llm_drain_check(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_chunked_filter(void *data, ssize_t bytes);
static ngx_int_t ngx_http_llm_output(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *pos, u_char *last, ngx_chain_t ***ll);
static void ngx_http_llm_reply_type(ngx_http_request_t *r);
static void ngx_http_llm_abort_request(ngx_http_request_t *r);
static void ngx_http_llm_finalize_request(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_uint_t ngx_http_llm_header_in(ngx_str_t *names,
    ngx_table_elt_t *h);
static ngx_uint_t ngx_http_llm_forward_header(ngx_http_llm_loc_conf_t *llcf,
    ngx_http_llm_provider_t *p,
    ngx_table_elt_t *h);


#define NGX_HTTP_LLM_WAIT_NONE     0
#define NGX_HTTP_LLM_WAIT_FIRST    1    /* a stream's first byte */
#define NGX_HTTP_LLM_WAIT_ERROR    2    /* an error reply's whole body */


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   error;
} ngx_http_llm_error_name_t;


/* error types and codes, as providers name them in error.type/code/status */

static ngx_http_llm_error_name_t  ngx_http_llm_error_names[] = {
    { ngx_string("context_length_exceeded"), NGX_HTTP_LLM_ERROR_CONTEXT },
    { ngx_string("insufficient_quota"), NGX_HTTP_LLM_ERROR_QUOTA },
    { ngx_string("overloaded_error"), NGX_HTTP_LLM_ERROR_OVERLOADED },
    { ngx_null_string, 0 }
};


/* how providers word a context error when they give it no type of its own */

static ngx_str_t  ngx_http_llm_context_messages[] = {
    ngx_string("maximum context length"),
    ngx_string("prompt is too long"),
    ngx_string("exceeds the maximum number of tokens"),
    ngx_string("context_length_exceeded"),
    ngx_null_string
};


/* client headers that never reach a provider */

static ngx_str_t  ngx_http_llm_skip_headers[] = {
    ngx_string("host"),
    ngx_string("connection"),
    ngx_string("keep-alive"),
    ngx_string("proxy-connection"),
    ngx_string("content-length"),
    ngx_string("content-type"),
    ngx_string("transfer-encoding"),
    ngx_string("te"),
    ngx_string("trailer"),
    ngx_string("upgrade"),
    ngx_string("expect"),
    ngx_string("accept-encoding"),
    ngx_string("authorization"),
    ngx_string("proxy-authorization"),
    ngx_string("cookie"),
    ngx_string("x-api-key"),
    ngx_string("api-key"),
    ngx_string("x-goog-api-key"),
    ngx_string("openai-organization"),
    ngx_string("openai-project"),
    ngx_string("content-encoding"),
    ngx_string("x-http-method-override"),
    ngx_string("x-http-method"),
    ngx_string("x-method-override"),
    ngx_null_string
};


/* client headers that say who the client is: llm_pass_forwarded */

static ngx_str_t  ngx_http_llm_forwarded_headers[] = {
    ngx_string("forwarded"),
    ngx_string("x-forwarded-for"),
    ngx_string("x-forwarded-host"),
    ngx_string("x-forwarded-proto"),
    ngx_string("x-real-ip"),
    ngx_null_string
};


void
ngx_http_llm_upstream_start(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_upstream_t      *u;
    ngx_http_llm_provider_t  *p;

    if (ngx_http_upstream_create(r) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    u = r->upstream;
    p = ctx->provider;

    ngx_http_llm_upstream_provider(r, ctx);

    u->output.tag = (ngx_buf_tag_t) &ngx_http_llm_module;
    u->output.output_filter = ngx_http_llm_send_filter;
    u->output.filter_ctx = r;

    u->create_request = ngx_http_llm_create_request;
    u->reinit_request = ngx_http_llm_reinit_request;
    u->process_header = ngx_http_llm_process_status_line;
    u->abort_request = ngx_http_llm_abort_request;
    u->finalize_request = ngx_http_llm_finalize_request;

    u->input_filter_init = ngx_http_llm_input_filter_init;
    u->input_filter = ngx_http_llm_copy_filter;
    u->input_filter_ctx = r;

    u->buffering = 0;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm request: provider \"%V\", model \"%V\", stream %ui",
                   &p->name, &ctx->upstream_model, (ngx_uint_t) ctx->stream);

    ngx_http_upstream_init(r);
}


/* the upstream settings of the provider of the current attempt */

void
ngx_http_llm_upstream_provider(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_upstream_t      *u;
    ngx_http_llm_provider_t  *p;

    u = r->upstream;
    p = ctx->provider;

    /* a stream: the first byte within the first_byte_timeout */

    u->conf = ctx->stream ? ctx->attempt[ctx->current].peer->conf_first
                          : ctx->attempt[ctx->current].peer->conf;

#if (NGX_HTTP_SSL)
    u->ssl = p->ssl;
#endif

    if (p->ssl) {
        ngx_str_set(&u->schema, "https://");

    } else {
        ngx_str_set(&u->schema, "http://");
    }
}


ngx_int_t
ngx_http_llm_create_request(ngx_http_request_t *r)
{
    size_t                    len;
    off_t                     body_len;
    ngx_buf_t                *b;
    ngx_str_t                 path, headers;
    ngx_uint_t                i;
    ngx_chain_t              *cl, *body;
    ngx_list_part_t          *part;
    ngx_table_elt_t          *h;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_provider_t  *p;
    ngx_http_llm_loc_conf_t  *llcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    p = ctx->provider;

    ngx_str_null(&headers);

    if (p->format->create_request(r, ctx, &path, &headers, &body) != NGX_OK) {
        return NGX_ERROR;
    }

    body_len = 0;

    for (cl = body; cl; cl = cl->next) {
        body_len += ngx_buf_size(cl->buf);
    }

    len = sizeof("POST  HTTP/1.1" CRLF) - 1 + path.len
          + p->fixed_headers.len + headers.len
          + sizeof("Content-Type: application/json" CRLF) - 1
          + sizeof("Content-Length: " CRLF) - 1 + NGX_OFF_T_LEN
          + sizeof(CRLF) - 1;

    if (llcf->pass_request_headers) {
        part = &r->headers_in.headers.part;
        h = part->elts;

        for (i = 0; /* void */; i++) {

            if (i >= part->nelts) {
                if (part->next == NULL) {
                    break;
                }

                part = part->next;
                h = part->elts;
                i = 0;
            }

            if (ngx_http_llm_forward_header(llcf, p, &h[i])) {
                len += h[i].key.len + sizeof(": " CRLF) - 1 + h[i].value.len;
            }
        }
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "POST %V HTTP/1.1" CRLF, &path);
    b->last = ngx_cpymem(b->last, p->fixed_headers.data,
                         p->fixed_headers.len);
    if (headers.len) {
        b->last = ngx_cpymem(b->last, headers.data, headers.len);
    }

    b->last = ngx_sprintf(b->last,
                          "Content-Type: application/json" CRLF
                          "Content-Length: %O" CRLF, body_len);

    if (llcf->pass_request_headers) {
        part = &r->headers_in.headers.part;
        h = part->elts;

        for (i = 0; /* void */; i++) {

            if (i >= part->nelts) {
                if (part->next == NULL) {
                    break;
                }

                part = part->next;
                h = part->elts;
                i = 0;
            }

            if (ngx_http_llm_forward_header(llcf, p, &h[i])) {
                b->last = ngx_sprintf(b->last, "%V: %V" CRLF,
                                      &h[i].key, &h[i].value);
            }
        }
    }

    *b->last++ = CR; *b->last++ = LF;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = body;

    r->upstream->request_bufs = cl;

    /* the last buffer flushes the request out, through TLS too */

    while (cl->next) {
        cl = cl->next;
    }

    cl->buf->flush = 1;

    /* the provider key is in the buffer: nothing of it is logged */

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm provider request: POST %V%V, %O bytes of body",
                   &p->host, &path, body_len);

    return NGX_OK;
}


/*
 * A client header goes to the provider unless it is one of those above,
 * or one that the provider's "header" lines set.
 */

static ngx_uint_t
ngx_http_llm_forward_header(ngx_http_llm_loc_conf_t *llcf,
    ngx_http_llm_provider_t *p, ngx_table_elt_t *h)
{
    if (h->hash == 0
        || ngx_http_llm_header_in(ngx_http_llm_skip_headers, h)
        || (!llcf->pass_forwarded
            && ngx_http_llm_header_in(ngx_http_llm_forwarded_headers, h)))
    {
        return 0;
    }

    return !ngx_http_llm_provider_has_header(p, h->lowcase_key, h->key.len);
}


static ngx_uint_t
ngx_http_llm_header_in(ngx_str_t *names, ngx_table_elt_t *h)
{
    ngx_str_t  *s;

    for (s = names; s->len; s++) {
        if (s->len == h->key.len
            && ngx_strncmp(s->data, h->lowcase_key, s->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_llm_reinit_request(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        return NGX_OK;
    }

    /* the header parsers' state, of a header that the last attempt cut */

    r->state = 0;

    ngx_memzero(&ctx->status, sizeof(ngx_http_status_t));
    ngx_memzero(&ctx->chunked, sizeof(ngx_http_chunked_t));

    ctx->sse.state = 0;
    ctx->sse.len = 0;
    ctx->sse.ref = NULL;
    ctx->sse.has_data = 0;
    ctx->sse.truncated = 0;
    ctx->sse.pending = 0;
    ctx->done = 0;

    ngx_memzero(&ctx->capture, sizeof(ngx_http_llm_capture_t));
    ctx->hold_len = 0;

    if (ctx->memo) {
        ctx->memo->len = 0;
    }

    ngx_memzero(&ctx->raw, sizeof(ngx_http_llm_usage_raw_t));
    ctx->events = 0;
    ctx->received = 0;
    ctx->first_byte = 0;

    ctx->body_start = NULL;
    ctx->wait_body = NGX_HTTP_LLM_WAIT_NONE;
    ctx->retry_reply = 0;
    ctx->bad_reply = 0;

    /* a request held back for an attempt that failed meanwhile */

    ctx->backoff_out = NULL;

    if (ctx->backoff.timer_set) {
        ngx_del_timer(&ctx->backoff);
    }

    r->upstream->process_header = ngx_http_llm_process_status_line;
    r->upstream->input_filter = ngx_http_llm_copy_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_process_status_line(ngx_http_request_t *r)
{
    size_t                len;
    ngx_int_t             rc;
    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        return NGX_ERROR;
    }

    u = r->upstream;

    rc = ngx_http_parse_status_line(r, &u->buffer, &ctx->status);

    if (rc == NGX_AGAIN) {
        return rc;
    }

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm provider \"%V\" sent no valid HTTP/1.x header",
                      &ctx->provider->name);
        ctx->bad_reply = 1;
        return NGX_HTTP_UPSTREAM_INVALID_HEADER;
    }

    if (u->state && u->state->status == 0) {
        u->state->status = ctx->status.code;
    }

    u->headers_in.status_n = ctx->status.code;

    len = ctx->status.end - ctx->status.start;
    u->headers_in.status_line.len = len;

    u->headers_in.status_line.data = ngx_pnalloc(r->pool, len);
    if (u->headers_in.status_line.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(u->headers_in.status_line.data, ctx->status.start, len);

    if (ctx->status.http_version < NGX_HTTP_VERSION_11) {
        u->headers_in.connection_close = 1;
    }

    u->process_header = ngx_http_llm_process_header;

    return ngx_http_llm_process_header(r);
}


static ngx_int_t
ngx_http_llm_process_header(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_table_elt_t                *h;
    ngx_http_llm_ctx_t             *ctx;
    ngx_http_upstream_t            *u;
    ngx_http_upstream_header_t     *hh;
    ngx_http_upstream_main_conf_t  *umcf;

    umcf = ngx_http_get_module_main_conf(r, ngx_http_upstream_module);
    u = r->upstream;

    for ( ;; ) {

        rc = ngx_http_parse_header_line(r, &u->buffer, 1);

        if (rc == NGX_OK) {

            h = ngx_list_push(&u->headers_in.headers);
            if (h == NULL) {
                return NGX_ERROR;
            }

            h->hash = r->header_hash;

            h->key.len = r->header_name_end - r->header_name_start;
            h->value.len = r->header_end - r->header_start;

            h->key.data = ngx_pnalloc(r->pool,
                               h->key.len + 1 + h->value.len + 1 + h->key.len);
            if (h->key.data == NULL) {
                h->hash = 0;
                return NGX_ERROR;
            }

            h->value.data = h->key.data + h->key.len + 1;
            h->lowcase_key = h->key.data + h->key.len + 1 + h->value.len + 1;

            ngx_memcpy(h->key.data, r->header_name_start, h->key.len);
            h->key.data[h->key.len] = '\0';
            ngx_memcpy(h->value.data, r->header_start, h->value.len);
            h->value.data[h->value.len] = '\0';

            if (h->key.len == r->lowcase_index) {
                ngx_memcpy(h->lowcase_key, r->lowcase_header, h->key.len);

            } else {
                ngx_strlow(h->lowcase_key, h->key.data, h->key.len);
            }

            hh = ngx_hash_find(&umcf->headers_in_hash, h->hash,
                               h->lowcase_key, h->key.len);

            if (hh && hh->handler(r, h, hh->offset) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (rc == NGX_HTTP_PARSE_HEADER_DONE) {

            ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

            if (u->headers_in.status_n < NGX_HTTP_OK) {
                return ngx_http_llm_interim_reply(r, ctx);
            }

            ngx_http_llm_hop_headers(r);
            ngx_http_llm_reply_type(r);

            if (u->headers_in.chunked) {
                u->headers_in.content_length_n = -1;
            }

            /*
             * The length of the reply is the provider's; the client gets
             * another one when the events of a stream are edited.
             */

            ctx->length = u->headers_in.content_length_n;

            if (ctx->sse_reply && ctx->strip_usage
                && u->headers_in.status_n == NGX_HTTP_OK)
            {
                u->headers_in.content_length_n = -1;
            }

            if (u->headers_in.status_n == NGX_HTTP_NO_CONTENT
                || u->headers_in.status_n == NGX_HTTP_NOT_MODIFIED
                || (!u->headers_in.chunked
                    && u->headers_in.content_length_n == 0))
            {
                u->keepalive = !u->headers_in.connection_close;
            }

            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "llm provider status %ui",
                           u->headers_in.status_n);

            ctx->body_start = u->buffer.pos;
            ctx->wait_body = ngx_http_llm_wait_body(r, ctx);

            if (ctx->wait_body == NGX_HTTP_LLM_WAIT_NONE) {
                return ngx_http_llm_reply_ready(r, ctx);
            }

            u->process_header = ngx_http_llm_process_body_start;

            return ngx_http_llm_process_body_start(r);
        }

        if (rc == NGX_AGAIN) {
            return NGX_AGAIN;
        }

        /* rc == NGX_HTTP_PARSE_INVALID_HEADER */

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm provider sent invalid header: \"%*s\\x%02xd...\"",
                      r->header_end - r->header_name_start,
                      r->header_name_start, *r->header_end);

        ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
        ctx->bad_reply = 1;

        return NGX_HTTP_UPSTREAM_INVALID_HEADER;
    }
}


/*
 * A 1xx reply is interim: 100 Continue, 102 Processing and 103 Early
 * Hints are skipped, and the final reply is read after them (its header
 * still has to fit in buffer_size); 101 would switch the connection to
 * another protocol, which no provider may do: an invalid reply.
 */

static ngx_int_t
ngx_http_llm_interim_reply(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_upstream_t  *u;

    u = r->upstream;

    if (u->headers_in.status_n == NGX_HTTP_SWITCHING_PROTOCOLS
        || u->headers_in.status_n < 100)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm provider \"%V\" sent status %ui, which a provider "
                      "may not send", &ctx->provider->name,
                      u->headers_in.status_n);
        ctx->bad_reply = 1;
        return NGX_HTTP_UPSTREAM_INVALID_HEADER;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm provider interim reply %ui skipped",
                   u->headers_in.status_n);

    ngx_memzero(&u->headers_in, sizeof(ngx_http_upstream_headers_in_t));
    u->headers_in.content_length_n = -1;
    u->headers_in.last_modified_time = -1;

    if (ngx_list_init(&u->headers_in.headers, r->pool, 8,
                      sizeof(ngx_table_elt_t))
        != NGX_OK
        || ngx_list_init(&u->headers_in.trailers, r->pool, 2,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (u->state) {
        u->state->status = 0;
    }

    ngx_memzero(&ctx->status, sizeof(ngx_http_status_t));

    u->process_header = ngx_http_llm_process_status_line;

    return ngx_http_llm_process_status_line(r);
}


/*
 * The headers that the provider's Connection header names are hop-by-hop:
 * they do not reach the client (a header of hash 0 is not sent).
 */

static void
ngx_http_llm_hop_headers(ngx_http_request_t *r)
{
    u_char               *p, *last, *start;
    size_t                len;
    ngx_uint_t            i;
    ngx_list_part_t      *part;
    ngx_table_elt_t      *h;
    ngx_http_upstream_t  *u;

    u = r->upstream;

    if (u->headers_in.connection == NULL) {
        return;
    }

    p = u->headers_in.connection->value.data;
    last = p + u->headers_in.connection->value.len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ' ' && *p != '\t' && *p != ',') {
            p++;
        }

        len = p - start;

        if (len == 0
            || (len == 5 && ngx_strncasecmp(start, (u_char *) "close", 5)
                            == 0)
            || (len == 10
                && ngx_strncasecmp(start, (u_char *) "keep-alive", 10) == 0))
        {
            continue;
        }

        part = &u->headers_in.headers.part;
        h = part->elts;

        for (i = 0; /* void */; i++) {

            if (i >= part->nelts) {
                if (part->next == NULL) {
                    break;
                }

                part = part->next;
                h = part->elts;
                i = 0;
            }

            if (h[i].key.len == len
                && ngx_strncasecmp(h[i].key.data, start, len) == 0
                && &h[i] != u->headers_in.content_type
                && &h[i] != u->headers_in.content_length)
            {
                h[i].hash = 0;
            }
        }
    }
}


/*
 * What of the reply's body the gateway waits for before the reply goes to
 * the client: the first byte of a stream (a provider that sends its header
 * and stalls is retried, within the first_byte_timeout), and the whole
 * body of an error that another attempt may follow (its error type may be
 * retried).  A body that ends only when the provider closes is not waited
 * for.
 */

static ngx_uint_t
ngx_http_llm_wait_body(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t            status;
    ngx_http_upstream_t  *u;

    u = r->upstream;
    status = u->headers_in.status_n;

    if (status == NGX_HTTP_NO_CONTENT || status == NGX_HTTP_NOT_MODIFIED
        || (!u->headers_in.chunked && ctx->length == 0))
    {
        return NGX_HTTP_LLM_WAIT_NONE;
    }

    if (status >= 200 && status < 300) {
        return ctx->stream ? NGX_HTTP_LLM_WAIT_FIRST : NGX_HTTP_LLM_WAIT_NONE;
    }

    if (status >= NGX_HTTP_BAD_REQUEST
        && ctx->current + 1 < ctx->nattempts
        && (u->headers_in.chunked || ctx->length > 0))
    {
        return NGX_HTTP_LLM_WAIT_ERROR;
    }

    return NGX_HTTP_LLM_WAIT_NONE;
}


static ngx_int_t
ngx_http_llm_process_body_start(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_str_t             body;
    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;

    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    /* a full buffer: what is in goes on */

    if (u->buffer.last != u->buffer.end) {

        if (ctx->wait_body == NGX_HTTP_LLM_WAIT_FIRST) {
            if (u->buffer.last == ctx->body_start) {
                return NGX_AGAIN;
            }

        } else {
            rc = ngx_http_llm_error_body(r, ctx, &body);

            if (rc == NGX_AGAIN) {
                return NGX_AGAIN;
            }

            if (rc == NGX_OK) {
                ctx->attempt[ctx->current].error =
                                               ngx_http_llm_error_type(&body);
            }
        }
    }

    u->buffer.pos = ctx->body_start;

    return ngx_http_llm_reply_ready(r, ctx);
}


/*
 * The body of an error reply, once all of it is in; NGX_AGAIN before,
 * NGX_DECLINED if it cannot be read.
 */

static ngx_int_t
ngx_http_llm_error_body(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *body)
{
    u_char               *p;
    size_t                n;
    ngx_int_t             rc;
    ngx_buf_t             b;
    ngx_http_chunked_t    chunked;
    ngx_http_upstream_t  *u;

    u = r->upstream;

    if (!u->headers_in.chunked) {

        if (u->buffer.last - ctx->body_start < ctx->length) {
            return NGX_AGAIN;
        }

        body->data = ctx->body_start;
        body->len = (size_t) ctx->length;

        return NGX_OK;
    }

    /* the chunks, joined */

    body->data = ngx_pnalloc(r->pool, u->buffer.last - ctx->body_start);
    if (body->data == NULL) {
        return NGX_DECLINED;
    }

    p = body->data;

    ngx_memzero(&b, sizeof(ngx_buf_t));
    ngx_memzero(&chunked, sizeof(ngx_http_chunked_t));

    b.pos = ctx->body_start;
    b.last = u->buffer.last;

    for ( ;; ) {

        rc = ngx_http_parse_chunked(r, &b, &chunked);

        if (rc == NGX_OK) {
            n = ngx_min((off_t) (b.last - b.pos), chunked.size);

            p = ngx_cpymem(p, b.pos, n);
            b.pos += n;
            chunked.size -= n;

            continue;
        }

        if (rc == NGX_DONE) {
            body->len = p - body->data;
            return NGX_OK;
        }

        if (rc == NGX_AGAIN) {
            return NGX_AGAIN;
        }

        return NGX_DECLINED;
    }
}


/* the error type of an error reply: from its error object, or its wording */

static ngx_uint_t
ngx_http_llm_error_type(ngx_str_t *body)
{
    ngx_str_t   *m;
    ngx_uint_t   error;

    error = NGX_HTTP_LLM_ERROR_NONE;

    (void) ngx_http_llm_json_object(body->data, body->data + body->len,
                                    ngx_http_llm_error_member, &error);

    if (error != NGX_HTTP_LLM_ERROR_NONE) {
        return error;
    }

    for (m = ngx_http_llm_context_messages; m->len; m++) {
        if (ngx_strlcasestrn(body->data, body->data + body->len, m->data,
                             m->len - 1)
            != NULL)
        {
            return NGX_HTTP_LLM_ERROR_CONTEXT;
        }
    }

    return NGX_HTTP_LLM_ERROR_NONE;
}


static ngx_int_t
ngx_http_llm_error_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    if (key->len == sizeof("error") - 1
        && ngx_strncmp(key->data, "error", key->len) == 0
        && v->type == NGX_HTTP_LLM_JSON_OBJECT)
    {
        (void) ngx_http_llm_json_object(v->start, v->end,
                                        ngx_http_llm_error_field, data);
    }

    return NGX_OK;
}


/* "type", "code" (OpenAI, Anthropic) and "status" (Gemini) of an error */

static ngx_int_t
ngx_http_llm_error_field(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_uint_t *error = data;

    size_t                      len;
    ngx_http_llm_error_name_t  *e;

    if (v->type != NGX_HTTP_LLM_JSON_STRING || v->escaped
        || !((key->len == 4 && ngx_strncmp(key->data, "type", 4) == 0)
             || (key->len == 4 && ngx_strncmp(key->data, "code", 4) == 0)
             || (key->len == 6 && ngx_strncmp(key->data, "status", 6) == 0)))
    {
        return NGX_OK;
    }

    len = v->end - v->start - 2;

    for (e = ngx_http_llm_error_names; e->name.len; e++) {
        if (e->name.len == len
            && ngx_strncasecmp(e->name.data, v->start + 1, len) == 0)
        {
            *error = e->error;
            break;
        }
    }

    return NGX_OK;
}


/*
 * The reply is in, as far as the gateway waits for it: is it retried?
 * Statuses among nginx's triggers (429, 5xx) nginx retries itself while
 * the tries say that an attempt may follow; a 529 and error types the
 * gateway retries, as an invalid header.  A context_length_exceeded goes
 * to the route's context fallbacks, if any may take it.
 */

static ngx_int_t
ngx_http_llm_reply_ready(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                next;
    ngx_uint_t               retry;
    ngx_http_upstream_t     *u;
    ngx_http_llm_route_t    *route;
    ngx_http_llm_attempt_t  *a;

    u = r->upstream;
    route = ctx->route;
    a = &ctx->attempt[ctx->current];

    a->status = u->headers_in.status_n;
    a->retry_after = ngx_http_llm_retry_after(r);

    /* the breaker first: the next attempt is chosen as it leaves it */

    a->failed = ngx_http_llm_attempt_failed(a);
    a->reported = 1;

    ngx_http_llm_breaker_report(r, a->peer->provider,
                                a->failed ? NGX_HTTP_LLM_ATTEMPT_FAILED
                                          : NGX_HTTP_LLM_ATTEMPT_OK,
                                a->retry_after);

    /* a success goes on at once */

    if (a->status < NGX_HTTP_SPECIAL_RESPONSE) {
        u->conf = a->peer->conf;
        return NGX_OK;
    }

    retry = (a->status == 529 && (route->retry & NGX_HTTP_LLM_RETRY_529))
            || (a->error && (route->retry & ngx_http_llm_error_bit(a->error)));

    next = -1;

    if (a->error == NGX_HTTP_LLM_ERROR_CONTEXT && route->context
        && !ctx->context)
    {
        ctx->context = 1;

        next = ngx_http_llm_next_attempt(r, ctx);

        if (next >= 0) {
            retry = 1;

        } else {
            ctx->context = 0;
        }
    }

    if (next < 0) {
        next = ngx_http_llm_next_attempt(r, ctx);
    }

    u->peer.tries = (next >= 0) ? 2 : 1;

    if (retry && next >= 0
        && !(route->timeout
             && ngx_current_msec - u->peer.start_time >= route->timeout))
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm provider \"%V\" answered %ui%s, retrying",
                      &ctx->provider->name, a->status,
                      a->error == NGX_HTTP_LLM_ERROR_CONTEXT
                      ? " context_length_exceeded"
                      : a->error == NGX_HTTP_LLM_ERROR_QUOTA
                        ? " insufficient_quota"
                        : a->error == NGX_HTTP_LLM_ERROR_OVERLOADED
                          ? " overloaded_error" : "");

        ctx->retry_reply = 1;

        return NGX_HTTP_UPSTREAM_INVALID_HEADER;
    }

    /* the reply goes on: between its bytes, the provider's read timeout */

    u->conf = a->peer->conf;

    return NGX_OK;
}


/*
 * The request to a provider tried before is held back until its backoff
 * is over, on the connection made for it; then it goes out.
 */

static ngx_int_t
ngx_http_llm_send_filter(void *data, ngx_chain_t *in)
{
    ngx_http_request_t *r = data;

    ngx_chain_t          *cl, **ll;
    ngx_msec_int_t        wait;
    ngx_http_llm_ctx_t   *ctx;
    ngx_http_upstream_t  *u;

    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx->backoff_until == 0 && ctx->backoff_out == NULL) {
        return ngx_chain_writer(&u->writer, in);
    }

    for (ll = &ctx->backoff_out; *ll; ll = &(*ll)->next) { /* void */ }

    for ( /* void */ ; in; in = in->next) {
        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = in->buf;
        cl->next = NULL;

        *ll = cl;
        ll = &cl->next;
    }

    wait = (ngx_msec_int_t) (ctx->backoff_until - ngx_current_msec);

    if (ctx->backoff_until && wait > 0) {

        if (!ctx->backoff.timer_set) {
            ctx->backoff.handler = ngx_http_llm_backoff_handler;
            ctx->backoff.data = r;
            ctx->backoff.log = r->connection->log;

            ngx_add_timer(&ctx->backoff, (ngx_msec_t) wait);
        }

        return NGX_AGAIN;
    }

    ctx->backoff_until = 0;

    cl = ctx->backoff_out;
    ctx->backoff_out = NULL;

    return ngx_chain_writer(&u->writer, cl);
}


static void
ngx_http_llm_backoff_handler(ngx_event_t *ev)
{
    ngx_http_request_t *r = ev->data;

    ngx_connection_t  *c;

    if (r->upstream == NULL || r->upstream->peer.connection == NULL) {
        return;
    }

    c = r->upstream->peer.connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm backoff over, sending the request");

    ngx_post_event(c->write, &ngx_posted_events);
}


static ngx_int_t
ngx_http_llm_input_filter_init(void *data)
{
    ngx_http_request_t   *r = data;

    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;

    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (u->headers_in.status_n == NGX_HTTP_NO_CONTENT
        || u->headers_in.status_n == NGX_HTTP_NOT_MODIFIED)
    {
        u->length = 0;
        u->keepalive = !u->headers_in.connection_close;

    } else if (u->headers_in.chunked) {
        ngx_memzero(&ctx->chunked, sizeof(ngx_http_chunked_t));
        u->input_filter = ngx_http_llm_chunked_filter;
        u->length = 1;

    } else if (ctx->length == 0) {
        u->length = 0;
        u->keepalive = !u->headers_in.connection_close;

    } else {
        /* the length, or -1: until the provider closes */
        u->length = ctx->length;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_copy_filter(void *data, ssize_t bytes)
{
    ngx_http_request_t   *r = data;

    u_char               *pos, *last;
    ngx_chain_t          *cl, **ll;
    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;

    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (u->length == 0) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm provider sent more data than specified in "
                      "\"Content-Length\" header");
        u->keepalive = 0;
        return NGX_OK;
    }

    pos = u->buffer.last;
    u->buffer.last += bytes;
    last = u->buffer.last;

    if (u->length != -1) {

        if (bytes > u->length) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "llm provider sent more data than specified in "
                          "\"Content-Length\" header");

            last = pos + u->length;
            u->length = 0;

        } else {
            u->length -= bytes;

            if (u->length == 0) {
                u->keepalive = !u->headers_in.connection_close;
            }
        }
    }

    for (cl = u->out_bufs, ll = &u->out_bufs; cl; cl = cl->next) {
        ll = &cl->next;
    }

    if (ngx_http_llm_output(r, ctx, pos, last, &ll) != NGX_OK) {
        return NGX_ERROR;
    }

    if (u->length == 0 && ctx->sse_reply
        && ngx_http_llm_stream_end(r, ctx, &ll) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_drain(r, ctx, bytes);
}


static ngx_int_t
ngx_http_llm_chunked_filter(void *data, ssize_t bytes)
{
    ngx_http_request_t   *r = data;

    u_char               *pos;
    ngx_int_t             rc;
    ngx_buf_t            *buf;
    ngx_chain_t          *cl, **ll;
    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;

    u = r->upstream;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    buf = &u->buffer;

    buf->pos = buf->last;
    buf->last += bytes;

    for (cl = u->out_bufs, ll = &u->out_bufs; cl; cl = cl->next) {
        ll = &cl->next;
    }

    for ( ;; ) {

        rc = ngx_http_parse_chunked(r, buf, &ctx->chunked);

        if (rc == NGX_OK) {

            pos = buf->pos;

            if (buf->last - buf->pos >= ctx->chunked.size) {
                buf->pos += (size_t) ctx->chunked.size;
                ctx->chunked.size = 0;

            } else {
                ctx->chunked.size -= buf->last - buf->pos;
                buf->pos = buf->last;
            }

            if (ngx_http_llm_output(r, ctx, pos, buf->pos, &ll) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (rc == NGX_DONE) {

            u->keepalive = !u->headers_in.connection_close;
            u->length = 0;

            if (ctx->sse_reply
                && ngx_http_llm_stream_end(r, ctx, &ll) != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (buf->pos != buf->last) {
                ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                              "llm provider sent data after final chunk");
                u->keepalive = 0;
            }

            break;
        }

        if (rc == NGX_AGAIN) {
            break;
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm provider sent invalid chunked response");

        return NGX_ERROR;
    }

    return ngx_http_llm_drain(r, ctx, bytes);
}


/*
 * Bytes of the reply body: a stream goes through the stream output; the
 * rest goes to the client as it is, and through the usage scanner.
 */

/*
 * A client that goes away once the model has finished (after the finish
 * reason, before the usage that follows it) does not take the usage with
 * it: the gateway goes on reading the provider's reply, for at most
 * NGX_HTTP_LLM_DRAIN_TIME and NGX_HTTP_LLM_DRAIN_SIZE, and sends nothing
 * more, so that the request is billed on the provider's usage.  A client
 * that goes away before the model has finished closes the provider
 * request, as nginx does (the usage is then estimated).
 */

static ngx_int_t
ngx_http_llm_drain(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ssize_t bytes)
{
    ngx_http_upstream_t       *u;
    ngx_http_upstream_conf_t  *conf;

    u = r->upstream;

    if (ctx->shadow) {
        /* the reply of a shadow is read for its usage, and discarded */
        u->out_bufs = NULL;
        return NGX_OK;
    }

    if (ctx->client_gone) {

        /* nothing more for the client */

        u->out_bufs = NULL;
        ctx->drained += bytes;

        if (ctx->drained > NGX_HTTP_LLM_DRAIN_SIZE
            || ngx_current_msec - ctx->gone > NGX_HTTP_LLM_DRAIN_TIME)
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "llm provider \"%V\" sent no usage in %uz bytes "
                          "after the client closed the connection",
                          &ctx->provider->name, ctx->drained);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (!ctx->stream || !ctx->raw.finished || ctx->drain || u->length == 0
        || (ctx->provider->format->dialect->marked ? ctx->raw.final
                                                   : ctx->raw.objects > 0)
        || r->read_event_handler == ngx_http_block_reading)
    {
        return NGX_OK;
    }

    /* the model has finished and its usage is to come */

    ctx->drain = 1;

    conf = ngx_palloc(r->pool, sizeof(ngx_http_upstream_conf_t));
    if (conf == NULL) {
        return NGX_ERROR;
    }

    *conf = *u->conf;
    conf->read_timeout = ngx_min(conf->read_timeout, NGX_HTTP_LLM_DRAIN_TIME);
    conf->ignore_client_abort = 1;

    ctx->drain_conf = conf;
    r->read_event_handler = ngx_http_llm_drain_check;

    return NGX_OK;
}


/* the client's connection, while the rest of the reply is only the usage */

static void
ngx_http_llm_drain_check(ngx_http_request_t *r)
{
    int                  n;
    char                 buf[1];
    ngx_err_t            err;
    ngx_connection_t    *c;
    ngx_http_llm_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (c->error) {
        n = 0;
        err = 0;

    } else {
        n = recv(c->fd, buf, 1, MSG_PEEK);
        err = ngx_socket_errno;

        if (n > 0 || (n == -1 && err == NGX_EAGAIN)) {
            /* a pipelined request, or nothing: the client is there */
            return;
        }
    }

    if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return;
        }
    }

    ngx_log_error(NGX_LOG_INFO, c->log, err,
                  "client closed the connection after the model finished: "
                  "reading the provider's usage");

    c->read->eof = 1;
    c->error = 1;

    ctx->client_gone = 1;
    ctx->gone = ngx_current_msec;

    r->upstream->conf = ctx->drain_conf;
    r->read_event_handler = ngx_http_block_reading;
}


static ngx_int_t
ngx_http_llm_output(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *pos, u_char *last, ngx_chain_t ***ll)
{
    ngx_http_upstream_t  *u;

    if (pos == last) {
        return NGX_OK;
    }

    u = r->upstream;

    if (ctx->received == 0) {
        ctx->first_byte = ngx_current_msec;
    }

    ctx->received += last - pos;

    if (ctx->sse_reply && u->headers_in.status_n == NGX_HTTP_OK) {
        return ngx_http_llm_stream_output(r, ctx, pos, last, ll);
    }

    /* usage: from a successful reply */

    if (u->headers_in.status_n >= 200 && u->headers_in.status_n < 300
        && ngx_http_llm_usage_body(r, ctx, pos, last) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_output_ref(r, pos, last, ll);
}


/* the bytes of the reply at [pos, last) go to the client from where they are */

ngx_int_t
ngx_http_llm_output_ref(ngx_http_request_t *r, u_char *pos, u_char *last,
    ngx_chain_t ***ll)
{
    ngx_buf_t            *b;
    ngx_chain_t          *cl;
    ngx_http_upstream_t  *u;

    u = r->upstream;

    cl = ngx_chain_get_free_buf(r->pool, &u->free_bufs);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    **ll = cl;
    *ll = &cl->next;

    b = cl->buf;

    b->flush = 1;
    b->memory = 1;
    b->pos = pos;
    b->last = last;
    b->tag = u->output.tag;

    return NGX_OK;
}


/*
 * A stream comes as server-sent events, except a Gemini stream asked for
 * without alt=sse: a JSON array, read like a non-streamed reply.
 */

static void
ngx_http_llm_reply_type(ngx_http_request_t *r)
{
    ngx_table_elt_t     *ct;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    ct = r->upstream->headers_in.content_type;

    ctx->sse_reply = ctx->stream
                     && (ctx->endpoint != NGX_HTTP_LLM_STREAM
                         || (ct && ct->value.len >= 17
                             && ngx_strncasecmp(ct->value.data,
                                                (u_char *) "text/event-stream",
                                                17) == 0));
}


static void
ngx_http_llm_abort_request(ngx_http_request_t *r)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "abort llm request");
}


/*
 * A stream that the provider broke off after the client had bytes of it
 * (a reset, a timeout, a cut): the client gets an error event, as OpenAI
 * sends one, so that SDKs raise an error instead of taking the stream for
 * complete.
 */

static void
ngx_http_llm_finalize_request(ngx_http_request_t *r, ngx_int_t rc)
{
    u_char              *p;
    ngx_buf_t           *b;
    ngx_str_t           *name;
    ngx_chain_t          out;
    ngx_http_llm_ctx_t  *ctx;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "finalize llm request: %i", rc);

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        return;
    }

    /* the end of the reply: the request may be logged later (shadows) */

    ctx->end = ngx_current_msec;

    if (ctx->backoff.timer_set) {
        ngx_del_timer(&ctx->backoff);
    }

    /* a client that went away before the end: the log says so */

    if ((rc == NGX_HTTP_CLIENT_CLOSED_REQUEST || r->connection->error)
        && ctx->error.len == 0)
    {
        ngx_str_set(&ctx->error, "client_closed_request");
    }

    /*
     * a reply the provider broke off after it had begun (a reset, a
     * timeout, a cut, an invalid chunk) is a failure of the provider's,
     * for its breaker too
     */

    if (r->upstream->header_sent && !ctx->done && !r->connection->error
        && (rc == NGX_ERROR || rc >= NGX_HTTP_INTERNAL_SERVER_ERROR)
        && ctx->nattempts)
    {
        ctx->attempt[ctx->current].failed = 1;
        ngx_http_llm_breaker_report(r, ctx->provider,
                                    (rc == NGX_HTTP_GATEWAY_TIME_OUT)
                                    ? NGX_HTTP_LLM_ATTEMPT_SLOW
                                    : NGX_HTTP_LLM_ATTEMPT_FAILED, 0);
    }

    if (ctx->shadow) {
        /*
         * a shadow's subrequest sends nothing more: its output would wait
         * in the postponed chain of a background subrequest for ever
         */
        r->header_only = 1;
        return;
    }

    if (!ctx->sse_reply && r->upstream->header_sent && !r->connection->error
        && (rc == NGX_ERROR || rc >= NGX_HTTP_INTERNAL_SERVER_ERROR)
        && rc != NGX_HTTP_CLIENT_CLOSED_REQUEST)
    {
        /* the client got the start of the reply, and a cut body */
        ngx_str_set(&ctx->error, "provider_reply_cut");
        return;
    }

    if (!ctx->sse_reply || ctx->done
        || !r->upstream->header_sent || r->connection->error
        || (rc != NGX_ERROR && rc < NGX_HTTP_SPECIAL_RESPONSE)
        || rc == NGX_HTTP_CLIENT_CLOSED_REQUEST)
    {
        return;
    }

    ngx_str_set(&ctx->error, "provider_stream_error");

    name = &ctx->provider->name;

    b = ngx_create_temp_buf(r->pool, 256 + 6 * name->len);
    if (b == NULL) {
        return;
    }

    p = ngx_cpymem(b->last, "data: {\"error\":{\"message\":\"",
                   sizeof("data: {\"error\":{\"message\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, (u_char *) "The stream of provider ",
                                   sizeof("The stream of provider ") - 1);
    p = (u_char *) ngx_escape_json(p, name->data, name->len);
    p = ngx_sprintf(p, " ended early\",\"type\":\"server_error\","
                    "\"param\":null,\"code\":\"provider_stream_error\"}}"
                    "\n\n");

    b->last = p;
    b->flush = 1;

    out.buf = b;
    out.next = NULL;

    (void) ngx_http_output_filter(r, &out);
}
