
/*
 * nginx-llm-gateway: an LLM gateway module for nginx.
 *
 * The umbrella header: configuration, request context and the interfaces
 * between the parts of the module (providers and their formats, the
 * upstream handler, the SSE parser, errors, variables and the mock).
 */


#ifndef _NGX_HTTP_LLM_MODULE_H_INCLUDED_
#define _NGX_HTTP_LLM_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>


#define NGX_HTTP_LLM_CHAT          1    /* OpenAI chat completions */
#define NGX_HTTP_LLM_EMBEDDINGS    2
#define NGX_HTTP_LLM_MODELS        3
#define NGX_HTTP_LLM_MESSAGES      4    /* Anthropic messages */
#define NGX_HTTP_LLM_GENERATE      5    /* Gemini generateContent */
#define NGX_HTTP_LLM_STREAM        6    /* Gemini streamGenerateContent */

#define ngx_http_llm_endpoint_bit(e)  (1 << (e))

#define ngx_http_llm_memstr(p, len, s)                                           \
    memmem(p, len, s, sizeof(s) - 1)


#define NGX_HTTP_LLM_USAGE_NONE       0
#define NGX_HTTP_LLM_USAGE_PROVIDER   1
#define NGX_HTTP_LLM_USAGE_ESTIMATED  2

#define NGX_HTTP_LLM_USAGE_SLOTS      6

/* the raw slots of every dialect: 0-2 input and its parts, 3 output */
#define NGX_HTTP_LLM_SLOT_INPUT       0
#define NGX_HTTP_LLM_SLOT_OUTPUT      3

#define NGX_HTTP_LLM_UINT64_MAX       ((uint64_t) 0xffffffffffffffffULL)
#define NGX_HTTP_LLM_COUNTER_MAX      ((uint64_t) 0x7fffffffffffffffULL)


typedef struct ngx_http_llm_provider_s  ngx_http_llm_provider_t;
typedef struct ngx_http_llm_format_s    ngx_http_llm_format_t;
typedef struct ngx_http_llm_ctx_s       ngx_http_llm_ctx_t;


#define NGX_HTTP_LLM_JSON_NONE     0
#define NGX_HTTP_LLM_JSON_OBJECT   1
#define NGX_HTTP_LLM_JSON_ARRAY    2
#define NGX_HTTP_LLM_JSON_STRING   3
#define NGX_HTTP_LLM_JSON_NUMBER   4
#define NGX_HTTP_LLM_JSON_TRUE     5
#define NGX_HTTP_LLM_JSON_FALSE    6
#define NGX_HTTP_LLM_JSON_NULL     7


/* a JSON value found by the scanner: its type and its bytes */

typedef struct {
    ngx_uint_t                   type;
    u_char                      *start;
    u_char                      *end;
    ngx_uint_t                   elements;      /* of an array */
    unsigned                     escaped:1;     /* a string with escapes */
    unsigned                     key_escaped:1; /* its key had escapes */
} ngx_http_llm_json_value_t;


typedef ngx_int_t (*ngx_http_llm_json_member_pt)(ngx_str_t *key,
    ngx_http_llm_json_value_t *v, void *data);
typedef ngx_http_llm_json_member_pt (*ngx_http_llm_json_nested_pt)(
    ngx_str_t *key, void *data);


/* an edit of the client's body: bytes replaced by a text */

typedef struct {
    u_char                      *start;
    u_char                      *end;
    ngx_str_t                    text;
} ngx_http_llm_edit_t;


/* the top-level members of a client request that the gateway reads */

typedef struct {
    ngx_http_llm_json_value_t    model;
    ngx_http_llm_json_value_t    messages;
    ngx_http_llm_json_value_t    stream;
    ngx_http_llm_json_value_t    stream_options;
    ngx_http_llm_json_value_t    include_usage;  /* of stream_options */
    ngx_http_llm_json_value_t    input;
    ngx_http_llm_json_value_t    max_tokens;
    ngx_http_llm_json_value_t    max_completion_tokens;
    ngx_http_llm_json_value_t    max_output_tokens;
    ngx_http_llm_json_value_t    generation_config;   /* Gemini */
    ngx_http_llm_json_value_t    system;         /* Anthropic */
    ngx_http_llm_json_value_t    temperature;
    ngx_http_llm_json_value_t    top_p;
    ngx_http_llm_json_value_t    max_output;     /* of generation_config */
    ngx_str_t                    duplicate;
    ngx_str_t                    folded;     /* a key of another case */
    ngx_uint_t                   escaped_key;
} ngx_http_llm_request_t;


/* the longest model name taken from a client or the configuration */

#define NGX_HTTP_LLM_MODEL_MAX     256


typedef struct {
    ngx_str_t                    alias;
    ngx_str_t                    name;
    ngx_str_t                    json;          /* name as a JSON string */
} ngx_http_llm_model_t;


struct ngx_http_llm_provider_s {
    ngx_str_t                    name;
    ngx_http_llm_format_t       *format;

    ngx_str_t                    url;
    ngx_str_t                    host;          /* Host header */
    ngx_str_t                    sni;           /* TLS name */
    ngx_str_t                    base;
    ngx_str_t                    key;

    ngx_array_t                 *models;        /* ngx_http_llm_model_t */
    ngx_array_t                 *headers;       /* ngx_keyval_t */

