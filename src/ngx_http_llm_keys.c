
/*
 * nginx-llm-gateway: virtual keys (llm_keys).
 *
 * The keys the gateway issues to its clients come from a JSON file read
 * at configuration time: a name, the models and routes a key may use,
 * its limits and metadata.  A key is kept only as the SHA-256 digest of
 * its bytes, in an array sorted by digest; a client's key is hashed and
 * looked up by binary search, the last comparison in constant time.
 *
 * No message, at any level, quotes a key or its digest: of the file, the
 * messages quote only its path, an entry's index and valid name, and the
 * member names the gateway knows.
 */


#include "ngx_http_llm_module.h"
#include <openssl/sha.h>
#include <openssl/crypto.h>


#define NGX_HTTP_LLM_KEY_NAME_MAX   128
#define NGX_HTTP_LLM_META_NAME_MAX  64
#define NGX_HTTP_LLM_META_VALUE_MAX 1024

#define NGX_HTTP_LLM_DIGEST_PREFIX  "sha256:"


/* the entry being read, for messages */

typedef struct {
    ngx_conf_t                  *cf;
    ngx_str_t                   *file;
    ngx_uint_t                   index;
    ngx_str_t                    name;      /* once valid */
} ngx_http_llm_keys_load_t;


static ngx_int_t ngx_http_llm_keys_load(ngx_conf_t *cf,
    ngx_http_llm_keys_t *keys);
static ngx_int_t ngx_http_llm_keys_read(ngx_conf_t *cf, ngx_str_t *file,
    ngx_str_t *text);
static ngx_int_t ngx_http_llm_keys_entries(ngx_http_llm_keys_load_t *ld,
    cJSON *list, ngx_http_llm_keys_t *keys);
static ngx_int_t ngx_http_llm_keys_entry(ngx_http_llm_keys_load_t *ld,
    cJSON *entry, ngx_http_llm_key_t *key);
static ngx_int_t ngx_http_llm_keys_digest(ngx_http_llm_keys_load_t *ld,
    cJSON *item, u_char *digest);
static ngx_int_t ngx_http_llm_keys_names(ngx_http_llm_keys_load_t *ld,
    cJSON *entry, char *member, ngx_array_t **names);
static ngx_int_t ngx_http_llm_keys_limits(ngx_http_llm_keys_load_t *ld,
    cJSON *entry, ngx_http_llm_key_t *key);
static ngx_int_t ngx_http_llm_keys_metadata(ngx_http_llm_keys_load_t *ld,
    cJSON *entry, ngx_http_llm_key_t *key);
static ngx_int_t ngx_http_llm_keys_sort(ngx_http_llm_keys_load_t *ld,
    ngx_http_llm_keys_t *keys);
static ngx_int_t ngx_http_llm_keys_members(cJSON *object, char **known,
    char **duplicate);
static ngx_int_t ngx_http_llm_keys_error(ngx_http_llm_keys_load_t *ld,
    const char *fmt, ...);
static void ngx_http_llm_keys_wipe(cJSON *item);
static int ngx_libc_cdecl ngx_http_llm_keys_cmp_name(const void *one,
    const void *two);
static int ngx_libc_cdecl ngx_http_llm_keys_cmp_digest(const void *one,
    const void *two);
static ngx_http_llm_key_t *ngx_http_llm_keys_find(ngx_http_llm_keys_t *keys,
    ngx_str_t *key);


static char  *ngx_http_llm_keys_file_members[] = { "keys", NULL };

static char  *ngx_http_llm_key_members[] = {
    "name", "key", "models", "routes", "limits", "metadata", NULL
};


/* llm_keys FILE [zone=NAME:SIZE] | off */

