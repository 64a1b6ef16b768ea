
/*
 * nginx-llm-gateway fuzzing: what the harnesses share.
 *
 * The process is set up as far as the functions under test need it (page
 * size, time, error strings, a log to /dev/null at every level but
 * debug, so that the messages are formatted), and a request is
 * faked: a pool, a connection with the log, the module's context and
 * main configuration, empty header lists.
 *
 * Inputs that streaming code reads are cut at positions the fuzzer
 * chooses: the input starts with a header
 *
 *     byte 0        options of the harness
 *     byte 1        n, the number of cuts (at most FUZZ_CUTS_MAX)
 *     2 x n bytes   the cuts, 16-bit little-endian offsets into the data
 *     ...           the data
 *
 * and each piece is copied into a malloc'ed buffer of its own size, freed
 * as soon as the code under test has returned, so that a read past the
 * end of a piece, or a pointer kept into it, is caught by ASan.
 */


#ifndef _NGX_HTTP_LLM_FUZZ_H_INCLUDED_
#define _NGX_HTTP_LLM_FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>

#include "ngx_http_llm_module.h"


#define FUZZ_CUTS_MAX  32


/* an invariant of the code under test: abort with a message (a crash) */

#define fuzz_assert(cond, ...)                                                \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz: invariant failed at %s:%d: %s\n",          \
                    __FILE__, __LINE__, #cond);                               \
            fprintf(stderr, "fuzz: " __VA_ARGS__);                            \
            fprintf(stderr, "\n");                                            \
            abort();                                                          \
        }                                                                     \
    } while (0)


typedef struct {
    u_char                      *data;     /* malloc'ed, exactly len bytes */
    size_t                       len;
} fuzz_piece_t;


typedef struct {
    ngx_uint_t                   options;
    const u_char                *data;
    size_t                       len;
    size_t                       cut[FUZZ_CUTS_MAX + 2];
    ngx_uint_t                   ncuts;    /* pieces: ncuts + 1 */
} fuzz_input_t;


typedef struct {
    ngx_pool_t                  *pool;
    ngx_connection_t             connection;
    ngx_http_request_t           request;
    ngx_http_upstream_t          upstream;
    ngx_http_llm_ctx_t          *ctx;
    void                        *ctx_array[8];
    void                        *main_conf[8];
} fuzz_request_t;


static ngx_log_t       fuzz_log;
static ngx_open_file_t fuzz_log_file;
static ngx_cycle_t     fuzz_cycle;


static void
fuzz_init(void)
{
    char               *s;
    static ngx_uint_t   done;

    if (done) {
        return;
    }

    done = 1;

    ngx_pagesize = getpagesize();
    for (ngx_pagesize_shift = 0; (1UL << ngx_pagesize_shift) < ngx_pagesize;
         ngx_pagesize_shift++)
    {
        /* void */
    }

    ngx_cacheline_size = NGX_CPU_CACHE_LINE;
    ngx_ncpu = 1;

    if (ngx_strerror_init() != NGX_OK) {
        abort();
    }

    ngx_time_init();

    fuzz_log_file.fd = open("/dev/null", O_WRONLY);
    ngx_str_set(&fuzz_log_file.name, "/dev/null");

    if (fuzz_log_file.fd == -1) {
        abort();
    }

    fuzz_log.file = &fuzz_log_file;
    /*
     * Every message is formatted and written, but the debug ones, which
     * cost half the speed for little (FUZZ_LOG=debug adds them,
     * FUZZ_LOG=none writes none)
     */

    s = getenv("FUZZ_LOG");

    if (s && ngx_strcmp(s, "debug") == 0) {
        fuzz_log.log_level = NGX_LOG_DEBUG_ALL | NGX_LOG_DEBUG;

    } else if (s && ngx_strcmp(s, "none") == 0) {
        fuzz_log.log_level = 0;

    } else {
        fuzz_log.log_level = NGX_LOG_DEBUG;
    }

    fuzz_cycle.log = &fuzz_log;
    ngx_str_set(&fuzz_cycle.prefix, "/tmp/");
    ngx_str_set(&fuzz_cycle.conf_prefix, "/tmp/");

    ngx_cycle = &fuzz_cycle;

    /* nginx does not count the modules here: the module's index is 0 */

    ngx_http_llm_module.ctx_index = 0;
}


/* the header, then the cuts, sorted, within the data */

static int
fuzz_cmp_size(const void *a, const void *b)
{
    size_t  x = *(const size_t *) a, y = *(const size_t *) b;

    return (x > y) - (x < y);
}


static ngx_int_t
fuzz_input(fuzz_input_t *in, const uint8_t *data, size_t size)
{
    size_t      n, i, hdr;

    if (size < 2) {
        return NGX_DECLINED;
    }

    in->options = data[0];
    n = data[1] % (FUZZ_CUTS_MAX + 1);
    hdr = 2 + 2 * n;

    if (size < hdr) {
        return NGX_DECLINED;
    }

    in->data = data + hdr;
    in->len = size - hdr;

    in->cut[0] = 0;

    for (i = 0; i < n; i++) {
        in->cut[i + 1] = (data[2 + 2 * i] | (data[3 + 2 * i] << 8))
                         % (in->len + 1);
    }

    in->cut[n + 1] = in->len;

    qsort(&in->cut[1], n, sizeof(size_t), fuzz_cmp_size);

    in->ncuts = n;

    return NGX_OK;
}


/* piece i (0 .. ncuts) in a buffer of its own; empty pieces are kept */

