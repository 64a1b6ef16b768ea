
/*
 * nginx-llm-gateway: the output of a streamed reply.
 *
 * Every byte goes through the SSE parser, which hands each event to the
 * provider's format (usage, [DONE]).  Usually the bytes then go to the
 * client as they came, piece by piece.  When the format edits events (the
 * usage the gateway asked for on the client's behalf is removed), the
 * client gets whole events instead: events complete in the input go from
 * where they are, without a copy, but for those dropped or cut; the bytes
 * of an event that is not complete yet are held until its end.  Held and
 * edited bytes go into a few blocks of memory that are reused once the
 * client has them, so a long stream needs no more memory than a short
 * one.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_BLOCK_SIZE  4096
#define NGX_HTTP_LLM_HOLD_MAX    (1024 * 1024)


static ngx_int_t ngx_http_llm_stream_run(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p);
static ngx_int_t ngx_http_llm_stream_end_hold(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_stream_event(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);
static u_char *ngx_http_llm_stream_lines(u_char *p, u_char *s, u_char *last);
static ngx_int_t ngx_http_llm_stream_hold(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, u_char *last);
static ngx_buf_t *ngx_http_llm_stream_block(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, size_t size);
static ngx_int_t ngx_http_llm_stream_emit(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_buf_t *b);


/* the tag of the blocks: the upstream leaves bufs of other tags alone */
static ngx_uint_t  ngx_http_llm_block_tag;


ngx_int_t
ngx_http_llm_stream_output(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *pos, u_char *last, ngx_chain_t ***ll)
{
    ctx->out = *ll;
    ctx->raw_start = pos;
    ctx->run_start = pos;

    if (ngx_http_llm_sse_parse(r, &ctx->sse, pos, last,
                               ngx_http_llm_stream_event)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!ctx->strip_usage) {
        /* as it came */
        ctx->raw_start = last;
    }

    /* the events kept whole in this input, and the start of the next */

    if (ngx_http_llm_stream_run(r, ctx, ctx->raw_start) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_stream_hold(r, ctx, ctx->raw_start, last) != NGX_OK) {
        return NGX_ERROR;
    }

    *ll = ctx->out;

    return NGX_OK;
}


/*
 * The input bytes from the start of the run to p: events that go as they
 * came, sent from where they are, without a copy.
 */

