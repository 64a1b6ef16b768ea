
/*
 * nginx-llm-gateway: a validating JSON scanner that does not build a tree.
 *
 * ngx_http_llm_json_object() checks that a buffer holds one JSON object
 * (and nothing else but white space) and calls a handler for each of its
 * members with the key and the exact byte range of the value.  Nested
 * values are validated and skipped, never copied or allocated: the
 * gateway reads the few members it needs and edits the client's bytes in
 * place of re-serializing them.
 */


#include "ngx_http_llm_module.h"

#if ((defined __GNUC__ || defined __clang__) && defined __SSE2__)
#include <emmintrin.h>
#define NGX_HTTP_LLM_JSON_SSE2  1
#endif


#define NGX_HTTP_LLM_JSON_DEPTH  128


static ngx_inline u_char *ngx_http_llm_json_ws(u_char *p, u_char *last);
static u_char *ngx_http_llm_json_value(u_char *p, u_char *last,
    ngx_uint_t depth, ngx_http_llm_json_value_t *v);
static u_char *ngx_http_llm_json_string(u_char *p, u_char *last,
    ngx_uint_t *escaped);
static u_char *ngx_http_llm_json_number(u_char *p, u_char *last);
static u_char *ngx_http_llm_json_members(u_char *p, u_char *last,
    ngx_uint_t depth, ngx_http_llm_json_member_pt handler,
    ngx_http_llm_json_nested_pt nested, void *data);
static u_char *ngx_http_llm_json_elements(u_char *p, u_char *last,
    ngx_uint_t depth, ngx_uint_t *n);
static size_t ngx_http_llm_json_fold(u_char *p, u_char *last, u_char c);
static ngx_int_t ngx_http_llm_json_valid(u_char *p, size_t len,
    ngx_uint_t controls);


/* the bytes that end the plain run of a string: controls, '"' and '\\' */

static u_char  ngx_http_llm_json_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    /* '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,    /* '\\' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
};


ngx_int_t
ngx_http_llm_json_object(u_char *p, u_char *last,
    ngx_http_llm_json_member_pt handler, void *data)
{
    p = ngx_http_llm_json_ws(p, last);

    if (p == last || *p != '{') {
        return NGX_DECLINED;
    }

    p = ngx_http_llm_json_members(p + 1, last, 1, handler, NULL, data);

    if (p == NULL) {
        return NGX_ERROR;
    }

    return (ngx_http_llm_json_ws(p, last) == last) ? NGX_OK : NGX_ERROR;
}


/*
 * As ngx_http_llm_json_object(), and in the same pass: the members of an
 * object value of a member that nested() names a handler for go to that
 * handler (before the member itself goes to the first), so that they
 * need no scan of their own.
 */

ngx_int_t
ngx_http_llm_json_object_nested(u_char *p, u_char *last,
    ngx_http_llm_json_member_pt handler, ngx_http_llm_json_nested_pt nested,
    void *data)
{
    p = ngx_http_llm_json_ws(p, last);

    if (p == last || *p != '{') {
        return NGX_DECLINED;
    }

    p = ngx_http_llm_json_members(p + 1, last, 1, handler, nested, data);

    if (p == NULL) {
        return NGX_ERROR;
    }

    return (ngx_http_llm_json_ws(p, last) == last) ? NGX_OK : NGX_ERROR;
}


/*
 * The members of an object, after its "{"; returns the position after
 * the closing "}", or NULL if the text is not valid JSON or the handler
 * refused a member.
 */

