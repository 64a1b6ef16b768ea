
/*
 * nginx-llm-gateway: circuit breakers.
 *
 * A breaker per provider, in the shared zone, the same for every worker:
 * closed; open when, over a sliding window, the provider failed at least
 * so many times and in at least such a share of its attempts (or at once,
 * for as long as a Retry-After says); after the cooldown, half-open: one
 * request, and one only across the workers, probes the provider, and
 * closes the breaker or opens it again.  Routes skip the providers whose
 * breaker is open.
 *
 * The breaker judges the provider, not a client: a read timeout (a reply
 * that takes long, which a client can ask for) counts once per client and
 * window, and a failure needs the provider's other traffic to be failing
 * too, so that no client can open a breaker that every client shares.
 */


#include "ngx_http_llm_module.h"


static ngx_http_llm_breaker_t *ngx_http_llm_breaker_find(
    ngx_http_llm_shctx_t *sh, ngx_str_t *name, ngx_uint_t create);
static void ngx_http_llm_breaker_window(ngx_http_llm_breaker_t *b,
    ngx_http_llm_provider_t *p);
static ngx_uint_t ngx_http_llm_breaker_slow(ngx_http_request_t *r,
    ngx_http_llm_breaker_t *b);
static ngx_uint_t ngx_http_llm_breaker_tripped(ngx_http_llm_breaker_t *b,
    ngx_http_llm_provider_t *p);


/* breaker failures=N [rate=P%] [window=TIME] cooldown=TIME | off */

