"""Ground truth, cross-check and summary of the Runnel / Spark comparison.

    python3 compare.py truth DATA_FILE TRUTH.json
        Exact results of the canonical query over DATA_FILE (JSON lines): per
        (10 s window, publisher, geo) with geo <> 'unknown', the count, the
        average bid and the exact number of distinct cookies, for the windows
        a 5 s watermark closes (window end <= largest event time - 5 s).

    python3 compare.py report TRUTH.json SPARK_COLD.json SPARK_WARM.json RUNNEL.json
        Checks each engine's rows against the truth and against each other
        (same rows, equal counts, averages within 1e-9, distinct counts
        within 25 % or 1), prints records per CPU-second for each and the ratio
        Runnel / Spark, and exits 1 on any mismatch.
"""

import json
import sys
from datetime import datetime, timezone

WINDOW_MS = 10_000
DELAY_MS = 5_000


def truth(data_file, out_path):
    groups = {}
    records = 0
    max_ts = None
    with open(data_file, "rb") as f:
        for line in f:
            r = json.loads(line)
            records += 1
            ts = r["ts"]
            max_ts = ts if max_ts is None or ts > max_ts else max_ts
            if r["geo"] == "unknown":
                continue
            key = (ts - ts % WINDOW_MS, r["publisher"], r["geo"])
            g = groups.get(key)
            if g is None:
                g = groups[key] = [0, 0.0, set()]
            g[0] += 1
            g[1] += r["bid"]
            g[2].add(r["cookie"])
    watermark = max_ts - DELAY_MS
    rows = [
        {
            "window_start": w,
            "publisher": p,
            "geo": geo,
            "imps": g[0],
            "avg_bid": g[1] / g[0],
            "uniques": len(g[2]),
        }
        for (w, p, geo), g in sorted(groups.items())
        if w + WINDOW_MS <= watermark
    ]
    with open(out_path, "w") as f:
        json.dump({"records": records, "max_ts": max_ts, "rows": rows}, f)
    windows = len({r["window_start"] for r in rows})
    print(f"truth: {records} records, {len(rows)} rows in {windows} closed windows")


def window_ms(v):
    if isinstance(v, (int, float)):
        return int(v)
    t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return round(t.timestamp() * 1000)


def keyed(rows):
    out, dups = {}, 0
    for r in rows:
        k = (window_ms(r["window_start"]), r["publisher"], r["geo"])
        dups += k in out
        out[k] = r
    return out, dups


def check(name, rows, ref, ref_name, exact_uniques):
    """Compares `rows` with `ref`; returns (ok, description)."""
    got, dups = keyed(rows)
    want, _ = keyed(ref)
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    common = [k for k in want if k in got]
    imps_bad = [k for k in common if int(got[k]["imps"]) != int(want[k]["imps"])]
    avg_diff = max(
        (abs(float(got[k]["avg_bid"]) - float(want[k]["avg_bid"])) for k in common),
        default=0.0,
    )
    diff = {k: abs(float(got[k]["uniques"]) - float(want[k]["uniques"])) for k in common}
    rel = [diff[k] / float(want[k]["uniques"]) for k in common]
    max_rel = max(rel, default=0.0)
    mean_rel = sum(rel) / len(rel) if rel else 0.0
    max_abs = max(diff.values(), default=0.0)
    # HyperLogLog++ estimates: within 25 % of the reference, or within 1, per
    # group is accepted (both engines' sketches have a few % standard error;
    # Spark's dense registers can merge two of a handful of cookies, 2 -> 1).
    uniques_bad = [k for k in common if diff[k] > max(1.0, 0.25 * float(want[k]["uniques"]))]
    ok = not (missing or extra or dups or imps_bad or avg_diff > 1e-9 or uniques_bad)
    what = "distinct cookies vs exact" if exact_uniques else "uniques vs each other"
    desc = (
        f"{name} vs {ref_name}: {len(got)} rows ({len(want)} expected), "
        f"{len(missing)} missing, {len(extra)} extra, {dups} duplicated, "
        f"{len(imps_bad)} with another count, avg_bid max diff {avg_diff:.2e}, "
        f"{what}: mean {mean_rel:.2%}, max {max_rel:.2%} (largest difference {max_abs:g}), "
        f"{len(uniques_bad)} beyond 25 % and 1"
    )
    if not ok:
        desc = "MISMATCH!!! " + desc
        for k in (missing + extra + imps_bad + uniques_bad)[:5]:
            desc += f"\n    e.g. {k}: {name} {got.get(k)} / {ref_name} {want.get(k)}"
    return ok, desc