static u_char *
ngx_http_llm_json_members(u_char *p, u_char *last, ngx_uint_t depth,
    ngx_http_llm_json_member_pt handler, ngx_http_llm_json_nested_pt nested,
    void *data)
{
    ngx_uint_t                    escaped;
    ngx_str_t                     key;
    ngx_http_llm_json_value_t     v;
    ngx_http_llm_json_member_pt   sub;

    if (depth > NGX_HTTP_LLM_JSON_DEPTH) {
        return NULL;
    }

    p = ngx_http_llm_json_ws(p, last);

    if (p < last && *p == '}') {
        return p + 1;
    }

    for ( ;; ) {

        if (p == last || *p != '"') {
            return NULL;
        }

        key.data = p + 1;

        p = ngx_http_llm_json_string(p, last, &escaped);
        if (p == NULL) {
            return NULL;
        }

        key.len = p - 1 - key.data;

        p = ngx_http_llm_json_ws(p, last);

        if (p == last || *p != ':') {
            return NULL;
        }

        p = ngx_http_llm_json_ws(p + 1, last);

        if (nested && p < last && *p == '{'
            && (sub = nested(&key, data)) != NULL)
        {
            /* an object whose members go to their own handler */

            v.type = NGX_HTTP_LLM_JSON_OBJECT;
            v.start = p;
            v.elements = 0;
            v.escaped = 0;

            p = ngx_http_llm_json_members(p + 1, last, depth + 1, sub, NULL,
                                          data);

            v.end = p;

        } else {
            p = ngx_http_llm_json_value(p, last, depth, &v);
        }

        if (p == NULL) {
            return NULL;
        }

        v.key_escaped = escaped;

        if (handler && handler(&key, &v, data) != NGX_OK) {
            return NULL;
        }

        p = ngx_http_llm_json_ws(p, last);

        if (p == last) {
            return NULL;
        }

        if (*p == '}') {
            return p + 1;
        }

        if (*p != ',') {
            return NULL;
        }

        p = ngx_http_llm_json_ws(p + 1, last);
    }
}


static u_char *
ngx_http_llm_json_elements(u_char *p, u_char *last, ngx_uint_t depth,
    ngx_uint_t *n)
{
    ngx_http_llm_json_value_t  v;

    *n = 0;

    if (depth > NGX_HTTP_LLM_JSON_DEPTH) {
        return NULL;
    }

    p = ngx_http_llm_json_ws(p, last);

    if (p < last && *p == ']') {
        return p + 1;
    }

    for ( ;; ) {

        p = ngx_http_llm_json_value(p, last, depth, &v);
        if (p == NULL) {
            return NULL;
        }

        (*n)++;

        p = ngx_http_llm_json_ws(p, last);

        if (p == last) {
            return NULL;
        }

        if (*p == ']') {
            return p + 1;
        }

        if (*p != ',') {
            return NULL;
        }

        p = ngx_http_llm_json_ws(p + 1, last);
    }
}


static u_char *
ngx_http_llm_json_value(u_char *p, u_char *last, ngx_uint_t depth,
    ngx_http_llm_json_value_t *v)
{
    ngx_uint_t  escaped;

    v->start = p;
    v->elements = 0;
    v->escaped = 0;
    v->key_escaped = 0;

    if (p == last) {
        return NULL;
    }

    switch (*p) {

    case '{':
        v->type = NGX_HTTP_LLM_JSON_OBJECT;
        p = ngx_http_llm_json_members(p + 1, last, depth + 1, NULL, NULL,
                                      NULL);
        break;

    case '[':
        v->type = NGX_HTTP_LLM_JSON_ARRAY;
        p = ngx_http_llm_json_elements(p + 1, last, depth + 1, &v->elements);
        break;

    case '"':
        v->type = NGX_HTTP_LLM_JSON_STRING;
        p = ngx_http_llm_json_string(p, last, &escaped);
        v->escaped = escaped;
        break;

    case 't':
        v->type = NGX_HTTP_LLM_JSON_TRUE;
        p = (last - p >= 4 && ngx_strncmp(p, "true", 4) == 0) ? p + 4 : NULL;
        break;

    case 'f':
        v->type = NGX_HTTP_LLM_JSON_FALSE;
        p = (last - p >= 5 && ngx_strncmp(p, "false", 5) == 0) ? p + 5 : NULL;
        break;

    case 'n':
        v->type = NGX_HTTP_LLM_JSON_NULL;
        p = (last - p >= 4 && ngx_strncmp(p, "null", 4) == 0) ? p + 4 : NULL;
        break;

    default:
        v->type = NGX_HTTP_LLM_JSON_NUMBER;
        p = ngx_http_llm_json_number(p, last);
    }

    v->end = p;

    return p;
}


