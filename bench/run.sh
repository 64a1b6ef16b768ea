#!/bin/sh
# Benchmark: llm_pass against a plain proxy_pass, same upstream, same nginx.
#
#   sh bench/run.sh /abs/path/ngx_http_llm_module.so      (make bench)
#
# One nginx (worker_processes 1: on this 2-core machine nginx gets one core
# and wrk the other) serves three things on 127.0.0.1:
#   - the upstream: `return 200` with a fixed chat.completion JSON (~0.5 KB)
#     on /v1/chat/completions, and a fixed SSE stream, sent chunked as
#     providers send streams (role chunk, 7 content chunks, finish chunk,
#     [DONE]; ~2.3 KB) on /sse/v1/chat/completions; the same as OpenAI
#     streams it when the usage is asked for (stream_options.include_usage,
#     as the gateway asks): "usage":null in every chunk and a usage chunk
#     (~2.6 KB) on /sse-usage/v1/chat/completions; the cheapest possible
#     provider, so that the numbers show the cost of the front server;
#   - proxy:  proxy_pass http://bench_up  (upstream{} with keepalive,
#             proxy_http_version 1.1, Connection "") to /v1 and /sse/v1;
#   - llm:    llm_pass, llm_provider url http://bench_up/v1 (resp.
#             /sse-usage/v1), i.e. the same upstream{} block with the same
#             keepalive; it reads the usage and removes it from the stream,
#             so that both fronts give the client the same bytes.
# wrk (1 thread, CONNS connections) POSTs a ~1 KB chat request, without and
# with "stream": true, to both fronts: ROUNDS interleaved rounds of DURATION
# seconds per front and mode after a warmup; prints the medians over the
# rounds as a markdown table, with llm_pass / proxy_pass ratios.
#
# Environment: ROUNDS (5), DURATION (5), WARMUP (2), CONNS (32),
#              NGINX (/usr/sbin/nginx), KEEP_TMP=1 keeps the temp prefix.

. "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}

P_UP=$(free_port)
P_PROXY=$(free_port)
P_LLM=$(free_port)
while [ "$P_PROXY" = "$P_UP" ]; do P_PROXY=$(free_port); done
while [ "$P_LLM" = "$P_UP" ] || [ "$P_LLM" = "$P_PROXY" ]; do P_LLM=$(free_port); done

# --- the fixed upstream answers ----------------------------------------
# (nginx config strings: \" and \n are escapes; $ must not appear)

ID='chatcmpl-bench0000000000000000000001'
MODEL='gpt-4o-mini-2024-07-18'
JSON_BODY="{\\\"id\\\":\\\"$ID\\\",\\\"object\\\":\\\"chat.completion\\\",\\\"created\\\":1730000000,\\\"model\\\":\\\"$MODEL\\\",\\\"system_fingerprint\\\":\\\"fp_0123456789\\\",\\\"choices\\\":[{\\\"index\\\":0,\\\"message\\\":{\\\"role\\\":\\\"assistant\\\",\\\"content\\\":\\\"The quick brown fox jumps over the lazy dog. Benchmarks measure the gateway, not the model, so this answer is short and fixed.\\\",\\\"refusal\\\":null},\\\"logprobs\\\":null,\\\"finish_reason\\\":\\\"stop\\\"}],\\\"usage\\\":{\\\"prompt_tokens\\\":245,\\\"completion_tokens\\\":27,\\\"total_tokens\\\":272}}\\n"

