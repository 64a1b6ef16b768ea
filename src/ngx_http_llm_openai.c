
/*
 * nginx-llm-gateway: the OpenAI wire format (Chat Completions and
 * Embeddings), spoken by OpenAI and by every OpenAI-compatible provider.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_openai_auth(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p, ngx_str_t *out);
static ngx_int_t ngx_http_llm_openai_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_chain_t **body);
static ngx_int_t ngx_http_llm_openai_include_usage(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_edit_t *edit);
static ngx_int_t ngx_http_llm_openai_include_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_openai_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);
static ngx_int_t ngx_http_llm_openai_chunk_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_chain_add(ngx_pool_t *pool, ngx_chain_t ***ll,
    ngx_str_t *s);


typedef struct {
    ngx_http_llm_json_value_t    choices;
    ngx_http_llm_json_value_t    usage;
    u_char                      *usage_key;
} ngx_http_llm_openai_chunk_t;


ngx_http_llm_format_t  ngx_http_llm_format_openai = {
    ngx_string("openai"),
    ngx_http_llm_openai_auth,
    ngx_http_llm_openai_create_request,
    ngx_http_llm_openai_event,
    &ngx_http_llm_dialect_openai
};


static ngx_http_llm_format_t  *ngx_http_llm_formats[] = {
    &ngx_http_llm_format_openai,
    NULL
};


ngx_http_llm_format_t *
ngx_http_llm_format(ngx_str_t *name)
{
    ngx_http_llm_format_t  **f;

    for (f = ngx_http_llm_formats; *f; f++) {
        if ((*f)->name.len == name->len
            && ngx_strncmp((*f)->name.data, name->data, name->len) == 0)
        {
            return *f;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_llm_openai_auth(ngx_conf_t *cf, ngx_http_llm_provider_t *p,
    ngx_str_t *out)
{
    u_char  *d;

    d = ngx_pnalloc(cf->pool, sizeof("Authorization: Bearer " CRLF) - 1
                              + p->key.len);
    if (d == NULL) {
        return NGX_ERROR;
    }

    out->data = d;
    out->len = ngx_sprintf(d, "Authorization: Bearer %V" CRLF, &p->key) - d;

    return NGX_OK;
}


/*
 * The client's bytes go to the provider as they are, with at most two
 * edits: the model alias replaced by the provider's name, and, for a
 * stream, stream_options.include_usage set so that the provider reports
 * usage (the usage is then removed from what the client receives, unless
 * the client asked for it).
 */

static ngx_int_t
ngx_http_llm_openai_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_chain_t **body)
{
    u_char                   *d;
    size_t                    len;
    ngx_str_t                 endpoint;
    ngx_uint_t                n;
    ngx_http_llm_edit_t       edit[2];
    ngx_http_llm_provider_t  *p;

    p = ctx->provider;

    if (ctx->endpoint == NGX_HTTP_LLM_CHAT) {
        ngx_str_set(&endpoint, "/chat/completions");

    } else {
        ngx_str_set(&endpoint, "/embeddings");
    }

    len = p->base.len + endpoint.len;

    d = ngx_pnalloc(r->pool, len);
    if (d == NULL) {
        return NGX_ERROR;
    }

    path->data = d;
    path->len = len;

    d = ngx_cpymem(d, p->base.data, p->base.len);
    ngx_memcpy(d, endpoint.data, endpoint.len);

    n = 0;

    if (ctx->model_map) {
        edit[n].start = ctx->req.model.start;
        edit[n].end = ctx->req.model.end;
        edit[n].text = ctx->model_map->json;
        n++;
    }

    ctx->strip_usage = 0;

    if (ctx->stream && p->stream_usage
        && ngx_http_llm_openai_include_usage(r, ctx, &edit[n]) == NGX_OK)
    {
        ctx->strip_usage = 1;
        n++;
    }

    return ngx_http_llm_body_edit(r->pool, &ctx->body, edit, n, body);
}


