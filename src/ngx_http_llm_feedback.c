
/*
 * nginx-llm-gateway: the outcomes and the statistics of experiments.
 *
 * llm_feedback counts an outcome (0 or 1) or a score for a request id the
 * gateway signed, once: the ids counted are kept in the llm_zone for the
 * experiment's feedback window.  The status page shows, for each variant,
 * its requests, tokens, cost, latency and outcomes and, against the
 * control, the fixed-horizon two-proportion z-test, the lift with its 95%
 * interval, the sample still needed for the minimum detectable effect, and
 * an always-valid p-value (mSPRT) that may be read as often as one likes.
 */


#include "ngx_http_llm_module.h"

#include <math.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>


#define ngx_http_llm_cpy(p, s)  ngx_cpymem(p, s, sizeof(s) - 1)


/* a request id that got its feedback, in the llm_zone */

typedef struct {
    ngx_http_llm_json_value_t    id;
    ngx_http_llm_json_value_t    outcome;
    ngx_http_llm_json_value_t    score;
    ngx_uint_t                   other;         /* members unknown or twice */
} ngx_http_llm_feedback_body_t;


typedef struct {
    ngx_rbtree_node_t            node;          /* key: crc32 of nonce */
    ngx_queue_t                  queue;         /* oldest last */
    time_t                       expires;
    u_char                       nonce[32];
} ngx_http_llm_feedback_node_t;


