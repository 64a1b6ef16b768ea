#!/bin/bash
# Builds the libFuzzer harnesses of fuzz/ into DIR (default build/fuzz).
#
#   fuzz/build.sh [DIR]
#
# nginx is configured from Debian's source package (tools/nginx-source.sh)
# with the flags of Debian's nginx and built with clang, AddressSanitizer,
# UndefinedBehaviorSanitizer (every check fatal), the fuzzer's coverage
# and NGX_DEBUG_PALLOC (a malloc per pool allocation, so that ASan sees an
# overflow past any pool allocation).  The module's sources are compiled
# here with the same flags and every UBSan check; nginx's own objects
# leave out the three checks that nginx's code fails by design (a signed
# shift in ngx_murmur_hash2, unaligned reads of NGX_HAVE_NONALIGNED,
# memcpy() from NULL of 0 bytes in ngx_pstrdup()).  Each
# harness is linked against nginx's objects, nginx.c compiled again with
# its main() renamed, and the module's objects; a harness that reaches
# static functions of the module includes that source file and is linked
# without its object (HARNESS_OWN below).
#
# Environment: CC (default clang), JOBS (default 2).

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build/fuzz}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

CC=${CC:-clang}
JOBS=${JOBS:-2}

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"
SAN="$SAN -fno-omit-frame-pointer"
CORE_ONLY="-fno-sanitize=shift-base,alignment,nonnull-attribute"
COV="-fsanitize=fuzzer-no-link"

# the warnings the module's own build turns off (Makefile), and one that
# clang has and gcc not: src/ngx_http_llm_mock.c adds an offset to a
# string literal (NGX_HTTP_LLM_MOCK_TEXT + from), on purpose
WARN="-Wno-missing-field-initializers -Wno-string-plus-int"

src=$(sh "$root/tools/nginx-source.sh" "$(dirname "$dir")/nginx-source")
objs=$dir/objs

. /usr/share/nginx/src/conf_flags

configure=(
    "${NGX_CONF_FLAGS[@]}"
    --builddir="$objs"
    --with-cc="$CC"
    --with-cc-opt="-g -O1 $SAN $CORE_ONLY $COV -DNGX_DEBUG_PALLOC=1"
    --with-ld-opt="-fsanitize=address,undefined $COV"
)

if [ ! -f "$objs/Makefile" ] \
   || [ "$(cat "$objs/configure.args" 2>/dev/null)" != "${configure[*]}" ]
then
    echo "fuzz: configuring nginx ($src) in $objs"
    rm -rf "$objs"

    (cd "$src" && ./configure "${configure[@]}" >"$dir/configure.log" 2>&1) \
        || { tail -30 "$dir/configure.log"; exit 1; }

    echo "${configure[*]}" >"$objs/configure.args"
fi

echo "fuzz: building nginx"

(cd "$src" && make -j"$JOBS" -f "$objs/Makefile" binary \
     >"$dir/make.log" 2>&1) \
    || { grep -A10 -E 'error:|Error [0-9]' "$dir/make.log" | head -60; exit 1; }

# the objects and the libraries of nginx's link, nginx.o aside

link=$(awk -v bin="$objs/nginx" '
    $0 ~ "LINK\\) -o " bin " \\\\$" { on = 1; next }
    on && /^[[:space:]]*$/ { exit }
    on { print }' "$objs/Makefile" | tr -d '\\')

core_objs=$(echo "$link" | tr ' \t' '\n\n' \
            | grep '\.o$' | grep -v '/src/core/nginx\.o$')
libs=$(echo "$link" | tr ' \t' '\n\n' | grep -E '^-l|^-Wl' | tr '\n' ' ')

if [ -z "$core_objs" ] || [ -z "$libs" ]; then
    echo "fuzz: could not read nginx's link line from $objs/Makefile" >&2
    exit 1
fi

core_cflags=$(sed -n 's/^CFLAGS =//p' "$objs/Makefile")
cflags=${core_cflags/$CORE_ONLY/}
cflags="$cflags $WARN"
incs="-I $src/src/core -I $src/src/event -I $src/src/event/modules
      -I $src/src/os/unix -I $src/src/http -I $src/src/http/modules
      -I $src/src/http/v2 -I $objs -I $root/src -I $root/fuzz"

# nginx.c without its main()

if [ ! -f "$dir/nginx_nomain.o" ] \
   || [ "$objs/src/core/nginx.o" -nt "$dir/nginx_nomain.o" ]
then
    $CC -c $core_cflags $incs -Dmain=ngx_fuzz_nginx_main \
        -o "$dir/nginx_nomain.o" "$src/src/core/nginx.c"
fi

# the module, each source compiled when it or a header is newer

mkdir -p "$dir/module"
newest_h=$(ls -t "$root"/src/*.h | head -1)
module_objs=

for c in "$root"/src/*.c; do
    o=$dir/module/$(basename "$c" .c).o
    module_objs="$module_objs $o"

    if [ -f "$o" ] && [ "$o" -nt "$c" ] && [ "$o" -nt "$newest_h" ] \
       && [ "$o" -nt "$objs/Makefile" ]
    then
        continue
    fi

    echo "fuzz: compiling $(basename "$c")"
    $CC -c $cflags $incs -o "$o" "$c"
done

# the harnesses: the module sources each includes (linked without them)

declare -A HARNESS_OWN=(
    [request]="ngx_http_llm_handler"
)

mkdir -p "$dir/bin"

for h in "$root"/fuzz/fuzz_*.c; do
    name=$(basename "$h" .c)
    name=${name#fuzz_}
    objects=$module_objs

    for o in ${HARNESS_OWN[$name]:-}; do
        objects=$(echo "$objects" | tr ' ' '\n' | grep -v "/$o\.o$")
    done

    echo "fuzz: linking $name"

    # shellcheck disable=SC2086
    $CC $cflags -Wno-unused-function -fsanitize=fuzzer $incs \
        -o "$dir/bin/$name" "$h" $objects $core_objs "$dir/nginx_nomain.o" \
        $libs -lcjson -lcrypto
done

echo "fuzz: harnesses in $dir/bin: $(ls "$dir/bin" | tr '\n' ' ')"
