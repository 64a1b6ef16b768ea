
/*
 * nginx-llm-gateway: llm_status, the statistics of the zone as JSON.
 *
 * The figures are copied out under the zone's mutex and printed after it
 * is released.  Counters are printed as exact integers and costs as exact
 * decimals of USD, so that they add up with the costs of the access log.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_STATS_LEN   2048


typedef struct {
    ngx_uint_t                   kind;
    ngx_str_t                    name;
    ngx_http_llm_stats_t         stats;
} ngx_http_llm_status_node_t;


static ngx_int_t ngx_http_llm_status_handler(ngx_http_request_t *r);
static u_char *ngx_http_llm_status_stats(u_char *p, ngx_http_llm_stats_t *st);
static u_char *ngx_http_llm_status_section(u_char *p, char *title,
    ngx_uint_t kind, ngx_http_llm_status_node_t *nodes, ngx_uint_t n);


char *
ngx_http_llm_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->status || llcf->mock || llcf->route_name.len) {
        return "is duplicate";
    }

    llcf->status = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_status_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_status_handler(ngx_http_request_t *r)
{
    u_char                      *p;
    size_t                       len;
    ngx_int_t                    rc;
    ngx_buf_t                   *b;
    ngx_uint_t                   i, n;
    ngx_queue_t                 *q;
    ngx_http_llm_node_t         *ln;
    ngx_http_llm_zone_t         *zone;
    ngx_http_llm_stats_t         total;
    ngx_http_llm_main_conf_t    *lmcf;
    ngx_http_llm_status_node_t  *nodes;
    time_t                       started;
    uint64_t                     evicted;
    ngx_str_t                    limits, experiments;
    ngx_http_llm_breaker_t       breakers[NGX_HTTP_LLM_BREAKERS];

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->zone == NULL) {
        return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "no_zone", NULL,
                                       "llm_status needs an llm_zone");
    }

    zone = lmcf->zone->data;

    /* a copy, under the lock */

    ngx_shmtx_lock(&zone->shpool->mutex);

    n = 0;

    for (q = ngx_queue_head(&zone->sh->queue);
         q != ngx_queue_sentinel(&zone->sh->queue);
         q = ngx_queue_next(q))
    {
        n++;
    }

    nodes = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_http_llm_status_node_t));
    len = 0;
    i = 0;

    for (q = ngx_queue_head(&zone->sh->queue);
         nodes && q != ngx_queue_sentinel(&zone->sh->queue);
         q = ngx_queue_next(q))
    {
        ln = ngx_queue_data(q, ngx_http_llm_node_t, queue);

        nodes[i].kind = ln->kind;
        nodes[i].stats = ln->stats;
        nodes[i].name.len = ln->len;
        nodes[i].name.data = ngx_pnalloc(r->pool, ln->len);

        if (nodes[i].name.data == NULL) {
            nodes = NULL;
            break;
        }

        ngx_memcpy(nodes[i].name.data, ln->name, ln->len);

        len += NGX_HTTP_LLM_STATS_LEN + 6 * ln->len;
        i++;
    }

    total = zone->sh->total;
    started = zone->sh->started;
    evicted = zone->sh->evicted;
    ngx_memcpy(breakers, zone->sh->breaker, sizeof(breakers));

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (nodes == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_llm_limit_status(r, &limits) != NGX_OK
        || ngx_http_llm_experiment_status(r, &experiments) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len += NGX_HTTP_LLM_STATS_LEN + 256 + 6 * zone->name.len
           + NGX_HTTP_LLM_BREAKERS * 320 + limits.len + experiments.len;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    p = ngx_cpymem(p, "{\"zone\":\"", sizeof("{\"zone\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, zone->name.data, zone->name.len);
    p = ngx_sprintf(p, "\",\"started\":%T,\"now\":%T,\"evicted\":%uL,"
                    "\"total\":", started, ngx_time(), evicted);

    p = ngx_http_llm_status_stats(p, &total);
    p = ngx_http_llm_status_section(p, "providers",
                                    NGX_HTTP_LLM_NODE_PROVIDER, nodes, n);
    p = ngx_http_llm_status_section(p, "models", NGX_HTTP_LLM_NODE_MODEL,
                                    nodes, n);

    p = ngx_http_llm_breaker_status(p, breakers);
    p = ngx_cpymem(p, limits.data, limits.len);
    p = ngx_cpymem(p, experiments.data, experiments.len);

    *p++ = '}';
    *p++ = LF;

    b->last = p;

    return ngx_http_llm_send_buf(r, NGX_HTTP_OK, b);
}


static u_char *
ngx_http_llm_status_section(u_char *p, char *title, ngx_uint_t kind,
    ngx_http_llm_status_node_t *nodes, ngx_uint_t n)
{
    ngx_uint_t  i, first;

    p = ngx_sprintf(p, ",\"%s\":{", title);

    first = 1;

    for (i = 0; i < n; i++) {

        if (nodes[i].kind != kind) {
            continue;
        }

        if (!first) {
            *p++ = ',';
        }

        first = 0;

        *p++ = '"';
        p = (u_char *) ngx_escape_json(p, nodes[i].name.data,
                                       nodes[i].name.len);
        *p++ = '"';
        *p++ = ':';

        p = ngx_http_llm_status_stats(p, &nodes[i].stats);
    }

    *p++ = '}';

    return p;
}


static u_char *
ngx_http_llm_status_stats(u_char *p, ngx_http_llm_stats_t *st)
{
    p = ngx_sprintf(p, "{\"requests\":%uL,"
                    "\"attempts\":{\"total\":%uL,\"failed\":%uL},"
                    "\"errors\":{\"client\":%uL,"
                    "\"rate_limited\":%uL,\"provider\":%uL,"
                    "\"unavailable\":%uL,\"aborted\":%uL},"
                    "\"incomplete_streams\":%uL,"
                    "\"usage_source\":{\"provider\":%uL,\"estimated\":%uL,"
                    "\"none\":%uL},",
                    st->requests, st->attempts, st->attempts_failed,
                    st->errors[ngx_http_llm_err_client],
                    st->errors[ngx_http_llm_err_rate_limited],
                    st->errors[ngx_http_llm_err_provider],
                    st->errors[ngx_http_llm_err_unavailable],
                    st->errors[ngx_http_llm_err_aborted],
                    st->incomplete,
                    st->usage[NGX_HTTP_LLM_USAGE_PROVIDER],
                    st->usage[NGX_HTTP_LLM_USAGE_ESTIMATED],
                    st->usage[NGX_HTTP_LLM_USAGE_NONE]);

    p = ngx_sprintf(p, "\"tokens\":{\"input\":%uL,\"cache_read\":%uL,"
                    "\"cache_write\":%uL,\"output\":%uL,\"reasoning\":%uL},"
                    "\"cost\":",
                    st->input, st->cache_read, st->cache_write, st->output,
                    st->reasoning);

    p = ngx_http_llm_format_usd(p, st->cost);

    p = ngx_sprintf(p, ",\"unpriced\":%uL,\"latency_ms\":", st->unpriced);
    p = ngx_http_llm_status_percentiles(p, st->latency);

    p = ngx_cpymem(p, ",\"ttft_ms\":", sizeof(",\"ttft_ms\":") - 1);
    p = ngx_http_llm_status_percentiles(p, st->ttft);

    *p++ = '}';

    return p;
}


/*
 * p50, p95 and p99 from the histogram: the bound of the bucket where the
 * share is reached, within 25% of the true value.
 */

u_char *
ngx_http_llm_status_percentiles(u_char *p, uint64_t *hist)
{
    uint64_t    total, cum, want;
    ngx_uint_t  i, k;

    static ngx_uint_t  q[] = { 50, 95, 99 };

    total = 0;

    for (i = 0; i < NGX_HTTP_LLM_HIST; i++) {
        total += hist[i];
    }

    if (total == 0) {
        return ngx_cpymem(p, "{\"p50\":null,\"p95\":null,\"p99\":null}",
                          sizeof("{\"p50\":null,\"p95\":null,\"p99\":null}")
                          - 1);
    }

    *p++ = '{';

    for (k = 0; k < 3; k++) {
        want = (total * q[k] + 99) / 100;
        cum = 0;

        for (i = 0; i < NGX_HTTP_LLM_HIST - 1; i++) {
            cum += hist[i];

            if (cum >= want) {
                break;
            }
        }

        p = ngx_sprintf(p, "%s\"p%ui\":%M", k ? "," : "", q[k],
                        ngx_http_llm_hist_bound(i));
    }

    *p++ = '}';

    return p;
}