/*
 * Does a word of 8 bytes hold one that ends the plain run of a string: a
 * control (< 0x20), '"' or '\\'?  (A byte is zero in x if x - 0x01 borrows
 * into its high bit while x's own high bit is clear; less than 0x20 the
 * same way; exact as to whether any byte is.)
 */

#define NGX_HTTP_LLM_ONES   0x0101010101010101ULL
#define NGX_HTTP_LLM_HIGHS  0x8080808080808080ULL

#define ngx_http_llm_swar_less(x, n)                                          \
    (((x) - NGX_HTTP_LLM_ONES * (n)) & ~(x) & NGX_HTTP_LLM_HIGHS)

#define ngx_http_llm_json_swar_special(x)                                     \
    (ngx_http_llm_swar_less(x, 0x20)                                          \
     | ngx_http_llm_swar_less((x) ^ (NGX_HTTP_LLM_ONES * '"'), 1)             \
     | ngx_http_llm_swar_less((x) ^ (NGX_HTTP_LLM_ONES * '\\'), 1))


/* a string from its opening quote; returns the position after the end */

static u_char *
ngx_http_llm_json_string(u_char *p, u_char *last, ngx_uint_t *escaped)
{
    uint64_t    w;
    ngx_uint_t  i;

#if (NGX_HTTP_LLM_JSON_SSE2)
    unsigned    m;
    __m128i     x, y, quote, bslash, c1f;

    quote = _mm_set1_epi8('"');
    bslash = _mm_set1_epi8('\\');
    c1f = _mm_set1_epi8(0x1f);
#endif

    *escaped = 0;

    for (p++; p < last; p++) {

#if (NGX_HTTP_LLM_JSON_SSE2)

        /* 32 and 16 bytes at a time: the first that ends the plain run */

        while (last - p >= 32) {
            x = _mm_loadu_si128((const __m128i *) p);
            y = _mm_loadu_si128((const __m128i *) (p + 16));

            m = (unsigned) _mm_movemask_epi8(
                    _mm_or_si128(
                        _mm_or_si128(_mm_cmpeq_epi8(x, quote),
                                     _mm_cmpeq_epi8(x, bslash)),
                        _mm_cmpeq_epi8(_mm_max_epu8(x, c1f), c1f)))
                | (unsigned) _mm_movemask_epi8(
                    _mm_or_si128(
                        _mm_or_si128(_mm_cmpeq_epi8(y, quote),
                                     _mm_cmpeq_epi8(y, bslash)),
                        _mm_cmpeq_epi8(_mm_max_epu8(y, c1f), c1f))) << 16;

            if (m) {
                p += __builtin_ctz(m);
                goto special;
            }

            p += 32;
        }

        if (last - p >= 16) {
            x = _mm_loadu_si128((const __m128i *) p);

            m = (unsigned) _mm_movemask_epi8(
                    _mm_or_si128(
                        _mm_or_si128(_mm_cmpeq_epi8(x, quote),
                                     _mm_cmpeq_epi8(x, bslash)),
                        _mm_cmpeq_epi8(_mm_max_epu8(x, c1f), c1f)));

            if (m) {
                p += __builtin_ctz(m);
                goto special;
            }

            p += 16;
        }

#endif

        /* eight bytes at a time while none of them ends the plain run */

        while (last - p >= 8) {
            ngx_memcpy(&w, p, 8);

            if (ngx_http_llm_json_swar_special(w)) {
                break;
            }

            p += 8;
        }

        if (p == last) {
            return NULL;
        }

        while (!ngx_http_llm_json_special[*p]) {
            if (++p == last) {
                return NULL;
            }
        }

#if (NGX_HTTP_LLM_JSON_SSE2)
    special:
#endif

        if (*p == '"') {
            return p + 1;
        }

        if (*p < 0x20) {
            return NULL;
        }

        *escaped = 1;

        if (++p == last) {
            return NULL;
        }

        switch (*p) {
        case '"': case '\\': case '/': case 'b':
        case 'f': case 'n': case 'r': case 't':
            break;

        case 'u':
            if (last - p < 5) {
                return NULL;
            }

            for (i = 1; i <= 4; i++) {
                if (!isxdigit(p[i])) {
                    return NULL;
                }
            }

            p += 4;
            break;

        default:
            return NULL;
        }
    }

    return NULL;
}


