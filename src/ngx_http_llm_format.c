
/*
 * nginx-llm-gateway: what the provider formats share: the registry of
 * formats, the path of a provider request, the body as the client's bytes
 * with edits, and the usage of an SSE event.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_chain_add(ngx_pool_t *pool, ngx_chain_t ***ll,
    ngx_str_t *s);


static ngx_http_llm_format_t  *ngx_http_llm_formats[] = {
    &ngx_http_llm_format_openai,
    &ngx_http_llm_format_anthropic,
    &ngx_http_llm_format_gemini,
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


/* the provider's base path and the pieces given (NULL-terminated) */

ngx_int_t
ngx_http_llm_format_path(ngx_http_request_t *r, ngx_http_llm_provider_t *p,
    ngx_str_t *path, ...)
{
    u_char     *d;
    size_t      len;
    va_list     args;
    ngx_str_t  *s;

    len = p->base.len;

    va_start(args, path);

    while ((s = va_arg(args, ngx_str_t *)) != NULL) {
        len += s->len;
    }

    va_end(args);

    d = ngx_pnalloc(r->pool, len);
    if (d == NULL) {
        return NGX_ERROR;
    }

    path->data = d;
    path->len = len;

    d = ngx_cpymem(d, p->base.data, p->base.len);

    va_start(args, path);

    while ((s = va_arg(args, ngx_str_t *)) != NULL) {
        d = ngx_cpymem(d, s->data, s->len);
    }

    va_end(args);

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
    ngx_uint_t            i, j;
    ngx_chain_t         **ll;
    ngx_http_llm_edit_t   t;

    /* in the order of the body: an insertion sort of a few */

    for (i = 1; i < n; i++) {
        t = edit[i];

        for (j = i; j > 0 && edit[j - 1].start > t.start; j--) {
            edit[j] = edit[j - 1];
        }

        edit[j] = t;
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


/*
 * The edits that lower the most output tokens of a request to ctx->clamp
 * (see llm_limit clamp): the value of each member of the request that
 * holds it, else name inserted first in the object at obj (NULL: the
 * body's).  Returns the number of edits.
 */

ngx_uint_t
ngx_http_llm_clamp_edits(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_json_value_t **v, ngx_uint_t nv, u_char *obj, char *name,
    ngx_http_llm_edit_t *edit)
{
    u_char      *p, *q;
    uint64_t     max;
    ngx_uint_t   i, n;

    /* the limit's clamp, else the variant's max_tokens */

    max = ctx->clamp ? ctx->clamp
                     : (ctx->variant ? ctx->variant->max_tokens : 0);

    if (max == 0) {
        return 0;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + ngx_strlen(name) + 8);
    if (p == NULL) {
        return 0;
    }

    n = 0;

    for (i = 0; i < nv; i++) {

        if (v[i]->type == NGX_HTTP_LLM_JSON_NONE) {
            continue;
        }

        edit[n].start = v[i]->start;
        edit[n].end = v[i]->end;
        edit[n].text.data = p;
        edit[n].text.len = ngx_sprintf(p, "%uL", max) - p;
        n++;
    }

    if (n) {
        return n;
    }

    /* the first member of the object, with a comma unless it is empty */

    if (obj == NULL) {
        obj = ngx_strlchr(ctx->body.data, ctx->body.data + ctx->body.len,
                          '{');
    }

    for (q = obj + 1; *q == ' ' || *q == '\t' || *q == '\r' || *q == '\n';
         q++)
    {
        /* void */
    }

    edit[0].start = obj + 1;
    edit[0].end = obj + 1;
    edit[0].text.data = p;
    edit[0].text.len = ngx_sprintf(p, "%s%uL%s", name, max,
                                   (*q == '}') ? "" : ",")
                       - p;

    return 1;
}
