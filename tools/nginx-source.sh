#!/bin/sh
# The whole source of Debian's nginx, Debian's patches applied, unpacked
# into DIR (default build/nginx-source): the version of the installed
# nginx-dev, whose headers and configure flags the module is built with.
#
#   tools/nginx-source.sh [DIR]      prints the path of the source tree
#
# Debian's nginx-dev ships only the headers; the sanitizer build and the
# fuzzers need all of nginx.  apt reaches Debian's source packages once a
# deb-src line is there: one is added, beside the machine's own deb lines,
# for the suites of this release.

set -e

dir=${1:-build/nginx-source}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

for d in "$dir"/nginx-*/; do
    if [ -f "$d/src/core/nginx.c" ] && [ -f "$d/.complete" ]; then
        echo "${d%/}"
        exit 0
    fi
done

sh "$here/deps.sh" dpkg-dev nginx-dev >&2

if [ "$(id -u)" != 0 ] && ! apt-cache showsrc nginx 2>/dev/null \
                                | grep -q '^Package: nginx'
then
    echo "nginx-source: no deb-src line for nginx (run as root to add one)" >&2
    exit 1
fi

. /etc/os-release

list=/etc/apt/sources.list.d/nginx-llm-gateway-src

if ! apt-cache showsrc nginx 2>/dev/null | grep -q '^Package: nginx'; then

    if [ ! -f "$list.sources" ] && [ ! -f "$list.list" ]; then
        echo "nginx-source: adding deb-src for $VERSION_CODENAME" >&2

        # deb822 files: each enabled stanza of this release, as deb-src

        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v cn="$VERSION_CODENAME" '
                BEGIN { RS = ""; ORS = "\n\n" }
                /(^|\n)Types:[^\n]*deb/ && $0 ~ ("Suites:[^\n]*" cn) \
                    && !/Enabled: *no/ {
                    s = $0
                    sub(/Types:[^\n]*/, "Types: deb-src", s)
                    print s
                }' "$f"
        done >"$list.sources.tmp"

        # one-line files

        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            grep -E "^deb[[:space:]].*[[:space:]]$VERSION_CODENAME" "$f" \
                | sed 's/^deb[[:space:]]/deb-src /'
        done >"$list.list.tmp" || true

        if [ -s "$list.sources.tmp" ]; then
            mv "$list.sources.tmp" "$list.sources"
        else
            rm -f "$list.sources.tmp"
        fi

        if [ -s "$list.list.tmp" ]; then
            mv "$list.list.tmp" "$list.list"
        else
            rm -f "$list.list.tmp"
        fi

        if [ ! -f "$list.sources" ] && [ ! -f "$list.list" ]; then
            echo "nginx-source: no Debian deb line for $VERSION_CODENAME" \
                 "to derive a deb-src line from" >&2
            exit 1
        fi
    fi

    apt-get update -qq >/dev/null
fi

# the version of nginx-dev first, then the others apt knows, newest first
# (a mirror may lack the newest security update's source)

installed=$(dpkg-query -W -f='${Version}' nginx-dev 2>/dev/null || true)
versions=$( { [ -n "$installed" ] && echo "$installed"
              apt-cache showsrc nginx | sed -n 's/^Version: //p' \
                  | sort -r -V; } | awk '!seen[$0]++')

cd "$dir"
rm -rf "$dir"/nginx-*/ "$dir"/nginx_*
: >"$dir/apt.log"

for v in $versions; do
    if apt-get source -qq "nginx=$v" >>"$dir/apt.log" 2>&1; then
        [ "$v" = "$installed" ] \
            || echo "nginx-source: the source of nginx $installed is not" \
                    "to be had, $v taken" >&2
        break
    fi

    rm -rf "$dir"/nginx-*/ "$dir"/nginx_*
done

for d in "$dir"/nginx-*/; do
    if [ -f "$d/src/core/nginx.c" ]; then
        touch "$d/.complete"
        echo "${d%/}"
        exit 0
    fi
done

echo "nginx-source: no nginx tree in $dir" >&2
exit 1
