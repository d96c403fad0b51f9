#!/usr/bin/env bash
# Kill -9 soak: runs a small demo pipeline N times, killing it at a random moment each time,
# checks the cache after every kill (`pipeline cache verify`), then lets it finish and
# compares its per-case metrics with a clean, uninterrupted run in another cache. Exits 0 when
# every verify is clean and the results are identical.
#
#   scripts/soak.sh [N=10]       (SOAK_DIR keeps the work folder; default a temp dir)
#
# The pipeline is the demo with 3 epochs (SOAK_SET overrides the --set arguments). Needs the
# release binary (`cargo build --release`) and libtorch (`scripts/setup-torch.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10}"
BIN="${PIPELINE:-target/release/pipeline}"
[ -x "$BIN" ] || { echo "soak: no $BIN; run cargo build --release" >&2; exit 2; }
WORK="${SOAK_DIR:-$(mktemp -d)}"
mkdir -p "$WORK"
read -r -a SETS <<< "${SOAK_SET:---set train.epochs=3}"
run() { # cache runs [extra]
    "$BIN" -q run pipelines/demo.yaml "${SETS[@]}" --cache "$1" --runs "$2" --no-progress
}
metrics_of() { # runs dir -> the newest run's per-case metrics of every variant, in one stream
    local newest
    newest=$(find "$1" -mindepth 1 -maxdepth 1 -type d | sort | tail -n 1)
    find "$newest" -path '*/report/*' -name metrics.csv | sort | xargs cat
}

echo "soak: clean run (work folder $WORK)"
t0=$(date +%s.%N)
run "$WORK/clean-cache" "$WORK/clean-runs" > "$WORK/clean.log" 2>&1
t1=$(date +%s.%N)
clean_s=$(python3 -c "print(max(2.0, $t1 - $t0))")
echo "soak: clean run took ${clean_s} s"

fail=0
for i in $(seq 1 "$N"); do
    delay=$(python3 -c "import random; print(round(random.uniform(0.5, $clean_s), 2))")
    # The binary itself in the background (not a shell function: kill -9 must reach it).
    "$BIN" -q run pipelines/demo.yaml "${SETS[@]}" --cache "$WORK/cache" --runs "$WORK/runs" \
        --no-progress > "$WORK/kill-$i.log" 2>&1 &
    pid=$!
    sleep "$delay"
    if kill -9 "$pid" 2> /dev/null; then what="killed at ${delay} s"; else what="finished before ${delay} s"; fi
    wait "$pid" 2> /dev/null || true
    if "$BIN" -q cache --cache "$WORK/cache" verify > "$WORK/verify-$i.txt" 2>&1; then
        echo "soak: $i/$N $what; cache verify clean"
    else
        echo "soak: $i/$N $what; cache verify FAILED: $(tail -n 3 "$WORK/verify-$i.txt")"
        fail=1
    fi
done

run "$WORK/cache" "$WORK/runs" > "$WORK/final.log" 2>&1 || { echo "soak: the final run failed (see $WORK/final.log)"; exit 1; }
if diff <(metrics_of "$WORK/clean-runs") <(metrics_of "$WORK/runs") > "$WORK/diff.txt"; then
    echo "soak: final results identical to the clean run"
else
    echo "soak: final results DIFFER from the clean run ($WORK/diff.txt)"
    fail=1
fi
leftovers=$(find "$WORK/cache/scratch" "$WORK/cache/tmp" -mindepth 1 2> /dev/null | wc -l)
echo "soak: leftovers in the cache after the final run: $leftovers"
[ "$leftovers" -eq 0 ] || fail=1
exit "$fail"
