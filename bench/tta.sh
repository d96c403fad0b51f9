#!/usr/bin/env bash
# Test-time mirroring (issue 15): what `pipeline predict --tta` costs and what it changes, on
# real CT. The same model predicts the same OpenKBP test CTs without and with TTA (8 passes,
# left/right organs swapped back); both prediction folders are scored against the clinical
# contours with pipelines/evaluate-predictions.yaml.
#
#   bench/tta.sh MODEL_DIR [CASES] [THREADS]   (default all 32 test CTs, all cores)
#
# MODEL_DIR: a model trained by pipelines/openkbp.yaml (runs/<time>-openkbp/train/<variant>).
# Writes bench/results/tta-<date>.json and prints, per organ, the mean Dice and HD95 without
# and with TTA, and the median seconds per case of each.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(cd "$1" && pwd)
CASES=${2:-1000}
THREADS=${3:-$(nproc)}
ROOT=${OPENKBP_ROOT:-$(cd .. && pwd)/shared/data/openkbp}
cargo build --release --bin pipeline >&2
BIN=$PWD/target/release/pipeline
W=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT; echo "work dir: $W" >&2
mkdir -p bench/results "$W/in"
OUT=bench/results/tta-$(date +%Y%m%d-%H%M%S).json
n=0
for d in "$ROOT"/validation/pt_*; do
  [ $n -ge "$CASES" ] && break
  ln -s "$d" "$W/in/$(basename "$d")"
  n=$((n + 1))
done
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
for mode in plain tta; do
  flag=(); [ $mode = tta ] && flag=(--tta)
  "$BIN" predict -m "$MODEL" -i "$W/in" -o "$W/$mode" --device cpu "${flag[@]}" 2> "$W/$mode.log"
  PREDICTIONS="$W/$mode" OPENKBP_ROOT="$ROOT" "$BIN" run pipelines/evaluate-predictions.yaml \
    --cache "$W/cache" --runs "$W/runs-$mode" --no-progress -q >&2
done
python3 - "$W" "$n" "$THREADS" "$MODEL" > "$OUT" <<'PY'
import csv, glob, json, math, re, statistics as st, sys
w, n, threads, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = {"cases": n, "threads": threads, "model": model, "seconds_per_case": {}, "organs": {}}
rows = {}
for mode in ["plain", "tta"]:
    secs = [float(m.group(1)) for m in re.finditer(r"^  \S+: ([0-9.]+) s$", open(f"{w}/{mode}.log").read(), re.M)]
    out["seconds_per_case"][mode] = st.median(secs)
    (path,) = glob.glob(f"{w}/runs-{mode}/*/report/metrics.csv")
    rows[mode] = {(r["case"], r["organ"]): r for r in csv.DictReader(open(path))}
def num(x):
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None
for organ in sorted({o for _, o in rows["plain"]}):
    keys = [k for k in rows["plain"] if k[1] == organ and rows["plain"][k]["outcome"] != "absent" and k in rows["tta"]]
    d = {m: [num(rows[m][k]["dice"]) or 0.0 for k in keys] for m in rows}
    h = {m: [num(rows[m][k]["hd95"]) for k in keys] for m in rows}
    both = [(a, b) for a, b in zip(h["plain"], h["tta"]) if a is not None and b is not None]
    out["organs"][organ] = {
        "cases": len(keys),
        "dice_plain": st.mean(d["plain"]) if keys else None,
        "dice_tta": st.mean(d["tta"]) if keys else None,
        "dice_better_with_tta": sum(b > a for a, b in zip(d["plain"], d["tta"])),
        "dice_worse_with_tta": sum(b < a for a, b in zip(d["plain"], d["tta"])),
        "hd95_median_plain": st.median([a for a, _ in both]) if both else None,
        "hd95_median_tta": st.median([b for _, b in both]) if both else None,
        "hd95_pairs": len(both),
    }
print(json.dumps(out, indent=1))
PY
python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["seconds_per_case"]
print(f"{r['cases']} cases, {r['threads']} threads: {s['plain']:.1f} s/case plain, {s['tta']:.1f} s/case with TTA ({s['tta']/s['plain']:.2f}x)")
print(f"{'organ':14} {'n':>3} {'Dice':>6} {'+TTA':>6} {'better/worse':>12} {'HD95 med':>9} {'+TTA':>7}")
f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"
for o, m in r["organs"].items():
    print(f"{o:14} {m['cases']:>3} {f(m['dice_plain']):>6} {f(m['dice_tta']):>6} {m['dice_better_with_tta']:>5}/{m['dice_worse_with_tta']:<6} {f(m['hd95_median_plain'],1):>9} {f(m['hd95_median_tta'],1):>7}")
PY
echo "results: $OUT" >&2
