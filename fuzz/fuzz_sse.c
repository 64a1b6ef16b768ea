
/*
 * The SSE parser (ngx_http_llm_sse_parse), fed the data whole and then
 * cut into pieces at the positions the fuzzer chooses, each piece in a
 * buffer of its own freed after the call.
 *
 * Invariants: the events (name, data, truncated) are the same however the
 * input is cut; each event's end lies in the piece being parsed; an
 * event's data and name stay within their limits; data handed over
 * without a copy lies in the current piece.
 */


#include "fuzz.h"


#define FUZZ_SSE_DATA_MAX  262144


typedef struct {
    u_char                      *name;
    size_t                       name_len;
    u_char                      *data;
    size_t                       data_len;
    ngx_uint_t                   truncated;
} fuzz_event_t;


typedef struct {
    fuzz_event_t                *ev;
    ngx_uint_t                   n;
    ngx_uint_t                   size;
    u_char                      *piece;
    u_char                      *piece_end;
} fuzz_events_t;


static fuzz_events_t  *fuzz_current;


static ngx_int_t
fuzz_sse_handler(ngx_http_request_t *r, ngx_http_llm_sse_event_t *ev)
{
    fuzz_event_t   *e;
    fuzz_events_t  *evs;

    evs = fuzz_current;

    fuzz_assert(ev->end >= evs->piece && ev->end <= evs->piece_end,
                "the end of event #%lu is outside the piece parsed",
                (unsigned long) evs->n);

    fuzz_assert(ev->data.len <= FUZZ_SSE_DATA_MAX,
                "event data of %zu bytes", ev->data.len);

    fuzz_assert(ev->event.len <= 32, "event name of %zu bytes",
                ev->event.len);

    fuzz_assert(ev->action == NGX_HTTP_LLM_SSE_KEEP, "action preset");

    if (evs->n == evs->size) {
        evs->size = evs->size ? evs->size * 2 : 16;
        evs->ev = realloc(evs->ev, evs->size * sizeof(fuzz_event_t));
        if (evs->ev == NULL) {
            abort();
        }
    }

    e = &evs->ev[evs->n++];

    /* reading every byte: ASan checks that the data is still there */

    e->name = (u_char *) fuzz_cstr(ev->event.data, ev->event.len);
    e->name_len = ev->event.len;
    e->data = (u_char *) fuzz_cstr(ev->data.data, ev->data.len);
    e->data_len = ev->data.len;
    e->truncated = ev->truncated;

    return NGX_OK;
}


static void
fuzz_events_free(fuzz_events_t *evs)
{
    ngx_uint_t  i;

    for (i = 0; i < evs->n; i++) {
        free(evs->ev[i].name);
        free(evs->ev[i].data);
    }

    free(evs->ev);
}


static void
fuzz_parse(fuzz_input_t *in, ngx_uint_t split, fuzz_events_t *evs)
{
    ngx_int_t           rc;
    ngx_uint_t          i, n;
    fuzz_piece_t        piece;
    fuzz_request_t      fr;
    ngx_http_llm_sse_t  sse;

    fuzz_request_init(&fr);
    ngx_memzero(&sse, sizeof(ngx_http_llm_sse_t));
    ngx_memzero(evs, sizeof(fuzz_events_t));

    fuzz_current = evs;

    n = split ? in->ncuts + 1 : 1;

    for (i = 0; i < n; i++) {

        if (split) {
            fuzz_piece(in, i, &piece);

        } else {
            piece.data = fuzz_copy(in->data, in->len);
            piece.len = in->len;
        }

        evs->piece = piece.data;
        evs->piece_end = piece.data + piece.len;

        rc = ngx_http_llm_sse_parse(&fr.request, &sse, piece.data,
                                    piece.data + piece.len,
                                    fuzz_sse_handler);

        fuzz_assert(rc == NGX_OK, "sse_parse returned %ld", (long) rc);

        fuzz_assert(sse.len <= sse.size && sse.len <= FUZZ_SSE_DATA_MAX,
                    "held data %zu of %zu", sse.len, sse.size);

        fuzz_assert(sse.ref == NULL,
                    "the parser keeps a reference into its input");

        fuzz_assert(sse.name_len <= sizeof(sse.name), "event name overflow");

        fuzz_piece_free(&piece);
    }

    fuzz_request_free(&fr);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_uint_t     i;
    fuzz_input_t   in;
    fuzz_events_t  whole, split;

    fuzz_init();

    if (fuzz_input(&in, data, size) != NGX_OK) {
        return 0;
    }

    fuzz_parse(&in, 0, &whole);
    fuzz_parse(&in, 1, &split);

    fuzz_assert(whole.n == split.n,
                "%lu events whole, %lu when cut in %lu pieces",
                (unsigned long) whole.n, (unsigned long) split.n,
                (unsigned long) in.ncuts + 1);

    for (i = 0; i < whole.n; i++) {
        fuzz_assert(whole.ev[i].name_len == split.ev[i].name_len
                    && ngx_memcmp(whole.ev[i].name, split.ev[i].name,
                                  whole.ev[i].name_len) == 0,
                    "event #%lu: name \"%s\" whole, \"%s\" cut",
                    (unsigned long) i, whole.ev[i].name, split.ev[i].name);

        fuzz_assert(whole.ev[i].truncated == split.ev[i].truncated,
                    "event #%lu: truncated differs", (unsigned long) i);

        fuzz_assert(whole.ev[i].data_len == split.ev[i].data_len
                    && ngx_memcmp(whole.ev[i].data, split.ev[i].data,
                                  whole.ev[i].data_len) == 0,
                    "event #%lu: data of %zu bytes whole, %zu cut",
                    (unsigned long) i, whole.ev[i].data_len,
                    split.ev[i].data_len);
    }

    fuzz_events_free(&whole);
    fuzz_events_free(&split);

    return 0;
}