static ngx_int_t ngx_http_llm_feedback_handler(ngx_http_request_t *r);
static void ngx_http_llm_feedback_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_feedback(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_llm_feedback_id(ngx_http_llm_main_conf_t *lmcf,
    ngx_str_t *id, ngx_http_llm_experiment_t **ep,
    ngx_http_llm_variant_t **vp, time_t *ts, u_char **nonce);
static ngx_int_t ngx_http_llm_feedback_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_int_t ngx_http_llm_feedback_remember(ngx_http_llm_zone_t *zone,
    uint32_t hash, u_char *nonce, time_t expires);
static u_char *ngx_http_llm_experiment_variant_status(u_char *p,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v,
    ngx_http_llm_stats_t *st, ngx_http_llm_stats_t *control,
    ngx_uint_t generation);
static u_char *ngx_http_llm_status_double(u_char *p, double d);
static double ngx_http_llm_msprt(double p1, double n1, double p0, double n0,
    double shift, double tau2);
static void ngx_http_llm_sequential(ngx_http_request_t *r,
    ngx_http_llm_zone_t *zone, ngx_http_llm_experiment_t *e,
    ngx_http_llm_variant_t *v);
static double ngx_http_llm_sequential_p(ngx_http_llm_experiment_t *e,
    ngx_http_llm_stats_t *st, ngx_http_llm_stats_t *control);
static double ngx_http_llm_error_rate(ngx_http_llm_stats_t *st);
static ngx_msec_t ngx_http_llm_p95(uint64_t *hist);


/* llm_feedback: the outcome of a request, counted to its variant */

char *
ngx_http_llm_feedback_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->status || llcf->mock || llcf->route_name.len
        || llcf->feedback)
    {
        return "is duplicate";
    }

    llcf->feedback = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_feedback_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_feedback_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (ngx_http_llm_get_ctx(r) == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_llm_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                       "method_not_allowed", NULL,
                                       "Feedback is sent with POST");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_llm_feedback_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_llm_feedback_body(ngx_http_request_t *r)
{
    ngx_str_t  body;

    if (ngx_http_llm_request_body(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_finalize_request(r, ngx_http_llm_feedback(r, &body));
}


/*
 * {"request_id": ID, "outcome": 0 | 1} or {"request_id": ID, "score": N}:
 * the id must be one the gateway signed, of an experiment it runs, not
 * older than the experiment's feedback_window, and not counted before.
 */

static ngx_int_t
ngx_http_llm_feedback(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char                        *nonce, num[64];
    double                         score;
    time_t                         ts;
    uint32_t                       hash;
    ngx_int_t                      outcome, rc;
    ngx_str_t                      id, vnode;
    ngx_rbtree_node_t             *node, *sentinel;
    ngx_http_llm_feedback_body_t   fb;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_stats_t       *st;
    ngx_http_llm_variant_t     *v;
    ngx_http_llm_main_conf_t   *lmcf;
    ngx_http_llm_experiment_t  *e;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->zone == NULL) {
        return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "no_zone", NULL,
                                       "llm_feedback needs an llm_zone");
    }

    ngx_memzero(&fb, sizeof(ngx_http_llm_feedback_body_t));

    rc = ngx_http_llm_json_object(body->data, body->data + body->len,
                                  ngx_http_llm_feedback_member, &fb);

    /* the outcome 0 or 1, or a finite score */

    outcome = -1;
    score = 0;

    if (fb.outcome.type == NGX_HTTP_LLM_JSON_NUMBER
        && fb.outcome.end - fb.outcome.start == 1
        && (*fb.outcome.start == '0' || *fb.outcome.start == '1'))
    {
        outcome = *fb.outcome.start - '0';
    }

    if (fb.score.type == NGX_HTTP_LLM_JSON_NUMBER
        && (size_t) (fb.score.end - fb.score.start) < sizeof(num))
    {
        *ngx_cpymem(num, fb.score.start, fb.score.end - fb.score.start) = '\0';
        score = strtod((char *) num, NULL);
    }

    if (rc != NGX_OK || fb.other
        || fb.id.type == NGX_HTTP_LLM_JSON_NONE
        || (fb.outcome.type == NGX_HTTP_LLM_JSON_NONE)
           == (fb.score.type == NGX_HTTP_LLM_JSON_NONE)
        || (fb.outcome.type != NGX_HTTP_LLM_JSON_NONE && outcome < 0)
        || (fb.score.type != NGX_HTTP_LLM_JSON_NONE
            && (fb.score.type != NGX_HTTP_LLM_JSON_NUMBER
                || (size_t) (fb.score.end - fb.score.start) >= sizeof(num)
                || !isfinite(score))))
    {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_feedback", NULL,
                                       "Feedback is {\"request_id\":ID, "
                                       "\"outcome\":0|1} or {\"request_id\":"
                                       "ID, \"score\":NUMBER}");
    }

    /* an id is plain text: a string with escapes is none the gateway made */

    if (fb.id.type != NGX_HTTP_LLM_JSON_STRING || fb.id.escaped) {
        goto invalid;
    }

    id.data = fb.id.start + 1;
    id.len = fb.id.end - fb.id.start - 2;

    rc = ngx_http_llm_feedback_id(lmcf, &id, &e, &v, &ts, &nonce);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        goto invalid;
    }

    if (ngx_time() - ts > e->window) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "expired_request_id", "request_id",
                                       "The request id is older than the "
                                       "experiment's feedback window");
    }

    if (ngx_http_llm_variant_name(r->pool, e, v, &vnode) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* once per id: the ids counted are kept in the zone, by their nonce */

    zone = lmcf->zone->data;
    hash = ngx_crc32_short(nonce, 32);

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = zone->sh->feedback.root;
    sentinel = zone->sh->feedback.sentinel;
    rc = NGX_OK;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        if (ngx_memcmp(((ngx_http_llm_feedback_node_t *) node)->nonce,
                       nonce, 32)
            == 0)
        {
            rc = NGX_DECLINED;
            break;
        }

        node = node->right;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_llm_feedback_remember(zone, hash, nonce,
                                            ts + e->window);

        st = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT, &vnode,
                                    1, r->connection->log);

        if (st && rc == NGX_OK) {
            if (outcome >= 0) {
                st->outcomes++;
                st->successes += outcome;

                ngx_http_llm_sequential(r, zone, e, v);

            } else {
                st->scores++;
                st->score_sum += score;
                st->score_squares += score * score;
            }
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (rc == NGX_DECLINED) {
        return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "duplicate_feedback", "request_id",
                                       "Feedback for this request id was "
                                       "counted already");
    }

    if (rc != NGX_OK) {
        return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "zone_full", NULL,
                                       "The llm_zone is too small to keep "
                                       "the feedback");
    }

    return ngx_http_llm_send_text(r, NGX_HTTP_OK,
                                  "{\"status\":\"counted\"}\n");

invalid:

    return ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                   "invalid_request_id", "request_id",
                                   "The request id is not one the gateway "
                                   "signed for a running experiment");
}


/*
 * A request id the gateway signed, NAME.VARIANT.TIME.NONCE.SIG: its
 * experiment, variant, time and nonce; NGX_DECLINED if it is none.
 */