    /* "Host: ...\r\n", the auth header and the extra headers, prebuilt */
    ngx_str_t                    fixed_headers;

    ngx_int_t                    keepalive;
    ngx_flag_t                   stream_usage;
    ngx_int_t                    breaker_failures;  /* 0: off */
    ngx_uint_t                   breaker_rate;      /* percent */
    ngx_msec_t                   breaker_window;
    ngx_msec_t                   breaker_cooldown;
    ngx_msec_t                   first_byte_timeout;
    ngx_uint_t                   ssl;

#if (NGX_HTTP_SSL)
    ngx_str_t                    ssl_trusted_certificate;
    ngx_uint_t                   ssl_verify_depth;
#endif

    ngx_http_upstream_conf_t     upstream;
    ngx_http_upstream_srv_conf_t  *peers;       /* the provider's own */

    u_char                      *file;
    ngx_uint_t                   line;
};


#define NGX_HTTP_LLM_MAX_ATTEMPTS  8

/* what is read of a reply after its client went away (see upstream.c) */
#define NGX_HTTP_LLM_DRAIN_TIME    10000
#define NGX_HTTP_LLM_DRAIN_SIZE    (1024 * 1024)
#define NGX_HTTP_LLM_ROUTE_PEERS   64

#define NGX_HTTP_LLM_FALLBACK_NONE      0
#define NGX_HTTP_LLM_FALLBACK           1
#define NGX_HTTP_LLM_FALLBACK_CONTEXT   2

/* provider error types read from an error reply's body */
#define NGX_HTTP_LLM_ERROR_NONE         0
#define NGX_HTTP_LLM_ERROR_CONTEXT      1   /* context_length_exceeded */
#define NGX_HTTP_LLM_ERROR_QUOTA        2   /* insufficient_quota */
#define NGX_HTTP_LLM_ERROR_OVERLOADED   3   /* overloaded_error */

#define ngx_http_llm_error_bit(t)       (1 << (t))

/* retry triggers of the gateway's own, beside nginx's */
#define NGX_HTTP_LLM_RETRY_529          0x10


typedef struct {
    ngx_str_t                    name;
    ngx_http_llm_provider_t     *provider;
    ngx_http_upstream_conf_t    *conf;      /* the provider's, this route's
                                               retry policy */
    ngx_http_upstream_conf_t    *conf_first;  /* until a stream's first
                                                 byte */
    ngx_int_t                    weight;
    ngx_int_t                    current;
    ngx_uint_t                   fallback;  /* NGX_HTTP_LLM_FALLBACK_* */
    u_char                      *file;
    ngx_uint_t                   line;
} ngx_http_llm_route_peer_t;


typedef struct {
    ngx_str_t                    name;
    ngx_array_t                  peers;     /* ngx_http_llm_route_peer_t */
    ngx_uint_t                   declares_models;
    ngx_uint_t                   implicit;

    ngx_uint_t                   next_upstream;   /* retry triggers */
    ngx_uint_t                   retry;           /* 529, error types */
    ngx_uint_t                   tries;           /* 0: every provider */
    ngx_uint_t                   context;         /* context fallbacks */
    ngx_http_complex_value_t    *sticky;          /* the key, or NULL */
    ngx_msec_t                   timeout;         /* of all attempts */
    ngx_msec_t                   backoff;
} ngx_http_llm_route_t;


/* an attempt of a request: a provider of the route, its model name */

typedef struct {
    ngx_http_llm_route_peer_t   *peer;
    ngx_http_llm_model_t        *map;
    ngx_uint_t                   status;    /* the reply's, or 0 */
    ngx_uint_t                   error;     /* NGX_HTTP_LLM_ERROR_* */
    ngx_msec_t                   retry_after;
    unsigned                     timeout:1;
    unsigned                     slow:1;    /* a read timeout */
    unsigned                     done:1;
    unsigned                     used:1;    /* made, or under way */
    unsigned                     repeat:1;  /* of a provider tried before */
    unsigned                     reported:1;    /* to the breaker */
    unsigned                     failed:1;      /* the provider's fault */
} ngx_http_llm_attempt_t;


/* statistics in the shared zone */

#define NGX_HTTP_LLM_HIST          64

enum {
    ngx_http_llm_err_client = 0,
    ngx_http_llm_err_rate_limited,
    ngx_http_llm_err_provider,
    ngx_http_llm_err_unavailable,
    ngx_http_llm_err_aborted,
    ngx_http_llm_err_n
};


typedef struct {
    uint64_t                     requests;
    uint64_t                     attempts;      /* with the provider */
    uint64_t                     attempts_failed;
    uint64_t                     errors[ngx_http_llm_err_n];
    uint64_t                     incomplete;    /* streams cut short */
    uint64_t                     usage[3];      /* by source */
    uint64_t                     input;
    uint64_t                     cache_read;
    uint64_t                     cache_write;
    uint64_t                     output;
    uint64_t                     reasoning;
    uint64_t                     cost;          /* 1e-12 USD */
    uint64_t                     unpriced;
    uint64_t                     latency[NGX_HTTP_LLM_HIST];
    uint64_t                     ttft[NGX_HTTP_LLM_HIST];

    /* of a variant: the outcomes its clients report (llm_feedback) */
    uint64_t                     outcomes;
    uint64_t                     successes;
    uint64_t                     scores;
    double                       score_sum;
    double                       score_squares;
    double                       p_sequential;  /* the least so far, or 0 */

    /* a variant rolled back by its guardrails, for this configuration */
    ngx_uint_t                   rollback_generation;
    time_t                       rolled_back;
    ngx_uint_t                   rollback_reason;
} ngx_http_llm_stats_t;


