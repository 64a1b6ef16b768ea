#!/bin/sh
# Benchmark: llm_pass against a plain proxy_pass, in the same nginx, on a
# realistic workload and along curves of scale.
#
#   sh bench/run.sh /abs/path/ngx_http_llm_module.so      (make bench)
#   FULL=1 sh bench/run.sh /abs/path/...                  (make bench FULL=1)
#
# One nginx, worker_processes 1, pinned to one core (taskset); wrk (1
# thread) and the node provider stand-in on the other.  The worker serves
# three things on 127.0.0.1:
#   - the provider stand-in: `return 200` with an 868-byte chat.completion,
#     and streams of 20 and 2,000 chunk events, the usage chunk and [DONE]
#     (6.3 KB and 585 KB, as OpenAI streams them when the usage is asked
#     for: "usage":null in every chunk), sent in one piece, chunked (a
#     no-op sub_filter matched at the first bytes drops the length; the
#     long stream is a file, the short one a `return`, like the reply); the
#     cheapest provider there is, so that the figures show the cost of the
#     front server;
#   - proxy:  proxy_pass to it (upstream{} with keepalive, HTTP/1.1,
#             proxy_buffer_size 16k as llm_pass's; for streams
#             proxy_buffering off), with a buffered access log;
#   - llm:    llm_pass to the same upstream{}: the model alias mapped, the
#             usage read and priced (llm_prices, 10 models), llm_zone
#             statistics, and a buffered access log with $llm_model
#             $llm_input_tokens $llm_output_tokens $llm_cost.
# Streams sent event by event, one event per TCP segment, come from
# bench/upstream.js (node), which runs on the client's core: there the
# worker's CPU is the front's alone.
#
# The workload: wrk POSTs a ~1 KB chat request (system prompt, temperature,
# max_tokens, user; the streamed one asks for stream_options.include_usage)
# on 16 connections.  The points (POINTS, in this order by default):
#   json      the 868-byte reply                 sse       the 20-event stream
#   body32k   json with a 32 KB request          body256k  ... 256 KB
#   sse2000   the 2,000-event stream             seg20     20 events, one
#   seg2000   2,000 events, one per segment                per TCP segment
#   c1000     json on 1,000 connections          c1000sse  sse on 1,000
#   prices    json with a price table of 2,000 models (a second nginx)
#   limits    json with llm_limit over 1,000 distinct keys (X-Tenant,
#             rotated by the wrk script) beside llm_pass without limits
# Every point runs each front for DURATION seconds, in ROUNDS interleaved
# rounds (the order of the fronts alternates); for each run it records
# requests/s, latency and the CPU time of the worker (user + system, from
# /proc) per request: the time of a window inside the run (after its first
# fifth, until its last) over the requests that ended in that window (by
# the $msec of their log lines), so that requests cut by the start and the
# end of the run do not count.  Then (MEMORY=1) the worker's memory under
# 1,000 concurrent streams, and (TTFT=1) the time to the first event of a
# stream, one request at a time.  It prints the medians over the rounds,
# their spread (min-max), and llm_pass / proxy_pass as the median of the
# ratios of the same round, which cancels most of the drift of a noisy
# machine.
#
# Environment: FULL=1 (5 rounds of 8 s; else 3 of 2 s), ROUNDS, DURATION,
#              WARMUP (1), POINTS, MEMORY (1), TTFT (1),
#              NGINX (/usr/sbin/nginx), NGINX_CPU (0), CLIENT_CPU (1),
#              KEEP_TMP=1 keeps the temp prefix.

. "$(dirname "$0")/lib.sh"

command -v node >/dev/null 2>&1 || sh "$ROOT/tools/deps.sh" nodejs

if [ "${FULL:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-5}
    DURATION=${DURATION:-8}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-2}
fi
WARMUP=${WARMUP:-1}
POINTS=${POINTS:-json sse body32k body256k sse2000 seg20 seg2000 c1000 c1000sse prices limits}
MEMORY=${MEMORY:-1}
TTFT=${TTFT:-1}
HZ=$(getconf CLK_TCK)

pin_cores

PORTS=
new_port() {
    # a free port, none of those taken before
    while :; do
        p=$(free_port)
        case " $PORTS " in *" $p "*) continue ;; esac
        PORTS="$PORTS $p"
        echo "$p"
        return
    done
}
P_UP=$(new_port); P_PROXY=$(new_port); P_LLM=$(new_port); P_NODE=$(new_port)
P2_UP=$(new_port); P2_PROXY=$(new_port); P2_LLM=$(new_port)
PORTS="$P_UP $P_PROXY $P_LLM $P_NODE $P2_UP $P2_PROXY $P2_LLM"

