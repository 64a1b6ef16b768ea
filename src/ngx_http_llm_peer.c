
/*
 * nginx-llm-gateway: failover between providers.
 *
 * Every provider's upstream goes through a peer of the gateway's own, as
 * upstream keepalive wraps round robin: it hands each connection to the
 * peer of the provider of the current attempt (round robin, keepalive,
 * whatever the provider's upstream uses).  When an attempt fails in a way
 * the route retries (an error, a timeout, a status), nginx's upstream asks
 * for the next peer, and the gateway's peer moves to the next provider of
 * the plan: it switches the upstream configuration (timeouts, TLS), builds
 * the request anew for that provider, and gets a connection from its
 * peers.  Nothing has gone to the client before the reply's header is in
 * (and a stream's first byte), so the client sees the first reply that is
 * not retried.  Which attempt comes next, and after what backoff, the
 * route decides (ngx_http_llm_next_attempt); the request to a provider
 * tried before waits out its backoff in the upstream's output filter.
 */


#include "ngx_http_llm_module.h"


typedef struct {
    ngx_http_request_t              *request;
    ngx_http_llm_ctx_t              *ctx;

    void                            *data;      /* the provider's peer */
    ngx_event_get_peer_pt            get;
    ngx_event_free_peer_pt           free;
#if (NGX_HTTP_SSL)
    ngx_event_set_peer_session_pt    set_session;
    ngx_event_save_peer_session_pt   save_session;
#endif

    unsigned                         next:1;    /* the attempt failed */
} ngx_http_llm_peer_t;


