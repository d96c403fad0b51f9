"""The paired comparison `pipeline compare` makes, recomputed with scipy from the reports'
metrics.csv: each argument NAME@SEED=PATH; a variant's seeds pooled by (case, seed); per
organ and metric, the cases both variants have a finite value for (absent organs left out,
a missed organ's Dice 0); scipy.stats.wilcoxon with its defaults. Prints JSON:
{organ: {metric: {"n": pairs, "means": {variant: mean}, "p": p}}} for two variants."""
import csv
import json
import math
import sys

from scipy.stats import wilcoxon

METRICS = ["dice", "hd95", "assd", "surface_dice"]
series = {}  # variant -> organ -> metric -> {case@seed: value}
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    variant, seed = name.split("@")
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["outcome"].startswith("absent"):
                continue
            for m in METRICS:
                v = float(row[m])
                if math.isfinite(v):
                    series.setdefault(variant, {}).setdefault(row["organ"], {}).setdefault(m, {})[
                        f"{row['case']}@{seed}"
                    ] = v
a, b = list(series)
out = {}
for organ in series[a]:
    for m in METRICS:
        sa, sb = series[a][organ].get(m, {}), series[b].get(organ, {}).get(m, {})
        common = [k for k in sa if k in sb]
        if not common:
            continue
        x = [sa[k] for k in common]
        y = [sb[k] for k in common]
        p = float(wilcoxon(x, y).pvalue) if any(u != v for u, v in zip(x, y)) else None
        out.setdefault(organ, {})[m] = {
            "n": len(common),
            "means": {a: sum(x) / len(x), b: sum(y) / len(y)},
            "p": p,
        }
print(json.dumps(out))
