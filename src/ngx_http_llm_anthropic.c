
/*
 * nginx-llm-gateway: the Anthropic Messages API, passed through: clients
 * that speak it (the Anthropic SDKs) reach Anthropic through the gateway,
 * which injects the key, maps the model and reads the usage.
 *
 * A stream's usage comes twice: message_start has the input and a
 * placeholder output (1), message_delta the final output, and repeats
 * the input on newer API versions.  The usage is final once a
 * message_delta with an output count is followed by message_stop; a
 * stream that ends before (cut, or with an error event) is estimated.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_ANTHROPIC_VERSION  "2023-06-01"


typedef struct {
    ngx_http_llm_json_value_t    type;
    ngx_http_llm_json_value_t    message;
    ngx_http_llm_json_value_t    usage;
} ngx_http_llm_anthropic_event_t;


static ngx_int_t ngx_http_llm_anthropic_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body);
static ngx_int_t ngx_http_llm_anthropic_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);
static ngx_int_t ngx_http_llm_anthropic_event_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);


ngx_http_llm_format_t  ngx_http_llm_format_anthropic = {
    ngx_string("anthropic"),
    ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_MESSAGES),
    ngx_string("x-api-key: "),
    ngx_http_llm_anthropic_create_request,
    ngx_http_llm_anthropic_event,
    &ngx_http_llm_dialect_anthropic
};


#define ngx_http_llm_anthropic_is(type, s)                                    \
    ((type)->len == sizeof(s) - 1                                             \
     && ngx_strncmp((type)->data, s, sizeof(s) - 1) == 0)


static ngx_int_t
ngx_http_llm_anthropic_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body)
{
    ngx_str_t                   endpoint;
    ngx_uint_t                  n;
    ngx_http_llm_edit_t         edit[6];
    ngx_http_llm_json_value_t  *max;

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
        edit[0].start = ctx->req.model.start;
        edit[0].end = ctx->req.model.end;
        edit[0].text = ctx->model_map->json;
        n = 1;

    } else if (ctx->model_override) {
        edit[0].start = ctx->req.model.start;
        edit[0].end = ctx->req.model.end;
        edit[0].text = *ctx->variant->model_json;
        n = 1;
    }

    n += ngx_http_llm_experiment_edits(r, ctx, &edit[n]);

    max = &ctx->req.max_tokens;

    n += ngx_http_llm_clamp_edits(r, ctx, &max, 1, NULL, "\"max_tokens\":",
                                  &edit[n]);

    return ngx_http_llm_body_edit(r->pool, &ctx->body, edit, n, body);
}


static ngx_int_t
ngx_http_llm_anthropic_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev)
{
    u_char                          *p, *last;
    ngx_str_t                        type;
    ngx_http_llm_ctx_t              *ctx;
    ngx_http_llm_dialect_t          *dialect;
    ngx_http_llm_anthropic_event_t   e;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    ctx->events++;

    p = ev->data.data;
    last = p + ev->data.len;

    /* the text events, pings and most others pass without a scan */

    if (ev->truncated
        || (ngx_http_llm_memstr(p, ev->data.len, "\"usage\"") == NULL
            && ngx_http_llm_memstr(p, ev->data.len, "message_stop") == NULL))
    {
        return NGX_OK;
    }

    ngx_memzero(&e, sizeof(ngx_http_llm_anthropic_event_t));

    if (ngx_http_llm_json_object(p, last, ngx_http_llm_anthropic_event_member,
                                 &e)
        != NGX_OK)
    {
        return NGX_OK;
    }

    /* the type of the event: in its data, else its name */

    if (e.type.type == NGX_HTTP_LLM_JSON_STRING) {
        type.data = e.type.start + 1;
        type.len = e.type.end - e.type.start - 2;

    } else {
        type = ev->event;
    }

    dialect = &ngx_http_llm_dialect_anthropic;

    if (e.message.type == NGX_HTTP_LLM_JSON_OBJECT) {
        /* message_start */
        (void) ngx_http_llm_usage_event(dialect, &ctx->raw, e.message.start,
                                        e.message.end);
    }

    if (e.usage.type == NGX_HTTP_LLM_JSON_OBJECT
        && ngx_http_llm_usage_read(dialect, &ctx->raw, e.usage.start,
                                   e.usage.end)
           == NGX_OK
        && ngx_http_llm_anthropic_is(&type, "message_delta")
        && (ctx->raw.last & (1 << NGX_HTTP_LLM_SLOT_OUTPUT)))
    {
        ctx->raw.delta = 1;
        ctx->raw.finished = 1;
    }

    if (ngx_http_llm_anthropic_is(&type, "message_stop")) {
        ctx->raw.final = ctx->raw.delta;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_anthropic_event_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data)
{
    ngx_http_llm_anthropic_event_t *e = data;

    if (key->len == 4 && ngx_strncmp(key->data, "type", 4) == 0) {
        e->type = *v;

    } else if (key->len == 7 && ngx_strncmp(key->data, "message", 7) == 0) {
        e->message = *v;

    } else if (key->len == 5 && ngx_strncmp(key->data, "usage", 5) == 0) {
        e->usage = *v;
    }

    return NGX_OK;
}
