
/*
 * nginx-llm-gateway: statistics in shared memory.
 *
 * One zone (llm_zone) per http block, laid out like limit_req's: a slab
 * pool with a red-black tree of nodes, one per provider and one per model,
 * keyed by crc32 of the name, and an LRU queue.  Every worker adds each
 * request it logs under the zone's mutex, held only for the lookup and the
 * additions.  When the zone is full the least recently used node goes (its
 * figures stay in the totals).  A reload with the same zone name and size
 * keeps everything.
 */


#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_init_zone(ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_llm_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_http_llm_stats_t *ngx_http_llm_zone_again(
    ngx_http_llm_zone_t *zone, ngx_http_llm_stats_t *st);
static void ngx_http_llm_stats_add(ngx_http_llm_stats_t *st,
    ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx, ngx_uint_t err,
    ngx_uint_t lat, ngx_int_t ttft);
static ngx_uint_t ngx_http_llm_model_known(ngx_http_llm_model_t *map,
    ngx_uint_t status);
static ngx_uint_t ngx_http_llm_hist_index(ngx_msec_t ms);
static ngx_uint_t ngx_http_llm_error_class(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);


/* histogram bucket i holds times up to this many ms; the last, the rest */
static ngx_msec_t  ngx_http_llm_bounds[NGX_HTTP_LLM_HIST];


char *
ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    ssize_t               size;
    ngx_str_t            *value;
    ngx_uint_t            i;
    ngx_msec_t            b;
    ngx_http_llm_zone_t  *zone;

    if (lmcf->zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\" (at least %uz)",
                           &value[2], 8 * ngx_pagesize);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->name = value[1];

    lmcf->zone = ngx_shared_memory_add(cf, &value[1], size,
                                       &ngx_http_llm_module);
    if (lmcf->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (lmcf->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &value[1]);
        return NGX_CONF_ERROR;
    }

    lmcf->zone->init = ngx_http_llm_init_zone;
    lmcf->zone->data = zone;

    /* a geometric scale: each bound at most 25% above the previous */

    b = 1;

    for (i = 0; i < NGX_HTTP_LLM_HIST; i++) {
        ngx_http_llm_bounds[i] = b;
        b = ngx_max(b + 1, b + b / 4);
    }

    return NGX_CONF_OK;
}


ngx_msec_t
ngx_http_llm_hist_bound(ngx_uint_t i)
{
    return ngx_http_llm_bounds[i];
}


