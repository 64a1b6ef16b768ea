# What the benchmarks share; sourced by bench/run.sh and bench/failover.sh,
# with the module path as $1:
#   MODULE      the module, an absolute path
#   NGINX_BIN   nginx (NGINX, default /usr/sbin/nginx)
#   TMP         the temp prefix (logs/, tmp/); removed at exit unless KEEP_TMP=1
#   free_port   a free TCP port of 127.0.0.1
#   start_nginx PORT [PREFIX]: starts nginx on PREFIX/nginx.conf (PREFIX:
#               $TMP, with logs/ and tmp/), waits until PORT answers; every
#               nginx started is stopped at exit, and so is every process
#               whose pid is added to $KILL_PIDS
#   pin_cores   sets PIN_NGINX and PIN_CLIENT, the commands that pin nginx
#               (started after) and the clients to two separate cores
#               (taskset; NGINX_CPU 0, CLIENT_CPU 1), or nothing on one core
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

PREFIXES=$TMP
KILL_PIDS=

cleanup() {
    for prefix in $PREFIXES; do
        [ -f "$prefix/logs/nginx.pid" ] || continue
        pid=$(cat "$prefix/logs/nginx.pid")
        kill -QUIT "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in $KILL_PIDS; do
        kill "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_TMP:-}" = 1 ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

PIN_NGINX=
PIN_CLIENT=

pin_cores() {
    if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
        PIN_NGINX="taskset -c ${NGINX_CPU:-0}"
        PIN_CLIENT="taskset -c ${CLIENT_CPU:-1}"
    fi
}

start_nginx() {
    prefix=${2:-$TMP}
    mkdir -p "$prefix/logs" "$prefix/tmp"
    case " $PREFIXES " in *" $prefix "*) ;; *) PREFIXES="$PREFIXES $prefix" ;; esac
    if ! $PIN_NGINX "$NGINX_BIN" -p "$prefix/" -c "$prefix/nginx.conf" \
            -e "$prefix/logs/error.log"; then
        echo "bench: nginx failed to start" >&2
        cat "$prefix/logs/error.log" >&2 || true
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

# the worker of the nginx of PREFIX (worker_processes 1)
worker_pid() {
    ps -o pid= --ppid "$(cat "$1/logs/nginx.pid")" | awk 'NR == 1 { print $1 }'
}

# user + system CPU time of a process, in clock ticks
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# resident memory of a process, in KB
rss_kb() {
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

# "min-max" of the numbers on standard input, with a printf format
spread() {
    sort -g | awk -v f="$1" 'NR == 1 { lo = $1 } { hi = $1 }
        END { if (NR == 0) print "nan"; else printf f "-" f "\n", lo, hi }'
}
