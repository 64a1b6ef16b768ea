
/*
 * nginx-llm-gateway: routes.  A route is a set of providers with weights,
 * fallbacks and a retry policy; for each request it plans the attempts:
 * the provider picked by weight first, then the others by weight, then
 * the fallbacks, among those that speak the endpoint's format and serve
 * the model.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_RETRY_DEFAULT                                            \
    (NGX_HTTP_UPSTREAM_FT_ERROR|NGX_HTTP_UPSTREAM_FT_TIMEOUT                  \
     |NGX_HTTP_UPSTREAM_FT_INVALID_HEADER|NGX_HTTP_UPSTREAM_FT_HTTP_429       \
     |NGX_HTTP_UPSTREAM_FT_HTTP_500|NGX_HTTP_UPSTREAM_FT_HTTP_502             \
     |NGX_HTTP_UPSTREAM_FT_HTTP_503|NGX_HTTP_UPSTREAM_FT_HTTP_504             \
     |NGX_HTTP_UPSTREAM_FT_NON_IDEMPOTENT)


#define NGX_HTTP_LLM_RETRY_OWN_DEFAULT  NGX_HTTP_LLM_RETRY_529

#define NGX_HTTP_LLM_BACKOFF_DEFAULT    100


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   mask;      /* nginx's triggers */
    ngx_uint_t                   retry;     /* the gateway's */
} ngx_http_llm_retry_t;


