
/*
 * The prices: a prices file loaded by the llm_prices directive handler
 * (ngx_http_llm_prices), after an llm_price line when the options ask for
 * one, the table built (ngx_http_llm_init_prices) and models looked up
 * (ngx_http_llm_price_lookup), as nginx -t and a request would.
 *
 *     options bit 0   the data's first line is an llm_price line (its
 *                     words are the directive's arguments)
 *
 * Invariants: a file that loads is one JSON object (cJSON agrees) with an
 * entry per object member but "sample_spec"; every price is at most 1 USD
 * a token (1e12 in 1e-12 USD) and token limits within their bound; every
 * priced model (but "", never looked up) is found by its exact name and
 * by no other name (the name with one letter's case changed finds nothing
 * or a model of that exact name); the price found is the first of that
 * name, llm_price lines first, else the first of "PROVIDER/NAME", as
 * LiteLLM names some models.
 */


#include "fuzz.h"

#include <sys/mman.h>


#define FUZZ_PRICE_UNSET  ((uint64_t) -1)
#define FUZZ_PICO_MAX     1000000000000ULL

/* the loader's bound of token counts: 2^53, a double's exact integers */
#define FUZZ_TOKENS_MAX   9007199254740992ULL


static int  fuzz_fd = -1;


static ngx_http_llm_price_t *
fuzz_lookup(fuzz_request_t *fr, ngx_http_llm_provider_t *p, u_char *name,
    size_t len)
{
    ngx_str_t  model;

    model.data = name;
    model.len = len;

    return ngx_http_llm_price_lookup(&fr->request, p, &model, &model);
}


/* the first priced entry of a name: llm_price lines, then the file */

static ngx_http_llm_price_t *
fuzz_first(ngx_http_llm_main_conf_t *lmcf, u_char *name, size_t len)
{
    ngx_uint_t             i, j;
    ngx_array_t           *all[2];
    ngx_http_llm_price_t  *price;

    all[0] = lmcf->overrides;
    all[1] = lmcf->prices;

    for (j = 0; j < 2; j++) {
        if (all[j] == NULL) {
            continue;
        }

        price = all[j]->elts;

        for (i = 0; i < all[j]->nelts; i++) {
            if (price[i].input == FUZZ_PRICE_UNSET
                || price[i].output == FUZZ_PRICE_UNSET)
            {
                continue;
            }

            if (price[i].model.len == len
                && ngx_memcmp(price[i].model.data, name, len) == 0)
            {
                return &price[i];
            }
        }
    }

    return NULL;
}


static void
fuzz_check_price(ngx_http_llm_price_t *price)
{
    fuzz_assert(price->input == FUZZ_PRICE_UNSET
                || price->input <= FUZZ_PICO_MAX,
                "input price %llu", (unsigned long long) price->input);
    fuzz_assert(price->output == FUZZ_PRICE_UNSET
                || price->output <= FUZZ_PICO_MAX,
                "output price %llu", (unsigned long long) price->output);
    fuzz_assert(price->cache_read == FUZZ_PRICE_UNSET
                || price->cache_read <= FUZZ_PICO_MAX,
                "cache_read price %llu",
                (unsigned long long) price->cache_read);
    fuzz_assert(price->cache_write == FUZZ_PRICE_UNSET
                || price->cache_write <= FUZZ_PICO_MAX,
                "cache_write price %llu",
                (unsigned long long) price->cache_write);
    fuzz_assert(price->reasoning == FUZZ_PRICE_UNSET
                || price->reasoning <= FUZZ_PICO_MAX,
                "reasoning price %llu",
                (unsigned long long) price->reasoning);
    fuzz_assert(price->max_input_tokens <= FUZZ_TOKENS_MAX
                && price->max_output_tokens <= FUZZ_TOKENS_MAX,
                "token limits %llu, %llu",
                (unsigned long long) price->max_input_tokens,
                (unsigned long long) price->max_output_tokens);
}


/* the file's entries as cJSON counts them */

static ngx_uint_t
fuzz_cjson_entries(const u_char *data, size_t len, ngx_uint_t *ok)
{
    cJSON       *root, *entry;
    ngx_uint_t   n;
    const char  *end;

    root = cJSON_ParseWithLengthOpts((const char *) data, len, &end, 0);

    *ok = (root != NULL && cJSON_IsObject(root));
    n = 0;

    if (*ok) {
        cJSON_ArrayForEach(entry, root) {
            if (cJSON_IsObject(entry)
                && ngx_strcmp(entry->string, "sample_spec") != 0)
            {
                n++;
            }
        }
    }

    cJSON_Delete(root);

    return n;
}


/* one llm_price line: the words of the first line of the data */

