
/*
 * A client's request body: the JSON scanner (ngx_http_llm_json_object),
 * the gateway's validation of the request (the static functions of
 * ngx_http_llm_handler.c, which this file includes: the harness is linked
 * without that object), and the edits of the provider request (the model
 * alias replaced, stream_options.include_usage injected) made by the
 * format's create_request(), which ngx_http_llm_body_edit() assembles.
 *
 *     byte 0    options: bits 0-1 the endpoint (chat, embeddings,
 *               messages, chat); bit 2 the model is an alias; bit 3 the
 *               provider is not asked for stream usage; bit 4 the
 *               provider's model name needs escapes in JSON
 *     the rest  the body
 *
 * Invariants:
 *   - every member and value the scanner reports lies within the body; a
 *     body it accepts, cJSON accepts too (but for \u escapes of unpaired
 *     surrogates, which cJSON refuses and the scanner does not decode);
 *   - a model name accepted is valid UTF-8 without control characters,
 *     at most NGX_HTTP_LLM_MODEL_MAX bytes, and is what cJSON reads;
 *   - the edited body of an accepted request is accepted by the gateway
 *     again, which reads the provider's model name and, when it asked for
 *     it, include_usage true; a provider's parser reads the same: the last
 *     "model" (in any case, as Go's encoding/json matches keys) is the
 *     model sent, stream_options.include_usage is true, and the rest of
 *     the document is the client's, unchanged.
 */


#include "fuzz.h"


static ngx_int_t fuzz_send_error(ngx_http_request_t *r, ngx_uint_t status,
    char *code, char *param, char *fmt, ...);

/* errors are recorded, not sent: there is no connection to send them to */
#define ngx_http_llm_send_error  fuzz_send_error
#include "../src/ngx_http_llm_handler.c"
#undef ngx_http_llm_send_error


static u_char  fuzz_error[NGX_MAX_ERROR_STR];


static ngx_int_t
fuzz_send_error(ngx_http_request_t *r, ngx_uint_t status, char *code,
    char *param, char *fmt, ...)
{
    va_list              args;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    /* the message quotes the client: formatted as the gateway would */

    va_start(args, fmt);
    (void) ngx_vslprintf(fuzz_error, fuzz_error + sizeof(fuzz_error), fmt,
                         args);
    va_end(args);

    fuzz_assert(status >= 400 && status < 600, "error status %lu",
                (unsigned long) status);

    ctx->error.data = (u_char *) code;
    ctx->error.len = ngx_strlen(code);

    return NGX_OK;
}


typedef struct {
    u_char                      *start;
    u_char                      *last;
    ngx_uint_t                   members;
} fuzz_members_t;


static ngx_int_t
fuzz_member(ngx_str_t *key, ngx_http_llm_json_value_t *v, void *data)
{
    fuzz_members_t *m = data;

    fuzz_assert(key->data > m->start && key->data + key->len < m->last
                && key->data[-1] == '"' && key->data[key->len] == '"',
                "a key outside the body or not between quotes");

    fuzz_assert(v->start >= m->start && v->end <= m->last
                && v->start < v->end,
                "a value outside the body");

    fuzz_assert(v->type >= NGX_HTTP_LLM_JSON_OBJECT
                && v->type <= NGX_HTTP_LLM_JSON_NULL,
                "a value of type %lu", (unsigned long) v->type);

    fuzz_assert(v->type != NGX_HTTP_LLM_JSON_STRING
                || (v->end - v->start >= 2 && v->start[0] == '"'
                    && v->end[-1] == '"'),
                "a string value not between quotes");

    m->members++;

    return NGX_OK;
}


static ngx_uint_t
fuzz_has_surrogate_escape(const u_char *p, size_t len)
{
    size_t  i;

    for (i = 0; i + 3 < len; i++) {
        if (p[i] == '\\' && p[i + 1] == 'u'
            && (p[i + 2] == 'd' || p[i + 2] == 'D')
            && p[i + 3] != '\0'
            && ngx_strchr("89abcdefABCDEF", p[i + 3]) != NULL)
        {
            return 1;
        }

        if (p[i] == '\\') {
            i++;
        }
    }

    return 0;
}


/* valid UTF-8, no surrogates or overlong forms, no control characters */

