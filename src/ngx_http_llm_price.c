
/*
 * nginx-llm-gateway: prices and costs.
 *
 * Prices come from a JSON file in the shape of LiteLLM's
 * model_prices_and_context_window.json (USD per token) and from llm_price
 * lines (USD per million tokens), which win.  They are kept as integers of
 * 1e-12 USD per token, so that a cost is an exact integer: the costs in
 * the access log add up to the totals of the status page to the digit.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_PRICE_UNSET  ((uint64_t) -1)

/* a price is at most 1 USD per token: 1e12 in 1e-12 USD */
#define NGX_HTTP_LLM_PRICE_MAX    1000000000000ULL

/* a number of tokens: an integer that a JSON number holds exactly, 2^53 */
#define NGX_HTTP_LLM_TOKENS_MAX   9007199254740992ULL


typedef struct {
    ngx_str_t                    name;
    size_t                       offset;
} ngx_http_llm_price_field_t;


static ngx_int_t ngx_http_llm_prices_load(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
static ngx_int_t ngx_http_llm_price_tokens(cJSON *entry, char *name,
    uint64_t *tokens);
static ngx_http_llm_price_t *ngx_http_llm_price_add(ngx_conf_t *cf,
    ngx_array_t **a, u_char *model, size_t len);
static ngx_int_t ngx_http_llm_price_insert(ngx_http_llm_main_conf_t *lmcf,
    ngx_http_llm_price_t *price);
static ngx_http_llm_price_t *ngx_http_llm_price_find(
    ngx_http_llm_main_conf_t *lmcf, ngx_str_t *model);
static ngx_int_t ngx_http_llm_mul_add(uint64_t *sum, uint64_t a,
    uint64_t b);


/* the fields of LiteLLM's table, in USD per token */

static ngx_http_llm_price_field_t  ngx_http_llm_litellm_fields[] = {
    { ngx_string("input_cost_per_token"),
      offsetof(ngx_http_llm_price_t, input) },
    { ngx_string("output_cost_per_token"),
      offsetof(ngx_http_llm_price_t, output) },
    { ngx_string("cache_read_input_token_cost"),
      offsetof(ngx_http_llm_price_t, cache_read) },
    { ngx_string("cache_creation_input_token_cost"),
      offsetof(ngx_http_llm_price_t, cache_write) },
    { ngx_string("output_cost_per_reasoning_token"),
      offsetof(ngx_http_llm_price_t, reasoning) },
    { ngx_null_string, 0 }
};


/* the parameters of llm_price, in USD per million tokens */

static ngx_http_llm_price_field_t  ngx_http_llm_price_params[] = {
    { ngx_string("input="), offsetof(ngx_http_llm_price_t, input) },
    { ngx_string("output="), offsetof(ngx_http_llm_price_t, output) },
    { ngx_string("cache_read="), offsetof(ngx_http_llm_price_t, cache_read) },
    { ngx_string("cache_write="),
      offsetof(ngx_http_llm_price_t, cache_write) },
    { ngx_string("reasoning="), offsetof(ngx_http_llm_price_t, reasoning) },
    { ngx_null_string, 0 }
};


char *
ngx_http_llm_prices(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    ngx_str_t  *value;

    if (lmcf->prices_file.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lmcf->prices_file = value[1];

    if (ngx_conf_full_name(cf->cycle, &lmcf->prices_file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llm_prices_load(cf, lmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_prices_load(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    char                        *err;
    const char                  *end;
    u_char                      *buf;
    double                       d;
    ssize_t                      n;
    ngx_fd_t                     fd;
    ngx_int_t                    rc;
    cJSON                       *root, *entry, *item;
    uint64_t                    *field;
    ngx_file_info_t              fi;
    ngx_http_llm_price_t        *price;
    ngx_http_llm_price_field_t  *f;

    fd = ngx_open_file(lmcf->prices_file.data, NGX_FILE_RDONLY,
                       NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed",
                           &lmcf->prices_file);
        return NGX_ERROR;
    }

    buf = NULL;
    n = -1;

    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR) {
        buf = ngx_pnalloc(cf->temp_pool, ngx_file_size(&fi) + 1);
        if (buf != NULL) {
            n = ngx_read_fd(fd, buf, ngx_file_size(&fi));
        }
    }

    ngx_close_file(fd);

    if (n < 0 || n != ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "could not read the prices file \"%V\"",
                           &lmcf->prices_file);
        return NGX_ERROR;
    }

    root = cJSON_ParseWithLengthOpts((char *) buf, n, &end, 0);

    /* one object and nothing after it but white space */

    while (root && end < (char *) buf + n
           && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
    {
        end++;
    }

    if (root && end != (char *) buf + n) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the prices file \"%V\" has more than one JSON "
                           "value (near byte %uz)", &lmcf->prices_file,
                           (size_t) (end - (char *) buf));
        cJSON_Delete(root);
        return NGX_ERROR;
    }

    if (root == NULL || !cJSON_IsObject(root)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the prices file \"%V\" is not a JSON object "
                           "(error near byte %uz)", &lmcf->prices_file,
                           root ? 0 : (size_t) (cJSON_GetErrorPtr()
                                                - (const char *) buf));
        cJSON_Delete(root);
        return NGX_ERROR;
    }

    rc = NGX_OK;
    err = NULL;

    cJSON_ArrayForEach(entry, root) {

        if (!cJSON_IsObject(entry)
            || ngx_strcmp(entry->string, "sample_spec") == 0)
        {
            continue;
        }

        price = ngx_http_llm_price_add(cf, &lmcf->prices,
                                       (u_char *) entry->string,
                                       ngx_strlen(entry->string));
        if (price == NULL) {
            rc = NGX_ERROR;
            break;
        }

        for (f = ngx_http_llm_litellm_fields; f->name.len; f++) {

            item = cJSON_GetObjectItemCaseSensitive(entry,
                                                    (char *) f->name.data);
            if (item == NULL || cJSON_IsNull(item)) {
                continue;
            }

            d = cJSON_IsNumber(item) ? item->valuedouble : -1;

            /* NaN fails both comparisons; 1e999 is parsed as infinity */

            if (!(d >= 0 && d <= 1)) {
                err = (char *) f->name.data;
                break;
            }

            field = (uint64_t *) ((char *) price + f->offset);
            *field = (uint64_t) (d * 1e12 + 0.5);
        }

        if (err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%s\" of \"%s\" in the prices file "
                               "\"%V\": a number of USD per token expected",
                               err, entry->string, &lmcf->prices_file);
            rc = NGX_ERROR;
            break;
        }

        if (ngx_http_llm_price_tokens(entry, "max_input_tokens",
                                      &price->max_input_tokens)
            != NGX_OK)
        {
            err = "max_input_tokens";

        } else if (ngx_http_llm_price_tokens(entry, "max_output_tokens",
                                             &price->max_output_tokens)
                   != NGX_OK)
        {
            err = "max_output_tokens";
        }

        if (err == NULL) {
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"%s\" of \"%s\" in the prices file "
                           "\"%V\": a whole number of tokens from 0 to %uL "
                           "expected", err, entry->string, &lmcf->prices_file,
                           (uint64_t) NGX_HTTP_LLM_TOKENS_MAX);
        rc = NGX_ERROR;
        break;
    }

    cJSON_Delete(root);

    return rc;
}


