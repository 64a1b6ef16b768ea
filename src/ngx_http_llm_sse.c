
/*
 * nginx-llm-gateway: an incremental parser of server-sent events.
 *
 * Bytes arrive in pieces of any size, split anywhere; the parser keeps
 * its state between pieces and hands every complete event (its "event"
 * and "data" fields) to a handler.  Line ends are LF, CRLF or CR; comment
 * lines and unknown fields are skipped; the data of one event is kept up
 * to a fixed limit, beyond which the event is marked truncated.
 */


#include "ngx_http_llm_module.h"

#if ((defined __GNUC__ || defined __clang__) && defined __SSE2__)
#include <emmintrin.h>
#define NGX_HTTP_LLM_SSE_SSE2  1
#endif


#define NGX_HTTP_LLM_SSE_DATA_INIT   4096
#define NGX_HTTP_LLM_SSE_DATA_MAX    262144


enum {
    sw_line_start = 0,
    sw_name,
    sw_space,
    sw_value,
    sw_skip,
    sw_cr,
    sw_blank_cr
};


enum {
    field_none = 0,
    field_data,
    field_event
};


static ngx_int_t ngx_http_llm_sse_dispatch(ngx_http_request_t *r,
    ngx_http_llm_sse_t *sse, u_char *end,
    ngx_http_llm_sse_handler_pt handler);
static void ngx_http_llm_sse_field(ngx_http_llm_sse_t *sse);
static ngx_int_t ngx_http_llm_sse_append(ngx_http_request_t *r,
    ngx_http_llm_sse_t *sse, u_char *p, size_t n);
static ngx_int_t ngx_http_llm_sse_line_end(ngx_http_request_t *r,
    ngx_http_llm_sse_t *sse);
static ngx_int_t ngx_http_llm_sse_materialize(ngx_http_request_t *r,
    ngx_http_llm_sse_t *sse);
static u_char *ngx_http_llm_sse_eol(u_char *p, u_char *last);


/*
 * Where the data of an event begins among the bytes of the event (from
 * the end of the event before it: lines without data before it are its
 * bytes too), for those who edit the event's bytes: "event" is where the
 * current event began in this input, or NULL if in earlier input.
 */

#define ngx_http_llm_sse_offset(sse, event, first, q)                        \
    ((event) ? (size_t) ((q) - (event))                                       \
             : (sse)->pending + (size_t) ((q) - (first)))