# --- the payloads --------------------------------------------------------

DATA=$TMP/data
mkdir -p "$DATA"
node "$ROOT/bench/upstream.js" write "$DATA"

script() {
    # $1 the body file, $2 "tenants": an X-Tenant of 1,000 values in turn
    cat <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client-not-forwarded"
local f = assert(io.open("$DATA/$1", "rb"))
wrk.body = f:read("*a")
f:close()
EOF
    [ "${2:-}" = tenants ] || return 0
    cat <<'EOF'
local n = 0
request = function()
    n = n + 1
    wrk.headers["X-Tenant"] = "tenant-" .. (n % 1000)
    return wrk.format()
end
EOF
}
script req_1k.json >"$TMP/json.lua"
script req_1k_stream.json >"$TMP/sse.lua"
script req_32k.json >"$TMP/json32k.lua"
script req_256k.json >"$TMP/json256k.lua"
script req_1k.json tenants >"$TMP/tenants.lua"

# --- the provider stand-in that writes event by event ----------------------

$PIN_CLIENT node "$ROOT/bench/upstream.js" serve "$P_NODE" &
KILL_PIDS="$KILL_PIDS $!"

# --- nginx ----------------------------------------------------------------

write_conf() {
    # $1 prefix, $2 price table, $3 upstream port, $4 proxy port, $5 llm port
    cat >"$1/nginx.conf" <<EOF
load_module $MODULE;

worker_processes 1;
worker_rlimit_nofile 16384;
pid logs/nginx.pid;
error_log logs/error.log warn;

events {
    worker_connections 8192;
}

http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;

    # the 256 KB requests are read into memory by both fronts
    client_body_buffer_size 512k;
    client_max_body_size 1m;

    # (\$msec last: the bench counts the requests that ended in a window)
    log_format front '\$remote_addr [\$time_local] "\$request" \$status '
                     '\$body_bytes_sent \$request_time \$msec';
    log_format llm   '\$remote_addr [\$time_local] "\$request" \$status '
                     '\$body_bytes_sent \$request_time \$llm_model '
                     '\$llm_input_tokens \$llm_output_tokens \$llm_cost \$msec';

    llm_zone llm 1m;
    llm_prices $2;
    llm_limit_zone tenants:16m key=\$http_x_tenant requests=1000000000/m
                   tokens=1000000000000/m spend=1000000/d concurrent=100000;

    upstream bench_up {
        server 127.0.0.1:$3;
        keepalive 1024;
        keepalive_requests 1000000;
    }

    upstream node_up {
        server 127.0.0.1:$P_NODE;
        keepalive 1024;
        keepalive_requests 1000000;
    }

    # the provider stand-in
    server {
        listen 127.0.0.1:$3 backlog=4096;

        location = /up/json/v1/chat/completions {
            default_type application/json;
            include $DATA/reply.conf;
        }

        # streams: chunked, without Content-Length, as providers send them
        # (a no-op substitution of the first bytes makes nginx drop the
        # length; the rest is not searched)
        sub_filter_types text/event-stream;
        sub_filter 'data: ' 'data: ';

        location = /up/sse20/v1/chat/completions {
            default_type text/event-stream;
            include $DATA/sse_20.conf;
        }

        # too long for a `return`: a file (a POST of a file is a 405, which
        # is made a GET of the same file)
        location = /up/sse2000/v1/chat/completions {
            default_type text/event-stream;
            alias $DATA/sse_2000.txt;
            error_page 405 =200 \$uri;
            open_file_cache max=16 inactive=1h;
            open_file_cache_valid 1h;
        }
    }

    # plain reverse proxy
    server {
        listen 127.0.0.1:$4 backlog=4096;
        access_log logs/proxy.log front buffer=64k;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffer_size 16k;
        proxy_buffers 4 16k;

        location /up/ {
            proxy_pass http://bench_up;
        }
        location /up/sse {
            # as one proxies SSE in production: no response buffering
            proxy_buffering off;
            proxy_pass http://bench_up;
        }
        location / {
            proxy_buffering off;
            proxy_pass http://node_up;
        }
        location = /nginx_status {
            access_log off;
            stub_status;
        }
    }

    # the gateway
    llm_provider json    { url http://bench_up/up/json/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }
    llm_provider sse20   { url http://bench_up/up/sse20/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }
    llm_provider sse2000 { url http://bench_up/up/sse2000/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }
    llm_provider seg20   { url http://node_up/seg/20/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }
    llm_provider seg2000 { url http://node_up/seg/2000/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }
    llm_provider slow    { url http://node_up/slow/20/100/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }
    llm_provider ttft    { url http://node_up/slow/3/2/v1;
                           key sk-bench; model gpt-4o-mini gpt-4o-mini-2024-07-18; }

    server {
        listen 127.0.0.1:$5 backlog=4096;
        access_log logs/llm.log llm buffer=64k;

        location /up/json/      { llm_pass json; }
        location /up/sse20/     { llm_pass sse20; }
        location /up/sse2000/   { llm_pass sse2000; }
        location /seg/20/       { llm_pass seg20; }
        location /seg/2000/     { llm_pass seg2000; }
        location /slow/20/100/  { llm_pass slow; }
        location /slow/3/2/     { llm_pass ttft; }
        location /lim/up/json/  { llm_pass json; llm_limit tenants; }
    }
}
EOF
}

A=$TMP
write_conf "$A" "$DATA/prices_10.json" "$P_UP" "$P_PROXY" "$P_LLM"
start_nginx "$P_LLM" "$A"

B=
case " $POINTS " in *" prices "*)
    B=$TMP/b
    mkdir -p "$B"
    write_conf "$B" "$DATA/prices_2000.json" "$P2_UP" "$P2_PROXY" "$P2_LLM"
    start_nginx "$P2_LLM" "$B" ;;
esac

i=0
until curl -s -o /dev/null "http://127.0.0.1:$P_NODE/"; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "bench: the node upstream does not answer" >&2; exit 1; }
    sleep 0.1
done

# --- the points -------------------------------------------------------------

point() {
    # $1 point, $2 front: sets URL, LUA, CONNS, PREFIX
    CONNS=16
    PREFIX=$A
    LUA=$TMP/json.lua
    path=/up/json/v1/chat/completions
    case $1 in
        sse)      LUA=$TMP/sse.lua; path=/up/sse20/v1/chat/completions ;;
        body32k)  LUA=$TMP/json32k.lua ;;
        body256k) LUA=$TMP/json256k.lua ;;
        sse2000)  LUA=$TMP/sse.lua; path=/up/sse2000/v1/chat/completions ;;
        seg20)    LUA=$TMP/sse.lua; path=/seg/20/v1/chat/completions ;;
        seg2000)  LUA=$TMP/sse.lua; path=/seg/2000/v1/chat/completions ;;
        c1000)    CONNS=1000 ;;
        c1000sse) CONNS=1000; LUA=$TMP/sse.lua; path=/up/sse20/v1/chat/completions ;;
        prices)   PREFIX=$B ;;
        limits)   LUA=$TMP/tenants.lua ;;
    esac
    case $2 in
        proxy) port=$P_PROXY ;;
        llm)   port=$P_LLM ;;
        limit) port=$P_LLM; path=/lim$path ;;
    esac
    [ "$PREFIX" = "$A" ] || case $2 in proxy) port=$P2_PROXY ;; *) port=$P2_LLM ;; esac
    URL=http://127.0.0.1:$port$path
}