static ngx_int_t
ngx_http_llm_feedback_id(ngx_http_llm_main_conf_t *lmcf, ngx_str_t *id,
    ngx_http_llm_experiment_t **ep, ngx_http_llm_variant_t **vp, time_t *ts,
    u_char **nonce)
{
    u_char                     *p, *last, *dot[4], md[EVP_MAX_MD_SIZE];
    u_char                      sig[2 * NGX_HTTP_LLM_SIG_LEN];
    ngx_str_t                   name, vname;
    ngx_uint_t                  i, n;
    unsigned int                mdlen;
    ngx_http_llm_variant_t     *v;
    ngx_http_llm_experiment_t  *e;

    p = id->data;
    last = p + id->len;

    for (n = 0; n < 4; n++) {
        dot[n] = ngx_strlchr(p, last, '.');

        if (dot[n] == NULL) {
            return NGX_DECLINED;
        }

        p = dot[n] + 1;
    }

    if (last - p != 2 * NGX_HTTP_LLM_SIG_LEN
        || dot[3] - dot[2] != 33
        || ngx_strlchr(p, last, '.'))
    {
        return NGX_DECLINED;
    }

    name.data = id->data;
    name.len = dot[0] - id->data;
    vname.data = dot[0] + 1;
    vname.len = dot[1] - vname.data;

    e = ngx_http_llm_find_experiment(lmcf, &name);

    if (e == NULL || e->secret.len == 0) {
        return NGX_DECLINED;
    }

    v = e->variants.elts;

    for (i = 0; i < e->variants.nelts; i++) {
        if (v[i].name.len == vname.len
            && ngx_strncmp(v[i].name.data, vname.data, vname.len) == 0)
        {
            break;
        }
    }

    if (i == e->variants.nelts) {
        return NGX_DECLINED;
    }

    v = &v[i];

    if (HMAC(EVP_sha256(), e->secret.data, (int) e->secret.len, id->data,
             dot[3] - id->data, md, &mdlen)
        == NULL)
    {
        return NGX_ERROR;
    }

    ngx_hex_dump(sig, md, NGX_HTTP_LLM_SIG_LEN);

    if (CRYPTO_memcmp(sig, dot[3] + 1, sizeof(sig)) != 0) {
        return NGX_DECLINED;
    }

    *ts = ngx_atotm(dot[1] + 1, dot[2] - dot[1] - 1);

    if (*ts == NGX_ERROR || *ts > ngx_time() + 60) {
        return NGX_DECLINED;
    }

    *ep = e;
    *vp = v;
    *nonce = dot[2] + 1;

    return NGX_OK;

}


static ngx_int_t
ngx_http_llm_feedback_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_feedback_body_t *fb = data;

    ngx_http_llm_json_value_t  *dst;

    if (key->len == 10 && ngx_strncmp(key->data, "request_id", 10) == 0) {
        dst = &fb->id;

    } else if (key->len == 7 && ngx_strncmp(key->data, "outcome", 7) == 0) {
        dst = &fb->outcome;

    } else if (key->len == 5 && ngx_strncmp(key->data, "score", 5) == 0) {
        dst = &fb->score;

    } else {
        fb->other = 1;
        return NGX_OK;
    }

    if (dst->type != NGX_HTTP_LLM_JSON_NONE || v->key_escaped) {
        fb->other = 1;
        return NGX_OK;
    }

    *dst = *v;

    return NGX_OK;
}


/*
 * Keeps the nonce of an id counted (the zone's mutex is held): the ids
 * whose window is over go first; when the zone is full, the oldest go
 * even before (counted in feedback_dropped: they could be counted again).
 */

