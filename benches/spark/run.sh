#!/usr/bin/env bash
# Runnel beside Spark Structured Streaming: the same generated impressions,
# the same canonical query, records per CPU-second of each (see BENCHMARKS.md,
# "Beside Spark Structured Streaming").
#
#   benches/spark/run.sh [RECORDS] [WARMUP_RECORDS]      (default 2000000 100000)
#
# Installs what is missing: a Java runtime from Debian's packages
# (openjdk-17-jre-headless) and pyspark $PYSPARK_VERSION from PyPI. Uses the
# release binary $RUNNEL (default $CARGO_TARGET_DIR/release/runnel or
# target/release/runnel), building it when missing. Work files go to $WORK
# (default a fresh temporary directory), which is kept.
set -euo pipefail

RECORDS=${1:-2000000}
WARMUP=${2:-100000}
PYSPARK_VERSION=${PYSPARK_VERSION:-4.3.0}
SHUFFLE_PARTITIONS=${SHUFFLE_PARTITIONS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-$(mktemp -d -t runnel-spark-XXXXXX)}
mkdir -p "$WORK"

# --- what the comparison needs -------------------------------------------
java_major() {
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1
}
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then
    echo "installing a Java runtime (openjdk-17-jre-headless)"
    apt-get update
    apt-get install -y openjdk-17-jre-headless
fi
if [ "$(python3 -c 'import pyspark; print(pyspark.__version__)' 2>/dev/null)" != "$PYSPARK_VERSION" ]; then
    echo "installing pyspark $PYSPARK_VERSION"
    python3 -m pip install --break-system-packages "pyspark==$PYSPARK_VERSION"
fi
RUNNEL=${RUNNEL:-${CARGO_TARGET_DIR:-$ROOT/target}/release/runnel}
if [ ! -x "$RUNNEL" ]; then
    (cd "$ROOT" && cargo build --release --bin runnel)
fi

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "java:    $(java -version 2>&1 | head -1)"
echo "runnel:  $("$RUNNEL" --version 2>/dev/null || echo runnel) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "work:    $WORK"

# --- the records -----------------------------------------------------------
# runnel bench's dataset (seed 42): RECORDS impressions over 60 s of event
# time, then one more impression an hour later, whose event time moves the
# watermark past every window of the dataset in both engines (its own
# window stays open and is never emitted).
gen() { # records dir
    mkdir -p "$2"
    "$RUNNEL" bench --records "$1" --seed 42 --write-jsonl "$2/impressions.jsonl"
    echo '{"ts":1700003600000,"publisher":"publisher_0","advertiser":"advertiser_0","website":"website_0.com","geo":"FR","bid":0.5,"cookie":"cookie_0"}' \
        >>"$2/impressions.jsonl"
}
gen "$RECORDS" "$WORK/data"
gen "$WARMUP" "$WORK/warmup"
python3 "$HERE/compare.py" truth "$WORK/data/impressions.jsonl" "$WORK/truth.json"
EXPECTED=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['rows']))" "$WORK/truth.json")

# --- Spark: once cold, once after a warm-up query in the same JVM ----------
echo "spark: cold run"
python3 "$HERE/query.py" "$WORK/data" "$WORK/spark-cold.json" \
    --shuffle-partitions "$SHUFFLE_PARTITIONS" 2>"$WORK/spark-cold.log"
echo "spark: warm run"
python3 "$HERE/query.py" "$WORK/data" "$WORK/spark-warm.json" --warmup "$WORK/warmup" \
    --shuffle-partitions "$SHUFFLE_PARTITIONS" 2>"$WORK/spark-warm.log"

# --- Runnel: the real server over a file stream ----------------------------
echo "runnel: serve"
python3 "$HERE/runnel_run.py" "$RUNNEL" "$WORK/data/impressions.jsonl" "$EXPECTED" \
    "$WORK/runnel.json"

python3 "$HERE/compare.py" report "$WORK/truth.json" "$WORK/spark-cold.json" \
    "$WORK/spark-warm.json" "$WORK/runnel.json" | tee "$WORK/report.txt"
