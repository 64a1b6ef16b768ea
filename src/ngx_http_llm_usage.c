
/*
 * nginx-llm-gateway: token usage.
 *
 * Each provider family (a dialect) reports usage in its own object; its
 * counters are read into raw slots, the last value of each winning, and
 * mapped at the end of the request to the five canonical counters: input
 * (all of it), cache_read and cache_write (of input), output (all of it)
 * and reasoning (of output).  Only a real usage object counts: objects are
 * found by the JSON structure, never by searching bytes, and an object
 * whose counters are not non-negative integers is not trusted.  A reply
 * that ends without usage gets an estimate, and says so.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_CAPTURE_MAX  8192


typedef struct {
    ngx_http_llm_dialect_t      *dialect;
    ngx_str_t                    parent;        /* key of a detail object */
    uint64_t                     slot[NGX_HTTP_LLM_USAGE_SLOTS];
    ngx_uint_t                   seen;
    ngx_uint_t                   invalid;
} ngx_http_llm_usage_scan_t;


typedef struct {
    ngx_http_llm_dialect_t      *dialect;
    ngx_http_llm_usage_raw_t    *raw;
    ngx_uint_t                   nested;
} ngx_http_llm_event_scan_t;


static void ngx_http_llm_openai_canonical(ngx_http_llm_usage_raw_t *raw,
    ngx_http_llm_usage_t *u);
static void ngx_http_llm_anthropic_canonical(ngx_http_llm_usage_raw_t *raw,
    ngx_http_llm_usage_t *u);
static void ngx_http_llm_gemini_canonical(ngx_http_llm_usage_raw_t *raw,
    ngx_http_llm_usage_t *u);
