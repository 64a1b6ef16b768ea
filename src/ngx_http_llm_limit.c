
/*
 * nginx-llm-gateway: limits in shared memory, reserved before the request
 * goes to a provider and reconciled with the real usage when it ends.
 *
 * A zone per purpose (llm_limit_zone, and the zone of llm_keys for the
 * limits of each virtual key), laid out like limit_req's: a slab pool, a
 * red-black tree of nodes keyed by crc32 of the key, an LRU queue, and a
 * mutex held only for the lookup and the arithmetic.  For each key:
 *
 *   - requests, tokens and spend per fixed window (aligned on the period:
 *     the minute, the hour, the UTC day), used + reserved <= limit;
 *   - requests in flight (concurrent).
 *
 * Admission reserves 1 request, the estimated tokens (input estimated
 * from the body, output from max_tokens and its kin, else the model's
 * maximum) and the estimated spend (those tokens at the dearest price of
 * the route's providers for the model).  When the request ends, for any
 * reason, a pool cleanup takes the reservation back and charges the real
 * usage and cost to the window of that moment.  Reservations are kept in
 * two buckets of NGX_HTTP_LLM_LIMIT_HOLD ms: a reservation that no request
 * takes back (a worker that died) is gone after at most twice that.
 */


#include "ngx_http_llm_module.h"

#include <openssl/sha.h>


#define NGX_HTTP_LLM_LIMIT_HOLD       300000
#define NGX_HTTP_LLM_LIMIT_KEY_MAX    255
#define NGX_HTTP_LLM_LIMIT_MIN_OUTPUT 16
#define NGX_HTTP_LLM_LIMIT_OUTPUT     4096

/* ctx->limit_status: 0 when no limit applies, else a name's index + 1 */
#define NGX_HTTP_LLM_LIMIT_PASSED      1
#define NGX_HTTP_LLM_LIMIT_REJECTED    2    /* + the dimension */
#define NGX_HTTP_LLM_LIMIT_CONCURRENT  5
#define NGX_HTTP_LLM_LIMIT_CLAMPED     6
#define NGX_HTTP_LLM_LIMIT_DRY_RUN     5    /* added to the above */


typedef struct {
    u_char                       color;
    u_char                       dummy;
    u_short                      len;
    ngx_queue_t                  queue;
    ngx_msec_t                   last;

    uint64_t                     window[NGX_HTTP_LLM_LIMIT_N];
    uint64_t                     used[NGX_HTTP_LLM_LIMIT_N];
    uint64_t                     reserved[2][NGX_HTTP_LLM_LIMIT_N];
    uint64_t                     inflight[2];
    uint64_t                     epoch;
    uint64_t                     rejected;

    ngx_http_llm_limits_t        limits;        /* the key's, last seen */

    u_char                       data[1];
} ngx_http_llm_limit_node_t;


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;
    uint64_t                     evicted;
    time_t                       evict_logged;
} ngx_http_llm_limit_shctx_t;


struct ngx_http_llm_limit_zone_s {
    ngx_http_llm_limit_shctx_t  *sh;
    ngx_slab_pool_t             *shpool;
    ngx_str_t                    name;
    ngx_http_complex_value_t    *key;           /* NULL: llm_keys' zone */
    ngx_http_llm_limits_t        limits;
    ngx_shm_zone_t              *shm_zone;
};


/* a limit that applies to the request: its zone, its key, its limits */

typedef struct {
    ngx_http_llm_limit_zone_t   *zone;
    ngx_http_llm_limits_t       *limits;
    ngx_str_t                    key;
    uint32_t                     hash;
    unsigned                     clamp:1;
    unsigned                     dry_run:1;
    unsigned                     skip:1;
} ngx_http_llm_limit_apply_t;


/* what the request needs: the estimates of admission */

typedef struct {
    uint64_t                     input;         /* tokens */
    uint64_t                     output;        /* tokens */
    uint64_t                     input_cost;    /* the dearest, 1e-12 USD */
    uint64_t                     output_price;  /* the dearest a token */
    ngx_uint_t                   named;         /* the request's max */
} ngx_http_llm_limit_need_t;


static ngx_int_t ngx_http_llm_limit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_llm_limit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_http_llm_limit_node_t *ngx_http_llm_limit_lookup(
    ngx_http_llm_limit_zone_t *zone, ngx_str_t *key, uint32_t hash,
    ngx_uint_t create, ngx_log_t *log);
static void ngx_http_llm_limit_expire(ngx_http_llm_limit_zone_t *zone,
    ngx_uint_t force, ngx_log_t *log);
static void ngx_http_llm_limit_advance(ngx_http_llm_limit_node_t *ln,
    ngx_http_llm_limits_t *limits);
static ngx_int_t ngx_http_llm_limit_applied(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_limit_apply_t *apply,
    ngx_uint_t *n);
static ngx_int_t ngx_http_llm_limit_need(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_limit_need_t *need);
static ngx_int_t ngx_http_llm_limit_fit(ngx_http_llm_limit_node_t *ln,
    ngx_http_llm_limits_t *limits, ngx_http_llm_limit_need_t *need,
    ngx_uint_t clamp, uint64_t *output, ngx_msec_t *retry);
static uint64_t ngx_http_llm_limit_left(ngx_http_llm_limit_node_t *ln,
    ngx_uint_t d);
static void ngx_http_llm_limit_tell(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_limit_node_t *ln, ngx_http_llm_limits_t *limits);
static ngx_int_t ngx_http_llm_json_uint(ngx_http_llm_json_value_t *v,
    uint64_t *n);
static ngx_msec_t ngx_http_llm_limit_reset(ngx_http_llm_limits_t *limits,
    ngx_uint_t d);
static u_char *ngx_http_llm_limit_duration(u_char *p, ngx_msec_t ms);
static void ngx_http_llm_limit_cleanup(void *data);
static ngx_int_t ngx_http_llm_limit_reject(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_limit_zone_t *zone,
    ngx_uint_t status, ngx_msec_t retry);


static ngx_str_t  ngx_http_llm_limit_names[] = {
    ngx_string("requests"),
    ngx_string("tokens"),
    ngx_string("spend"),
    ngx_null_string
};