static ngx_uint_t
fuzz_utf8_text(const u_char *p, size_t len)
{
    size_t    i, n, k;
    uint32_t  cp;

    for (i = 0; i < len; i += n) {

        if (p[i] < 0x80) {
            if (p[i] < 0x20 || p[i] == 0x7f) {
                return 0;
            }

            n = 1;
            continue;
        }

        if ((p[i] & 0xe0) == 0xc0) {
            n = 2;
            cp = p[i] & 0x1f;

        } else if ((p[i] & 0xf0) == 0xe0) {
            n = 3;
            cp = p[i] & 0x0f;

        } else if ((p[i] & 0xf8) == 0xf0) {
            n = 4;
            cp = p[i] & 0x07;

        } else {
            return 0;
        }

        if (i + n > len) {
            return 0;
        }

        for (k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            cp = (cp << 6) | (p[i + k] & 0x3f);
        }

        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800)
            || (n == 4 && cp < 0x10000) || cp > 0x10ffff
            || (cp >= 0xd800 && cp <= 0xdfff)
            || (cp >= 0x80 && cp <= 0x9f))
        {
            return 0;
        }
    }

    return 1;
}


/* the last member of an object named so, in ASCII case or exactly */

static cJSON *
fuzz_last(cJSON *obj, const char *name, ngx_uint_t fold)
{
    cJSON  *m, *last;

    last = NULL;

    cJSON_ArrayForEach(m, obj) {
        if (m->string == NULL) {
            continue;
        }

        if (fold ? ngx_strcasecmp((u_char *) m->string, (u_char *) name) == 0
                 : ngx_strcmp(m->string, name) == 0)
        {
            last = m;
        }
    }

    return last;
}


/*
 * Two JSON trees alike: the members of objects compared in the order of
 * their keys (a stable sort keeps duplicates in their order), so that
 * where an edit put a member does not matter.
 */

static int
fuzz_cmp_key(const void *a, const void *b)
{
    const cJSON  *x = *(cJSON * const *) a, *y = *(cJSON * const *) b;

    return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}


static cJSON **
fuzz_sorted(cJSON *obj, int n)
{
    int      i, j;
    cJSON   *m, **v, *t;

    v = malloc((n ? n : 1) * sizeof(cJSON *));
    if (v == NULL) {
        abort();
    }

    i = 0;

    cJSON_ArrayForEach(m, obj) {
        v[i++] = m;
    }

    /* insertion sort: stable */

    for (i = 1; i < n; i++) {
        t = v[i];

        for (j = i; j > 0 && fuzz_cmp_key(&v[j - 1], &t) > 0; j--) {
            v[j] = v[j - 1];
        }

        v[j] = t;
    }

    return v;
}


static ngx_uint_t
fuzz_equal(cJSON *a, cJSON *b)
{
    int          i, n;
    cJSON       *x, *y, **va, **vb;
    ngx_uint_t   eq;

    if ((a->type & 0xff) != (b->type & 0xff)) {
        return 0;
    }

    if (cJSON_IsNumber(a)) {
        return a->valuedouble == b->valuedouble;
    }

    if (cJSON_IsString(a)) {
        return strcmp(a->valuestring, b->valuestring) == 0;
    }

    if (cJSON_IsArray(a)) {
        for (x = a->child, y = b->child; x && y; x = x->next, y = y->next) {
            if (!fuzz_equal(x, y)) {
                return 0;
            }
        }

        return x == NULL && y == NULL;
    }

    if (!cJSON_IsObject(a)) {
        return 1;
    }

    n = cJSON_GetArraySize(a);

    if (n != cJSON_GetArraySize(b)) {
        return 0;
    }

    va = fuzz_sorted(a, n);
    vb = fuzz_sorted(b, n);

    eq = 1;

    for (i = 0; i < n && eq; i++) {
        eq = fuzz_cmp_key(&va[i], &vb[i]) == 0 && fuzz_equal(va[i], vb[i]);
    }

    free(va);
    free(vb);

    return eq;
}


/* the gateway's validation of a body, as far as the provider request */

