
/*
 * nginx-llm-gateway: token usage.
 *
 * Each provider family (a dialect) reports usage in its own object; its
 * counters are read into raw slots, the last value of each winning, and
 * mapped at the end of the request to the five canonical counters: input
 * (all of it), cache_read and cache_write (of input), output (all of it)
 * and reasoning (of output).  Only a real usage object counts: objects are
 * found by the JSON structure, never by searching bytes, and an object
 * whose counters are not non-negative integers is not trusted, and one
 * without a counter is no report.  A stream counts the provider's usage
 * only once the provider's final report came; a reply that ends without
 * it gets an estimate, and says so.
 */


#include "ngx_http_llm_module.h"

#if ((defined __GNUC__ || defined __clang__) && defined __SSE2__)
#include <emmintrin.h>
#define NGX_HTTP_LLM_USAGE_SSE2  1
#endif


#define NGX_HTTP_LLM_CAPTURE_MAX  8192


typedef struct {
    ngx_http_llm_dialect_t      *dialect;
    ngx_str_t                    parent;        /* key of a detail object */
    uint64_t                     slot[NGX_HTTP_LLM_USAGE_SLOTS];
    ngx_uint_t                   seen;
    ngx_uint_t                   counted;       /* slots given a number */
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
static ngx_http_llm_json_member_pt ngx_http_llm_usage_nested(
    ngx_str_t *key, void *data);
static ngx_int_t ngx_http_llm_usage_detail(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_usage_set(ngx_http_llm_usage_scan_t *scan,
    ngx_uint_t slot, ngx_http_llm_json_value_t *v);
static ngx_int_t ngx_http_llm_event_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_usage_reply(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, u_char *last);
static ngx_int_t ngx_http_llm_capture_end(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *start, u_char *end);
static ngx_int_t ngx_http_llm_capture_run(ngx_http_request_t *r,
    ngx_http_llm_capture_t *c, u_char *p, u_char *last);
static ngx_int_t ngx_http_llm_capture_byte(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char ch);
static ngx_int_t ngx_http_llm_capture_append(ngx_http_request_t *r,
    ngx_http_llm_capture_t *c, u_char ch);
static void ngx_http_llm_capture_word(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_capture_t *c, u_char ch);
static ngx_uint_t ngx_http_llm_capture_key(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_capture_t *c);
static void ngx_http_llm_usage_clamp(ngx_http_llm_usage_t *u);
static u_char *ngx_http_llm_string_end(u_char *p, u_char *last);
static ngx_inline u_char *ngx_http_llm_nest_run(u_char *p, u_char *last);
static ngx_inline u_char *ngx_http_llm_quote(u_char *p, u_char *last);
static ngx_inline u_char *ngx_http_llm_string_run(u_char *p,
    u_char *last);
static u_char *ngx_http_llm_string_close(u_char *p, u_char *last);
static ngx_uint_t ngx_http_llm_key_in(ngx_str_t *keys, u_char *p, size_t len);
static uint64_t ngx_http_llm_text_len(u_char *p, u_char *last);
static ngx_uint_t ngx_http_llm_utf8_len(uint32_t code);


/* what a string of a stream's JSON array is: a key, of the text or end */

#define NGX_HTTP_LLM_WORD_TEXT  1
#define NGX_HTTP_LLM_WORD_END   2


#define ngx_http_llm_str_eq(s, l)                                             \
    ((s)->len == (l)->len                                                     \
     && ((s)->len == 0                                                        \
         || ((s)->data[0] == (l)->data[0]                                     \
             && ngx_strncmp((s)->data, (l)->data, (s)->len) == 0)))


/*
 * Does a word of 8 bytes hold a '"' or a '\\'?  (A byte of x is zero if
 * x - 0x01 borrows into its high bit while x's own high bit is clear:
 * exact as to whether any byte is.)
 */

#define NGX_HTTP_LLM_USAGE_ONES   0x0101010101010101ULL
#define NGX_HTTP_LLM_USAGE_HIGHS  0x8080808080808080ULL

#define ngx_http_llm_usage_zero(x)                                            \
    (((x) - NGX_HTTP_LLM_USAGE_ONES) & ~(x) & NGX_HTTP_LLM_USAGE_HIGHS)

#define ngx_http_llm_usage_quote(x)                                           \
    (ngx_http_llm_usage_zero((x) ^ (NGX_HTTP_LLM_USAGE_ONES * '"'))           \
     | ngx_http_llm_usage_zero((x) ^ (NGX_HTTP_LLM_USAGE_ONES * '\\')))


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


/* Anthropic; newer API versions count thinking apart, inside the output */

static ngx_http_llm_usage_field_t  ngx_http_llm_anthropic_fields[] = {
    { ngx_string("input_tokens"), ngx_null_string, 0 },
    { ngx_string("cache_creation_input_tokens"), ngx_null_string, 1 },
    { ngx_string("cache_read_input_tokens"), ngx_null_string, 2 },
    { ngx_string("output_tokens"), ngx_null_string, 3 },
    { ngx_string("output_tokens_details"), ngx_string("thinking_tokens"), 4 },
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


/*
 * The text of a reply, for the estimate of a stream cut short: the
 * string values of these members, at any depth.
 */

static ngx_str_t  ngx_http_llm_openai_content[] = {
    ngx_string("content"),
    ngx_string("reasoning_content"),
    ngx_string("reasoning"),
    ngx_string("refusal"),
    ngx_string("arguments"),
    ngx_null_string
};


static ngx_str_t  ngx_http_llm_anthropic_content[] = {
    ngx_string("text"),
    ngx_string("thinking"),
    ngx_string("partial_json"),
    ngx_null_string
};


static ngx_str_t  ngx_http_llm_gemini_content[] = {
    ngx_string("text"),
    ngx_null_string
};


/* the member that says an OpenAI chunk is the model's last */

static ngx_str_t  ngx_http_llm_openai_finish[] = {
    ngx_string("finish_reason"),
    ngx_null_string
};


/* the members that say a Gemini reply is over: its usage is then final */

static ngx_str_t  ngx_http_llm_gemini_finish[] = {
    ngx_string("finishReason"),
    ngx_string("blockReason"),
    ngx_null_string
};


static ngx_str_t  ngx_http_llm_no_keys[] = {
    ngx_null_string
};


/*
 * OpenAI sends a stream's usage once, in its last chunk: any usage
 * object is final.  Anthropic's message_start has the input and a
 * placeholder output, Gemini's chunks running totals: their final usage
 * is marked by the format.
 */

ngx_http_llm_dialect_t  ngx_http_llm_dialect_openai = {
    ngx_string("openai"),
    ngx_string("usage"),
    ngx_null_string,
    ngx_http_llm_openai_fields,
    ngx_http_llm_openai_canonical,
    ngx_http_llm_openai_content,
    ngx_http_llm_openai_finish,
    0
};


ngx_http_llm_dialect_t  ngx_http_llm_dialect_anthropic = {
    ngx_string("anthropic"),
    ngx_string("usage"),
    ngx_string("message"),
    ngx_http_llm_anthropic_fields,
    ngx_http_llm_anthropic_canonical,
    ngx_http_llm_anthropic_content,
    ngx_http_llm_no_keys,
    1
};


ngx_http_llm_dialect_t  ngx_http_llm_dialect_gemini = {
    ngx_string("gemini"),
    ngx_string("usageMetadata"),
    ngx_null_string,
    ngx_http_llm_gemini_fields,
    ngx_http_llm_gemini_canonical,
    ngx_http_llm_gemini_content,
    ngx_http_llm_gemini_finish,
    1
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
    u->reasoning = ngx_http_llm_slot(raw, 4);
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
 * only if every one of them is a non-negative integer, and at least one
 * is a number (an empty object, or one of nulls, reports nothing).
 */

ngx_int_t
ngx_http_llm_usage_read(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, u_char *p, u_char *last)
{
    ngx_uint_t                 i;
    ngx_http_llm_usage_scan_t  scan;

    ngx_memzero(&scan, sizeof(ngx_http_llm_usage_scan_t));
    scan.dialect = dialect;

    if (ngx_http_llm_json_object_nested(p, last, ngx_http_llm_usage_member,
                                        ngx_http_llm_usage_nested, &scan)
        != NGX_OK
        || scan.invalid)
    {
        raw->invalid++;
        return NGX_DECLINED;
    }

    if (scan.counted == 0) {
        return NGX_DECLINED;
    }

    for (i = 0; i < NGX_HTTP_LLM_USAGE_SLOTS; i++) {
        if (scan.seen & (1 << i)) {
            raw->slot[i] = scan.slot[i];
            raw->seen |= (1 << i);
        }
    }

    raw->objects++;
    raw->last = scan.counted;

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

        /*
         * a detail object, whose members went to ngx_http_llm_usage_detail()
         * as it was read; absent or null details count as zero
         */

        if (v->type != NGX_HTTP_LLM_JSON_NULL
            && v->type != NGX_HTTP_LLM_JSON_OBJECT)
        {
            scan->invalid = 1;
        }

        return NGX_OK;
    }

    return NGX_OK;
}


/* the members of a detail object are read in the pass of the usage */

static ngx_http_llm_json_member_pt
ngx_http_llm_usage_nested(ngx_str_t *key, void *data)
{
    ngx_http_llm_usage_scan_t *scan = data;

    ngx_http_llm_usage_field_t  *f;

    for (f = scan->dialect->fields; f->key.len; f++) {

        if (!ngx_http_llm_str_eq(&f->key, key)) {
            continue;
        }

        if (f->sub.len == 0) {
            return NULL;
        }

        scan->parent = *key;

        return ngx_http_llm_usage_detail;
    }

    return NULL;
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
    scan->counted |= (1 << slot);

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
 * The string values of the members named in keys, at any depth of a
 * JSON text whole in memory: how many there are, and the bytes of their
 * text (UTF-8, escapes decoded) added to *bytes.  Strings are found by
 * their quotes, so no key is ever taken from inside a string; the text
 * is not validated.
 */

ngx_uint_t
ngx_http_llm_usage_strings(u_char *p, u_char *last, ngx_str_t *keys,
    uint64_t *bytes)
{
    u_char      *s, *e;
    ngx_uint_t   n;

    n = 0;

    while (p < last) {

        s = memchr(p, '"', last - p);
        if (s == NULL) {
            break;
        }

        e = ngx_http_llm_string_end(s + 1, last);
        if (e == NULL) {
            break;
        }

        /* a key, if a colon follows: one of those looked for? */

        for (p = e + 1; p < last; p++) {
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                break;
            }
        }

        if (p == last || *p != ':'
            || !ngx_http_llm_key_in(keys, s + 1, e - (s + 1)))
        {
            continue;
        }

        for (p++; p < last; p++) {
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                break;
            }
        }

        if (p == last || *p != '"') {
            /* not a string: null, an object, ... */
            continue;
        }

        e = ngx_http_llm_string_end(p + 1, last);
        if (e == NULL) {
            break;
        }

        n++;

        if (bytes) {
            *bytes += ngx_http_llm_text_len(p + 1, e);
        }

        p = e + 1;
    }

    return n;
}


/* the text of an SSE event of a stream, for the estimate if it is cut */

void
ngx_http_llm_usage_content(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, ngx_str_t *data)
{
    if (data->len) {
        (void) ngx_http_llm_usage_strings(data->data, data->data + data->len,
                                          dialect->content, &raw->content);
    }
}


/* the next '"', '{', '}', '[' or ']' from p, or last */

static ngx_inline u_char *
ngx_http_llm_nest_run(u_char *p, u_char *last)
{
#if (NGX_HTTP_LLM_USAGE_SSE2)
    int       m;
    __m128i   x;

    while (last - p >= 16) {
        x = _mm_loadu_si128((const __m128i *) p);

        m = _mm_movemask_epi8(
                _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                                 _mm_cmpeq_epi8(x, _mm_set1_epi8('{'))),
                    _mm_or_si128(
                        _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('}')),
                                     _mm_cmpeq_epi8(x, _mm_set1_epi8('['))),
                        _mm_cmpeq_epi8(x, _mm_set1_epi8(']')))));

        if (m) {
            return p + __builtin_ctz(m);
        }

        p += 16;
    }