static ngx_str_t  ngx_http_llm_limit_statuses[] = {
    ngx_string("PASSED"),
    ngx_string("REJECTED_REQUESTS"),
    ngx_string("REJECTED_TOKENS"),
    ngx_string("REJECTED_SPEND"),
    ngx_string("REJECTED_CONCURRENT"),
    ngx_string("CLAMPED"),
    ngx_string("REJECTED_REQUESTS_DRY_RUN"),
    ngx_string("REJECTED_TOKENS_DRY_RUN"),
    ngx_string("REJECTED_SPEND_DRY_RUN"),
    ngx_string("REJECTED_CONCURRENT_DRY_RUN"),
    ngx_string("CLAMPED_DRY_RUN"),
};


/* llm_limit_zone NAME:SIZE key=STRING [requests=...] ... */

char *
ngx_http_llm_limit_zone_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    u_char                            *p;
    ssize_t                            size;
    ngx_str_t                         *value, name, s, v;
    ngx_int_t                          rc;
    ngx_uint_t                         i;
    ngx_shm_zone_t                    *shm_zone;
    ngx_http_llm_limit_zone_t         *zone;
    ngx_http_complex_value_t          *key;
    ngx_http_compile_complex_value_t   ccv;
    ngx_http_llm_limits_t              limits;

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');

    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\" (NAME:SIZE)", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - value[1].data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    key = NULL;
    ngx_memzero(&limits, sizeof(ngx_http_llm_limits_t));

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {
            key = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
            if (key == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            v.data = value[i].data + 4;
            v.len = value[i].len - 4;

            ccv.cf = cf;
            ccv.value = &v;
            ccv.complex_value = key;

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        p = (u_char *) ngx_strlchr(value[i].data,
                                   value[i].data + value[i].len, '=');
        if (p == NULL) {
            goto invalid;
        }

        s.data = value[i].data;
        s.len = p - s.data;
        v.data = p + 1;
        v.len = value[i].data + value[i].len - v.data;

        rc = ngx_http_llm_limit_value(&s, &v, &limits);

        if (rc != NGX_OK) {
            goto invalid;
        }
    }

    if (key == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_limit_zone \"%V\" needs key=", &name);
        return NGX_CONF_ERROR;
    }

    if (limits.max[NGX_HTTP_LLM_LIMIT_REQUESTS] == 0
        && limits.max[NGX_HTTP_LLM_LIMIT_TOKENS] == 0
        && limits.max[NGX_HTTP_LLM_LIMIT_SPEND] == 0
        && limits.concurrent == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_limit_zone \"%V\" limits nothing (requests=, "
                           "tokens=, spend= or concurrent=)", &name);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_http_llm_limit_zone_add(cf, &name, size);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone = shm_zone->data;
    zone->key = key;
    zone->limits = limits;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" (key=STRING, "
                       "requests=N/PERIOD, tokens=N/PERIOD, spend=USD/PERIOD "
                       "or concurrent=N; PERIOD s, m, h or d)", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * A shared zone of limits, by name; the zone of an llm_limit_zone or of
 * llm_keys.  NULL after an error is logged.
 */

ngx_shm_zone_t *
ngx_http_llm_limit_zone_add(ngx_conf_t *cf, ngx_str_t *name, ssize_t size)
{
    ngx_shm_zone_t              *shm_zone;
    ngx_http_llm_limit_zone_t   *zone, **zp;
    ngx_http_llm_main_conf_t    *lmcf;

    if (name->len == 0 || size == NGX_ERROR
        || size < (ssize_t) (8 * ngx_pagesize))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid limit zone \"%V\" (a name and a size of "
                           "at least %uz)", name, 8 * ngx_pagesize);
        return NULL;
    }

    shm_zone = ngx_shared_memory_add(cf, name, size, &ngx_http_llm_module);
    if (shm_zone == NULL) {
        return NULL;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", name);
        return NULL;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_limit_zone_t));
    if (zone == NULL) {
        return NULL;
    }

    zone->name = *name;
    zone->shm_zone = shm_zone;

    shm_zone->init = ngx_http_llm_limit_init_zone;
    shm_zone->data = zone;

    /* for the status page */

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    if (lmcf->limit_zones.elts == NULL
        && ngx_array_init(&lmcf->limit_zones, cf->pool, 4,
                          sizeof(ngx_http_llm_limit_zone_t *))
           != NGX_OK)
    {
        return NULL;
    }

    zp = ngx_array_push(&lmcf->limit_zones);
    if (zp == NULL) {
        return NULL;
    }

    *zp = zone;

    return shm_zone;
}


/*
 * A limit of a zone or of a key: requests=N/PERIOD, tokens=N/PERIOD,
 * spend=USD/PERIOD (USD with at most 6 decimals) or concurrent=N.
 * NGX_DECLINED: no such limit; NGX_ERROR: an invalid value.
 */

