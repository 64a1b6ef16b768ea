
/*
 * nginx-llm-gateway: the Anthropic Messages API, passed through: clients
 * that speak it (the Anthropic SDKs) reach Anthropic through the gateway,
 * which injects the key, maps the model and reads the usage.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_ANTHROPIC_VERSION  "2023-06-01"


static ngx_int_t ngx_http_llm_anthropic_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body);


ngx_http_llm_format_t  ngx_http_llm_format_anthropic = {
    ngx_string("anthropic"),
    ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_MESSAGES),
    ngx_string("x-api-key: "),
    ngx_http_llm_anthropic_create_request,
    ngx_http_llm_format_usage_event,
    &ngx_http_llm_dialect_anthropic
};


static ngx_int_t
ngx_http_llm_anthropic_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body)
{
    ngx_str_t             endpoint;
    ngx_uint_t            n;
    ngx_http_llm_edit_t   edit;

    ngx_str_set(&endpoint, "/messages");

    if (ngx_http_llm_format_path(r, ctx->provider, path, &endpoint, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* the API version: the provider's, else the client's, else ours */

    if (!ngx_http_llm_provider_has_header(ctx->provider,
                                          (u_char *) "anthropic-version",
                                          sizeof("anthropic-version") - 1)
        && ngx_http_llm_client_header(r, (u_char *) "anthropic-version",
                                      sizeof("anthropic-version") - 1)
           == NULL)
    {
        ngx_str_set(headers, "anthropic-version: "
                             NGX_HTTP_LLM_ANTHROPIC_VERSION CRLF);
    }

    n = 0;

    if (ctx->model_map) {
        edit.start = ctx->req.model.start;
        edit.end = ctx->req.model.end;
        edit.text = ctx->model_map->json;
        n = 1;
    }

    return ngx_http_llm_body_edit(r->pool, &ctx->body, &edit, n, body);
}
