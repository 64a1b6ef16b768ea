
/*
 * nginx-llm-gateway: llm_mock, an OpenAI-compatible provider inside the
 * module, for demos, tests and benchmarks.
 *
 * Replies are deterministic: a fixed text, usage computed from the size
 * of the input.  Streams are sent as SSE events, with a configurable
 * number of content chunks and delay between events.  Request headers
 * inject faults: X-Mock-Status, X-Mock-Retry-After, X-Mock-Delay,
 * X-Mock-Chunks, X-Mock-Chunk-Delay, X-Mock-Stall and X-Mock-Malformed.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_MOCK_TEXT                                               \
    "This is a mock response from the llm_mock provider of nginx-llm-gateway."

#define NGX_HTTP_LLM_MOCK_STALL  300000
#define NGX_HTTP_LLM_MOCK_DIMS   8


typedef struct {
    ngx_http_llm_ctx_t           llm;       /* must be first: see error.c */

    ngx_http_request_t          *request;
    ngx_event_t                  timer;

    ngx_str_t                    model;     /* JSON-escaped */
    cJSON                       *input;     /* embeddings input */

    ngx_uint_t                   id;
    ngx_uint_t                   status;
    ngx_uint_t                   chunks;
    ngx_uint_t                   step;      /* events sent */
    ngx_uint_t                   nsteps;
    ngx_int_t                    stall;     /* events before a stall */
    ngx_int_t                    retry_after;   /* seconds, -1: default */
    ngx_msec_t                   delay;
    ngx_msec_t                   head_delay;

    ngx_uint_t                   prompt_tokens;
    ngx_uint_t                   completion_tokens;

    unsigned                     include_usage:1;
    unsigned                     base64:1;
    unsigned                     malformed:1;
    unsigned                     stalled:1;
} ngx_http_llm_mock_ctx_t;


static ngx_int_t ngx_http_llm_mock_handler(ngx_http_request_t *r);
static void ngx_http_llm_mock_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_mock_prepare(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx);
static ngx_int_t ngx_http_llm_mock_authorized(ngx_http_request_t *r,
    ngx_str_t *key);
static void ngx_http_llm_mock_faults(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx);
static ngx_uint_t ngx_http_llm_mock_input_bytes(cJSON *json);
static void ngx_http_llm_mock_timer_handler(ngx_event_t *ev);
static void ngx_http_llm_mock_cleanup(void *data);
static ngx_int_t ngx_http_llm_mock_step(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx);
static ngx_int_t ngx_http_llm_mock_send_header(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx, char *type, off_t length);
static ngx_int_t ngx_http_llm_mock_reply(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx);
static ngx_int_t ngx_http_llm_mock_embeddings(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx);
static u_char *ngx_http_llm_mock_base64(u_char *p, ngx_uint_t bytes);
static ngx_buf_t *ngx_http_llm_mock_event(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx, ngx_uint_t n);
static ngx_int_t ngx_http_llm_mock_fault(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx);


static ngx_atomic_uint_t  ngx_http_llm_mock_ids;


