#!/bin/bash
# make test-asan: the whole test suite under AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
#   tools/asan.sh [DIR]                  build (if needed), then run prove
#   tools/asan.sh --build-only [DIR]     build only
#   PROVE_ARGS="t/usage.t" tools/asan.sh   run some tests only
#
# nginx 1.22.1 is built whole from Debian's source package (the version of
# nginx-dev, see tools/nginx-source.sh) with clang, with the configure flags
# of Debian's own nginx and the module added as a dynamic module, and with
# NGX_DEBUG_PALLOC: every pool allocation is then a malloc of its own, so
# that ASan sees an overflow past any allocation, not only past a pool's
# block.  nginx's objects and the module are compiled with
# -fsanitize=address,undefined, every check fatal (nginx's own objects
# without the three checks its code fails by design, see CORE_ONLY).
#
# Every sanitizer report is written to DIR/reports (nginx's workers have no
# terminal: a report on stderr would vanish into an error log); the run
# fails if any report is there after prove, and prints them.
#
# Environment: CC (default clang), JOBS (make -j, default 2), PROVE_ARGS
# (default "-r t/"), ASAN_LEAKS=1 to check for leaks at process exit too.

set -eu

build_only=0

if [ "${1:-}" = "--build-only" ]; then
    build_only=1
    shift
fi

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build/asan}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

CC=${CC:-clang}
JOBS=${JOBS:-2}

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"
SAN="$SAN -fno-omit-frame-pointer"

# nginx's own objects leave out the three UBSan checks that nginx's code
# fails by design (a signed shift in ngx_murmur_hash2, the unaligned reads
# of NGX_HAVE_NONALIGNED, memcpy() from NULL of 0 bytes in ngx_pstrdup());
# the module has every check
CORE_ONLY="-fno-sanitize=shift-base,alignment,nonnull-attribute"

# the warnings the module's own build turns off (Makefile), and one that
# clang has and gcc not: src/ngx_http_llm_mock.c adds an offset to a
# string literal (NGX_HTTP_LLM_MOCK_TEXT + from), on purpose
WARN="-Wno-missing-field-initializers -Wno-string-plus-int"

# the source, shared with the fuzzers

src=$(sh "$root/tools/nginx-source.sh" "$(dirname "$dir")/nginx-source")
objs=$dir/objs

. /usr/share/nginx/src/conf_flags

configure=(
    "${NGX_CONF_FLAGS[@]}"
    --builddir="$objs"
    --with-cc="$CC"
    --with-cc-opt="-g -O1 $SAN $CORE_ONLY $WARN -DNGX_DEBUG_PALLOC=1"
    --with-ld-opt="-fsanitize=address,undefined"
    --add-dynamic-module="$root"
)

# configured again when the flags or the module's file list changed

if [ ! -f "$objs/Makefile" ] || [ "$root/config" -nt "$objs/Makefile" ] \
   || [ "$(cat "$objs/configure.args" 2>/dev/null)" != "${configure[*]}" ]
then
    echo "asan: configuring nginx ($src) in $objs"
    rm -rf "$objs"

    (cd "$src" && ./configure "${configure[@]}" >"$dir/configure.log" 2>&1) \
        || { tail -30 "$dir/configure.log"; exit 1; }

    echo "${configure[*]}" >"$objs/configure.args"
fi

echo "asan: building nginx and the module"

core_cflags=$(sed -n 's/^CFLAGS =//p' "$objs/Makefile")
module_cflags=${core_cflags/$CORE_ONLY/}

# The module's list of its modules (objs/ngx_http_llm_module_modules.c)
# defines ngx_modules, ngx_module_names and ngx_module_order, as the binary
# does.  Loaded, the .so's references go to the binary's arrays, and ASan,
# registering the .so's globals, poisons the binary's ngx_modules past the
# .so's 2 entries: nginx reads it on a reload, a false report.  That file
# alone is compiled without ASan's global redzones.

(cd "$src" \
 && make -j"$JOBS" -f "$objs/Makefile" binary \
 && make -f "$objs/Makefile" "$objs/ngx_http_llm_module_modules.o" \
         CFLAGS="$module_cflags -mllvm -asan-globals=0" \
 && make -j"$JOBS" -f "$objs/Makefile" modules \
         CFLAGS="$module_cflags") >"$dir/make.log" 2>&1 \
    || { grep -A10 -E 'error:|Error [0-9]' "$dir/make.log" | head -60; exit 1; }

NGINX_ASAN=$objs/nginx
MODULE_ASAN=$objs/ngx_http_llm_module.so

if [ "$build_only" = 1 ]; then
    echo "$NGINX_ASAN"
    echo "$MODULE_ASAN"
    exit 0
fi

reports=$dir/reports
rm -rf "$reports"
mkdir -p "$reports"
chmod 1777 "$reports"     # the workers run as nobody

# the module is loaded into a binary that holds nginx's globals already;
# with leak checks, allocations nginx keeps until exit by design are not
# reports

ASAN_OPTIONS="log_path=$reports/sanitizer:halt_on_error=1:abort_on_error=1"
ASAN_OPTIONS="$ASAN_OPTIONS:detect_odr_violation=0"
ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=${ASAN_LEAKS:-0}"
ASAN_OPTIONS="$ASAN_OPTIONS:strict_string_checks=1"
ASAN_OPTIONS="$ASAN_OPTIONS:detect_stack_use_after_return=1"
UBSAN_OPTIONS="log_path=$reports/sanitizer:halt_on_error=1:print_stacktrace=1"

export ASAN_OPTIONS UBSAN_OPTIONS

echo "asan: prove ${PROVE_ARGS:--r t/} with $NGINX_ASAN"

start=$(date +%s)
rc=0

(cd "$root" && NGINX=$NGINX_ASAN LLM_MODULE=$MODULE_ASAN \
    prove -I t/lib ${PROVE_ARGS:--r t/}) || rc=$?

echo "asan: prove took $(( $(date +%s) - start )) s, exit $rc"

found=$(find "$reports" -type f | sort)

if [ -n "$found" ]; then
    for f in $found; do
        echo "==== $f"
        cat "$f"
    done

    echo "asan: $(echo "$found" | wc -l) sanitizer report(s) in $reports"
    exit 1
fi

echo "asan: no sanitizer report"

exit "$rc"