sse_event() {
    # $1 = delta JSON, $2 = finish_reason JSON, $3 = what follows "choices"
    printf 'data: {\\"id\\":\\"%s\\",\\"object\\":\\"chat.completion.chunk\\",\\"created\\":1730000000,\\"model\\":\\"%s\\",\\"system_fingerprint\\":\\"fp_0123456789\\",\\"choices\\":[{\\"index\\":0,\\"delta\\":%s,\\"logprobs\\":null,\\"finish_reason\\":%s}]%s}\\n\\n' \
        "$ID" "$MODEL" "$1" "$2" "$3"
}
sse_body() {
    # $1 = "" for a client that did not ask for the usage; ",usage:null" as
    # OpenAI streams when stream_options.include_usage is set: "usage":null
    # in every chunk, and a last chunk with the usage
    sse_event '{\"role\":\"assistant\",\"content\":\"\"}' null "$1"
    for w in 'The quick brown' ' fox jumps over' ' the lazy dog.' ' Benchmarks measure' \
             ' the gateway,' ' not the model,' ' so this answer is short.'; do
        sse_event "{\\\"content\\\":\\\"$w\\\"}" null "$1"
    done
    sse_event '{}' '\"stop\"' "$1"
    if [ -n "$1" ]; then
        printf 'data: {\\"id\\":\\"%s\\",\\"object\\":\\"chat.completion.chunk\\",\\"created\\":1730000000,\\"model\\":\\"%s\\",\\"system_fingerprint\\":\\"fp_0123456789\\",\\"choices\\":[],\\"usage\\":{\\"prompt_tokens\\":245,\\"completion_tokens\\":27,\\"total_tokens\\":272}}\\n\\n' "$ID" "$MODEL"
    fi
    printf 'data: [DONE]\\n\\n'
}
# what the provider streams to a plain client, and to the gateway, which
# asks for the usage (and removes it again for a client that did not)
SSE_BODY=$(sse_body '')
SSE_USAGE_BODY=$(sse_body ',\"usage\":null')

cat >"$TMP/nginx.conf" <<EOF
load_module $MODULE;

worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    client_body_buffer_size 16k;

    upstream bench_up {
        server 127.0.0.1:$P_UP;
        keepalive 64;
        keepalive_requests 1000000;
    }

    # the upstream (provider stand-in)
    server {
        listen 127.0.0.1:$P_UP backlog=4096;

        location = /v1/chat/completions {
            default_type application/json;
            return 200 "$JSON_BODY";
        }
        location = /sse/v1/chat/completions {
            default_type text/event-stream;
            return 200 "$SSE_BODY";

            # as providers send streams: chunked, without Content-Length
            # (a no-op substitution makes nginx drop the length)
            sub_filter_types text/event-stream;
            sub_filter '[DONE]' '[DONE]';
        }
        location = /sse-usage/v1/chat/completions {
            default_type text/event-stream;
            return 200 "$SSE_USAGE_BODY";
            sub_filter_types text/event-stream;
            sub_filter '[DONE]' '[DONE]';
        }
    }

    # plain reverse proxy
    server {
        listen 127.0.0.1:$P_PROXY backlog=4096;

        proxy_http_version 1.1;
        proxy_set_header Connection "";

        location /v1/ {
            proxy_pass http://bench_up;
        }
        location /sse/v1/ {
            # as one proxies SSE in production: no response buffering
            proxy_buffering off;
            proxy_pass http://bench_up;
        }
    }

    # the gateway
    llm_provider bench_json {
        url http://bench_up/v1;
        key sk-bench;
        model gpt-4o-mini $MODEL;
    }
    llm_provider bench_sse {
        url http://bench_up/sse-usage/v1;
        key sk-bench;
        model gpt-4o-mini $MODEL;
    }

    server {
        listen 127.0.0.1:$P_LLM backlog=4096;

        location /v1/ {
            llm_pass bench_json;
        }
        location /sse/v1/ {
            llm_pass bench_sse;
        }
    }
}
EOF

start_nginx "$P_LLM"

# --- the request: a ~1 KB chat completion request ------------------------

PROMPT='Summarize the following text in two sentences. Nginx is a web server that can also be used as a reverse proxy, load balancer, mail proxy and HTTP cache. It was created by Igor Sysoev and publicly released in 2004. Nginx is free and open-source software, released under the terms of the 2-clause BSD license. A large fraction of web servers use Nginx, often as a load balancer. An LLM gateway sits between applications and model providers: it holds the provider keys, maps model aliases to provider models, splits traffic between providers by weight, streams server-sent events without buffering, and logs which provider and model served each request, so that applications need only one endpoint and one client library for every provider they use.'
REQ_JSON="{\"model\":\"gpt-4o-mini\",\"temperature\":0.2,\"max_tokens\":256,\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful assistant that answers briefly and precisely.\"},{\"role\":\"user\",\"content\":\"$PROMPT\"}]}"
REQ_SSE="{\"model\":\"gpt-4o-mini\",\"stream\":true,\"temperature\":0.2,\"max_tokens\":256,\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful assistant that answers briefly and precisely.\"},{\"role\":\"user\",\"content\":\"$PROMPT\"}]}"