#endif

    while (p < last && *p != '"' && *p != '{' && *p != '}' && *p != '['
           && *p != ']')
    {
        p++;
    }

    return p;
}


/* the next '"' from p, or last */

static ngx_inline u_char *
ngx_http_llm_quote(u_char *p, u_char *last)
{
#if (NGX_HTTP_LLM_USAGE_SSE2)
    int       m;
    __m128i   x;

    while (last - p >= 16) {
        x = _mm_loadu_si128((const __m128i *) p);

        m = _mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')));

        if (m) {
            return p + __builtin_ctz(m);
        }

        p += 16;
    }
#endif

    while (p < last && *p != '"') {
        p++;
    }

    return p;
}


/* the next '"' or '\\' from p, or last */

static ngx_inline u_char *
ngx_http_llm_string_run(u_char *p, u_char *last)
{
    uint64_t  w;

#if (NGX_HTTP_LLM_USAGE_SSE2)
    int       m;
    __m128i   x;

    while (last - p >= 16) {
        x = _mm_loadu_si128((const __m128i *) p);

        m = _mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                             _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))));

        if (m) {
            return p + __builtin_ctz(m);
        }

        p += 16;
    }
#endif

    while (last - p >= 8) {
        ngx_memcpy(&w, p, 8);

        if (ngx_http_llm_usage_quote(w)) {
            break;
        }

        p += 8;
    }

    while (p < last && *p != '"' && *p != '\\') {
        p++;
    }

    return p;
}