#define NGX_HTTP_LLM_NODE_PROVIDER  0
#define NGX_HTTP_LLM_NODE_MODEL     1
#define NGX_HTTP_LLM_NODE_VARIANT   2

typedef struct {
    u_char                       color;
    u_char                       kind;
    u_short                      len;
    ngx_queue_t                  queue;
    ngx_http_llm_stats_t         stats;
    u_char                       name[1];
} ngx_http_llm_node_t;


/* a circuit breaker of a provider, shared by the workers */

#define NGX_HTTP_LLM_BREAKERS      64
#define NGX_HTTP_LLM_BREAKER_NAME  64
#define NGX_HTTP_LLM_SLOW_CLIENTS  16

#define NGX_HTTP_LLM_CLOSED        0
#define NGX_HTTP_LLM_OPEN          1
#define NGX_HTTP_LLM_HALF_OPEN     2

/* how an attempt ended, for its provider's breaker */
#define NGX_HTTP_LLM_ATTEMPT_OK        0
#define NGX_HTTP_LLM_ATTEMPT_FAILED    1
#define NGX_HTTP_LLM_ATTEMPT_SLOW      2    /* no reply in read time */

typedef struct {
    uint32_t                     hash;          /* of the name; 0: free */
    u_short                      len;
    u_char                       name[NGX_HTTP_LLM_BREAKER_NAME];
    ngx_uint_t                   state;
    ngx_msec_t                   until;         /* open, or the probe's */
    uint64_t                     opened;        /* times */

    /* attempts and failures of this window and of the one before */
    ngx_msec_t                   window;        /* when this one began */
    ngx_uint_t                   attempts;
    ngx_uint_t                   failures;
    ngx_uint_t                   prev_attempts;
    ngx_uint_t                   prev_failures;

    /* the clients whose slow attempts counted in this window */
    uint32_t                     slow[NGX_HTTP_LLM_SLOW_CLIENTS];
    ngx_uint_t                   nslow;
} ngx_http_llm_breaker_t;


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;         /* least recently used last */
    ngx_http_llm_stats_t         total;
    time_t                       started;
    uint64_t                     evicted;
    time_t                       evict_logged;
    ngx_http_llm_breaker_t       breaker[NGX_HTTP_LLM_BREAKERS];

    /* the request ids that got their feedback, oldest last */
    ngx_rbtree_t                 feedback;
    ngx_rbtree_node_t            feedback_sentinel;
    ngx_queue_t                  feedback_queue;
    uint64_t                     feedback_dropped;
} ngx_http_llm_shctx_t;


typedef struct {
    ngx_http_llm_shctx_t        *sh;
    ngx_slab_pool_t             *shpool;
    ngx_str_t                    name;
} ngx_http_llm_zone_t;


/* prices per token, in 1e-12 USD, so that every cost is an exact integer */

typedef struct {
    ngx_str_t                    model;
    uint64_t                     input;
    uint64_t                     output;
    uint64_t                     cache_read;
    uint64_t                     cache_write;
    uint64_t                     reasoning;
    uint64_t                     max_input_tokens;
    uint64_t                     max_output_tokens;
} ngx_http_llm_price_t;


/* limits: per period, of requests, tokens and spend; and in flight */

#define NGX_HTTP_LLM_LIMIT_REQUESTS    0
#define NGX_HTTP_LLM_LIMIT_TOKENS      1
#define NGX_HTTP_LLM_LIMIT_SPEND       2    /* in 1e-12 USD */
#define NGX_HTTP_LLM_LIMIT_N           3

typedef struct {
    uint64_t                     max[NGX_HTTP_LLM_LIMIT_N];   /* 0: none */
    ngx_msec_t                   period[NGX_HTTP_LLM_LIMIT_N];
    ngx_uint_t                   concurrent;                  /* 0: none */
} ngx_http_llm_limits_t;


/* a virtual key of llm_keys: what the gateway knows of a client */

typedef struct {
    u_char                       digest[32];    /* SHA-256 of the key */
    ngx_str_t                    name;
    ngx_array_t                 *models;        /* ngx_str_t; NULL: any */
    ngx_array_t                 *routes;        /* ngx_str_t; NULL: any */
    ngx_array_t                 *metadata;      /* ngx_keyval_t, or NULL */
    ngx_http_llm_limits_t        limits;
    ngx_uint_t                   has_limits;
} ngx_http_llm_key_t;


/* an llm_limit of a location, and a reservation made in its zone */

typedef struct ngx_http_llm_limit_zone_s  ngx_http_llm_limit_zone_t;

typedef struct {
    ngx_shm_zone_t              *shm_zone;
    unsigned                     clamp:1;
    unsigned                     dry_run:1;
} ngx_http_llm_limit_t;


#define NGX_HTTP_LLM_LIMITS_MAX        8