static u_char *
ngx_http_llm_json_number(u_char *p, u_char *last)
{
    u_char  *start;

    if (p < last && *p == '-') {
        p++;
    }

    if (p == last) {
        return NULL;
    }

    if (*p == '0') {
        p++;

    } else if (*p >= '1' && *p <= '9') {
        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }

    } else {
        return NULL;
    }

    if (p < last && *p == '.') {
        start = ++p;

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == start) {
            return NULL;
        }
    }

    if (p < last && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < last && (*p == '+' || *p == '-')) {
            p++;
        }

        start = p;

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == start) {
            return NULL;
        }
    }

    return p;
}


static ngx_inline u_char *
ngx_http_llm_json_ws(u_char *p, u_char *last)
{
    while (p < last
           && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    {
        p++;
    }

    return p;
}


/*
 * The text of a string value, unescaped into the pool when it has
 * escapes (\u escapes, surrogate pairs included, become UTF-8).
 */

ngx_int_t
ngx_http_llm_json_unescape(ngx_pool_t *pool, ngx_http_llm_json_value_t *v,
    ngx_str_t *out)
{
    u_char      *p, *last, *d;
    uint32_t     cp, lo;
    ngx_uint_t   i;

    p = v->start + 1;
    last = v->end - 1;

    if (!v->escaped) {
        out->data = p;
        out->len = last - p;
        return NGX_OK;
    }

    d = ngx_pnalloc(pool, last - p);
    if (d == NULL) {
        return NGX_ERROR;
    }

    out->data = d;

    while (p < last) {

        if (*p != '\\') {
            *d++ = *p++;
            continue;
        }

        p++;

        switch (*p++) {
        case 'b': *d++ = '\b'; continue;
        case 'f': *d++ = '\f'; continue;
        case 'n': *d++ = '\n'; continue;
        case 'r': *d++ = '\r'; continue;
        case 't': *d++ = '\t'; continue;
        case 'u': break;
        default: *d++ = p[-1]; continue;
        }

        cp = 0;

        for (i = 0; i < 4; i++) {
            cp = cp * 16 + ngx_hextoi(p + i, 1);
        }

        p += 4;

        if (cp >= 0xd800 && cp <= 0xdbff && last - p >= 6
            && p[0] == '\\' && p[1] == 'u')
        {
            lo = 0;

            for (i = 2; i < 6; i++) {
                lo = lo * 16 + ngx_hextoi(p + i, 1);
            }

            if (lo >= 0xdc00 && lo <= 0xdfff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
        }

        /* at most 4 bytes of UTF-8 from at least 6 bytes of escape */

        if (cp < 0x80) {
            *d++ = (u_char) cp;

        } else if (cp < 0x800) {
            *d++ = (u_char) (0xc0 | (cp >> 6));
            *d++ = (u_char) (0x80 | (cp & 0x3f));

        } else if (cp < 0x10000) {
            *d++ = (u_char) (0xe0 | (cp >> 12));
            *d++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (cp & 0x3f));

        } else {
            *d++ = (u_char) (0xf0 | (cp >> 18));
            *d++ = (u_char) (0x80 | ((cp >> 12) & 0x3f));
            *d++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (cp & 0x3f));
        }
    }

    out->len = d - out->data;

    return NGX_OK;
}