static ngx_int_t
ngx_http_llm_feedback_remember(ngx_http_llm_zone_t *zone, uint32_t hash,
    u_char *nonce, time_t expires)
{
    ngx_uint_t                     n;
    ngx_queue_t                   *q;
    ngx_http_llm_feedback_node_t  *fn;

    for (n = 0; n < 3 && !ngx_queue_empty(&zone->sh->feedback_queue); n++) {
        q = ngx_queue_last(&zone->sh->feedback_queue);
        fn = ngx_queue_data(q, ngx_http_llm_feedback_node_t, queue);

        if (fn->expires >= ngx_time()) {
            break;
        }

        ngx_queue_remove(q);
        ngx_rbtree_delete(&zone->sh->feedback, &fn->node);
        ngx_slab_free_locked(zone->shpool, fn);
    }

    fn = ngx_slab_alloc_locked(zone->shpool,
                               sizeof(ngx_http_llm_feedback_node_t));

    while (fn == NULL && !ngx_queue_empty(&zone->sh->feedback_queue)) {
        q = ngx_queue_last(&zone->sh->feedback_queue);
        fn = ngx_queue_data(q, ngx_http_llm_feedback_node_t, queue);

        ngx_queue_remove(q);
        ngx_rbtree_delete(&zone->sh->feedback, &fn->node);
        ngx_slab_free_locked(zone->shpool, fn);

        zone->sh->feedback_dropped++;

        fn = ngx_slab_alloc_locked(zone->shpool,
                                   sizeof(ngx_http_llm_feedback_node_t));
    }

    if (fn == NULL) {
        return NGX_ERROR;
    }

    fn->node.key = hash;
    fn->expires = expires;
    ngx_memcpy(fn->nonce, nonce, 32);

    ngx_rbtree_insert(&zone->sh->feedback, &fn->node);
    ngx_queue_insert_head(&zone->sh->feedback_queue, &fn->queue);

    return NGX_OK;
}


/*
 * The experiments on the status page: for each variant its requests,
 * errors, tokens, cost, latency and outcomes, and against the control the
 * two-proportion z-test (fixed horizon), the lift with its 95% interval,
 * the sample still needed for the experiment's minimum detectable effect,
 * and the always-valid p-value of a mixture sequential probability ratio
 * test, safe to read as often as one likes.
 */