typedef struct {
    ngx_http_llm_limit_zone_t   *zone;
    ngx_str_t                    key;
    uint32_t                     hash;
    uint64_t                     epoch;
    uint64_t                     tokens;
    uint64_t                     spend;
} ngx_http_llm_limit_hold_t;


typedef struct {
    ngx_str_t                    file;
    ngx_http_llm_key_t          *keys;          /* sorted by digest */
    ngx_uint_t                   nkeys;
    ngx_shm_zone_t              *zone;          /* of the keys' limits */
} ngx_http_llm_keys_t;


/* prompt-variant experiments: ngx_http_llm_experiment.c */

#define NGX_HTTP_LLM_SIG_LEN       16      /* bytes of a request id's HMAC */

typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   weight;
    ngx_uint_t                   index;
    ngx_str_t                    spec;          /* its line, fingerprinted */
    unsigned                     control:1;
    unsigned                     shadow:1;      /* gets copies only */

    ngx_uint_t                   mode;          /* of the system prompt */
    ngx_str_t                   *system_message;  /* the edits' texts */
    ngx_str_t                   *system_member;
    ngx_str_t                   *system_value;
    ngx_str_t                   *system_prefix;
    ngx_str_t                   *system_suffix;
    ngx_str_t                   *system_part;
    ngx_str_t                   *system_part_comma;
    ngx_str_t                   *comma_system_part;

    ngx_str_t                    model;         /* an alias, or none */
    ngx_str_t                   *model_json;
    ngx_str_t                    route_name;
    ngx_http_llm_route_t        *route;
    ngx_str_t                    temperature;   /* JSON numbers, or none */
    ngx_str_t                    top_p;
    uint64_t                     max_tokens;    /* 0: none */

    /* a shadow: whether the current request is copied to it */
    unsigned                     copy:1;

    /* this worker's view of its rollback */
    ngx_msec_t                   rollback_checked;
    unsigned                     rolled_back:1;
} ngx_http_llm_variant_t;


typedef struct {
    ngx_str_t                    name;
    ngx_http_complex_value_t    *key;           /* NULL: random */
    ngx_array_t                  variants;      /* ngx_http_llm_variant_t */
    ngx_uint_t                   control;       /* its index */
    ngx_uint_t                   weights;       /* the sum, shadows too */
    ngx_flag_t                   header;
    ngx_str_t                    secret;
    time_t                       window;        /* of feedback */
    ngx_uint_t                   mde;           /* percent */
    uint32_t                     fingerprint;

    /* rollback: the guardrails of a variant against the control */
    ngx_uint_t                   rollback;      /* any guardrail */
    double                       max_error_rate;   /* above the control */
    ngx_msec_t                   max_latency;      /* p95 above */
    uint64_t                     max_cost;         /* per request above */
    ngx_uint_t                   rollback_min;     /* requests per arm */
} ngx_http_llm_experiment_t;


typedef struct {
    ngx_array_t                  providers;  /* ngx_http_llm_provider_t * */
    ngx_array_t                  routes;     /* ngx_http_llm_route_t * */

    ngx_array_t                 *prices;     /* ngx_http_llm_price_t */
    ngx_array_t                 *overrides;  /* ngx_http_llm_price_t */
    ngx_str_t                    prices_file;
    ngx_http_llm_price_t       **price_hash;  /* exact names */
    ngx_uint_t                   price_hash_mask;

    ngx_shm_zone_t              *zone;
    ngx_array_t                  limit_zones;  /* limit zone * */
    ngx_array_t                  experiments;  /* experiment * */
    ngx_uint_t                   generation;   /* of this configuration */
} ngx_http_llm_main_conf_t;


typedef struct {
    ngx_http_llm_route_t        *route;
    ngx_str_t                    route_name;
    u_char                      *route_file;
    ngx_uint_t                   route_line;

    ngx_flag_t                   pass_request_headers;
    ngx_flag_t                   pass_forwarded;
    ngx_flag_t                   attempts_header;

    ngx_array_t                 *limits;        /* ngx_http_llm_limit_t */

    ngx_http_llm_experiment_t   *experiment;
    ngx_str_t                    experiment_name;
    ngx_http_llm_keys_t         *keys;          /* NULL: open */

    ngx_uint_t                   status;
    ngx_uint_t                   feedback;

    ngx_uint_t                   mock;
    ngx_uint_t                   mock_chunks;
    ngx_msec_t                   mock_delay;
    ngx_str_t                    mock_key;
} ngx_http_llm_loc_conf_t;


/* the canonical usage of a request, in tokens (see the README) */

typedef struct {
    uint64_t                     input;         /* all input */
    uint64_t                     cache_read;    /* of input */
    uint64_t                     cache_write;   /* of input */
    uint64_t                     output;        /* all output */
    uint64_t                     reasoning;     /* of output */
} ngx_http_llm_usage_t;


/* the counters of a provider's usage objects: for each, the last wins */

typedef struct {
    uint64_t                     slot[NGX_HTTP_LLM_USAGE_SLOTS];
    ngx_uint_t                   seen;          /* a bit per slot */
    ngx_uint_t                   objects;       /* usage objects read */
    ngx_uint_t                   invalid;       /* untrusted objects */
    ngx_uint_t                   last;          /* slots of the last one */
    uint64_t                     content;       /* bytes of text relayed */
    unsigned                     finished:1;    /* the reply said it ends */
    unsigned                     delta:1;       /* Anthropic: message_delta
                                                   usage read */
    unsigned                     final:1;       /* the provider's final
                                                   usage was read */
} ngx_http_llm_usage_raw_t;


