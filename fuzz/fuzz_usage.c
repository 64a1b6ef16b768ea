
/*
 * Usage capture, for each dialect (openai, anthropic, gemini):
 *
 *   - a usage object whole in memory (ngx_http_llm_usage_read), checked
 *     against cJSON: when it is trusted, each raw slot holds the last
 *     value the object gives it, as a provider's parser reads it;
 *   - an event or document whole in memory (ngx_http_llm_usage_event), and
 *     the text it relays (ngx_http_llm_usage_content);
 *   - a non-streamed reply, or a Gemini stream as a JSON array, read in
 *     pieces (ngx_http_llm_usage_body): the same usage however it is cut.
 *
 *     options bits 0-1   the dialect (3: openai)
 *     options bit 2      the body is a stream (a JSON array of objects)
 *
 * The canonical counters are computed from the raw slots and must not
 * wrap around.
 */


#include "fuzz.h"


static ngx_http_llm_dialect_t *
fuzz_dialect(ngx_uint_t n, ngx_http_llm_format_t **format)
{
    switch (n & 3) {
    case 1:
        *format = &ngx_http_llm_format_anthropic;
        break;
    case 2:
        *format = &ngx_http_llm_format_gemini;
        break;
    default:
        *format = &ngx_http_llm_format_openai;
    }

    return (*format)->dialect;
}


/* what a provider's parser reads: for each slot the last value given */

static void
fuzz_expect(ngx_http_llm_dialect_t *d, cJSON *obj, uint64_t *slot,
    ngx_uint_t *seen)
{
    cJSON                       *m, *s;
    ngx_http_llm_usage_field_t  *f;

    cJSON_ArrayForEach(m, obj) {

        for (f = d->fields; f->key.len; f++) {

            if (ngx_strlen(m->string) != f->key.len
                || ngx_memcmp(m->string, f->key.data, f->key.len) != 0)
            {
                continue;
            }

            if (f->sub.len == 0) {
                slot[f->slot] = cJSON_IsNull(m) ? 0
                                : (uint64_t) m->valuedouble;
                *seen |= 1 << f->slot;
                continue;
            }

            if (!cJSON_IsObject(m)) {
                continue;
            }

            cJSON_ArrayForEach(s, m) {
                if (ngx_strlen(s->string) == f->sub.len
                    && ngx_memcmp(s->string, f->sub.data, f->sub.len) == 0)
                {
                    slot[f->slot] = cJSON_IsNull(s) ? 0
                                    : (uint64_t) s->valuedouble;
                    *seen |= 1 << f->slot;
                }
            }
        }
    }
}


static void
fuzz_read(ngx_http_llm_dialect_t *d, const u_char *data, size_t len)
{
    u_char                    *p;
    cJSON                     *obj;
    uint64_t                   slot[NGX_HTTP_LLM_USAGE_SLOTS];
    ngx_int_t                  rc;
    ngx_uint_t                 i, seen;
    ngx_http_llm_usage_raw_t   raw, before;

    p = fuzz_copy(data, len);

    ngx_memzero(&raw, sizeof(ngx_http_llm_usage_raw_t));
    before = raw;

    rc = ngx_http_llm_usage_read(d, &raw, p, p + len);

    if (rc != NGX_OK) {
        fuzz_assert(ngx_memcmp(raw.slot, before.slot, sizeof(raw.slot)) == 0
                    && raw.seen == before.seen && raw.objects == 0,
                    "a usage object refused changed the counters");
        free(p);
        return;
    }

    fuzz_assert(raw.objects == 1 && raw.invalid == 0,
                "objects %lu, invalid %lu", (unsigned long) raw.objects,
                (unsigned long) raw.invalid);

    /* keys with escapes: the scanner takes them as they are written */

    if (memchr(p, '\\', len) != NULL) {
        free(p);
        return;
    }

    obj = cJSON_ParseWithLength((const char *) p, len);

    fuzz_assert(obj != NULL, "a usage object read that cJSON does not "
                "parse");

    fuzz_assert(cJSON_IsObject(obj), "a usage object that is no object");

    ngx_memzero(slot, sizeof(slot));
    seen = 0;

    fuzz_expect(d, obj, slot, &seen);

    fuzz_assert(raw.seen == seen, "slots seen 0x%lx, a parser reads 0x%lx",
                (unsigned long) raw.seen, (unsigned long) seen);

    for (i = 0; i < NGX_HTTP_LLM_USAGE_SLOTS; i++) {

        if (!(seen & (1 << i))) {
            continue;
        }

        fuzz_assert(raw.slot[i] <= NGX_HTTP_LLM_COUNTER_MAX,
                    "slot %lu: %llu", (unsigned long) i,
                    (unsigned long long) raw.slot[i]);

        /* exact below 2^53, as close as a double can be above */

        fuzz_assert(raw.slot[i] < (1ULL << 53)
                    ? raw.slot[i] == slot[i]
                    : (double) raw.slot[i] / (double) slot[i] > 0.999999
                      && (double) raw.slot[i] / (double) slot[i] < 1.000001,
                    "slot %lu: %llu read, a parser reads %llu",
                    (unsigned long) i, (unsigned long long) raw.slot[i],
                    (unsigned long long) slot[i]);
    }

    cJSON_Delete(obj);
    free(p);
}


