
/*
 * nginx-llm-gateway: the llm_pass content handler.
 *
 * Reads the client's request, validates it before any provider is
 * touched, picks the provider, and hands the request to the upstream
 * handler.  GET .../models is answered here from the configuration.
 */


#include "ngx_http_llm_module.h"


typedef struct {
    ngx_str_t                    name;
    size_t                       offset;
} ngx_http_llm_member_t;


static void ngx_http_llm_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_prepare(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_body_model(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_uri_model(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_scan_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_request_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_stream_options_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_generation_config_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_read_member(ngx_http_llm_request_t *req,
    ngx_http_llm_member_t *members, ngx_str_t *key,
    ngx_http_llm_json_value_t *v);
static ngx_int_t ngx_http_llm_model_name(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_send_unavailable(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_models(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static void ngx_http_llm_json_cleanup(void *data);


typedef struct {
    ngx_str_t                    suffix;
    ngx_uint_t                   endpoint;
} ngx_http_llm_endpoint_t;


static ngx_http_llm_endpoint_t  ngx_http_llm_endpoints[] = {
    { ngx_string("/chat/completions"), NGX_HTTP_LLM_CHAT },
    { ngx_string("/embeddings"), NGX_HTTP_LLM_EMBEDDINGS },
    { ngx_string("/models"), NGX_HTTP_LLM_MODELS },
    { ngx_string("/messages"), NGX_HTTP_LLM_MESSAGES },
    { ngx_string(":generateContent"), NGX_HTTP_LLM_GENERATE },
    { ngx_string(":streamGenerateContent"), NGX_HTTP_LLM_STREAM },
    { ngx_null_string, 0 }
};


/*
 * The members of the request that the gateway reads: each must be there
 * once, under its own name, so that what the gateway reads (and bills)
 * is what the provider reads.
 */

static ngx_http_llm_member_t  ngx_http_llm_request_members[] = {
    { ngx_string("model"), offsetof(ngx_http_llm_request_t, model) },
    { ngx_string("messages"), offsetof(ngx_http_llm_request_t, messages) },
    { ngx_string("stream"), offsetof(ngx_http_llm_request_t, stream) },
    { ngx_string("stream_options"),
      offsetof(ngx_http_llm_request_t, stream_options) },
    { ngx_string("input"), offsetof(ngx_http_llm_request_t, input) },
    { ngx_string("max_tokens"),
      offsetof(ngx_http_llm_request_t, max_tokens) },
    { ngx_string("max_completion_tokens"),
      offsetof(ngx_http_llm_request_t, max_completion_tokens) },
    { ngx_string("max_output_tokens"),
      offsetof(ngx_http_llm_request_t, max_output_tokens) },

    { ngx_string("system"), offsetof(ngx_http_llm_request_t, system) },
    { ngx_string("temperature"),
      offsetof(ngx_http_llm_request_t, temperature) },
    { ngx_string("top_p"), offsetof(ngx_http_llm_request_t, top_p) },

    /* Gemini's, under either of the names its JSON parser takes */
    { ngx_string("generationConfig"),
      offsetof(ngx_http_llm_request_t, generation_config) },
    { ngx_string("generation_config"),
      offsetof(ngx_http_llm_request_t, generation_config) },
    { ngx_null_string, 0 }
};


static ngx_http_llm_member_t  ngx_http_llm_generation_config_members[] = {
    { ngx_string("maxOutputTokens"),
      offsetof(ngx_http_llm_request_t, max_output) },
    { ngx_string("max_output_tokens"),
      offsetof(ngx_http_llm_request_t, max_output) },
    { ngx_null_string, 0 }
};


static ngx_http_llm_member_t  ngx_http_llm_stream_options_members[] = {
    { ngx_string("include_usage"),
      offsetof(ngx_http_llm_request_t, include_usage) },
    { ngx_null_string, 0 }
};


ngx_int_t
ngx_http_llm_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_table_elt_t          *h;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    ctx = ngx_http_llm_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->route = llcf->route;
    ctx->endpoint = ngx_http_llm_endpoint(&r->uri);

    if (ctx->endpoint == 0
        || (ctx->endpoint == NGX_HTTP_LLM_MODELS
            && !(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)))
        || (ctx->endpoint != NGX_HTTP_LLM_MODELS
            && r->method != NGX_HTTP_POST))
    {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        if (ctx->endpoint == 0) {
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

    /* the client's key, before its body is read */

    rc = ngx_http_llm_keys_check(r, ctx);

    if (rc != NGX_OK || ctx->error.len) {
        return rc;
    }

    if (ctx->endpoint == NGX_HTTP_LLM_MODELS) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_llm_models(r, ctx);
    }

    /* the body is read as JSON: a compressed one would not be what it is */

    h = ngx_http_llm_client_header(r, (u_char *) "content-encoding",
                                   sizeof("content-encoding") - 1);

    if (h && !(h->value.len == sizeof("identity") - 1
               && ngx_strncasecmp(h->value.data, (u_char *) "identity",
                                  h->value.len)
                  == 0))
    {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_llm_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                       "unsupported_content_encoding", NULL,
                                       "Content-Encoding is not supported: "
                                       "send the request body uncompressed");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_llm_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


ngx_uint_t
ngx_http_llm_endpoint(ngx_str_t *uri)
{
    ngx_http_llm_endpoint_t  *e;

    for (e = ngx_http_llm_endpoints; e->endpoint; e++) {
        if (uri->len >= e->suffix.len
            && ngx_strncmp(uri->data + uri->len - e->suffix.len,
                           e->suffix.data, e->suffix.len)
               == 0)
        {
            return e->endpoint;
        }
    }

    return 0;
}


static void
ngx_http_llm_body_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    rc = ngx_http_llm_prepare(r, ctx);

    /* an error sent by ngx_http_llm_send_error() leaves its code in ctx */

    if (rc == NGX_OK && ctx->error.len == 0) {
        ngx_http_llm_upstream_start(r, ctx);
        return;
    }

    ngx_http_finalize_request(r, rc);
}


/*
 * Validation happens before any provider is touched: a request that
 * fails it never leaves the gateway.
 */

static ngx_int_t
ngx_http_llm_prepare(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t  rc;

    if (ngx_http_llm_request_body(r, &ctx->body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_llm_scan_request(r, ctx);

    if (rc != NGX_OK || ctx->error.len) {
        return rc;
    }

    if (ctx->endpoint == NGX_HTTP_LLM_GENERATE
        || ctx->endpoint == NGX_HTTP_LLM_STREAM)
    {
        rc = ngx_http_llm_uri_model(r, ctx);

    } else {
        rc = ngx_http_llm_body_model(r, ctx);
    }

    if (rc == NGX_OK && ctx->error.len == 0) {
        rc = ngx_http_llm_model_name(r, ctx);
    }

    if (rc == NGX_OK && ctx->error.len == 0) {
        rc = ngx_http_llm_keys_check(r, ctx);
    }

    /* the variant: its model and route count from here on */

    if (rc == NGX_OK && ctx->error.len == 0) {
        rc = ngx_http_llm_experiment_apply(r, ctx);
    }

    if (rc != NGX_OK || ctx->error.len) {
        /* an error, or an error response already sent */
        return rc;
    }

    /*
     * the limits before the plan: a request they refuse takes no attempt,
     * nor the probe of a breaker; one that fails after is given back
     */

    rc = ngx_http_llm_limit_reserve(r, ctx);

    if (rc != NGX_OK || ctx->error.len) {
        return rc;
    }

    rc = ngx_http_llm_plan_attempts(r, ctx);

    if (rc == NGX_BUSY) {
        return ngx_http_llm_send_unavailable(r, ctx);
    }

    if (rc != NGX_OK) {
        return ngx_http_llm_send_error(r, NGX_HTTP_NOT_FOUND,
                                       "model_not_found", "model",
                                       "The model \"%V\" is not served by "
                                       "this gateway", &ctx->model);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_scan_request(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                   rc;
    ngx_http_llm_request_t     *req;
    ngx_http_llm_json_value_t  *so;

    req = &ctx->req;

    rc = ngx_http_llm_json_object(ctx->body.data,
                                  ctx->body.data + ctx->body.len,
                                  ngx_http_llm_request_member, req);

    if (rc == NGX_DECLINED) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_json", NULL,
                                       "The request body must be a JSON "
                                       "object");
    }

    so = &req->stream_options;

    if (rc == NGX_OK && so->type == NGX_HTTP_LLM_JSON_OBJECT) {
        rc = ngx_http_llm_json_object(so->start, so->end,
                                      ngx_http_llm_stream_options_member,
                                      req);
    }

    so = &req->generation_config;

    if (rc == NGX_OK && so->type == NGX_HTTP_LLM_JSON_OBJECT) {
        rc = ngx_http_llm_json_object(so->start, so->end,
                                      ngx_http_llm_generation_config_member,
                                      req);
    }

    if (req->duplicate.len) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_json", NULL,
                                       "The request body has \"%V\" twice",
                                       &req->duplicate);
    }

    if (req->folded.len) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_json", NULL,
                                       "The request body has the key "
                                       "\"%V\": keys are case-sensitive",
                                       &req->folded);
    }

    if (req->escaped_key) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_json", NULL,
                                       "Escape sequences are not allowed in "
                                       "the top-level keys of the request "
                                       "or in those of stream_options and "
                                       "generationConfig");
    }

    if (rc != NGX_OK) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_json", NULL,
                                       "The request body is not valid JSON");
    }

    return NGX_OK;
}


