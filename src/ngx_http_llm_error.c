
/*
 * nginx-llm-gateway: OpenAI-style errors.
 *
 * Errors the gateway decides itself are sent by ngx_http_llm_send_error().
 * Errors that nginx raises on its own in an llm location (an unreachable
 * or slow provider, an oversized body, ...) go through nginx's special
 * response path; the header and body filters here replace that HTML page
 * with the same JSON shape, so that every error a client of the gateway
 * sees is {"error":{"message","type","param","code"}}.
 */


#include "ngx_http_llm_module.h"


typedef struct {
    ngx_uint_t                   status;
    char                        *code;
    char                        *message;
} ngx_http_llm_error_t;


static ngx_buf_t *ngx_http_llm_error_body(ngx_pool_t *pool,
    ngx_uint_t status, char *code, char *param, u_char *message,
    size_t len);
static ngx_int_t ngx_http_llm_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_attempts_header(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_http_llm_error_t  ngx_http_llm_errors[] = {
    { NGX_HTTP_BAD_REQUEST, "bad_request",
      "The request could not be read" },
    { NGX_HTTP_NOT_FOUND, "unknown_url",
      "Unknown request URL" },
    { NGX_HTTP_NOT_ALLOWED, "method_not_allowed",
      "Method not allowed" },
    { NGX_HTTP_REQUEST_TIME_OUT, "request_timeout",
      "The request body was not received in time" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "request_too_large",
      "The request body is larger than the gateway accepts" },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "internal_error",
      "The gateway failed to process the request" },
    { NGX_HTTP_BAD_GATEWAY, "provider_unavailable",
      "The provider could not be reached or sent an invalid response" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "service_unavailable",
      "The service is unavailable" },
    { NGX_HTTP_GATEWAY_TIME_OUT, "provider_timeout",
      "The provider did not respond in time" },
    { 0, NULL, NULL }
};


ngx_http_llm_ctx_t *
ngx_http_llm_get_ctx(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
        if (ctx == NULL) {
            return NULL;
        }

        ctx->start = ngx_current_msec;

        ngx_http_set_ctx(r, ctx, ngx_http_llm_module);
    }

    return ctx;
}


ngx_int_t
ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status, char *code,
    char *param, char *fmt, ...)
{
    u_char               *last, msg[NGX_MAX_ERROR_STR];
    u_char                text[NGX_MAX_ERROR_STR];
    va_list               args;
    ngx_buf_t            *b;
    ngx_table_elt_t      *h;
    ngx_http_llm_ctx_t   *ctx;

    ctx = ngx_http_llm_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    va_start(args, fmt);
    last = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    ctx->error.data = (u_char *) code;
    ctx->error.len = ngx_strlen(code);

    /* the message may quote the client: escaped, so it forges no line */

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm error %ui %s: %*s", status, code,
                  ngx_http_llm_log_text(text, text + sizeof(text), msg,
                                        last - msg) - text,
                  text);

    b = ngx_http_llm_error_body(r->pool, status, code, param, msg,
                                last - msg);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (status == NGX_HTTP_NOT_ALLOWED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");

        if (ctx->endpoint == NGX_HTTP_LLM_MODELS) {
            ngx_str_set(&h->value, "GET, HEAD");

        } else {
            ngx_str_set(&h->value, "POST");
        }
    }

    return ngx_http_llm_send_buf(r, status, b);
}