/*
 * A number of tokens of the file: absent or null is unknown (0); else a
 * whole number from 0 to 2^53.  The checks are written so that NaN and
 * the infinity of 1e999 fail them, before any conversion to an integer.
 */

static ngx_int_t
ngx_http_llm_price_tokens(cJSON *entry, char *name, uint64_t *tokens)
{
    double   d;
    cJSON   *item;

    item = cJSON_GetObjectItemCaseSensitive(entry, name);

    if (item == NULL || cJSON_IsNull(item)) {
        return NGX_OK;
    }

    if (!cJSON_IsNumber(item)) {
        return NGX_ERROR;
    }

    d = item->valuedouble;

    if (!(d >= 0 && d <= (double) NGX_HTTP_LLM_TOKENS_MAX)) {
        return NGX_ERROR;
    }

    if ((double) (uint64_t) d != d) {
        return NGX_ERROR;
    }

    *tokens = (uint64_t) d;

    return NGX_OK;
}


char *
ngx_http_llm_price(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    uint64_t                    *field;
    ngx_int_t                    n;
    ngx_str_t                   *value;
    ngx_uint_t                   i;
    ngx_http_llm_price_t        *price;
    ngx_http_llm_price_field_t  *f;

    value = cf->args->elts;

    if (lmcf->overrides) {
        price = lmcf->overrides->elts;

        for (i = 0; i < lmcf->overrides->nelts; i++) {
            if (price[i].model.len == value[1].len
                && ngx_strncmp(price[i].model.data, value[1].data,
                               value[1].len) == 0)
            {
                return "is duplicate";
            }
        }
    }

    price = ngx_http_llm_price_add(cf, &lmcf->overrides, value[1].data,
                                   value[1].len);
    if (price == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        /* the model's context: the most input tokens it takes */

        if (ngx_strncmp(value[i].data, "max_input=", 10) == 0) {
            n = ngx_atoi(value[i].data + 10, value[i].len - 10);

            if (n == NGX_ERROR || n == 0
                || (uint64_t) n > NGX_HTTP_LLM_TOKENS_MAX)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": a number of tokens "
                                   "from 1 to %uL", &value[i],
                                   (uint64_t) NGX_HTTP_LLM_TOKENS_MAX);
                return NGX_CONF_ERROR;
            }

            price->max_input_tokens = (uint64_t) n;
            continue;
        }

        for (f = ngx_http_llm_price_params; f->name.len; f++) {
            if (value[i].len > f->name.len
                && ngx_strncmp(value[i].data, f->name.data, f->name.len) == 0)
            {
                break;
            }
        }

        if (f->name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        /* USD per million tokens, to six decimals: 1e-12 USD per token */

        n = ngx_atofp(value[i].data + f->name.len,
                      value[i].len - f->name.len, 6);

        if (n == NGX_ERROR || (uint64_t) n > NGX_HTTP_LLM_PRICE_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid price \"%V\": USD per million "
                               "tokens, at most 6 decimals and at most "
                               "1000000", &value[i]);
            return NGX_CONF_ERROR;
        }

        field = (uint64_t *) ((char *) price + f->offset);
        *field = (uint64_t) n;
    }

    if (price->input == NGX_HTTP_LLM_PRICE_UNSET
        || price->output == NGX_HTTP_LLM_PRICE_UNSET)
    {
        return "needs input= and output=";
    }

    return NGX_CONF_OK;
}


