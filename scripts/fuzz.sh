#!/usr/bin/env bash
# The fuzz campaign: every reader of user data (NIfTI, NRRD attached and detached, MetaImage, DICOM,
# dataset.json, the pipeline YAML, the cache's object format) under libFuzzer through
# cargo-fuzz on the stable toolchain (`--sanitizer none`: Rust's own checks, no ASan).
#
#   scripts/fuzz.sh [RUNS=1000000] [TARGET...]     executions per target
#   FUZZ_SECONDS=60 scripts/fuzz.sh                 a time budget per target instead (CI)
#
# Per input: 2 GB of memory, 10 s. New corpus entries go to tests/fuzz/corpus/<target>/;
# a crash, leak, timeout or out-of-memory is written to tests/fuzz/artifacts/<target>/ and the
# script exits 1. Found inputs belong in tests/fuzz/regressions/<target>/ (read by the test
# `fuzz_corpus_and_regressions_read_without_panic`). Prints executions and findings per target.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-1000000}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(nifti nrrd nrrd_detached metaimage dicom dataset_json pipeline_yaml cache_object)
if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 >&2 || exit 2
fi
./scripts/setup-torch.sh > /dev/null   # the pipeline links libtorch (.cargo/config.toml)
export LD_LIBRARY_PATH="$PWD/.venv/lib/python3.11/site-packages/torch/lib:${LD_LIBRARY_PATH:-}"
LIMITS=(-rss_limit_mb=2048 -timeout=10 -max_len=65536)
if [ -n "${FUZZ_SECONDS:-}" ]; then BUDGET=(-max_total_time="$FUZZ_SECONDS"); else BUDGET=(-runs="$RUNS"); fi
run_one() { # target -> one result line in tests/fuzz/artifacts/<target>.result
    local t=$1
    mkdir -p "tests/fuzz/corpus/$t" "tests/fuzz/artifacts/$t"
    local log="tests/fuzz/artifacts/$t.log"
    # The built target, run directly (cargo fuzz run would rebuild first).
    "tests/fuzz/target/x86_64-unknown-linux-gnu/release/$t" "tests/fuzz/corpus/$t" \
        "${LIMITS[@]}" "${BUDGET[@]}" -artifact_prefix="tests/fuzz/artifacts/$t/" -print_final_stats=1 \
        > "$log" 2>&1
    local rc=$?
    local execs rate corpus found
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(find "tests/fuzz/corpus/$t" -type f | wc -l)
    found=$(find "tests/fuzz/artifacts/$t" -type f | wc -l)
    printf '%-15s %12s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$found (rc $rc)" \
        > "tests/fuzz/artifacts/$t.result"
}
export -f run_one
export RUNS FUZZ_SECONDS
# Built once (FUZZ_NO_BUILD=1: use what is built), then the targets run side by side, one
# per core (FUZZ_JOBS).
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
    cargo fuzz build --fuzz-dir tests/fuzz --sanitizer none --release > /dev/null 2>&1 ||
        { echo "fuzz: build failed (cargo fuzz build --fuzz-dir tests/fuzz --sanitizer none)" >&2; exit 2; }
fi
LIMITS_S="${LIMITS[*]}" BUDGET_S="${BUDGET[*]}"
printf '%s\n' "${TARGETS[@]}" | xargs -P "${FUZZ_JOBS:-$(nproc)}" -I{} bash -c \
    'LIMITS=($0) BUDGET=($1); run_one {}' "$LIMITS_S" "$BUDGET_S"
status=0
printf '%-15s %12s %8s %8s %s\n' target executions exec/s corpus findings
for t in "${TARGETS[@]}"; do
    line=$(cat "tests/fuzz/artifacts/$t.result" 2> /dev/null || echo "$t (no result)")
    echo "$line"
    case "$line" in *" 0 (rc 0)") ;; *) status=1; tail -n 30 "tests/fuzz/artifacts/$t.log" >&2 ;; esac
done
exit "$status"