/*
 * The model name goes to the statistics, the logs and error messages: a
 * bounded length, valid UTF-8, no control characters.
 */

static ngx_int_t
ngx_http_llm_model_name(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    if (ctx->model.len > NGX_HTTP_LLM_MODEL_MAX) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_model", "model",
                                       "The model name is longer than %d "
                                       "bytes", NGX_HTTP_LLM_MODEL_MAX);
    }

    if (ngx_http_llm_json_text(ctx->model.data, ctx->model.len) != NGX_OK) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_model", "model",
                                       "The model name must be valid UTF-8 "
                                       "without control characters");
    }

    return NGX_OK;
}


/*
 * Every provider that could take the request has its breaker open: 503 at
 * once, without touching a provider, and when to come back.
 */

static ngx_int_t
ngx_http_llm_send_unavailable(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%M", (ctx->retry + 999) / 1000) - p;

    return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "providers_unavailable", NULL,
                                   "Every provider of the route is failing; "
                                   "retry in %M s", (ctx->retry + 999) / 1000);
}


/* the model and the rest of an OpenAI or Anthropic request body */

static ngx_int_t
ngx_http_llm_body_model(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_request_t  *req;

    req = &ctx->req;

    if (req->model.type != NGX_HTTP_LLM_JSON_STRING
        || req->model.end - req->model.start == 2)
    {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "missing_model", "model",
                                       "You must provide a model parameter "
                                       "(a string)");
    }

    if (ngx_http_llm_json_unescape(r->pool, &req->model, &ctx->model)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if ((ctx->endpoint == NGX_HTTP_LLM_CHAT
         || ctx->endpoint == NGX_HTTP_LLM_MESSAGES)
        && (req->messages.type != NGX_HTTP_LLM_JSON_ARRAY
            || req->messages.elements == 0))
    {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_messages", "messages",
                                       "\"messages\" must be a "
                                       "non-empty array");
    }

    if (ctx->endpoint == NGX_HTTP_LLM_EMBEDDINGS
        && req->input.type == NGX_HTTP_LLM_JSON_NONE)
    {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "missing_input", "input",
                                       "You must provide an input "
                                       "parameter");
    }

    switch (req->stream.type) {

    case NGX_HTTP_LLM_JSON_NONE:
    case NGX_HTTP_LLM_JSON_NULL:
    case NGX_HTTP_LLM_JSON_FALSE:
        return NGX_OK;

    case NGX_HTTP_LLM_JSON_TRUE:
        ctx->stream = (ctx->endpoint != NGX_HTTP_LLM_EMBEDDINGS);
        return NGX_OK;

    default:
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_type", "stream",
                                       "\"stream\" must be a boolean");
    }
}