static ngx_http_llm_price_t *
ngx_http_llm_price_add(ngx_conf_t *cf, ngx_array_t **a, u_char *model,
    size_t len)
{
    ngx_http_llm_price_t  *price;

    if (*a == NULL) {
        *a = ngx_array_create(cf->pool, 64, sizeof(ngx_http_llm_price_t));
        if (*a == NULL) {
            return NULL;
        }
    }

    price = ngx_array_push(*a);
    if (price == NULL) {
        return NULL;
    }

    price->model.data = ngx_pnalloc(cf->pool, len);
    if (price->model.data == NULL) {
        return NULL;
    }

    ngx_memcpy(price->model.data, model, len);
    price->model.len = len;

    price->input = NGX_HTTP_LLM_PRICE_UNSET;
    price->output = NGX_HTTP_LLM_PRICE_UNSET;
    price->cache_read = NGX_HTTP_LLM_PRICE_UNSET;
    price->cache_write = NGX_HTTP_LLM_PRICE_UNSET;
    price->reasoning = NGX_HTTP_LLM_PRICE_UNSET;
    price->max_input_tokens = 0;
    price->max_output_tokens = 0;

    return price;
}


/*
 * One table of every priced model; an llm_price line replaces the file's
 * entry of the same model.  Entries without input and output prices are
 * left out: such a model is unpriced.
 *
 * Model names are compared exactly, case included, as providers compare
 * their model ids, and may be of any length.  ngx_hash_t does neither (it
 * keeps its keys in lower case and in buckets of a fixed size), so the
 * table is open addressing: a power of two of slots, at least twice the
 * models, linear probing from the name's murmur2 hash (which spreads
 * names that differ in a digit, "model-0001" and "model-0002", where
 * ngx_hash_key() makes runs of neighbours), and the whole name compared.
 */