typedef struct {
    ngx_str_t                    key;           /* member of the object */
    ngx_str_t                    sub;           /* its member, or none */
    ngx_uint_t                   slot;
} ngx_http_llm_usage_field_t;


/* how a provider family reports usage */

typedef struct {
    ngx_str_t                    name;
    ngx_str_t                    container;     /* "usage", ... */
    ngx_str_t                    parent;        /* "message" or none */
    ngx_http_llm_usage_field_t  *fields;
    void                       (*canonical)(ngx_http_llm_usage_raw_t *raw,
                                       ngx_http_llm_usage_t *usage);

    /* the keys of the reply's text, of a stream's end (null-terminated) */
    ngx_str_t                   *content;
    ngx_str_t                   *finish;

    /* a stream's usage counts only once the format marks it final */
    ngx_uint_t                   marked;

    /* a bit for each length of the keys above, found at the first use */
    uint64_t                     lengths;
} ngx_http_llm_dialect_t;


/* finds the top-level usage object in a body that arrives in pieces */

typedef struct {
    ngx_uint_t                   depth;
    ngx_uint_t                   key_depth;     /* 1, or 2 in an array */
    u_char                       key[16];
    size_t                       key_len;
    u_char                      *buf;           /* the object captured */
    size_t                       len;
    size_t                       size;
    unsigned                     in_string:1;
    unsigned                     escape:1;
    unsigned                     want_key:1;
    unsigned                     in_key:1;
    unsigned                     match:1;       /* the key is the container */
    unsigned                     value:1;       /* the match's value next */
    unsigned                     capturing:1;
    unsigned                     overflow:1;

    /* a stream (a JSON array): its text and its end, at any depth */
    u_char                       word[24];      /* the string being read */
    size_t                       word_len;
    uint32_t                     code;          /* of a \u escape */
    unsigned                     word_is:2;     /* a text or end key */
    unsigned                     next:2;        /* the value after it */
    unsigned                     text:1;        /* in a text value */
    unsigned                     hex:3;         /* \u digits to come */
    unsigned                     element_usage:1;
} ngx_http_llm_capture_t;


/* an SSE event as the parser hands it to a format */

#define NGX_HTTP_LLM_SSE_KEEP      0
#define NGX_HTTP_LLM_SSE_DROP      1
#define NGX_HTTP_LLM_SSE_REPLACE   2

typedef struct {
    ngx_str_t                    event;
    ngx_str_t                    data;
    u_char                      *end;       /* in the input, after it */
    ngx_uint_t                   action;    /* what the client gets */
    u_char                      *cut_start; /* REPLACE: the data less */
    u_char                      *cut_end;   /* these bytes */

    /* what the scan of its text found: ngx_http_llm_usage_scan_event() */
    u_char                      *usage;     /* the last member named as the
                                               usage container, or NULL */
    ngx_uint_t                   usage_objects;  /* of those, objects */

    unsigned                     truncated:1;
    unsigned                     scanned:1;
    unsigned                     finish:1;  /* a key of the dialect's
                                               finish, a string value */

    size_t                       data_off;  /* where its data begins in
                                               the bytes of the event */
} ngx_http_llm_sse_event_t;


typedef ngx_int_t (*ngx_http_llm_sse_handler_pt)(ngx_http_request_t *r,
    ngx_http_llm_sse_event_t *ev);


typedef struct {
    ngx_uint_t                   state;
    ngx_uint_t                   field;       /* the field being read */
    ngx_uint_t                   nevents;

    u_char                      *data;        /* data of the current event */
    size_t                       len;
    size_t                       size;

    u_char                      *ref;         /* or the data in the input */
    size_t                       ref_len;

    u_char                       fname[8];    /* the field name being read */
    size_t                       flen;

    u_char                       name[32];    /* the event: field */
    size_t                       name_len;

    unsigned                     truncated:1;
    unsigned                     has_data:1;

    /* the bytes of the current event in earlier input, where its data is */
    size_t                       pending;
    size_t                       data_off;
} ngx_http_llm_sse_t;


/*
 * An SSE event kept as the pattern of the events like it: the same bytes
 * but for one text value (see ngx_http_llm_usage_scan_event())
 */

#define NGX_HTTP_LLM_MEMO_SIZE     512

typedef struct {
    size_t                       len;        /* of its data, or 0 */
    size_t                       start;      /* of the text value's bytes */
    size_t                       end;        /* its closing quote */
    uint64_t                     before;     /* bytes of text before it */
    uint64_t                     after;      /* and after it */
    size_t                       usage;      /* the last usage member: from
                                                the start, or the end */
    ngx_uint_t                   usage_objects;
    unsigned                     has_usage:1;
    unsigned                     usage_after:1;  /* after the text value */
    unsigned                     finish:1;
    u_char                       data[NGX_HTTP_LLM_MEMO_SIZE];
} ngx_http_llm_memo_t;


/* the boundary between the gateway and a provider's wire format */