fronts() {
    case $1 in limits) echo "proxy llm limit" ;; *) echo "proxy llm" ;; esac
}

label() {
    case $1 in
        json)     echo "non-streaming, 1 KB request, 868-byte reply" ;;
        sse)      echo "streaming, 20 events in one piece (6.3 KB)" ;;
        body32k)  echo "non-streaming, 32 KB request" ;;
        body256k) echo "non-streaming, 256 KB request" ;;
        sse2000)  echo "streaming, 2,000 events in one piece (585 KB)" ;;
        seg20)    echo "streaming, 20 events, one per TCP segment" ;;
        seg2000)  echo "streaming, 2,000 events, one per TCP segment" ;;
        c1000)    echo "non-streaming, 1,000 connections" ;;
        c1000sse) echo "streaming (20 events), 1,000 connections" ;;
        prices)   echo "non-streaming, price table of 2,000 models" ;;
        limits)   echo "non-streaming, 1,000 keys (X-Tenant)" ;;
    esac
}

# --- sanity: every front answers 200, and both fronts the same bytes ---------

check() {
    # $1 point, $2 front
    point "$1" "$2"
    body=$(awk '/io.open/ { sub(/.*io.open\("/, ""); sub(/".*/, ""); print }' "$LUA")
    code=$(curl -sS -o "$TMP/check.$2" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' -H 'X-Tenant: tenant-1' \
        --data-binary "@$body" "$URL") || code=000
    if [ "$code" != 200 ]; then
        echo "bench: $1 $2 answered $code instead of 200:" >&2
        head -c 600 "$TMP/check.$2" >&2; echo >&2
        tail -5 "$PREFIX/logs/error.log" >&2 || true
        exit 1
    fi
}

for pt in $POINTS; do
    for f in $(fronts "$pt"); do check "$pt" "$f"; done
    for f in $(fronts "$pt"); do
        cmp -s "$TMP/check.proxy" "$TMP/check.$f" || {
            echo "bench: $pt: $f and proxy_pass answered different bytes" >&2; exit 1; }
    done
done

# the gateway's log line has the model, the tokens and the cost
kill -USR1 "$(cat "$A/logs/nginx.pid")"
sleep 0.2
tail -1 "$A/logs/llm.log" | awk '$(NF - 4) == "-" || $(NF - 3) == "-" || $(NF - 2) == "-" || $(NF - 1) == "-" {
    print "bench: the access log of llm_pass lacks its figures: " $0; exit 1 }' >&2
