#!/bin/sh
# Compatibility test: the official openai npm SDK against nginx-llm-gateway.
#
#   cd t/compat && sh run.sh          (or: make test-compat)
#
# Starts a private nginx (stock /usr/sbin/nginx + the module) from a temporary
# prefix: a gateway server with `llm_pass mock` in front of a second server
# running the built-in `llm_mock`, both on free ports of 127.0.0.1; the
# gateway's /stall/v1/ goes to the same mock as provider `stalling`, which
# stalls every stream after 2 events and has read_timeout 1s. Then runs
# `node --test` on openai-sdk.test.mjs, stops nginx and exits with the test's
# exit code.
#
# Environment:
#   LLM_MODULE   path of ngx_http_llm_module.so
#                (default ../../build/nginx/objs/ngx_http_llm_module.so)
#   NGINX        nginx binary (default /usr/sbin/nginx)
#   KEEP_TMP=1   keep the temporary prefix (config, logs) after the run

set -eu

cd "$(dirname "$0")"
HERE=$(pwd)

MODULE=${LLM_MODULE:-../../build/nginx/objs/ngx_http_llm_module.so}
# nginx reads NGINX from its environment (sockets inherited on a binary
# upgrade): the binary is taken from it, and it is not passed on
NGINX_BIN=${NGINX:-/usr/sbin/nginx}
unset NGINX

case $MODULE in
    /*) ;;
    *) MODULE=$HERE/$MODULE ;;
esac

if [ ! -f "$MODULE" ]; then
    echo "run.sh: module not found: $MODULE (run 'make build' first or set LLM_MODULE)" >&2
    exit 1
fi
MODULE=$(cd "$(dirname "$MODULE")" && pwd)/$(basename "$MODULE")

# node + npm: a machine may have Node.js from elsewhere (e.g. nodesource,
# which bundles npm and conflicts with Debian's npm package): only install
# Debian's packages when the commands are missing.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    sh ../../tools/deps.sh nodejs npm
fi

if [ ! -d node_modules/openai ]; then
    echo "run.sh: installing node_modules (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi

free_port() {
    node -e '
        const s = require("net").createServer();
        s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });
    '
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/llm-compat.XXXXXX")
# the workers may run as another user than the master (root): let them in
chmod 755 "$TMP"
mkdir -p "$TMP/logs" "$TMP/tmp"

PORT=$(free_port)
PORT2=$(free_port)
while [ "$PORT2" = "$PORT" ]; do PORT2=$(free_port); done

cat >"$TMP/nginx.conf" <<EOF
load_module $MODULE;

worker_processes 1;
daemon on;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;

events {
    worker_connections 256;
}

http {
    access_log logs/access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

    log_format llm '\$remote_addr "\$request" \$status \$body_bytes_sent \$request_time '
                   'provider=\$llm_provider route=\$llm_route model=\$llm_model '
                   'upstream_model=\$llm_upstream_model stream=\$llm_stream '
                   'error=\$llm_error upstream_status=\$llm_upstream_status';

    llm_provider mock {
        url http://127.0.0.1:$PORT2/v1;
        key sk-mock;
        model gpt-4o-mini mock-small;
    }

    # the same mock, whose streams stop after 2 events: the gateway gives up
    # after 1s of silence and ends the client's stream with an error event
    llm_provider stalling {
        url http://127.0.0.1:$PORT2/v1;
        key sk-mock;
        model gpt-4o-mini mock-small;
        read_timeout 1s;
        header X-Mock-Stall 2;
    }

    # two requests a day per X-Tenant
    llm_limit_zone sdk:1m key=\$http_x_tenant requests=2/d tokens=100000/d;

    # the gateway
    server {
        listen 127.0.0.1:$PORT;
        access_log logs/gateway.log llm;

        location /v1/ {
            llm_pass mock;
        }

        location /limited/v1/ {
            llm_pass mock;
            llm_limit sdk;
        }

        location /stall/v1/ {
            llm_pass stalling;
        }
    }

    # the provider: the built-in OpenAI-compatible mock
    server {
        listen 127.0.0.1:$PORT2;
        access_log logs/mock.log;

        location / {
            llm_mock key=sk-mock;
        }
    }
}
EOF

stop_nginx() {
    if [ -f "$TMP/logs/nginx.pid" ]; then
        pid=$(cat "$TMP/logs/nginx.pid")
        kill -QUIT "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
            sleep 0.1; i=$((i + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

cleanup() {
    stop_nginx
    if [ "${KEEP_TMP:-}" = 1 ]; then
        echo "run.sh: kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$NGINX_BIN" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/logs/error.log"; then
    echo "run.sh: nginx failed to start; error log:" >&2
    cat "$TMP/logs/error.log" >&2 || true
    exit 1
fi

# wait until both servers accept connections
i=0
until node -e '
    const net = require("net");
    let left = 2;
    for (const p of process.argv.slice(1)) {
        net.connect(Number(p), "127.0.0.1")
            .on("connect", function () { this.destroy(); if (--left === 0) process.exit(0); })
            .on("error", () => process.exit(1));
    }
' "$PORT" "$PORT2" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -ge 50 ]; then
        echo "run.sh: nginx does not listen on 127.0.0.1:$PORT/$PORT2" >&2
        cat "$TMP/logs/error.log" >&2 || true
        exit 1
    fi
    sleep 0.1
done

echo "run.sh: nginx $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //') with $MODULE"
echo "run.sh: gateway http://127.0.0.1:$PORT/v1 -> llm_mock on 127.0.0.1:$PORT2"
echo "run.sh: openai SDK $(node -p 'require("./package-lock.json").packages["node_modules/openai"].version'), node $(node -v)"

rc=0
LLM_GATEWAY_URL="http://127.0.0.1:$PORT/v1" \
LLM_GATEWAY_STALL_URL="http://127.0.0.1:$PORT/stall/v1" \
    node --test openai-sdk.test.mjs || rc=$?

if [ $rc -ne 0 ]; then
    echo "run.sh: FAILED (exit $rc); gateway access log:"
    sed 's/^/    /' "$TMP/logs/gateway.log" 2>/dev/null || true
    echo "run.sh: error log (warnings and worse):"
    grep -E '\[(warn|error|crit|alert|emerg)\]' "$TMP/logs/error.log" | tail -40 | sed 's/^/    /' || true
fi

exit $rc
