
/*
 * nginx-llm-gateway: the llm_provider block and the upstream configuration
 * of each provider.
 */


#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_KEEPALIVE_DEFAULT  32


static char *ngx_http_llm_provider_directive(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);
static char *ngx_http_llm_provider_format(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_provider_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_provider_model_cmd(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llm_provider_keepalive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llm_provider_init(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p);
static char *ngx_http_llm_provider_url(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p);
static ngx_int_t ngx_http_llm_provider_headers(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p);
static ngx_int_t ngx_http_llm_provider_upstream(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p);
#if (NGX_HTTP_SSL)
static ngx_int_t ngx_http_llm_provider_ssl(ngx_conf_t *cf,
    ngx_http_llm_provider_t *p);
#endif
static ngx_int_t ngx_http_llm_init_upstream(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_llm_keepalive_enable(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us, ngx_int_t n);
static ngx_int_t ngx_http_llm_safe_header_value(ngx_str_t *s);


extern ngx_module_t  ngx_http_upstream_keepalive_module;


static ngx_command_t  ngx_http_llm_provider_commands[] = {

    { ngx_string("format"),
      NGX_CONF_TAKE1,
      ngx_http_llm_provider_format,
      0,
      0,
      NULL },

    { ngx_string("url"),
      NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      0,
      offsetof(ngx_http_llm_provider_t, url),
      NULL },

    { ngx_string("key"),
      NGX_CONF_TAKE1,
      ngx_http_llm_provider_key,
      0,
      0,
      NULL },

    { ngx_string("key_env"),
      NGX_CONF_TAKE1,
      ngx_http_llm_provider_key,
      0,
      0,
      NULL },

    { ngx_string("key_file"),
      NGX_CONF_TAKE1,
      ngx_http_llm_provider_key,
      0,
      0,
      NULL },

    { ngx_string("model"),
      NGX_CONF_TAKE12,
      ngx_http_llm_provider_model_cmd,
      0,
      0,
      NULL },

    { ngx_string("host"),
      NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      0,
      offsetof(ngx_http_llm_provider_t, host),
      NULL },

    { ngx_string("header"),
      NGX_CONF_TAKE2,
      ngx_conf_set_keyval_slot,
      0,
      offsetof(ngx_http_llm_provider_t, headers),
      NULL },

    { ngx_string("connect_timeout"),
      NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      0,
      offsetof(ngx_http_llm_provider_t, upstream.connect_timeout),
      NULL },

    { ngx_string("send_timeout"),
      NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      0,
      offsetof(ngx_http_llm_provider_t, upstream.send_timeout),
      NULL },

    { ngx_string("read_timeout"),
      NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      0,
      offsetof(ngx_http_llm_provider_t, upstream.read_timeout),
      NULL },

    { ngx_string("first_byte_timeout"),
      NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      0,
      offsetof(ngx_http_llm_provider_t, first_byte_timeout),
      NULL },

    { ngx_string("buffer_size"),
      NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      0,
      offsetof(ngx_http_llm_provider_t, upstream.buffer_size),
      NULL },

    { ngx_string("keepalive"),
      NGX_CONF_TAKE1,
      ngx_http_llm_provider_keepalive,
      0,
      0,
      NULL },

    { ngx_string("breaker"),
      NGX_CONF_1MORE,
      ngx_http_llm_breaker_conf,
      0,
      0,
      NULL },

    { ngx_string("stream_usage"),
      NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      0,
      offsetof(ngx_http_llm_provider_t, stream_usage),
      NULL },

#if (NGX_HTTP_SSL)

    { ngx_string("ssl_verify"),
      NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      0,
      offsetof(ngx_http_llm_provider_t, upstream.ssl_verify),
      NULL },

    { ngx_string("ssl_verify_depth"),
      NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      0,
      offsetof(ngx_http_llm_provider_t, ssl_verify_depth),
      NULL },

    { ngx_string("ssl_trusted_certificate"),
      NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      0,
      offsetof(ngx_http_llm_provider_t, ssl_trusted_certificate),
      NULL },

#endif

      ngx_null_command
};


static ngx_str_t  ngx_http_llm_hide_headers[] = {
    ngx_string("Date"),
    ngx_string("Server"),
    ngx_string("X-Pad"),
    ngx_string("X-Accel-Expires"),
    ngx_string("X-Accel-Redirect"),
    ngx_string("X-Accel-Limit-Rate"),
    ngx_string("X-Accel-Buffering"),
    ngx_string("X-Accel-Charset"),
    ngx_string("Set-Cookie"),
    ngx_string("Location"),
    ngx_string("Refresh"),
    ngx_string("WWW-Authenticate"),
    ngx_string("Proxy-Authenticate"),
    ngx_string("Alt-Svc"),
    ngx_string("Strict-Transport-Security"),
    ngx_string("OpenAI-Organization"),
    ngx_string("OpenAI-Project"),
    ngx_string("Anthropic-Organization-Id"),
    ngx_null_string
};


char *
ngx_http_llm_provider_block(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                      *rv;
    ngx_str_t                 *value;
    ngx_conf_t                 save;
    ngx_http_llm_provider_t   *p, **pp;

    value = cf->args->elts;

    if (ngx_http_llm_find_provider(lmcf, &value[1]) != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate llm provider \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    p = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_provider_t));
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     p->format = NULL;
     *     p->url = { 0, NULL };
     *     p->host = { 0, NULL };
     *     p->key = { 0, NULL };
     *     p->models = NULL;
     */

    p->name = value[1];
    p->file = cf->conf_file->file.name.data;
    p->line = cf->conf_file->line;
    p->headers = NGX_CONF_UNSET_PTR;
    p->keepalive = NGX_CONF_UNSET;
    p->stream_usage = NGX_CONF_UNSET;
    p->breaker_failures = NGX_CONF_UNSET;
    p->breaker_rate = NGX_CONF_UNSET_UINT;
    p->breaker_window = NGX_CONF_UNSET_MSEC;
    p->breaker_cooldown = NGX_CONF_UNSET_MSEC;

    p->upstream.connect_timeout = NGX_CONF_UNSET_MSEC;
    p->upstream.send_timeout = NGX_CONF_UNSET_MSEC;
    p->upstream.read_timeout = NGX_CONF_UNSET_MSEC;
    p->first_byte_timeout = NGX_CONF_UNSET_MSEC;
    p->upstream.buffer_size = NGX_CONF_UNSET_SIZE;

#if (NGX_HTTP_SSL)
    p->upstream.ssl_verify = NGX_CONF_UNSET;
    p->ssl_verify_depth = NGX_CONF_UNSET_UINT;
#endif

    pp = ngx_array_push(&lmcf->providers);
    if (pp == NULL) {
        return NGX_CONF_ERROR;
    }

    *pp = p;

    save = *cf;
    cf->handler = ngx_http_llm_provider_directive;
    cf->handler_conf = (char *) p;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    return ngx_http_llm_provider_init(cf, p);
}


static char *
ngx_http_llm_provider_directive(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    return ngx_http_llm_dispatch(cf, ngx_http_llm_provider_commands, conf,
                                 "llm_provider");
}


char *
ngx_http_llm_dispatch(ngx_conf_t *cf, ngx_command_t *cmds, void *conf,
    char *block)
{
    char           *rv;
    ngx_str_t      *value;
    ngx_uint_t      n, ok;
    ngx_command_t  *cmd;

    value = cf->args->elts;
    n = cf->args->nelts - 1;

    for (cmd = cmds; cmd->name.len; cmd++) {

        if (cmd->name.len != value[0].len
            || ngx_strncmp(cmd->name.data, value[0].data, value[0].len) != 0)
        {
            continue;
        }

        switch (cmd->type) {
        case NGX_CONF_TAKE1:
        case NGX_CONF_FLAG:
            ok = (n == 1);
            break;
        case NGX_CONF_TAKE2:
            ok = (n == 2);
            break;
        case NGX_CONF_TAKE12:
            ok = (n == 1 || n == 2);
            break;
        case NGX_CONF_2MORE:
            ok = (n >= 2);
            break;
        default:
            ok = (n >= 1);
        }

        if (!ok) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid number of arguments in \"%V\" "
                               "directive of %s", &value[0], block);
            return NGX_CONF_ERROR;
        }

        rv = cmd->set(cf, cmd, conf);

        if (rv == NGX_CONF_OK || rv == NGX_CONF_ERROR) {
            return rv;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" directive %s",
                           &value[0], rv);
        return NGX_CONF_ERROR;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown directive \"%V\" in %s", &value[0], block);
    return NGX_CONF_ERROR;
}