echo "bench: llm_pass log line: $(tail -1 "$A/logs/llm.log")" >&2
: >"$A/logs/llm.log"
: >"$A/logs/proxy.log"

# --- runs -----------------------------------------------------------------

RESULTS=$TMP/results     # lines: point front rps p50_ms p99_ms cpu_us requests
: >"$RESULTS"

run_wrk() {
    # $1 point, $2 front, $3 seconds, $4 record (1|0)
    #
    # The CPU time of the worker is read in a window inside the run (after
    # a fifth of it, until a fifth before its end), and divided by the
    # requests that ended in that window (their log lines), so that the
    # requests under way when wrk starts and stops do not count.
    point "$1" "$2"
    case $2 in proxy) log=$PREFIX/logs/proxy.log ;; *) log=$PREFIX/logs/llm.log ;; esac
    wpid=$(worker_pid "$PREFIX")
    : >"$log"
    $PIN_CLIENT wrk -t1 -c"$CONNS" -d"$3s" --latency -s "$LUA" "$URL" \
        >"$TMP/wrk.out" 2>&1 &
    wrk_pid=$!
    edge=$(awk -v d="$3" 'BEGIN { printf "%.2f", d / 5 }')
    sleep "$edge"
    t0=$(cpu_ticks "$wpid"); m0=$(date +%s.%N)
    sleep "$(awk -v d="$3" -v e="$edge" 'BEGIN { printf "%.2f", d - 2 * e }')"
    t1=$(cpu_ticks "$wpid"); m1=$(date +%s.%N)
    wait "$wrk_pid" || {
        echo "bench: wrk failed:" >&2; cat "$TMP/wrk.out" >&2; exit 1; }
    # the buffered log lines written out (USR1: the logs are reopened)
    kill -USR1 "$(cat "$PREFIX/logs/nginx.pid")"
    sleep 0.2
    n=$(awk -v a="$m0" -v b="$m1" '$NF >= a && $NF < b { n++ } END { print n + 0 }' "$log")
    : >"$log"
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$TMP/wrk.out"; then
        echo "bench: errors in $1 $2:" >&2
        grep -e 'Non-2xx' -e 'Socket errors' "$TMP/wrk.out" >&2
    fi
    [ "$4" = 1 ] || return 0
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/wrk.out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$TMP/wrk.out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$TMP/wrk.out")")
    cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" \
        'BEGIN { printf "%.2f", (n > 0) ? t * 1000000 / hz / n : 0 }')
    echo "$1 $2 $rps $p50 $p99 $cpu $n" >>"$RESULTS"
    printf '  %-9s %-6s %9s req/s  %8s us/req (%s)  p50 %7s ms  p99 %7s ms\n' \
        "$1" "$2" "$rps" "$cpu" "$n" "$p50" "$p99" >&2
}

echo "bench: nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^.*: //'), worker_processes 1" \
     "${PIN_NGINX:+($PIN_NGINX; wrk: $PIN_CLIENT)}; $ROUNDS rounds of ${DURATION}s;" \
     "points: $POINTS" >&2