ngx_int_t
ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status, cJSON *json)
{
    ngx_chain_t  *out;

    out = ngx_http_llm_json_chain(r->pool, json);
    if (out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llm_send_buf(r, status, out->buf);
}


/* a JSON answer of the gateway's own, whole in one buffer */

ngx_int_t
ngx_http_llm_send_buf(ngx_http_request_t *r, ngx_uint_t status, ngx_buf_t *b)
{
    ngx_int_t            rc;
    ngx_chain_t          out;
    ngx_http_llm_ctx_t  *ctx;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx && ctx->shadow) {
        /* a shadow's answer goes nowhere (see ngx_http_llm_shadow) */
        r->header_only = 1;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_buf_t *
ngx_http_llm_error_body(ngx_pool_t *pool, ngx_uint_t status, char *code,
    char *param, u_char *message, size_t len)
{
    char       *type;
    size_t      size;
    ngx_buf_t  *b;

    if (status >= 500) {
        type = "server_error";

    } else if (status == NGX_HTTP_TOO_MANY_REQUESTS) {
        type = "rate_limit_error";

    } else {
        type = "invalid_request_error";
    }

    size = sizeof("{\"error\":{\"message\":\"\",\"type\":\"\","
                  "\"param\":\"\",\"code\":\"\"}}") - 1
           + ngx_escape_json(NULL, message, len)
           + len + ngx_strlen(type) + ngx_strlen(code)
           + (param ? ngx_strlen(param) : sizeof("null") - 1);

    b = ngx_create_temp_buf(pool, size);
    if (b == NULL) {
        return NULL;
    }

    b->last = ngx_cpymem(b->last, "{\"error\":{\"message\":\"",
                         sizeof("{\"error\":{\"message\":\"") - 1);
    b->last = (u_char *) ngx_escape_json(b->last, message, len);

    if (param) {
        b->last = ngx_sprintf(b->last, "\",\"type\":\"%s\",\"param\":\"%s\","
                              "\"code\":\"%s\"}}", type, param, code);

    } else {
        b->last = ngx_sprintf(b->last, "\",\"type\":\"%s\",\"param\":null,"
                              "\"code\":\"%s\"}}", type, code);
    }

    b->last_buf = 1;
    b->last_in_chain = 1;

    return b;
}


ngx_int_t
ngx_http_llm_error_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_llm_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_llm_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_header_filter(ngx_http_request_t *r)
{
    u_char                   *last, msg[256];
    ngx_buf_t                *b;
    ngx_uint_t                status;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_error_t     *e;
    ngx_http_llm_loc_conf_t  *llcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->attempts_header
        && ngx_http_llm_attempts_header(r) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (llcf->route) {
        ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

        if (ngx_http_llm_limit_header(r, ctx) != NGX_OK
            || ngx_http_llm_experiment_header(r, ctx) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (r->err_status == 0) {
        return ngx_http_next_header_filter(r);
    }

    if (llcf->route == NULL && !llcf->mock && !llcf->status) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_llm_get_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    status = r->headers_out.status;

    for (e = ngx_http_llm_errors; e->status; e++) {
        if (e->status == status) {
            break;
        }
    }

    if (e->status == 0) {
        last = ngx_snprintf(msg, sizeof(msg), "HTTP error %ui", status);
        ctx->error.data = (u_char *) "http_error";

    } else if (ctx->provider && status >= NGX_HTTP_BAD_GATEWAY) {
        last = ngx_snprintf(msg, sizeof(msg), "%s (provider \"%V\")",
                            e->message, &ctx->provider->name);
        ctx->error.data = (u_char *) e->code;

    } else {
        last = ngx_snprintf(msg, sizeof(msg), "%s", e->message);
        ctx->error.data = (u_char *) e->code;
    }

    ctx->error.len = ngx_strlen(ctx->error.data);

    b = ngx_http_llm_error_body(r->pool, status, (char *) ctx->error.data,
                                NULL, msg, last - msg);
    if (b == NULL) {
        return NGX_ERROR;
    }

    ctx->error_body = b;

    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_llm_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t          *cl, out;
    ngx_http_llm_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->error_body == NULL || in == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* nginx's page is dropped; ours goes out when it ends */

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;

        if (cl->buf->last_buf) {
            out.buf = ctx->error_body;
            out.next = NULL;
            ctx->error_body = NULL;

            return ngx_http_next_body_filter(r, &out);
        }
    }

    return NGX_OK;
}


/* X-LLM-Attempts: the providers tried and how each ended */

static ngx_int_t
ngx_http_llm_attempts_header(ngx_http_request_t *r)
{
    ngx_table_elt_t     *h;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->nattempts == 0 || r->upstream == NULL) {
        return NGX_OK;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-LLM-Attempts");

    h->value.data = ngx_http_llm_attempts_text(r, ctx, &h->value.len);
    if (h->value.data == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Text from a client or a provider, for the error log: control
 * characters, DEL and backslashes as \xHH, cut where dst ends.
 */

u_char *
ngx_http_llm_log_text(u_char *dst, u_char *end, u_char *src, size_t len)
{
    static u_char  hex[] = "0123456789abcdef";

    while (len--) {

        if (*src >= 0x20 && *src != 0x7f && *src != '\\') {
            if (dst == end) {
                break;
            }

            *dst++ = *src++;
            continue;
        }

        if (end - dst < 4) {
            break;
        }

        *dst++ = '\\';
        *dst++ = 'x';
        *dst++ = hex[*src >> 4];
        *dst++ = hex[*src & 0xf];
        src++;
    }

    return dst;
}


/* a fixed JSON answer */

ngx_int_t
ngx_http_llm_send_text(ngx_http_request_t *r, ngx_uint_t status, char *json)
{
    size_t      len;
    ngx_buf_t  *b;

    len = ngx_strlen(json);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, json, len);

    return ngx_http_llm_send_buf(r, status, b);
}