static ngx_int_t
fuzz_validate(fuzz_request_t *fr, u_char *body, size_t len,
    ngx_uint_t endpoint)
{
    ngx_int_t            rc;
    ngx_http_llm_ctx_t  *ctx;

    ctx = fr->ctx;

    ctx->body.data = body;
    ctx->body.len = len;
    ctx->endpoint = endpoint;

    rc = ngx_http_llm_scan_request(&fr->request, ctx);

    if (rc == NGX_OK && ctx->error.len == 0) {
        rc = ngx_http_llm_body_model(&fr->request, ctx);
    }

    if (rc == NGX_OK && ctx->error.len == 0) {
        rc = ngx_http_llm_model_name(&fr->request, ctx);
    }

    if (rc != NGX_OK || ctx->error.len) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                     *s;
    u_char                   *body;
    size_t                    len;
    cJSON                    *orig, *edited, *m, *so, *inc;
    ngx_int_t                 rc;
    ngx_str_t                 path, headers;
    ngx_uint_t                endpoint, options, cjson_ok;
    fuzz_buf_t                out;
    ngx_chain_t              *chain;
    fuzz_members_t            members;
    fuzz_request_t            fr, fr2;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_model_t      map;
    ngx_http_llm_provider_t   provider;

    static ngx_uint_t  endpoints[] = {
        NGX_HTTP_LLM_CHAT, NGX_HTTP_LLM_EMBEDDINGS, NGX_HTTP_LLM_MESSAGES,
        NGX_HTTP_LLM_CHAT
    };

    fuzz_init();

    if (size < 1) {
        return 0;
    }

    options = data[0];
    endpoint = endpoints[options & 3];

    len = size - 1;
    body = fuzz_copy(data + 1, len);

    /* the scanner alone, against cJSON */

    members.start = body;
    members.last = body + len;
    members.members = 0;

    rc = ngx_http_llm_json_object(body, body + len, fuzz_member, &members);

    orig = cJSON_ParseWithLength((const char *) body, len);
    cjson_ok = (orig != NULL);

    if (rc == NGX_OK) {
        fuzz_assert(orig != NULL || fuzz_has_surrogate_escape(body, len),
                    "the scanner accepts a body that cJSON refuses");

        fuzz_assert(orig == NULL
                    || (cJSON_IsObject(orig)
                        && (ngx_uint_t) cJSON_GetArraySize(orig)
                           == members.members),
                    "the scanner reports %lu members, cJSON %d",
                    (unsigned long) members.members,
                    orig ? cJSON_GetArraySize(orig) : -1);
    }

    /* the gateway's validation */

    fuzz_request_init(&fr);
    ctx = fr.ctx;

    if (fuzz_validate(&fr, body, len, endpoint) != NGX_OK) {
        goto done;
    }

    fuzz_assert(rc == NGX_OK, "a request accepted that the scanner refuses");

    fuzz_assert(ctx->model.len <= NGX_HTTP_LLM_MODEL_MAX
                && fuzz_utf8_text(ctx->model.data, ctx->model.len),
                "a model name accepted that is not valid text: \"%.*s\"",
                (int) ctx->model.len, ctx->model.data);

    if (cjson_ok) {
        m = cJSON_GetObjectItemCaseSensitive(orig, "model");

        fuzz_assert(cJSON_IsString(m)
                    && ngx_strlen(m->valuestring) == ctx->model.len
                    && ngx_memcmp(m->valuestring, ctx->model.data,
                                  ctx->model.len) == 0,
                    "the gateway reads the model \"%.*s\", cJSON \"%s\"",
                    (int) ctx->model.len, ctx->model.data,
                    cJSON_IsString(m) ? m->valuestring : "(none)");
    }

    /* the provider request */

    fuzz_provider_init(&provider, endpoint == NGX_HTTP_LLM_MESSAGES
                                  ? &ngx_http_llm_format_anthropic
                                  : &ngx_http_llm_format_openai);

    provider.stream_usage = (options & 8) ? 0 : 1;
    ctx->provider = &provider;

    ngx_str_set(&map.alias, "alias");

    if (options & 16) {
        ngx_str_set(&map.name, "prov\"ider/mod\\el");
        ngx_str_set(&map.json, "\"prov\\\"ider/mod\\\\el\"");

    } else {
        ngx_str_set(&map.name, "provider-model");
        ngx_str_set(&map.json, "\"provider-model\"");
    }

    ctx->model_map = (options & 4) ? &map : NULL;
    ctx->upstream_model = ctx->model_map ? map.name : ctx->model;

    ngx_str_null(&headers);
    chain = NULL;

    rc = provider.format->create_request(&fr.request, ctx, &path, &headers,
                                         &chain);

    fuzz_assert(rc == NGX_OK, "create_request returned %ld", (long) rc);

    fuzz_assert(path.len >= provider.base.len
                && ngx_memcmp(path.data, provider.base.data,
                              provider.base.len) == 0,
                "the path does not start with the provider's base");

    ngx_memzero(&out, sizeof(fuzz_buf_t));
    fuzz_chain_take(&out, chain);

    /* the gateway reads the edited body as the provider will */

    fuzz_request_init(&fr2);

    fuzz_assert(fuzz_validate(&fr2, out.data, out.len, endpoint) == NGX_OK,
                "the edited body is refused (%.*s): \"%.*s\"",
                (int) fr2.ctx->error.len, fr2.ctx->error.data,
                (int) ngx_min(out.len, 2000), out.data);

    fuzz_assert(fr2.ctx->model.len == ctx->upstream_model.len
                && ngx_memcmp(fr2.ctx->model.data, ctx->upstream_model.data,
                              ctx->upstream_model.len) == 0,
                "the edited body has the model \"%.*s\", not \"%.*s\"",
                (int) fr2.ctx->model.len, fr2.ctx->model.data,
                (int) ctx->upstream_model.len, ctx->upstream_model.data);

    fuzz_assert(fr2.ctx->stream == ctx->stream, "stream %u, edited %u",
                ctx->stream, fr2.ctx->stream);

    if (ctx->strip_usage) {
        fuzz_assert(fr2.ctx->req.include_usage.type == NGX_HTTP_LLM_JSON_TRUE,
                    "include_usage is not true in the edited body: \"%.*s\"",
                    (int) ngx_min(out.len, 2000), out.data);
    }

    fuzz_request_free(&fr2);

    if (!cjson_ok) {
        goto edited_done;
    }

    /* a provider's parser: the last key wins, in any case for Go */

    edited = cJSON_ParseWithLength((const char *) out.data, out.len);

    fuzz_assert(edited != NULL, "cJSON refuses the edited body");

    m = fuzz_last(edited, "model", 1);

    fuzz_assert(cJSON_IsString(m)
                && ngx_strlen(m->valuestring) == ctx->upstream_model.len
                && ngx_memcmp(m->valuestring, ctx->upstream_model.data,
                              ctx->upstream_model.len) == 0,
                "a provider reads the model \"%s\", not \"%.*s\"",
                cJSON_IsString(m) ? m->valuestring : "(none)",
                (int) ctx->upstream_model.len, ctx->upstream_model.data);

    so = fuzz_last(edited, "stream_options", 1);
    inc = cJSON_IsObject(so) ? fuzz_last(so, "include_usage", 1) : NULL;

    if (ctx->strip_usage) {
        fuzz_assert(cJSON_IsTrue(inc),
                    "a provider does not read include_usage true");
    }

    /* the rest is the client's: the edits applied to the client's tree */

    if (ctx->model_map) {
        s = fuzz_cstr(map.name.data, map.name.len);
        cJSON_ReplaceItemInObjectCaseSensitive(orig, "model",
                                               cJSON_CreateString(s));
        free(s);
    }

    if (ctx->strip_usage) {
        so = cJSON_GetObjectItemCaseSensitive(orig, "stream_options");

        if (so == NULL) {
            so = cJSON_AddObjectToObject(orig, "stream_options");

        } else if (cJSON_IsNull(so)) {
            so = cJSON_CreateObject();
            cJSON_ReplaceItemInObjectCaseSensitive(orig, "stream_options", so);
        }

        if (cJSON_GetObjectItemCaseSensitive(so, "include_usage")) {
            cJSON_ReplaceItemInObjectCaseSensitive(so, "include_usage",
                                                   cJSON_CreateTrue());
        } else {
            cJSON_AddTrueToObject(so, "include_usage");
        }
    }

    fuzz_assert(fuzz_equal(orig, edited),
                "the edited body differs from the client's beyond the edits");

    cJSON_Delete(edited);

edited_done:

    fuzz_buf_free(&out);

done:

    cJSON_Delete(orig);
    fuzz_request_free(&fr);
    free(body);

    return 0;
}
