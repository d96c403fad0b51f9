"""Ratio table from a benchmark JSONL file: per case and thread count, each tool's median
and how many times slower it is than ours (the `shapeflow` row, or the first `shapeflow-*`)."""
import json, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cached = [r for r in rows if r["tool"] == "shapeflow-cached"]
cross = [r for r in rows if r["tool"] == "crossover"]
rows = [r for r in rows if r["tool"] not in ("shapeflow-cached", "crossover")]
by = defaultdict(dict)
for r in rows:
    by[(r["case"], r["threads"])][r["tool"]] = r


def secs(s):
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


print(f"{'case':<24} {'threads':>7} {'tool':<28} {'median':>11} {'runs':>5} {'x slower than ours':>19}")
for (case, threads), tools in sorted(by.items()):
    ours = tools.get("shapeflow") or next((r for t, r in tools.items() if t.startswith("shapeflow")), None)
    for tool, r in sorted(tools.items(), key=lambda kv: kv[1]["median_s"]):
        ratio = r["median_s"] / ours["median_s"] if ours else float("nan")
        print(f"{case:<24} {threads:>7} {tool:<28} {secs(r['median_s']):>11} {r['runs']:>5} {ratio:>19.1f}")
    if ours and "copy_bound_s" in ours:
        print(f"{case:<24} {threads:>7} {'(copy bound)':<28} {secs(ours['copy_bound_s']):>11}")
for r in cached:
    print(f"edt-sdm stage on {r['case']} ({r['threads']} threads, storage {r['storage']}): cold run {r['cold_run_s']:.2f} s "
          f"(stage {r['cold_sdm_stage_s']:.2f} s), cached run {r['cached_run_median_s'] * 1e3:.1f} ms, "
          f"cached SDM bytes {r['sdm_stored_bytes'] / 2**20:.1f} MiB of {r['sdm_raw_bytes'] / 2**20:.1f} MiB raw")
for r in rows:
    if "peak_rss_bytes" in r and r["output_bytes"] > 2**20:
        print(f"{r['case']}: output {r['output_bytes'] / 2**20:.0f} MiB, process peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB ({r['threads']} threads)")
if cross:
    print(f"\nFH or direct minimisation ({cross[0]['threads']} thread, {cross[0]['dims']} volume, "
          f"feature box of N rows along y and z; this CPU's threshold: {cross[0]['auto_brute_max']} rows)")
    print(f"{'simd':<9} {'rows y/z':>9} {'FH':>10} {'direct':>10} {'FH / direct':>12}")
    for r in cross:
        print(f"{r['simd']:<9} {str(r['rows_y']) + '/' + str(r['rows_z']):>9} {secs(r['fh_median_s']):>10} "
              f"{secs(r['direct_median_s']):>10} {r['fh_median_s'] / r['direct_median_s']:>12.2f}")