static ngx_int_t
ngx_http_llm_openai_include_usage(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_edit_t *edit)
{
    u_char                     *p, *last;
    ngx_http_llm_json_value_t  *so, include;

    so = &ctx->req.stream_options;

    switch (so->type) {

    case NGX_HTTP_LLM_JSON_NONE:

        /* before the closing brace of the request */

        last = ctx->body.data + ctx->body.len;

        for (p = last - 1; p > ctx->body.data && *p != '}'; p--) {
            /* void */
        }

        edit->start = p;
        edit->end = p;
        ngx_str_set(&edit->text, ",\"stream_options\":{\"include_usage\":true}");
        return NGX_OK;

    case NGX_HTTP_LLM_JSON_NULL:
        edit->start = so->start;
        edit->end = so->end;
        ngx_str_set(&edit->text, "{\"include_usage\":true}");
        return NGX_OK;

    case NGX_HTTP_LLM_JSON_OBJECT:
        break;

    default:
        /* the provider will say what it thinks of it */
        return NGX_DECLINED;
    }

    ngx_memzero(&include, sizeof(ngx_http_llm_json_value_t));

    if (ngx_http_llm_json_object(so->start, so->end,
                                 ngx_http_llm_openai_include_member, &include)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    if (include.type == NGX_HTTP_LLM_JSON_TRUE) {
        /* the client asked for the usage chunk itself */
        return NGX_DECLINED;
    }

    if (include.type != NGX_HTTP_LLM_JSON_NONE) {
        edit->start = include.start;
        edit->end = include.end;
        ngx_str_set(&edit->text, "true");
        return NGX_OK;
    }

    edit->start = so->start + 1;
    edit->end = edit->start;

    for (p = so->start + 1; p < so->end && *p != '}'; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            break;
        }
    }

    if (*p == '}') {
        ngx_str_set(&edit->text, "\"include_usage\":true");

    } else {
        ngx_str_set(&edit->text, "\"include_usage\":true,");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_openai_include_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data)
{
    ngx_http_llm_json_value_t *include = data;

    if (key->len == sizeof("include_usage") - 1
        && ngx_strncmp(key->data, "include_usage", key->len) == 0)
    {
        *include = *v;
    }

    return NGX_OK;
}


/*
 * An event of a stream: [DONE], or a chunk whose usage is read.  When the
 * gateway asked for the usage on the client's behalf, the chunk that only
 * carries usage ("choices": []) is dropped, and the "usage" member of the
 * other chunks ("usage": null, or the usage some providers put on the last
 * content chunk) is cut out, the rest of the chunk left as it is.
 */

static ngx_int_t
ngx_http_llm_openai_event(ngx_http_request_t *r, ngx_http_llm_sse_event_t *ev)
{
    u_char                       *p, *last;
    ngx_http_llm_ctx_t           *ctx;
    ngx_http_llm_openai_chunk_t   chunk;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ev->data.len == sizeof("[DONE]") - 1
        && ngx_strncmp(ev->data.data, "[DONE]", ev->data.len) == 0)
    {
        ctx->done = 1;
        return NGX_OK;
    }

    ctx->events++;

    if (ev->truncated || ev->data.len == 0 || ev->data.data[0] != '{') {
        return NGX_OK;
    }

    ngx_memzero(&chunk, sizeof(ngx_http_llm_openai_chunk_t));

    p = ev->data.data;
    last = p + ev->data.len;

    if (ngx_http_llm_json_object(p, last, ngx_http_llm_openai_chunk_member,
                                 &chunk)
        != NGX_OK)
    {
        return NGX_OK;
    }

    if (chunk.usage.type == NGX_HTTP_LLM_JSON_OBJECT) {
        (void) ngx_http_llm_usage_read(&ngx_http_llm_dialect_openai,
                                       &ctx->raw, chunk.usage.start,
                                       chunk.usage.end);
    }

    if (!ctx->strip_usage || chunk.usage.type == NGX_HTTP_LLM_JSON_NONE) {
        return NGX_OK;
    }

    if (chunk.usage.type == NGX_HTTP_LLM_JSON_OBJECT
        && chunk.choices.type == NGX_HTTP_LLM_JSON_ARRAY
        && chunk.choices.elements == 0)
    {
        ev->action = NGX_HTTP_LLM_SSE_DROP;
        return NGX_OK;
    }

    /* the member and one comma next to it */

    ev->cut_start = chunk.usage_key;
    ev->cut_end = chunk.usage.end;

    for (p = ev->cut_start - 1; p > ev->data.data; p--) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            break;
        }
    }

    if (*p == ',') {
        ev->cut_start = p;

    } else {
        for (p = ev->cut_end; p < last; p++) {
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                break;
            }
        }

        if (p < last && *p == ',') {
            ev->cut_end = p + 1;
        }
    }

    ev->action = NGX_HTTP_LLM_SSE_REPLACE;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_openai_chunk_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_openai_chunk_t *chunk = data;

    if (key->len == 5 && ngx_strncmp(key->data, "usage", 5) == 0) {
        chunk->usage = *v;
        chunk->usage_key = key->data - 1;

    } else if (key->len == 7 && ngx_strncmp(key->data, "choices", 7) == 0) {
        chunk->choices = *v;
    }

    return NGX_OK;
}