ngx_int_t
ngx_http_llm_limit_value(ngx_str_t *name, ngx_str_t *value,
    ngx_http_llm_limits_t *limits)
{
    u_char      *p, *slash, *last;
    time_t       sec;
    uint64_t     n, frac, scale;
    ngx_int_t    c;
    ngx_str_t    period;
    ngx_uint_t   d, decimals, point;

    if (name->len == sizeof("concurrent") - 1
        && ngx_strncmp(name->data, "concurrent", name->len) == 0)
    {
        c = ngx_atoi(value->data, value->len);

        if (c == NGX_ERROR || c == 0) {
            return NGX_ERROR;
        }

        limits->concurrent = c;
        return NGX_OK;
    }

    for (d = 0; ngx_http_llm_limit_names[d].len; d++) {
        if (name->len == ngx_http_llm_limit_names[d].len
            && ngx_strncmp(name->data, ngx_http_llm_limit_names[d].data,
                           name->len)
               == 0)
        {
            break;
        }
    }

    if (ngx_http_llm_limit_names[d].len == 0) {
        return NGX_DECLINED;
    }

    last = value->data + value->len;
    slash = ngx_strlchr(value->data, last, '/');

    if (slash == NULL || slash == value->data || slash + 1 == last) {
        return NGX_ERROR;
    }

    /* the period: s, m, h or d, or a time such as 5m */

    period.data = slash + 1;
    period.len = last - period.data;

    if (period.len == 1) {
        switch (period.data[0]) {
        case 's': sec = 1; break;
        case 'm': sec = 60; break;
        case 'h': sec = 3600; break;
        case 'd': sec = 86400; break;
        default: return NGX_ERROR;
        }

    } else {
        sec = ngx_parse_time(&period, 1);

        if (sec == (time_t) NGX_ERROR || sec == 0 || sec > 366 * 86400) {
            return NGX_ERROR;
        }
    }

    /* the amount: an integer, or USD with at most 6 decimals as 1e-12 */

    n = 0;
    frac = 0;
    decimals = 0;
    point = 0;

    for (p = value->data; p < slash; p++) {

        if (*p == '.' && d == NGX_HTTP_LLM_LIMIT_SPEND && !point) {
            point = 1;
            continue;
        }

        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        if (point) {
            if (++decimals > 6) {
                return NGX_ERROR;
            }

            frac = frac * 10 + (*p - '0');
            continue;
        }

        if (n > 1000000000000ULL) {
            return NGX_ERROR;
        }

        n = n * 10 + (*p - '0');
    }

    if (point && decimals == 0) {
        return NGX_ERROR;
    }

    if (d == NGX_HTTP_LLM_LIMIT_SPEND) {
        if (n > 1000000) {
            /* a million USD a period: the counters' range is ample */
            return NGX_ERROR;
        }

        for (scale = 1000000; decimals < 6; decimals++) {
            frac *= 10;
        }

        n = n * 1000000000000ULL + frac * scale;
    }

    if (n == 0) {
        return NGX_ERROR;
    }

    limits->max[d] = n;
    limits->period[d] = (ngx_msec_t) sec * 1000;

    return NGX_OK;
}


/* llm_limit NAME [clamp] [dry_run] */