/*
 * The canonical counters of raw slots: a sum does not wrap around (each
 * slot is at most 2^63 - 1, and Anthropic's input is the sum of three).
 */

static void
fuzz_canonical(ngx_http_llm_dialect_t *d, ngx_http_llm_usage_raw_t *raw)
{
    uint64_t              s0, s3;
    ngx_http_llm_usage_t  u;

    if (raw->objects == 0) {
        return;
    }

    ngx_memzero(&u, sizeof(ngx_http_llm_usage_t));

    d->canonical(raw, &u);

    s0 = (raw->seen & 1) ? raw->slot[0] : 0;
    s3 = (raw->seen & 8) ? raw->slot[3] : 0;

    if (d == &ngx_http_llm_dialect_anthropic) {
        fuzz_assert(u.input >= s0 && u.input >= u.cache_read
                    && u.input >= u.cache_write,
                    "anthropic input %llu wrapped around: input_tokens "
                    "%llu, cache reads %llu, cache writes %llu",
                    (unsigned long long) u.input, (unsigned long long) s0,
                    (unsigned long long) u.cache_read,
                    (unsigned long long) u.cache_write);
    }

    if (d == &ngx_http_llm_dialect_gemini) {
        fuzz_assert(u.input >= s0 && u.output >= s3,
                    "gemini counters wrapped around");
    }
}


/* a reply body in pieces, through the capture of the top-level usage */

static void
fuzz_body(fuzz_input_t *in, ngx_http_llm_format_t *format, ngx_uint_t split,
    ngx_http_llm_usage_raw_t *raw)
{
    ngx_int_t                 rc;
    ngx_uint_t                i, n;
    fuzz_piece_t              piece;
    fuzz_request_t            fr;
    ngx_http_llm_provider_t   provider;

    fuzz_request_init(&fr);
    fuzz_provider_init(&provider, format);

    fr.ctx->provider = &provider;
    fr.ctx->stream = (in->options & 4) ? 1 : 0;

    n = split ? in->ncuts + 1 : 1;

    for (i = 0; i < n; i++) {

        if (split) {
            fuzz_piece(in, i, &piece);

        } else {
            piece.data = fuzz_copy(in->data, in->len);
            piece.len = in->len;
        }

        rc = ngx_http_llm_usage_body(&fr.request, fr.ctx, piece.data,
                                     piece.data + piece.len);

        fuzz_assert(rc == NGX_OK, "usage_body returned %ld", (long) rc);

        fuzz_piece_free(&piece);
    }

    *raw = fr.ctx->raw;

    fuzz_request_free(&fr);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *p;
    ngx_str_t                  text;
    fuzz_input_t               in;
    ngx_http_llm_format_t     *format;
    ngx_http_llm_dialect_t    *d;
    ngx_http_llm_usage_raw_t   raw, whole, split;

    fuzz_init();

    if (fuzz_input(&in, data, size) != NGX_OK) {
        return 0;
    }

    d = fuzz_dialect(in.options, &format);

    /* a usage object */

    fuzz_read(d, in.data, in.len);

    /* an event, and the text it relays */

    p = fuzz_copy(in.data, in.len);
    ngx_memzero(&raw, sizeof(ngx_http_llm_usage_raw_t));

    (void) ngx_http_llm_usage_event(d, &raw, p, p + in.len);

    fuzz_assert(raw.objects <= 2 * in.len, "more usage objects than bytes");
    fuzz_canonical(d, &raw);

    text.data = p;
    text.len = in.len;

    ngx_memzero(&raw, sizeof(ngx_http_llm_usage_raw_t));
    ngx_http_llm_usage_content(d, &raw, &text);

    fuzz_assert(raw.content <= in.len,
                "%llu bytes of text in %zu bytes",
                (unsigned long long) raw.content, in.len);

    free(p);

    /* a body, whole and cut */

    fuzz_body(&in, format, 0, &whole);
    fuzz_body(&in, format, 1, &split);

    fuzz_assert(ngx_memcmp(&whole, &split, sizeof(ngx_http_llm_usage_raw_t))
                == 0,
                "the usage of a body whole and cut in %lu pieces differs: "
                "objects %lu/%lu, invalid %lu/%lu, seen 0x%lx/0x%lx, "
                "content %llu/%llu",
                (unsigned long) in.ncuts + 1,
                (unsigned long) whole.objects, (unsigned long) split.objects,
                (unsigned long) whole.invalid, (unsigned long) split.invalid,
                (unsigned long) whole.seen, (unsigned long) split.seen,
                (unsigned long long) whole.content,
                (unsigned long long) split.content);

    fuzz_canonical(d, &whole);

    return 0;
}