ngx_int_t
ngx_http_llm_sse_parse(ngx_http_request_t *r, ngx_http_llm_sse_t *sse,
    u_char *p, u_char *last, ngx_http_llm_sse_handler_pt handler)
{
    u_char  ch, *start, *end, *first, *event;

    first = p;
    event = NULL;

    while (p < last) {
        ch = *p;

        switch (sse->state) {

        case sw_blank_cr:
            end = (ch == LF) ? p + 1 : p;

            if (sse->has_data) {
                /* an event ends: the next begins */
                event = end;
            }

            if (ngx_http_llm_sse_dispatch(r, sse, end, handler) != NGX_OK) {
                return NGX_ERROR;
            }

            sse->state = sw_line_start;

            if (ch == LF) {
                p++;
            }

            break;

        case sw_cr:
            sse->state = sw_line_start;

            if (ch == LF) {
                p++;
                break;
            }

            /* fall through */

        case sw_line_start:

            /* the usual line, "data: ", without a field name to gather */

            if (ch == 'd' && last - p >= 6
                && p[1] == 'a' && p[2] == 't' && p[3] == 'a'
                && p[4] == ':' && p[5] == ' ')
            {
                p += 6;

                if (!sse->has_data && sse->len == 0) {

                    sse->data_off = ngx_http_llm_sse_offset(sse, event,
                                                            first, p);

                    /*
                     * an event of one data line and its blank line, whole
                     * in this input, as most are: at once
                     */

                    end = ngx_http_llm_sse_eol(p, last);

                    if (last - end >= 2 && end[0] == LF && end[1] == LF) {
                        sse->ref = p;
                        sse->ref_len = end - p;
                        sse->has_data = 1;
                        sse->field = field_none;

                        if (ngx_http_llm_sse_dispatch(r, sse, end + 2, handler)
                            != NGX_OK)
                        {
                            return NGX_ERROR;
                        }

                        p = end + 2;
                        event = p;
                        break;
                    }
                }

                sse->field = field_data;
                sse->state = sw_value;
                break;
            }

            if (ch == CR && p + 1 == last) {
                /* the event ends with this CR, or with the LF to come */
                sse->state = sw_blank_cr;
                p++;
                break;
            }

            if (ch == CR || ch == LF) {
                /* a blank line ends the event, its CRLF with it */

                end = (ch == CR && p[1] == LF) ? p + 2 : p + 1;

                if (sse->has_data) {
                    event = end;
                }

                if (ngx_http_llm_sse_dispatch(r, sse, end, handler) != NGX_OK) {
                    return NGX_ERROR;
                }

                sse->state = (ch == CR) ? sw_cr : sw_line_start;
                p++;
                break;
            }

            if (ch == ':') {
                sse->state = sw_skip;
                p++;
                break;
            }

            sse->flen = 0;
            sse->state = sw_name;

            /* fall through */

        case sw_name:

            if (ch == ':' || ch == CR || ch == LF) {
                ngx_http_llm_sse_field(sse);

                if (ch == ':') {
                    sse->state = sw_space;
                    p++;
                    break;
                }

                /* a field name alone: its value is empty */

                if (ngx_http_llm_sse_line_end(r, sse) != NGX_OK) {
                    return NGX_ERROR;
                }

                sse->state = (ch == CR) ? sw_cr : sw_line_start;
                p++;
                break;
            }

            if (sse->flen < sizeof(sse->fname)) {
                sse->fname[sse->flen] = ch;
            }

            sse->flen++;
            p++;
            break;

        case sw_space:
            sse->state = sw_value;

            if (ch == ' ') {
                p++;
                break;
            }

            /* fall through */

        case sw_value:
        case sw_skip:

            start = p;
            p = ngx_http_llm_sse_eol(p, last);

            if (sse->state == sw_value && sse->field == field_data
                && !sse->has_data && sse->len == 0)
            {
                sse->data_off = ngx_http_llm_sse_offset(sse, event, first,
                                                        start);
            }

            if (sse->state == sw_skip) {
                /* a comment line */

            } else if (sse->field == field_data && p < last
                       && !sse->has_data && sse->len == 0)
            {
                /*
                 * The first data line of an event, whole in this input:
                 * it is referenced, not copied, until the event ends.
                 */

                sse->ref = start;
                sse->ref_len = p - start;
                sse->has_data = 1;
                sse->field = field_none;

            } else if (p > start) {

                if (ngx_http_llm_sse_materialize(r, sse) != NGX_OK
                    || ngx_http_llm_sse_append(r, sse, start, p - start)
                       != NGX_OK)
                {
                    return NGX_ERROR;
                }
            }

            if (p == last) {
                break;
            }

            if (sse->state == sw_value
                && ngx_http_llm_sse_line_end(r, sse) != NGX_OK)
            {
                return NGX_ERROR;
            }

            sse->state = (*p == CR) ? sw_cr : sw_line_start;
            p++;
            break;
        }
    }

    /* the input goes away: what the current event refers to is kept */

    if (ngx_http_llm_sse_materialize(r, sse) != NGX_OK) {
        return NGX_ERROR;
    }

    sse->pending = ngx_http_llm_sse_offset(sse, event, first, last);

    return NGX_OK;
}


static void
ngx_http_llm_sse_field(ngx_http_llm_sse_t *sse)
{
    sse->field = field_none;

    if (sse->flen == 4 && ngx_strncmp(sse->fname, "data", 4) == 0) {
        sse->field = field_data;

    } else if (sse->flen == 5 && ngx_strncmp(sse->fname, "event", 5) == 0) {
        sse->field = field_event;
        sse->name_len = 0;
    }
}


