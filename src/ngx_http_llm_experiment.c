
/*
 * nginx-llm-gateway: prompt-variant experiments.
 *
 * An experiment splits the requests of its locations between variants by
 * weight, sticky by a key: weighted rendezvous hashing, so that the same
 * key keeps its variant while the weights stay, and raising a variant's
 * weight only moves keys into it.  A variant edits the request before it
 * is planned and forwarded: its system prompt (replaced, prepended or
 * appended, in the client's bytes), its model or route, its temperature,
 * top_p or max_tokens.  With a secret, each reply carries a request id
 * signed with HMAC-SHA256 that names the experiment and the variant, and
 * llm_feedback counts an outcome for it, once.  The statistics of each
 * variant are kept in the llm_zone; the status page compares each variant
 * with the control.
 */


#include "ngx_http_llm_module.h"

#include <math.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>


#define NGX_HTTP_LLM_MODE_REPLACE   1
#define NGX_HTTP_LLM_MODE_PREPEND   2
#define NGX_HTTP_LLM_MODE_APPEND    3


#define NGX_HTTP_LLM_VARIANT_MAX    64

#define ngx_http_llm_name_char(c)                                             \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')                 \
     || ((c) >= '0' && (c) <= '9') || (c) == '_' || (c) == '-')


typedef struct {
    ngx_http_llm_json_value_t    role;
    ngx_http_llm_json_value_t    content;
} ngx_http_llm_message_t;



