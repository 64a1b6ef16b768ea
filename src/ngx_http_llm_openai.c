
/*
 * nginx-llm-gateway: the OpenAI wire format (Chat Completions and
 * Embeddings), spoken by OpenAI and by every OpenAI-compatible provider.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_openai_auth(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p, ngx_str_t *out);
static ngx_int_t ngx_http_llm_openai_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_chain_t **body);
static ngx_int_t ngx_http_llm_openai_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);


ngx_http_llm_format_t  ngx_http_llm_format_openai = {
    ngx_string("openai"),
    ngx_http_llm_openai_auth,
    ngx_http_llm_openai_create_request,
    ngx_http_llm_openai_event
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


static ngx_int_t
ngx_http_llm_openai_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_chain_t **body)
{
    u_char                   *d;
    size_t                    len;
    ngx_str_t                 endpoint, part[3];
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

    /*
     * The client's bytes go as they are; a model alias is replaced by the
     * provider's name between them.
     */

    if (ctx->model_map == NULL) {
        return ngx_http_llm_body_chain(r->pool, body, &ctx->body, NULL);
    }

    part[0].data = ctx->body.data;
    part[0].len = ctx->req.model.start - ctx->body.data;
    part[1] = ctx->model_map->json;
    part[2].data = ctx->req.model.end;
    part[2].len = ctx->body.data + ctx->body.len - ctx->req.model.end;

    return ngx_http_llm_body_chain(r->pool, body, &part[0], &part[1],
                                   &part[2], NULL);
}


static ngx_int_t
ngx_http_llm_openai_event(ngx_http_request_t *r, ngx_http_llm_sse_event_t *ev)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ev->data.len == sizeof("[DONE]") - 1
        && ngx_strncmp(ev->data.data, "[DONE]", ev->data.len) == 0)
    {
        ctx->done = 1;
    }

    return NGX_OK;
}


/*
 * A chain of memory buffers over the given pieces (NULL-terminated list),
 * without copying them.
 */

ngx_int_t
ngx_http_llm_body_chain(ngx_pool_t *pool, ngx_chain_t **out, ...)
{
    va_list       args;
    ngx_buf_t    *b;
    ngx_str_t    *s;
    ngx_chain_t  *cl, **ll;

    ll = out;

    va_start(args, out);

    while ((s = va_arg(args, ngx_str_t *)) != NULL) {

        if (s->len == 0) {
            continue;
        }

        b = ngx_calloc_buf(pool);
        cl = ngx_alloc_chain_link(pool);

        if (b == NULL || cl == NULL) {
            va_end(args);
            return NGX_ERROR;
        }

        b->start = s->data;
        b->pos = s->data;
        b->last = s->data + s->len;
        b->end = b->last;
        b->memory = 1;

        cl->buf = b;
        *ll = cl;
        ll = &cl->next;
    }

    va_end(args);

    *ll = NULL;

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