char *
ngx_http_llm_breaker_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_provider_t *p = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (p->breaker_failures != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (p->name.len > NGX_HTTP_LLM_BREAKER_NAME) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "a provider with a breaker needs a name of at "
                           "most %d bytes", NGX_HTTP_LLM_BREAKER_NAME);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 2
        && value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        p->breaker_failures = 0;
        return NGX_CONF_OK;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "failures=", 9) == 0) {
            p->breaker_failures = ngx_atoi(value[i].data + 9,
                                           value[i].len - 9);

            if (p->breaker_failures == NGX_ERROR
                || p->breaker_failures == 0)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0
            && value[i].len > 6 && value[i].data[value[i].len - 1] == '%')
        {
            n = ngx_atoi(value[i].data + 5, value[i].len - 6);

            if (n == NGX_ERROR || n == 0 || n > 100) {
                goto invalid;
            }

            p->breaker_rate = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            p->breaker_window = ngx_parse_time(&s, 0);

            if (p->breaker_window == (ngx_msec_t) NGX_ERROR
                || p->breaker_window < 1000)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "cooldown=", 9) == 0) {
            s.data = value[i].data + 9;
            s.len = value[i].len - 9;

            p->breaker_cooldown = ngx_parse_time(&s, 0);

            if (p->breaker_cooldown == (ngx_msec_t) NGX_ERROR
                || p->breaker_cooldown == 0)
            {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (p->breaker_failures == NGX_CONF_UNSET) {
        p->breaker_failures = 5;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" (failures=N, rate=P%%, "
                       "window=TIME, cooldown=TIME or off)", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * May the request use the provider?  NGX_OK: yes; NGX_DONE: yes, as the
 * probe of the breaker, whose cooldown is over (with "probe", the request
 * takes the probe: the breaker is half-open, and the others wait);
 * NGX_DECLINED: no, and *retry is when it may be tried.
 */

ngx_int_t
ngx_http_llm_breaker_allow(ngx_http_request_t *r, ngx_http_llm_provider_t *p,
    ngx_msec_t *retry, ngx_uint_t probe)
{
    ngx_int_t                  allow;
    ngx_http_llm_zone_t       *zone;
    ngx_http_llm_breaker_t    *b;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->zone == NULL || p->breaker_failures == 0) {
        return NGX_OK;
    }

    zone = lmcf->zone->data;
    allow = NGX_OK;

    ngx_shmtx_lock(&zone->shpool->mutex);

    b = ngx_http_llm_breaker_find(zone->sh, &p->name, 0);

    if (b && b->state != NGX_HTTP_LLM_CLOSED) {

        if ((ngx_msec_int_t) (ngx_current_msec - b->until) < 0) {
            /* open, or a probe is under way */
            allow = NGX_DECLINED;
            *retry = b->until - ngx_current_msec;

        } else if (probe) {
            /* the cooldown is over (or the probe never told): a probe */
            b->state = NGX_HTTP_LLM_HALF_OPEN;
            b->until = ngx_current_msec + p->breaker_cooldown;
            allow = NGX_DONE;

            ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                          "llm provider \"%V\": breaker half-open, probing",
                          &p->name);

        } else {
            allow = NGX_DONE;
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return allow;
}


/* how an attempt with the provider ended: NGX_HTTP_LLM_ATTEMPT_* */

void
ngx_http_llm_breaker_report(ngx_http_request_t *r, ngx_http_llm_provider_t *p,
    ngx_uint_t result, ngx_msec_t retry_after)
{
    ngx_msec_t                 open;
    ngx_http_llm_zone_t       *zone;
    ngx_http_llm_breaker_t    *b;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->zone == NULL || p->breaker_failures == 0) {
        return;
    }

    zone = lmcf->zone->data;

    open = (result != NGX_HTTP_LLM_ATTEMPT_OK) ? retry_after : 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    b = ngx_http_llm_breaker_find(zone->sh, &p->name, 1);

    if (b == NULL) {
        goto done;
    }

    ngx_http_llm_breaker_window(b, p);

    if (result == NGX_HTTP_LLM_ATTEMPT_OK) {

        if (b->state != NGX_HTTP_LLM_CLOSED) {
            ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                          "llm provider \"%V\": breaker closed", &p->name);

            /* the provider is back: its failures are history */

            b->state = NGX_HTTP_LLM_CLOSED;
            b->window = ngx_current_msec;
            b->attempts = 0;
            b->failures = 0;
            b->prev_attempts = 0;
            b->prev_failures = 0;
            b->nslow = 0;
        }

        b->attempts++;
        goto done;
    }

    if (result == NGX_HTTP_LLM_ATTEMPT_SLOW
        && b->state == NGX_HTTP_LLM_CLOSED
        && !ngx_http_llm_breaker_slow(r, b))
    {
        /* this client's slow attempts have counted in this window */
        goto done;
    }

    b->attempts++;
    b->failures++;

    if (b->state == NGX_HTTP_LLM_HALF_OPEN
        || open
        || (b->state == NGX_HTTP_LLM_CLOSED
            && ngx_http_llm_breaker_tripped(b, p)))
    {
        if (open == 0) {
            open = p->breaker_cooldown;
        }

        if (b->state != NGX_HTTP_LLM_OPEN) {
            b->opened++;
        }

        b->state = NGX_HTTP_LLM_OPEN;
        b->until = ngx_current_msec + open;

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llm provider \"%V\": breaker open for %M ms after "
                      "%ui failure(s) in %ui attempt(s)", &p->name, open,
                      b->failures + b->prev_failures,
                      b->attempts + b->prev_attempts);
    }

done:

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * The window slides: when it is over, it becomes the previous one (or,
 * after a longer silence, both are forgotten).
 */

static void
ngx_http_llm_breaker_window(ngx_http_llm_breaker_t *b,
    ngx_http_llm_provider_t *p)
{
    ngx_msec_t  elapsed;

    elapsed = ngx_current_msec - b->window;

    if (elapsed < p->breaker_window) {
        return;
    }

    if (elapsed < 2 * p->breaker_window) {
        b->prev_attempts = b->attempts;
        b->prev_failures = b->failures;
        b->window += p->breaker_window;

    } else {
        b->prev_attempts = 0;
        b->prev_failures = 0;
        b->window = ngx_current_msec;
    }

    b->attempts = 0;
    b->failures = 0;
    b->nslow = 0;
}


/*
 * Does a slow attempt of this client count?  The first of each client in
 * a window does; the client is its key (else its address).
 */

static ngx_uint_t
ngx_http_llm_breaker_slow(ngx_http_request_t *r, ngx_http_llm_breaker_t *b)
{
    uint32_t    id;
    ngx_str_t   key;
    ngx_uint_t  i;

    if (ngx_http_llm_client_key(r, &key) == NULL || key.len == 0) {
        key = r->connection->addr_text;
    }

    id = ngx_crc32_short(key.data, key.len);

    for (i = 0; i < b->nslow; i++) {
        if (b->slow[i] == id) {
            return 0;
        }
    }

    if (b->nslow < NGX_HTTP_LLM_SLOW_CLIENTS) {
        b->slow[b->nslow++] = id;
    }

    return 1;
}


/*
 * Enough failures, and a large enough share of the attempts, over the
 * window: the previous window counts in proportion to what of it is
 * still within a window of now.
 */

static ngx_uint_t
ngx_http_llm_breaker_tripped(ngx_http_llm_breaker_t *b,
    ngx_http_llm_provider_t *p)
{
    uint64_t  weight, failures, attempts;

    weight = p->breaker_window - (ngx_current_msec - b->window);

    failures = (uint64_t) b->failures * p->breaker_window
               + (uint64_t) b->prev_failures * weight;
    attempts = (uint64_t) b->attempts * p->breaker_window
               + (uint64_t) b->prev_attempts * weight;

    return failures >= (uint64_t) p->breaker_failures * p->breaker_window
           && failures * 100 >= attempts * p->breaker_rate;
}


static ngx_http_llm_breaker_t *
ngx_http_llm_breaker_find(ngx_http_llm_shctx_t *sh, ngx_str_t *name,
    ngx_uint_t create)
{
    size_t                   len;
    uint32_t                 hash;
    ngx_uint_t               i;
    ngx_http_llm_breaker_t  *b, *free;

    len = ngx_min(name->len, NGX_HTTP_LLM_BREAKER_NAME);
    hash = ngx_crc32_short(name->data, len) | 1;

    free = NULL;

    for (i = 0; i < NGX_HTTP_LLM_BREAKERS; i++) {
        b = &sh->breaker[i];

        if (b->hash == hash && b->len == len
            && ngx_strncmp(b->name, name->data, len) == 0)
        {
            return b;
        }

        if (b->hash == 0 && free == NULL) {
            free = b;
        }
    }

    if (!create || free == NULL) {
        return NULL;
    }

    ngx_memzero(free, sizeof(ngx_http_llm_breaker_t));

    free->hash = hash;
    free->len = (u_short) len;
    ngx_memcpy(free->name, name->data, len);
    free->window = ngx_current_msec;

    return free;
}


/* the Retry-After of a 429, 503 or 529, in seconds, as ms; 0 if none */

ngx_msec_t
ngx_http_llm_retry_after(ngx_http_request_t *r)
{
    ngx_int_t         n;
    ngx_uint_t        i, status;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    status = r->upstream->headers_in.status_n;

    if (status != NGX_HTTP_TOO_MANY_REQUESTS
        && status != NGX_HTTP_SERVICE_UNAVAILABLE
        && status != 529)
    {
        return 0;
    }

    part = &r->upstream->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("retry-after") - 1
            && ngx_strncmp(h[i].lowcase_key, "retry-after", h[i].key.len) == 0)
        {
            n = ngx_atoi(h[i].value.data, h[i].value.len);

            return (n > 0 && n < 86400) ? (ngx_msec_t) n * 1000 : 0;
        }
    }
}


/*
 * "breakers":{"openai":{"state":"open","failures":5,"attempts":8,
 * "opened":1},...}: the failures and attempts of the window
 */

u_char *
ngx_http_llm_breaker_status(u_char *p, ngx_http_llm_breaker_t *breakers)
{
    ngx_uint_t               i, first;
    ngx_http_llm_breaker_t  *b;

    static char  *states[] = { "closed", "open", "half-open" };

    p = ngx_cpymem(p, ",\"breakers\":{", sizeof(",\"breakers\":{") - 1);

    first = 1;

    for (i = 0; i < NGX_HTTP_LLM_BREAKERS; i++) {
        b = &breakers[i];

        if (b->hash == 0) {
            continue;
        }

        if (!first) {
            *p++ = ',';
        }

        first = 0;

        *p++ = '"';
        p = (u_char *) ngx_escape_json(p, b->name, b->len);
        p = ngx_sprintf(p, "\":{\"state\":\"%s\",\"failures\":%ui,"
                        "\"attempts\":%ui,\"opened\":%uL}",
                        states[b->state], b->failures + b->prev_failures,
                        b->attempts + b->prev_attempts, b->opened);
    }

    *p++ = '}';

    return p;
}