ngx_int_t
ngx_http_llm_experiment_status(ngx_http_request_t *r, ngx_str_t *out)
{
    u_char                      *p;
    size_t                       len;
    ngx_uint_t                   i, j, n;
    ngx_str_t                    name;
    ngx_http_llm_zone_t         *zone;
    ngx_http_llm_stats_t        *st, *stats;
    ngx_http_llm_variant_t      *v;
    ngx_http_llm_main_conf_t    *lmcf;
    ngx_http_llm_experiment_t  **e;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    ngx_str_set(out, "");

    if (lmcf->experiments.nelts == 0 || lmcf->zone == NULL) {
        return NGX_OK;
    }

    zone = lmcf->zone->data;
    e = lmcf->experiments.elts;

    n = 0;
    len = sizeof(",\"experiments\":{}");

    for (i = 0; i < lmcf->experiments.nelts; i++) {
        n += e[i]->variants.nelts;
        len += 128 + e[i]->name.len;
    }

    stats = ngx_pcalloc(r->pool, n * sizeof(ngx_http_llm_stats_t));
    if (stats == NULL) {
        return NGX_ERROR;
    }

    /* a copy of each variant's statistics, under the lock */

    st = stats;

    for (i = 0; i < lmcf->experiments.nelts; i++) {
        v = e[i]->variants.elts;

        for (j = 0; j < e[i]->variants.nelts; j++) {
            if (ngx_http_llm_variant_name(r->pool, e[i], &v[j], &name)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            ngx_shmtx_lock(&zone->shpool->mutex);

            stats = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT,
                                           &name, 0, r->connection->log);
            if (stats) {
                *st = *stats;
            }

            ngx_shmtx_unlock(&zone->shpool->mutex);

            len += 1024 + v[j].name.len;
            st++;
        }
    }

    out->data = ngx_pnalloc(r->pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    st -= n;

    p = ngx_cpymem(out->data, ",\"experiments\":{",
                   sizeof(",\"experiments\":{") - 1);

    for (i = 0; i < lmcf->experiments.nelts; i++) {
        v = e[i]->variants.elts;

        p = ngx_sprintf(p, "%s\"%V\":{\"control\":\"%V\",\"mde\":",
                        i ? "," : "", &e[i]->name,
                        &v[e[i]->control].name);
        p = ngx_http_llm_status_double(p, e[i]->mde / 100.0);
        p = ngx_http_llm_cpy(p, ",\"variants\":{");

        for (j = 0; j < e[i]->variants.nelts; j++) {
            p = ngx_sprintf(p, "%s\"%V\":", j ? "," : "", &v[j].name);
            p = ngx_http_llm_experiment_variant_status(p, e[i], &v[j], &st[j],
                                                       &st[e[i]->control],
                                                       lmcf->generation);
        }

        p = ngx_cpymem(p, "}}", 2);

        st += e[i]->variants.nelts;
    }

    *p++ = '}';

    out->len = p - out->data;

    return NGX_OK;
}


static u_char *
ngx_http_llm_experiment_variant_status(u_char *p,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v,
    ngx_http_llm_stats_t *st, ngx_http_llm_stats_t *control,
    ngx_uint_t generation)
{
    double      n0, n1, p0, p1, pp, se, z, pv, lift, lo, hi, mde, p1m, pb,
                need, seq, mean, sd;
    uint64_t    errors;
    ngx_uint_t  i;

    errors = 0;

    for (i = 0; i < ngx_http_llm_err_n; i++) {
        errors += st->errors[i];
    }

    p = ngx_sprintf(p, "{\"weight\":%ui,\"requests\":%uL,\"errors\":%uL,"
                    "\"input_tokens\":%uL,\"output_tokens\":%uL,\"cost\":\"",
                    v->weight, st->requests, errors, st->input, st->output);
    p = ngx_http_llm_format_usd(p, st->cost);
    p = ngx_http_llm_cpy(p, "\",\"latency_ms\":");
    p = ngx_http_llm_status_percentiles(p, st->latency);

    p = ngx_sprintf(p, ",\"outcomes\":{\"n\":%uL,\"successes\":%uL,\"rate\":",
                    st->outcomes, st->successes);
    p = ngx_http_llm_status_double(p, st->outcomes
                                      ? (double) st->successes / st->outcomes
                                      : NAN);

    mean = st->scores ? st->score_sum / st->scores : NAN;
    sd = (st->scores > 1)
         ? sqrt(ngx_max(0.0, (st->score_squares - st->scores * mean * mean)
                             / (st->scores - 1)))
         : NAN;

    p = ngx_sprintf(p, ",\"scores\":%uL,\"score_mean\":", st->scores);
    p = ngx_http_llm_status_double(p, mean);
    p = ngx_http_llm_cpy(p, ",\"score_sd\":");
    p = ngx_http_llm_status_double(p, sd);
    *p++ = '}';

    if (st->rolled_back && st->rollback_generation == generation) {
        p = ngx_sprintf(p, ",\"rolled_back\":{\"at\":%T,\"reason\":\"%s\"}",
                        st->rolled_back,
                        (st->rollback_reason == 1) ? "error_rate"
                        : (st->rollback_reason == 2) ? "latency_p95"
                        : "cost_per_request");
    }

    if (v->index == e->control || st->outcomes == 0
        || control->outcomes == 0)
    {
        *p++ = '}';
        return p;
    }

    n0 = control->outcomes;
    n1 = st->outcomes;
    p0 = control->successes / n0;
    p1 = st->successes / n1;

    /* the two-proportion z-test, pooled */

    pp = (control->successes + st->successes) / (n0 + n1);
    se = sqrt(pp * (1 - pp) * (1 / n0 + 1 / n1));
    z = (se > 0) ? (p1 - p0) / se : NAN;
    pv = (se > 0) ? erfc(fabs(z) / M_SQRT2) : NAN;

    /* the lift, its interval by the delta method on ln(p1 / p0) */

    lift = (p0 > 0) ? p1 / p0 - 1 : NAN;

    if (p0 > 0 && p1 > 0) {
        se = sqrt((1 - p1) / (n1 * p1) + (1 - p0) / (n0 * p0));
        lo = exp(log(p1 / p0) - 1.96 * se) - 1;
        hi = exp(log(p1 / p0) + 1.96 * se) - 1;

    } else {
        lo = NAN;
        hi = NAN;
    }

    /* the sample per arm to detect the mde at alpha 0.05, power 0.8 */

    mde = e->mde / 100.0;
    p1m = p0 * (1 + mde);

    if (p0 > 0 && p1m < 1) {
        pb = (p0 + p1m) / 2;
        need = 1.959963984540054 * sqrt(2 * pb * (1 - pb))
               + 0.8416212335729143 * sqrt(p0 * (1 - p0) + p1m * (1 - p1m));
        need = ceil(need * need / ((p1m - p0) * (p1m - p0)))
               - ngx_min(n0, n1);
        need = ngx_max(need, 0);

    } else {
        need = NAN;
    }

    /* the always-valid p-value: the least seen after each outcome */

    seq = (st->p_sequential > 0) ? st->p_sequential : 1.0;

    p = ngx_http_llm_cpy(p, ",\"vs_control\":{\"z\":");
    p = ngx_http_llm_status_double(p, z);
    p = ngx_http_llm_cpy(p, ",\"p_value\":");
    p = ngx_http_llm_status_double(p, pv);
    p = ngx_http_llm_cpy(p, ",\"lift\":");
    p = ngx_http_llm_status_double(p, lift);
    p = ngx_http_llm_cpy(p, ",\"lift_ci95\":[");
    p = ngx_http_llm_status_double(p, lo);
    *p++ = ',';
    p = ngx_http_llm_status_double(p, hi);
    p = ngx_http_llm_cpy(p, "],\"sample_needed\":");
    p = ngx_http_llm_status_double(p, need);
    p = ngx_http_llm_cpy(p, ",\"p_sequential\":");
    p = ngx_http_llm_status_double(p, seq);
    p = ngx_cpymem(p, "}}", 2);

    return p;
}


/* a number for JSON, or null */

static u_char *
ngx_http_llm_status_double(u_char *p, double d)
{
    int  n;

    if (!isfinite(d)) {
        return ngx_cpymem(p, "null", 4);
    }

    n = snprintf((char *) p, 32, "%.10g", d);

    return p + ngx_min(n, 31);
}


/*
 * The guardrails of a variant against the control, after its request was
 * added (the zone's mutex is held).  Never on a handful of requests: each
 * arm needs min requests.  The error rate (provider errors and no provider
 * at all, over requests) is judged by the sequential test: the variant is
 * rolled back once the always-valid p-value that its rate is more than
 * error_rate above the control's falls below 0.05.  The p95 latency and
 * the cost per request, by their estimates against the thresholds.  The
 * rollback holds, across the workers, until the configuration changes.
 */

void
ngx_http_llm_experiment_guard(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_zone_t *zone, ngx_http_llm_stats_t *st)
{
    double                      e1, e0, p;
    ngx_str_t                   name;
    ngx_uint_t                  reason;
    ngx_msec_t                  l1, l0;
    ngx_http_llm_stats_t       *control;
    ngx_http_llm_variant_t     *c;
    ngx_http_llm_main_conf_t   *lmcf;
    ngx_http_llm_experiment_t  *e;

    static char  *reasons[] = { "", "error_rate", "latency_p95",
                                "cost_per_request" };

    e = ctx->experiment;

    if (!e->rollback || ctx->variant->index == e->control
        || st->requests < e->rollback_min || st->requests % 8)
    {
        return;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (st->rolled_back && st->rollback_generation == lmcf->generation) {
        return;
    }

    c = (ngx_http_llm_variant_t *) e->variants.elts + e->control;

    if (ngx_http_llm_variant_name(r->pool, e, c, &name) != NGX_OK) {
        return;
    }

    control = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT, &name,
                                     0, r->connection->log);

    if (control == NULL || control->requests < e->rollback_min) {
        return;
    }

    reason = 0;
    p = 1;

    if (e->rollback & 1) {
        e1 = ngx_http_llm_error_rate(st);
        e0 = ngx_http_llm_error_rate(control);

        p = ngx_http_llm_msprt(e1, st->requests, e0, control->requests,
                               e->max_error_rate,
                               ngx_max(e->max_error_rate, 0.01)
                               * ngx_max(e->max_error_rate, 0.01));
        if (p < 0.05) {
            reason = 1;
        }
    }

    l1 = ngx_http_llm_p95(st->latency);
    l0 = ngx_http_llm_p95(control->latency);

    if (reason == 0 && (e->rollback & 2) && l1 > l0 + e->max_latency) {
        reason = 2;
    }

    if (reason == 0 && (e->rollback & 4)
        && st->cost / st->requests > control->cost / control->requests
                                     + e->max_cost)
    {
        reason = 3;
    }

    if (reason == 0) {
        return;
    }

    st->rolled_back = ngx_time();
    st->rollback_generation = lmcf->generation;
    st->rollback_reason = reason;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "llm experiment \"%V\": variant \"%V\" rolled back "
                  "(%s): error rate %.4f against %.4f (p %.4f), p95 %M ms "
                  "against %M ms, %uL requests against %uL; its traffic "
                  "goes to \"%V\" until a reload", &e->name,
                  &ctx->variant->name, reasons[reason],
                  ngx_http_llm_error_rate(st),
                  ngx_http_llm_error_rate(control), p, l1, l0,
                  st->requests, control->requests, &c->name);
}


