"""The canonical Runnel ad-network query on Spark Structured Streaming.

Reads impression JSON lines from a directory with the file source (explicit
schema), `local[2]`, event-time watermark 5 s, 10 s tumbling windows, append
mode, a memory sink and `Trigger.AvailableNow`, then writes one JSON object
with the result rows and the CPU and wall time of each phase:

* `startup`: launching the JVM and creating the SparkSession;
* `warmup` (with `--warmup DIR`): the same query over a smaller directory in
  the same JVM, so the measured query runs with classes loaded and code
  compiled;
* `query`: the streaming query over `DATA_DIR`, from `start()` until it has
  processed every file and stopped.

CPU is read from `/proc/<jvm pid>/stat` (user + system of the JVM, plus the
children it waited for: the launcher JVM of `spark-submit`), in clock ticks.

    python3 query.py DATA_DIR OUT.json [--warmup DIR] [--shuffle-partitions N]
"""

import argparse
import json
import os
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")

QUERY = """
SELECT window(ts, '10 seconds') AS window, publisher, geo,
       avg(bid) AS avg_bid, count(*) AS imps,
       approx_count_distinct(cookie) AS uniques
FROM impressions
WHERE geo <> 'unknown'
GROUP BY window(ts, '10 seconds'), publisher, geo
"""


def proc_cpu(pid):
    """User + system seconds of `pid` and of the children it waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command: state is [0], utime [11], stime [12],
    # cutime [13], cstime [14].
    return sum(int(x) for x in fields[11:15]) / TICKS


def self_cpu():
    t = os.times()
    return t.user + t.system


def run_query(spark, F, schema, data_dir, name, work):
    stream = (
        spark.readStream.schema(schema)
        .json(data_dir)
        .withColumn("ts", F.timestamp_millis("ts"))
        .withWatermark("ts", "5 seconds")
    )
    stream.createOrReplaceTempView("impressions")
    rows = spark.sql(QUERY).select(
        F.unix_millis(F.col("window.start")).alias("window_start"),
        "publisher",
        "geo",
        "avg_bid",
        "imps",
        "uniques",
    )
    query = (
        rows.writeStream.format("memory")
        .queryName(name)
        .outputMode("append")
        .option("checkpointLocation", os.path.join(work, name))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    batches = len(query.recentProgress)
    input_rows = sum(p.get("numInputRows", 0) for p in query.recentProgress)
    return batches, input_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("out")
    ap.add_argument("--warmup")
    ap.add_argument("--shuffle-partitions", type=int, default=2)
    ap.add_argument("--driver-memory", default="2g")
    args = ap.parse_args()

    t0 = time.monotonic()
    from pyspark.sql import SparkSession, functions as F
    from pyspark.sql.types import (
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("runnel-compare")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    jvm = spark.sparkContext._gateway.proc.pid
    out = {
        "spark": spark.version,
        "java": spark.sparkContext._jvm.java.lang.System.getProperty("java.version"),
        "shuffle_partitions": args.shuffle_partitions,
        "jvm_pid": jvm,
    }
    t1 = time.monotonic()
    c1 = proc_cpu(jvm)
    out["startup"] = {"wall_s": t1 - t0, "cpu_s": c1}

    schema = StructType(
        [
            StructField("ts", LongType()),
            StructField("publisher", StringType()),
            StructField("advertiser", StringType()),
            StructField("website", StringType()),
            StructField("geo", StringType()),
            StructField("bid", DoubleType()),
            StructField("cookie", StringType()),
        ]
    )
    work = tempfile.mkdtemp(prefix="runnel-spark-ckpt-")
    if args.warmup:
        tw, cw = time.monotonic(), proc_cpu(jvm)
        batches, n = run_query(spark, F, schema, args.warmup, "warmup", work)
        out["warmup"] = {
            "wall_s": time.monotonic() - tw,
            "cpu_s": proc_cpu(jvm) - cw,
            "batches": batches,
            "input_rows": n,
        }

    tq, cq, pq = time.monotonic(), proc_cpu(jvm), self_cpu()
    batches, n = run_query(spark, F, schema, args.data_dir, "result", work)
    out["query"] = {
        "wall_s": time.monotonic() - tq,
        "cpu_s": proc_cpu(jvm) - cq,
        "python_cpu_s": self_cpu() - pq,
        "batches": batches,
        "input_rows": n,
    }
    out["jvm_total_cpu_s"] = proc_cpu(jvm)
    out["rows"] = [
        {
            "window_start": r["window_start"],
            "publisher": r["publisher"],
            "geo": r["geo"],
            "avg_bid": r["avg_bid"],
            "imps": r["imps"],
            "uniques": r["uniques"],
        }
        for r in spark.sql("SELECT * FROM result").collect()
    ]
    spark.stop()
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
