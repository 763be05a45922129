#!/usr/bin/env bash
# Run every fuzz/fuzz_*.py harness for a short time; fail on the first crash.
#
#   fuzz/run_smoke.sh            # 20 s each
#   fuzz/run_smoke.sh 5          # 5 s each
#
# Each harness starts from a scratch copy of its seed corpus (fuzz/corpus/<name>/)
# so the repository is never written to. Crash inputs are kept in
# $FUZZ_ARTIFACTS (default: a fresh temp dir) and named in the output.
set -euo pipefail

seconds="${1:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
artifacts="${FUZZ_ARTIFACTS:-$(mktemp -d -t exoquic-fuzz-artifacts.XXXXXX)}"
scratch="$(mktemp -d -t exoquic-fuzz-corpus.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$artifacts"

status=0
for harness in "$root"/fuzz/fuzz_*.py; do
    name="$(basename "$harness" .py)"
    corpus="$scratch/${name#fuzz_}"
    mkdir -p "$corpus"
    if [ -d "$root/fuzz/corpus/${name#fuzz_}" ]; then
        cp "$root/fuzz/corpus/${name#fuzz_}"/* "$corpus"/ 2>/dev/null || true
    fi
    log="$artifacts/$name.log"
    printf '%-24s %ss ... ' "$name" "$seconds"
    if (cd "$root" && uv run python "$harness" "$corpus" -max_total_time="$seconds" \
            -artifact_prefix="$artifacts/$name-" >"$log" 2>&1); then
        echo "ok ($(grep -o 'Done [0-9]* runs\?' "$log" | tail -1 || true))"
    else
        echo "CRASH, see $log"
        tail -n 30 "$log"
        status=1
    fi
done
exit "$status"