static double
ngx_http_llm_error_rate(ngx_http_llm_stats_t *st)
{
    return st->requests
           ? (double) (st->errors[ngx_http_llm_err_provider]
                       + st->errors[ngx_http_llm_err_unavailable])
             / st->requests
           : 0;
}


/* the p95 of a histogram, or 0 */

static ngx_msec_t
ngx_http_llm_p95(uint64_t *hist)
{
    uint64_t    total, cum;
    ngx_uint_t  i;

    total = 0;

    for (i = 0; i < NGX_HTTP_LLM_HIST; i++) {
        total += hist[i];
    }

    if (total == 0) {
        return 0;
    }

    cum = 0;

    for (i = 0; i < NGX_HTTP_LLM_HIST - 1; i++) {
        cum += hist[i];

        if (cum * 100 >= total * 95) {
            break;
        }
    }

    return ngx_http_llm_hist_bound(i);
}


/*
 * The always-valid p-value of the mixture SPRT that p1 - p0 exceeds shift
 * (normal approximation, a normal mixture of variance tau2): 1 / Lambda,
 * at most 1; 1 when the difference does not exceed the shift.
 */

static double
ngx_http_llm_msprt(double p1, double n1, double p0, double n0, double shift,
    double tau2)
{
    double  d, v, v0, v1, lambda;

    d = p1 - p0 - shift;

    /* the variance with half a success and half a failure more per arm,
       so that rates of 0 or 1 do not make it 0 */

    v1 = (p1 * n1 + 0.5) / (n1 + 1);
    v0 = (p0 * n0 + 0.5) / (n0 + 1);
    v = v1 * (1 - v1) / n1 + v0 * (1 - v0) / n0;

    if (d <= 0 || v <= 0 || tau2 <= 0) {
        return 1;
    }

    lambda = sqrt(v / (v + tau2)) * exp(tau2 * d * d / (2 * v * (v + tau2)));

    return ngx_min(1.0, 1 / lambda);
}