char *
ngx_http_llm_mock(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t                  n;
    ngx_str_t                 *value, s;
    ngx_uint_t                 i;
    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->mock || llcf->route_name.len) {
        return "is duplicate";
    }

    llcf->mock = 1;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "chunks=", 7) == 0) {
            n = ngx_atoi(value[i].data + 7, value[i].len - 7);

            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            llcf->mock_chunks = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "delay=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            llcf->mock_delay = ngx_parse_time(&s, 0);

            if (llcf->mock_delay == (ngx_msec_t) NGX_ERROR) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0
            && value[i].len > 4)
        {
            llcf->mock_key.data = value[i].data + 4;
            llcf->mock_key.len = value[i].len - 4;
            continue;
        }

        goto invalid;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_mock_handler;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_llm_mock_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_llm_mock_ctx_t  *mctx;

    mctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_mock_ctx_t));
    if (mctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    mctx->request = r;
    mctx->llm.start = ngx_current_msec;
    mctx->llm.endpoint = ngx_http_llm_endpoint(&r->uri);

    ngx_http_set_ctx(r, mctx, ngx_http_llm_module);

    if (mctx->llm.endpoint == 0
        || mctx->llm.endpoint == NGX_HTTP_LLM_MODELS
        || r->method != NGX_HTTP_POST)
    {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        if (mctx->llm.endpoint == 0) {
            return ngx_http_llm_send_error(r, NGX_HTTP_NOT_FOUND,
                                           "unknown_url", NULL,
                                           "Unknown request URL: %V %V",
                                           &r->method_name, &r->uri);
        }

        return ngx_http_llm_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                       "method_not_allowed", NULL,
                                       "Method %V is not allowed for %V",
                                       &r->method_name, &r->uri);
    }

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_llm_mock_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_llm_mock_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_pool_cleanup_t       *cln;
    ngx_http_llm_mock_ctx_t  *mctx;

    mctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    rc = ngx_http_llm_mock_prepare(r, mctx);

    if (rc != NGX_OK || mctx->llm.error.len) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cln->handler = ngx_http_llm_mock_cleanup;
    cln->data = mctx;

    mctx->timer.handler = ngx_http_llm_mock_timer_handler;
    mctx->timer.data = mctx;
    mctx->timer.log = r->connection->log;

    /* a client that goes away ends the request, even in a stall */

    r->read_event_handler = ngx_http_test_reading;

    if (mctx->head_delay) {
        ngx_add_timer(&mctx->timer, mctx->head_delay);
        return;
    }

    rc = ngx_http_llm_mock_step(r, mctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
ngx_http_llm_mock_prepare(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx)
{
    size_t                    len;
    cJSON                    *json, *item;
    ngx_str_t                 body;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->mock_key.len
        && ngx_http_llm_mock_authorized(r, &llcf->mock_key) != NGX_OK)
    {
        return ngx_http_llm_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                       "invalid_api_key", NULL,
                                       "Incorrect API key provided");
    }

    if (ngx_http_llm_request_body(r, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json = ngx_http_llm_parse_json(r, &body);

    if (json == NULL || !cJSON_IsObject(json)) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_json", NULL,
                                       "The request body is not a valid "
                                       "JSON object");
    }

    item = cJSON_GetObjectItemCaseSensitive(json, "model");

    if (!cJSON_IsString(item)) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "missing_model", "model",
                                       "You must provide a model parameter");
    }

    len = ngx_strlen(item->valuestring);

    mctx->model.len = len + ngx_escape_json(NULL, (u_char *) item->valuestring,
                                            len);
    mctx->model.data = ngx_pnalloc(r->pool, mctx->model.len);
    if (mctx->model.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_escape_json(mctx->model.data, (u_char *) item->valuestring, len);

    mctx->llm.stream = cJSON_IsTrue(
                           cJSON_GetObjectItemCaseSensitive(json, "stream"));

    item = cJSON_GetObjectItemCaseSensitive(json, "stream_options");
    mctx->include_usage = cJSON_IsTrue(
                       cJSON_GetObjectItemCaseSensitive(item, "include_usage"));

    mctx->id = ngx_atomic_fetch_add(&ngx_http_llm_mock_ids, 1) + 1;
    mctx->chunks = llcf->mock_chunks;
    mctx->delay = llcf->mock_delay;
    mctx->stall = -1;
    mctx->retry_after = -1;

    ngx_http_llm_mock_faults(r, mctx);

    mctx->completion_tokens = (sizeof(NGX_HTTP_LLM_MOCK_TEXT) - 1 + 3) / 4;
    mctx->chunks = ngx_min(mctx->chunks, sizeof(NGX_HTTP_LLM_MOCK_TEXT) - 1);

    if (mctx->llm.endpoint == NGX_HTTP_LLM_EMBEDDINGS) {
        item = cJSON_GetObjectItemCaseSensitive(json, "encoding_format");
        mctx->base64 = cJSON_IsString(item)
                       && ngx_strcmp(item->valuestring, "base64") == 0;

        mctx->input = cJSON_GetObjectItemCaseSensitive(json, "input");
        mctx->prompt_tokens = (ngx_http_llm_mock_input_bytes(mctx->input)
                               + 3) / 4;
        mctx->llm.stream = 0;

    } else {
        mctx->prompt_tokens = (ngx_http_llm_mock_input_bytes(
                                 cJSON_GetObjectItemCaseSensitive(json,
                                                                  "messages"))
                               + 3) / 4;
    }

    /* a stream: a role event, the chunks, the end, maybe usage, [DONE] */

    mctx->nsteps = mctx->llm.stream
                   ? mctx->chunks + 3 + (mctx->include_usage ? 1 : 0)
                   : 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_mock_authorized(ngx_http_request_t *r, ngx_str_t *key)
{
    ngx_str_t  *auth;

    if (r->headers_in.authorization == NULL) {
        return NGX_DECLINED;
    }

    auth = &r->headers_in.authorization->value;

    if (auth->len != sizeof("Bearer ") - 1 + key->len
        || ngx_strncasecmp(auth->data, (u_char *) "Bearer ", 7) != 0
        || ngx_strncmp(auth->data + 7, key->data, key->len) != 0)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_llm_mock_faults(ngx_http_request_t *r, ngx_http_llm_mock_ctx_t *mctx)
{
    u_char           *name;
    ngx_int_t         n;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

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

        if (h[i].key.len < sizeof("x-mock-") - 1
            || ngx_strncmp(h[i].lowcase_key, "x-mock-", 7) != 0)
        {
            continue;
        }

        name = h[i].lowcase_key + 7;
        n = ngx_atoi(h[i].value.data, h[i].value.len);

        if (n == NGX_ERROR) {
            continue;
        }

        switch (h[i].key.len - 7) {

        case 5:
            if (ngx_strncmp(name, "delay", 5) == 0) {
                mctx->head_delay = n;

            } else if (ngx_strncmp(name, "stall", 5) == 0) {
                mctx->stall = n;
            }
            break;

        case 6:
            if (ngx_strncmp(name, "status", 6) == 0
                && n >= 200 && n <= 599)
            {
                mctx->status = n;

            } else if (ngx_strncmp(name, "chunks", 6) == 0 && n > 0) {
                mctx->chunks = n;
            }
            break;

        case 9:
            if (ngx_strncmp(name, "malformed", 9) == 0) {
                mctx->malformed = (n != 0);
            }
            break;

        case 11:
            if (ngx_strncmp(name, "retry-after", 11) == 0) {
                mctx->retry_after = n;

            } else if (ngx_strncmp(name, "chunk-delay", 11) == 0) {
                mctx->delay = n;
            }
            break;
        }
    }
}


/* bytes of text in messages (strings or text parts) or embeddings input */

static ngx_uint_t
ngx_http_llm_mock_input_bytes(cJSON *json)
{
    cJSON       *item, *content;
    ngx_uint_t   n;

    if (cJSON_IsString(json)) {
        return ngx_strlen(json->valuestring);
    }

    n = 0;

    cJSON_ArrayForEach(item, json) {

        if (cJSON_IsString(item)) {
            n += ngx_strlen(item->valuestring);
            continue;
        }

        content = cJSON_GetObjectItemCaseSensitive(item, "content");

        if (content == NULL) {
            content = cJSON_GetObjectItemCaseSensitive(item, "text");
        }

        if (cJSON_IsString(content)) {
            n += ngx_strlen(content->valuestring);

        } else if (cJSON_IsArray(content)) {
            n += ngx_http_llm_mock_input_bytes(content);
        }
    }

    return n;
}


static void
ngx_http_llm_mock_timer_handler(ngx_event_t *ev)
{
    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_llm_mock_ctx_t  *mctx;

    mctx = ev->data;
    r = mctx->request;

    /* the request may be freed below; the connection stays readable */

    c = r->connection;

    if (mctx->stalled) {
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    rc = ngx_http_llm_mock_step(r, mctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_llm_mock_cleanup(void *data)
{
    ngx_http_llm_mock_ctx_t  *mctx = data;

    if (mctx->timer.timer_set) {
        ngx_del_timer(&mctx->timer);
    }
}


/*
 * Sends what is due now.  Returns NGX_DONE while more is to come (a timer
 * is set), else the result for ngx_http_finalize_request().
 */

static ngx_int_t
ngx_http_llm_mock_step(ngx_http_request_t *r, ngx_http_llm_mock_ctx_t *mctx)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t  *out, **ll, *cl;

    if (mctx->status || mctx->malformed) {
        return ngx_http_llm_mock_fault(r, mctx);
    }

    if (!mctx->llm.stream) {
        if (mctx->llm.endpoint == NGX_HTTP_LLM_EMBEDDINGS) {
            return ngx_http_llm_mock_embeddings(r, mctx);
        }

        return ngx_http_llm_mock_reply(r, mctx);
    }

    if (mctx->step == 0) {
        rc = ngx_http_llm_mock_send_header(r, mctx, "text/event-stream", -1);

        if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
            return rc;
        }
    }

    /* without a delay every event goes in one write */

    out = NULL;
    ll = &out;

    do {
        if (mctx->stall >= 0 && mctx->step >= (ngx_uint_t) mctx->stall) {
            break;
        }

        b = ngx_http_llm_mock_event(r, mctx, mctx->step++);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->flush = 1;

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = b;
        cl->next = NULL;
        *ll = cl;
        ll = &cl->next;

    } while (mctx->delay == 0 && mctx->step < mctx->nsteps);

    if (mctx->step == mctx->nsteps) {
        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = ngx_calloc_buf(r->pool);
        if (cl->buf == NULL) {
            return NGX_ERROR;
        }

        cl->buf->last_buf = 1;
        cl->next = NULL;
        *ll = cl;

        return ngx_http_output_filter(r, out);
    }

    if (out == NULL) {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->flush = 1;

        out = ngx_alloc_chain_link(r->pool);
        if (out == NULL) {
            return NGX_ERROR;
        }

        out->buf = b;
        out->next = NULL;
    }

    rc = ngx_http_output_filter(r, out);

    if (rc == NGX_ERROR) {
        return rc;
    }

    if (mctx->stall >= 0 && mctx->step >= (ngx_uint_t) mctx->stall) {
        mctx->stalled = 1;
        ngx_add_timer(&mctx->timer, NGX_HTTP_LLM_MOCK_STALL);
        return NGX_DONE;
    }

    ngx_add_timer(&mctx->timer, mctx->delay);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_llm_mock_send_header(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx, char *type, off_t length)
{
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = length;

    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    return ngx_http_send_header(r);
}


static ngx_int_t
ngx_http_llm_mock_reply(ngx_http_request_t *r, ngx_http_llm_mock_ctx_t *mctx)
{
    off_t         length;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = ngx_create_temp_buf(r->pool, 512 + mctx->model.len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last,
                 "{\"id\":\"chatcmpl-mock-%ui\",\"object\":\"chat.completion\","
                 "\"created\":%T,\"model\":\"%V\",\"choices\":[{\"index\":0,"
                 "\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
                 "\"logprobs\":null,\"finish_reason\":\"stop\"}],"
                 "\"usage\":{\"prompt_tokens\":%ui,\"completion_tokens\":%ui,"
                 "\"total_tokens\":%ui}}",
                 mctx->id, ngx_time(), &mctx->model, NGX_HTTP_LLM_MOCK_TEXT,
                 mctx->prompt_tokens, mctx->completion_tokens,
                 mctx->prompt_tokens + mctx->completion_tokens);

    length = b->last - b->pos;

    rc = ngx_http_llm_mock_send_header(r, mctx, "application/json", length);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    if (mctx->stall >= 0) {
        /* half the body, and then nothing */
        b->last = b->pos + length / 2;
        b->flush = 1;

        rc = ngx_http_output_filter(r, &out);

        if (rc == NGX_ERROR) {
            return rc;
        }

        mctx->stalled = 1;
        ngx_add_timer(&mctx->timer, NGX_HTTP_LLM_MOCK_STALL);

        return NGX_DONE;
    }

    b->last_buf = 1;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_llm_mock_embeddings(ngx_http_request_t *r,
    ngx_http_llm_mock_ctx_t *mctx)
{
    size_t        n;
    cJSON        *item;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_uint_t    i, k, count, bytes;
    ngx_chain_t   out;

    count = cJSON_IsArray(mctx->input) ? cJSON_GetArraySize(mctx->input) : 1;

    if (count == 0) {
        count = 1;
    }

    n = 256 + mctx->model.len
        + count * (64 + NGX_HTTP_LLM_MOCK_DIMS * (NGX_INT_T_LEN + 8));

    b = ngx_create_temp_buf(r->pool, n);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"object\":\"list\",\"data\":[",
                         sizeof("{\"object\":\"list\",\"data\":[") - 1);

    for (i = 0; i < count; i++) {

        item = cJSON_IsArray(mctx->input)
               ? cJSON_GetArrayItem(mctx->input, i) : mctx->input;
        bytes = ngx_http_llm_mock_input_bytes(item);

        b->last = ngx_sprintf(b->last, "%s{\"object\":\"embedding\","
                              "\"index\":%ui,\"embedding\":[",
                              i ? "," : "", i);

        /* a deterministic vector, a function of the input size */

        if (mctx->base64) {
            b->last[-1] = '"';
            b->last = ngx_http_llm_mock_base64(b->last, bytes);
            *b->last++ = '"';

        } else {
            for (k = 0; k < NGX_HTTP_LLM_MOCK_DIMS; k++) {
                b->last = ngx_sprintf(b->last, "%s0.%04ui", k ? "," : "",
                                      (bytes * 31 + k * 977) % 10000);
            }

            *b->last++ = ']';
        }

        *b->last++ = '}';
    }

    b->last = ngx_sprintf(b->last, "],\"model\":\"%V\",\"usage\":"
                          "{\"prompt_tokens\":%ui,\"total_tokens\":%ui}}",
                          &mctx->model, mctx->prompt_tokens,
                          mctx->prompt_tokens);

    rc = ngx_http_llm_mock_send_header(r, mctx, "application/json",
                                       b->last - b->pos);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * The same vector as little-endian float32 values in base64, as OpenAI
 * sends it for "encoding_format": "base64".
 */

static u_char *
ngx_http_llm_mock_base64(u_char *p, ngx_uint_t bytes)
{
    float       f;
    uint32_t    u;
    ngx_str_t   src, dst;
    ngx_uint_t  k;
    u_char      raw[NGX_HTTP_LLM_MOCK_DIMS * 4];

    for (k = 0; k < NGX_HTTP_LLM_MOCK_DIMS; k++) {
        f = (float) ((bytes * 31 + k * 977) % 10000) / 10000;
        ngx_memcpy(&u, &f, 4);

        raw[k * 4] = (u_char) u;
        raw[k * 4 + 1] = (u_char) (u >> 8);
        raw[k * 4 + 2] = (u_char) (u >> 16);
        raw[k * 4 + 3] = (u_char) (u >> 24);
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = p;

    ngx_encode_base64(&dst, &src);

    return p + dst.len;
}


/*
 * Event n of a stream: 0 is the role, 1..chunks the text, then the
 * finish, then the usage when asked for, then [DONE].
 */

static ngx_buf_t *
ngx_http_llm_mock_event(ngx_http_request_t *r, ngx_http_llm_mock_ctx_t *mctx,
    ngx_uint_t n)
{
    char        *usage;
    size_t       len, from, to;
    ngx_buf_t   *b;
    ngx_uint_t   total;

    b = ngx_create_temp_buf(r->pool, 512 + mctx->model.len
                                     + sizeof(NGX_HTTP_LLM_MOCK_TEXT));
    if (b == NULL) {
        return NULL;
    }

    if (n == mctx->nsteps - 1) {
        b->last = ngx_cpymem(b->last, "data: [DONE]\n\n",
                             sizeof("data: [DONE]\n\n") - 1);
        return b;
    }

    usage = mctx->include_usage ? ",\"usage\":null" : "";

    b->last = ngx_sprintf(b->last,
                          "data: {\"id\":\"chatcmpl-mock-%ui\","
                          "\"object\":\"chat.completion.chunk\","
                          "\"created\":%T,\"model\":\"%V\",\"choices\":",
                          mctx->id, ngx_time(), &mctx->model);

    if (n == 0) {
        b->last = ngx_sprintf(b->last,
                              "[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                              "\"content\":\"\"},\"logprobs\":null,"
                              "\"finish_reason\":null}]%s}\n\n", usage);
        return b;
    }

    if (n <= mctx->chunks) {
        len = sizeof(NGX_HTTP_LLM_MOCK_TEXT) - 1;
        from = len * (n - 1) / mctx->chunks;
        to = len * n / mctx->chunks;

        b->last = ngx_sprintf(b->last,
                              "[{\"index\":0,\"delta\":{\"content\":\"%*s\"},"
                              "\"logprobs\":null,\"finish_reason\":null}]"
                              "%s}\n\n",
                              to - from, NGX_HTTP_LLM_MOCK_TEXT + from,
                              usage);
        return b;
    }

    if (n == mctx->chunks + 1) {
        b->last = ngx_sprintf(b->last,
                              "[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                              "\"finish_reason\":\"stop\"}]%s}\n\n", usage);
        return b;
    }

    total = mctx->prompt_tokens + mctx->completion_tokens;

    b->last = ngx_sprintf(b->last,
                          "[],\"usage\":{\"prompt_tokens\":%ui,"
                          "\"completion_tokens\":%ui,\"total_tokens\":%ui}}"
                          "\n\n",
                          mctx->prompt_tokens, mctx->completion_tokens,
                          total);
    return b;
}


static ngx_int_t
ngx_http_llm_mock_fault(ngx_http_request_t *r, ngx_http_llm_mock_ctx_t *mctx)
{
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    if (mctx->status) {

        /* a 429 says "Retry-After: 1" unless told otherwise */

        if (mctx->retry_after < 0
            && mctx->status == NGX_HTTP_TOO_MANY_REQUESTS)
        {
            mctx->retry_after = 1;
        }

        if (mctx->retry_after > 0) {
            h = ngx_list_push(&r->headers_out.headers);
            if (h == NULL) {
                return NGX_ERROR;
            }

            h->value.data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
            if (h->value.data == NULL) {
                return NGX_ERROR;
            }

            h->hash = 1;
            ngx_str_set(&h->key, "Retry-After");
            h->value.len = ngx_sprintf(h->value.data, "%i", mctx->retry_after)
                           - h->value.data;
        }

        return ngx_http_llm_send_error(r, mctx->status, "mock_fault", NULL,
                                       "Mock fault: status %ui",
                                       mctx->status);
    }

    b = ngx_create_temp_buf(r->pool, 128);
    if (b == NULL) {
        return NGX_ERROR;
    }

    if (mctx->llm.stream) {
        b->last = ngx_cpymem(b->last, "data: {broken\n\ndata: [DONE]\n\n",
                             sizeof("data: {broken\n\ndata: [DONE]\n\n") - 1);

    } else {
        b->last = ngx_cpymem(b->last,
                             "{\"id\":\"chatcmpl-mock\",\"choices\":[{\"inde",
                             sizeof("{\"id\":\"chatcmpl-mock\",\"choices\":"
                                    "[{\"inde") - 1);
    }

    rc = ngx_http_llm_mock_send_header(r, mctx,
                                       mctx->llm.stream ? "text/event-stream"
                                                        : "application/json",
                                       b->last - b->pos);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