static ngx_int_t
ngx_http_llm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llm_zone_t  *ozone = data;

    size_t                len;
    ngx_http_llm_zone_t  *zone;

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

    zone->sh = ngx_slab_alloc(zone->shpool, sizeof(ngx_http_llm_shctx_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(zone->sh, sizeof(ngx_http_llm_shctx_t));

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_llm_rbtree_insert_value);

    ngx_queue_init(&zone->sh->queue);

    ngx_rbtree_init(&zone->sh->feedback, &zone->sh->feedback_sentinel,
                    ngx_rbtree_insert_value);
    ngx_queue_init(&zone->sh->feedback_queue);

    zone->sh->started = ngx_time();

    len = sizeof(" in llm_zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in llm_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is handled here: no "no memory" alert per request */
    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_llm_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t     **p;
    ngx_http_llm_node_t    *ln, *lnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            ln = (ngx_http_llm_node_t *) &node->color;
            lnt = (ngx_http_llm_node_t *) &temp->color;

            p = (ln->kind < lnt->kind
                 || (ln->kind == lnt->kind
                     && ngx_memn2cmp(ln->name, lnt->name, ln->len, lnt->len)
                        < 0))
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


/*
 * The log phase: every request of an llm_pass location adds to the
 * totals, to its provider and to its model.
 */

ngx_int_t
ngx_http_llm_log_handler(ngx_http_request_t *r)
{
    uint64_t                   evicted;
    ngx_int_t                  ttft;
    ngx_str_t                  variant, *name;
    ngx_uint_t                 i, err, lat, known;
    ngx_http_llm_ctx_t        *ctx;
    ngx_http_llm_attempt_t    *a;
    ngx_http_llm_zone_t       *zone;
    ngx_http_llm_stats_t      *st, *pst, *mst;
    ngx_http_llm_main_conf_t  *lmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->route == NULL || ctx->logged) {
        return NGX_OK;
    }

    ctx->logged = 1;

    ngx_http_llm_price_request(r, ctx);

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->zone == NULL) {
        return NGX_OK;
    }

    zone = lmcf->zone->data;

    err = ngx_http_llm_error_class(r, ctx);
    lat = ngx_http_llm_hist_index((ctx->end ? ctx->end : ngx_current_msec)
                                  - ctx->start);
    ttft = ctx->first_byte
           ? (ngx_int_t) ngx_http_llm_hist_index(ctx->first_byte - ctx->start)
           : -1;

    ngx_str_null(&variant);

    if (ctx->variant
        && ngx_http_llm_variant_name(r->pool, ctx->experiment, ctx->variant,
                                     &variant)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    known = ngx_http_llm_model_known(ctx->model_map,
                                     r->upstream
                                     ? r->upstream->headers_in.status_n : 0);

    ngx_shmtx_lock(&zone->shpool->mutex);

    ngx_http_llm_stats_add(&zone->sh->total, r, ctx, err, lat, ttft);

    if (ctx->variant) {
        st = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT, &variant,
                                    1, r->connection->log);
        if (st) {
            ngx_http_llm_stats_add(st, r, ctx, err, lat, ttft);
            ngx_http_llm_experiment_guard(r, ctx, zone, st);
        }
    }

    pst = NULL;
    mst = NULL;

    if (ctx->provider) {
        pst = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_PROVIDER,
                                     &ctx->provider->name, 1,
                                     r->connection->log);
        if (pst) {
            ngx_http_llm_stats_add(pst, r, ctx, err, lat, ttft);
        }

        mst = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_MODEL,
                                     &ctx->upstream_model, known,
                                     r->connection->log);
        if (mst) {
            ngx_http_llm_stats_add(mst, r, ctx, err, lat, ttft);
        }
    }

    /*
     * every attempt, with the provider that made it; the nodes of the
     * request's provider and model are not looked up again (unless the
     * zone dropped nodes meanwhile)
     */

    evicted = zone->sh->evicted;

    for (i = 0; i < ctx->nattempts; i++) {
        a = &ctx->attempt[i];

        if (!a->used) {
            continue;
        }

        zone->sh->total.attempts++;
        zone->sh->total.attempts_failed += a->failed;

        if (pst && a->peer->provider == ctx->provider
            && zone->sh->evicted == evicted)
        {
            st = ngx_http_llm_zone_again(zone, pst);

        } else {
            st = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_PROVIDER,
                                        &a->peer->provider->name, 1,
                                        r->connection->log);
        }

        if (st) {
            st->attempts++;
            st->attempts_failed += a->failed;
        }

        name = a->map ? &a->map->name : &ctx->model;

        if (mst && zone->sh->evicted == evicted
            && name->len == ctx->upstream_model.len
            && ngx_memcmp(name->data, ctx->upstream_model.data, name->len)
               == 0)
        {
            st = ngx_http_llm_zone_again(zone, mst);

        } else {
            st = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_MODEL, name,
                                        ngx_http_llm_model_known(a->map,
                                                                 a->status),
                                        r->connection->log);
        }

        if (st) {
            st->attempts++;
            st->attempts_failed += a->failed;
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return NGX_OK;
}


/* the node of statistics found a moment ago, used again */

static ngx_http_llm_stats_t *
ngx_http_llm_zone_again(ngx_http_llm_zone_t *zone, ngx_http_llm_stats_t *st)
{
    ngx_http_llm_node_t  *ln;

    ln = (ngx_http_llm_node_t *)
             ((u_char *) st - offsetof(ngx_http_llm_node_t, stats));

    ngx_queue_remove(&ln->queue);
    ngx_queue_insert_head(&zone->sh->queue, &ln->queue);

    return st;
}


static ngx_uint_t
ngx_http_llm_error_class(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t  status;

    status = r->err_status ? r->err_status : r->headers_out.status;

    if (status == NGX_HTTP_CLIENT_CLOSED_REQUEST
        || (r->connection->error && status < NGX_HTTP_BAD_REQUEST))
    {
        return ngx_http_llm_err_aborted;
    }

    if (status < NGX_HTTP_BAD_REQUEST) {
        return ngx_http_llm_err_n;
    }

    if (status == NGX_HTTP_TOO_MANY_REQUESTS) {
        return ngx_http_llm_err_rate_limited;
    }

    if (status < NGX_HTTP_INTERNAL_SERVER_ERROR) {
        return ngx_http_llm_err_client;
    }

    /* a 5xx of the provider's own, or of the gateway that could not */

    return ctx->error.len ? ngx_http_llm_err_unavailable
                          : ngx_http_llm_err_provider;
}


/*
 * A model gets statistics of its own unless no "model" line names it and
 * the provider refused it (400 or 404, as providers answer an unknown
 * model): names that a client makes up for a provider without "model"
 * lines count in the totals only, so that they cannot push the others
 * out of the zone.
 */

static ngx_uint_t
ngx_http_llm_model_known(ngx_http_llm_model_t *map, ngx_uint_t status)
{
    return map != NULL
           || (status != NGX_HTTP_BAD_REQUEST && status != NGX_HTTP_NOT_FOUND);
}