char *
ngx_http_llm_limit_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t             *value;
    ngx_uint_t             i;
    ngx_shm_zone_t        *shm_zone;
    ngx_http_llm_limit_t  *limit;

    value = cf->args->elts;

    shm_zone = ngx_shared_memory_add(cf, &value[1], 0, &ngx_http_llm_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (llcf->limits == NGX_CONF_UNSET_PTR) {
        llcf->limits = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_llm_limit_t));
        if (llcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    limit = llcf->limits->elts;

    for (i = 0; i < llcf->limits->nelts; i++) {
        if (limit[i].shm_zone == shm_zone) {
            return "is duplicate";
        }
    }

    limit = ngx_array_push(llcf->limits);
    if (limit == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(limit, sizeof(ngx_http_llm_limit_t));

    limit->shm_zone = shm_zone;

    for (i = 2; i < cf->args->nelts; i++) {

        if (value[i].len == 5 && ngx_strncmp(value[i].data, "clamp", 5) == 0)
        {
            limit->clamp = 1;
            continue;
        }

        if (value[i].len == 7
            && ngx_strncmp(value[i].data, "dry_run", 7) == 0)
        {
            limit->dry_run = 1;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" (clamp or dry_run)",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* every llm_limit names an llm_limit_zone: checked once all are read */

char *
ngx_http_llm_limit_merge(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *conf)
{
    ngx_uint_t                  i;
    ngx_http_llm_limit_t       *limit;
    ngx_http_llm_limit_zone_t  *zone;

    if (conf->limits == NGX_CONF_UNSET_PTR || conf->limits == NULL) {
        return NGX_CONF_OK;
    }

    limit = conf->limits->elts;

    for (i = 0; i < conf->limits->nelts; i++) {
        zone = limit[i].shm_zone->data;

        if (limit[i].shm_zone->init != ngx_http_llm_limit_init_zone
            || zone == NULL || zone->key == NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown llm_limit_zone \"%V\"",
                               &limit[i].shm_zone->shm.name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_limit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llm_limit_zone_t  *ozone = data;

    size_t                      len;
    ngx_http_llm_limit_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_alloc(zone->shpool,
                              sizeof(ngx_http_llm_limit_shctx_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(zone->sh, sizeof(ngx_http_llm_limit_shctx_t));

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_llm_limit_rbtree_insert_value);

    ngx_queue_init(&zone->sh->queue);

    len = sizeof(" in llm limit zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in llm limit zone \"%V\"%Z",
                &shm_zone->shm.name);

    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_llm_limit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t          **p;
    ngx_http_llm_limit_node_t   *ln, *lnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            ln = (ngx_http_llm_limit_node_t *) &node->color;
            lnt = (ngx_http_llm_limit_node_t *) &temp->color;

            p = (ngx_memn2cmp(ln->data, lnt->data, ln->len, lnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* the node of a key, found, or made (the zone's mutex is held) */

static ngx_http_llm_limit_node_t *
ngx_http_llm_limit_lookup(ngx_http_llm_limit_zone_t *zone, ngx_str_t *key,
    uint32_t hash, ngx_uint_t create, ngx_log_t *log)
{
    size_t                      n;
    ngx_int_t                   rc;
    ngx_uint_t                  tries;
    ngx_rbtree_node_t          *node, *sentinel;
    ngx_http_llm_limit_node_t  *ln;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        ln = (ngx_http_llm_limit_node_t *) &node->color;

        rc = ngx_memn2cmp(key->data, ln->data, key->len, (size_t) ln->len);

        if (rc == 0) {
            ngx_queue_remove(&ln->queue);
            ngx_queue_insert_head(&zone->sh->queue, &ln->queue);
            ln->last = ngx_current_msec;
            return ln;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    if (!create) {
        return NULL;
    }

    n = offsetof(ngx_rbtree_node_t, color)
        + offsetof(ngx_http_llm_limit_node_t, data) + key->len;

    /* a few idle keys go first, as limit_req does */

    ngx_http_llm_limit_expire(zone, 0, log);

    node = ngx_slab_alloc_locked(zone->shpool, n);

    for (tries = 0; node == NULL && tries < 8; tries++) {

        /* full: the least recently used keys go, even busy ones */

        ngx_http_llm_limit_expire(zone, 1, log);

        node = ngx_slab_alloc_locked(zone->shpool, n);
    }

    if (node == NULL) {
        return NULL;
    }

    ln = (ngx_http_llm_limit_node_t *) &node->color;

    ngx_memzero(ln, offsetof(ngx_http_llm_limit_node_t, data));

    node->key = hash;
    ln->len = (u_short) key->len;
    ln->last = ngx_current_msec;
    ln->epoch = ngx_current_msec / NGX_HTTP_LLM_LIMIT_HOLD;
    ngx_memcpy(ln->data, key->data, key->len);

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &ln->queue);

    return ln;
}


/*
 * At most two keys of the least recently used end go: those idle for
 * longer than their longest period and with nothing in flight or, with
 * force, whatever they hold (a full zone forgets what they used; logged
 * once a minute).
 */

static void
ngx_http_llm_limit_expire(ngx_http_llm_limit_zone_t *zone, ngx_uint_t force,
    ngx_log_t *log)
{
    ngx_uint_t                  n, d;
    ngx_msec_t                  idle, longest;
    ngx_queue_t                *q;
    ngx_rbtree_node_t          *node;
    ngx_http_llm_limit_node_t  *ln;

    for (n = 0; n < 2; n++) {

        if (ngx_queue_empty(&zone->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&zone->sh->queue);
        ln = ngx_queue_data(q, ngx_http_llm_limit_node_t, queue);

        if (!force) {
            idle = ngx_current_msec - ln->last;
            longest = NGX_HTTP_LLM_LIMIT_HOLD * 2;

            for (d = 0; d < NGX_HTTP_LLM_LIMIT_N; d++) {
                longest = ngx_max(longest, ln->limits.period[d]);
            }

            if (idle < longest) {
                return;
            }

        } else {
            zone->sh->evicted++;

            if (ngx_time() - zone->sh->evict_logged >= 60) {
                zone->sh->evict_logged = ngx_time();

                ngx_log_error(NGX_LOG_ERR, log, 0,
                              "llm limit zone \"%V\" is full: the counters "
                              "of the least recently used keys were dropped "
                              "(%uL since the start)", &zone->name,
                              zone->sh->evicted);
            }
        }

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) ln - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&zone->sh->rbtree, node);
        ngx_slab_free_locked(zone->shpool, node);
    }
}


/*
 * Brings a key's counters to now: a new window starts afresh (what is
 * reserved stays reserved), and reservations older than two hold periods
 * are forgotten.
 */

static void
ngx_http_llm_limit_advance(ngx_http_llm_limit_node_t *ln,
    ngx_http_llm_limits_t *limits)
{
    uint64_t    window, epoch;
    ngx_uint_t  d;

    ln->limits = *limits;

    for (d = 0; d < NGX_HTTP_LLM_LIMIT_N; d++) {

        if (limits->period[d] == 0) {
            continue;
        }

        window = (uint64_t) ngx_time() * 1000 / limits->period[d];

        if (window != ln->window[d]) {
            ln->window[d] = window;
            ln->used[d] = 0;
        }
    }

    epoch = ngx_current_msec / NGX_HTTP_LLM_LIMIT_HOLD;

    if (epoch == ln->epoch) {
        return;
    }

    if (epoch == ln->epoch + 1) {
        ngx_memzero(ln->reserved[epoch & 1], sizeof(ln->reserved[0]));
        ln->inflight[epoch & 1] = 0;

    } else {
        ngx_memzero(ln->reserved, sizeof(ln->reserved));
        ngx_memzero(ln->inflight, sizeof(ln->inflight));
    }

    ln->epoch = epoch;
}


/*
 * Admission: NGX_OK (the reservations made, ctx->clamp set when max_tokens
 * is to be lowered), or the rc of the 429 (or 503) sent.
 */

ngx_int_t
ngx_http_llm_limit_reserve(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    uint64_t                     output, fit;
    ngx_int_t                    rc;
    ngx_uint_t                   i, n, clamp, clamped;
    ngx_msec_t                   retry;
    ngx_pool_cleanup_t          *cln;
    ngx_http_llm_limit_hold_t   *hold;
    ngx_http_llm_limit_node_t   *ln;
    ngx_http_llm_limit_need_t    need;
    ngx_http_llm_limit_zone_t   *zone;
    ngx_http_llm_limit_apply_t   apply[NGX_HTTP_LLM_LIMITS_MAX];

    if (ctx->shadow) {
        /* the gateway's copy of a request, not the client's */
        return NGX_OK;
    }

    rc = ngx_http_llm_limit_applied(r, ctx, apply, &n);

    if (rc != NGX_OK || n == 0) {
        return rc;
    }

    rc = ngx_http_llm_limit_need(r, ctx, &need);

    if (rc != NGX_OK) {
        return rc;
    }

    clamp = 0;
    clamped = 0;
    output = need.output;

    /* what fits in each zone, and the output that fits in all */

    for (i = 0; i < n; i++) {
        zone = apply[i].zone;
        clamp |= apply[i].clamp;

        ngx_shmtx_lock(&zone->shpool->mutex);

        ln = ngx_http_llm_limit_lookup(zone, &apply[i].key, apply[i].hash, 1,
                                       r->connection->log);

        if (ln == NULL) {
            ngx_shmtx_unlock(&zone->shpool->mutex);

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llm limit zone \"%V\" is too small for a key",
                          &zone->name);

            return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           "limit_zone_full", NULL,
                                           "The gateway cannot count this "
                                           "request against its limits");
        }

        ngx_http_llm_limit_advance(ln, apply[i].limits);

        fit = output;

        rc = ngx_http_llm_limit_fit(ln, apply[i].limits, &need,
                                    apply[i].clamp, &fit, &retry);

        if (rc != NGX_OK) {
            ln->rejected++;
            ngx_http_llm_limit_tell(ctx, ln, apply[i].limits);
        }

        ngx_shmtx_unlock(&zone->shpool->mutex);

        if (rc != NGX_OK) {
            /* rc: the status of the dimension that does not fit */

            if (apply[i].dry_run) {
                ctx->limit_status = rc + NGX_HTTP_LLM_LIMIT_DRY_RUN;
                apply[i].skip = 1;

                ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                              "llm limit zone \"%V\" would refuse the "
                              "request (%V), dry run",
                              &zone->name,
                              ngx_http_llm_limit_status_name(rc));
                continue;
            }

            return ngx_http_llm_limit_reject(r, ctx, zone, rc, retry);
        }

        if (fit < output) {
            output = fit;
            clamped = 1;
        }
    }

    /* a request taken back in any case, also when it fails before */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_llm_limit_cleanup;
    cln->data = r;

    need.output = output;

    for (i = 0; i < n; i++) {

        if (apply[i].skip) {
            continue;
        }

        zone = apply[i].zone;

        ngx_shmtx_lock(&zone->shpool->mutex);

        ln = ngx_http_llm_limit_lookup(zone, &apply[i].key, apply[i].hash, 1,
                                       r->connection->log);

        if (ln == NULL) {
            ngx_shmtx_unlock(&zone->shpool->mutex);

            return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           "limit_zone_full", NULL,
                                           "The gateway cannot count this "
                                           "request against its limits");
        }

        ngx_http_llm_limit_advance(ln, apply[i].limits);

        fit = output;
        rc = ngx_http_llm_limit_fit(ln, apply[i].limits, &need, 0, &fit,
                                    &retry);

        if (rc != NGX_OK) {
            /* taken by other requests meanwhile */

            ln->rejected++;
            ngx_http_llm_limit_tell(ctx, ln, apply[i].limits);

            ngx_shmtx_unlock(&zone->shpool->mutex);

            if (apply[i].dry_run) {
                ctx->limit_status = rc + NGX_HTTP_LLM_LIMIT_DRY_RUN;
                continue;
            }

            return ngx_http_llm_limit_reject(r, ctx, zone, rc, retry);
        }

        hold = &ctx->holds[ctx->nholds++];

        hold->zone = zone;
        hold->key = apply[i].key;
        hold->hash = apply[i].hash;
        hold->epoch = ln->epoch;
        hold->tokens = need.input + output;
        hold->spend = need.input_cost + output * need.output_price;

        ln->used[NGX_HTTP_LLM_LIMIT_REQUESTS]++;
        ln->reserved[ln->epoch & 1][NGX_HTTP_LLM_LIMIT_TOKENS] += hold->tokens;
        ln->reserved[ln->epoch & 1][NGX_HTTP_LLM_LIMIT_SPEND] += hold->spend;
        ln->inflight[ln->epoch & 1]++;

        ngx_http_llm_limit_tell(ctx, ln, apply[i].limits);

        ngx_shmtx_unlock(&zone->shpool->mutex);
    }

    if (ctx->limit_status == 0) {
        ctx->limit_status = clamped ? NGX_HTTP_LLM_LIMIT_CLAMPED
                                    : NGX_HTTP_LLM_LIMIT_PASSED;
    }

    /*
     * With clamp, the output reserved is what the provider is asked for at
     * most: lowered when it did not fit, set when the request named none.
     */

    if (clamp && (clamped || !need.named)) {
        ctx->clamp = output;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm limit: reserved in %ui zone(s), input %uL, "
                   "output %uL, clamp %uL", ctx->nholds, need.input, output,
                   ctx->clamp);

    return NGX_OK;
}


/* the limits of the location, and of the client's virtual key */

static ngx_int_t
ngx_http_llm_limit_applied(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_limit_apply_t *apply, ngx_uint_t *n)
{
    u_char                      md[SHA256_DIGEST_LENGTH], *p;
    ngx_str_t                   key;
    ngx_uint_t                  i;
    ngx_http_llm_limit_t       *limit;
    ngx_http_llm_keys_t        *keys;
    ngx_http_llm_loc_conf_t    *llcf;
    ngx_http_llm_limit_zone_t  *zone;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    *n = 0;

    if (llcf->limits) {
        limit = llcf->limits->elts;

        for (i = 0; i < llcf->limits->nelts; i++) {
            zone = limit[i].shm_zone->data;

            if (ngx_http_complex_value(r, zone->key, &key) != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            if (key.len == 0) {
                /* as limit_req: an empty key is not limited */
                continue;
            }

            if (key.len > NGX_HTTP_LLM_LIMIT_KEY_MAX) {

                /* a long key is kept as its SHA-256 */

                SHA256(key.data, key.len, md);

                p = ngx_pnalloc(r->pool, 2 * SHA256_DIGEST_LENGTH);
                if (p == NULL) {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }

                ngx_hex_dump(p, md, SHA256_DIGEST_LENGTH);

                key.data = p;
                key.len = 2 * SHA256_DIGEST_LENGTH;
            }

            apply[*n].zone = zone;
            apply[*n].limits = &zone->limits;
            apply[*n].key = key;
            apply[*n].clamp = limit[i].clamp;
            apply[*n].dry_run = limit[i].dry_run;
            apply[*n].skip = 0;
            (*n)++;
        }
    }

    keys = llcf->keys;

    if (ctx->key && ctx->key->has_limits && keys && keys->zone) {
        apply[*n].zone = keys->zone->data;
        apply[*n].limits = &ctx->key->limits;
        apply[*n].key = ctx->key->name;
        apply[*n].clamp = 0;
        apply[*n].dry_run = 0;
        apply[*n].skip = 0;
        (*n)++;
    }

    for (i = 0; i < *n; i++) {
        apply[i].hash = ngx_crc32_short(apply[i].key.data, apply[i].key.len);
    }

    return NGX_OK;
}


/*
 * The estimates of the request: the input at a token per 4 bytes of the
 * body; the output the request allows (max_tokens and its kin), else the
 * largest output of the models it may go to, else 4096 tokens; the spend
 * of both at the dearest price among the providers of the route (the plan
 * comes after the limits: a request refused takes no attempt, nor a
 * breaker's probe).
 */

static ngx_int_t
ngx_http_llm_limit_need(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_limit_need_t *need)
{
    uint64_t                    n, cost, price, most;
    ngx_uint_t                  i;
    ngx_str_t                  *model;
    ngx_http_llm_model_t       *map;
    ngx_http_llm_price_t       *pr;
    ngx_http_llm_route_peer_t  *peer;
    ngx_http_llm_json_value_t  *v[4];

    ngx_memzero(need, sizeof(ngx_http_llm_limit_need_t));

    need->input = (ctx->body.len + 3) / 4;

    v[0] = &ctx->req.max_tokens;
    v[1] = &ctx->req.max_completion_tokens;
    v[2] = &ctx->req.max_output_tokens;
    v[3] = &ctx->req.max_output;

    for (i = 0; i < 4; i++) {

        if (v[i]->type == NGX_HTTP_LLM_JSON_NONE
            || v[i]->type == NGX_HTTP_LLM_JSON_NULL)
        {
            continue;
        }

        if (ngx_http_llm_json_uint(v[i], &n) != NGX_OK) {
            return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                           "invalid_type", "max_tokens",
                                           "The maximum of output tokens "
                                           "must be a non-negative integer");
        }

        need->output = ngx_max(need->output, n);
        need->named = 1;
    }

    if (ctx->variant && ctx->variant->max_tokens) {
        need->output = ctx->variant->max_tokens;
        need->named = 1;
    }

    /* the prices of every provider of the route that could take it */

    most = 0;
    peer = ctx->route->peers.elts;

    for (i = 0; i < ctx->route->peers.nelts; i++) {
        map = ngx_http_llm_provider_model(peer[i].provider, &ctx->model);
        model = map ? &map->name : &ctx->model;

        pr = ngx_http_llm_price_lookup(r, peer[i].provider, model,
                                       &ctx->model);
        if (pr == NULL) {
            continue;
        }

        most = ngx_max(most, pr->max_output_tokens);

        cost = need->input * pr->input;
        if (pr->input && cost / pr->input != need->input) {
            cost = NGX_HTTP_LLM_COUNTER_MAX;
        }

        need->input_cost = ngx_max(need->input_cost, cost);

        price = ngx_max(pr->output, pr->reasoning);
        need->output_price = ngx_max(need->output_price, price);
    }

    if (!need->named) {
        need->output = most ? most : NGX_HTTP_LLM_LIMIT_OUTPUT;
    }

    return NGX_OK;
}


/*
 * Does the request fit in what the key has left?  NGX_OK, with *output
 * lowered to what fits when clamp allows it; else the status of the
 * dimension that does not fit, and *retry, when it may.
 */

static ngx_int_t
ngx_http_llm_limit_fit(ngx_http_llm_limit_node_t *ln,
    ngx_http_llm_limits_t *limits, ngx_http_llm_limit_need_t *need,
    ngx_uint_t clamp, uint64_t *output, ngx_msec_t *retry)
{
    uint64_t    left, fit, cost;
    ngx_uint_t  d;

    *retry = 1000;

    if (limits->concurrent
        && ln->inflight[0] + ln->inflight[1] >= limits->concurrent)
    {
        return NGX_HTTP_LLM_LIMIT_CONCURRENT;
    }

    d = NGX_HTTP_LLM_LIMIT_REQUESTS;

    if (limits->max[d] && ngx_http_llm_limit_left(ln, d) < 1) {
        *retry = ngx_http_llm_limit_reset(limits, d);
        return NGX_HTTP_LLM_LIMIT_REJECTED + d;
    }

    d = NGX_HTTP_LLM_LIMIT_TOKENS;

    if (limits->max[d]) {
        left = ngx_http_llm_limit_left(ln, d);

        if (need->input + *output > left) {
            fit = (left > need->input) ? left - need->input : 0;

            if (!clamp || fit < NGX_HTTP_LLM_LIMIT_MIN_OUTPUT) {
                *retry = ngx_http_llm_limit_reset(limits, d);
                return NGX_HTTP_LLM_LIMIT_REJECTED + d;
            }

            *output = fit;
        }
    }

    d = NGX_HTTP_LLM_LIMIT_SPEND;

    if (limits->max[d]) {
        left = ngx_http_llm_limit_left(ln, d);
        cost = need->input_cost + *output * need->output_price;

        if (cost > left) {
            fit = (left > need->input_cost && need->output_price)
                  ? (left - need->input_cost) / need->output_price : 0;

            if (!clamp || fit < NGX_HTTP_LLM_LIMIT_MIN_OUTPUT) {
                *retry = ngx_http_llm_limit_reset(limits, d);
                return NGX_HTTP_LLM_LIMIT_REJECTED + d;
            }

            *output = ngx_min(*output, fit);
        }
    }

    return NGX_OK;
}


/* what the key has left of a dimension in the window: limit - used - held */

static uint64_t
ngx_http_llm_limit_left(ngx_http_llm_limit_node_t *ln, ngx_uint_t d)
{
    uint64_t  taken;

    taken = ln->used[d] + ln->reserved[0][d] + ln->reserved[1][d];

    return (taken < ln->limits.max[d]) ? ln->limits.max[d] - taken : 0;
}


/* the time until the window of a dimension ends */

static ngx_msec_t
ngx_http_llm_limit_reset(ngx_http_llm_limits_t *limits, ngx_uint_t d)
{
    uint64_t  now;

    now = (uint64_t) ngx_time() * 1000;

    return limits->period[d] - now % limits->period[d];
}


/*
 * The x-ratelimit-* figures the client gets: of requests and tokens, those
 * of the limit with the least left.
 */

static void
ngx_http_llm_limit_tell(ngx_http_llm_ctx_t *ctx, ngx_http_llm_limit_node_t *ln,
    ngx_http_llm_limits_t *limits)
{
    uint64_t    left;
    ngx_uint_t  d;

    for (d = 0; d < 2; d++) {

        if (limits->max[d] == 0) {
            continue;
        }

        left = ngx_http_llm_limit_left(ln, d);

        if ((ctx->rl_set & (1 << d)) && left >= ctx->rl_remaining[d]) {
            continue;
        }

        ctx->rl_set |= 1 << d;
        ctx->rl_limit[d] = limits->max[d];
        ctx->rl_remaining[d] = left;
        ctx->rl_reset[d] = ngx_http_llm_limit_reset(limits, d);
    }
}


static ngx_int_t
ngx_http_llm_limit_reject(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_limit_zone_t *zone, ngx_uint_t status, ngx_msec_t retry)
{
    u_char           *p;
    ngx_str_t         what;
    ngx_table_elt_t  *h;

    ctx->limit_status = status;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%M", (retry + 999) / 1000) - p;

    if (status == NGX_HTTP_LLM_LIMIT_CONCURRENT) {
        ngx_str_set(&what, "requests in flight");

    } else {
        what = ngx_http_llm_limit_names[status - NGX_HTTP_LLM_LIMIT_REJECTED];
    }

    if (ctx->key) {
        return ngx_http_llm_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                       "rate_limit_exceeded", NULL,
                                       "Rate limit reached for key \"%V\" "
                                       "on %V (zone \"%V\"); retry in %M s",
                                       &ctx->key->name, &what, &zone->name,
                                       (retry + 999) / 1000);
    }

    return ngx_http_llm_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                   "rate_limit_exceeded", NULL,
                                   "Rate limit reached on %V (zone \"%V\"); "
                                   "retry in %M s", &what, &zone->name,
                                   (retry + 999) / 1000);
}


/*
 * The request is over, however it ended: each reservation is taken back,
 * and the real usage and cost charged to the window of now.
 */

static void
ngx_http_llm_limit_cleanup(void *data)
{
    ngx_http_request_t *r = data;

    uint64_t                    tokens, spend, *reserved;
    ngx_uint_t                  i, b, made;
    ngx_http_llm_ctx_t         *ctx;
    ngx_http_llm_limit_hold_t  *hold;
    ngx_http_llm_limit_node_t  *ln;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->nholds == 0) {
        return;
    }

    ngx_http_llm_price_request(r, ctx);

    tokens = ctx->usage.input + ctx->usage.output;
    spend = ctx->priced ? ctx->cost : 0;

    /* a request that reached no provider (refused, or failed before) is
       not one the key made */

    made = (ngx_http_llm_attempts_made(ctx) > 0);

    for (i = 0; i < ctx->nholds; i++) {
        hold = &ctx->holds[i];

        ngx_shmtx_lock(&hold->zone->shpool->mutex);

        ln = ngx_http_llm_limit_lookup(hold->zone, &hold->key, hold->hash, 0,
                                       ngx_cycle->log);

        if (ln) {
            ngx_http_llm_limit_advance(ln, &ln->limits);

            /* a reservation of a bucket gone has expired already */

            if (hold->epoch + 1 >= ln->epoch) {
                b = hold->epoch & 1;
                reserved = ln->reserved[b];

                reserved[NGX_HTTP_LLM_LIMIT_TOKENS] -=
                    ngx_min(reserved[NGX_HTTP_LLM_LIMIT_TOKENS],
                            hold->tokens);
                reserved[NGX_HTTP_LLM_LIMIT_SPEND] -=
                    ngx_min(reserved[NGX_HTTP_LLM_LIMIT_SPEND], hold->spend);

                if (ln->inflight[b]) {
                    ln->inflight[b]--;
                }
            }

            ln->used[NGX_HTTP_LLM_LIMIT_TOKENS] += tokens;
            ln->used[NGX_HTTP_LLM_LIMIT_SPEND] += spend;

            if (!made && ln->used[NGX_HTTP_LLM_LIMIT_REQUESTS]) {
                ln->used[NGX_HTTP_LLM_LIMIT_REQUESTS]--;
            }
        }

        ngx_shmtx_unlock(&hold->zone->shpool->mutex);
    }

    ctx->nholds = 0;
}


/*
 * The headers OpenAI's clients read, of the gateway's own limits; the
 * provider's (of the gateway's account with it) do not reach the client.
 */

ngx_int_t
ngx_http_llm_limit_header(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char           *p;
    ngx_uint_t        i, d;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    static ngx_str_t  names[2][3] = {
        { ngx_string("x-ratelimit-limit-requests"),
          ngx_string("x-ratelimit-remaining-requests"),
          ngx_string("x-ratelimit-reset-requests") },
        { ngx_string("x-ratelimit-limit-tokens"),
          ngx_string("x-ratelimit-remaining-tokens"),
          ngx_string("x-ratelimit-reset-tokens") }
    };

    if (ctx == NULL || ctx->rl_set == 0) {
        return NGX_OK;
    }

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len > sizeof("x-ratelimit-") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "x-ratelimit-",
                               sizeof("x-ratelimit-") - 1)
               == 0)
        {
            h[i].hash = 0;
        }
    }

    for (d = 0; d < 2; d++) {

        if (!(ctx->rl_set & (1 << d))) {
            continue;
        }

        p = ngx_pnalloc(r->pool, 3 * NGX_INT64_LEN + 32);
        if (p == NULL) {
            return NGX_ERROR;
        }

        for (i = 0; i < 3; i++) {
            h = ngx_list_push(&r->headers_out.headers);
            if (h == NULL) {
                return NGX_ERROR;
            }

            h->hash = 1;
            h->key = names[d][i];
            h->value.data = p;

            switch (i) {
            case 0:
                p = ngx_sprintf(p, "%uL", ctx->rl_limit[d]);
                break;
            case 1:
                p = ngx_sprintf(p, "%uL", ctx->rl_remaining[d]);
                break;
            default:
                p = ngx_http_llm_limit_duration(p, ctx->rl_reset[d]);
            }

            h->value.len = p - h->value.data;
        }
    }

    return NGX_OK;
}