static char *ngx_http_llm_experiment_directive(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);
static char *ngx_http_llm_experiment_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_experiment_variant(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llm_experiment_secret(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llm_experiment_mde(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_experiment_rollback(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_uint_t ngx_http_llm_variant_rolled_back(ngx_http_request_t *r,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v);
static ngx_int_t ngx_http_llm_shadow(ngx_http_request_t *r,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v);
static void ngx_http_llm_shadow_done(void *data);
static ngx_int_t ngx_http_llm_prompt_file(ngx_conf_t *cf, ngx_str_t *path,
    ngx_str_t *text);
static ngx_int_t ngx_http_llm_variant_system(ngx_conf_t *cf,
    ngx_http_llm_variant_t *v, ngx_str_t *text);
static ngx_str_t *ngx_http_llm_json_text_copy(ngx_pool_t *pool,
    char *prefix, ngx_str_t *text, char *suffix);
static ngx_int_t ngx_http_llm_json_number_text(ngx_str_t *s);
static ngx_http_llm_variant_t *ngx_http_llm_experiment_pick(
    ngx_pool_t *pool, ngx_http_llm_experiment_t *e, ngx_str_t *key);
static ngx_int_t ngx_http_llm_experiment_sign(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_message_member(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
static ngx_uint_t ngx_http_llm_system_edit(ngx_http_llm_variant_t *v,
    ngx_http_llm_json_value_t *content, ngx_http_llm_edit_t *edit);
static ngx_uint_t ngx_http_llm_param_edit(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_json_value_t *value, ngx_str_t *member, ngx_str_t *number,
    ngx_http_llm_edit_t *edit);



static ngx_command_t  ngx_http_llm_experiment_commands[] = {

    { ngx_string("key"),
      NGX_CONF_TAKE1,
      ngx_http_llm_experiment_key,
      0,
      0,
      NULL },

    { ngx_string("variant"),
      NGX_CONF_2MORE,
      ngx_http_llm_experiment_variant,
      0,
      0,
      NULL },

    { ngx_string("header"),
      NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      0,
      offsetof(ngx_http_llm_experiment_t, header),
      NULL },

    { ngx_string("secret_file"),
      NGX_CONF_TAKE1,
      ngx_http_llm_experiment_secret,
      0,
      0,
      NULL },

    { ngx_string("feedback_window"),
      NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      0,
      offsetof(ngx_http_llm_experiment_t, window),
      NULL },

    { ngx_string("mde"),
      NGX_CONF_TAKE1,
      ngx_http_llm_experiment_mde,
      0,
      0,
      NULL },

    { ngx_string("rollback"),
      NGX_CONF_1MORE,
      ngx_http_llm_experiment_rollback,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_str_t  ngx_http_llm_modes[] = {
    ngx_null_string,
    ngx_string("replace"),
    ngx_string("prepend"),
    ngx_string("append"),
    ngx_null_string
};


/* llm_experiment NAME { ... } at the http level */

char *
ngx_http_llm_experiment_block(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                        *rv;
    u_char                      *p;
    ngx_str_t                   *value;
    ngx_uint_t                   i, controls;
    ngx_conf_t                   save;
    ngx_http_llm_variant_t      *v;
    ngx_http_llm_experiment_t   *e, **ep;

    value = cf->args->elts;

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (!ngx_http_llm_name_char(*p)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid experiment name \"%V\" (letters, "
                               "digits, \"_\" and \"-\")", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_llm_find_experiment(lmcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate llm experiment \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    e = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_experiment_t));
    if (e == NULL) {
        return NGX_CONF_ERROR;
    }

    e->name = value[1];
    e->header = NGX_CONF_UNSET;
    e->window = NGX_CONF_UNSET;
    e->mde = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&e->variants, cf->pool, 4,
                       sizeof(ngx_http_llm_variant_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    ep = ngx_array_push(&lmcf->experiments);
    if (ep == NULL) {
        return NGX_CONF_ERROR;
    }

    *ep = e;

    save = *cf;
    cf->handler = ngx_http_llm_experiment_directive;
    cf->handler_conf = (char *) e;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (e->variants.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no variants in llm_experiment \"%V\"", &e->name);
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_value(e->header, 0);
    ngx_conf_init_value(e->window, 7 * 86400);
    ngx_conf_init_uint_value(e->mde, 10);

    /* the control, and a fingerprint of what the variants are */

    v = e->variants.elts;
    controls = 0;
    e->control = NGX_CONF_UNSET_UINT;

    for (i = 0; i < e->variants.nelts; i++) {
        e->weights += v[i].weight;

        if (v[i].control && v[i].shadow) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "variant \"%V\" of llm_experiment \"%V\": "
                               "the control cannot be a shadow", &v[i].name,
                               &e->name);
            return NGX_CONF_ERROR;
        }

        if (v[i].control) {
            e->control = i;
            controls++;

        } else if (!v[i].shadow && e->control == NGX_CONF_UNSET_UINT) {
            e->control = i;
        }

        e->fingerprint = ngx_murmur_hash2(v[i].spec.data, v[i].spec.len)
                         ^ (e->fingerprint * 31);

        if (v[i].system_value) {
            /* the prompt itself, also when it comes from a file */
            e->fingerprint = ngx_murmur_hash2(v[i].system_value->data,
                                              v[i].system_value->len)
                             ^ (e->fingerprint * 31);
        }
    }

    if (controls > 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_experiment \"%V\" has %ui controls",
                           &e->name, controls);
        return NGX_CONF_ERROR;
    }

    if (e->control == NGX_CONF_UNSET_UINT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_experiment \"%V\" has only shadows",
                           &e->name);
        return NGX_CONF_ERROR;
    }

    if (controls == 0) {
        v[e->control].control = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_experiment_directive(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    return ngx_http_llm_dispatch(cf, ngx_http_llm_experiment_commands, conf,
                                 "llm_experiment");
}


static char *
ngx_http_llm_experiment_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_experiment_t *e = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (e->key) {
        return "is duplicate";
    }

    value = cf->args->elts;

    e->key = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (e->key == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = e->key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * variant NAME WEIGHT [control] [system=TEXT | system_file=PATH]
 *     [mode=replace|prepend|append] [model=ALIAS] [route=ROUTE]
 *     [temperature=N] [top_p=N] [max_tokens=N]
 */

static char *
ngx_http_llm_experiment_variant(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_experiment_t *e = conf;

    u_char                  *p;
    size_t                   len;
    ngx_str_t               *value, s, text, name;
    ngx_int_t                w;
    ngx_uint_t               i, m;
    ngx_http_llm_variant_t  *v;

    value = cf->args->elts;

    v = e->variants.elts;

    for (i = 0; i < e->variants.nelts; i++) {
        if (v[i].name.len == value[1].len
            && ngx_strncmp(v[i].name.data, value[1].data, value[1].len) == 0)
        {
            return "is duplicate";
        }
    }

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (!ngx_http_llm_name_char(*p)) {
            break;
        }
    }

    if (p < value[1].data + value[1].len
        || value[1].len > NGX_HTTP_LLM_VARIANT_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variant name \"%V\" (up to %d letters, "
                           "digits, \"_\" and \"-\")", &value[1],
                           NGX_HTTP_LLM_VARIANT_MAX);
        return NGX_CONF_ERROR;
    }

    w = ngx_atoi(value[2].data, value[2].len);

    if (w == NGX_ERROR || w == 0 || w > 1000000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid weight \"%V\" of variant \"%V\" (1 to "
                           "1000000)", &value[2], &value[1]);
        return NGX_CONF_ERROR;
    }

    v = ngx_array_push(&e->variants);
    if (v == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(v, sizeof(ngx_http_llm_variant_t));

    v->name = value[1];
    v->weight = w;
    v->index = e->variants.nelts - 1;

    ngx_str_null(&text);

    /* what the variant is, for the fingerprint: its whole line */

    len = 0;

    for (i = 1; i < cf->args->nelts; i++) {
        len += value[i].len + 1;
    }

    v->spec.data = ngx_pnalloc(cf->pool, len);
    if (v->spec.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = v->spec.data;

    for (i = 1; i < cf->args->nelts; i++) {
        p = ngx_cpymem(p, value[i].data, value[i].len);
        *p++ = ' ';
    }

    v->spec.len = p - v->spec.data;

    for (i = 3; i < cf->args->nelts; i++) {

        if (value[i].len == 7
            && ngx_strncmp(value[i].data, "control", 7) == 0)
        {
            v->control = 1;
            continue;
        }

        if (value[i].len == 6
            && ngx_strncmp(value[i].data, "shadow", 6) == 0)
        {
            v->shadow = 1;
            continue;
        }

        p = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');

        if (p == NULL) {
            goto invalid;
        }

        name.data = value[i].data;
        name.len = p - name.data;
        s.data = p + 1;
        s.len = value[i].data + value[i].len - s.data;

        if (name.len == 6 && ngx_strncmp(name.data, "system", 6) == 0) {
            if (text.data || s.len == 0) {
                goto invalid;
            }

            text = s;
            continue;
        }

        if (name.len == 11
            && ngx_strncmp(name.data, "system_file", 11) == 0)
        {
            if (text.data) {
                goto invalid;
            }

            if (ngx_http_llm_prompt_file(cf, &s, &text) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (name.len == 4 && ngx_strncmp(name.data, "mode", 4) == 0) {

            for (m = 1; ngx_http_llm_modes[m].len; m++) {
                if (ngx_http_llm_modes[m].len == s.len
                    && ngx_strncmp(ngx_http_llm_modes[m].data, s.data, s.len)
                       == 0)
                {
                    break;
                }
            }

            if (ngx_http_llm_modes[m].len == 0) {
                goto invalid;
            }

            v->mode = m;
            continue;
        }

        if (name.len == 5 && ngx_strncmp(name.data, "model", 5) == 0) {
            if (s.len == 0 || s.len > NGX_HTTP_LLM_MODEL_MAX
                || ngx_http_llm_json_text(s.data, s.len) != NGX_OK)
            {
                goto invalid;
            }

            v->model = s;
            continue;
        }

        if (name.len == 5 && ngx_strncmp(name.data, "route", 5) == 0) {
            if (s.len == 0) {
                goto invalid;
            }

            v->route_name = s;
            continue;
        }

        if (name.len == 11
            && ngx_strncmp(name.data, "temperature", 11) == 0)
        {
            if (ngx_http_llm_json_number_text(&s) != NGX_OK) {
                goto invalid;
            }

            v->temperature = s;
            continue;
        }

        if (name.len == 5 && ngx_strncmp(name.data, "top_p", 5) == 0) {
            if (ngx_http_llm_json_number_text(&s) != NGX_OK) {
                goto invalid;
            }

            v->top_p = s;
            continue;
        }

        if (name.len == 10 && ngx_strncmp(name.data, "max_tokens", 10) == 0) {
            w = ngx_atoi(s.data, s.len);

            if (w == NGX_ERROR || w == 0) {
                goto invalid;
            }

            v->max_tokens = w;
            continue;
        }

        goto invalid;
    }

    if (v->mode && text.data == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "variant \"%V\": mode= without system= or "
                           "system_file=", &v->name);
        return NGX_CONF_ERROR;
    }

    if (text.data) {
        if (v->mode == 0) {
            v->mode = NGX_HTTP_LLM_MODE_REPLACE;
        }

        if (ngx_http_llm_variant_system(cf, v, &text) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (v->model.len) {
        v->model_json = ngx_http_llm_json_text_copy(cf->pool, "\"", &v->model,
                                                    "\"");
        if (v->model_json == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" of variant \"%V\" (control, "
                       "system=, system_file=, mode=replace|prepend|append, "
                       "model=, route=, temperature=, top_p=, max_tokens=)",
                       &value[i], &value[1]);
    return NGX_CONF_ERROR;
}


/*
 * A prompt file, read when the configuration is loaded: not empty, at
 * most 1M, its last line break dropped.
 */

static ngx_int_t
ngx_http_llm_prompt_file(ngx_conf_t *cf, ngx_str_t *path, ngx_str_t *text)
{
    ssize_t          n;
    ngx_file_t       file;
    ngx_file_info_t  fi;

    if (ngx_conf_full_name(cf->cycle, path, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = *path;
    file.log = cf->log;

    file.fd = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", path);
        return NGX_ERROR;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) == 0
        || ngx_file_size(&fi) > 1024 * 1024)
    {
        ngx_close_file(file.fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "prompt file \"%V\" is empty or larger than 1M",
                           path);
        return NGX_ERROR;
    }

    text->len = (size_t) ngx_file_size(&fi);
    text->data = ngx_pnalloc(cf->pool, text->len);

    if (text->data == NULL) {
        ngx_close_file(file.fd);
        return NGX_ERROR;
    }

    n = ngx_read_file(&file, text->data, text->len, 0);

    ngx_close_file(file.fd);

    if (n != (ssize_t) text->len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "could not read prompt file \"%V\"", path);
        return NGX_ERROR;
    }

    while (text->len
           && (text->data[text->len - 1] == '\n'
               || text->data[text->len - 1] == '\r'))
    {
        text->len--;
    }

    if (text->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "prompt file \"%V\" is empty", path);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the texts of the system edits, escaped for JSON once */

static ngx_int_t
ngx_http_llm_variant_system(ngx_conf_t *cf, ngx_http_llm_variant_t *v,
    ngx_str_t *text)
{
    /* control characters are escaped; invalid UTF-8 is refused */

    if (ngx_http_llm_json_utf8(text->data, text->len) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the system prompt of variant \"%V\" is not "
                           "valid UTF-8", &v->name);
        return NGX_ERROR;
    }

    v->system_message = ngx_http_llm_json_text_copy(cf->pool,
                                      "{\"role\":\"system\",\"content\":\"",
                                      text, "\"},");
    v->system_member = ngx_http_llm_json_text_copy(cf->pool, "\"system\":\"",
                                                   text, "\",");
    v->system_value = ngx_http_llm_json_text_copy(cf->pool, "\"", text, "\"");
    v->system_prefix = ngx_http_llm_json_text_copy(cf->pool, "", text,
                                                   "\\n\\n");
    v->system_suffix = ngx_http_llm_json_text_copy(cf->pool, "\\n\\n", text,
                                                   "");
    v->system_part = ngx_http_llm_json_text_copy(cf->pool,
                                           "{\"type\":\"text\",\"text\":\"",
                                           text, "\"}");
    v->system_part_comma = ngx_http_llm_json_text_copy(cf->pool,
                                           "{\"type\":\"text\",\"text\":\"",
                                           text, "\"},");
    v->comma_system_part = ngx_http_llm_json_text_copy(cf->pool,
                                           ",{\"type\":\"text\",\"text\":\"",
                                           text, "\"}");

    if (v->system_message == NULL || v->system_member == NULL
        || v->system_value == NULL || v->system_prefix == NULL
        || v->system_suffix == NULL || v->system_part == NULL
        || v->system_part_comma == NULL || v->comma_system_part == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* prefix, the text escaped for a JSON string, suffix */

static ngx_str_t *
ngx_http_llm_json_text_copy(ngx_pool_t *pool, char *prefix, ngx_str_t *text,
    char *suffix)
{
    u_char     *p;
    size_t      lp, ls;
    ngx_str_t  *s;

    lp = ngx_strlen(prefix);
    ls = ngx_strlen(suffix);

    s = ngx_palloc(pool, sizeof(ngx_str_t));
    if (s == NULL) {
        return NULL;
    }

    s->len = lp + text->len + ngx_escape_json(NULL, text->data, text->len)
             + ls;

    s->data = ngx_pnalloc(pool, s->len);
    if (s->data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(s->data, prefix, lp);
    p = (u_char *) ngx_escape_json(p, text->data, text->len);
    ngx_memcpy(p, suffix, ls);

    return s;
}


/* a JSON number, such as temperature=0.2 */

static ngx_int_t
ngx_http_llm_json_number_text(ngx_str_t *s)
{
    u_char                     *p;
    ngx_http_llm_json_value_t   v;

    p = ngx_http_llm_json_skip(s->data, s->data + s->len, &v);

    if (p != s->data + s->len || v.type != NGX_HTTP_LLM_JSON_NUMBER) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static char *
ngx_http_llm_experiment_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_experiment_t *e = conf;

    ssize_t           n;
    ngx_str_t        *value, name;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    if (e->secret.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = name;
    file.log = cf->log;

    file.fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 4096)
    {
        ngx_close_file(file.fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "secret file \"%V\" is larger than 4K", &name);
        return NGX_CONF_ERROR;
    }

    e->secret.data = ngx_pnalloc(cf->pool, (size_t) ngx_file_size(&fi) + 1);
    if (e->secret.data == NULL) {
        ngx_close_file(file.fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_file(&file, e->secret.data, (size_t) ngx_file_size(&fi), 0);

    ngx_close_file(file.fd);

    if (n == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    /* the first line, trimmed */

    e->secret.len = 0;

    while ((ssize_t) e->secret.len < n
           && e->secret.data[e->secret.len] != '\n'
           && e->secret.data[e->secret.len] != '\r')
    {
        e->secret.len++;
    }

    if (e->secret.len < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "secret file \"%V\": the secret must be at least "
                           "16 bytes long", &name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* mde 10% */

static char *
ngx_http_llm_experiment_mde(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_experiment_t *e = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    value = cf->args->elts;

    if (value[1].len < 2 || value[1].data[value[1].len - 1] != '%') {
        return "must be a percentage, such as 10%";
    }

    n = ngx_atoi(value[1].data, value[1].len - 1);

    if (n == NGX_ERROR || n == 0 || n > 1000) {
        return "must be a percentage from 1% to 1000%";
    }

    e->mde = n;

    return NGX_CONF_OK;
}


/*
 * rollback [error_rate>X] [latency_p95>TIME] [cost_per_request>USD]
 *     [min=N]: guardrails of each variant against the control
 */

static char *
ngx_http_llm_experiment_rollback(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_experiment_t *e = conf;

    u_char      *p;
    double       d;
    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (e->rollback) {
        return "is duplicate";
    }

    value = cf->args->elts;
    e->rollback_min = 200;

    for (i = 1; i < cf->args->nelts; i++) {

        p = ngx_strlchr(value[i].data, value[i].data + value[i].len, '>');

        if (p == NULL) {
            if (value[i].len > 4 && ngx_strncmp(value[i].data, "min=", 4) == 0)
            {
                n = ngx_atoi(value[i].data + 4, value[i].len - 4);

                if (n == NGX_ERROR || n < 10) {
                    goto invalid;
                }

                e->rollback_min = n;
                continue;
            }

            goto invalid;
        }

        s.data = p + 1;
        s.len = value[i].data + value[i].len - s.data;

        if (p - value[i].data == 10
            && ngx_strncmp(value[i].data, "error_rate", 10) == 0)
        {
            d = strtod((char *) s.data, (char **) &p);

            if (p != s.data + s.len || !(d >= 0 && d < 1)) {
                goto invalid;
            }

            e->max_error_rate = d;
            e->rollback |= 1;
            continue;
        }

        if (p - value[i].data == 11
            && ngx_strncmp(value[i].data, "latency_p95", 11) == 0)
        {
            e->max_latency = ngx_parse_time(&s, 0);

            if (e->max_latency == (ngx_msec_t) NGX_ERROR) {
                goto invalid;
            }

            e->rollback |= 2;
            continue;
        }

        if (p - value[i].data == 16
            && ngx_strncmp(value[i].data, "cost_per_request", 16) == 0)
        {
            d = strtod((char *) s.data, (char **) &p);

            if (p != s.data + s.len || !(d >= 0 && d < 1000)) {
                goto invalid;
            }

            e->max_cost = (uint64_t) (d * 1e12);
            e->rollback |= 4;
            continue;
        }

        goto invalid;
    }

    if (e->rollback == 0) {
        return "needs a guardrail (error_rate>, latency_p95> or "
               "cost_per_request>)";
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" (error_rate>FRACTION, "
                       "latency_p95>TIME, cost_per_request>USD, min=N)",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * Has a variant been rolled back?  Each worker asks the zone at most once
 * a second, and remembers a rollback until the configuration changes.
 */

static ngx_uint_t
ngx_http_llm_variant_rolled_back(ngx_http_request_t *r,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v)
{
    ngx_str_t                  name;
    ngx_http_llm_zone_t       *zone;
    ngx_http_llm_stats_t      *st;
    ngx_http_llm_main_conf_t  *lmcf;

    if (v->rolled_back
        || ngx_current_msec - v->rollback_checked < 1000)
    {
        return v->rolled_back;
    }

    v->rollback_checked = ngx_current_msec;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    if (lmcf->zone == NULL
        || ngx_http_llm_variant_name(r->pool, e, v, &name) != NGX_OK)
    {
        return 0;
    }

    zone = lmcf->zone->data;

    ngx_shmtx_lock(&zone->shpool->mutex);

    st = ngx_http_llm_zone_node(zone, NGX_HTTP_LLM_NODE_VARIANT, &name, 0,
                                r->connection->log);

    if (st && st->rolled_back
        && st->rollback_generation == lmcf->generation)
    {
        v->rolled_back = 1;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return v->rolled_back;
}


ngx_http_llm_experiment_t *
ngx_http_llm_find_experiment(ngx_http_llm_main_conf_t *lmcf, ngx_str_t *name)
{
    ngx_uint_t                  i;
    ngx_http_llm_experiment_t **e;

    e = lmcf->experiments.elts;

    for (i = 0; i < lmcf->experiments.nelts; i++) {
        if (e[i]->name.len == name->len
            && ngx_strncmp(e[i]->name.data, name->data, name->len) == 0)
        {
            return e[i];
        }
    }

    return NULL;
}


/* the routes of the variants, once every route is known */

char *
ngx_http_llm_init_experiments(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                   i, j;
    ngx_http_llm_variant_t      *v;
    ngx_http_llm_experiment_t  **e;

    e = lmcf->experiments.elts;

    for (i = 0; i < lmcf->experiments.nelts; i++) {
        v = e[i]->variants.elts;

        for (j = 0; j < e[i]->variants.nelts; j++) {

            if (v[j].route_name.len == 0) {
                continue;
            }

            v[j].route = ngx_http_llm_find_route(cf, lmcf, &v[j].route_name);

            if (v[j].route == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "unknown llm route or provider \"%V\" in "
                                   "variant \"%V\" of llm_experiment \"%V\"",
                                   &v[j].route_name, &v[j].name,
                                   &e[i]->name);
                return NGX_CONF_ERROR;
            }
        }
    }

    return NGX_CONF_OK;
}


/*
 * The variant of a request, and what it changes before the request is
 * planned: its model, its route; the request id it is told.
 */

ngx_int_t
ngx_http_llm_experiment_apply(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_str_t                   key;
    ngx_uint_t                  i;
    ngx_http_llm_variant_t     *v, *s;
    ngx_http_llm_loc_conf_t    *llcf;
    ngx_http_llm_experiment_t  *e;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    e = llcf->experiment;

    if (e == NULL
        || (ctx->endpoint != NGX_HTTP_LLM_CHAT
            && ctx->endpoint != NGX_HTTP_LLM_MESSAGES))
    {
        return NGX_OK;
    }

    if (ctx->shadow) {
        /* a copy for a shadow: its variant was chosen with the request's */
        v = ctx->variant;
        goto edits;
    }

    ngx_str_null(&key);

    if (e->key && ngx_http_complex_value(r, e->key, &key) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v = ngx_http_llm_experiment_pick(r->pool, e, &key);

    if (v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a variant its guardrails rolled back: its traffic goes to control */

    if (e->rollback && v->index != e->control
        && ngx_http_llm_variant_rolled_back(r, e, v))
    {
        v = (ngx_http_llm_variant_t *) e->variants.elts + e->control;
    }

    ctx->experiment = e;
    ctx->variant = v;

edits:

    if (v->model.len) {
        ctx->model = v->model;
        ctx->model_override = 1;
    }

    if (v->route) {
        ctx->route = v->route;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm experiment \"%V\": variant \"%V\", key \"%V\"",
                   &e->name, &v->name, &key);

    if (ctx->shadow) {
        return NGX_OK;
    }

    if (e->secret.len && ngx_http_llm_experiment_sign(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the copies for the shadows the pick chose */

    s = e->variants.elts;

    for (i = 0; i < e->variants.nelts; i++) {
        if (s[i].shadow && s[i].copy && r == r->main
            && ngx_http_llm_shadow(r, e, &s[i]) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A shadow: a background subrequest of the same location, as the mirror
 * module makes them, with the same body, for the shadow's variant; its
 * reply is read (for its usage) and discarded, and the client's reply
 * never waits for it.  Its statistics are added when the request ends.
 */

static ngx_int_t
ngx_http_llm_shadow(ngx_http_request_t *r, ngx_http_llm_experiment_t *e,
    ngx_http_llm_variant_t *v)
{
    ngx_http_request_t   *sr;
    ngx_pool_cleanup_t   *cln;
    ngx_http_llm_ctx_t   *sctx;

    if (ngx_http_subrequest(r, &r->uri, &r->args, &sr, NULL,
                            NGX_HTTP_SUBREQUEST_BACKGROUND)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    sr->method = r->method;
    sr->method_name = r->method_name;
    r->preserve_body = 1;

    sctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (sctx == NULL) {
        return NGX_ERROR;
    }

    sctx->start = ngx_current_msec;
    sctx->experiment = e;
    sctx->variant = v;
    sctx->shadow = 1;

    ngx_http_set_ctx(sr, sctx, ngx_http_llm_module);

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_llm_shadow_done;
    cln->data = sr;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm experiment \"%V\": a copy for shadow \"%V\"",
                   &e->name, &v->name);

    return NGX_OK;
}


/* the shadow's usage, cost, latency and errors, under its name */

static void
ngx_http_llm_shadow_done(void *data)
{
    ngx_http_request_t *sr = data;

    (void) ngx_http_llm_log_handler(sr);
}


/*
 * Weighted rendezvous hashing: for each variant a uniform u of the key,
 * the score ln(u) / weight, the highest wins.  A variant's share is its
 * weight over the sum; a key keeps its variant while the weights stay,
 * and when one weight grows, keys move only into that variant.  No key:
 * a random variant.
 */

static ngx_http_llm_variant_t *
ngx_http_llm_experiment_pick(ngx_pool_t *pool, ngx_http_llm_experiment_t *e,
    ngx_str_t *key)
{
    u_char                   stack[512], *buf, *p;
    size_t                   len;
    double                   score, best, u;
    uint32_t                 h;
    ngx_uint_t               i, b;
    ngx_http_llm_variant_t  *v;

    v = e->variants.elts;

    /* "EXPERIMENT/KEY/VARIANT", for each variant */

    len = e->name.len + key->len + 2 + NGX_HTTP_LLM_VARIANT_MAX;
    buf = stack;

    if (len > sizeof(stack)) {
        buf = ngx_pnalloc(pool, len);
        if (buf == NULL) {
            return NULL;
        }
    }

    b = NGX_CONF_UNSET_UINT;
    best = 0;

    for (i = 0; i < e->variants.nelts; i++) {

        if (key->len) {
            p = ngx_sprintf(buf, "%V/%V/%V", &e->name, key, &v[i].name);
            h = ngx_murmur_hash2(buf, p - buf);

        } else {
            h = (uint32_t) ngx_random() ^ ((uint32_t) ngx_random() << 16);
        }

        u = ((double) h + 1.0) / 4294967296.0;

        if (v[i].shadow) {
            /* a copy to the shadow, for its share of the keys */
            v[i].copy = (u * e->weights < v[i].weight);
            continue;
        }

        score = log(u) / (double) v[i].weight;

        if (b == NGX_CONF_UNSET_UINT || score > best) {
            best = score;
            b = i;
        }
    }

    return &v[b];
}


/* NAME.VARIANT.TIME.NONCE.SIG, SIG of HMAC-SHA256(secret, the rest) */

static ngx_int_t
ngx_http_llm_experiment_sign(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char                     *p;
    size_t                      len;
    unsigned int                mdlen;
    u_char                      md[EVP_MAX_MD_SIZE];
    ngx_http_variable_value_t  *id;
    ngx_http_llm_experiment_t  *e;
    ngx_str_t                   name;

    e = ctx->experiment;

    ngx_str_set(&name, "request_id");

    id = ngx_http_get_variable(r, &name, ngx_hash_key(name.data, name.len));

    if (id == NULL || id->not_found || id->len != 32) {
        return NGX_ERROR;
    }

    len = e->name.len + 1 + ctx->variant->name.len + 1 + NGX_TIME_T_LEN + 1
          + 32 + 1 + 2 * NGX_HTTP_LLM_SIG_LEN;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->request_id.data = p;

    p = ngx_sprintf(p, "%V.%V.%T.%*s", &e->name, &ctx->variant->name,
                    ngx_time(), (size_t) id->len, id->data);

    if (HMAC(EVP_sha256(), e->secret.data, (int) e->secret.len,
             ctx->request_id.data, p - ctx->request_id.data, md, &mdlen)
        == NULL)
    {
        return NGX_ERROR;
    }

    *p++ = '.';
    p = ngx_hex_dump(p, md, NGX_HTTP_LLM_SIG_LEN);

    ctx->request_id.len = p - ctx->request_id.data;

    return NGX_OK;
}


/* the headers of a reply in an experiment */

ngx_int_t
ngx_http_llm_experiment_header(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    if (ctx == NULL || ctx->variant == NULL) {
        return NGX_OK;
    }

    if (ctx->experiment->header) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        p = ngx_pnalloc(r->pool, ctx->experiment->name.len + 1
                                 + ctx->variant->name.len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "X-LLM-Variant");
        h->value.data = p;
        h->value.len = ngx_sprintf(p, "%V/%V", &ctx->experiment->name,
                                   &ctx->variant->name)
                       - p;
    }

    if (ctx->request_id.len) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "X-LLM-Request-Id");
        h->value = ctx->request_id;
    }

    return NGX_OK;
}


/*
 * The edits of the variant to the client's body: its system prompt and
 * its parameters; the number of edits.  The model and max_tokens are
 * edited with the others of their kind (see the formats and clamp).
 */

ngx_uint_t
ngx_http_llm_experiment_edits(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_edit_t *edit)
{
    u_char                     *p, *last;
    ngx_uint_t                  n;
    ngx_str_t                   member;
    ngx_http_llm_variant_t     *v;
    ngx_http_llm_message_t      m;
    ngx_http_llm_json_value_t   first, *content;

    v = ctx->variant;

    if (v == NULL) {
        return 0;
    }

    n = 0;

    if (v->mode) {
        content = NULL;

        if (ctx->endpoint == NGX_HTTP_LLM_MESSAGES) {

            /* Anthropic: the top-level "system" */

            if (ctx->req.system.type != NGX_HTTP_LLM_JSON_NONE) {
                content = &ctx->req.system;
            }

        } else {

            /* OpenAI: the first message, when its role is system */

            p = ctx->req.messages.start + 1;
            last = ctx->req.messages.end;

            ngx_memzero(&m, sizeof(ngx_http_llm_message_t));

            if (ngx_http_llm_json_skip(p, last, &first) != NULL
                && first.type == NGX_HTTP_LLM_JSON_OBJECT
                && ngx_http_llm_json_object(first.start, first.end,
                                            ngx_http_llm_message_member, &m)
                   == NGX_OK
                && m.role.type == NGX_HTTP_LLM_JSON_STRING
                && ((m.role.end - m.role.start == sizeof("\"system\"") - 1
                     && ngx_strncmp(m.role.start, "\"system\"",
                                    sizeof("\"system\"") - 1) == 0)
                    || (m.role.end - m.role.start
                        == sizeof("\"developer\"") - 1
                        && ngx_strncmp(m.role.start, "\"developer\"",
                                       sizeof("\"developer\"") - 1) == 0))
                && m.content.type != NGX_HTTP_LLM_JSON_NONE)
            {
                content = &m.content;
            }
        }

        if (content) {
            n += ngx_http_llm_system_edit(v, content, &edit[n]);

        } else if (ctx->endpoint == NGX_HTTP_LLM_MESSAGES) {
            p = ngx_strlchr(ctx->body.data, ctx->body.data + ctx->body.len,
                            '{');
            edit[n].start = p + 1;
            edit[n].end = p + 1;
            edit[n].text = *v->system_member;
            n++;

        } else {
            edit[n].start = ctx->req.messages.start + 1;
            edit[n].end = ctx->req.messages.start + 1;
            edit[n].text = *v->system_message;
            n++;
        }
    }

    if (v->temperature.len) {
        ngx_str_set(&member, "\"temperature\":");
        n += ngx_http_llm_param_edit(r, ctx, &ctx->req.temperature, &member,
                                     &v->temperature, &edit[n]);
    }

    if (v->top_p.len) {
        ngx_str_set(&member, "\"top_p\":");
        n += ngx_http_llm_param_edit(r, ctx, &ctx->req.top_p, &member,
                                     &v->top_p, &edit[n]);
    }

    return n;
}


static ngx_int_t
ngx_http_llm_message_member(ngx_str_t *key, ngx_http_llm_json_value_t *v,
    void *data)
{
    ngx_http_llm_message_t *m = data;

    if (key->len == 4 && ngx_strncmp(key->data, "role", 4) == 0) {
        m->role = *v;

    } else if (key->len == 7 && ngx_strncmp(key->data, "content", 7) == 0) {
        m->content = *v;
    }

    return NGX_OK;
}


/* a system prompt there: replaced, or the variant's text before or after */

static ngx_uint_t
ngx_http_llm_system_edit(ngx_http_llm_variant_t *v,
    ngx_http_llm_json_value_t *content, ngx_http_llm_edit_t *edit)
{
    if (v->mode == NGX_HTTP_LLM_MODE_REPLACE
        || (content->type != NGX_HTTP_LLM_JSON_STRING
            && content->type != NGX_HTTP_LLM_JSON_ARRAY))
    {
        edit->start = content->start;
        edit->end = content->end;
        edit->text = *v->system_value;
        return 1;
    }

    if (content->type == NGX_HTTP_LLM_JSON_STRING) {
        if (v->mode == NGX_HTTP_LLM_MODE_PREPEND) {
            edit->start = content->start + 1;
            edit->text = *v->system_prefix;

        } else {
            edit->start = content->end - 1;
            edit->text = *v->system_suffix;
        }

        edit->end = edit->start;
        return 1;
    }

    /* an array of parts: a text part first or last, a comma between */

    if (v->mode == NGX_HTTP_LLM_MODE_PREPEND) {
        edit->start = content->start + 1;
        edit->text = content->elements ? *v->system_part_comma
                                       : *v->system_part;

    } else {
        edit->start = content->end - 1;
        edit->text = content->elements ? *v->comma_system_part
                                       : *v->system_part;
    }

    edit->end = edit->start;

    return 1;
}


/* a parameter's value replaced, or the member inserted first */

static ngx_uint_t
ngx_http_llm_param_edit(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_json_value_t *value, ngx_str_t *member, ngx_str_t *number,
    ngx_http_llm_edit_t *edit)
{
    u_char  *p;

    if (value->type != NGX_HTTP_LLM_JSON_NONE) {
        edit->start = value->start;
        edit->end = value->end;
        edit->text = *number;
        return 1;
    }

    p = ngx_strlchr(ctx->body.data, ctx->body.data + ctx->body.len, '{');

    edit->start = p + 1;
    edit->end = p + 1;

    edit->text.len = member->len + number->len + 1;
    edit->text.data = ngx_pnalloc(r->pool, edit->text.len);

    if (edit->text.data == NULL) {
        return 0;
    }

    p = ngx_cpymem(edit->text.data, member->data, member->len);
    p = ngx_cpymem(p, number->data, number->len);
    *p = ',';

    return 1;
}


/* llm_experiment NAME; in a server or a location */

char *
ngx_http_llm_experiment_use(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t  *value;

    if (llcf->experiment_name.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    llcf->experiment_name = value[1];

    return NGX_CONF_OK;
}


/* the statistics of a variant: "NAME/VARIANT/FINGERPRINT" in the zone */

ngx_int_t
ngx_http_llm_variant_name(ngx_pool_t *pool, ngx_http_llm_experiment_t *e,
    ngx_http_llm_variant_t *v, ngx_str_t *name)
{
    u_char  *p;

    p = ngx_pnalloc(pool, e->name.len + v->name.len + 2 + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    name->data = p;
    name->len = ngx_sprintf(p, "%V/%V/%08xD", &e->name, &v->name,
                            e->fingerprint)
                - p;

    return NGX_OK;
}
