
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


typedef struct {
    ngx_str_t                    name;
    size_t                       offset;
} ngx_http_llm_price_field_t;


static ngx_int_t ngx_http_llm_prices_load(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
static ngx_http_llm_price_t *ngx_http_llm_price_add(ngx_conf_t *cf,
    ngx_array_t **a, u_char *model, size_t len);
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

            if (d < 0 || d > 1) {
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

        item = cJSON_GetObjectItemCaseSensitive(entry, "max_input_tokens");
        if (cJSON_IsNumber(item) && item->valuedouble > 0) {
            price->max_input_tokens = (uint64_t) item->valuedouble;
        }

        item = cJSON_GetObjectItemCaseSensitive(entry, "max_output_tokens");
        if (cJSON_IsNumber(item) && item->valuedouble > 0) {
            price->max_output_tokens = (uint64_t) item->valuedouble;
        }
    }

    cJSON_Delete(root);

    return rc;
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

            if (n == NGX_ERROR || n == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": a number of tokens",
                                   &value[i]);
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

        if (n == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid price \"%V\": USD per million "
                               "tokens, at most 6 decimals", &value[i]);
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
 * One hash of every priced model; an llm_price line replaces the file's
 * entry of the same model.  Entries without input and output prices are
 * left out: such a model is unpriced.
 */

char *
ngx_http_llm_init_prices(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_int_t                rc;
    ngx_uint_t               i, j;
    ngx_array_t             *a, *all[2];
    ngx_hash_init_t          hash;
    ngx_hash_keys_arrays_t   ha;
    ngx_http_llm_price_t    *price;

    ngx_memzero(&ha, sizeof(ngx_hash_keys_arrays_t));

    ha.pool = cf->pool;
    ha.temp_pool = cf->temp_pool;

    if (ngx_hash_keys_array_init(&ha, NGX_HASH_LARGE) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    all[0] = lmcf->overrides;
    all[1] = lmcf->prices;

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

            rc = ngx_hash_add_key(&ha, &price[i].model, &price[i],
                                  NGX_HASH_READONLY_KEY);

            if (rc == NGX_ERROR) {
                return NGX_CONF_ERROR;
            }

            /* NGX_BUSY: an llm_price line has the model already */
        }
    }

    hash.hash = &lmcf->price_hash;
    hash.key = ngx_hash_key;
    hash.max_size = 65536;
    hash.bucket_size = ngx_align(128, ngx_cacheline_size);
    hash.name = "llm_prices_hash";
    hash.pool = cf->pool;
    hash.temp_pool = NULL;

    if (ngx_hash_init(&hash, ha.keys.elts, ha.keys.nelts) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_http_llm_price_t *
ngx_http_llm_price_find(ngx_http_llm_main_conf_t *lmcf, ngx_str_t *model)
{
    if (lmcf->price_hash.buckets == NULL || model->len == 0) {
        return NULL;
    }

    return ngx_hash_find(&lmcf->price_hash,
                         ngx_hash_key(model->data, model->len),
                         model->data, model->len);
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

    if (price == NULL && lmcf->price_hash.buckets) {
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
    u_char    *last;
    uint64_t   frac;

    p = ngx_sprintf(p, "%uL", (uint64_t) (pico / 1000000000000ULL));

    frac = pico % 1000000000000ULL;

    if (frac == 0) {
        return p;
    }

    last = ngx_sprintf(p, ".%012uL", frac);

    while (last[-1] == '0') {
        last--;
    }

    return last;
}
