
/*
 * nginx-llm-gateway: the Gemini API (generateContent and
 * streamGenerateContent), passed through: the model is in the URL, which
 * the gateway maps to the provider's name; the key goes in
 * x-goog-api-key; the usage is read from usageMetadata.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_gemini_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body);


ngx_http_llm_format_t  ngx_http_llm_format_gemini = {
    ngx_string("gemini"),
    ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_GENERATE)
    |ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_STREAM),
    ngx_string("x-goog-api-key: "),
    ngx_http_llm_gemini_create_request,
    ngx_http_llm_format_usage_event,
    &ngx_http_llm_dialect_gemini
};


static ngx_int_t
ngx_http_llm_gemini_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body)
{
    u_char     *d;
    size_t      n;
    ngx_str_t   models, model, method, args;

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

    /* the client's arguments (alt=sse, ...) go with it */

    ngx_str_null(&args);

    if (r->args.len) {
        d = ngx_pnalloc(r->pool, r->args.len + 1);
        if (d == NULL) {
            return NGX_ERROR;
        }

        d[0] = '?';
        ngx_memcpy(d + 1, r->args.data, r->args.len);

        args.data = d;
        args.len = r->args.len + 1;
    }

    if (ngx_http_llm_format_path(r, ctx->provider, path, &models, &model,
                                 &method, &args, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_body_edit(r->pool, &ctx->body, NULL, 0, body);
}