/*
 * The data of an SSE event (JSON, whole in memory), in one pass: the bytes
 * of its text, as ngx_http_llm_usage_strings() counts those of the
 * dialect's content keys; whether a key of the dialect's finish has a
 * string value; and the members named as the dialect's usage container,
 * at any depth: the key of the last one, and how many are objects.  When
 * none is an object, the event has no usage to read; else the format
 * reads it with its own, validating, scan of the top level.
 *
 * The events of a stream are mostly alike: the same id, model, keys, but
 * for a few words of text.  An event with a text value is kept as a
 * pattern; an event that has the pattern's bytes before the value and
 * after it, and a string value between them that ends where the
 * pattern's bytes after it begin, is the pattern with another text: the
 * scan would find the same, but for the bytes of that text, which are
 * counted.
 */

static ngx_uint_t ngx_http_llm_memo_match(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_sse_event_t *ev);


ngx_int_t
ngx_http_llm_usage_scan_event(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_sse_event_t *ev)
{
    u_char                    *p, *last, *s, *e, *v, *text, *text_end;
    size_t                     len;
    uint64_t                   lengths, content, before;
    ngx_str_t                 *k;
    ngx_uint_t                 container, is_content;
    ngx_http_llm_memo_t       *m;
    ngx_http_llm_dialect_t    *dialect;

    ev->scanned = 1;
    ev->usage = NULL;
    ev->usage_objects = 0;
    ev->finish = 0;

    if (ctx->memo && ctx->memo->len && ngx_http_llm_memo_match(ctx, ev)) {
        return NGX_OK;
    }

    dialect = ctx->provider->format->dialect;

    /* the lengths of the keys looked for: most keys are none of them */

    lengths = dialect->lengths;

    if (lengths == 0) {
        lengths = (uint64_t) 1 << ngx_min(dialect->container.len, 63);

        for (k = dialect->content; k->len; k++) {
            lengths |= (uint64_t) 1 << ngx_min(k->len, 63);
        }

        for (k = dialect->finish; k->len; k++) {
            lengths |= (uint64_t) 1 << ngx_min(k->len, 63);
        }

        dialect->lengths = lengths;
    }

    p = ev->data.data;
    last = p + ev->data.len;

    content = ctx->raw.content;

    /* the first text value, and what was found before it */

    text = NULL;
    text_end = NULL;
    before = 0;

    for ( ;; ) {

        /* to the next string */

        p = ngx_http_llm_quote(p, last);

        if (p == last) {
            break;
        }

        s = ++p;

        /* its closing quote: an escape takes the byte after it */

        for ( ;; ) {
            p = ngx_http_llm_string_run(p, last);

            if (p == last) {
                return NGX_OK;
            }

            if (*p == '"') {
                break;
            }

            if (last - p <= 2) {
                return NGX_OK;
            }

            p += 2;
        }

        e = p++;

        /* a key, if a colon follows */

        while (p < last && (*p == ' ' || *p == '\t' || *p == '\r'
                            || *p == '\n'))
        {
            p++;
        }

        if (p == last) {
            return NGX_OK;
        }

        len = e - s;

        if (*p != ':' || !(lengths & ((uint64_t) 1 << ngx_min(len, 63)))) {
            /* not a key, or none of those looked for */
            continue;
        }

        container = (len == dialect->container.len
                     && ngx_memcmp(s, dialect->container.data, len) == 0);

        is_content = !container
                     && ngx_http_llm_key_in(dialect->content, s, len);

        if (!container && !is_content
            && !ngx_http_llm_key_in(dialect->finish, s, len))
        {
            continue;
        }

        for (v = p + 1; v < last; v++) {
            if (*v != ' ' && *v != '\t' && *v != '\r' && *v != '\n') {
                break;
            }
        }

        p = v;

        if (container) {
            ev->usage = s - 1;

            if (v < last && *v == '{') {
                ev->usage_objects++;
            }

            continue;
        }

        if (v == last || *v != '"') {
            /* not a string: null, an object, ... */
            continue;
        }

        e = ngx_http_llm_string_close(v + 1, last);
        if (e == NULL) {
            return NGX_OK;
        }

        if (is_content) {

            if (text == NULL) {
                /* the text value of a pattern, and what came before it */

                text = v + 1;
                text_end = e;
                before = ctx->raw.content - content;
            }

            ctx->raw.content += ngx_http_llm_text_len(v + 1, e);

        } else {
            ev->finish = 1;
        }

        p = e + 1;
    }

    /* the whole event was scanned: a pattern, if it has a text value */

    if (text == NULL || ev->data.len > NGX_HTTP_LLM_MEMO_SIZE) {
        return NGX_OK;
    }

    m = ctx->memo;

    if (m == NULL) {
        m = ngx_palloc(r->pool, sizeof(ngx_http_llm_memo_t));
        if (m == NULL) {
            return NGX_ERROR;
        }

        ctx->memo = m;
    }

    m->len = ev->data.len;
    m->start = text - ev->data.data;
    m->end = text_end - ev->data.data;
    m->before = before;
    m->after = ctx->raw.content - content - before
               - ngx_http_llm_text_len(text, text_end);
    m->has_usage = (ev->usage != NULL);
    m->usage_after = (ev->usage > text_end);
    m->usage = ev->usage == NULL ? 0
               : m->usage_after ? (size_t) (last - ev->usage)
                                : (size_t) (ev->usage - ev->data.data);
    m->usage_objects = ev->usage_objects;
    m->finish = ev->finish;

    ngx_memcpy(m->data, ev->data.data, ev->data.len);

    return NGX_OK;
}


