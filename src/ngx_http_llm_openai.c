
/*
 * nginx-llm-gateway: the OpenAI wire format (Chat Completions and
 * Embeddings), spoken by OpenAI and by every OpenAI-compatible provider.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_USAGE_NULL  ",\"usage\":null}"


static ngx_int_t ngx_http_llm_openai_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body);
static ngx_int_t ngx_http_llm_openai_include_usage(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_edit_t *edit);
static ngx_int_t ngx_http_llm_openai_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);
static ngx_int_t ngx_http_llm_openai_chunk_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static void ngx_http_llm_openai_finished(ngx_http_llm_ctx_t *ctx, u_char *p,
    u_char *last);


typedef struct {
    ngx_http_llm_json_value_t    choices;
    ngx_http_llm_json_value_t    usage;
    u_char                      *usage_key;
} ngx_http_llm_openai_chunk_t;


ngx_http_llm_format_t  ngx_http_llm_format_openai = {
    ngx_string("openai"),
    ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_CHAT)
    |ngx_http_llm_endpoint_bit(NGX_HTTP_LLM_EMBEDDINGS),
    ngx_string("Authorization: Bearer "),
    ngx_http_llm_openai_create_request,
    ngx_http_llm_openai_event,
    &ngx_http_llm_dialect_openai
};


/*
 * The client's bytes go to the provider as they are, with at most two
 * edits: the model alias replaced by the provider's name, and, for a
 * stream, stream_options.include_usage set so that the provider reports
 * usage (the usage is then removed from what the client receives, unless
 * the client asked for it).
 */

static ngx_int_t
ngx_http_llm_openai_create_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *path, ngx_str_t *headers,
    ngx_chain_t **body)
{
    ngx_str_t                   endpoint;
    ngx_uint_t                  n;
    ngx_http_llm_edit_t         edit[8];
    ngx_http_llm_provider_t    *p;
    ngx_http_llm_json_value_t  *max[2];

    p = ctx->provider;

    if (ctx->endpoint == NGX_HTTP_LLM_CHAT) {
        ngx_str_set(&endpoint, "/chat/completions");

    } else {
        ngx_str_set(&endpoint, "/embeddings");
    }

    if (ngx_http_llm_format_path(r, p, path, &endpoint, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    n = 0;

    if (ctx->model_map) {
        edit[n].start = ctx->req.model.start;
        edit[n].end = ctx->req.model.end;
        edit[n].text = ctx->model_map->json;
        n++;

    } else if (ctx->model_override) {
        edit[n].start = ctx->req.model.start;
        edit[n].end = ctx->req.model.end;
        edit[n].text = *ctx->variant->model_json;
        n++;
    }

    n += ngx_http_llm_experiment_edits(r, ctx, &edit[n]);

    ctx->strip_usage = 0;

    if (ctx->stream && p->stream_usage
        && ngx_http_llm_openai_include_usage(r, ctx, &edit[n]) == NGX_OK)
    {
        ctx->strip_usage = 1;
        n++;
    }

    max[0] = &ctx->req.max_tokens;
    max[1] = &ctx->req.max_completion_tokens;

    n += ngx_http_llm_clamp_edits(r, ctx, max, 2, NULL, "\"max_tokens\":",
                                  &edit[n]);

    return ngx_http_llm_body_edit(r->pool, &ctx->body, edit, n, body);
}


static ngx_int_t
ngx_http_llm_openai_include_usage(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_edit_t *edit)
{
    u_char                     *p, *last;
    ngx_http_llm_json_value_t  *so, *include;

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

    /* its members were read, once each, when the request was validated */

    include = &ctx->req.include_usage;

    if (include->type == NGX_HTTP_LLM_JSON_TRUE) {
        /* the client asked for the usage chunk itself */
        return NGX_DECLINED;
    }

    if (include->type != NGX_HTTP_LLM_JSON_NONE) {
        edit->start = include->start;
        edit->end = include->end;
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

    p = ev->data.data;
    last = p + ev->data.len;

    if (ev->scanned) {
        /* the scan of the event's text saw the finish reason */

        if (ev->finish) {
            ctx->raw.finished = 1;
        }

    } else if (!ctx->raw.finished) {
        ngx_http_llm_openai_finished(ctx, p, last);
    }

    /*
     * OpenAI ends every chunk but the last with "usage":null when the
     * usage is asked for: the member of the object that the last byte
     * closes, cut without a scan
     */

    if (ctx->strip_usage
        && ev->data.len > sizeof(NGX_HTTP_LLM_USAGE_NULL) - 1
        && ngx_strncmp(last - (sizeof(NGX_HTTP_LLM_USAGE_NULL) - 1),
                       NGX_HTTP_LLM_USAGE_NULL,
                       sizeof(NGX_HTTP_LLM_USAGE_NULL) - 1)
           == 0)
    {
        ev->cut_start = last - (sizeof(NGX_HTTP_LLM_USAGE_NULL) - 1);
        ev->cut_end = last - 1;
        ev->action = NGX_HTTP_LLM_SSE_REPLACE;
        return NGX_OK;
    }

    /*
     * Most chunks have no usage member, or "usage":null: they pass without
     * a scan of their own.  (The usage read is the object of the last
     * top-level member of the name; the scan of the text found none if no
     * member of the name, at any depth, is an object.)
     */

    if (ev->scanned) {
        if (ev->usage == NULL
            || (!ctx->strip_usage && ev->usage_objects == 0))
        {
            return NGX_OK;
        }

    } else if (ngx_http_llm_memstr(p, ev->data.len, "\"usage\"") == NULL) {
        return NGX_OK;
    }

    ngx_memzero(&chunk, sizeof(ngx_http_llm_openai_chunk_t));

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
 * Has the model finished?  A "finish_reason" member with a string value
 * (a quote inside a string is escaped, so these bytes are a key): only
 * the usage may follow.
 */

static void
ngx_http_llm_openai_finished(ngx_http_llm_ctx_t *ctx, u_char *p,
    u_char *last)
{
    p = ngx_http_llm_memstr(p, last - p, "\"finish_reason\"");

    if (p == NULL) {
        return;
    }

    for (p += sizeof("\"finish_reason\"") - 1;
         p < last && (*p == ' ' || *p == ':' || *p == '\t');
         p++)
    {
        /* void */
    }

    if (p < last && *p == '"') {
        ctx->raw.finished = 1;
    }
}
