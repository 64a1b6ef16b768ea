#!/bin/bash
# make fuzz: builds the harnesses (fuzz/build.sh) and runs each in turn.
#
#   fuzz/run.sh [DIR] [HARNESS ...]
#
# Each harness first runs the inputs of fuzz/regressions/HARNESS (inputs
# that once failed, kept so that they never fail again) and the seeds made
# from the test fixtures (fuzz/seeds.pl), then fuzzes for FUZZ_TIME
# seconds, with its corpus kept in DIR/corpus/HARNESS from run to run.
# A crash, a sanitizer report or a broken invariant stops the harness; the
# input is saved as DIR/artifacts/HARNESS-crash-*, the run goes on with
# the next harness and fails at the end.
#
# Environment:
#   FUZZ_TIME     seconds per harness (default 60)
#   FUZZ_RUNS     executions per harness instead of a time (-runs=)
#   FUZZ_ARGS     more libFuzzer options
#   FUZZ_LOG      log level of the code under test: (default) all but debug,
#                 "debug", or "none"

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build/fuzz}

if [ $# -gt 0 ]; then
    shift
fi

FUZZ_TIME=${FUZZ_TIME:-60}

bash "$root/fuzz/build.sh" "$dir"

dir=$(cd "$dir" && pwd)

rm -rf "$dir/seeds"
perl "$root/fuzz/seeds.pl" "$dir/seeds"

harnesses=${*:-$(cd "$dir/bin" && ls)}

mkdir -p "$dir/artifacts" "$dir/logs"

# every sanitizer report is fatal and has a stack; leaks are not checked
# (nginx keeps its pools until exit by design)

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=0:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

failed=
summary=

for h in $harnesses; do
    mkdir -p "$dir/corpus/$h"

    inputs=("$dir/corpus/$h" "$dir/seeds/$h")

    if [ -d "$root/fuzz/regressions/$h" ]; then
        inputs+=("$root/fuzz/regressions/$h")
    fi

    if [ -n "${FUZZ_RUNS:-}" ]; then
        limit="-runs=$FUZZ_RUNS"
    else
        limit="-max_total_time=$FUZZ_TIME"
    fi

    log=$dir/logs/$h.log

    echo "fuzz: $h ($limit)"

    rc=0

    # shellcheck disable=SC2086
    nice -n 19 "$dir/bin/$h" $limit \
        -max_len=16384 -timeout=10 -rss_limit_mb=4096 \
        -dict="$root/fuzz/gateway.dict" \
        -artifact_prefix="$dir/artifacts/$h-" \
        -print_final_stats=1 ${FUZZ_ARGS:-} \
        "${inputs[@]}" >"$log" 2>&1 || rc=$?

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -a -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)

    if [ "$rc" != 0 ]; then
        failed="$failed $h"
        echo "fuzz: $h FAILED (exit $rc), log $log:"
        grep -a -E 'ERROR|runtime error|invariant failed|^fuzz:|SUMMARY|Test unit written|#[0-9]+ in ' \
            "$log" | head -40
        line="$h: FAILED after ${execs:-?} executions, $cov"
    else
        line="$h: ${execs:-?} executions, $cov, no crash"
    fi

    echo "fuzz: $line"
    summary="$summary$line"$'\n'
done

echo
echo "fuzz: summary"
printf '%s' "$summary"

if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed (inputs in $dir/artifacts)"
    exit 1
fi