static ngx_int_t ngx_http_llm_peer_init(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_llm_peer_provider(ngx_http_llm_peer_t *lp);
static ngx_int_t ngx_http_llm_peer_get(ngx_peer_connection_t *pc,
    void *data);
static ngx_int_t ngx_http_llm_peer_switch(ngx_http_llm_peer_t *lp);
static void ngx_http_llm_peer_free(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state);
#if (NGX_HTTP_SSL)
static ngx_int_t ngx_http_llm_peer_set_session(ngx_peer_connection_t *pc,
    void *data);
static void ngx_http_llm_peer_save_session(ngx_peer_connection_t *pc,
    void *data);
#endif


/*
 * Configuration: each provider's upstream (after nginx initialized it) is
 * kept, and its place taken by a copy whose peers are the gateway's.
 */

ngx_int_t
ngx_http_llm_init_peers(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                      i;
    ngx_http_llm_provider_t       **pp;
    ngx_http_upstream_srv_conf_t   *uscf;

    pp = lmcf->providers.elts;

    for (i = 0; i < lmcf->providers.nelts; i++) {

        uscf = ngx_palloc(cf->pool, sizeof(ngx_http_upstream_srv_conf_t));
        if (uscf == NULL) {
            return NGX_ERROR;
        }

        pp[i]->peers = pp[i]->upstream.upstream;

        *uscf = *pp[i]->peers;
        uscf->peer.init = ngx_http_llm_peer_init;

        pp[i]->upstream.upstream = uscf;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_peer_init(ngx_http_request_t *r, ngx_http_upstream_srv_conf_t *us)
{
    ngx_http_upstream_t  *u;
    ngx_http_llm_ctx_t   *ctx;
    ngx_http_llm_peer_t  *lp;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    lp = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_peer_t));
    if (lp == NULL) {
        return NGX_ERROR;
    }

    lp->request = r;
    lp->ctx = ctx;
    ctx->peer = lp;

    if (ngx_http_llm_peer_provider(lp) != NGX_OK) {
        return NGX_ERROR;
    }

    u = r->upstream;

    /*
     * The gateway decides whether a failed attempt has a next one: the
     * tries are 2 while one may follow (nginx retries a status while more
     * than one is left), 1 for the last.
     */

    u->peer.tries = (ctx->current + 1 < ctx->nattempts) ? 2 : 1;

    return NGX_OK;
}


/*
 * The peers of the provider of the current attempt: its upstream's peer
 * initialization fills the upstream's peer connection; what it puts there
 * is kept, and the gateway's peer takes its place again.
 */

static ngx_int_t
ngx_http_llm_peer_provider(ngx_http_llm_peer_t *lp)
{
    ngx_uint_t                     tries;
    ngx_http_request_t            *r;
    ngx_http_upstream_t           *u;
    ngx_http_upstream_srv_conf_t  *us;

    r = lp->request;
    u = r->upstream;
    us = lp->ctx->provider->peers;

    tries = u->peer.tries;

    /* round robin takes a peer data it finds for its own */
    u->peer.data = NULL;

    if (us->peer.init(r, us) != NGX_OK) {
        return NGX_ERROR;
    }

    lp->data = u->peer.data;
    lp->get = u->peer.get;
    lp->free = u->peer.free;

    u->peer.data = lp;
    u->peer.get = ngx_http_llm_peer_get;
    u->peer.free = ngx_http_llm_peer_free;
    u->peer.tries = tries;

#if (NGX_HTTP_SSL)
    lp->set_session = u->peer.set_session;
    lp->save_session = u->peer.save_session;

    u->peer.set_session = ngx_http_llm_peer_set_session;
    u->peer.save_session = ngx_http_llm_peer_save_session;
#endif

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_peer_get(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_llm_peer_t *lp = data;

    ngx_int_t            rc;
    ngx_msec_t           wait;
    ngx_http_llm_ctx_t  *ctx;

    ctx = lp->ctx;

    for ( ;; ) {

        if (lp->next) {

            /* the last attempt failed: the next one */

            lp->next = 0;

            /*
             * its breaker: the probe is taken if the cooldown is over; a
             * provider whose breaker opened meanwhile, or that another
             * request probes, is passed over
             */

            while (ctx->next >= 0
                   && ngx_http_llm_breaker_allow(lp->request,
                                   ctx->attempt[ctx->next].peer->provider,
                                   &wait, 1)
                      == NGX_DECLINED)
            {
                ctx->current = ctx->next;
                ctx->next = ngx_http_llm_next_attempt(lp->request, ctx);
            }

            if (ctx->next < 0) {
                return NGX_BUSY;
            }

            if (ngx_http_llm_peer_switch(lp) != NGX_OK) {
                return NGX_ERROR;
            }
        }

        rc = lp->get(pc, lp->data);

        if (rc != NGX_BUSY) {
            return rc;
        }

        /* no live peer of this provider: it counts as a failed attempt */

        ctx->attempt[ctx->current].done = 1;
        ctx->next = ngx_http_llm_next_attempt(lp->request, ctx);

        if (ctx->next < 0) {
            return NGX_BUSY;
        }

        lp->next = 1;
    }
}


static ngx_int_t
ngx_http_llm_peer_switch(ngx_http_llm_peer_t *lp)
{
    ngx_http_request_t       *r;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_provider_t  *p;

    r = lp->request;
    ctx = lp->ctx;

    ctx->current = ctx->next;
    ctx->next = -1;

    ngx_http_llm_use_attempt(r, ctx);

    p = ctx->provider;

    ngx_http_llm_upstream_provider(r, ctx);

    /* a provider tried before gets the request after the backoff */

    ctx->backoff_until = ctx->next_wait ? ngx_current_msec + ctx->next_wait
                                        : 0;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "llm: trying provider \"%V\" (attempt %ui, in %M ms)",
                  &p->name, ngx_http_llm_attempts_made(ctx),
                  ctx->next_wait);

    if (ngx_http_llm_create_request(r) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_llm_peer_provider(lp);
}


static void
ngx_http_llm_peer_free(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state)
{
    ngx_http_llm_peer_t *lp = data;

    ngx_connection_t        *c;
    ngx_http_request_t      *r;
    ngx_http_llm_ctx_t      *ctx;
    ngx_http_upstream_t     *u;
    ngx_http_llm_attempt_t  *a;

    r = lp->request;
    u = r->upstream;
    ctx = lp->ctx;
    a = &ctx->attempt[ctx->current];
    c = pc->connection;

    /*
     * The tries are the gateway's (see ngx_http_llm_peer_init): the
     * provider's peer counts its own, and round robin ends them all for a
     * single server.
     */

    lp->free(pc, lp->data, state);

    pc->tries = 0;

    a->timeout = (c && (c->read->timedout || c->write->timedout));
    a->slow = (c && c->read->timedout);

    /*
     * A kept-alive connection that broke before a reply is not the
     * provider's failure: nginx gives back the try, and the provider gets
     * the request again.  A timeout is the provider's.
     */

    if ((state & NGX_PEER_FAILED) && pc->cached && !a->timeout
        && u->headers_in.status_n == 0 && !ctx->bad_reply)
    {
        return;
    }

    a->done = 1;
    a->status = u->headers_in.status_n;

    if ((state & NGX_PEER_FAILED)
        && a->status < NGX_HTTP_SPECIAL_RESPONSE && !ctx->retry_reply)
    {
        /* a timeout or an error after the header of a reply */
        a->status = 0;
    }

    /*
     * A reply was reported when it came (see ngx_http_llm_reply_ready);
     * a request that ended before one (a client gone) is not reported.
     */

    if (!a->reported && (state & NGX_PEER_FAILED)) {
        a->failed = ngx_http_llm_attempt_failed(a);
        a->reported = 1;

        ngx_http_llm_breaker_report(r, a->peer->provider,
                                    !a->failed ? NGX_HTTP_LLM_ATTEMPT_OK
                                    : a->slow ? NGX_HTTP_LLM_ATTEMPT_SLOW
                                    : NGX_HTTP_LLM_ATTEMPT_FAILED, 0);
    }

    if (!(state & NGX_PEER_FAILED)) {
        return;
    }

    /* the next attempt, with the breaker as this one left it */

    lp->next = 1;
    ctx->next = ngx_http_llm_next_attempt(r, ctx);

    if (ctx->next >= 0
        && !(ctx->bad_reply
             && !(ctx->route->next_upstream & NGX_HTTP_UPSTREAM_FT_ERROR)))
    {
        pc->tries = 1;
    }
}


#if (NGX_HTTP_SSL)

static ngx_int_t
ngx_http_llm_peer_set_session(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_llm_peer_t *lp = data;

    if (lp->set_session == NULL) {
        return NGX_OK;
    }

    return lp->set_session(pc, lp->data);
}


static void
ngx_http_llm_peer_save_session(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_llm_peer_t *lp = data;

    if (lp->save_session) {
        lp->save_session(pc, lp->data);
    }
}

#endif