static ngx_int_t
ngx_http_llm_stream_run(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p)
{
    if (p == ctx->run_start) {
        return NGX_OK;
    }

    if (ngx_http_llm_output_ref(r, ctx->run_start, p, &ctx->out) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->run_start = p;

    return NGX_OK;
}


/*
 * The reply is complete: bytes still held (an event without its final
 * blank line) go to the client as they are.
 */

ngx_int_t
ngx_http_llm_stream_end(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t ***ll)
{
    ctx->out = *ll;

    if (ngx_http_llm_stream_end_hold(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    *ll = ctx->out;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_stream_end_hold(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_buf_t  *b;

    if (ctx->hold_len == 0) {
        return NGX_OK;
    }

    b = ngx_http_llm_stream_block(r, ctx, ctx->hold_len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, ctx->hold, ctx->hold_len);
    ctx->hold_len = 0;

    return ngx_http_llm_stream_emit(r, ctx, b);
}


static ngx_int_t
ngx_http_llm_stream_event(ngx_http_request_t *r, ngx_http_llm_sse_event_t *ev)
{
    u_char              *p;
    size_t               size;
    ngx_uint_t           lines;
    ngx_buf_t           *b;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    /*
     * the text relayed, for the estimate of a stream cut short, and what
     * the format looks for, in one pass
     */

    if (!ev->truncated
        && ngx_http_llm_usage_scan_event(r, ctx, ev) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ctx->provider->format->event(r, ev) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!ctx->strip_usage) {
        return NGX_OK;
    }

    if (ev->action == NGX_HTTP_LLM_SSE_KEEP && ctx->hold_len == 0) {
        /* the run of events sent from the input goes on */
        ctx->raw_start = ev->end;
        return NGX_OK;
    }

    if (ev->action == NGX_HTTP_LLM_SSE_REPLACE && ctx->hold_len == 0
        && ev->data.data >= ctx->raw_start && ev->data.data < ev->end)
    {
        /*
         * an event cut where it is in the input: the run ends before the
         * cut and goes on after it, without a copy
         */

        if (ngx_http_llm_stream_run(r, ctx, ev->cut_start) != NGX_OK) {
            return NGX_ERROR;
        }

        ctx->run_start = ev->cut_end;
        ctx->raw_start = ev->end;

        return NGX_OK;
    }

    if (ngx_http_llm_stream_run(r, ctx, ctx->raw_start) != NGX_OK) {
        return NGX_ERROR;
    }

    switch (ev->action) {

    case NGX_HTTP_LLM_SSE_KEEP:

        /* the event as it came: what was held, and the rest of it */

        size = ctx->hold_len + (ev->end - ctx->raw_start);

        b = ngx_http_llm_stream_block(r, ctx, size);
        if (b == NULL) {
            return NGX_ERROR;
        }

        if (ctx->hold_len) {
            b->last = ngx_cpymem(b->last, ctx->hold, ctx->hold_len);
        }

        b->last = ngx_cpymem(b->last, ctx->raw_start,
                             ev->end - ctx->raw_start);
        break;

    case NGX_HTTP_LLM_SSE_REPLACE:

        /*
         * The event as it came, less the cut: the data line is found in
         * the event's bytes, which stay as they are around the cut.
         */

        size = ctx->hold_len + (ev->end - ctx->raw_start);

        /* room to write it anew: a "data: " field a line */

        lines = 1;

        for (p = ev->data.data;
             (p = memchr(p, LF, ev->data.data + ev->data.len - p)) != NULL;
             p++)
        {
            lines++;
        }

        b = ngx_http_llm_stream_block(r, ctx,
                                      ngx_max(size, ev->data.len + 64
                                                    + ev->event.len
                                                    + 8 * lines));
        if (b == NULL) {
            return NGX_ERROR;
        }

        if (ctx->hold_len) {
            b->last = ngx_cpymem(b->last, ctx->hold, ctx->hold_len);
        }

        b->last = ngx_cpymem(b->last, ctx->raw_start,
                             ev->end - ctx->raw_start);

        if (ev->data.data >= ctx->raw_start && ev->data.data < ev->end) {
            /* the data of the event in the input, where it came: no search */
            p = b->pos + ctx->hold_len + (ev->data.data - ctx->raw_start);

        } else if (ev->data_off + ev->data.len <= size
                   && memchr(ev->data.data, LF, ev->data.len) == NULL
                   && ngx_memcmp(b->pos + ev->data_off, ev->data.data,
                                 ev->data.len)
                      == 0)
        {
            /*
             * data of one line, copied by the parser: where it began among
             * the event's bytes (the same text may come before it, in a
             * comment)
             */

            p = b->pos + ev->data_off;

        } else {
            p = NULL;
        }

        if (p) {
            p += ev->cut_start - ev->data.data;
            size = ev->cut_end - ev->cut_start;

            ngx_memmove(p, p + size, b->last - (p + size));
            b->last -= size;
            break;
        }

        /* data of several lines: the event is written anew */

        p = b->pos;

        if (ev->event.len) {
            p = ngx_sprintf(p, "event: %V\n", &ev->event);
        }

        p = ngx_cpymem(p, "data: ", sizeof("data: ") - 1);
        p = ngx_http_llm_stream_lines(p, ev->data.data, ev->cut_start);
        p = ngx_http_llm_stream_lines(p, ev->cut_end,
                                      ev->data.data + ev->data.len);
        *p++ = LF; *p++ = LF;

        b->last = p;
        break;

    default: /* NGX_HTTP_LLM_SSE_DROP */
        b = NULL;
    }

    ctx->hold_len = 0;
    ctx->raw_start = ev->end;
    ctx->run_start = ev->end;

    if (b == NULL) {
        return NGX_OK;
    }

    return ngx_http_llm_stream_emit(r, ctx, b);
}


/* the data of an event from s to last, a line break starting a field */

static u_char *
ngx_http_llm_stream_lines(u_char *p, u_char *s, u_char *last)
{
    u_char  *lf;

    while (s < last) {

        lf = memchr(s, LF, last - s);
        if (lf == NULL) {
            return ngx_cpymem(p, s, last - s);
        }

        p = ngx_cpymem(p, s, lf - s);
        p = ngx_cpymem(p, "\ndata: ", sizeof("\ndata: ") - 1);
        s = lf + 1;
    }

    return p;
}


/* the bytes of an event not complete yet, kept until it ends */

static ngx_int_t
ngx_http_llm_stream_hold(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, u_char *last)
{
    u_char  *hold;
    size_t   size;

    if (p == last) {
        return NGX_OK;
    }

    if (ctx->hold_len + (last - p) > NGX_HTTP_LLM_HOLD_MAX) {

        /*
         * An event that does not end: the events are not edited any more,
         * and what was held goes to the client with the rest as it comes.
         */

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm provider \"%V\" sent an event of more than %uz "
                      "bytes: the stream is passed on unedited",
                      &ctx->provider->name, (size_t) NGX_HTTP_LLM_HOLD_MAX);

        ctx->strip_usage = 0;
        ctx->run_start = p;

        if (ngx_http_llm_stream_end_hold(r, ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_llm_stream_run(r, ctx, last);
    }

    if (ctx->hold_len + (last - p) > ctx->hold_size) {
        size = ngx_max(ctx->hold_size * 2, NGX_HTTP_LLM_BLOCK_SIZE);

        while (size < ctx->hold_len + (last - p)) {
            size *= 2;
        }

        hold = ngx_pnalloc(r->pool, size);
        if (hold == NULL) {
            return NGX_ERROR;
        }

        if (ctx->hold) {
            ngx_memcpy(hold, ctx->hold, ctx->hold_len);
            ngx_pfree(r->pool, ctx->hold);
        }

        ctx->hold = hold;
        ctx->hold_size = size;
    }

    ngx_memcpy(ctx->hold + ctx->hold_len, p, last - p);
    ctx->hold_len += last - p;

    return NGX_OK;
}


/*
 * A block of at least size bytes: one the client has had all of is
 * reused, else a new one.
 */

static ngx_buf_t *
ngx_http_llm_stream_block(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    size_t size)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    for (cl = ctx->blocks; cl; cl = cl->next) {
        b = cl->buf;

        if (b->pos == b->last && (size_t) (b->end - b->start) >= size) {
            b->pos = b->start;
            b->last = b->start;
            return b;
        }
    }

    b = ngx_create_temp_buf(r->pool, ngx_max(size, NGX_HTTP_LLM_BLOCK_SIZE));
    if (b == NULL) {
        return NULL;
    }

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NULL;
    }

    cl->buf = b;
    cl->next = ctx->blocks;
    ctx->blocks = cl;

    b->temporary = 0;
    b->memory = 1;
    b->flush = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_llm_block_tag;

    return b;
}


static ngx_int_t
ngx_http_llm_stream_emit(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_buf_t *b)
{
    ngx_chain_t  *cl;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;

    *ctx->out = cl;
    ctx->out = &cl->next;

    return NGX_OK;
}