/*
 * How a key read by the gateway compares to a name (ASCII):
 * NGX_OK the same bytes, NGX_DECLINED another key, NGX_BUSY the same key
 * to a parser that folds case.  Providers written in Go match JSON keys
 * to their fields that way: "Model" sets the model, and so do U+017F (a
 * long s) for "s" and U+212A (the Kelvin sign) for "k"; a key that one
 * parser would take for a member the gateway reads must be refused, as a
 * duplicate would be.
 */

ngx_int_t
ngx_http_llm_json_key(ngx_str_t *key, ngx_str_t *name)
{
    u_char  *p, *last;
    size_t   n, i;

    if (key->len == name->len
        && ngx_strncmp(key->data, name->data, name->len) == 0)
    {
        return NGX_OK;
    }

    if (key->len < name->len || key->len > name->len * 3) {
        return NGX_DECLINED;
    }

    p = key->data;
    last = p + key->len;

    for (i = 0; i < name->len; i++) {

        n = ngx_http_llm_json_fold(p, last, name->data[i]);

        if (n == 0) {
            return NGX_DECLINED;
        }

        p += n;
    }

    return (p == last) ? NGX_BUSY : NGX_DECLINED;
}


/* the bytes at p that fold to the ASCII letter c, or 0 */

static size_t
ngx_http_llm_json_fold(u_char *p, u_char *last, u_char c)
{
    c = ngx_tolower(c);

    if (ngx_tolower(*p) == c) {
        return 1;
    }

    if (c == 's' && last - p >= 2 && p[0] == 0xc5 && p[1] == 0xbf) {
        return 2;
    }

    if (c == 'k' && last - p >= 3
        && p[0] == 0xe2 && p[1] == 0x84 && p[2] == 0xaa)
    {
        return 3;
    }

    return 0;
}


/*
 * A name that the gateway stores, logs or echoes (a model): valid UTF-8
 * (no overlong forms, no surrogates) and no control characters.
 */

ngx_int_t
ngx_http_llm_json_text(u_char *p, size_t len)
{
    return ngx_http_llm_json_valid(p, len, 0);
}


/* valid UTF-8, control characters allowed (they are escaped for JSON) */

ngx_int_t
ngx_http_llm_json_utf8(u_char *p, size_t len)
{
    return ngx_http_llm_json_valid(p, len, 1);
}


static ngx_int_t
ngx_http_llm_json_valid(u_char *p, size_t len, ngx_uint_t controls)
{
    u_char      *last;
    uint32_t     cp, min;
    ngx_uint_t   i, n;

    last = p + len;

    while (p < last) {

        if (*p < 0x80) {
            if (!controls && (*p < 0x20 || *p == 0x7f)) {
                return NGX_ERROR;
            }

            p++;
            continue;
        }

        if (*p >= 0xc2 && *p <= 0xdf) {
            n = 1;
            min = 0x80;

        } else if (*p >= 0xe0 && *p <= 0xef) {
            n = 2;
            min = 0x800;

        } else if (*p >= 0xf0 && *p <= 0xf4) {
            n = 3;
            min = 0x10000;

        } else {
            return NGX_ERROR;
        }

        if ((size_t) (last - p) <= n) {
            return NGX_ERROR;
        }

        cp = *p & (0x3f >> n);

        for (i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return NGX_ERROR;
            }

            cp = (cp << 6) | (p[i] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff
            || (cp >= 0xd800 && cp <= 0xdfff) || (!controls && cp <= 0x9f))
        {
            return NGX_ERROR;
        }

        p += n + 1;
    }

    return NGX_OK;
}


/* one value at p, after white space: its type and bytes; NULL if invalid */

u_char *
ngx_http_llm_json_skip(u_char *p, u_char *last, ngx_http_llm_json_value_t *v)
{
    p = ngx_http_llm_json_ws(p, last);

    p = ngx_http_llm_json_value(p, last, 1, v);

    if (p == NULL) {
        return NULL;
    }

    return ngx_http_llm_json_ws(p, last);
}
