
/*
 * nginx-llm-gateway: the $llm_* variables.
 *
 * Every variable reads the request context when it is evaluated (they are
 * not cacheable), so the access log sees the final values; a request that
 * never reached the gateway has none of them.
 */


#include "ngx_http_llm_module.h"
#include <openssl/sha.h>


enum {
    ngx_http_llm_var_provider = 0,
    ngx_http_llm_var_route,
    ngx_http_llm_var_model,
    ngx_http_llm_var_upstream_model,
    ngx_http_llm_var_stream,
    ngx_http_llm_var_error,
    ngx_http_llm_var_upstream_status,
    ngx_http_llm_var_request_id,
    ngx_http_llm_var_key_id,
    ngx_http_llm_var_failover,
    ngx_http_llm_var_usage_source,
    ngx_http_llm_var_ttft,
    ngx_http_llm_var_cost,
    ngx_http_llm_var_input,
    ngx_http_llm_var_output,
    ngx_http_llm_var_cache_read,
    ngx_http_llm_var_cache_write,
    ngx_http_llm_var_reasoning,
    ngx_http_llm_var_total,
    ngx_http_llm_var_attempts,
    ngx_http_llm_var_limit_status,
    ngx_http_llm_var_experiment,
    ngx_http_llm_var_variant
};


static ngx_int_t  ngx_http_llm_request_id_index = NGX_ERROR;