/* is the event the pattern with another text?  If so, its findings */

static ngx_uint_t
ngx_http_llm_memo_match(ngx_http_llm_ctx_t *ctx, ngx_http_llm_sse_event_t *ev)
{
    u_char               *p, *last, *e;
    size_t                after;
    ngx_http_llm_memo_t  *m;

    m = ctx->memo;

    p = ev->data.data;
    last = p + ev->data.len;

    after = m->len - m->end;

    if (ev->data.len < m->start + after
        || ngx_memcmp(p, m->data, m->start) != 0
        || ngx_memcmp(last - after, m->data + m->end, after) != 0)
    {
        return 0;
    }

    /* the text value ends where the bytes after it begin */

    e = ngx_http_llm_string_close(p + m->start, last);

    if (e != last - after) {
        return 0;
    }

    ctx->raw.content += m->before + ngx_http_llm_text_len(p + m->start, e)
                        + m->after;

    if (m->has_usage) {
        ev->usage = m->usage_after ? last - m->usage : p + m->usage;
    }

    ev->usage_objects = m->usage_objects;
    ev->finish = m->finish;

    return 1;
}


/*
 * The closing quote of a string, from after its opening one, as
 * ngx_http_llm_string_end() finds it: by runs, an escape taking the byte
 * after it.
 */