static ngx_int_t
ngx_http_llm_sse_append(ngx_http_request_t *r, ngx_http_llm_sse_t *sse,
    u_char *p, size_t n)
{
    u_char  *data;
    size_t   size;

    if (sse->field == field_event) {
        n = ngx_min(n, sizeof(sse->name) - sse->name_len);
        ngx_memcpy(sse->name + sse->name_len, p, n);
        sse->name_len += n;
        return NGX_OK;
    }

    if (sse->field != field_data) {
        return NGX_OK;
    }

    if (sse->len + n > NGX_HTTP_LLM_SSE_DATA_MAX) {
        sse->truncated = 1;
        n = NGX_HTTP_LLM_SSE_DATA_MAX - sse->len;
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (sse->len + n > sse->size) {

        size = sse->size ? sse->size : NGX_HTTP_LLM_SSE_DATA_INIT;

        while (size < sse->len + n) {
            size *= 2;
        }

        size = ngx_min(size, NGX_HTTP_LLM_SSE_DATA_MAX);

        data = ngx_pnalloc(r->pool, size);
        if (data == NULL) {
            return NGX_ERROR;
        }

        if (sse->len) {
            ngx_memcpy(data, sse->data, sse->len);
        }

        if (sse->data) {
            ngx_pfree(r->pool, sse->data);
        }

        sse->data = data;
        sse->size = size;
    }

    ngx_memcpy(sse->data + sse->len, p, n);
    sse->len += n;

    return NGX_OK;
}


/* the referenced first line of data, copied with its LF */

static ngx_int_t
ngx_http_llm_sse_materialize(ngx_http_request_t *r, ngx_http_llm_sse_t *sse)
{
    u_char      lf, *ref;
    ngx_uint_t  field;

    if (sse->ref == NULL) {
        return NGX_OK;
    }

    ref = sse->ref;
    sse->ref = NULL;

    field = sse->field;
    sse->field = field_data;
    lf = LF;

    if (ngx_http_llm_sse_append(r, sse, ref, sse->ref_len) != NGX_OK
        || ngx_http_llm_sse_append(r, sse, &lf, 1) != NGX_OK)
    {
        return NGX_ERROR;
    }

    sse->field = field;

    return NGX_OK;
}


/* the first CR or LF from p, or last */

static u_char *
ngx_http_llm_sse_eol(u_char *p, u_char *last)
{
#if (NGX_HTTP_LLM_SSE_SSE2)
    unsigned  m;
    __m128i   x, y, lf, cr;

    lf = _mm_set1_epi8(LF);
    cr = _mm_set1_epi8(CR);

    while (last - p >= 32) {
        x = _mm_loadu_si128((const __m128i *) p);
        y = _mm_loadu_si128((const __m128i *) (p + 16));

        m = (unsigned) _mm_movemask_epi8(
                           _mm_or_si128(_mm_cmpeq_epi8(x, lf),
                                        _mm_cmpeq_epi8(x, cr)))
            | (unsigned) _mm_movemask_epi8(
                             _mm_or_si128(_mm_cmpeq_epi8(y, lf),
                                          _mm_cmpeq_epi8(y, cr))) << 16;

        if (m) {
            return p + __builtin_ctz(m);
        }

        p += 32;
    }

    while (last - p >= 16) {
        x = _mm_loadu_si128((const __m128i *) p);

        m = (unsigned) _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, lf),
                                                      _mm_cmpeq_epi8(x, cr)));

        if (m) {
            return p + __builtin_ctz(m);
        }

        p += 16;
    }

    while (p < last && *p != LF && *p != CR) {
        p++;
    }

    return p;

#else
    u_char  *lf, *cr;

    lf = memchr(p, LF, last - p);
    cr = memchr(p, CR, (lf ? lf : last) - p);

    return cr ? cr : (lf ? lf : last);
#endif
}


/*
 * The end of a field line: the lines of one event's data are joined
 * by LF, as the specification says; the last LF is removed on dispatch.
 */

static ngx_int_t
ngx_http_llm_sse_line_end(ngx_http_request_t *r, ngx_http_llm_sse_t *sse)
{
    u_char  lf;

    if (sse->field != field_data) {
        sse->field = field_none;
        return NGX_OK;
    }

    if (ngx_http_llm_sse_materialize(r, sse) != NGX_OK) {
        return NGX_ERROR;
    }

    sse->has_data = 1;

    lf = LF;

    if (ngx_http_llm_sse_append(r, sse, &lf, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    sse->field = field_none;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_sse_dispatch(ngx_http_request_t *r, ngx_http_llm_sse_t *sse,
    u_char *end, ngx_http_llm_sse_handler_pt handler)
{
    ngx_int_t                 rc;
    ngx_http_llm_sse_event_t  ev;

    if (!sse->has_data) {
        sse->name_len = 0;
        return NGX_OK;
    }

    ev.event.data = sse->name;
    ev.event.len = sse->name_len;
    ev.truncated = sse->truncated;
    ev.end = end;
    ev.action = NGX_HTTP_LLM_SSE_KEEP;
    ev.cut_start = NULL;
    ev.cut_end = NULL;
    ev.usage = NULL;
    ev.usage_objects = 0;
    ev.scanned = 0;
    ev.finish = 0;
    ev.data_off = sse->data_off;

    if (sse->ref) {
        ev.data.data = sse->ref;
        ev.data.len = sse->ref_len;
        sse->ref = NULL;

    } else {
        ev.data.data = sse->data;
        ev.data.len = sse->len;

        if (!ev.truncated && ev.data.len
            && ev.data.data[ev.data.len - 1] == LF)
        {
            ev.data.len--;
        }
    }

    sse->nevents++;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm sse event #%ui, %uz bytes of data",
                   sse->nevents, ev.data.len);

    rc = handler ? handler(r, &ev) : NGX_OK;

    sse->len = 0;
    sse->name_len = 0;
    sse->has_data = 0;
    sse->truncated = 0;

    return rc;
}