static ngx_int_t ngx_http_llm_usage_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_usage_detail(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_usage_set(ngx_http_llm_usage_scan_t *scan,
    ngx_uint_t slot, ngx_http_llm_json_value_t *v);
static ngx_int_t ngx_http_llm_event_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_capture_byte(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char ch);
static ngx_int_t ngx_http_llm_capture_append(ngx_http_request_t *r,
    ngx_http_llm_capture_t *c, u_char ch);


#define ngx_http_llm_str_eq(s, l)                                             \
    ((s)->len == (l)->len && ngx_strncmp((s)->data, (l)->data, (s)->len) == 0)


/* OpenAI chat, embeddings and responses; DeepSeek's cache hits */

static ngx_http_llm_usage_field_t  ngx_http_llm_openai_fields[] = {
    { ngx_string("prompt_tokens"), ngx_null_string, 0 },
    { ngx_string("input_tokens"), ngx_null_string, 0 },
    { ngx_string("prompt_tokens_details"), ngx_string("cached_tokens"), 1 },
    { ngx_string("input_tokens_details"), ngx_string("cached_tokens"), 1 },
    { ngx_string("prompt_cache_hit_tokens"), ngx_null_string, 2 },
    { ngx_string("completion_tokens"), ngx_null_string, 3 },
    { ngx_string("output_tokens"), ngx_null_string, 3 },
    { ngx_string("completion_tokens_details"),
      ngx_string("reasoning_tokens"), 4 },
    { ngx_string("output_tokens_details"), ngx_string("reasoning_tokens"), 4 },
    { ngx_null_string, ngx_null_string, 0 }
};


static ngx_http_llm_usage_field_t  ngx_http_llm_anthropic_fields[] = {
    { ngx_string("input_tokens"), ngx_null_string, 0 },
    { ngx_string("cache_creation_input_tokens"), ngx_null_string, 1 },
    { ngx_string("cache_read_input_tokens"), ngx_null_string, 2 },
    { ngx_string("output_tokens"), ngx_null_string, 3 },
    { ngx_null_string, ngx_null_string, 0 }
};


static ngx_http_llm_usage_field_t  ngx_http_llm_gemini_fields[] = {
    { ngx_string("promptTokenCount"), ngx_null_string, 0 },
    { ngx_string("toolUsePromptTokenCount"), ngx_null_string, 1 },
    { ngx_string("cachedContentTokenCount"), ngx_null_string, 2 },
    { ngx_string("candidatesTokenCount"), ngx_null_string, 3 },
    { ngx_string("thoughtsTokenCount"), ngx_null_string, 4 },
    { ngx_null_string, ngx_null_string, 0 }
};


ngx_http_llm_dialect_t  ngx_http_llm_dialect_openai = {
    ngx_string("openai"),
    ngx_string("usage"),
    ngx_null_string,
    ngx_http_llm_openai_fields,
    ngx_http_llm_openai_canonical
};


ngx_http_llm_dialect_t  ngx_http_llm_dialect_anthropic = {
    ngx_string("anthropic"),
    ngx_string("usage"),
    ngx_string("message"),
    ngx_http_llm_anthropic_fields,
    ngx_http_llm_anthropic_canonical
};


ngx_http_llm_dialect_t  ngx_http_llm_dialect_gemini = {
    ngx_string("gemini"),
    ngx_string("usageMetadata"),
    ngx_null_string,
    ngx_http_llm_gemini_fields,
    ngx_http_llm_gemini_canonical
};


static ngx_http_llm_dialect_t  *ngx_http_llm_dialects[] = {
    &ngx_http_llm_dialect_openai,
    &ngx_http_llm_dialect_anthropic,
    &ngx_http_llm_dialect_gemini,
    NULL
};


ngx_http_llm_dialect_t *
ngx_http_llm_dialect(ngx_str_t *name)
{
    ngx_http_llm_dialect_t  **d;

    for (d = ngx_http_llm_dialects; *d; d++) {
        if (ngx_http_llm_str_eq(&(*d)->name, name)) {
            return *d;
        }
    }

    return NULL;
}


#define ngx_http_llm_slot(raw, n)                                            \
    (((raw)->seen & (1 << (n))) ? (raw)->slot[n] : 0)


static void
ngx_http_llm_openai_canonical(ngx_http_llm_usage_raw_t *raw,
    ngx_http_llm_usage_t *u)
{
    u->input = ngx_http_llm_slot(raw, 0);
    u->output = ngx_http_llm_slot(raw, 3);
    u->reasoning = ngx_http_llm_slot(raw, 4);

    /* DeepSeek's field counts only where the OpenAI detail is absent */

    u->cache_read = (raw->seen & (1 << 1)) ? raw->slot[1]
                                           : ngx_http_llm_slot(raw, 2);
    u->cache_write = 0;
}


static void
ngx_http_llm_anthropic_canonical(ngx_http_llm_usage_raw_t *raw,
    ngx_http_llm_usage_t *u)
{
    u->cache_write = ngx_http_llm_slot(raw, 1);
    u->cache_read = ngx_http_llm_slot(raw, 2);
    u->input = ngx_http_llm_slot(raw, 0) + u->cache_write + u->cache_read;
    u->output = ngx_http_llm_slot(raw, 3);
    u->reasoning = 0;
}


static void
ngx_http_llm_gemini_canonical(ngx_http_llm_usage_raw_t *raw,
    ngx_http_llm_usage_t *u)
{
    u->input = ngx_http_llm_slot(raw, 0) + ngx_http_llm_slot(raw, 1);
    u->cache_read = ngx_http_llm_slot(raw, 2);
    u->cache_write = 0;
    u->reasoning = ngx_http_llm_slot(raw, 4);
    u->output = ngx_http_llm_slot(raw, 3) + u->reasoning;
}


/*
 * A usage object, whole in memory: its counters go into the raw slots
 * only if every one of them is a non-negative integer.
 */

ngx_int_t
ngx_http_llm_usage_read(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, u_char *p, u_char *last)
{
    ngx_uint_t                 i;
    ngx_http_llm_usage_scan_t  scan;

    ngx_memzero(&scan, sizeof(ngx_http_llm_usage_scan_t));
    scan.dialect = dialect;

    if (ngx_http_llm_json_object(p, last, ngx_http_llm_usage_member, &scan)
        != NGX_OK
        || scan.invalid)
    {
        raw->invalid++;
        return NGX_DECLINED;
    }

    for (i = 0; i < NGX_HTTP_LLM_USAGE_SLOTS; i++) {
        if (scan.seen & (1 << i)) {
            raw->slot[i] = scan.slot[i];
            raw->seen |= (1 << i);
        }
    }

    raw->objects++;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_usage_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_usage_scan_t *scan = data;

    ngx_http_llm_usage_field_t  *f;

    for (f = scan->dialect->fields; f->key.len; f++) {

        if (!ngx_http_llm_str_eq(&f->key, key)) {
            continue;
        }

        if (f->sub.len == 0) {
            return ngx_http_llm_usage_set(scan, f->slot, v);
        }

        /* a detail object: absent or null details count as zero */

        if (v->type == NGX_HTTP_LLM_JSON_NULL) {
            return NGX_OK;
        }

        if (v->type != NGX_HTTP_LLM_JSON_OBJECT) {
            scan->invalid = 1;
            return NGX_OK;
        }

        scan->parent = *key;

        if (ngx_http_llm_json_object(v->start, v->end,
                                     ngx_http_llm_usage_detail, scan)
            != NGX_OK)
        {
            scan->invalid = 1;
        }

        return NGX_OK;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_usage_detail(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_usage_scan_t *scan = data;

    ngx_http_llm_usage_field_t  *f;

    for (f = scan->dialect->fields; f->key.len; f++) {
        if (f->sub.len
            && ngx_http_llm_str_eq(&f->key, &scan->parent)
            && ngx_http_llm_str_eq(&f->sub, key))
        {
            return ngx_http_llm_usage_set(scan, f->slot, v);
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_usage_set(ngx_http_llm_usage_scan_t *scan, ngx_uint_t slot,
    ngx_http_llm_json_value_t *v)
{
    u_char    *p;
    uint64_t   n, d;

    if (v->type == NGX_HTTP_LLM_JSON_NULL) {
        scan->slot[slot] = 0;
        scan->seen |= (1 << slot);
        return NGX_OK;
    }

    n = 0;

    for (p = v->start; v->type == NGX_HTTP_LLM_JSON_NUMBER && p < v->end; p++)
    {
        if (*p < '0' || *p > '9') {
            break;
        }

        d = *p - '0';

        if (n > (NGX_HTTP_LLM_COUNTER_MAX - d) / 10) {
            break;
        }

        n = n * 10 + d;
    }

    if (v->type != NGX_HTTP_LLM_JSON_NUMBER || p != v->end) {
        /* a string, a negative, a fraction, an exponent, a huge number */
        scan->invalid = 1;
        return NGX_OK;
    }

    scan->slot[slot] = n;
    scan->seen |= (1 << slot);

    return NGX_OK;
}


/*
 * One SSE event (or any JSON document whole in memory): the usage object
 * at the top level, or in the dialect's parent object.
 */

ngx_int_t
ngx_http_llm_usage_event(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, u_char *p, u_char *last)
{
    ngx_http_llm_event_scan_t  scan;

    if (p == last || *p != '{') {
        return NGX_DECLINED;
    }

    scan.dialect = dialect;
    scan.raw = raw;
    scan.nested = 0;

    return ngx_http_llm_json_object(p, last, ngx_http_llm_event_member, &scan);
}


static ngx_int_t
ngx_http_llm_event_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_event_scan_t *scan = data;

    ngx_http_llm_event_scan_t  nested;

    if (v->type != NGX_HTTP_LLM_JSON_OBJECT) {
        return NGX_OK;
    }

    if (ngx_http_llm_str_eq(key, &scan->dialect->container)) {
        (void) ngx_http_llm_usage_read(scan->dialect, scan->raw, v->start,
                                       v->end);
        return NGX_OK;
    }

    if (!scan->nested
        && scan->dialect->parent.len
        && ngx_http_llm_str_eq(key, &scan->dialect->parent))
    {
        nested = *scan;
        nested.nested = 1;

        (void) ngx_http_llm_json_object(v->start, v->end,
                                        ngx_http_llm_event_member, &nested);
    }

    return NGX_OK;
}


/*
 * A non-streamed reply body, in pieces: the bytes go through a small
 * state machine that follows the JSON structure (strings, escapes,
 * nesting) and captures the value of the top-level usage member (of the
 * top-level object, or of each object of a top-level array: a Gemini
 * stream without SSE), which is read when it is complete.  Memory: one
 * small buffer.
 */

ngx_int_t
ngx_http_llm_usage_body(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, u_char *last)
{
    for ( /* void */ ; p < last; p++) {
        if (ngx_http_llm_capture_byte(r, ctx, *p) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_capture_byte(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char ch)
{
    ngx_str_t               *container;
    ngx_http_llm_capture_t  *c;

    c = &ctx->capture;

    if (c->capturing && ngx_http_llm_capture_append(r, c, ch) != NGX_OK) {
        return NGX_ERROR;
    }

    if (c->in_string) {

        if (c->escape) {
            c->escape = 0;

        } else if (ch == '\\') {
            c->escape = 1;

            if (c->in_key) {
                c->key_len = sizeof(c->key) + 1;
            }

        } else if (ch == '"') {
            c->in_string = 0;

            if (c->in_key) {
                container = &ctx->provider->format->dialect->container;

                c->in_key = 0;
                c->match = (c->key_len == container->len
                            && ngx_strncmp(c->key, container->data,
                                           container->len) == 0);
            }

        } else if (c->in_key) {
            if (c->key_len < sizeof(c->key)) {
                c->key[c->key_len] = ch;
            }

            c->key_len++;
        }

        return NGX_OK;
    }

    switch (ch) {

    case '"':
        c->in_string = 1;
        c->value = 0;

        if (c->depth == c->key_depth && c->want_key) {
            c->in_key = 1;
            c->want_key = 0;
            c->key_len = 0;
        }

        break;

    case '{':
    case '[':

        if (c->depth == c->key_depth && c->value && ch == '{') {
            c->capturing = 1;
            c->overflow = 0;
            c->len = 0;

            if (ngx_http_llm_capture_append(r, c, ch) != NGX_OK) {
                return NGX_ERROR;
            }
        }

        c->value = 0;

        if (c->depth == 0) {
            /* the members of an object, or of the objects of an array */
            c->key_depth = (ch == '[') ? 2 : 1;
        }

        c->depth++;

        if (c->depth == c->key_depth) {
            c->want_key = (ch == '{');
        }

        break;

    case '}':
    case ']':

        if (c->depth) {
            c->depth--;
        }

        if (c->capturing && c->depth == c->key_depth) {
            c->capturing = 0;

            if (c->overflow) {
                ctx->raw.invalid++;

            } else {
                (void) ngx_http_llm_usage_read(ctx->provider->format->dialect,
                                               &ctx->raw, c->buf,
                                               c->buf + c->len);
            }
        }

        break;

    case ':':
        if (c->depth == c->key_depth) {
            c->value = c->match;
            c->match = 0;
        }

        break;

    case ',':
        if (c->depth == c->key_depth) {
            c->want_key = 1;
            c->value = 0;
        }

        break;

    case ' ': case '\t': case '\r': case '\n':
        break;

    default:
        /* a scalar value (null, a number, ...): nothing to capture */
        c->value = 0;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_capture_append(ngx_http_request_t *r, ngx_http_llm_capture_t *c,
    u_char ch)
{
    u_char  *buf;

    if (c->overflow) {
        return NGX_OK;
    }

    if (c->buf == NULL) {
        c->size = 512;

        c->buf = ngx_pnalloc(r->pool, c->size);
        if (c->buf == NULL) {
            return NGX_ERROR;
        }
    }

    if (c->len == c->size) {
        if (c->size >= NGX_HTTP_LLM_CAPTURE_MAX) {
            c->overflow = 1;
            return NGX_OK;
        }

        buf = ngx_pnalloc(r->pool, c->size * 2);
        if (buf == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(buf, c->buf, c->len);
        c->buf = buf;
        c->size *= 2;
    }

    c->buf[c->len++] = ch;

    return NGX_OK;
}


/*
 * The usage of the request, once: from the provider's usage objects, or
 * estimated from what passed (a stream cut short, a reply without usage),
 * or none (no reply from a provider).
 */

void
ngx_http_llm_usage_finalize(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t             status;
    ngx_http_llm_usage_t  *u;

    if (ctx->finalized) {
        return;
    }

    /*
     * Once the provider request is over the result is final; before (a
     * variable used in a header, say) it is the usage so far.
     */

    ctx->finalized = (r->upstream == NULL || r->upstream->cleanup == NULL);

    u = &ctx->usage;
    ngx_memzero(u, sizeof(ngx_http_llm_usage_t));

    if (ctx->provider == NULL || r->upstream == NULL) {
        ctx->usage_source = NGX_HTTP_LLM_USAGE_NONE;
        return;
    }

    if (ctx->raw.invalid && ctx->finalized) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm provider \"%V\" sent %ui usage object(s) with "
                      "counters that are not non-negative integers; "
                      "they are not trusted", &ctx->provider->name,
                      ctx->raw.invalid);
    }

    if (ctx->raw.objects && !ctx->raw.invalid) {
        ctx->provider->format->dialect->canonical(&ctx->raw, u);

        /* the parts never exceed the whole */

        if (u->cache_read > u->input) {
            u->cache_read = u->input;
        }

        if (u->cache_write > u->input - u->cache_read) {
            u->cache_write = u->input - u->cache_read;
        }

        if (u->reasoning > u->output) {
            u->reasoning = u->output;
        }

        ctx->usage_source = NGX_HTTP_LLM_USAGE_PROVIDER;
        return;
    }

    status = r->upstream->headers_in.status_n;

    if (status < 200 || status >= 300 || ctx->received == 0) {
        /* an error reply or no reply: nothing to bill */
        ctx->usage_source = NGX_HTTP_LLM_USAGE_NONE;
        return;
    }

    /*
     * An estimate: a token for every 4 bytes of the request body, and
     * for a stream a token per content event (the role and finish events
     * aside), else a token for every 4 bytes of the reply.
     */

    u->input = (ctx->body.len + 3) / 4;

    if (ctx->sse_reply) {
        u->output = (ctx->events > 2) ? ctx->events - 2 : 0;

    } else if (ctx->endpoint != NGX_HTTP_LLM_EMBEDDINGS) {
        u->output = (ctx->received + 3) / 4;
    }

    ctx->usage_source = NGX_HTTP_LLM_USAGE_ESTIMATED;
}


u_char *
ngx_http_llm_usage_source_name(ngx_uint_t source, size_t *len)
{
    static ngx_str_t  names[] = {
        ngx_string("none"),
        ngx_string("provider"),
        ngx_string("estimated")
    };

    *len = names[source].len;

    return names[source].data;
}
