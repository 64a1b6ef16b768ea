# What the benchmarks share; sourced by bench/run.sh and bench/failover.sh,
# with the module path as $1:
#   MODULE      the module, an absolute path
#   NGINX_BIN   nginx (NGINX, default /usr/sbin/nginx)
#   TMP         the temp prefix (logs/, tmp/); removed at exit unless KEEP_TMP=1
#   free_port   a free TCP port of 127.0.0.1
#   start_nginx PORT: starts nginx on $TMP/nginx.conf, waits until PORT answers
#   to_ms       a wrk latency (812.00us, 1.23ms, 1.02s) in ms
#   median      the median of the numbers on standard input

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)

# nginx reads NGINX from its environment (sockets inherited on a binary
# upgrade): the binary is taken from it, and it is not passed on
NGINX_BIN=${NGINX:-/usr/sbin/nginx}
unset NGINX

[ $# -eq 1 ] || { echo "usage: $0 MODULE_PATH" >&2; exit 2; }
case $1 in
    /*) MODULE=$1 ;;
    *)  MODULE=$(pwd)/$1 ;;
esac
[ -f "$MODULE" ] || { echo "bench: module not found: $MODULE (run 'make build')" >&2; exit 1; }

command -v wrk >/dev/null 2>&1 || sh "$ROOT/tools/deps.sh" wrk
command -v curl >/dev/null 2>&1 || sh "$ROOT/tools/deps.sh" curl

free_port() {
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
                                      Proto => "tcp", Listen => 1, ReuseAddr => 1)
            or die "free_port: $!\n";
        print $s->sockport, "\n";'
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/llm-bench.XXXXXX")
chmod 755 "$TMP"
mkdir -p "$TMP/logs" "$TMP/tmp"

cleanup() {
    if [ -f "$TMP/logs/nginx.pid" ]; then
        pid=$(cat "$TMP/logs/nginx.pid")
        kill -QUIT "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ "${KEEP_TMP:-}" = 1 ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

start_nginx() {
    if ! "$NGINX_BIN" -p "$TMP/" -c "$TMP/nginx.conf" -e "$TMP/logs/error.log"; then
        echo "bench: nginx failed to start" >&2
        cat "$TMP/logs/error.log" >&2 || true
        exit 1
    fi
    i=0
    until curl -s -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 50 ] || { echo "bench: nginx does not answer" >&2; exit 1; }
        sleep 0.1
    done
}

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.3f", n }'
}

median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