char *
ngx_http_llm_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    u_char               *colon;
    ssize_t               size;
    ngx_str_t            *value, name, s;
    ngx_uint_t            i;
    ngx_http_llm_keys_t  *keys;

    if (llcf->keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {

        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"llm_keys off\" takes no parameters");
            return NGX_CONF_ERROR;
        }

        llcf->keys = NULL;
        return NGX_CONF_OK;
    }

    ngx_str_null(&name);
    size = 0;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" of llm_keys "
                               "(zone=NAME:SIZE expected)", &value[i]);
            return NGX_CONF_ERROR;
        }

        name.data = value[i].data + 5;
        colon = (u_char *) ngx_strchr(name.data, ':');

        if (colon == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%V\" of llm_keys "
                               "(zone=NAME:SIZE expected)", &value[i]);
            return NGX_CONF_ERROR;
        }

        name.len = colon - name.data;

        s.data = colon + 1;
        s.len = value[i].data + value[i].len - s.data;

        size = ngx_parse_size(&s);
    }

    keys = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_keys_t));
    if (keys == NULL) {
        return NGX_CONF_ERROR;
    }

    keys->file = value[1];

    if (ngx_conf_full_name(cf->cycle, &keys->file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llm_keys_load(cf, keys) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (name.data) {
        keys->zone = ngx_http_llm_limit_zone_add(cf, &name, size);

        if (keys->zone == NULL) {
            return NGX_CONF_ERROR;
        }

    } else {
        for (i = 0; i < keys->nkeys; i++) {

            if (!keys->keys[i].has_limits) {
                continue;
            }

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "the entry \"%V\" of the keys file \"%V\" "
                               "has limits: llm_keys needs zone=NAME:SIZE "
                               "to count them", &keys->keys[i].name,
                               &keys->file);
            return NGX_CONF_ERROR;
        }
    }

    llcf->keys = keys;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_keys_load(ngx_conf_t *cf, ngx_http_llm_keys_t *keys)
{
    char                      *dup;
    const char                *end;
    cJSON                     *root, *list;
    ngx_int_t                  rc;
    ngx_str_t                  text;
    ngx_http_llm_keys_load_t   ld;

    if (ngx_http_llm_keys_read(cf, &keys->file, &text) != NGX_OK) {
        return NGX_ERROR;
    }

    root = cJSON_ParseWithLengthOpts((char *) text.data, text.len, &end, 0);

    /* one value and nothing after it but white space */

    while (root && end < (char *) text.data + text.len
           && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
    {
        end++;
    }

    if (root == NULL || end != (char *) text.data + text.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the keys file \"%V\" is not valid JSON "
                           "(error near byte %uz)", &keys->file,
                           root ? (size_t) (end - (char *) text.data)
                                : (size_t) (cJSON_GetErrorPtr()
                                            - (char *) text.data));
        rc = NGX_ERROR;
        goto done;
    }

    list = cJSON_IsObject(root)
           ? cJSON_GetObjectItemCaseSensitive(root, "keys") : NULL;

    if (!cJSON_IsArray(list)
        || ngx_http_llm_keys_members(root, ngx_http_llm_keys_file_members,
                                     &dup)
           != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the keys file \"%V\" must be a JSON object "
                           "with one member, \"keys\": an array of the keys",
                           &keys->file);
        rc = NGX_ERROR;
        goto done;
    }

    ld.cf = cf;
    ld.file = &keys->file;

    rc = ngx_http_llm_keys_entries(&ld, list, keys);

    if (rc == NGX_OK) {
        rc = ngx_http_llm_keys_sort(&ld, keys);
    }

done:

    /* what the file held, plain keys too, is not left in freed memory */

    ngx_http_llm_keys_wipe(root);
    cJSON_Delete(root);
    ngx_explicit_memzero(text.data, text.len);

    return rc;
}