static char *
ngx_http_llm_provider_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_provider_t *p = conf;

    ngx_str_t  *value;

    if (p->format) {
        return "is duplicate";
    }

    value = cf->args->elts;

    p->format = ngx_http_llm_format(&value[1]);

    if (p->format == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown llm format \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The key is read once, in the master process, and never appears in a log
 * message: errors name the variable or the file, not the value.
 */

static char *
ngx_http_llm_provider_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_provider_t *p = conf;

    char             *env;
    u_char           *buf;
    size_t            len, i;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, name;
    ngx_file_info_t   fi;

    if (p->key.data) {
        return "is duplicate (one of key, key_env and key_file)";
    }

    value = cf->args->elts;

    if (cmd->name.len == 3) {
        p->key = value[1];

    } else if (cmd->name.data[4] == 'e') {

        env = getenv((char *) value[1].data);

        if (env == NULL || *env == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "environment variable \"%V\" of provider "
                               "\"%V\" is not set", &value[1], &p->name);
            return NGX_CONF_ERROR;
        }

        len = ngx_strlen(env);

        p->key.data = ngx_pnalloc(cf->pool, len);
        if (p->key.data == NULL) {
            return NGX_CONF_ERROR;
        }

        p->key.len = len;
        ngx_memcpy(p->key.data, env, len);

    } else {
        name = value[1];

        if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

        if (fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               ngx_open_file_n " \"%s\" failed", name.data);
            return NGX_CONF_ERROR;
        }

        buf = NULL;
        n = -1;

        if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR
            && ngx_file_size(&fi) > 0 && ngx_file_size(&fi) <= 65536)
        {
            buf = ngx_pnalloc(cf->pool, ngx_file_size(&fi));
            if (buf != NULL) {
                n = ngx_read_fd(fd, buf, ngx_file_size(&fi));
            }
        }

        ngx_close_file(fd);

        if (n <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "key file \"%s\" is empty, too large or "
                               "unreadable", name.data);
            return NGX_CONF_ERROR;
        }

        /* the first line */

        p->key.data = buf;
        p->key.len = n;

        for (i = 0; i < (size_t) n; i++) {
            if (buf[i] == LF || buf[i] == CR) {
                p->key.len = i;
                break;
            }
        }
    }

    while (p->key.len
           && (p->key.data[0] == ' ' || p->key.data[0] == '\t'))
    {
        p->key.data++;
        p->key.len--;
    }

    while (p->key.len
           && (p->key.data[p->key.len - 1] == '\n'
               || p->key.data[p->key.len - 1] == '\r'
               || p->key.data[p->key.len - 1] == '\t'
               || p->key.data[p->key.len - 1] == ' '))
    {
        p->key.len--;
    }

    if (p->key.len == 0 || ngx_http_llm_safe_header_value(&p->key) != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the key of provider \"%V\" is empty or has "
                           "characters not allowed in a header", &p->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_provider_model_cmd(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_provider_t *p = conf;

    ngx_str_t             *value;
    ngx_uint_t             i;
    ngx_http_llm_model_t  *m;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len == 0 || value[i].len > NGX_HTTP_LLM_MODEL_MAX
            || ngx_http_llm_json_text(value[i].data, value[i].len) != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid model name \"%V\": 1 to %d bytes of "
                               "UTF-8 text", &value[i],
                               NGX_HTTP_LLM_MODEL_MAX);
            return NGX_CONF_ERROR;
        }
    }

    if (p->models == NULL) {
        p->models = ngx_array_create(cf->pool, 4,
                                     sizeof(ngx_http_llm_model_t));
        if (p->models == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_llm_provider_model(p, &value[1]) != NULL) {
        return "is duplicate";
    }

    m = ngx_array_push(p->models);
    if (m == NULL) {
        return NGX_CONF_ERROR;
    }

    m->alias = value[1];
    m->name = (cf->args->nelts == 3) ? value[2] : value[1];

    /* the name as it goes into a request body: a JSON string */

    m->json.len = m->name.len + 2
                  + ngx_escape_json(NULL, m->name.data, m->name.len);

    m->json.data = ngx_pnalloc(cf->pool, m->json.len);
    if (m->json.data == NULL) {
        return NGX_CONF_ERROR;
    }

    m->json.data[0] = '"';
    ngx_escape_json(m->json.data + 1, m->name.data, m->name.len);
    m->json.data[m->json.len - 1] = '"';

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_provider_keepalive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_provider_t *p = conf;

    ngx_str_t  *value;

    if (p->keepalive != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        p->keepalive = 0;
        return NGX_CONF_OK;
    }

    p->keepalive = ngx_atoi(value[1].data, value[1].len);

    if (p->keepalive == NGX_ERROR || p->keepalive == 0) {
        return "has an invalid value (a number or \"off\")";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_provider_init(ngx_conf_t *cf, ngx_http_llm_provider_t *p)
{
    char  *rv;

    if (p->url.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no \"url\" in llm_provider \"%V\"", &p->name);
        return NGX_CONF_ERROR;
    }

    if (p->format == NULL) {
        p->format = &ngx_http_llm_format_openai;
    }

    ngx_conf_init_value(p->keepalive, NGX_HTTP_LLM_KEEPALIVE_DEFAULT);
    ngx_conf_init_value(p->stream_usage, 1);
    ngx_conf_init_value(p->breaker_failures, 0);
    ngx_conf_init_msec_value(p->breaker_cooldown, 30000);
    ngx_conf_init_uint_value(p->breaker_rate, 50);
    ngx_conf_init_msec_value(p->breaker_window, 60000);

    rv = ngx_http_llm_provider_url(cf, p);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_http_llm_provider_upstream(cf, p) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llm_provider_headers(cf, p) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_provider_url(ngx_conf_t *cf, ngx_http_llm_provider_t *p)
{
    size_t      add;
    u_char     *h;
    in_port_t   port;
    ngx_url_t   u;

    if (ngx_strncasecmp(p->url.data, (u_char *) "http://", 7) == 0) {
        add = 7;
        port = 80;

    } else if (ngx_strncasecmp(p->url.data, (u_char *) "https://", 8) == 0) {

#if (NGX_HTTP_SSL)
        add = 8;
        port = 443;
        p->ssl = 1;
#else
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "https providers need nginx built with ssl");
        return NGX_CONF_ERROR;
#endif

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid url \"%V\" in llm_provider \"%V\": "
                           "it must start with http:// or https://",
                           &p->url, &p->name);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.len = p->url.len - add;
    u.url.data = p->url.data + add;
    u.default_port = port;
    u.uri_part = 1;
    u.no_resolve = 1;

    /* the url is parsed by ngx_http_upstream_add(), as for proxy_pass */

    p->upstream.upstream = ngx_http_upstream_add(cf, &u, 0);
    if (p->upstream.upstream == NULL) {
        return NGX_CONF_ERROR;
    }

    p->base = u.uri;

    while (p->base.len && p->base.data[p->base.len - 1] == '/') {
        p->base.len--;
    }

    if (p->host.len) {
        p->sni = p->host;
        return NGX_CONF_OK;
    }

    p->host = u.host;
    p->sni = u.host;

    if (!u.no_port && u.port != port) {
        h = ngx_pnalloc(cf->pool, p->host.len + sizeof(":65535") - 1);
        if (h == NULL) {
            return NGX_CONF_ERROR;
        }

        p->host.len = ngx_sprintf(h, "%V:%d", &p->host, (int) u.port) - h;
        p->host.data = h;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_provider_headers(ngx_conf_t *cf, ngx_http_llm_provider_t *p)
{
    u_char        *d;
    size_t         len;
    ngx_uint_t     i;
    ngx_keyval_t  *kv;

    len = sizeof("Host: " CRLF) - 1 + p->host.len;

    if (p->key.len) {
        len += p->format->auth.len + p->key.len + sizeof(CRLF) - 1;
    }

    if (p->headers != NGX_CONF_UNSET_PTR) {
        kv = p->headers->elts;

        for (i = 0; i < p->headers->nelts; i++) {
            if (ngx_http_llm_safe_header_value(&kv[i].key) != NGX_OK
                || ngx_http_llm_safe_header_value(&kv[i].value) != NGX_OK)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid header \"%V\" in llm_provider "
                                   "\"%V\"", &kv[i].key, &p->name);
                return NGX_ERROR;
            }

            len += kv[i].key.len + sizeof(": " CRLF) - 1 + kv[i].value.len;
        }
    }

    d = ngx_pnalloc(cf->pool, len);
    if (d == NULL) {
        return NGX_ERROR;
    }

    p->fixed_headers.data = d;

    d = ngx_sprintf(d, "Host: %V" CRLF, &p->host);

    if (p->key.len) {
        d = ngx_sprintf(d, "%V%V" CRLF, &p->format->auth, &p->key);
    }

    if (p->headers != NGX_CONF_UNSET_PTR) {
        kv = p->headers->elts;

        for (i = 0; i < p->headers->nelts; i++) {
            d = ngx_sprintf(d, "%V: %V" CRLF, &kv[i].key, &kv[i].value);
        }
    }

    p->fixed_headers.len = d - p->fixed_headers.data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_provider_upstream(ngx_conf_t *cf, ngx_http_llm_provider_t *p)
{
    ngx_hash_init_t                hash;
    ngx_http_upstream_conf_t      *u, prev;
    ngx_http_upstream_srv_conf_t  *uscf;

    u = &p->upstream;

    ngx_conf_init_msec_value(u->connect_timeout, 10000);
    ngx_conf_init_msec_value(u->send_timeout, 60000);
    ngx_conf_init_msec_value(u->read_timeout, 300000);
    ngx_conf_init_msec_value(p->first_byte_timeout, u->read_timeout);
    ngx_conf_init_size_value(u->buffer_size, 16384);

    u->next_upstream = NGX_HTTP_UPSTREAM_FT_ERROR
                       |NGX_HTTP_UPSTREAM_FT_TIMEOUT;
    u->next_upstream_tries = 0;
    u->next_upstream_timeout = 0;

    u->buffering = 0;
    u->request_buffering = 1;
    u->pass_request_headers = 0;
    u->pass_request_body = 0;
    u->ignore_client_abort = 0;
    u->intercept_errors = 0;
    u->socket_keepalive = 0;
    u->local = NULL;
    u->preserve_output = 1;

    /*
     * nginx obeys these headers from an upstream (an X-Accel-Redirect to
     * an internal location, say): a provider gets no such say
     */

    u->ignore_headers = NGX_HTTP_UPSTREAM_IGN_XA_REDIRECT
                        |NGX_HTTP_UPSTREAM_IGN_XA_EXPIRES
                        |NGX_HTTP_UPSTREAM_IGN_XA_LIMIT_RATE
                        |NGX_HTTP_UPSTREAM_IGN_XA_BUFFERING
                        |NGX_HTTP_UPSTREAM_IGN_XA_CHARSET
                        |NGX_HTTP_UPSTREAM_IGN_EXPIRES
                        |NGX_HTTP_UPSTREAM_IGN_CACHE_CONTROL
                        |NGX_HTTP_UPSTREAM_IGN_SET_COOKIE
                        |NGX_HTTP_UPSTREAM_IGN_VARY;

    ngx_str_set(&u->module, "llm");

    u->hide_headers = NGX_CONF_UNSET_PTR;
    u->pass_headers = NGX_CONF_UNSET_PTR;

    ngx_memzero(&prev, sizeof(ngx_http_upstream_conf_t));
    prev.hide_headers = NGX_CONF_UNSET_PTR;
    prev.pass_headers = NGX_CONF_UNSET_PTR;

    hash.max_size = 512;
    hash.bucket_size = ngx_align(64, ngx_cacheline_size);
    hash.name = "llm_provider_headers_hash";

    if (ngx_http_upstream_hide_headers_hash(cf, u, &prev,
                                            ngx_http_llm_hide_headers, &hash)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

#if (NGX_HTTP_SSL)
    if (p->ssl && ngx_http_llm_provider_ssl(cf, p) != NGX_OK) {
        return NGX_ERROR;
    }
#endif

    /*
     * A url that names a host (not an upstream{} block) is initialized
     * through our hook: a copy of the upstream for this provider, with
     * nginx's own keepalive cache enabled on it.
     */

    uscf = u->upstream;

    if (!(uscf->flags & NGX_HTTP_UPSTREAM_CREATE)
        && (uscf->peer.init_upstream == NULL
            || uscf->peer.init_upstream == ngx_http_llm_init_upstream))
    {
        uscf->peer.init_upstream = ngx_http_llm_init_upstream;
    }

    return NGX_OK;
}


#if (NGX_HTTP_SSL)

static ngx_int_t
ngx_http_llm_provider_ssl(ngx_conf_t *cf, ngx_http_llm_provider_t *p)
{
    ngx_str_t                          ciphers;
    ngx_ssl_t                         *ssl;
    ngx_pool_cleanup_t                *cln;
    ngx_http_upstream_conf_t          *u;
    ngx_http_compile_complex_value_t   ccv;

    u = &p->upstream;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    ngx_str_set(&ciphers, "DEFAULT");

    if (ngx_ssl_ciphers(cf, ssl, &ciphers, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    u->ssl = ssl;
    u->ssl_session_reuse = 1;
    u->ssl_server_name = 1;
    u->ssl_certificate = NULL;
    u->ssl_certificate_key = NULL;
    u->ssl_passwords = NULL;

    ngx_conf_init_value(u->ssl_verify, 1);
    ngx_conf_init_uint_value(p->ssl_verify_depth, 4);

    u->ssl_name = ngx_pcalloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (u->ssl_name == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &p->sni;
    ccv.complex_value = u->ssl_name;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!u->ssl_verify) {
        return NGX_OK;
    }

    if (p->ssl_trusted_certificate.len == 0) {
        ngx_str_set(&p->ssl_trusted_certificate,
                    "/etc/ssl/certs/ca-certificates.crt");
    }

    if (ngx_ssl_trusted_certificate(cf, ssl, &p->ssl_trusted_certificate,
                                    p->ssl_verify_depth)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}

#endif


/*
 * The upstream of a url that names a host is shared by every provider
 * (and proxy_pass) with the same host and port.  Each provider gets a copy
 * of its own, so that keepalive connections, and the TLS settings they
 * were verified with, never pass from one provider to another.
 */

static ngx_int_t
ngx_http_llm_init_upstream(ngx_conf_t *cf, ngx_http_upstream_srv_conf_t *us)
{
    ngx_uint_t                      i;
    ngx_http_llm_provider_t       **pp;
    ngx_http_llm_main_conf_t       *lmcf;
    ngx_http_upstream_srv_conf_t    orig, *uscf;
    ngx_http_upstream_init_pt       init;

    us->peer.init_upstream = NULL;

    if (us->flags & NGX_HTTP_UPSTREAM_CREATE) {
        /* an upstream{} block with this name was defined after all */
        return ngx_http_upstream_init_round_robin(cf, us);
    }

    orig = *us;

    if (ngx_http_upstream_init_round_robin(cf, us) != NGX_OK) {
        return NGX_ERROR;
    }

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
    pp = lmcf->providers.elts;

    for (i = 0; i < lmcf->providers.nelts; i++) {

        if (pp[i]->upstream.upstream != us) {
            continue;
        }

        uscf = ngx_palloc(cf->pool, sizeof(ngx_http_upstream_srv_conf_t));
        if (uscf == NULL) {
            return NGX_ERROR;
        }

        *uscf = orig;

        if (pp[i]->keepalive
            && ngx_http_llm_keepalive_enable(cf, uscf, pp[i]->keepalive)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        init = uscf->peer.init_upstream ? uscf->peer.init_upstream
                                        : ngx_http_upstream_init_round_robin;

        if (init(cf, uscf) != NGX_OK) {
            return NGX_ERROR;
        }

        pp[i]->upstream.upstream = uscf;
    }

    return NGX_OK;
}


/*
 * Enables nginx's upstream keepalive module on an implicit upstream, the
 * same way the "keepalive" directive does inside an upstream{} block.
 */

static ngx_int_t
ngx_http_llm_keepalive_enable(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us, ngx_int_t n)
{
    void                 *kcf;
    ngx_str_t            *arg;
    ngx_conf_t            conf;
    ngx_command_t        *cmd;
    ngx_http_module_t    *module;
    ngx_http_conf_ctx_t   ctx;

    module = ngx_http_upstream_keepalive_module.ctx;

    for (cmd = ngx_http_upstream_keepalive_module.commands;
         cmd->name.len;
         cmd++)
    {
        if (cmd->name.len == sizeof("keepalive") - 1
            && ngx_strncmp(cmd->name.data, "keepalive", cmd->name.len) == 0)
        {
            break;
        }
    }

    if (cmd->name.len == 0 || module->create_srv_conf == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "upstream keepalive is not available");
        return NGX_ERROR;
    }

    kcf = module->create_srv_conf(cf);
    if (kcf == NULL) {
        return NGX_ERROR;
    }

    us->srv_conf = ngx_pcalloc(cf->pool, sizeof(void *) * ngx_http_max_module);
    if (us->srv_conf == NULL) {
        return NGX_ERROR;
    }

    us->srv_conf[ngx_http_upstream_module.ctx_index] = us;
    us->srv_conf[ngx_http_upstream_keepalive_module.ctx_index] = kcf;

    ctx = *(ngx_http_conf_ctx_t *) cf->ctx;
    ctx.srv_conf = us->srv_conf;

    conf = *cf;
    conf.ctx = &ctx;

    conf.args = ngx_array_create(cf->temp_pool, 2, sizeof(ngx_str_t));
    if (conf.args == NULL) {
        return NGX_ERROR;
    }

    arg = ngx_array_push_n(conf.args, 2);
    if (arg == NULL) {
        return NGX_ERROR;
    }

    arg[0] = cmd->name;

    arg[1].data = ngx_pnalloc(cf->temp_pool, NGX_INT_T_LEN);
    if (arg[1].data == NULL) {
        return NGX_ERROR;
    }

    arg[1].len = ngx_sprintf(arg[1].data, "%i", n) - arg[1].data;

    if (cmd->set(&conf, cmd, kcf) != NGX_CONF_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_http_llm_provider_t *
ngx_http_llm_find_provider(ngx_http_llm_main_conf_t *lmcf, ngx_str_t *name)
{
    ngx_uint_t                 i;
    ngx_http_llm_provider_t  **pp;

    pp = lmcf->providers.elts;

    for (i = 0; i < lmcf->providers.nelts; i++) {
        if (pp[i]->name.len == name->len
            && ngx_strncmp(pp[i]->name.data, name->data, name->len) == 0)
        {
            return pp[i];
        }
    }

    return NULL;
}


ngx_http_llm_model_t *
ngx_http_llm_provider_model(ngx_http_llm_provider_t *p, ngx_str_t *alias)
{
    ngx_uint_t             i;
    ngx_http_llm_model_t  *m;

    if (p->models == NULL) {
        return NULL;
    }

    m = p->models->elts;

    for (i = 0; i < p->models->nelts; i++) {
        if (m[i].alias.len == alias->len
            && ngx_strncmp(m[i].alias.data, alias->data, alias->len) == 0)
        {
            return &m[i];
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_llm_safe_header_value(ngx_str_t *s)
{
    u_char  *p, *last;

    last = s->data + s->len;

    for (p = s->data; p < last; p++) {
        if (*p == CR || *p == LF || *p == '\0') {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a header set by the provider's "header" lines */

ngx_uint_t
ngx_http_llm_provider_has_header(ngx_http_llm_provider_t *p,
    u_char *lowcase_key, size_t len)
{
    ngx_uint_t     i;
    ngx_keyval_t  *kv;

    if (p->headers == NGX_CONF_UNSET_PTR) {
        return 0;
    }

    kv = p->headers->elts;

    for (i = 0; i < p->headers->nelts; i++) {
        if (kv[i].key.len == len
            && ngx_strncasecmp(kv[i].key.data, lowcase_key, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}
