
/*
 * nginx-llm-gateway: circuit breakers.
 *
 * A breaker per provider, in the shared zone, the same for every worker:
 * closed; open after the provider failed so many times in a row (or at
 * once, for as long as a 429's Retry-After says); after the cooldown,
 * half-open: one request, and one only across the workers, probes the
 * provider, and closes the breaker or opens it again.  Routes skip the
 * providers whose breaker is open.
 */


#include "ngx_http_llm_module.h"


static ngx_http_llm_breaker_t *ngx_http_llm_breaker_find(
    ngx_http_llm_shctx_t *sh, ngx_str_t *name, ngx_uint_t create);


/* breaker failures=N cooldown=TIME | off */

char *
ngx_http_llm_breaker_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_provider_t *p = conf;

    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (p->breaker_failures != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

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
                       "invalid parameter \"%V\" (failures=N, cooldown=TIME "
                       "or off)", &value[i]);
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


/* how an attempt with the provider ended */

void
ngx_http_llm_breaker_report(ngx_http_request_t *r, ngx_http_llm_provider_t *p,
    ngx_uint_t failed, ngx_msec_t retry_after)
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

    open = failed ? retry_after : 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    b = ngx_http_llm_breaker_find(zone->sh, &p->name, failed);

    if (b == NULL) {
        goto done;
    }

    if (!failed) {
        if (b->state != NGX_HTTP_LLM_CLOSED) {
            ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                          "llm provider \"%V\": breaker closed", &p->name);
        }

        b->state = NGX_HTTP_LLM_CLOSED;
        b->failures = 0;
        goto done;
    }

    b->failures++;

    if (b->state == NGX_HTTP_LLM_HALF_OPEN
        || b->failures >= (ngx_uint_t) p->breaker_failures
        || open)
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
                      "%ui failure(s) in a row", &p->name, open,
                      b->failures);
    }

done:

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


static ngx_http_llm_breaker_t *
ngx_http_llm_breaker_find(ngx_http_llm_shctx_t *sh, ngx_str_t *name,
    ngx_uint_t create)
{
    size_t                   len;
    uint32_t                 hash;
    ngx_uint_t               i;
    ngx_http_llm_breaker_t  *b, *free;

    len = ngx_min(name->len, sizeof(b->name));
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


/* "breakers":{"openai":{"state":"open","failures":5,"opened":1},...} */

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
                        "\"opened\":%uL}", states[b->state], b->failures,
                        b->opened);
    }

    *p++ = '}';

    return p;
}