static ngx_int_t ngx_http_llm_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_key_id(ngx_http_request_t *r, ngx_str_t *s);


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

    { ngx_string("llm_request_id"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_request_id, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_key_id"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_key_id, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_failover"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_failover, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempts"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_attempts, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_usage_source"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_usage_source, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_ttft"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_ttft, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_cost"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_cost, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_input_tokens"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_input, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_output_tokens"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_output, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_cache_read_tokens"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_cache_read, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_cache_write_tokens"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_cache_write, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_reasoning_tokens"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_reasoning, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_total_tokens"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_total, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_key_name"), NULL, ngx_http_llm_key_name_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_key_meta_"), NULL, ngx_http_llm_key_meta_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE|NGX_HTTP_VAR_PREFIX, 0 },

    { ngx_string("llm_limit_status"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_limit_status, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_experiment"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_experiment, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_variant"), NULL, ngx_http_llm_variable,
      ngx_http_llm_var_variant, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_llm_add_variables(ngx_conf_t *cf)
{
    ngx_str_t             name;
    ngx_http_variable_t  *var, *v;

    ngx_str_set(&name, "request_id");

    ngx_http_llm_request_id_index = ngx_http_get_variable_index(cf, &name);

    if (ngx_http_llm_request_id_index == NGX_ERROR) {
        return NGX_ERROR;
    }

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
    u_char                     *p;
    uint64_t                    n;
    ngx_str_t                   s;
    ngx_http_llm_ctx_t         *ctx;
    ngx_http_variable_value_t  *id;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_str_null(&s);

    if (data >= ngx_http_llm_var_cost && data <= ngx_http_llm_var_total) {
        ngx_http_llm_price_request(r, ctx);
    }

    switch (data) {

    case ngx_http_llm_var_provider:
        if (ctx->provider) {
            s = ctx->provider->name;
        }
        goto done;

    case ngx_http_llm_var_route:
        if (ctx->route) {
            s = ctx->route->name;
        }
        goto done;

    case ngx_http_llm_var_model:
        s = ctx->model;
        goto done;

    case ngx_http_llm_var_upstream_model:
        s = ctx->provider ? ctx->upstream_model : s;
        goto done;

    case ngx_http_llm_var_stream:
        if (ctx->model.len
            && ctx->endpoint != NGX_HTTP_LLM_EMBEDDINGS
            && ctx->endpoint != NGX_HTTP_LLM_MODELS)
        {
            s.data = (u_char *) (ctx->stream ? "1" : "0");
            s.len = 1;
        }
        goto done;

    case ngx_http_llm_var_error:
        s = ctx->error;
        goto done;

    case ngx_http_llm_var_request_id:
        if (ctx->request_id.len) {
            /* signed, of an experiment */
            s = ctx->request_id;
            goto done;
        }

        id = ngx_http_get_indexed_variable(r, ngx_http_llm_request_id_index);

        if (id && !id->not_found) {
            s.data = id->data;
            s.len = id->len;
        }
        goto done;

    case ngx_http_llm_var_key_id:
        if (ngx_http_llm_key_id(r, &s) != NGX_OK) {
            return NGX_ERROR;
        }
        goto done;

    case ngx_http_llm_var_failover:
        if (ctx->nattempts && r->upstream) {
            s.data = ngx_http_llm_attempts_text(r, ctx, &s.len);

            if (s.data == NULL) {
                return NGX_ERROR;
            }
        }
        goto done;

    case ngx_http_llm_var_attempts:
        if (ctx->nattempts == 0 || r->upstream == NULL) {
            goto done;
        }

        n = ngx_http_llm_attempts_made(ctx);
        break;

    case ngx_http_llm_var_experiment:
        if (ctx->experiment) {
            s = ctx->experiment->name;
        }
        goto done;

    case ngx_http_llm_var_variant:
        if (ctx->variant) {
            s = ctx->variant->name;
        }
        goto done;

    case ngx_http_llm_var_limit_status:
        if (ctx->limit_status) {
            s = *ngx_http_llm_limit_status_name(ctx->limit_status);
        }
        goto done;

    case ngx_http_llm_var_usage_source:
        ngx_http_llm_usage_finalize(r, ctx);
        s.data = ngx_http_llm_usage_source_name(ctx->usage_source, &s.len);
        goto done;

    case ngx_http_llm_var_upstream_status:
        if (r->upstream == NULL || r->upstream->headers_in.status_n == 0) {
            goto done;
        }

        n = r->upstream->headers_in.status_n;
        break;

    case ngx_http_llm_var_ttft:
        if (ctx->first_byte == 0) {
            goto done;
        }

        n = ctx->first_byte - ctx->start;
        break;

    case ngx_http_llm_var_cost:
        if (!ctx->priced) {
            goto done;
        }

        p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 14);
        if (p == NULL) {
            return NGX_ERROR;
        }

        s.data = p;
        s.len = ngx_http_llm_format_usd(p, ctx->cost) - p;
        goto done;

    case ngx_http_llm_var_input:
        n = ctx->usage.input;
        break;

    case ngx_http_llm_var_output:
        n = ctx->usage.output;
        break;

    case ngx_http_llm_var_cache_read:
        n = ctx->usage.cache_read;
        break;

    case ngx_http_llm_var_cache_write:
        n = ctx->usage.cache_write;
        break;

    case ngx_http_llm_var_reasoning:
        n = ctx->usage.reasoning;
        break;

    case ngx_http_llm_var_total:
        n = ctx->usage.input + ctx->usage.output;
        break;

    default:
        goto done;
    }

    /* a number */

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    s.data = p;
    s.len = ngx_sprintf(p, "%uL", n) - p;

done:

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


/*
 * The client's key as 16 hex digits of a SHA-256 of it: per-key reports from
 * the log, with no key in it.  The key is the Bearer token of
 * Authorization, else X-Api-Key, else X-Goog-Api-Key.
 */

static ngx_int_t
ngx_http_llm_key_id(ngx_http_request_t *r, ngx_str_t *s)
{
    u_char      *p, md[SHA256_DIGEST_LENGTH];
    ngx_str_t    key;
    SHA256_CTX   sha;

    static u_char  domain[] = "nginx-llm-gateway key id";

    (void) ngx_http_llm_client_key(r, &key);

    if (key.len == 0) {
        return NGX_OK;
    }

    /*
     * a hash of its own, so that it is no prefix of the SHA-256 that an
     * llm_keys file may hold of the key
     */

    SHA256_Init(&sha);
    SHA256_Update(&sha, domain, sizeof(domain));
    SHA256_Update(&sha, key.data, key.len);
    SHA256_Final(md, &sha);

    p = ngx_pnalloc(r->pool, 16);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_hex_dump(p, md, 8);

    s->data = p;
    s->len = 16;

    return NGX_OK;
}
