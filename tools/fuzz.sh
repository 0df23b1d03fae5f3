#!/usr/bin/env bash
# Runs percore's cargo-fuzz targets, one after the other, each for a bounded time, and says what
# they found. Not part of CI (it needs nightly and minutes of CPU); the crashes it finds become
# inputs under fuzz/regressions/<target>/, which `cargo test` replays on stable.
#
#   tools/fuzz.sh                 # every target, 60 s each
#   tools/fuzz.sh 300 frame       # only `frame`, 5 minutes
#   FUZZ_SECONDS=120 tools/fuzz.sh store_model
#
# One libFuzzer process at a time, under `nice`, so a shared machine stays usable. New corpus
# entries go to fuzz/corpus-work/<target>/ (ignored by git); the committed seeds in
# fuzz/corpus/<target>/ are only read. Crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
    seconds="$1"
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(frame store_model request_hot_path)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "tools/fuzz.sh: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "tools/fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

cd fuzz
echo "== building the fuzz targets (nightly, sanitizer, release)"
nice -n 10 cargo +nightly fuzz build
found=0
for target in "${targets[@]}"; do
    mkdir -p "corpus-work/$target" "artifacts/$target" logs
    before=$(find "artifacts/$target" -type f | sort)
    log="logs/$target.log"
    dict=()
    if [[ -f "$target.dict" ]]; then
        dict=("-dict=$target.dict")
    fi
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    set +e
    # -timeout: an input that takes 10 s is a finding (a hang), not something to wait for.
    nice -n 10 cargo +nightly fuzz run "$target" "corpus-work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
    rc=$?
    set -e
    # libFuzzer's last status line (executions, coverage, features, corpus) and final stats.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
    new=$(comm -13 <(echo "$before") <(find "artifacts/$target" -type f | sort))
    if [[ $rc -ne 0 || -n "$new" ]]; then
        found=1
        echo "!! $target: fuzzer exited $rc; new inputs in fuzz/artifacts/$target/:"
        echo "${new:-   (none)}"
        grep -E 'panicked at|^==[0-9]+==ERROR|SUMMARY' "$log" | head -n 5 || true
    else
        echo "   $target: no findings"
    fi
done
exit "$found"