/* a duration as OpenAI writes it: 20ms, 1s, 6m0s, 1h2m3s */

static u_char *
ngx_http_llm_limit_duration(u_char *p, ngx_msec_t ms)
{
    ngx_msec_t  s;

    if (ms < 1000) {
        return ngx_sprintf(p, "%Mms", ms);
    }

    s = (ms + 999) / 1000;

    if (s < 60) {
        return ngx_sprintf(p, "%Ms", s);
    }

    if (s < 3600) {
        return ngx_sprintf(p, "%Mm%Ms", s / 60, s % 60);
    }

    return ngx_sprintf(p, "%Mh%Mm%Ms", s / 3600, s / 60 % 60, s % 60);
}


ngx_str_t *
ngx_http_llm_limit_status_name(ngx_uint_t status)
{
    return &ngx_http_llm_limit_statuses[status - 1];
}


/* a JSON number that is a non-negative integer, without a fraction */

static ngx_int_t
ngx_http_llm_json_uint(ngx_http_llm_json_value_t *v, uint64_t *n)
{
    u_char  *p;

    if (v->type != NGX_HTTP_LLM_JSON_NUMBER) {
        return NGX_ERROR;
    }

    *n = 0;

    for (p = v->start; p < v->end; p++) {

        if (*p < '0' || *p > '9' || *n > NGX_HTTP_LLM_COUNTER_MAX / 100) {
            return NGX_ERROR;
        }

        *n = *n * 10 + (*p - '0');
    }

    return NGX_OK;
}