echo "warmup (${WARMUP}s each)" >&2
for pt in $POINTS; do
    for f in $(fronts "$pt"); do run_wrk "$pt" "$f" "$WARMUP" 0; done
done

r=1
while [ $r -le "$ROUNDS" ]; do
    echo "round $r/$ROUNDS" >&2
    for pt in $POINTS; do
        # alternate the order so that drift does not favour one front
        order=$(fronts "$pt")
        [ $((r % 2)) = 1 ] || order=$(echo "$order" | awk '{ for (i = NF; i; i--) printf "%s ", $i }')
        for f in $order; do run_wrk "$pt" "$f" "$DURATION" 1; done
    done
    r=$((r + 1))
done

for prefix in $A $B; do
    if grep -q -e '\[alert\]' -e '\[crit\]' -e '\[emerg\]' -e 'segfault' "$prefix/logs/error.log"; then
        echo "bench: error log:" >&2
        grep -e '\[alert\]' -e '\[crit\]' -e '\[emerg\]' "$prefix/logs/error.log" | tail -10 >&2
    fi
done

# --- memory under 1,000 concurrent streams ------------------------------------

MEM=$TMP/memory          # lines: front base_kb peak_kb connections
: >"$MEM"

memory() {
    # $1 front: a fresh worker (a reload), then 1,000 streams of 20 events
    # 100 ms apart for 5 s; its resident memory before and at the peak
    old=$(worker_pid "$A")
    kill -HUP "$(cat "$A/logs/nginx.pid")"
    i=0
    while :; do
        w=$(ps -o pid= --ppid "$(cat "$A/logs/nginx.pid")" | tr -d ' ' | grep -v "^$old\$" || true)
        [ -n "$w" ] && ! kill -0 "$old" 2>/dev/null && break
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "bench: no new worker after a reload" >&2; exit 1; }
        sleep 0.1
    done
    sleep 0.5
    base=$(rss_kb "$w")
    case $1 in proxy) port=$P_PROXY ;; llm) port=$P_LLM ;; esac
    $PIN_CLIENT wrk -t1 -c1000 -d5s -s "$TMP/sse.lua" \
        "http://127.0.0.1:$port/slow/20/100/v1/chat/completions" >"$TMP/wrk.mem" 2>&1 &
    wrk_pid=$!
    peak=0; conns=0
    i=0
    while [ $i -lt 18 ]; do
        sleep 0.25
        kb=$(rss_kb "$w")
        [ "$kb" -gt "$peak" ] && peak=$kb
        c=$(curl -s "http://127.0.0.1:$P_PROXY/nginx_status" | awk 'NR == 1 { print $3 }')
        [ "${c:-0}" -gt "$conns" ] && conns=$c
        i=$((i + 1))
    done
    wait "$wrk_pid" || true
    echo "$1 $base $peak $conns" >>"$MEM"
    printf '  memory %-6s worker %s KB idle, %s KB with %s connections\n' \
        "$1" "$base" "$peak" "$conns" >&2
    : >"$A/logs/proxy.log"
    : >"$A/logs/llm.log"
}

if [ "$MEMORY" = 1 ]; then
    echo "memory under 1,000 concurrent streams" >&2
    memory proxy
    memory llm
fi

# --- the time to the first event ----------------------------------------------

TT=$TMP/ttft             # lines: front first_p50 first_p99 total_p50 total_p99
: >"$TT"

if [ "$TTFT" = 1 ]; then
    echo "time to the first event, one request at a time" >&2
    r=1
    while [ $r -le "$ROUNDS" ]; do
        for f in proxy llm; do
            case $f in proxy) port=$P_PROXY ;; llm) port=$P_LLM ;; esac
            echo "$f $($PIN_CLIENT node "$ROOT/bench/upstream.js" ttft "$port" \
                /slow/3/2/v1/chat/completions "$DATA/req_1k_stream.json" 300)" >>"$TT"
        done
        r=$((r + 1))
    done
fi

# --- report ---------------------------------------------------------------

col() {
    # $1 point, $2 front, $3 column (3 rps, 4 p50, 5 p99, 6 cpu)
    awk -v m="$1" -v t="$2" -v c="$3" '$1 == m && $2 == t { print $c }' "$RESULTS"
}