/*
 * After an outcome of a variant (the zone's mutex is held): its
 * always-valid p-value against the control, and when the outcome is the
 * control's, that of every other variant; each keeps the least it had.
 */

static void
ngx_http_llm_sequential(ngx_http_request_t *r, ngx_http_llm_zone_t *zone,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v)
{
    double                   p;
    ngx_str_t                name;
    ngx_uint_t               i;
    ngx_http_llm_stats_t    *st, *control;
    ngx_http_llm_variant_t  *vs;

    vs = e->variants.elts;

    if (ngx_http_llm_variant_name(r->pool, e, &vs[e->control], &name)
        != NGX_OK)
    {
        return;
    }

    control = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT, &name,
                                     0, r->connection->log);

    if (control == NULL || control->outcomes == 0) {
        return;
    }

    for (i = 0; i < e->variants.nelts; i++) {

        if (i == e->control || (v->index != e->control && &vs[i] != v)) {
            continue;
        }

        if (ngx_http_llm_variant_name(r->pool, e, &vs[i], &name) != NGX_OK) {
            return;
        }

        st = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT, &name, 0,
                                    r->connection->log);

        if (st == NULL || st->outcomes == 0) {
            continue;
        }

        p = ngx_http_llm_sequential_p(e, st, control);

        if (st->p_sequential == 0 || p < st->p_sequential) {
            st->p_sequential = p;
        }
    }
}


/*
 * mSPRT with a normal mixture of variance tau2 = (mde x the control's
 * rate)^2 over the difference of the success rates:
 * Lambda = sqrt(V / (V + tau2)) exp(tau2 d^2 / (2 V (V + tau2))), the
 * p-value 1 / Lambda, at most 1.
 */

static double
ngx_http_llm_sequential_p(ngx_http_llm_experiment_t *e,
    ngx_http_llm_stats_t *st, ngx_http_llm_stats_t *control)
{
    double  n0, n1, p0, p1, var, tau2, mde, lambda;

    n0 = control->outcomes;
    n1 = st->outcomes;
    p0 = control->successes / n0;
    p1 = st->successes / n1;
    mde = e->mde / 100.0;

    var = p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0;
    tau2 = ngx_min(mde * p0 * mde * p0, 1.0);

    if (var <= 0 || tau2 <= 0) {
        return 1.0;
    }

    lambda = sqrt(var / (var + tau2))
             * exp(tau2 * (p1 - p0) * (p1 - p0) / (2 * var * (var + tau2)));

    return ngx_min(1.0, 1 / lambda);
}
