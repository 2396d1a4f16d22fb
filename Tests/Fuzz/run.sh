#!/usr/bin/env bash
# Runs one fuzz target (built by build.sh) and prints one summary line.
# Usage: Tests/Fuzz/run.sh [--ci] TARGET SECONDS
#   default: the scratch corpus $FUZZ_BUILD/corpus/TARGET (kept across runs) gets the new inputs; the
#            committed Tests/Fuzz/corpus/TARGET is read only.
#   --ci:    a fresh scratch corpus each run, so the result depends only on the committed seeds.
# Crashes, timeouts and OOMs go to $FUZZ_BUILD/artifacts/TARGET/; the full log to $FUZZ_BUILD/logs/TARGET.log.
# Exit status: 0 when the run ended without a finding, libFuzzer's status otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="${FUZZ_BUILD:-$root/.build-fuzz}"
case $out in /*) ;; *) out="$root/$out" ;; esac
ci=0
if [ "${1:-}" = --ci ]; then ci=1; shift; fi
target=${1:?usage: run.sh [--ci] TARGET SECONDS}
seconds=${2:?usage: run.sh [--ci] TARGET SECONDS}

exe="$out/fuzz-$target"
[ -x "$exe" ] || { echo "fuzz $target: FAILED, $exe is not built (Tests/Fuzz/build.sh $target)"; exit 1; }
case $target in
    decoder)   max_len=4096; extra=(-dict="$root/Tests/Fuzz/decoder.dict") ;;
    roundtrip) max_len=1024; extra=() ;;
    core)      max_len=2048; extra=() ;;
    *) echo "fuzz $target: unknown target"; exit 2 ;;
esac

scratch="$out/corpus/$target"
[ $ci = 1 ] && scratch="$out/corpus-ci/$target" && rm -rf "$scratch"
artifacts="$out/artifacts/$target"
log="$out/logs/$target.log"
mkdir -p "$scratch" "$artifacts" "$(dirname "$log")"

# One process, no -jobs/-fork: the machine's cores are shared.
SWIFT_BACKTRACE=enable=no "$exe" "$scratch" "$root/Tests/Fuzz/corpus/$target" \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 ${extra[@]+"${extra[@]}"} >"$log" 2>&1
status=$?

# Final stats, and the last status line's coverage ("#N  DONE cov: C ft: F corp: K/..." or the last pulse).
stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
execs=$(stat number_of_executed_units); rate=$(stat average_exec_per_sec); rss=$(stat peak_rss_mb)
last=$(grep -E '^#[0-9]+' "$log" | grep -E ' cov: ' | tail -1)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last"); ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
if [ $status = 0 ]; then
    echo "fuzz $target: ok, ${seconds}s, ${execs:-?} execs (${rate:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, peak rss ${rss:-?} MB"
else
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    echo "fuzz $target: FAILED (exit $status) after ${execs:-?} execs, cov ${cov:-?}; input: ${artifact:-none}; log: $log"
    grep -E 'ERROR: |fuzz invariant|Fatal error|SUMMARY' "$log" | head -5 | sed 's/^/    /'
fi
exit $status