static char *
fuzz_price_line(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf,
    const u_char **data, size_t *len)
{
    const u_char  *p, *last, *start, *eol;
    ngx_str_t     *word;

    p = *data;
    last = p + *len;

    eol = memchr(p, '\n', last - p);
    if (eol == NULL) {
        eol = last;
    }

    cf->args = ngx_array_create(cf->pool, 4, sizeof(ngx_str_t));
    if (cf->args == NULL) {
        abort();
    }

    word = ngx_array_push(cf->args);
    ngx_str_set(word, "llm_price");

    while (p < eol) {
        while (p < eol && *p == ' ') {
            p++;
        }

        if (p == eol) {
            break;
        }

        start = p;

        while (p < eol && *p != ' ') {
            p++;
        }

        word = ngx_array_push(cf->args);
        if (word == NULL) {
            abort();
        }

        /* nginx's parser hands words as NUL-terminated copies */

        word->len = p - start;
        word->data = ngx_pnalloc(cf->pool, word->len + 1);
        if (word->data == NULL) {
            abort();
        }

        ngx_memcpy(word->data, start, word->len);
        word->data[word->len] = '\0';
    }

    *len -= (eol == last ? last : eol + 1) - *data;
    *data = (eol == last) ? last : eol + 1;

    /* the directive takes 3 arguments or more */

    if (cf->args->nelts < 4) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_llm_price(cf, NULL, lmcf);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                      *rv, path[64];
    size_t                     len;
    u_char                     name[NGX_HTTP_LLM_MODEL_MAX * 2 + 64];
    ngx_str_t                 *value;
    ngx_uint_t                 i, j, n, cjson_ok;
    ngx_conf_t                 cf;
    const u_char              *p;
    fuzz_request_t             fr;
    ngx_http_llm_price_t      *price, *found, *first;
    ngx_http_llm_provider_t    provider;
    ngx_http_llm_main_conf_t  *lmcf;

    fuzz_init();

    if (size < 1) {
        return 0;
    }

    if (fuzz_fd == -1) {
        fuzz_fd = memfd_create("prices", 0);
        if (fuzz_fd == -1) {
            abort();
        }
    }

    fuzz_request_init(&fr);

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.pool = fr.pool;
    cf.temp_pool = ngx_create_pool(1024, &fuzz_log);
    cf.log = &fuzz_log;
    cf.cycle = &fuzz_cycle;
    fuzz_cycle.pool = fr.pool;

    if (cf.temp_pool == NULL) {
        abort();
    }

    lmcf = ngx_pcalloc(fr.pool, sizeof(ngx_http_llm_main_conf_t));
    if (lmcf == NULL) {
        abort();
    }

    fr.main_conf[ngx_http_llm_module.ctx_index] = lmcf;

    p = data + 1;
    len = size - 1;

    if ((data[0] & 1) && fuzz_price_line(&cf, lmcf, &p, &len) != NGX_CONF_OK)
    {
        goto done;
    }

    /* the rest of the data is the file */

    if (ftruncate(fuzz_fd, 0) != 0
        || pwrite(fuzz_fd, p, len, 0) != (ssize_t) len)
    {
        abort();
    }

    ngx_sprintf((u_char *) path, "/proc/self/fd/%d%Z", fuzz_fd);

    cf.args = ngx_array_create(cf.pool, 2, sizeof(ngx_str_t));
    if (cf.args == NULL) {
        abort();
    }

    value = ngx_array_push_n(cf.args, 2);
    if (value == NULL) {
        abort();
    }

    ngx_str_set(&value[0], "llm_prices");
    value[1].data = (u_char *) path;
    value[1].len = ngx_strlen(path);

    rv = ngx_http_llm_prices(&cf, NULL, lmcf);

    n = fuzz_cjson_entries(p, len, &cjson_ok);

    if (rv != NGX_CONF_OK) {
        goto done;
    }

    fuzz_assert(cjson_ok, "a prices file loaded that cJSON does not read");

    fuzz_assert((lmcf->prices ? lmcf->prices->nelts : 0) == n,
                "%lu entries loaded, cJSON counts %lu",
                (unsigned long) (lmcf->prices ? lmcf->prices->nelts : 0),
                (unsigned long) n);

    if (ngx_http_llm_init_prices(&cf, lmcf) != NGX_CONF_OK) {
        goto done;
    }

    fuzz_provider_init(&provider, &ngx_http_llm_format_openai);

    for (j = 0; j < 2; j++) {
        ngx_array_t  *a = j ? lmcf->prices : lmcf->overrides;

        if (a == NULL) {
            continue;
        }

        price = a->elts;

        for (i = 0; i < a->nelts; i++) {

            fuzz_check_price(&price[i]);

            /* an empty name is never looked up (a request needs a model) */

            if (price[i].model.len == 0) {
                continue;
            }

            first = fuzz_first(lmcf, price[i].model.data,
                               price[i].model.len);

            /* an unpriced name is looked up as "fuzz/NAME" too */

            if (first == NULL) {
                if (price[i].model.len > sizeof(name) - 5) {
                    continue;
                }

                ngx_memcpy(ngx_cpymem(name, "fuzz/", 5), price[i].model.data,
                           price[i].model.len);
                first = fuzz_first(lmcf, name, price[i].model.len + 5);
            }
            found = fuzz_lookup(&fr, &provider, price[i].model.data,
                                price[i].model.len);

            fuzz_assert(found == first,
                        "model \"%.*s\": lookup %p, first entry %p",
                        (int) price[i].model.len, price[i].model.data,
                        (void *) found, (void *) first);

            /* the same name with one letter in the other case */

            if (price[i].model.len == 0
                || price[i].model.len > sizeof(name))
            {
                continue;
            }

            ngx_memcpy(name, price[i].model.data, price[i].model.len);

            for (n = 0; n < price[i].model.len; n++) {
                if (isalpha(name[n])) {
                    name[n] ^= 0x20;
                    break;
                }
            }

            if (n == price[i].model.len) {
                continue;
            }

            found = fuzz_lookup(&fr, &provider, name, price[i].model.len);

            /* "fuzz/NAME" is looked up too: a match of it is exact */

            fuzz_assert(found == NULL
                        || found == fuzz_first(lmcf, name,
                                               price[i].model.len)
                        || (found->model.len == price[i].model.len + 5
                            && ngx_memcmp(found->model.data, "fuzz/", 5)
                               == 0
                            && ngx_memcmp(found->model.data + 5, name,
                                          price[i].model.len) == 0),
                        "model \"%.*s\" found as \"%.*s\"",
                        (int) price[i].model.len, name,
                        (int) found->model.len, found->model.data);
        }
    }

done:

    ngx_destroy_pool(cf.temp_pool);
    fuzz_request_free(&fr);

    return 0;
}