static void
fuzz_piece(fuzz_input_t *in, ngx_uint_t i, fuzz_piece_t *piece)
{
    piece->len = in->cut[i + 1] - in->cut[i];

    /* malloc(0) may return NULL: one byte then, never read */

    piece->data = malloc(piece->len ? piece->len : 1);
    if (piece->data == NULL) {
        abort();
    }

    ngx_memcpy(piece->data, in->data + in->cut[i], piece->len);
}


static void
fuzz_piece_free(fuzz_piece_t *piece)
{
    free(piece->data);
    piece->data = NULL;
}


/* the data whole, in a buffer of its own size */

static u_char *
fuzz_copy(const u_char *data, size_t len)
{
    u_char  *p;

    p = malloc(len ? len : 1);
    if (p == NULL) {
        abort();
    }

    ngx_memcpy(p, data, len);

    return p;
}


static void
fuzz_request_init(fuzz_request_t *fr)
{
    ngx_memzero(fr, sizeof(fuzz_request_t));

    fr->pool = ngx_create_pool(1024, &fuzz_log);
    if (fr->pool == NULL) {
        abort();
    }

    fr->connection.log = &fuzz_log;
    fr->connection.pool = fr->pool;

    fr->request.pool = fr->pool;
    fr->request.connection = &fr->connection;
    fr->request.ctx = fr->ctx_array;
    fr->request.main_conf = fr->main_conf;

    if (ngx_list_init(&fr->request.headers_in.headers, fr->pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK
        || ngx_list_init(&fr->request.headers_out.headers, fr->pool, 2,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        abort();
    }

    fr->ctx = ngx_pcalloc(fr->pool, sizeof(ngx_http_llm_ctx_t));
    if (fr->ctx == NULL) {
        abort();
    }

    fr->ctx->length = -1;

    fr->ctx_array[ngx_http_llm_module.ctx_index] = fr->ctx;

    fr->upstream.output.tag = (ngx_buf_tag_t) &ngx_http_llm_module;
    fr->upstream.headers_in.status_n = 200;
}


static void
fuzz_request_free(fuzz_request_t *fr)
{
    ngx_destroy_pool(fr->pool);
}


/* a provider of a format, for the code that reads ctx->provider */

static void
fuzz_provider_init(ngx_http_llm_provider_t *p, ngx_http_llm_format_t *f)
{
    ngx_memzero(p, sizeof(ngx_http_llm_provider_t));

    ngx_str_set(&p->name, "fuzz");
    ngx_str_set(&p->base, "/v1");
    p->format = f;
    p->stream_usage = 1;
    p->headers = NGX_CONF_UNSET_PTR;
}


static ngx_http_llm_format_t *
fuzz_format(ngx_uint_t n)
{
    switch (n % 3) {
    case 0:
        return &ngx_http_llm_format_openai;
    case 1:
        return &ngx_http_llm_format_anthropic;
    default:
        return &ngx_http_llm_format_gemini;
    }
}


/* the bytes of a chain, appended to a growing buffer */

typedef struct {
    u_char                      *data;
    size_t                       len;
    size_t                       size;
} fuzz_buf_t;


static void
fuzz_buf_add(fuzz_buf_t *fb, const u_char *p, size_t n)
{
    u_char  *d;
    size_t   size;

    if (fb->len + n > fb->size) {
        size = fb->size ? fb->size : 256;

        while (size < fb->len + n) {
            size *= 2;
        }

        d = realloc(fb->data, size);
        if (d == NULL) {
            abort();
        }

        fb->data = d;
        fb->size = size;
    }

    if (n) {
        ngx_memcpy(fb->data + fb->len, p, n);
        fb->len += n;
    }
}


/* the chain's bytes to fb, and each buffer consumed, as a writer would */

static void
fuzz_chain_take(fuzz_buf_t *fb, ngx_chain_t *cl)
{
    ngx_buf_t  *b;

    for ( /* void */ ; cl; cl = cl->next) {
        b = cl->buf;

        fuzz_assert(b->pos <= b->last, "a buffer ends before it starts");

        fuzz_buf_add(fb, b->pos, b->last - b->pos);
        b->pos = b->last;
    }
}


static void
fuzz_buf_free(fuzz_buf_t *fb)
{
    free(fb->data);
    ngx_memzero(fb, sizeof(fuzz_buf_t));
}


/* the same bytes (memcmp() must not be given NULL, even for 0 bytes) */

static ngx_uint_t
fuzz_same(const u_char *a, size_t alen, const u_char *b, size_t blen)
{
    return alen == blen && (alen == 0 || ngx_memcmp(a, b, alen) == 0);
}


/* FUZZ_DUMP=DIR: bytes to DIR/NAME, to look at a failing input */

static void
fuzz_dump(const char *name, const u_char *p, size_t len)
{
    char   path[1024];
    FILE  *f;

    snprintf(path, sizeof(path), "%s/%s", getenv("FUZZ_DUMP"), name);

    f = fopen(path, "w");
    if (f == NULL) {
        return;
    }

    if (len) {
        fwrite(p, 1, len, f);
    }

    fclose(f);
}


/* any text as a NUL-terminated copy (for cJSON and messages) */

static char *
fuzz_cstr(const u_char *p, size_t len)
{
    char  *s;

    s = malloc(len + 1);
    if (s == NULL) {
        abort();
    }

    ngx_memcpy(s, p, len);
    s[len] = '\0';

    return s;
}


#endif /* _NGX_HTTP_LLM_FUZZ_H_INCLUDED_ */