/* the model of a Gemini request: .../models/MODEL:method */

static ngx_int_t
ngx_http_llm_uri_model(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char  *p, *colon;

    colon = r->uri.data + r->uri.len - 1;

    while (*colon != ':') {
        colon--;
    }

    for (p = colon; p > r->uri.data && p[-1] != '/'; p--) {
        /* void */
    }

    if (p == colon) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "missing_model", NULL,
                                       "The URL names no model");
    }

    ctx->model.data = p;
    ctx->model.len = colon - p;
    ctx->stream = (ctx->endpoint == NGX_HTTP_LLM_STREAM);

    return NGX_OK;
}


ngx_table_elt_t *
ngx_http_llm_client_header(ngx_http_request_t *r, u_char *lowcase_key,
    size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncmp(h[i].lowcase_key, lowcase_key, len) == 0)
        {
            return &h[i];
        }
    }
}


/*
 * The client's own key, as its SDK sends it: the Bearer token of
 * Authorization, else X-Api-Key, else X-Goog-Api-Key; the header, or NULL.
 */

ngx_table_elt_t *
ngx_http_llm_client_key(ngx_http_request_t *r, ngx_str_t *key)
{
    ngx_table_elt_t  *h;

    ngx_str_null(key);

    h = r->headers_in.authorization;

    if (h && h->value.len > 7
        && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ", 7) == 0)
    {
        key->data = h->value.data + 7;
        key->len = h->value.len - 7;
        return h;
    }

    h = ngx_http_llm_client_header(r, (u_char *) "x-api-key",
                                   sizeof("x-api-key") - 1);
    if (h == NULL) {
        h = ngx_http_llm_client_header(r, (u_char *) "x-goog-api-key",
                                       sizeof("x-goog-api-key") - 1);
    }

    if (h) {
        *key = h->value;
    }

    return h;
}


static ngx_int_t
ngx_http_llm_request_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_request_t *req = data;

    return ngx_http_llm_read_member(req, ngx_http_llm_request_members,
                                    key, v);
}