char *
ngx_http_llm_init_prices(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t              i, j, n, size;
    ngx_array_t            *a, *all[2];
    ngx_http_llm_price_t   *price;

    all[0] = lmcf->overrides;
    all[1] = lmcf->prices;

    n = 0;

    for (j = 0; j < 2; j++) {
        if (all[j]) {
            n += all[j]->nelts;
        }
    }

    if (n == 0) {
        return NGX_CONF_OK;
    }

    for (size = 16; size < 2 * n; size <<= 1) { /* void */ }

    lmcf->price_hash = ngx_pcalloc(cf->pool,
                                   size * sizeof(ngx_http_llm_price_t *));
    if (lmcf->price_hash == NULL) {
        return NGX_CONF_ERROR;
    }

    lmcf->price_hash_mask = size - 1;

    for (j = 0; j < 2; j++) {
        a = all[j];

        if (a == NULL) {
            continue;
        }

        price = a->elts;

        for (i = 0; i < a->nelts; i++) {

            if (price[i].input == NGX_HTTP_LLM_PRICE_UNSET
                || price[i].output == NGX_HTTP_LLM_PRICE_UNSET)
            {
                continue;
            }

            /* cached and reasoning tokens cost as the others by default */

            if (price[i].cache_read == NGX_HTTP_LLM_PRICE_UNSET) {
                price[i].cache_read = price[i].input;
            }

            if (price[i].cache_write == NGX_HTTP_LLM_PRICE_UNSET) {
                price[i].cache_write = price[i].input;
            }

            if (price[i].reasoning == NGX_HTTP_LLM_PRICE_UNSET) {
                price[i].reasoning = price[i].output;
            }

            /* NGX_BUSY: an llm_price line, or an earlier entry, has it */

            (void) ngx_http_llm_price_insert(lmcf, &price[i]);
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_price_insert(ngx_http_llm_main_conf_t *lmcf,
    ngx_http_llm_price_t *price)
{
    ngx_uint_t              i;
    ngx_http_llm_price_t  **slot;

    i = ngx_murmur_hash2(price->model.data, price->model.len);

    for ( ;; ) {
        slot = &lmcf->price_hash[i & lmcf->price_hash_mask];

        if (*slot == NULL) {
            *slot = price;
            return NGX_OK;
        }

        if ((*slot)->model.len == price->model.len
            && ngx_memcmp((*slot)->model.data, price->model.data,
                          price->model.len)
               == 0)
        {
            return NGX_BUSY;
        }

        i++;
    }
}


/* the table is at most half full: a probe ends at an empty slot */

static ngx_http_llm_price_t *
ngx_http_llm_price_find(ngx_http_llm_main_conf_t *lmcf, ngx_str_t *model)
{
    ngx_uint_t             i;
    ngx_http_llm_price_t  *price;

    if (lmcf->price_hash == NULL || model->len == 0) {
        return NULL;
    }

    i = ngx_murmur_hash2(model->data, model->len);

    for ( ;; ) {
        price = lmcf->price_hash[i & lmcf->price_hash_mask];

        if (price == NULL) {
            return NULL;
        }

        if (price->model.len == model->len
            && ngx_memcmp(price->model.data, model->data, model->len) == 0)
        {
            return price;
        }

        i++;
    }
}


/*
 * The price of a model: looked up by the name the provider is sent, then
 * as "provider/name" (LiteLLM's keys for some providers), then by the
 * name the client asked for.
 */

ngx_http_llm_price_t *
ngx_http_llm_price_lookup(ngx_http_request_t *r, ngx_http_llm_provider_t *p,
    ngx_str_t *upstream_model, ngx_str_t *model)
{
    u_char                    *s;
    ngx_str_t                  name;
    ngx_http_llm_price_t      *price;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    price = ngx_http_llm_price_find(lmcf, upstream_model);

    if (price == NULL && lmcf->price_hash) {
        name.len = p->name.len + 1 + upstream_model->len;

        name.data = ngx_pnalloc(r->pool, name.len);
        if (name.data == NULL) {
            return NULL;
        }

        s = ngx_cpymem(name.data, p->name.data, p->name.len);
        *s++ = '/';
        ngx_memcpy(s, upstream_model->data, upstream_model->len);

        price = ngx_http_llm_price_find(lmcf, &name);
    }

    if (price == NULL) {
        price = ngx_http_llm_price_find(lmcf, model);
    }

    return price;
}


/*
 * The cost of the request: uncached input, cache reads, cache writes,
 * output and reasoning, each at its price.
 */

void
ngx_http_llm_price_request(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    uint64_t                   cost;
    ngx_http_llm_usage_t      *u;
    ngx_http_llm_price_t      *price;

    if (ctx->cost_final) {
        return;
    }

    ngx_http_llm_usage_finalize(r, ctx);

    ctx->cost_final = ctx->finalized;
    ctx->priced = 0;
    ctx->cost = 0;

    if (ctx->provider == NULL) {
        return;
    }

    price = ngx_http_llm_price_lookup(r, ctx->provider, &ctx->upstream_model,
                                      &ctx->model);
    if (price == NULL) {
        return;
    }

    u = &ctx->usage;
    cost = 0;

    if (ngx_http_llm_mul_add(&cost, u->input - u->cache_read - u->cache_write,
                             price->input) != NGX_OK
        || ngx_http_llm_mul_add(&cost, u->cache_read, price->cache_read)
           != NGX_OK
        || ngx_http_llm_mul_add(&cost, u->cache_write, price->cache_write)
           != NGX_OK
        || ngx_http_llm_mul_add(&cost, u->output - u->reasoning,
                                price->output) != NGX_OK
        || ngx_http_llm_mul_add(&cost, u->reasoning, price->reasoning)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm cost of model \"%V\" overflows", &ctx->model);
        return;
    }

    ctx->cost = cost;
    ctx->priced = 1;
}


static ngx_int_t
ngx_http_llm_mul_add(uint64_t *sum, uint64_t a, uint64_t b)
{
    uint64_t  m;

    if (a == 0 || b == 0) {
        return NGX_OK;
    }

    if (a > NGX_HTTP_LLM_UINT64_MAX / b) {
        return NGX_ERROR;
    }

    m = a * b;

    if (*sum > NGX_HTTP_LLM_UINT64_MAX - m) {
        return NGX_ERROR;
    }

    *sum += m;

    return NGX_OK;
}


/* USD as a plain decimal: 12 decimals at most, trailing zeros dropped */

u_char *
ngx_http_llm_format_usd(u_char *p, uint64_t pico)
{
    u_char      *last, digits[NGX_INT64_LEN];
    uint64_t     usd, frac;
    ngx_uint_t   i;

    usd = pico / 1000000000000ULL;
    frac = pico % 1000000000000ULL;

    /* the digits by hand: every log line with $llm_cost has them */

    i = sizeof(digits);

    do {
        digits[--i] = (u_char) ('0' + usd % 10);
        usd /= 10;
    } while (usd);

    p = ngx_cpymem(p, digits + i, sizeof(digits) - i);

    if (frac == 0) {
        return p;
    }

    *p++ = '.';

    for (i = 12; i; i--) {
        p[i - 1] = (u_char) ('0' + frac % 10);
        frac /= 10;
    }

    last = p + 12;

    while (last[-1] == '0') {
        last--;
    }

    return last;
}
