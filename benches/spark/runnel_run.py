"""Runs the canonical query on a real `runnel serve` over a file stream.

Starts the server on a fresh data directory (the file's directory allowed,
no Kafka broker), creates the impressions stream over FILE (`source =
'file'`, JSON, event time `ts`, watermark delay 5 s, from the start) and the
canonical query, then polls `GET /queries/adnetwork/results` with its cursor
every 100 ms until EXPECTED rows have been served. CPU is the server
process's user + system time from `/proc/<pid>/stat` (all its threads), in
clock ticks; it is read after startup, and again when the last row has been
served. Writes one JSON object with the timings, the query's counters and
the rows.

    python3 runnel_run.py RUNNEL FILE EXPECTED OUT.json
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")

STREAM = """CREATE STREAM impressions (
  ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
  geo TEXT, bid DOUBLE, cookie TEXT
) WITH (source = 'file', path = '{path}', format = 'json', event_time = 'ts',
        watermark_delay = '5s', start = 'earliest')"""

QUERY = """CREATE QUERY adnetwork AS
SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps,
       approx_distinct(cookie) AS uniques
FROM impressions
WHERE geo <> 'unknown'
GROUP BY publisher, geo
WINDOW 10s"""


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICKS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(base, path, body=None):
    req = urllib.request.Request(base + path, data=body)
    if body is not None:
        req.add_header("Content-Type", "text/plain")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def main():
    runnel, path, expected, out_path = sys.argv[1:5]
    expected = int(expected)
    path = os.path.abspath(path)
    work = tempfile.mkdtemp(prefix="runnel-spark-serve-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "server.log"), "w")
    # An explicit --config must exist: an empty one, so no runnel.toml of the
    # working directory or the machine is read.
    open(os.path.join(work, "empty.toml"), "w").close()
    t0 = time.monotonic()
    server = subprocess.Popen(
        [
            runnel, "serve",
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", os.path.join(work, "data"),
            "--allow-files", os.path.dirname(path),
            "--brokers", "127.0.0.1:1",
            "--config", os.path.join(work, "empty.toml"),
        ],
        cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        while True:
            try:
                http(base, "/healthz")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() - t0 > 60:
                    raise SystemExit(f"runnel serve did not start; see {log.name}")
                time.sleep(0.02)
        startup = {"wall_s": time.monotonic() - t0, "cpu_s": proc_cpu(server.pid)}
        tq, cq = time.monotonic(), proc_cpu(server.pid)
        http(base, "/sql", STREAM.format(path=path).encode())
        http(base, "/sql", QUERY.encode())
        rows, cursor, polls = [], None, 0
        last_growth = time.monotonic()
        while len(rows) < expected:
            q = "/queries/adnetwork/results?limit=100000"
            if cursor is not None:
                q += f"&after={cursor}"
            page = http(base, q)
            polls += 1
            if page.get("cursor") is not None:
                cursor = page["cursor"]
            if page["rows"]:
                rows.extend(page["rows"])
                last_growth = time.monotonic()
            elif time.monotonic() - last_growth > 120:
                print(f"runnel: stalled at {len(rows)} of {expected} rows", file=sys.stderr)
                break
            if not page.get("has_more"):
                time.sleep(0.1)
        done = time.monotonic()
        c_end = proc_cpu(server.pid)
        status = http(base, "/queries/adnetwork")
        out = {
            "version": subprocess.run([runnel, "--version"], capture_output=True,
                                      text=True).stdout.strip(),
            "startup": startup,
            "query": {"wall_s": done - tq, "cpu_s": c_end - cq, "polls": polls},
            "total": {"wall_s": done - t0, "cpu_s": c_end},
            "status": status,
            "rows": rows,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