/*
 * The limits on the status page: for each zone, each key's use of its
 * windows, what it holds in flight and its rejections; copied under the
 * zone's mutex, printed after.
 */

ngx_int_t
ngx_http_llm_limit_status(ngx_http_request_t *r, ngx_str_t *out)
{
    u_char                      *p;
    size_t                       len;
    ngx_uint_t                   i, j, n, d, first;
    ngx_queue_t                 *q;
    ngx_http_llm_main_conf_t    *lmcf;
    ngx_http_llm_limit_zone_t  **zones, *zone;
    ngx_http_llm_limit_node_t   *ln, **nodes;
    uint64_t                     left, *evicted;
    ngx_uint_t                  *counts;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    ngx_str_set(out, "");

    if (lmcf->limit_zones.nelts == 0) {
        return NGX_OK;
    }

    zones = lmcf->limit_zones.elts;

    len = sizeof(",\"limits\":{}") + lmcf->limit_zones.nelts * 64;
    out->data = NULL;

    /* a first pass sizes, a second prints: each zone copied once */

    n = lmcf->limit_zones.nelts;

    nodes = ngx_palloc(r->pool, n * sizeof(ngx_http_llm_limit_node_t *));
    counts = ngx_palloc(r->pool, n * sizeof(ngx_uint_t));
    evicted = ngx_palloc(r->pool, n * sizeof(uint64_t));

    if (nodes == NULL || counts == NULL || evicted == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < lmcf->limit_zones.nelts; i++) {
        zone = zones[i];

        ngx_shmtx_lock(&zone->shpool->mutex);

        n = 0;

        for (q = ngx_queue_head(&zone->sh->queue);
             q != ngx_queue_sentinel(&zone->sh->queue);
             q = ngx_queue_next(q))
        {
            n++;
        }

        counts[i] = n;
        nodes[i] = ngx_palloc(r->pool, n
                              * (offsetof(ngx_http_llm_limit_node_t, data)
                                 + NGX_HTTP_LLM_LIMIT_KEY_MAX + 1));

        if (nodes[i] == NULL) {
            ngx_shmtx_unlock(&zone->shpool->mutex);
            return NGX_ERROR;
        }

        p = (u_char *) nodes[i];

        for (q = ngx_queue_head(&zone->sh->queue);
             q != ngx_queue_sentinel(&zone->sh->queue);
             q = ngx_queue_next(q))
        {
            ln = ngx_queue_data(q, ngx_http_llm_limit_node_t, queue);

            ngx_http_llm_limit_advance(ln, &ln->limits);

            ngx_memcpy(p, ln, offsetof(ngx_http_llm_limit_node_t, data)
                              + ln->len);

            len += 1024 + 6 * ln->len;
            p += offsetof(ngx_http_llm_limit_node_t, data)
                 + NGX_HTTP_LLM_LIMIT_KEY_MAX + 1;
        }

        evicted[i] = zone->sh->evicted;

        ngx_shmtx_unlock(&zone->shpool->mutex);
    }

    out->data = ngx_pnalloc(r->pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(out->data, ",\"limits\":{", sizeof(",\"limits\":{") - 1);

    for (i = 0; i < lmcf->limit_zones.nelts; i++) {

        if (i) {
            *p++ = ',';
        }

        *p++ = '"';
        p = (u_char *) ngx_escape_json(p, zones[i]->name.data,
                                       zones[i]->name.len);
        p = ngx_cpymem(p, "\":{\"keys\":{", sizeof("\":{\"keys\":{") - 1);

        ln = nodes[i];
        first = 1;

        for (j = 0; j < counts[i]; j++) {

            if (!first) {
                *p++ = ',';
            }

            first = 0;

            *p++ = '"';

            if (ngx_http_llm_json_text(ln->data, ln->len) == NGX_OK) {
                p = (u_char *) ngx_escape_json(p, ln->data, ln->len);

            } else {
                p = ngx_cpymem(p, "0x", 2);
                p = ngx_hex_dump(p, ln->data, ln->len);
            }

            *p++ = '"';
            *p++ = ':';
            *p++ = '{';

            for (d = 0; d < NGX_HTTP_LLM_LIMIT_N; d++) {

                if (ln->limits.max[d] == 0) {
                    continue;
                }

                left = ngx_http_llm_limit_left(ln, d);

                p = ngx_sprintf(p, "\"%V\":{", &ngx_http_llm_limit_names[d]);

                if (d == NGX_HTTP_LLM_LIMIT_SPEND) {
                    p = ngx_cpymem(p, "\"limit\":\"", 9);
                    p = ngx_http_llm_format_usd(p, ln->limits.max[d]);
                    p = ngx_cpymem(p, "\",\"used\":\"", 10);
                    p = ngx_http_llm_format_usd(p, ln->used[d]);
                    p = ngx_cpymem(p, "\",\"reserved\":\"", 14);
                    p = ngx_http_llm_format_usd(p, ln->reserved[0][d]
                                                   + ln->reserved[1][d]);
                    p = ngx_cpymem(p, "\",\"left\":\"", 10);
                    p = ngx_http_llm_format_usd(p, left);
                    *p++ = '"';

                } else {
                    p = ngx_sprintf(p, "\"limit\":%uL,\"used\":%uL,"
                                    "\"reserved\":%uL,\"left\":%uL",
                                    ln->limits.max[d], ln->used[d],
                                    ln->reserved[0][d] + ln->reserved[1][d],
                                    left);
                }

                p = ngx_sprintf(p, ",\"period_s\":%M,\"reset_s\":%M},",
                                ln->limits.period[d] / 1000,
                                (ngx_http_llm_limit_reset(&ln->limits, d)
                                 + 999) / 1000);
            }

            p = ngx_sprintf(p, "\"in_flight\":%uL,",
                            ln->inflight[0] + ln->inflight[1]);

            if (ln->limits.concurrent) {
                p = ngx_sprintf(p, "\"concurrent\":%ui,",
                                ln->limits.concurrent);
            }

            p = ngx_sprintf(p, "\"rejected\":%uL}", ln->rejected);

            ln = (ngx_http_llm_limit_node_t *)
                     ((u_char *) ln + offsetof(ngx_http_llm_limit_node_t, data)
                      + NGX_HTTP_LLM_LIMIT_KEY_MAX + 1);
        }

        p = ngx_sprintf(p, "},\"evicted\":%uL}", evicted[i]);
    }

    *p++ = '}';

    out->len = p - out->data;

    return NGX_OK;
}