static u_char *
ngx_http_llm_string_close(u_char *p, u_char *last)
{
    for ( ;; ) {
        p = ngx_http_llm_string_run(p, last);

        if (p == last) {
            return NULL;
        }

        if (*p == '"') {
            return p;
        }

        if (last - p <= 2) {
            return NULL;
        }

        p += 2;
    }
}


/* the closing quote of a string, from after its opening one */

static u_char *
ngx_http_llm_string_end(u_char *p, u_char *last)
{
    u_char  *q, *b;

    for (q = p; q < last; q++) {

        q = memchr(q, '"', last - q);
        if (q == NULL) {
            return NULL;
        }

        /* a quote escaped by an odd number of backslashes goes on */

        for (b = q; b > p && b[-1] == '\\'; b--) {
            /* void */
        }

        if (((q - b) & 1) == 0) {
            return q;
        }
    }

    return NULL;
}


static ngx_uint_t
ngx_http_llm_key_in(ngx_str_t *keys, u_char *p, size_t len)
{
    for ( /* void */ ; keys->len; keys++) {
        if (keys->len == len && keys->data[0] == p[0]
            && ngx_memcmp(keys->data, p, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* the bytes of the text of a JSON string, as UTF-8 */

static uint64_t
ngx_http_llm_text_len(u_char *p, u_char *last)
{
    u_char    *b;
    uint64_t   n;
    ngx_int_t  code;

    n = 0;

    while (p < last) {

        b = memchr(p, '\\', last - p);
        if (b == NULL) {
            n += last - p;
            break;
        }

        n += b - p;
        p = b + 1;

        if (p == last) {
            break;
        }

        if (*p != 'u') {
            /* \n, \", ...: one byte */
            n++;
            p++;
            continue;
        }

        if (last - p < 5
            || (code = ngx_hextoi(p + 1, 4)) == NGX_ERROR)
        {
            n++;
            p++;
            continue;
        }

        n += ngx_http_llm_utf8_len((uint32_t) code);
        p += 5;
    }

    return n;
}


/* the UTF-8 bytes of a \u escape: a surrogate is half of a 4-byte one */

static ngx_uint_t
ngx_http_llm_utf8_len(uint32_t code)
{
    if (code < 0x80) {
        return 1;
    }

    if (code < 0x800 || (code >= 0xd800 && code <= 0xdfff)) {
        return 2;
    }

    return 3;
}


/*
 * A non-streamed reply body, in pieces: the bytes go through a small
 * state machine that follows the JSON structure (strings, escapes,
 * nesting) and captures the value of the top-level usage member (of the
 * top-level object, or of each object of a top-level array: a Gemini
 * stream without SSE), which is read when it is complete.  Memory: one
 * small buffer.  In a stream the machine also counts the bytes of the
 * reply's text, for the estimate if it is cut, and notes the member that
 * says the reply is over: the usage of the element that has it, or of a
 * later one, is final.
 */

ngx_int_t
ngx_http_llm_usage_body(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, u_char *last)
{
    if (!ctx->stream) {
        return ngx_http_llm_usage_reply(r, ctx, p, last);
    }

    for ( /* void */ ; p < last; p++) {
        if (ngx_http_llm_capture_byte(r, ctx, *p) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The machine of ngx_http_llm_capture_byte() for a reply that is not a
 * stream, by runs: the plain bytes of a string other than a key are
 * skipped eight at a time, and the usage object is read where it is when
 * it is whole in this piece of the body (else copied, as much of it as
 * came in each piece).
 */

static ngx_int_t
ngx_http_llm_usage_reply(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, u_char *last)
{
    u_char                  ch, *start, *start_key;
    size_t                  n;
    ngx_int_t               rc;
    ngx_str_t              *container;
    ngx_uint_t              depth, key_depth, key_len, in_string, escape,
                            in_key, want_key, match, value, capturing,
                            element_usage;
    ngx_http_llm_capture_t  *c;

    c = &ctx->capture;
    container = &ctx->provider->format->dialect->container;

    /* the state of the machine, in locals while the bytes go by */

    depth = c->depth;
    key_depth = c->key_depth;
    key_len = c->key_len;
    in_string = c->in_string;
    escape = c->escape;
    in_key = c->in_key;
    want_key = c->want_key;
    match = c->match;
    value = c->value;
    capturing = c->capturing;
    element_usage = c->element_usage;

    /* the start of what is captured in this piece */
    start = p;

    while (p < last) {

        if (in_string) {

            if (escape) {
                escape = 0;
                p++;
                continue;
            }

            if (in_key) {

                /* the plain bytes of a key, gathered by runs */

                start_key = p;
                p = ngx_http_llm_string_run(p, last);

                if (key_len < sizeof(c->key)) {
                    n = ngx_min(sizeof(c->key) - key_len,
                                (size_t) (p - start_key));

                    ngx_memcpy(c->key + key_len, start_key, n);
                }

                key_len += p - start_key;

            } else {

                /* the plain bytes of a string, by runs */

                p = ngx_http_llm_string_run(p, last);
            }

            if (p == last) {
                break;
            }

            ch = *p++;

            if (ch == '\\') {
                escape = 1;

                if (in_key) {
                    key_len = sizeof(c->key) + 1;
                }

            } else if (ch == '"') {
                in_string = 0;

                if (in_key) {
                    in_key = 0;
                    match = (key_len == container->len
                             && ngx_strncmp(c->key, container->data,
                                            container->len) == 0);
                }
            }

            continue;
        }

        if (depth > key_depth) {

            /*
             * Inside a member's value only strings and the nesting matter
             * (whatever else comes, "value" is clear since its '{' or '['):
             * the bytes between them go by runs, and so do its strings.
             */

            for ( ;; ) {
                p = ngx_http_llm_nest_run(p, last);

                if (p == last || *p != '"') {
                    break;
                }

                for (p++; /* void */; p += 2) {
                    p = ngx_http_llm_string_run(p, last);

                    if (p == last || *p == '"' || last - p < 2) {
                        break;
                    }
                }

                if (p == last) {
                    in_string = 1;
                    break;
                }

                if (*p != '"') {
                    /* a backslash ends the piece: the byte after it next */
                    in_string = 1;
                    escape = 1;
                    p = last;
                    break;
                }

                p++;
            }

            if (p == last) {
                break;
            }
        }

        ch = *p;

        switch (ch) {

        case '"':
            in_string = 1;
            value = 0;

            if (depth == key_depth && want_key) {
                in_key = 1;
                want_key = 0;
                key_len = 0;
            }

            break;

        case '{':
        case '[':

            if (depth == key_depth && value && ch == '{') {
                capturing = 1;
                c->overflow = 0;
                c->len = 0;
                start = p;
            }

            value = 0;

            if (depth == 0) {
                /* the members of an object, or of the objects of an array */
                key_depth = (ch == '[') ? 2 : 1;
            }

            depth++;

            if (depth == key_depth) {
                want_key = (ch == '{');
            }

            break;

        case '}':
        case ']':

            if (depth) {
                depth--;
            }

            if (capturing && depth == key_depth) {
                capturing = 0;

                rc = ngx_http_llm_capture_end(r, ctx, start, p + 1);

                if (rc == NGX_ERROR) {
                    return NGX_ERROR;
                }

                if (rc == NGX_OK) {
                    element_usage = 1;
                }
            }

            if (ch == '}' && depth + 1 == key_depth) {

                /* an element of the stream ends (or the reply's object) */

                if (ctx->raw.finished && element_usage) {
                    ctx->raw.final = 1;
                }

                element_usage = 0;
            }

            break;

        case ':':
            if (depth == key_depth) {
                value = match;
                match = 0;
            }

            break;

        case ',':
            if (depth == key_depth) {
                want_key = 1;
                value = 0;
            }

            break;

        case ' ': case '\t': case '\r': case '\n':
            break;

        default:
            /* a scalar value (null, a number, ...): nothing to capture */
            value = 0;
        }

        p++;
    }

    c->depth = depth;
    c->key_depth = key_depth;
    c->key_len = key_len;
    c->in_string = in_string;
    c->escape = escape;
    c->in_key = in_key;
    c->want_key = want_key;
    c->match = match;
    c->value = value;
    c->capturing = capturing;
    c->element_usage = element_usage;

    if (capturing) {
        /* the piece goes away: what it has of the object is kept */
        return ngx_http_llm_capture_run(r, c, start, last);
    }

    return NGX_OK;
}


/*
 * The usage object is complete, the last of its bytes from start to end:
 * NGX_OK if it was read, NGX_DECLINED if not.
 */

static ngx_int_t
ngx_http_llm_capture_end(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *start, u_char *end)
{
    ngx_http_llm_capture_t  *c;

    c = &ctx->capture;

    if (c->len == 0 && !c->overflow
        && end - start <= NGX_HTTP_LLM_CAPTURE_MAX)
    {
        /* whole in this piece: read where it is */

    } else {
        if (ngx_http_llm_capture_run(r, c, start, end) != NGX_OK) {
            return NGX_ERROR;
        }

        if (c->overflow) {
            ctx->raw.invalid++;
            return NGX_DECLINED;
        }

        start = c->buf;
        end = c->buf + c->len;
    }

    return ngx_http_llm_usage_read(ctx->provider->format->dialect, &ctx->raw,
                                   start, end);
}


/* bytes of the usage object, kept; past NGX_HTTP_LLM_CAPTURE_MAX, none */

static ngx_int_t
ngx_http_llm_capture_run(ngx_http_request_t *r, ngx_http_llm_capture_t *c,
    u_char *p, u_char *last)
{
    u_char  *buf;
    size_t   n, size;

    n = last - p;

    if (c->overflow || n == 0) {
        return NGX_OK;
    }

    if (c->len + n > NGX_HTTP_LLM_CAPTURE_MAX) {
        c->overflow = 1;
        return NGX_OK;
    }

    if (c->len + n > c->size) {
        size = c->size ? c->size : 512;

        while (size < c->len + n) {
            size *= 2;
        }

        buf = ngx_pnalloc(r->pool, size);
        if (buf == NULL) {
            return NGX_ERROR;
        }

        if (c->len) {
            ngx_memcpy(buf, c->buf, c->len);
        }

        c->buf = buf;
        c->size = size;
    }

    ngx_memcpy(c->buf + c->len, p, n);
    c->len += n;

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

    if (ctx->stream) {
        ngx_http_llm_capture_word(ctx, c, ch);
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

            } else if (ngx_http_llm_usage_read(ctx->provider->format->dialect,
                                               &ctx->raw, c->buf,
                                               c->buf + c->len)
                       == NGX_OK)
            {
                c->element_usage = 1;
            }
        }

        if (ch == '}' && c->depth + 1 == c->key_depth) {

            /* an element of the stream ends (or the reply's object) */

            if (ctx->raw.finished && c->element_usage) {
                ctx->raw.final = 1;
            }

            c->element_usage = 0;
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


/*
 * A byte of a stream, before the machine takes it: the strings are
 * followed at any depth, for the bytes of the text and the member that
 * says the reply is over.
 */

static void
ngx_http_llm_capture_word(ngx_http_llm_ctx_t *ctx, ngx_http_llm_capture_t *c,
    u_char ch)
{
    u_char  lc;

    if (!c->in_string) {

        switch (ch) {

        case '"':
            c->word_len = 0;
            c->text = (c->next == NGX_HTTP_LLM_WORD_TEXT);

            if (c->next == NGX_HTTP_LLM_WORD_END) {
                ctx->raw.finished = 1;
            }

            c->next = 0;
            break;

        case ':':
            c->next = c->word_is;
            break;

        case ' ': case '\t': case '\r': case '\n':
            return;

        default:
            c->next = 0;
        }

        c->word_is = 0;
        return;
    }

    if (c->hex) {
        lc = ch | 0x20;
        c->code = (c->code << 4)
                  | ((ch >= '0' && ch <= '9') ? (uint32_t) (ch - '0')
                     : (lc >= 'a' && lc <= 'f') ? (uint32_t) (lc - 'a' + 10)
                     : 0);

        if (--c->hex == 0 && c->text) {
            ctx->raw.content += ngx_http_llm_utf8_len(c->code);
        }

        return;
    }

    if (c->escape) {

        if (ch == 'u') {
            c->hex = 4;
            c->code = 0;

        } else if (c->text) {
            ctx->raw.content++;
        }

        return;
    }

    if (ch == '\\') {
        /* an escaped key is none of those looked for */
        c->word_len = sizeof(c->word) + 1;
        return;
    }

    if (ch == '"') {
        if (c->text) {
            c->text = 0;

        } else {
            c->word_is = ngx_http_llm_capture_key(
                                         ctx->provider->format->dialect, c);
        }

        return;
    }

    if (c->text) {
        ctx->raw.content++;
        return;
    }

    if (c->word_len < sizeof(c->word)) {
        c->word[c->word_len] = ch;
    }

    c->word_len++;
}


static ngx_uint_t
ngx_http_llm_capture_key(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_capture_t *c)
{
    if (c->word_len > sizeof(c->word)) {
        return 0;
    }

    if (ngx_http_llm_key_in(dialect->content, c->word, c->word_len)) {
        return NGX_HTTP_LLM_WORD_TEXT;
    }

    if (ngx_http_llm_key_in(dialect->finish, c->word, c->word_len)) {
        return NGX_HTTP_LLM_WORD_END;
    }

    return 0;
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
 * estimated from what passed (a stream cut before the provider's final
 * usage, a reply without usage), or none (no reply from a provider).
 */

void
ngx_http_llm_usage_finalize(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t               status;
    ngx_http_llm_usage_t    *u;
    ngx_http_llm_dialect_t  *dialect;

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

    dialect = ctx->provider->format->dialect;

    if (ctx->raw.invalid && ctx->finalized) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm provider \"%V\" sent %ui usage object(s) with "
                      "counters that are not non-negative integers; "
                      "they are not trusted", &ctx->provider->name,
                      ctx->raw.invalid);
    }

    if (ctx->raw.objects && !ctx->raw.invalid
        && (!ctx->stream || !dialect->marked || ctx->raw.final))
    {
        dialect->canonical(&ctx->raw, u);
        ngx_http_llm_usage_clamp(u);

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
     * An estimate.  The input: what the provider counted before a stream
     * was cut (Anthropic's message_start, Gemini's running totals), with
     * its cache reads and writes, else a token for every 4 bytes of the
     * request body.  The output: a token for every 4 bytes of the text a
     * stream relayed (content, reasoning, tool arguments), or of the
     * reply; an embedding has none.
     */

    if (ctx->raw.objects && !ctx->raw.invalid
        && (ctx->raw.seen & (1 << NGX_HTTP_LLM_SLOT_INPUT)))
    {
        dialect->canonical(&ctx->raw, u);
        ngx_http_llm_usage_clamp(u);

    } else {
        u->input = (ctx->body.len + 3) / 4;
    }

    u->output = 0;
    u->reasoning = 0;

    if (ctx->stream) {
        u->output = (ctx->raw.content + 3) / 4;

    } else if (ctx->endpoint != NGX_HTTP_LLM_EMBEDDINGS) {
        u->output = (ctx->received + 3) / 4;
    }

    ctx->usage_source = NGX_HTTP_LLM_USAGE_ESTIMATED;
}


/* the parts never exceed the whole */

static void
ngx_http_llm_usage_clamp(ngx_http_llm_usage_t *u)
{
    if (u->cache_read > u->input) {
        u->cache_read = u->input;
    }

    if (u->cache_write > u->input - u->cache_read) {
        u->cache_write = u->input - u->cache_read;
    }

    if (u->reasoning > u->output) {
        u->reasoning = u->output;
    }
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
