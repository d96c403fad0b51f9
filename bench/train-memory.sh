#!/usr/bin/env bash
# Memory of training on the OpenKBP training set (153 cases of ~125 x 125 x 107 after
# resampling to 4 x 4 x 3 mm; pipelines/openkbp.yaml's load, resample, SDMs and augment),
# two epochs of 5 steps, one head per run (dice, then joint-shell). Preprocessing runs first
# (cached, not measured); then each training is timed alone, its /proc/<pid>/status sampled
# every 0.5 s: peak VmRSS, and its parts RssAnon (the process's own memory) and RssFile
# (mapped files: page cache the kernel can drop), with GNU time's maximum RSS.
#
#   bench/train-memory.sh [PIPELINE_BINARY...]   (default: target/release/pipeline)
#
# Several binaries: each measured in turn on the same cache (compare builds). Needs about
# 12 GB free for builds that hold the training set in memory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${OPENKBP_ROOT:-$(cd .. && pwd)/shared/data/openkbp}
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/pipeline)
W=${WORK:-$(mktemp -d)}
echo "work dir: $W" >&2
sed -e "s#\${OPENKBP_ROOT:-../../shared/data/openkbp}#$ROOT#" pipelines/openkbp.yaml |
  python3 -c '
import sys
text = sys.stdin.read()
# Keep load -> resample -> sdm -> augment -> train; drop infer, evaluate, report.
head, rest = text.split("  infer:", 1)
_, variants = rest.split("variants:", 1)
print(head + "variants:" + variants)' > "$W/p.yaml"
first=$(realpath "${BINS[0]}")
(cd "$W" && "$first" run p.yaml --cache cache --runs runs --no-progress -q \
  --variants dice --set train.epochs=1 --set train.iterations=1 >&2)
sample() { # pid -> prints peak VmRSS RssAnon RssFile (kB)
  local pid=$1 v a f mv=0 ma=0 mf=0
  while kill -0 "$pid" 2>/dev/null; do
    read -r v a f < <(awk '/^VmRSS/{v=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2} END{print v+0, a+0, f+0}' "/proc/$pid/status" 2>/dev/null || echo "0 0 0")
    [ "$v" -gt "$mv" ] && mv=$v; [ "$a" -gt "$ma" ] && ma=$a; [ "$f" -gt "$mf" ] && mf=$f
    sleep 0.5
  done
  echo "$mv $ma $mf"
}
epochs=2
for bin in "${BINS[@]}"; do
  bin=$(realpath "$bin")
  for v in dice joint-shell; do
    epochs=$((epochs + 1)) # a new key: this training runs, everything before it is cached
    (cd "$W" && /usr/bin/time -f "%M %e" -o "$W/time" "$bin" run p.yaml --cache cache --runs runs \
      --no-progress -q --variants "$v" --set train.epochs=$epochs --set train.iterations=5 \
      --set train.val_every=0 >"$W/log" 2>&1) &
    tpid=$!
    pid=
    while [ -z "$pid" ]; do sleep 0.1; pid=$(pgrep -n -f "^$bin run p.yaml" || true); done
    read -r mv ma mf < <(sample "$pid")
    wait "$tpid" || { tail -20 "$W/log"; exit 1; }
    read -r kb s < "$W/time"
    printf '%-12s %-40s peak RSS %6.0f MiB (GNU time %6.0f MiB)  anon %6.0f MiB  file %6.0f MiB  wall %5.0f s\n' \
      "$v" "$bin" "$((mv / 1024))" "$((kb / 1024))" "$((ma / 1024))" "$((mf / 1024))" "$s"
  done
done