static ngx_int_t
ngx_http_llm_stream_options_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data)
{
    ngx_http_llm_request_t *req = data;

    return ngx_http_llm_read_member(req, ngx_http_llm_stream_options_members,
                                    key, v);
}


static ngx_int_t
ngx_http_llm_generation_config_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data)
{
    ngx_http_llm_request_t *req = data;

    return ngx_http_llm_read_member(req,
                                    ngx_http_llm_generation_config_members,
                                    key, v);
}


static ngx_int_t
ngx_http_llm_read_member(ngx_http_llm_request_t *req,
    ngx_http_llm_member_t *members, ngx_str_t *key,
    ngx_http_llm_json_value_t *v)
{
    ngx_int_t                   rc;
    ngx_http_llm_member_t      *m;
    ngx_http_llm_json_value_t  *dst;

    if (v->key_escaped) {
        req->escaped_key = 1;
        return NGX_ERROR;
    }

    for (m = members; m->name.len; m++) {

        rc = ngx_http_llm_json_key(key, &m->name);

        if (rc == NGX_DECLINED) {
            continue;
        }

        if (rc == NGX_BUSY) {
            req->folded = *key;
            return NGX_ERROR;
        }

        dst = (ngx_http_llm_json_value_t *) ((u_char *) req + m->offset);

        if (dst->type != NGX_HTTP_LLM_JSON_NONE) {
            req->duplicate = *key;
            return NGX_ERROR;
        }

        *dst = *v;

        return NGX_OK;
    }

    return NGX_OK;
}