static char *ngx_http_llm_route_directive(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);
static char *ngx_http_llm_route_provider(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_route_retry(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_route_sticky(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_http_llm_route_peer_t *ngx_http_llm_sticky_peer(
    ngx_http_request_t *r, ngx_http_llm_route_t *route, u_char *serves);
static ngx_int_t ngx_http_llm_plan(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_uint_t ngx_http_llm_serves(ngx_http_llm_route_peer_t *peer,
    ngx_uint_t endpoint, ngx_str_t *model, ngx_http_llm_model_t **map);
static ngx_uint_t ngx_http_llm_fits(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_route_peer_t *peer,
    ngx_http_llm_model_t *map);
static ngx_uint_t ngx_http_llm_transient(ngx_http_llm_attempt_t *a);


static ngx_command_t  ngx_http_llm_route_commands[] = {

    { ngx_string("provider"),
      NGX_CONF_TAKE12,
      ngx_http_llm_route_provider,
      0,
      0,
      NULL },

    { ngx_string("fallback"),
      NGX_CONF_TAKE1,
      ngx_http_llm_route_provider,
      0,
      NGX_HTTP_LLM_FALLBACK,
      NULL },

    { ngx_string("context_fallback"),
      NGX_CONF_TAKE1,
      ngx_http_llm_route_provider,
      0,
      NGX_HTTP_LLM_FALLBACK_CONTEXT,
      NULL },

    { ngx_string("retry"),
      NGX_CONF_1MORE,
      ngx_http_llm_route_retry,
      0,
      0,
      NULL },

    { ngx_string("sticky"),
      NGX_CONF_TAKE1,
      ngx_http_llm_route_sticky,
      0,
      0,
      NULL },

      ngx_null_command
};

static ngx_http_llm_retry_t  ngx_http_llm_retries[] = {
    { ngx_string("error"),
      NGX_HTTP_UPSTREAM_FT_ERROR|NGX_HTTP_UPSTREAM_FT_INVALID_HEADER, 0 },
    { ngx_string("timeout"), NGX_HTTP_UPSTREAM_FT_TIMEOUT, 0 },
    { ngx_string("429"), NGX_HTTP_UPSTREAM_FT_HTTP_429, 0 },
    { ngx_string("500"), NGX_HTTP_UPSTREAM_FT_HTTP_500, 0 },
    { ngx_string("502"), NGX_HTTP_UPSTREAM_FT_HTTP_502, 0 },
    { ngx_string("503"), NGX_HTTP_UPSTREAM_FT_HTTP_503, 0 },
    { ngx_string("504"), NGX_HTTP_UPSTREAM_FT_HTTP_504, 0 },
    { ngx_string("529"), 0, NGX_HTTP_LLM_RETRY_529 },
    { ngx_string("context_length_exceeded"), 0,
      ngx_http_llm_error_bit(NGX_HTTP_LLM_ERROR_CONTEXT) },
    { ngx_string("insufficient_quota"), 0,
      ngx_http_llm_error_bit(NGX_HTTP_LLM_ERROR_QUOTA) },
    { ngx_string("overloaded_error"), 0,
      ngx_http_llm_error_bit(NGX_HTTP_LLM_ERROR_OVERLOADED) },
    { ngx_null_string, 0, 0 }
};


char *
ngx_http_llm_route_block(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                   *rv;
    ngx_str_t              *value;
    ngx_conf_t                  save;
    ngx_uint_t                  i;
    ngx_http_llm_route_t       *route, **rp;
    ngx_http_llm_route_peer_t  *peer;

    value = cf->args->elts;

    rp = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        if (rp[i]->name.len == value[1].len
            && ngx_strncmp(rp[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate llm route \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    route = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_route_t));
    if (route == NULL) {
        return NGX_CONF_ERROR;
    }

    route->name = value[1];
    route->next_upstream = NGX_CONF_UNSET_UINT;
    route->backoff = NGX_CONF_UNSET_MSEC;

    if (ngx_array_init(&route->peers, cf->pool, 4,
                       sizeof(ngx_http_llm_route_peer_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    rp = ngx_array_push(&lmcf->routes);
    if (rp == NULL) {
        return NGX_CONF_ERROR;
    }

    *rp = route;

    save = *cf;
    cf->handler = ngx_http_llm_route_directive;
    cf->handler_conf = (char *) route;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (route->peers.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no providers in llm_route \"%V\"", &route->name);
        return NGX_CONF_ERROR;
    }

    if (route->next_upstream == NGX_CONF_UNSET_UINT) {
        route->next_upstream = NGX_HTTP_LLM_RETRY_DEFAULT;
        route->retry = NGX_HTTP_LLM_RETRY_OWN_DEFAULT;
    }

    ngx_conf_init_msec_value(route->backoff, NGX_HTTP_LLM_BACKOFF_DEFAULT);

    peer = route->peers.elts;

    for (i = 0; i < route->peers.nelts; i++) {
        if (peer[i].fallback == NGX_HTTP_LLM_FALLBACK_CONTEXT) {
            route->context++;
        }
    }

    if (route->context > NGX_HTTP_LLM_MAX_ATTEMPTS / 2) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many context fallbacks in llm_route \"%V\": "
                           "%d at most", &route->name,
                           NGX_HTTP_LLM_MAX_ATTEMPTS / 2);
        return NGX_CONF_ERROR;
    }

    if (route->context == route->peers.nelts) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no providers in llm_route \"%V\" but "
                           "context fallbacks", &route->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_route_provider(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_route_t *route = conf;

    ngx_str_t                  *value;
    ngx_uint_t                  i;
    ngx_http_llm_route_peer_t  *peer;

    value = cf->args->elts;

    peer = route->peers.elts;

    for (i = 0; i < route->peers.nelts; i++) {
        if (peer[i].name.len == value[1].len
            && ngx_strncmp(peer[i].name.data, value[1].data, value[1].len)
               == 0)
        {
            return "is duplicate";
        }
    }

    if (route->peers.nelts == NGX_HTTP_LLM_ROUTE_PEERS) {
        return "is one too many: a route has 64 providers at most";
    }

    peer = ngx_array_push(&route->peers);
    if (peer == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(peer, sizeof(ngx_http_llm_route_peer_t));

    peer->name = value[1];
    peer->weight = 1;
    peer->fallback = cmd->offset;
    peer->file = cf->conf_file->file.name.data;
    peer->line = cf->conf_file->line;

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (value[2].len <= 7
        || ngx_strncmp(value[2].data, "weight=", 7) != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    peer->weight = ngx_atoi(value[2].data + 7, value[2].len - 7);

    if (peer->weight == NGX_ERROR || peer->weight == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid weight \"%V\": a positive number",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
ngx_http_llm_init_routes(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                  i, j;
    ngx_http_llm_route_t      **rp;
    ngx_http_llm_route_peer_t  *peer;

    rp = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {

        peer = rp[i]->peers.elts;

        for (j = 0; j < rp[i]->peers.nelts; j++) {

            peer[j].provider = ngx_http_llm_find_provider(lmcf,
                                                          &peer[j].name);

            if (peer[j].provider == NULL) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "unknown llm provider \"%V\" in llm_route "
                              "\"%V\" in %s:%ui", &peer[j].name,
                              &rp[i]->name, peer[j].file, peer[j].line);
                return NGX_CONF_ERROR;
            }

            if (peer[j].provider->models) {
                rp[i]->declares_models = 1;
            }

            if (ngx_http_llm_route_peer_conf(cf, rp[i], &peer[j]) != NGX_OK) {
                return NGX_CONF_ERROR;
            }
        }
    }

    return NGX_CONF_OK;
}


ngx_http_llm_route_t *
ngx_http_llm_find_route(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf,
    ngx_str_t *name)
{
    ngx_uint_t                  i;
    ngx_http_llm_route_t       *route, **rp;
    ngx_http_llm_provider_t    *p;
    ngx_http_llm_route_peer_t  *peer;

    rp = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        if (rp[i]->name.len == name->len
            && ngx_strncmp(rp[i]->name.data, name->data, name->len) == 0)
        {
            return rp[i];
        }
    }

    /* a provider name is a route of one provider */

    p = ngx_http_llm_find_provider(lmcf, name);
    if (p == NULL) {
        return NULL;
    }

    route = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_route_t));
    if (route == NULL) {
        return NULL;
    }

    if (ngx_array_init(&route->peers, cf->pool, 1,
                       sizeof(ngx_http_llm_route_peer_t))
        != NGX_OK)
    {
        return NULL;
    }

    peer = ngx_array_push(&route->peers);
    if (peer == NULL) {
        return NULL;
    }

    ngx_memzero(peer, sizeof(ngx_http_llm_route_peer_t));

    peer->name = p->name;
    peer->provider = p;
    peer->weight = 1;

    route->name = p->name;
    route->implicit = 1;
    route->declares_models = (p->models != NULL);
    route->next_upstream = NGX_HTTP_LLM_RETRY_DEFAULT;
    route->retry = NGX_HTTP_LLM_RETRY_OWN_DEFAULT;
    route->backoff = NGX_HTTP_LLM_BACKOFF_DEFAULT;

    if (ngx_http_llm_route_peer_conf(cf, route, peer) != NGX_OK) {
        return NULL;
    }

    rp = ngx_array_push(&lmcf->routes);
    if (rp == NULL) {
        return NULL;
    }

    *rp = route;

    return route;
}


static char *
ngx_http_llm_route_directive(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    return ngx_http_llm_dispatch(cf, ngx_http_llm_route_commands, conf,
                                 "llm_route");
}


/*
 * retry off;
 * retry TRIGGER ... [tries=N] [timeout=TIME] [backoff=TIME];
 */

static char *
ngx_http_llm_route_retry(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_route_t *route = conf;

    ngx_int_t              n;
    ngx_str_t             *value, s;
    ngx_msec_t             ms;
    ngx_uint_t             i;
    ngx_http_llm_retry_t  *t;

    if (route->next_upstream != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    route->next_upstream = 0;

    if (cf->args->nelts == 2
        && value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        route->tries = 1;
        return NGX_CONF_OK;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "tries=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);

            if (n == NGX_ERROR || n == 0 || n > NGX_HTTP_LLM_MAX_ATTEMPTS) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": from 1 to %d",
                                   &value[i], NGX_HTTP_LLM_MAX_ATTEMPTS);
                return NGX_CONF_ERROR;
            }

            route->tries = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0
            || ngx_strncmp(value[i].data, "backoff=", 8) == 0)
        {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            ms = ngx_parse_time(&s, 0);

            if (ms == (ngx_msec_t) NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (value[i].data[0] == 't') {
                route->timeout = ms;

            } else {
                route->backoff = ms;
            }

            continue;
        }

        for (t = ngx_http_llm_retries; t->name.len; t++) {
            if (t->name.len == value[i].len
                && ngx_strncmp(t->name.data, value[i].data, value[i].len) == 0)
            {
                route->next_upstream |= t->mask;
                route->retry |= t->retry;
                break;
            }
        }

        if (t->name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid retry trigger \"%V\" (error, "
                               "timeout, 429, 500, 502, 503, 504, 529, "
                               "context_length_exceeded, insufficient_quota, "
                               "overloaded_error, tries=, timeout=, "
                               "backoff=)", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    route->next_upstream |= NGX_HTTP_UPSTREAM_FT_NON_IDEMPOTENT;

    return NGX_CONF_OK;
}


/* sticky KEY: the same key goes to the same provider while it is healthy */

static char *
ngx_http_llm_route_sticky(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_route_t *route = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (route->sticky) {
        return "is duplicate";
    }

    value = cf->args->elts;

    route->sticky = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (route->sticky == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = route->sticky;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The provider of a sticky key: murmur2 of the key into the weights of
 * the providers that serve the request, as split_clients does, whatever
 * their breakers say, so that a key keeps its provider; NULL for an empty
 * key.
 */

static ngx_http_llm_route_peer_t *
ngx_http_llm_sticky_peer(ngx_http_request_t *r, ngx_http_llm_route_t *route,
    u_char *serves)
{
    uint32_t                    hash;
    ngx_str_t                   key;
    ngx_uint_t                  i, total, part;
    ngx_http_llm_route_peer_t  *peer;

    if (ngx_http_complex_value(r, route->sticky, &key) != NGX_OK
        || key.len == 0)
    {
        return NULL;
    }

    peer = route->peers.elts;
    total = 0;

    for (i = 0; i < route->peers.nelts; i++) {
        if (serves[i] && !peer[i].fallback) {
            total += peer[i].weight;
        }
    }

    if (total == 0) {
        return NULL;
    }

    hash = ngx_murmur_hash2(key.data, key.len);
    part = hash % total;

    for (i = 0; i < route->peers.nelts; i++) {

        if (!serves[i] || peer[i].fallback) {
            continue;
        }

        if (part < (ngx_uint_t) peer[i].weight) {
            return &peer[i];
        }

        part -= peer[i].weight;
    }

    return NULL;
}


/*
 * The upstream configuration of a provider in a route: the provider's,
 * with the route's retry policy, and the provider's peers behind the
 * gateway's own peer, which moves on to the next provider.  A reply the
 * gateway retries itself (a 529, an error type) ends as an invalid header.
 * Until the first byte of a stream the read timeout is the provider's
 * first_byte_timeout.
 */

ngx_int_t
ngx_http_llm_route_peer_conf(ngx_conf_t *cf, ngx_http_llm_route_t *route,
    ngx_http_llm_route_peer_t *peer)
{
    ngx_http_llm_provider_t   *p;
    ngx_http_upstream_conf_t  *conf;

    p = peer->provider;

    conf = ngx_palloc(cf->pool, sizeof(ngx_http_upstream_conf_t));
    if (conf == NULL) {
        return NGX_ERROR;
    }

    *conf = p->upstream;

    conf->next_upstream = route->next_upstream
                          | NGX_HTTP_UPSTREAM_FT_INVALID_HEADER
                          | NGX_HTTP_UPSTREAM_FT_NON_IDEMPOTENT;
    conf->next_upstream_timeout = route->timeout;
    conf->next_upstream_tries = 0;

    peer->conf = conf;
    peer->conf_first = conf;

    if (p->first_byte_timeout == conf->read_timeout) {
        return NGX_OK;
    }

    conf = ngx_palloc(cf->pool, sizeof(ngx_http_upstream_conf_t));
    if (conf == NULL) {
        return NGX_ERROR;
    }

    *conf = *peer->conf;
    conf->read_timeout = p->first_byte_timeout;

    peer->conf_first = conf;

    return NGX_OK;
}


/*
 * The attempts of a request: the provider that the smooth weighted round
 * robin (per worker) picks, then the other providers of the route by
 * weight, then the fallbacks in order, each only if it speaks the
 * endpoint's format and serves the model; as many as the route's tries,
 * starting over with the providers tried if there are more tries than
 * providers.  The context fallbacks come last, for a request too large
 * for the others.  Returns NGX_DECLINED if no provider serves the request.
 */

ngx_int_t
ngx_http_llm_plan_attempts(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t    rc;
    ngx_uint_t   n;
    ngx_msec_t   wait;

    for (n = 0; /* void */; n++) {

        rc = ngx_http_llm_plan(r, ctx);

        if (rc != NGX_OK) {
            return rc;
        }

        /*
         * the first attempt takes the probe of its provider's breaker if
         * the cooldown is over; if another request (of any worker) took it
         * since the plan was made, the plan is made again without it
         */

        if (ngx_http_llm_breaker_allow(r,
                                   ctx->attempt[ctx->current].peer->provider,
                                   &wait, 1)
            != NGX_DECLINED
            || n == ctx->route->peers.nelts)
        {
            break;
        }
    }

    ngx_http_llm_use_attempt(r, ctx);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_plan(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                   total;
    ngx_uint_t                  i, j, n, max, serves, fit, unfit, context;
    ngx_msec_t                  retry, wait;
    ngx_http_llm_model_t       *m, *map[NGX_HTTP_LLM_ROUTE_PEERS];
    ngx_http_llm_route_t       *route;
    ngx_http_llm_attempt_t     *a;
    ngx_http_llm_route_peer_t  *peer, *best, *sticky, *probe;
    u_char                      ok[NGX_HTTP_LLM_ROUTE_PEERS];
    u_char                      serving[NGX_HTTP_LLM_ROUTE_PEERS];

    route = ctx->route;
    peer = route->peers.elts;

    /* who may take the request: the format, the model, the breaker */

    serves = 0;
    retry = 0;
    context = 0;
    probe = NULL;

    for (i = 0; i < route->peers.nelts; i++) {

        ok[i] = ngx_http_llm_serves(&peer[i], ctx->endpoint, &ctx->model,
                                    &map[i]);
        serving[i] = ok[i];

        if (!ok[i]) {
            continue;
        }

        if (peer[i].fallback == NGX_HTTP_LLM_FALLBACK_CONTEXT) {
            context++;
            continue;
        }

        serves++;

        switch (ngx_http_llm_breaker_allow(r, peer[i].provider, &wait, 0)) {

        case NGX_DECLINED:
            ok[i] = 0;

            if (retry == 0 || wait < retry) {
                retry = wait;
            }

            break;

        case NGX_DONE:
            /* the cooldown is over: it is probed first, or it waits */
            if (probe == NULL) {
                probe = &peer[i];
            }

            break;

        default: /* NGX_OK */
            break;
        }
    }

    /* a request larger than a model takes goes to a context fallback */

    if (context) {
        fit = 0;
        unfit = 0;

        for (i = 0; i < route->peers.nelts; i++) {
            if (ok[i] && peer[i].fallback != NGX_HTTP_LLM_FALLBACK_CONTEXT) {
                if (ngx_http_llm_fits(r, ctx, &peer[i], map[i])) {
                    fit++;

                } else {
                    ok[i] = 2;
                    unfit++;
                }
            }
        }

        ctx->context = (unfit && fit == 0);
    }

    best = NULL;
    m = NULL;
    total = 0;

    for (i = 0; i < route->peers.nelts; i++) {

        if (peer[i].fallback || ok[i] != 1) {
            continue;
        }

        peer[i].current += peer[i].weight;
        total += peer[i].weight;

        if (best == NULL || peer[i].current > best->current) {
            best = &peer[i];
            m = map[i];
        }
    }

    max = route->tries ? route->tries : NGX_HTTP_LLM_MAX_ATTEMPTS;
    a = ctx->attempt;
    n = 0;

    if (best) {
        best->current -= total;

        /* a sticky key's provider, if it is healthy, comes first */

        sticky = route->sticky ? ngx_http_llm_sticky_peer(r, route, serving)
                               : NULL;

        if (sticky && ok[sticky - peer] == 1) {
            best = sticky;
            m = map[sticky - peer];
        }

        /*
         * a provider whose cooldown is over is tried first, as the probe
         * of its breaker: else the probe might never be made, and the
         * breaker would wait another cooldown
         */

        if (probe && ok[probe - peer] == 1 && !probe->fallback) {
            best = probe;
            m = map[probe - peer];
        }

        a[0].peer = best;
        a[0].map = m;
        n = 1;
    }

    /* the others by weight, heaviest first */

    while (n < max) {
        best = NULL;

        for (i = 0; i < route->peers.nelts; i++) {

            if (peer[i].fallback || ok[i] != 1
                || (best && peer[i].weight <= best->weight))
            {
                continue;
            }

            for (j = 0; j < n; j++) {
                if (a[j].peer == &peer[i]) {
                    break;
                }
            }

            if (j == n) {
                best = &peer[i];
                m = map[i];
            }
        }

        if (best == NULL) {
            break;
        }

        a[n].peer = best;
        a[n].map = m;
        n++;
    }

    for (i = 0; i < route->peers.nelts && n < max; i++) {
        if (peer[i].fallback == NGX_HTTP_LLM_FALLBACK && ok[i] == 1) {
            a[n].peer = &peer[i];
            a[n].map = map[i];
            n++;
        }
    }

    /* more tries than providers: the providers again, in the same order */

    for (j = n, i = 0;
         n && j < route->tries
         && j < NGX_HTTP_LLM_MAX_ATTEMPTS - route->context;
         j++)
    {
        a[j] = a[i++];
        a[j].repeat = 1;
    }

    if (j == 0 && !ctx->context) {
        /* none serves the model, or every breaker is open */
        ctx->nattempts = 0;
        ctx->retry = retry;
        return serves ? NGX_BUSY : NGX_DECLINED;
    }

    /* too large for every provider: the context fallbacks first */

    ctx->current = ctx->context ? j : 0;

    for (i = 0; i < route->peers.nelts && j < NGX_HTTP_LLM_MAX_ATTEMPTS; i++) {
        if (peer[i].fallback == NGX_HTTP_LLM_FALLBACK_CONTEXT && ok[i]) {
            a[j].peer = &peer[i];
            a[j].map = map[i];
            j++;
        }
    }

    ctx->nattempts = j;
    ctx->next = -1;

    return NGX_OK;
}


/*
 * Does the request fit the provider's model?  Its input is estimated at a
 * token per 4 bytes of the request body; the model's max_input_tokens is
 * from the price table.  Unknown limits fit.
 */

static ngx_uint_t
ngx_http_llm_fits(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_route_peer_t *peer, ngx_http_llm_model_t *map)
{
    uint64_t               estimate;
    ngx_http_llm_price_t  *price;

    price = ngx_http_llm_price_lookup(r, peer->provider,
                                      map ? &map->name : &ctx->model,
                                      &ctx->model);

    if (price == NULL || price->max_input_tokens == 0) {
        return 1;
    }

    estimate = (ctx->body.len + 3) / 4;

    if (estimate <= price->max_input_tokens) {
        return 1;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm request of about %uL input tokens is larger than "
                  "the %uL of provider \"%V\"", estimate,
                  price->max_input_tokens, &peer->provider->name);

    return 0;
}


/*
 * The attempt after the current one that the request may make now, and
 * the wait before it; -1 if none:
 *  - after a context_length_exceeded, only the context fallbacks;
 *  - a provider already tried, only after a failure that may pass (an
 *    error, a timeout, 429, 5xx; not a quota or a context error), while
 *    its breaker is not open, after a backoff that doubles each time (at
 *    least the provider's Retry-After) and fits the route's time budget.
 */

ngx_int_t
ngx_http_llm_next_attempt(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t               i, j, k;
    ngx_msec_t               wait, spent;
    ngx_http_llm_route_t    *route;
    ngx_http_llm_attempt_t  *a, *last;

    route = ctx->route;

    for (j = ctx->current + 1; j < ctx->nattempts; j++) {

        a = &ctx->attempt[j];

        if ((a->peer->fallback == NGX_HTTP_LLM_FALLBACK_CONTEXT)
            != ctx->context)
        {
            continue;
        }

        if (ctx->context
            && ngx_http_llm_breaker_allow(r, a->peer->provider, &wait, 0)
               == NGX_DECLINED)
        {
            continue;
        }

        wait = 0;

        if (a->repeat) {
            k = 0;
            last = NULL;

            for (i = 0; i < j; i++) {
                if (ctx->attempt[i].used && ctx->attempt[i].peer == a->peer) {
                    last = &ctx->attempt[i];
                    k++;
                }
            }

            if (last) {
                if (!ngx_http_llm_transient(last)
                    || ngx_http_llm_breaker_allow(r, a->peer->provider,
                                                  &wait, 0)
                       == NGX_DECLINED)
                {
                    continue;
                }

                wait = route->backoff << ngx_min(k - 1, 10);
                wait = wait / 2 + (wait ? (ngx_msec_t) ngx_random()
                                          % (wait / 2 + 1) : 0);

                if (last->retry_after > wait) {
                    wait = last->retry_after;
                }

                spent = ngx_current_msec - r->upstream->peer.start_time;

                if (wait >= a->peer->conf->send_timeout
                    || (route->timeout && spent + wait >= route->timeout))
                {
                    continue;
                }
            }
        }

        ctx->next_wait = wait;

        return j;
    }

    return -1;
}


/* may an attempt that failed so pass if made again? */

static ngx_uint_t
ngx_http_llm_transient(ngx_http_llm_attempt_t *a)
{
    if (a->error == NGX_HTTP_LLM_ERROR_CONTEXT
        || a->error == NGX_HTTP_LLM_ERROR_QUOTA)
    {
        return 0;
    }

    return ngx_http_llm_attempt_failed(a);
}


static ngx_uint_t
ngx_http_llm_serves(ngx_http_llm_route_peer_t *peer, ngx_uint_t endpoint,
    ngx_str_t *model, ngx_http_llm_model_t **map)
{
    ngx_http_llm_provider_t  *p;

    p = peer->provider;

    if (!(p->format->endpoints & ngx_http_llm_endpoint_bit(endpoint))) {
        return 0;
    }

    *map = ngx_http_llm_provider_model(p, model);

    return (*map != NULL || p->models == NULL);
}


/* the provider of the current attempt, with its name of the model */

void
ngx_http_llm_use_attempt(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_model_t    *map;
    ngx_http_llm_attempt_t  *a;

    a = &ctx->attempt[ctx->current];
    map = a->map;

    a->used = 1;

    ctx->provider = a->peer->provider;
    ctx->upstream_model = map ? map->name : ctx->model;

    /* the body is edited only if the provider's name differs */

    ctx->model_map = (map
                      && (map->name.len != ctx->model.len
                          || ngx_strncmp(map->name.data, ctx->model.data,
                                         ctx->model.len) != 0))
                     ? map : NULL;
}


/* "openai:503,deepseek:200": each attempt and how it ended */

u_char *
ngx_http_llm_attempts_text(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    size_t *len)
{
    u_char                  *text, *p;
    size_t                   size;
    ngx_uint_t               i;
    ngx_http_llm_attempt_t  *a;

    size = 0;

    for (i = 0; i < ctx->nattempts; i++) {
        size += ctx->attempt[i].peer->provider->name.len
                + sizeof(":timeout,") - 1;
    }

    text = ngx_pnalloc(r->pool, size ? size : 1);
    if (text == NULL) {
        return NULL;
    }

    p = text;

    for (i = 0; i < ctx->nattempts; i++) {
        a = &ctx->attempt[i];

        if (!a->used) {
            continue;
        }

        if (p != text) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, a->peer->provider->name.data,
                       a->peer->provider->name.len);

        if (a->status && a->failed && a->status < NGX_HTTP_SPECIAL_RESPONSE) {
            /* a reply that the provider broke off after it had begun */
            p = ngx_cpymem(p, ":cut", sizeof(":cut") - 1);

        } else if (a->status) {
            p = ngx_sprintf(p, ":%ui", a->status);

        } else if (i == ctx->current && !a->done && r->upstream
                   && r->upstream->headers_in.status_n)
        {
            /* under way: the status of its reply so far */
            p = ngx_sprintf(p, ":%ui", r->upstream->headers_in.status_n);

        } else if (a->timeout) {
            p = ngx_cpymem(p, ":timeout", sizeof(":timeout") - 1);

        } else if (a->done) {
            p = ngx_cpymem(p, ":error", sizeof(":error") - 1);
        }
    }

    *len = p - text;

    return text;
}


ngx_uint_t
ngx_http_llm_attempts_made(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < ctx->nattempts; i++) {
        n += ctx->attempt[i].used;
    }

    return n;
}


/*
 * Did the attempt fail, for the provider's breaker?  An error, a timeout,
 * a 429 or a 5xx; the request's own faults (400, 413, ...) are not the
 * provider's.
 */

ngx_uint_t
ngx_http_llm_attempt_failed(ngx_http_llm_attempt_t *a)
{
    return a->status == 0
           || a->status == NGX_HTTP_TOO_MANY_REQUESTS
           || a->status >= NGX_HTTP_INTERNAL_SERVER_ERROR;
}