static ngx_int_t
ngx_http_llm_keys_read(ngx_conf_t *cf, ngx_str_t *file, ngx_str_t *text)
{
    u_char           *p, *last;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_err_t         err;
    ngx_file_info_t   fi;

    fd = ngx_open_file(file->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", file);
        return NGX_ERROR;
    }

    text->data = NULL;
    n = -1;
    err = 0;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        err = ngx_errno;

    } else {
        text->data = ngx_pnalloc(cf->temp_pool, ngx_file_size(&fi) + 1);

        if (text->data) {
            n = ngx_read_fd(fd, text->data, ngx_file_size(&fi));
            err = ngx_errno;
        }
    }

    ngx_close_file(fd);

    if (n < 0 || n != ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "could not read the keys file \"%V\"", file);

        if (n > 0) {
            ngx_explicit_memzero(text->data, n);
        }

        return NGX_ERROR;
    }

    text->len = n;

    /*
     * cJSON ends its strings at a NUL: a key with \u0000 would be cut
     * there.  A backslash is valid JSON only in a string, so each escape
     * is found by skipping the character after a backslash.
     */

    last = text->data + n;

    for (p = text->data; p < last; p++) {

        if (*p != '\\' || p + 1 == last) {
            continue;
        }

        p++;

        if (*p == 'u' && last - p > 4 && ngx_strncmp(p + 1, "0000", 4) == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "the keys file \"%V\" has \"\\u0000\": "
                               "strings of the keys file may not hold NUL",
                               file);
            ngx_explicit_memzero(text->data, text->len);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_keys_entries(ngx_http_llm_keys_load_t *ld, cJSON *list,
    ngx_http_llm_keys_t *keys)
{
    int     n;
    cJSON  *entry;

    n = cJSON_GetArraySize(list);

    keys->nkeys = n;
    keys->keys = ngx_pcalloc(ld->cf->pool,
                             (n ? n : 1) * sizeof(ngx_http_llm_key_t));
    if (keys->keys == NULL) {
        return NGX_ERROR;
    }

    ld->index = 0;

    cJSON_ArrayForEach(entry, list) {

        ngx_str_null(&ld->name);

        if (ngx_http_llm_keys_entry(ld, entry, &keys->keys[ld->index])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ld->index++;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_keys_entry(ngx_http_llm_keys_load_t *ld, cJSON *entry,
    ngx_http_llm_key_t *key)
{
    char       *dup;
    size_t      len;
    cJSON      *item;
    ngx_int_t   rc;

    if (!cJSON_IsObject(entry)) {
        return ngx_http_llm_keys_error(ld, "an entry must be a JSON object");
    }

    item = cJSON_GetObjectItemCaseSensitive(entry, "name");

    if (!cJSON_IsString(item)) {
        return ngx_http_llm_keys_error(ld, "no \"name\" (a string)");
    }

    len = ngx_strlen(item->valuestring);

    if (len == 0 || len > NGX_HTTP_LLM_KEY_NAME_MAX
        || ngx_http_llm_json_text((u_char *) item->valuestring, len)
           != NGX_OK)
    {
        return ngx_http_llm_keys_error(ld, "\"name\" must be 1 to %d bytes "
                                       "of UTF-8 without control "
                                       "characters",
                                       NGX_HTTP_LLM_KEY_NAME_MAX);
    }

    key->name.len = len;
    key->name.data = ngx_pnalloc(ld->cf->pool, len);
    if (key->name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(key->name.data, item->valuestring, len);

    ld->name = key->name;

    rc = ngx_http_llm_keys_members(entry, ngx_http_llm_key_members, &dup);

    if (rc == NGX_BUSY) {
        return ngx_http_llm_keys_error(ld, "\"%s\" is given twice", dup);
    }

    if (rc != NGX_OK) {
        return ngx_http_llm_keys_error(ld, "an unknown member (the members "
                                       "are name, key, models, routes, "
                                       "limits and metadata)");
    }

    item = cJSON_GetObjectItemCaseSensitive(entry, "key");

    if (ngx_http_llm_keys_digest(ld, item, key->digest) != NGX_OK
        || ngx_http_llm_keys_names(ld, entry, "models", &key->models)
           != NGX_OK
        || ngx_http_llm_keys_names(ld, entry, "routes", &key->routes)
           != NGX_OK
        || ngx_http_llm_keys_limits(ld, entry, key) != NGX_OK
        || ngx_http_llm_keys_metadata(ld, entry, key) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * "key": the key itself, printable ASCII without spaces, stored as its
 * SHA-256; or "sha256:" and the 64 hex digits of that digest.
 */

static ngx_int_t
ngx_http_llm_keys_digest(ngx_http_llm_keys_load_t *ld, cJSON *item,
    u_char *digest)
{
    u_char      *s, c, hi, lo;
    size_t       len;
    ngx_uint_t   i;

    if (!cJSON_IsString(item)) {
        return ngx_http_llm_keys_error(ld, "no \"key\" (a string)");
    }

    s = (u_char *) item->valuestring;
    len = ngx_strlen(s);

    if (len >= sizeof(NGX_HTTP_LLM_DIGEST_PREFIX) - 1
        && ngx_strncmp(s, NGX_HTTP_LLM_DIGEST_PREFIX,
                       sizeof(NGX_HTTP_LLM_DIGEST_PREFIX) - 1)
           == 0)
    {
        s += sizeof(NGX_HTTP_LLM_DIGEST_PREFIX) - 1;
        len -= sizeof(NGX_HTTP_LLM_DIGEST_PREFIX) - 1;

        if (len != 2 * SHA256_DIGEST_LENGTH) {
            goto invalid;
        }

        for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
            hi = s[2 * i] | 0x20;
            lo = s[2 * i + 1] | 0x20;

            if (!((hi >= '0' && hi <= '9') || (hi >= 'a' && hi <= 'f'))
                || !((lo >= '0' && lo <= '9') || (lo >= 'a' && lo <= 'f')))
            {
                goto invalid;
            }

            hi = (hi <= '9') ? hi - '0' : hi - 'a' + 10;
            lo = (lo <= '9') ? lo - '0' : lo - 'a' + 10;

            digest[i] = (u_char) (hi << 4 | lo);
        }

        return NGX_OK;
    }

    if (len == 0) {
        return ngx_http_llm_keys_error(ld, "\"key\" is empty");
    }

    for (i = 0; i < len; i++) {
        c = s[i];

        if (c <= 0x20 || c >= 0x7f) {
            return ngx_http_llm_keys_error(ld, "\"key\" must be printable "
                                           "ASCII without spaces");
        }
    }

    SHA256(s, len, digest);

    return NGX_OK;

invalid:

    return ngx_http_llm_keys_error(ld, "\"key\": \"sha256:\" must be "
                                   "followed by the %d hex digits of the "
                                   "key's SHA-256",
                                   2 * SHA256_DIGEST_LENGTH);
}


/* "models" or "routes": absent (any), or an array of names */

static ngx_int_t
ngx_http_llm_keys_names(ngx_http_llm_keys_load_t *ld, cJSON *entry,
    char *member, ngx_array_t **names)
{
    int         n;
    size_t      len;
    cJSON      *item, *v;
    ngx_str_t  *s;
    ngx_uint_t  i;

    item = cJSON_GetObjectItemCaseSensitive(entry, member);

    if (item == NULL) {
        *names = NULL;
        return NGX_OK;
    }

    if (!cJSON_IsArray(item)) {
        return ngx_http_llm_keys_error(ld, "\"%s\" must be an array of "
                                       "names", member);
    }

    n = cJSON_GetArraySize(item);

    *names = ngx_array_create(ld->cf->pool, n ? n : 1, sizeof(ngx_str_t));
    if (*names == NULL) {
        return NGX_ERROR;
    }

    i = 0;

    cJSON_ArrayForEach(v, item) {

        len = cJSON_IsString(v) ? ngx_strlen(v->valuestring) : 0;

        if (len == 0 || len > NGX_HTTP_LLM_MODEL_MAX
            || ngx_http_llm_json_text((u_char *) v->valuestring, len)
               != NGX_OK)
        {
            return ngx_http_llm_keys_error(ld, "\"%s\"[%ui] must be a "
                                           "string of 1 to %d bytes of "
                                           "UTF-8 without control "
                                           "characters", member, i,
                                           NGX_HTTP_LLM_MODEL_MAX);
        }

        s = ngx_array_push(*names);
        if (s == NULL) {
            return NGX_ERROR;
        }

        s->len = len;
        s->data = ngx_pnalloc(ld->cf->pool, len);
        if (s->data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(s->data, v->valuestring, len);

        i++;
    }

    return NGX_OK;
}


/*
 * "limits": {"requests": "600/m", "tokens": "200000/m", "spend": "20/d",
 * "concurrent": 4}, each read as the parameter of llm_limit_zone
 */

static ngx_int_t
ngx_http_llm_keys_limits(ngx_http_llm_keys_load_t *ld, cJSON *entry,
    ngx_http_llm_key_t *key)
{
    u_char      buf[NGX_INT64_LEN];
    double      d;
    cJSON      *item, *m, *o;
    ngx_int_t   rc;
    ngx_str_t   name, value;

    item = cJSON_GetObjectItemCaseSensitive(entry, "limits");

    if (item == NULL) {
        return NGX_OK;
    }

    if (!cJSON_IsObject(item)) {
        return ngx_http_llm_keys_error(ld, "\"limits\" must be an object "
                                       "such as {\"requests\": \"600/m\"}");
    }

    cJSON_ArrayForEach(m, item) {

        name.data = (u_char *) m->string;
        name.len = ngx_strlen(m->string);

        if (cJSON_IsString(m)) {
            value.data = (u_char *) m->valuestring;
            value.len = ngx_strlen(m->valuestring);

        } else if (cJSON_IsNumber(m)) {
            d = m->valuedouble;

            /* NaN fails the comparisons */

            if (!(d >= 0 && d <= 1e9) || d != (double) (uint64_t) d) {
                ngx_str_set(&value, "-");

            } else {
                value.data = buf;
                value.len = ngx_sprintf(buf, "%uL", (uint64_t) d) - buf;
            }

        } else {
            ngx_str_set(&value, "-");
        }

        rc = ngx_http_llm_limit_value(&name, &value, &key->limits);

        if (rc == NGX_DECLINED) {
            return ngx_http_llm_keys_error(ld, "an unknown limit (the limits "
                                           "are requests, tokens, spend and "
                                           "concurrent)");
        }

        /* the name is a known one from here: it may be quoted */

        if (rc != NGX_OK) {
            return ngx_http_llm_keys_error(ld, "invalid value of the limit "
                                           "\"%s\" (such as \"600/m\", "
                                           "\"20.5/d\" for spend, or a "
                                           "number for concurrent)",
                                           m->string);
        }

        for (o = item->child; o != m; o = o->next) {
            if (ngx_strcmp(o->string, m->string) == 0) {
                return ngx_http_llm_keys_error(ld, "the limit \"%s\" is "
                                               "given twice", m->string);
            }
        }

        key->has_limits = 1;
    }

    return NGX_OK;
}


/*
 * "metadata": names of letters, digits and underscores ($llm_key_meta_NAME,
 * compared without case), string values
 */

static ngx_int_t
ngx_http_llm_keys_metadata(ngx_http_llm_keys_load_t *ld, cJSON *entry,
    ngx_http_llm_key_t *key)
{
    u_char        c, *p;
    size_t        len, vlen;
    cJSON        *item, *m, *o;
    ngx_keyval_t *kv;

    item = cJSON_GetObjectItemCaseSensitive(entry, "metadata");

    if (item == NULL) {
        return NGX_OK;
    }

    if (!cJSON_IsObject(item)) {
        return ngx_http_llm_keys_error(ld, "\"metadata\" must be an object "
                                       "of strings");
    }

    key->metadata = ngx_array_create(ld->cf->pool, 4, sizeof(ngx_keyval_t));
    if (key->metadata == NULL) {
        return NGX_ERROR;
    }

    cJSON_ArrayForEach(m, item) {

        len = ngx_strlen(m->string);

        for (p = (u_char *) m->string; *p; p++) {
            c = *p | 0x20;

            if (!((c >= 'a' && c <= 'z') || (*p >= '0' && *p <= '9')
                  || *p == '_'))
            {
                break;
            }
        }

        if (len == 0 || len > NGX_HTTP_LLM_META_NAME_MAX || *p) {
            return ngx_http_llm_keys_error(ld, "a metadata name must be 1 to "
                                           "%d letters, digits or "
                                           "underscores",
                                           NGX_HTTP_LLM_META_NAME_MAX);
        }

        for (o = item->child; o != m; o = o->next) {
            if (ngx_strcasecmp((u_char *) o->string, (u_char *) m->string)
                == 0)
            {
                return ngx_http_llm_keys_error(ld, "a metadata name is "
                                               "given twice (names are "
                                               "compared without case)");
            }
        }

        vlen = cJSON_IsString(m) ? ngx_strlen(m->valuestring) : 0;

        if (!cJSON_IsString(m) || vlen > NGX_HTTP_LLM_META_VALUE_MAX
            || ngx_http_llm_json_text((u_char *) m->valuestring, vlen)
               != NGX_OK)
        {
            return ngx_http_llm_keys_error(ld, "a metadata value must be a "
                                           "string of at most %d bytes of "
                                           "UTF-8 without control "
                                           "characters",
                                           NGX_HTTP_LLM_META_VALUE_MAX);
        }

        kv = ngx_array_push(key->metadata);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        kv->key.len = len;
        kv->key.data = ngx_pnalloc(ld->cf->pool, len + vlen + 1);
        if (kv->key.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(kv->key.data, m->string, len);

        kv->value.len = vlen;
        kv->value.data = kv->key.data + len;
        ngx_memcpy(kv->value.data, m->valuestring, vlen);
    }

    return NGX_OK;
}


/* sorted by digest; names and keys each once */

static ngx_int_t
ngx_http_llm_keys_sort(ngx_http_llm_keys_load_t *ld, ngx_http_llm_keys_t *keys)
{
    ngx_uint_t           i, a, b;
    ngx_http_llm_key_t  *key, **order;

    if (keys->nkeys == 0) {
        return NGX_OK;
    }

    order = ngx_palloc(ld->cf->temp_pool,
                       keys->nkeys * sizeof(ngx_http_llm_key_t *));
    if (order == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < keys->nkeys; i++) {
        order[i] = &keys->keys[i];
    }

    ngx_qsort(order, keys->nkeys, sizeof(ngx_http_llm_key_t *),
              ngx_http_llm_keys_cmp_name);

    for (i = 1; i < keys->nkeys; i++) {

        if (ngx_http_llm_keys_cmp_name(&order[i - 1], &order[i]) != 0) {
            continue;
        }

        a = ngx_min(order[i - 1], order[i]) - keys->keys;
        b = ngx_max(order[i - 1], order[i]) - keys->keys;

        ngx_conf_log_error(NGX_LOG_EMERG, ld->cf, 0,
                           "keys[%ui] and keys[%ui] of the keys file \"%V\" "
                           "have the same name \"%V\"", a, b, ld->file,
                           &order[i]->name);
        return NGX_ERROR;
    }

    ngx_qsort(order, keys->nkeys, sizeof(ngx_http_llm_key_t *),
              ngx_http_llm_keys_cmp_digest);

    for (i = 1; i < keys->nkeys; i++) {

        if (ngx_http_llm_keys_cmp_digest(&order[i - 1], &order[i]) != 0) {
            continue;
        }

        a = ngx_min(order[i - 1], order[i]) - keys->keys;
        b = ngx_max(order[i - 1], order[i]) - keys->keys;

        ngx_conf_log_error(NGX_LOG_EMERG, ld->cf, 0,
                           "keys[%ui] (\"%V\") and keys[%ui] (\"%V\") of the "
                           "keys file \"%V\" have the same key", a,
                           &keys->keys[a].name, b, &keys->keys[b].name,
                           ld->file);
        return NGX_ERROR;
    }

    key = ngx_palloc(ld->cf->pool, keys->nkeys * sizeof(ngx_http_llm_key_t));
    if (key == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < keys->nkeys; i++) {
        key[i] = *order[i];
    }

    ngx_explicit_memzero(keys->keys, keys->nkeys * sizeof(ngx_http_llm_key_t));

    keys->keys = key;

    return NGX_OK;
}


/*
 * The members of an object are all known and each there once: NGX_OK;
 * NGX_BUSY and the name of one given twice; NGX_DECLINED for one unknown
 * (not quoted: a member that is not ours could be a key put astray).
 */

static ngx_int_t
ngx_http_llm_keys_members(cJSON *object, char **known, char **duplicate)
{
    char   **k;
    cJSON   *m, *o;

    for (m = object->child; m; m = m->next) {

        for (k = known; *k; k++) {
            if (ngx_strcmp(m->string, *k) == 0) {
                break;
            }
        }

        if (*k == NULL) {
            return NGX_DECLINED;
        }

        for (o = object->child; o != m; o = o->next) {
            if (ngx_strcmp(o->string, m->string) == 0) {
                *duplicate = *k;
                return NGX_BUSY;
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_keys_error(ngx_http_llm_keys_load_t *ld, const char *fmt, ...)
{
    u_char   *p, *last, buf[NGX_MAX_CONF_ERRSTR];
    va_list   args;

    last = buf + sizeof(buf);

    p = ngx_slprintf(buf, last, "keys[%ui]", ld->index);

    if (ld->name.len) {
        p = ngx_slprintf(p, last, " (\"%V\")", &ld->name);
    }

    p = ngx_slprintf(p, last, " of the keys file \"%V\": ", ld->file);

    va_start(args, fmt);
    p = ngx_vslprintf(p, last, fmt, args);
    va_end(args);

    ngx_conf_log_error(NGX_LOG_EMERG, ld->cf, 0, "%*s", p - buf, buf);

    return NGX_ERROR;
}


/* every string of the parsed file, names of members too */

static void
ngx_http_llm_keys_wipe(cJSON *item)
{
    for ( /* void */ ; item; item = item->next) {

        if (item->valuestring) {
            ngx_explicit_memzero(item->valuestring,
                                 ngx_strlen(item->valuestring));
        }

        if (item->string) {
            ngx_explicit_memzero(item->string, ngx_strlen(item->string));
        }

        ngx_http_llm_keys_wipe(item->child);
    }
}


static int ngx_libc_cdecl
ngx_http_llm_keys_cmp_name(const void *one, const void *two)
{
    ngx_http_llm_key_t  *a = *(ngx_http_llm_key_t **) one;
    ngx_http_llm_key_t  *b = *(ngx_http_llm_key_t **) two;

    if (a->name.len != b->name.len) {
        return (a->name.len < b->name.len) ? -1 : 1;
    }

    return ngx_memcmp(a->name.data, b->name.data, a->name.len);
}


static int ngx_libc_cdecl
ngx_http_llm_keys_cmp_digest(const void *one, const void *two)
{
    ngx_http_llm_key_t  *a = *(ngx_http_llm_key_t **) one;
    ngx_http_llm_key_t  *b = *(ngx_http_llm_key_t **) two;

    return ngx_memcmp(a->digest, b->digest, SHA256_DIGEST_LENGTH);
}


/*
 * Request time.  Without llm_keys the location is open.  Else the client's
 * key must be one of the file's (401), the route one the key may use
 * (403); once the model is known, the model too (403).  The key is found
 * once: this is called before the body is read, and again with the model.
 */

ngx_int_t
ngx_http_llm_keys_check(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_str_t                 key;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->keys == NULL) {
        return NGX_OK;
    }

    if (ctx->key == NULL) {

        (void) ngx_http_llm_client_key(r, &key);

        if (key.len) {
            ctx->key = ngx_http_llm_keys_find(llcf->keys, &key);
        }

        if (ctx->key == NULL) {

            /* before the answer: a body not read yet is discarded */

            rc = ngx_http_discard_request_body(r);

            if (rc != NGX_OK) {
                return rc;
            }

            if (key.len == 0) {
                return ngx_http_llm_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                               "invalid_api_key", NULL,
                                               "You didn't provide an API "
                                               "key: send it in an "
                                               "Authorization header "
                                               "(Bearer), x-api-key or "
                                               "x-goog-api-key");
            }

            return ngx_http_llm_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                           "invalid_api_key", NULL,
                                           "Incorrect API key provided");
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm key \"%V\"", &ctx->key->name);

        if (ctx->route
            && !ngx_http_llm_key_allows(ctx->key->routes, &ctx->route->name))
        {
            rc = ngx_http_discard_request_body(r);

            if (rc != NGX_OK) {
                return rc;
            }

            return ngx_http_llm_send_error(r, NGX_HTTP_FORBIDDEN,
                                           "route_not_allowed", NULL,
                                           "This API key may not use this "
                                           "URL");
        }
    }

    if (ctx->model.len
        && !ngx_http_llm_key_allows(ctx->key->models, &ctx->model))
    {
        return ngx_http_llm_send_error(r, NGX_HTTP_FORBIDDEN,
                                       "model_not_allowed", "model",
                                       "This API key may not use the model "
                                       "\"%V\"", &ctx->model);
    }

    return NGX_OK;
}


/* a model or a route is one of the key's: names NULL allow any */

ngx_uint_t
ngx_http_llm_key_allows(ngx_array_t *names, ngx_str_t *name)
{
    ngx_str_t   *s;
    ngx_uint_t   i;

    if (names == NULL) {
        return 1;
    }

    s = names->elts;

    for (i = 0; i < names->nelts; i++) {
        if (s[i].len == name->len
            && ngx_memcmp(s[i].data, name->data, name->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_http_llm_key_t *
ngx_http_llm_keys_find(ngx_http_llm_keys_t *keys, ngx_str_t *key)
{
    u_char      md[SHA256_DIGEST_LENGTH];
    ngx_uint_t  lo, hi, mid;

    SHA256(key->data, key->len, md);

    /* the first digest not below md; then equal or not in constant time */

    lo = 0;
    hi = keys->nkeys;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        if (ngx_memcmp(keys->keys[mid].digest, md, SHA256_DIGEST_LENGTH)
            < 0)
        {
            lo = mid + 1;

        } else {
            hi = mid;
        }
    }

    if (lo < keys->nkeys
        && CRYPTO_memcmp(keys->keys[lo].digest, md, SHA256_DIGEST_LENGTH)
           == 0)
    {
        return &keys->keys[lo];
    }

    return NULL;
}


/* $llm_key_name */

ngx_int_t
ngx_http_llm_key_name_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->key == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->key->name.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = ctx->key->name.data;

    return NGX_OK;
}


/* $llm_key_meta_NAME */

ngx_int_t
ngx_http_llm_key_meta_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t *var = (ngx_str_t *) data;

    size_t               len;
    u_char              *name;
    ngx_uint_t           i;
    ngx_keyval_t        *kv;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->key == NULL || ctx->key->metadata == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    name = var->data + sizeof("llm_key_meta_") - 1;
    len = var->len - (sizeof("llm_key_meta_") - 1);

    kv = ctx->key->metadata->elts;

    for (i = 0; i < ctx->key->metadata->nelts; i++) {

        if (kv[i].key.len != len
            || ngx_strncasecmp(kv[i].key.data, name, len) != 0)
        {
            continue;
        }

        v->len = kv[i].value.len;
        v->valid = 1;
        v->no_cacheable = 1;
        v->not_found = 0;
        v->data = kv[i].value.data;

        return NGX_OK;
    }

    v->not_found = 1;

    return NGX_OK;
}
