
/*
 * nginx-llm-gateway: the $llm_* variables.
 *
 * Every variable reads the request context when it is evaluated (they are
 * not cacheable), so the access log sees the final values; a request that
 * never reached the gateway has none of them.
 */


#include "ngx_http_llm_module.h"


enum {
    ngx_http_llm_var_provider = 0,
    ngx_http_llm_var_route,
    ngx_http_llm_var_model,
    ngx_http_llm_var_upstream_model,
    ngx_http_llm_var_stream,
    ngx_http_llm_var_error,
    ngx_http_llm_var_upstream_status
};


static ngx_int_t ngx_http_llm_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_llm_vars[] = {

    { ngx_string("llm_provider"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_provider, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_route"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_route, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_model"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_model, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_upstream_model"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_upstream_model, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_stream"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_stream, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_error"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_error, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_upstream_status"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_upstream_status, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_llm_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_llm_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char              *p;
    ngx_str_t            s;
    ngx_uint_t           status;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_str_null(&s);

    switch (data) {

    case ngx_http_llm_var_provider:
        if (ctx->provider) {
            s = ctx->provider->name;
        }
        break;

    case ngx_http_llm_var_route:
        if (ctx->route) {
            s = ctx->route->name;
        }
        break;

    case ngx_http_llm_var_model:
        s = ctx->model;
        break;

    case ngx_http_llm_var_upstream_model:
        s = ctx->provider ? ctx->upstream_model : s;
        break;

    case ngx_http_llm_var_stream:
        if (ctx->endpoint == NGX_HTTP_LLM_CHAT && ctx->model.len) {
            ngx_str_set(&s, "0");
            s.data = (u_char *) (ctx->stream ? "1" : "0");
        }
        break;

    case ngx_http_llm_var_error:
        s = ctx->error;
        break;

    default: /* ngx_http_llm_var_upstream_status */

        if (r->upstream == NULL || r->upstream->headers_in.status_n == 0) {
            break;
        }

        status = r->upstream->headers_in.status_n;

        p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        s.data = p;
        s.len = ngx_sprintf(p, "%ui", status) - p;
    }

    if (s.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = s.data;

    return NGX_OK;
}