struct ngx_http_llm_format_s {
    ngx_str_t                    name;
    ngx_uint_t                   endpoints;     /* bits of those served */

    /* the header that carries the key: "NAME: " ... the key */
    ngx_str_t                    auth;

    /*
     * request time: the path, header lines of the request's own (beside
     * the provider's fixed ones) and the body of the provider request
     */
    ngx_int_t                  (*create_request)(ngx_http_request_t *r,
                                       ngx_http_llm_ctx_t *ctx,
                                       ngx_str_t *path, ngx_str_t *headers,
                                       ngx_chain_t **body);

    /* a complete SSE event of a streamed reply */
    ngx_int_t                  (*event)(ngx_http_request_t *r,
                                       ngx_http_llm_sse_event_t *ev);

    ngx_http_llm_dialect_t      *dialect;
};


struct ngx_http_llm_ctx_s {
    ngx_http_llm_route_t        *route;
    ngx_http_llm_provider_t     *provider;
    ngx_http_llm_model_t        *model_map;

    ngx_http_llm_attempt_t       attempt[NGX_HTTP_LLM_MAX_ATTEMPTS];
    ngx_uint_t                   nattempts;     /* planned */
    ngx_uint_t                   current;       /* the one under way */
    ngx_int_t                    next;          /* the next, or -1 */
    ngx_msec_t                   next_wait;     /* its backoff */
    ngx_msec_t                   retry;         /* all breakers open */
    ngx_event_t                  backoff;       /* holds the request back */
    ngx_chain_t                 *backoff_out;   /* the request held */
    ngx_msec_t                   backoff_until;
    u_char                      *body_start;    /* of the reply */
    void                        *peer;          /* ngx_http_llm_peer_t */

    ngx_uint_t                   endpoint;

    ngx_str_t                    body;          /* the client's JSON */
    ngx_http_llm_request_t       req;
    ngx_str_t                    model;
    ngx_str_t                    upstream_model;
    ngx_str_t                    error;
    ngx_http_llm_key_t          *key;           /* of llm_keys, or NULL */
    ngx_buf_t                   *error_body;

    ngx_http_status_t            status;
    ngx_http_chunked_t           chunked;
    ngx_http_llm_sse_t           sse;
    ngx_http_llm_capture_t       capture;

    ngx_http_llm_usage_raw_t     raw;
    ngx_http_llm_usage_t         usage;
    ngx_uint_t                   usage_source;
    uint64_t                     cost;          /* 1e-12 USD */
    ngx_uint_t                   events;        /* SSE events received */
    off_t                        received;      /* body bytes received */
    off_t                        length;        /* of the reply, or -1 */

    /* a stream whose events are edited: the bytes of the current event */
    u_char                      *raw_start;     /* of the next event */
    u_char                      *run_start;     /* of the events kept */
    u_char                      *hold;
    size_t                       hold_len;
    size_t                       hold_size;
    ngx_chain_t                 *blocks;        /* output memory, reused */
    ngx_chain_t                **out;

    /* an event of the stream, the pattern of those like it */
    ngx_http_llm_memo_t         *memo;

    ngx_msec_t                   start;
    ngx_msec_t                   first_byte;    /* of the reply, or 0 */
    ngx_msec_t                   end;           /* of the reply, or 0 */

    /* the experiment of the request, its variant, its signed id */
    ngx_http_llm_experiment_t   *experiment;
    ngx_http_llm_variant_t      *variant;
    ngx_str_t                    request_id;

    /* a client gone once the model finished: the usage is still read */
    ngx_msec_t                   gone;
    size_t                       drained;
    ngx_http_upstream_conf_t    *drain_conf;

    /* limits: the reservations, what the client is told of them */
    ngx_http_llm_limit_hold_t    holds[NGX_HTTP_LLM_LIMITS_MAX];
    ngx_uint_t                   nholds;
    ngx_uint_t                   limit_status;  /* 0: no limit */
    uint64_t                     clamp;         /* max tokens, or 0 */
    uint64_t                     rl_limit[2];   /* requests, tokens */
    uint64_t                     rl_remaining[2];
    ngx_msec_t                   rl_reset[2];
    ngx_uint_t                   rl_set;        /* a bit per dimension */

    unsigned                     stream:1;
    unsigned                     sse_reply:1;
    unsigned                     strip_usage:1;
    unsigned                     done:1;
    unsigned                     finalized:1;   /* the usage is final */
    unsigned                     cost_final:1;
    unsigned                     priced:1;      /* the model has a price */
    unsigned                     context:1;     /* needs a larger context */
    unsigned                     wait_body:2;   /* of the reply, before it
                                                   goes to the client */
    unsigned                     retry_reply:1; /* the reply is retried */
    unsigned                     bad_reply:1;   /* not HTTP */
    unsigned                     drain:1;       /* the usage is awaited */
    unsigned                     client_gone:1;
    unsigned                     model_override:1;  /* by a variant */
    unsigned                     shadow:1;      /* a shadow's subrequest */
    unsigned                     logged:1;      /* in the statistics */
};


extern ngx_module_t  ngx_http_llm_module;