/*
 * The node of a provider or a model, found, or made when create is set;
 * names are kept and compared in their first NGX_HTTP_LLM_MODEL_MAX bytes.
 */

ngx_http_llm_stats_t *
ngx_http_llm_zone_node(ngx_http_llm_zone_t *zone, ngx_uint_t kind,
    ngx_str_t *name, ngx_uint_t create, ngx_log_t *log)
{
    size_t                n, len;
    uint32_t              hash;
    ngx_int_t             rc;
    ngx_queue_t          *q;
    ngx_rbtree_node_t    *node, *sentinel;
    ngx_http_llm_node_t  *ln;
    u_char                text[NGX_HTTP_LLM_MODEL_MAX * 4];

    len = ngx_min(name->len, NGX_HTTP_LLM_MODEL_MAX);

    hash = ngx_crc32_short(name->data, len) ^ (uint32_t) kind;

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

        ln = (ngx_http_llm_node_t *) &node->color;

        rc = (kind == ln->kind) ? ngx_memn2cmp(name->data, ln->name,
                                               len, (size_t) ln->len)
                                : (ngx_int_t) kind - (ngx_int_t) ln->kind;

        if (rc == 0) {
            ngx_queue_remove(&ln->queue);
            ngx_queue_insert_head(&zone->sh->queue, &ln->queue);
            return &ln->stats;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    if (!create) {
        return NULL;
    }

    n = offsetof(ngx_rbtree_node_t, color)
        + offsetof(ngx_http_llm_node_t, name) + len;

    node = ngx_slab_alloc_locked(zone->shpool, n);

    while (node == NULL && !ngx_queue_empty(&zone->sh->queue)) {

        /* full: the least recently used node goes */

        q = ngx_queue_last(&zone->sh->queue);
        ln = ngx_queue_data(q, ngx_http_llm_node_t, queue);

        zone->sh->evicted++;

        /* once a minute at most, with the count so far */

        if (ngx_time() - zone->sh->evict_logged >= 60) {
            zone->sh->evict_logged = ngx_time();

            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "llm_zone \"%V\" is full: the statistics of \"%*s\" "
                          "were dropped (they stay in the totals; %uL "
                          "dropped since the start)", &zone->name,
                          ngx_http_llm_log_text(text, text + sizeof(text),
                                                ln->name, ln->len) - text,
                          text, zone->sh->evicted);
        }

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) ln - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&zone->sh->rbtree, node);
        ngx_slab_free_locked(zone->shpool, node);

        node = ngx_slab_alloc_locked(zone->shpool, n);
    }

    if (node == NULL) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "llm_zone \"%V\" is too small for the statistics of "
                      "\"%*s\"", &zone->name,
                      ngx_http_llm_log_text(text, text + sizeof(text),
                                            name->data, len) - text,
                      text);
        return NULL;
    }

    ln = (ngx_http_llm_node_t *) &node->color;

    node->key = hash;
    ln->kind = (u_char) kind;
    ln->len = (u_short) len;

    ngx_memcpy(ln->name, name->data, len);
    ngx_memzero(&ln->stats, sizeof(ngx_http_llm_stats_t));

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &ln->queue);

    return &ln->stats;
}


static void
ngx_http_llm_stats_add(ngx_http_llm_stats_t *st, ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_uint_t err, ngx_uint_t lat, ngx_int_t ttft)
{
    st->requests++;

    if (err < ngx_http_llm_err_n) {
        st->errors[err]++;
    }

    if (ctx->stream && ctx->usage_source == NGX_HTTP_LLM_USAGE_ESTIMATED) {
        st->incomplete++;
    }

    st->usage[ctx->usage_source]++;

    st->input += ctx->usage.input;
    st->cache_read += ctx->usage.cache_read;
    st->cache_write += ctx->usage.cache_write;
    st->output += ctx->usage.output;
    st->reasoning += ctx->usage.reasoning;

    if (ctx->priced) {
        st->cost += ctx->cost;

    } else if (ctx->usage_source != NGX_HTTP_LLM_USAGE_NONE) {
        st->unpriced++;
    }

    st->latency[lat]++;

    if (ttft >= 0) {
        st->ttft[ttft]++;
    }
}


static ngx_uint_t
ngx_http_llm_hist_index(ngx_msec_t ms)
{
    ngx_uint_t  lo, hi, mid;

    lo = 0;
    hi = NGX_HTTP_LLM_HIST - 1;

    /* the first bucket whose bound is not below ms */

    while (lo < hi) {
        mid = (lo + hi) / 2;

        if (ngx_http_llm_bounds[mid] < ms) {
            lo = mid + 1;

        } else {
            hi = mid;
        }
    }

    return lo;
}