lua_script() {
    # the body has no ' or \ in it, so a Lua long string holds it as is
    cat <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client-not-forwarded"
wrk.body = [==[$1]==]
EOF
}
lua_script "$REQ_JSON" >"$TMP/json.lua"
lua_script "$REQ_SSE" >"$TMP/sse.lua"

# --- sanity: both fronts answer 200 with the upstream's body -------------

check() {
    # $1 front port, $2 path, $3 body, $4 label
    code=$(curl -sS -o "$TMP/check.out" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-client' \
        --data-binary "$3" "http://127.0.0.1:$1$2") || code=000
    if [ "$code" != 200 ]; then
        echo "bench: $4 answered $code instead of 200:" >&2
        head -c 600 "$TMP/check.out" >&2; echo >&2
        tail -5 "$TMP/logs/error.log" >&2 || true
        exit 1
    fi
}
check "$P_PROXY" /v1/chat/completions "$REQ_JSON" "proxy_pass (non-streaming)"
cp "$TMP/check.out" "$TMP/proxy_json.out"
check "$P_LLM" /v1/chat/completions "$REQ_JSON" "llm_pass (non-streaming)"
cp "$TMP/check.out" "$TMP/llm_json.out"
check "$P_PROXY" /sse/v1/chat/completions "$REQ_SSE" "proxy_pass (streaming)"
cp "$TMP/check.out" "$TMP/proxy_sse.out"
check "$P_LLM" /sse/v1/chat/completions "$REQ_SSE" "llm_pass (streaming)"
cp "$TMP/check.out" "$TMP/llm_sse.out"
for m in json sse; do
    if ! cmp -s "$TMP/proxy_$m.out" "$TMP/llm_$m.out"; then
        echo "bench: note: llm_pass and proxy_pass bodies differ ($m):" \
             "$(wc -c <"$TMP/proxy_$m.out") vs $(wc -c <"$TMP/llm_$m.out") bytes" >&2
    fi
done
grep -q 'data: \[DONE\]' "$TMP/llm_sse.out" || {
    echo "bench: llm_pass streaming answer has no [DONE]" >&2; exit 1; }

# --- runs -----------------------------------------------------------------

RESULTS=$TMP/results     # lines: mode target rps p50_ms p99_ms
: >"$RESULTS"

run_wrk() {
    # $1 mode (json|sse) $2 target (proxy|llm) $3 seconds $4 record (1|0)
    case $1 in json) path=/v1/chat/completions ;; sse) path=/sse/v1/chat/completions ;; esac
    case $2 in proxy) port=$P_PROXY ;; llm) port=$P_LLM ;; esac
    wrk -t1 -c"$CONNS" -d"$3s" --latency -s "$TMP/$1.lua" \
        "http://127.0.0.1:$port$path" >"$TMP/wrk.out" 2>&1 || {
        echo "bench: wrk failed:" >&2; cat "$TMP/wrk.out" >&2; exit 1; }
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$TMP/wrk.out"; then
        echo "bench: errors in $2 $1:" >&2
        grep -e 'Non-2xx' -e 'Socket errors' "$TMP/wrk.out" >&2
    fi
    [ "$4" = 1 ] || return 0
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/wrk.out")
    p50=$(awk '$1 == "50%" { print $2 }' "$TMP/wrk.out")
    p99=$(awk '$1 == "99%" { print $2 }' "$TMP/wrk.out")
    echo "$1 $2 $rps $(to_ms "$p50") $(to_ms "$p99")" >>"$RESULTS"
    printf '  %-5s %-9s %10s req/s  p50 %8s ms  p99 %8s ms\n' \
        "$1" "$2" "$rps" "$(to_ms "$p50")" "$(to_ms "$p99")" >&2
}

echo "bench: nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^.*: //'), worker_processes 1;" \
     "wrk -t1 -c$CONNS; $ROUNDS rounds x 2 modes x 2 targets x ${DURATION}s" >&2