/* providers: ngx_http_llm_provider.c; routes: ngx_http_llm_route.c */
char *ngx_http_llm_provider_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_route_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_init_routes(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
ngx_http_llm_route_t *ngx_http_llm_find_route(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf, ngx_str_t *name);
ngx_int_t ngx_http_llm_init_peers(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
ngx_int_t ngx_http_llm_route_peer_conf(ngx_conf_t *cf,
    ngx_http_llm_route_t *route, ngx_http_llm_route_peer_t *peer);
ngx_int_t ngx_http_llm_plan_attempts(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_use_attempt(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_next_attempt(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_uint_t ngx_http_llm_attempts_made(ngx_http_llm_ctx_t *ctx);
ngx_uint_t ngx_http_llm_attempt_failed(ngx_http_llm_attempt_t *a);
u_char *ngx_http_llm_attempts_text(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, size_t *len);
ngx_uint_t ngx_http_llm_provider_has_header(ngx_http_llm_provider_t *p,
    u_char *lowcase_key, size_t len);
ngx_http_llm_model_t *ngx_http_llm_provider_model(ngx_http_llm_provider_t *p,
    ngx_str_t *alias);
ngx_http_llm_provider_t *ngx_http_llm_find_provider(
    ngx_http_llm_main_conf_t *lmcf, ngx_str_t *name);
char *ngx_http_llm_dispatch(ngx_conf_t *cf, ngx_command_t *cmds, void *conf,
    char *block);

/* the content handler: ngx_http_llm_handler.c */
ngx_int_t ngx_http_llm_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_request_body(ngx_http_request_t *r, ngx_str_t *body);
cJSON *ngx_http_llm_parse_json(ngx_http_request_t *r, ngx_str_t *body);
ngx_uint_t ngx_http_llm_endpoint(ngx_str_t *uri);
ngx_table_elt_t *ngx_http_llm_client_header(ngx_http_request_t *r,
    u_char *lowcase_key, size_t len);
ngx_table_elt_t *ngx_http_llm_client_key(ngx_http_request_t *r,
    ngx_str_t *key);

/* the upstream callbacks: ngx_http_llm_upstream.c */
void ngx_http_llm_upstream_start(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_create_request(ngx_http_request_t *r);
void ngx_http_llm_upstream_provider(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_output_ref(ngx_http_request_t *r, u_char *pos,
    u_char *last, ngx_chain_t ***ll);

/* formats */
extern ngx_http_llm_format_t  ngx_http_llm_format_openai;
extern ngx_http_llm_format_t  ngx_http_llm_format_anthropic;
extern ngx_http_llm_format_t  ngx_http_llm_format_gemini;
ngx_http_llm_format_t *ngx_http_llm_format(ngx_str_t *name);
ngx_int_t ngx_http_llm_format_path(ngx_http_request_t *r,
    ngx_http_llm_provider_t *p, ngx_str_t *path, ...);
ngx_chain_t *ngx_http_llm_json_chain(ngx_pool_t *pool, cJSON *json);
ngx_int_t ngx_http_llm_body_edit(ngx_pool_t *pool, ngx_str_t *body,
    ngx_http_llm_edit_t *edit, ngx_uint_t n, ngx_chain_t **out);
ngx_uint_t ngx_http_llm_clamp_edits(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_json_value_t **v, ngx_uint_t nv,
    u_char *obj, char *name, ngx_http_llm_edit_t *edit);

/* JSON scanner: ngx_http_llm_json.c */
ngx_int_t ngx_http_llm_json_object(u_char *p, u_char *last,
    ngx_http_llm_json_member_pt handler, void *data);
ngx_int_t ngx_http_llm_json_object_nested(u_char *p, u_char *last,
    ngx_http_llm_json_member_pt handler, ngx_http_llm_json_nested_pt nested,
    void *data);
ngx_int_t ngx_http_llm_json_unescape(ngx_pool_t *pool,
    ngx_http_llm_json_value_t *v, ngx_str_t *out);
ngx_int_t ngx_http_llm_json_key(ngx_str_t *key, ngx_str_t *name);
ngx_int_t ngx_http_llm_json_text(u_char *p, size_t len);
ngx_int_t ngx_http_llm_json_utf8(u_char *p, size_t len);
u_char *ngx_http_llm_json_skip(u_char *p, u_char *last,
    ngx_http_llm_json_value_t *v);

/* stream output: ngx_http_llm_stream.c */
ngx_int_t ngx_http_llm_stream_output(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *pos, u_char *last, ngx_chain_t ***ll);
ngx_int_t ngx_http_llm_stream_end(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_chain_t ***ll);

/* SSE: ngx_http_llm_sse.c */
ngx_int_t ngx_http_llm_sse_parse(ngx_http_request_t *r,
    ngx_http_llm_sse_t *sse, u_char *p, u_char *last,
    ngx_http_llm_sse_handler_pt handler);

/* usage: ngx_http_llm_usage.c */
extern ngx_http_llm_dialect_t  ngx_http_llm_dialect_openai;
extern ngx_http_llm_dialect_t  ngx_http_llm_dialect_anthropic;
extern ngx_http_llm_dialect_t  ngx_http_llm_dialect_gemini;
ngx_http_llm_dialect_t *ngx_http_llm_dialect(ngx_str_t *name);
ngx_int_t ngx_http_llm_usage_event(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, u_char *p, u_char *last);
ngx_int_t ngx_http_llm_usage_read(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, u_char *p, u_char *last);
ngx_uint_t ngx_http_llm_usage_strings(u_char *p, u_char *last,
    ngx_str_t *keys, uint64_t *bytes);
void ngx_http_llm_usage_content(ngx_http_llm_dialect_t *dialect,
    ngx_http_llm_usage_raw_t *raw, ngx_str_t *data);
ngx_int_t ngx_http_llm_usage_scan_event(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_sse_event_t *ev);
ngx_int_t ngx_http_llm_usage_body(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, u_char *last);
void ngx_http_llm_usage_finalize(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
u_char *ngx_http_llm_usage_source_name(ngx_uint_t source, size_t *len);

/* prices: ngx_http_llm_price.c */
char *ngx_http_llm_prices(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_price(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_init_prices(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
void ngx_http_llm_price_request(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_http_llm_price_t *ngx_http_llm_price_lookup(ngx_http_request_t *r,
    ngx_http_llm_provider_t *p, ngx_str_t *upstream_model, ngx_str_t *model);
u_char *ngx_http_llm_format_usd(u_char *p, uint64_t pico);

/* shared statistics: ngx_http_llm_zone.c */
char *ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_log_handler(ngx_http_request_t *r);
ngx_http_llm_stats_t *ngx_http_llm_zone_node(ngx_http_llm_zone_t *zone,
    ngx_uint_t kind, ngx_str_t *name, ngx_uint_t create, ngx_log_t *log);
ngx_int_t ngx_http_llm_variant_name(ngx_pool_t *pool,
    ngx_http_llm_experiment_t *e, ngx_http_llm_variant_t *v,
    ngx_str_t *name);
ngx_msec_t ngx_http_llm_hist_bound(ngx_uint_t i);

/* limits: ngx_http_llm_limit.c */
char *ngx_http_llm_limit_zone_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_limit_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_limit_merge(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *conf);
ngx_shm_zone_t *ngx_http_llm_limit_zone_add(ngx_conf_t *cf, ngx_str_t *name,
    ssize_t size);
ngx_int_t ngx_http_llm_limit_value(ngx_str_t *name, ngx_str_t *value,
    ngx_http_llm_limits_t *limits);
ngx_int_t ngx_http_llm_limit_reserve(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_limit_header(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_str_t *ngx_http_llm_limit_status_name(ngx_uint_t status);
ngx_int_t ngx_http_llm_limit_status(ngx_http_request_t *r, ngx_str_t *out);

/* virtual keys: ngx_http_llm_keys.c */
char *ngx_http_llm_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_keys_check(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_uint_t ngx_http_llm_key_allows(ngx_array_t *names, ngx_str_t *name);
ngx_int_t ngx_http_llm_key_name_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
ngx_int_t ngx_http_llm_key_meta_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

/* experiments: ngx_http_llm_experiment.c */
char *ngx_http_llm_experiment_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_experiment_use(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_feedback_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_llm_experiment_t *ngx_http_llm_find_experiment(
    ngx_http_llm_main_conf_t *lmcf, ngx_str_t *name);
char *ngx_http_llm_init_experiments(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf);
ngx_int_t ngx_http_llm_experiment_apply(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_experiment_header(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_uint_t ngx_http_llm_experiment_edits(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_edit_t *edit);
ngx_int_t ngx_http_llm_experiment_status(ngx_http_request_t *r,
    ngx_str_t *out);
void ngx_http_llm_experiment_guard(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_zone_t *zone,
    ngx_http_llm_stats_t *st);

/* circuit breakers: ngx_http_llm_breaker.c */
char *ngx_http_llm_breaker_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_llm_breaker_allow(ngx_http_request_t *r,
    ngx_http_llm_provider_t *p, ngx_msec_t *retry, ngx_uint_t probe);
void ngx_http_llm_breaker_report(ngx_http_request_t *r,
    ngx_http_llm_provider_t *p, ngx_uint_t result, ngx_msec_t retry_after);
ngx_msec_t ngx_http_llm_retry_after(ngx_http_request_t *r);
u_char *ngx_http_llm_breaker_status(u_char *p,
    ngx_http_llm_breaker_t *breakers);

/* status page: ngx_http_llm_status.c */
char *ngx_http_llm_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
u_char *ngx_http_llm_status_percentiles(u_char *p, uint64_t *hist);

/* errors: ngx_http_llm_error.c */
ngx_int_t ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    char *code, char *param, char *fmt, ...);
ngx_int_t ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status,
    cJSON *json);
ngx_int_t ngx_http_llm_send_buf(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b);
ngx_int_t ngx_http_llm_send_text(ngx_http_request_t *r, ngx_uint_t status,
    char *json);
ngx_int_t ngx_http_llm_error_filter_init(ngx_conf_t *cf);
u_char *ngx_http_llm_log_text(u_char *dst, u_char *end, u_char *src,
    size_t len);
ngx_http_llm_ctx_t *ngx_http_llm_get_ctx(ngx_http_request_t *r);

/* variables: ngx_http_llm_variables.c */
ngx_int_t ngx_http_llm_add_variables(ngx_conf_t *cf);

/* mock provider: ngx_http_llm_mock.c */
char *ngx_http_llm_mock(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);


#endif /* _NGX_HTTP_LLM_MODULE_H_INCLUDED_ */