def report(truth_path, cold_path, warm_path, runnel_path):
    t = json.load(open(truth_path))
    cold = json.load(open(cold_path))
    warm = json.load(open(warm_path))
    rn = json.load(open(runnel_path))
    n = t["records"]
    print(f"\n== rows ({n} records) ==")
    ok = True
    for name, rows, ref, ref_name, exact in [
        ("spark", cold["rows"], t["rows"], "exact", True),
        ("spark (warm run)", warm["rows"], t["rows"], "exact", True),
        ("runnel", rn["rows"], t["rows"], "exact", True),
        ("runnel", rn["rows"], cold["rows"], "spark", False),
    ]:
        good, desc = check(name, rows, ref, ref_name, exact)
        ok &= good
        print(desc)

    def line(label, cpu, wall):
        rate = n / cpu if cpu > 0 else float("inf")
        print(f"{label:<58} {cpu:8.2f} CPU-s {wall:8.2f} s wall {rate / 1e6:8.3f}M records/CPU-s")
        return rate

    print(f"\n== cost ({n} records) ==")
    print(f"Spark {cold['spark']} on Java {cold['java']}, local[2], "
          f"spark.sql.shuffle.partitions={cold['shuffle_partitions']}; {rn['version']}")
    s_cold = line(
        "spark, cold: JVM start + query (whole JVM)",
        cold["startup"]["cpu_s"] + cold["query"]["cpu_s"],
        cold["startup"]["wall_s"] + cold["query"]["wall_s"],
    )
    s_cold_q = line("spark, cold: query only (after the SparkSession is up)",
                    cold["query"]["cpu_s"], cold["query"]["wall_s"])
    s_warm_q = line("spark, warm: query after a warm-up query in the same JVM",
                    warm["query"]["cpu_s"], warm["query"]["wall_s"])
    print(f"  (spark JVM startup: {cold['startup']['cpu_s']:.2f} CPU-s, "
          f"{cold['startup']['wall_s']:.2f} s; micro-batches: {cold['query']['batches']}; "
          f"python driver during the query: {cold['query']['python_cpu_s']:.2f} CPU-s, not counted)")
    r_total = line("runnel: server start + query until every row is served",
                   rn["total"]["cpu_s"], rn["total"]["wall_s"])
    r_q = line("runnel: query only (CREATE STREAM/QUERY until last row)",
               rn["query"]["cpu_s"], rn["query"]["wall_s"])
    print(f"  (runnel startup: {rn['startup']['cpu_s']:.2f} CPU-s, {rn['startup']['wall_s']:.2f} s; "
          f"result polls: {rn['query']['polls']})")
    print("\n== ratio, Runnel / Spark, records per CPU-second ==")
    print(f"with startup (runnel total / spark cold total): {r_total / s_cold:6.1f}x")
    print(f"query only, spark cold JVM:                      {r_q / s_cold_q:6.1f}x")
    print(f"query only, spark warm JVM:                      {r_q / s_warm_q:6.1f}x")
    if not ok:
        print("\nMISMATCH!!! the engines' results differ (see above)")
        sys.exit(1)
    print("\nrows match")


if __name__ == "__main__":
    if sys.argv[1] == "truth":
        truth(*sys.argv[2:4])
    elif sys.argv[1] == "report":
        report(*sys.argv[2:6])
    else:
        raise SystemExit(__doc__)