echo "bench: request body $(printf %s "$REQ_JSON" | wc -c) bytes;" \
     "upstream answers $(wc -c <"$TMP/proxy_json.out") bytes (JSON)," \
     "$(wc -c <"$TMP/proxy_sse.out") bytes (SSE, $(grep -c '^data: {' "$TMP/proxy_sse.out") events + [DONE])" >&2

echo "warmup (${WARMUP}s each)" >&2
for m in json sse; do
    for t in proxy llm; do run_wrk "$m" "$t" "$WARMUP" 0; done
done

r=1
while [ $r -le "$ROUNDS" ]; do
    echo "round $r/$ROUNDS" >&2
    # alternate the order so that drift does not favour one target
    if [ $((r % 2)) = 1 ]; then order="proxy llm"; else order="llm proxy"; fi
    for m in json sse; do
        for t in $order; do run_wrk "$m" "$t" "$DURATION" 1; done
    done
    r=$((r + 1))
done

if grep -q -e '\[alert\]' -e '\[crit\]' -e '\[emerg\]' -e 'segfault' "$TMP/logs/error.log"; then
    echo "bench: error log:" >&2
    grep -e '\[alert\]' -e '\[crit\]' -e '\[emerg\]' "$TMP/logs/error.log" | tail -10 >&2
fi

# --- report ---------------------------------------------------------------

median_of() {
    # $1 mode $2 target $3 column (3 rps, 4 p50, 5 p99)
    awk -v m="$1" -v t="$2" -v c="$3" '$1 == m && $2 == t { print $c }' "$RESULTS" | median
}

paired_ratio() {
    # $1 mode: the median over rounds of (llm_pass / proxy_pass) requests/s
    # of the same round; pairing the rounds cancels most of the drift of a
    # noisy machine that the ratio of two separate medians keeps
    awk -v m="$1" '$1 == m && $2 == "proxy" { p[++np] = $3 }
                   $1 == m && $2 == "llm"   { l[++nl] = $3 }
        END {
            n = (np < nl) ? np : nl
            for (i = 1; i <= n; i++) r[i] = (p[i] > 0) ? l[i] / p[i] : 0
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
                if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
            if (n == 0) { print "nan"; exit }
            if (n % 2) print r[(n + 1) / 2]; else print (r[n / 2] + r[n / 2 + 1]) / 2
        }' "$RESULTS"
}

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

echo
echo "| mode | front | requests/s | p50 latency | p99 latency |"
echo "|---|---|---:|---:|---:|"
for m in json sse; do
    case $m in json) label="non-streaming" ;; sse) label="streaming (9 SSE events + [DONE])" ;; esac
    prps=$(median_of $m proxy 3); pp50=$(median_of $m proxy 4); pp99=$(median_of $m proxy 5)
    lrps=$(median_of $m llm 3);   lp50=$(median_of $m llm 4);   lp99=$(median_of $m llm 5)
    ratio=$(paired_ratio $m)
    awk -v label="$label" -v prps="$prps" -v pp50="$pp50" -v pp99="$pp99" \
        -v lrps="$lrps" -v lp50="$lp50" -v lp99="$lp99" -v ratio="$ratio" 'BEGIN {
        printf "| %s | proxy_pass | %.0f | %.2f ms | %.2f ms |\n", label, prps, pp50, pp99
        printf "| %s | llm_pass | %.0f | %.2f ms | %.2f ms |\n", label, lrps, lp50, lp99
        printf "| %s | **llm_pass / proxy_pass** | **%.2f×** | %.2f× | %.2f× |\n", label,
            ratio, (pp50 > 0 ? lp50 / pp50 : 0), (pp99 > 0 ? lp99 / pp99 : 0)
    }'
done
echo
echo "Medians of $ROUNDS interleaved ${DURATION}-second rounds after a warmup (the requests/s" \
     "ratio is the median of the per-round ratios); wrk 1 thread," \
     "$CONNS keep-alive connections, POST of a $(printf %s "$REQ_JSON" | wc -c)-byte chat request;" \
     "one nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^.*nginx\///') with worker_processes 1 serving both fronts and" \
     "a \`return 200\` upstream (keepalive 64) on 127.0.0.1; ${cpu:-unknown CPU}, $(nproc) cores."
