#!/bin/sh
# Benchmark: the latency that failover adds.
#
#   sh bench/failover.sh /abs/path/ngx_http_llm_module.so  (make bench-failover)
#
# One nginx (worker_processes 1) serves, on 127.0.0.1, a provider stand-in
# that answers a fixed chat.completion (`return 200`) on /ok/ and an
# OpenAI-style 503 on /down/, and the gateway with four locations:
#   - direct:    llm_pass of the good provider: one attempt;
#   - failover:  a route whose first provider (weight 1000) answers 503 and
#                whose second answers: two attempts;
#   - one 503:   the failing provider alone, `retry off`: one failed attempt;
#   - breakers:  a route of two failing providers whose breakers are open:
#                the gateway's immediate 503, no attempt at all.
# wrk (1 thread, 1 connection: one request at a time, so that the numbers
# are latencies, not queueing) runs ROUNDS interleaved rounds of DURATION
# seconds per location after a warmup; prints the median p50 and p99 of the
# rounds, and what the failover added over the direct request, next to the
# cost of one failed attempt.
#
# Environment: ROUNDS (5), DURATION (3), WARMUP (1), NGINX (/usr/sbin/nginx),
#              KEEP_TMP=1 keeps the temp prefix.

. "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}

P_UP=$(free_port)
P_LLM=$(free_port)
while [ "$P_LLM" = "$P_UP" ]; do P_LLM=$(free_port); done

OK_BODY='{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Short and fixed.\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":4,\"total_tokens\":24}}\n'
DOWN_BODY='{\"error\":{\"message\":\"The server is overloaded.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n'

cat >"$TMP/nginx.conf" <<EOF
load_module $MODULE;

worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log error;

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;

    llm_zone llm 1m;

    upstream bench_up {
        server 127.0.0.1:$P_UP;
        keepalive 16;
        keepalive_requests 1000000;
    }

    server {
        listen 127.0.0.1:$P_UP;
        default_type application/json;

        location = /ok/v1/chat/completions   { return 200 "$OK_BODY"; }
        location = /down/v1/chat/completions { return 503 "$DOWN_BODY"; }
    }

    llm_provider good  { url http://bench_up/ok/v1;   key sk-bench; }
    llm_provider bad   { url http://bench_up/down/v1; key sk-bench; }
    llm_provider open1 { url http://bench_up/down/v1; key sk-bench;
                         breaker failures=1 cooldown=1h; }
    llm_provider open2 { url http://bench_up/down/v1; key sk-bench;
                         breaker failures=1 cooldown=1h; }

    llm_route failover { provider bad weight=1000; provider good; }
    llm_route one503   { provider bad; retry off; }
    llm_route breakers { provider open1; provider open2; }

    server {
        listen 127.0.0.1:$P_LLM;

        location /direct/v1/   { llm_pass good; }
        location /failover/v1/ { llm_pass failover; }
        location /one503/v1/   { llm_pass one503; }
        location /breakers/v1/ { llm_pass breakers; }
    }
}
EOF

start_nginx "$P_LLM"

REQ='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say something short."}]}'

cat >"$TMP/req.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$REQ]==]
EOF

post() {
    curl -sS -o "$TMP/out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data-binary "$REQ" "http://127.0.0.1:$P_LLM/$1/v1/chat/completions"
}

# sanity, and the breakers opened by one request
[ "$(post direct)" = 200 ]   || { echo "bench: direct is not 200" >&2; exit 1; }
[ "$(post failover)" = 200 ] || { echo "bench: failover is not 200" >&2; exit 1; }
[ "$(post one503)" = 503 ]   || { echo "bench: one503 is not 503" >&2; exit 1; }
post breakers >/dev/null
code=$(post breakers)
grep -q providers_unavailable "$TMP/out" && [ "$code" = 503 ] || {
    echo "bench: the breakers did not open ($code)" >&2; exit 1; }

RESULTS=$TMP/results     # lines: target p50_ms p99_ms
: >"$RESULTS"

run_wrk() {
    # $1 target, $2 seconds, $3 record (1|0)
    wrk -t1 -c1 -d"$2s" --latency -s "$TMP/req.lua" \
        "http://127.0.0.1:$P_LLM/$1/v1/chat/completions" >"$TMP/wrk.out" 2>&1 || {
        echo "bench: wrk failed:" >&2; cat "$TMP/wrk.out" >&2; exit 1; }
    [ "$3" = 1 ] || return 0
    p50=$(awk '$1 == "50%" { print $2 }' "$TMP/wrk.out")
    p99=$(awk '$1 == "99%" { print $2 }' "$TMP/wrk.out")
    echo "$1 $(to_ms "$p50") $(to_ms "$p99")" >>"$RESULTS"
    printf '  %-9s p50 %8s ms  p99 %8s ms\n' "$1" "$(to_ms "$p50")" "$(to_ms "$p99")" >&2
}

TARGETS="direct failover one503 breakers"

echo "bench: nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^.*: //'), worker_processes 1;" \
     "wrk -t1 -c1; $ROUNDS rounds x 4 locations x ${DURATION}s" >&2
for t in $TARGETS; do run_wrk "$t" "$WARMUP" 0; done

r=1
while [ $r -le "$ROUNDS" ]; do
    echo "round $r/$ROUNDS" >&2
    if [ $((r % 2)) = 1 ]; then order=$TARGETS; else order="breakers one503 failover direct"; fi
    for t in $order; do run_wrk "$t" "$DURATION" 1; done
    r=$((r + 1))
done

median_of() {
    # $1 target $2 column (2 p50, 3 p99)
    awk -v t="$1" -v c="$2" '$1 == t { print $c }' "$RESULTS" | median
}

d50=$(median_of direct 2); d99=$(median_of direct 3)
f50=$(median_of failover 2); f99=$(median_of failover 3)
o50=$(median_of one503 2); o99=$(median_of one503 3)
b50=$(median_of breakers 2); b99=$(median_of breakers 3)

echo
echo "| request | attempts | p50 latency | p99 latency |"
echo "|---|---|---:|---:|"
awk -v d50="$d50" -v d99="$d99" -v f50="$f50" -v f99="$f99" \
    -v o50="$o50" -v o99="$o99" -v b50="$b50" -v b99="$b99" 'BEGIN {
    printf "| to the good provider | 1 | %.3f ms | %.3f ms |\n", d50, d99
    printf "| first provider 503, then the good one | 2 | %.3f ms | %.3f ms |\n", f50, f99
    printf "| the 503 alone (one failed attempt) | 1 | %.3f ms | %.3f ms |\n", o50, o99
    printf "| every breaker open: immediate 503 | 0 | %.3f ms | %.3f ms |\n", b50, b99
    printf "\nFailover added %.3f ms at p50 (%.2fx one failed attempt'"'"'s %.3f ms).\n", \
        f50 - d50, (o50 > 0 ? (f50 - d50) / o50 : 0), o50
}'
echo
echo "Medians of $ROUNDS interleaved ${DURATION}-second rounds; wrk 1 thread, 1 connection" \
     "(one request at a time); one nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^.*nginx\///') with" \
     "worker_processes 1 serving the gateway and a \`return\` provider stand-in on 127.0.0.1;" \
     "$(nproc) cores."