/*
 * The body as one piece of memory: the client's buffer when it has one,
 * else a copy gathered from the buffers and the temporary file.
 */

ngx_int_t
ngx_http_llm_request_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len, size;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_set(body, "");

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        if (cl->buf->last != cl->buf->pos) {
            body->data = cl->buf->pos;
            body->len = cl->buf->last - cl->buf->pos;
        }

        /* else "": an empty buffer may have no memory at all */

        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    if (len == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;
    body->len = len;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        size = ngx_buf_size(b);

        if (size == 0) {
            continue;
        }

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, size);
            continue;
        }

        n = ngx_read_file(b->file, p, size, b->file_pos);

        if (n != (ssize_t) size) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llm: could not read the request body from "
                          "\"%V\"", &b->file->name);
            return NGX_ERROR;
        }

        p += size;
    }

    return NGX_OK;
}


cJSON *
ngx_http_llm_parse_json(ngx_http_request_t *r, ngx_str_t *body)
{
    cJSON               *json;
    ngx_pool_cleanup_t  *cln;

    if (body->len == 0) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    json = cJSON_ParseWithLength((const char *) body->data, body->len);

    cln->handler = ngx_http_llm_json_cleanup;
    cln->data = json;

    return json;
}


static void
ngx_http_llm_json_cleanup(void *data)
{
    cJSON_Delete(data);
}


static ngx_int_t
ngx_http_llm_models(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    cJSON                      *root, *data, *m;
    ngx_int_t                   rc;
    ngx_uint_t                  i, j, k, l, seen;
    ngx_http_llm_model_t       *model, *prev;
    ngx_http_llm_route_peer_t  *peer;

    root = cJSON_CreateObject();
    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (cJSON_AddStringToObject(root, "object", "list") == NULL) {
        goto failed;
    }

    data = cJSON_AddArrayToObject(root, "data");
    if (data == NULL) {
        goto failed;
    }

    peer = ctx->route->peers.elts;

    for (i = 0; i < ctx->route->peers.nelts; i++) {

        if (peer[i].provider->models == NULL) {
            continue;
        }

        model = peer[i].provider->models->elts;

        for (j = 0; j < peer[i].provider->models->nelts; j++) {

            if (ctx->key
                && !ngx_http_llm_key_allows(ctx->key->models,
                                            &model[j].alias))
            {
                continue;
            }

            /* an alias served by several providers is listed once */

            seen = 0;

            for (k = 0; k < i && !seen; k++) {
                if (peer[k].provider->models == NULL) {
                    continue;
                }

                prev = peer[k].provider->models->elts;

                for (l = 0; l < peer[k].provider->models->nelts; l++) {
                    if (prev[l].alias.len == model[j].alias.len
                        && ngx_strncmp(prev[l].alias.data,
                                       model[j].alias.data,
                                       model[j].alias.len) == 0)
                    {
                        seen = 1;
                        break;
                    }
                }
            }

            if (seen) {
                continue;
            }

            m = cJSON_CreateObject();
            if (m == NULL || !cJSON_AddItemToArray(data, m)) {
                cJSON_Delete(m);
                goto failed;
            }

            if (cJSON_AddStringToObject(m, "id",
                                        (char *) model[j].alias.data) == NULL
                || cJSON_AddStringToObject(m, "object", "model") == NULL
                || cJSON_AddNumberToObject(m, "created", 0) == NULL
                || cJSON_AddStringToObject(m, "owned_by",
                                     (char *) peer[i].provider->name.data)
                   == NULL)
            {
                goto failed;
            }
        }
    }

    rc = ngx_http_llm_send_json(r, NGX_HTTP_OK, root);

    cJSON_Delete(root);

    return rc;

failed:

    cJSON_Delete(root);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}