/*
 * The body as a chain over the client's bytes and the edits, which are
 * in order and do not overlap.
 */

ngx_int_t
ngx_http_llm_body_edit(ngx_pool_t *pool, ngx_str_t *body,
    ngx_http_llm_edit_t *edit, ngx_uint_t n, ngx_chain_t **out)
{
    u_char               *p;
    ngx_str_t             piece;
    ngx_uint_t            i;
    ngx_chain_t         **ll;
    ngx_http_llm_edit_t   t;

    if (n == 2 && edit[1].start < edit[0].start) {
        t = edit[0];
        edit[0] = edit[1];
        edit[1] = t;
    }

    ll = out;
    p = body->data;

    for (i = 0; i <= n; i++) {
        piece.data = p;
        piece.len = ((i < n) ? edit[i].start : body->data + body->len) - p;

        if (ngx_http_llm_chain_add(pool, &ll, &piece) != NGX_OK) {
            return NGX_ERROR;
        }

        if (i < n) {
            if (ngx_http_llm_chain_add(pool, &ll, &edit[i].text) != NGX_OK) {
                return NGX_ERROR;
            }

            p = edit[i].end;
        }
    }

    *ll = NULL;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_chain_add(ngx_pool_t *pool, ngx_chain_t ***ll, ngx_str_t *s)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (s->len == 0) {
        return NGX_OK;
    }

    b = ngx_calloc_buf(pool);
    cl = ngx_alloc_chain_link(pool);

    if (b == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    b->start = s->data;
    b->pos = s->data;
    b->last = s->data + s->len;
    b->end = b->last;
    b->memory = 1;

    cl->buf = b;
    **ll = cl;
    *ll = &cl->next;

    return NGX_OK;
}


/*
 * Serializes a JSON document into one buffer of the pool.
 */

ngx_chain_t *
ngx_http_llm_json_chain(ngx_pool_t *pool, cJSON *json)
{
    char         *s;
    size_t        len;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    s = cJSON_PrintUnformatted(json);
    if (s == NULL) {
        return NULL;
    }

    len = ngx_strlen(s);

    b = ngx_create_temp_buf(pool, len ? len : 1);
    if (b == NULL) {
        cJSON_free(s);
        return NULL;
    }

    b->last = ngx_cpymem(b->pos, s, len);

    cJSON_free(s);

    cl = ngx_alloc_chain_link(pool);
    if (cl == NULL) {
        return NULL;
    }

    cl->buf = b;
    cl->next = NULL;

    return cl;
}
