
/*
 * nginx-llm-gateway: the Gemini API (generateContent and
 * streamGenerateContent), passed through: the model is in the URL, which
 * the gateway maps to the provider's name; the key goes in
 * x-goog-api-key; the usage is read from usageMetadata.
 *
 * A stream's chunks carry running totals: the usage is final only in the
 * chunk that says the reply is over (a finishReason, or a blockReason of
 * the prompt), or in one after it; a stream that ends before is
 * estimated.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_gemini_args(ngx_http_request_t *r,
    ngx_str_t *args);
static ngx_int_t ngx_http_llm_gemini_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body);
static ngx_int_t ngx_http_llm_gemini_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);


ngx_http_llm_format_t  ngx_http_llm_format_gemini = {
    ngx_string("gemini"),
    ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_GENERATE)
    |ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_STREAM),
    ngx_string("x-goog-api-key: "),
    ngx_http_llm_gemini_create_request,
    ngx_http_llm_gemini_event,
    &ngx_http_llm_dialect_gemini
};


static ngx_int_t
ngx_http_llm_gemini_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body)
{
    u_char                     *p, *last;
    size_t                      n;
    ngx_str_t                   models, model, method, args;
    ngx_http_llm_edit_t         edit[1];
    ngx_http_llm_json_value_t  *max, *gc;

    ngx_str_set(&models, "/models/");

    if (ctx->endpoint == NGX_HTTP_LLM_STREAM) {
        ngx_str_set(&method, ":streamGenerateContent");

    } else {
        ngx_str_set(&method, ":generateContent");
    }

    /* the model goes into the path: escaped */

    n = ngx_escape_uri(NULL, ctx->upstream_model.data,
                       ctx->upstream_model.len, NGX_ESCAPE_URI_COMPONENT);

    model.len = ctx->upstream_model.len + 2 * n;

    model.data = ngx_pnalloc(r->pool, model.len);
    if (model.data == NULL) {
        return NGX_ERROR;
    }

    ngx_escape_uri(model.data, ctx->upstream_model.data,
                   ctx->upstream_model.len, NGX_ESCAPE_URI_COMPONENT);

    /* the client's arguments (alt=sse, ...) go with it, less its key */

    if (ngx_http_llm_gemini_args(r, &args) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_format_path(r, ctx->provider, path, &models, &model,
                                 &method, &args, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* max output tokens: in generationConfig, which may have to be made */

    max = &ctx->req.max_output;
    gc = &ctx->req.generation_config;

    if (gc->type == NGX_HTTP_LLM_JSON_OBJECT) {
        n = ngx_http_llm_clamp_edits(r, ctx, &max, 1, gc->start,
                                     "\"maxOutputTokens\":", edit);

    } else {
        n = ngx_http_llm_clamp_edits(r, ctx, &max, 0, NULL,
                                     "\"generationConfig\":"
                                     "{\"maxOutputTokens\":", edit);

        if (n) {
            /* the object inserted is closed after the number */

            p = ngx_pnalloc(r->pool, edit[0].text.len + 1);
            if (p == NULL) {
                return NGX_ERROR;
            }

            last = ngx_cpymem(p, edit[0].text.data, edit[0].text.len);

            if (last[-1] == ',') {
                last[-1] = '}';
                *last++ = ',';

            } else {
                *last++ = '}';
            }

            edit[0].text.data = p;
            edit[0].text.len = last - p;
        }
    }

    return ngx_http_llm_body_edit(r->pool, &ctx->body, edit, n, body);
}


/*
 * The query of the client's request without its "key" parameters: the
 * provider gets the provider key, in its header.  The client's key is
 * overwritten in the request line too, so that no access log ($request,
 * $args) keeps it.
 */

static ngx_int_t
ngx_http_llm_gemini_args(ngx_http_request_t *r, ngx_str_t *args)
{
    u_char  *p, *last, *start, *end, *d;

    /* empty, not null: the path is copied from it */

    ngx_str_set(args, "");

    if (r->args.len == 0) {
        return NGX_OK;
    }

    d = ngx_pnalloc(r->pool, r->args.len + 1);
    if (d == NULL) {
        return NGX_ERROR;
    }

    args->data = d;
    *d++ = '?';

    p = r->args.data;
    last = p + r->args.len;

    while (p < last) {

        start = p;
        end = ngx_strlchr(p, last, '&');

        if (end == NULL) {
            end = last;
        }

        p = (end < last) ? end + 1 : last;

        if (end - start >= 4 && ngx_strncmp(start, "key=", 4) == 0) {
            ngx_memset(start + 4, '*', end - start - 4);
            continue;
        }

        if (end - start == 3 && ngx_strncmp(start, "key", 3) == 0) {
            continue;
        }

        if (d - args->data > 1) {
            *d++ = '&';
        }

        d = ngx_cpymem(d, start, end - start);
    }

    args->len = d - args->data;

    if (args->len == 1) {
        args->len = 0;
    }

    return NGX_OK;
}


/* a chunk of a stream with alt=sse */

static ngx_int_t
ngx_http_llm_gemini_event(ngx_http_request_t *r, ngx_http_llm_sse_event_t *ev)
{
    u_char                  *p, *last;
    ngx_uint_t               objects;
    ngx_http_llm_ctx_t      *ctx;
    ngx_http_llm_dialect_t  *dialect;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    ctx->events++;

    if (ev->truncated) {
        return NGX_OK;
    }

    p = ev->data.data;
    last = p + ev->data.len;

    dialect = &ngx_http_llm_dialect_gemini;
    objects = ctx->raw.objects;

    if (ngx_http_llm_usage_event(dialect, &ctx->raw, p, last) != NGX_OK) {
        /* not a JSON object */
        return NGX_OK;
    }

    if (ngx_http_llm_usage_strings(p, last, dialect->finish, NULL)) {
        ctx->raw.finished = 1;
    }

    if (ctx->raw.finished && ctx->raw.objects > objects) {
        ctx->raw.final = 1;
    }

    return NGX_OK;
}