ratios() {
    # $1 point, $2 front, $3 column: llm / proxy of each round
    awk -v m="$1" -v t="$2" -v c="$3" '
        $1 == m && $2 == "proxy" { p[++np] = $c }
        $1 == m && $2 == t       { l[++nl] = $c }
        END { n = (np < nl) ? np : nl
              for (i = 1; i <= n; i++) if (p[i] > 0) print l[i] / p[i] }' "$RESULTS"
}

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

echo
echo "| workload | front | CPU per request | × proxy_pass | requests/s | × proxy_pass | p99 latency |"
echo "|---|---|---:|---:|---:|---:|---:|"
for pt in $POINTS; do
    for f in $(fronts "$pt"); do
        case $f in
            proxy) name=proxy_pass ;;
            llm)   name=llm_pass ;;
            limit) name="llm_pass + llm_limit" ;;
        esac
        c=$(col "$pt" "$f" 6 | median); cs=$(col "$pt" "$f" 6 | spread %.1f)
        q=$(col "$pt" "$f" 3 | median); qs=$(col "$pt" "$f" 3 | spread %.0f)
        p99=$(col "$pt" "$f" 5 | median)
        if [ "$f" = proxy ]; then
            cr="1.00"; qr="1.00"
        else
            cr="$(ratios "$pt" "$f" 6 | median | awk '{ printf "%.2f", $1 }') ($(ratios "$pt" "$f" 6 | spread %.2f))"
            qr="$(ratios "$pt" "$f" 3 | median | awk '{ printf "%.2f", $1 }') ($(ratios "$pt" "$f" 3 | spread %.2f))"
        fi
        awk -v l="$(label "$pt")" -v n="$name" -v c="$c" -v cs="$cs" -v cr="$cr" \
            -v q="$q" -v qs="$qs" -v qr="$qr" -v p99="$p99" 'BEGIN {
            printf "| %s | %s | %.1f µs (%s) | %s | %.0f (%s) | %s | %.2f ms |\n",
                l, n, c, cs, cr, q, qs, qr, p99 }'
    done
done

case " $POINTS " in *" limits "*)
    lr=$(ratios limits llm 6 | median)
    mr=$(ratios limits limit 6 | median)
    awk -v a="$lr" -v b="$mr" 'BEGIN {
        printf "\nWith llm_limit over 1,000 keys llm_pass costs %.2f× proxy_pass in CPU, without %.2f×: %+.2f.\n",
            b, a, b - a }'
    ;;
esac

if [ -s "$MEM" ]; then
    echo
    echo "| 1,000 concurrent streams | worker memory idle | with the streams | per stream |"
    echo "|---|---:|---:|---:|"
    while read -r f base peak conns; do
        case $f in proxy) name=proxy_pass ;; *) name=llm_pass ;; esac
        awk -v n="$name" -v b="$base" -v p="$peak" -v c="$conns" 'BEGIN {
            printf "| %s | %.1f MB | %.1f MB (%d connections) | %.1f KB |\n",
                n, b / 1024, p / 1024, c, (c > 0) ? (p - b) / c : 0 }'
    done <"$MEM"
fi

if [ -s "$TT" ]; then
    echo
    echo "| time to the first event | p50 | p99 | whole stream p50 |"
    echo "|---|---:|---:|---:|"
    for f in proxy llm; do
        case $f in proxy) name=proxy_pass ;; *) name=llm_pass ;; esac
        awk -v f="$f" -v n="$name" '$1 == f { print $2, $3, $4 }' "$TT" >"$TMP/tt.$f"
        f50=$(awk '{ print $1 }' "$TMP/tt.$f" | median)
        f99=$(awk '{ print $2 }' "$TMP/tt.$f" | median)
        t50=$(awk '{ print $3 }' "$TMP/tt.$f" | median)
        awk -v n="$name" -v a="$f50" -v b="$f99" -v c="$t50" 'BEGIN {
            printf "| %s | %.3f ms | %.3f ms | %.3f ms |\n", n, a, b, c }'
    done
fi

echo
echo "Medians of $ROUNDS interleaved ${DURATION}-second rounds after a warmup, (min-max) over the" \
     "rounds; the ratios are medians of the ratios of the same round. CPU per request: user +" \
     "system time of the nginx worker (which also serves the provider stand-in, but for the" \
     "segmented streams) in a window of each run, over the requests that ended in it." \
     "wrk 1 thread, 16 connections" \
     "(but for the 1,000-connection points); one nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^.*nginx\///')" \
     "with worker_processes 1${PIN_NGINX:+ pinned to one core, wrk on the other}; ${cpu:-unknown CPU}, $(nproc) cores."
