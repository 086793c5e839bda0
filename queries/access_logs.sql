-- Web access logs (seed: access-log-analytics): Apache common/combined log
-- lines parsed into typed columns, then per 10 s window the content-size
-- statistics, counts per response code, busy IPs and the top endpoints.
CREATE STREAM access_log (
  ip TEXT, identity TEXT, "user" TEXT, ts TIMESTAMP, method TEXT, endpoint TEXT,
  protocol TEXT, status INT, size BIGINT, referer TEXT, agent TEXT
) WITH (kafka_topic = 'access-log', format = 'access_log', event_time = 'ts',
        watermark_delay = '2s', start = 'earliest');

CREATE QUERY content_size AS
SELECT min(size) AS min_size, avg(size) AS avg_size, max(size) AS max_size, count(*) AS requests
FROM access_log
WINDOW 10s;

CREATE QUERY response_codes AS
SELECT status, count(*) AS n FROM access_log GROUP BY status WINDOW 10s;

CREATE QUERY busy_ips AS
SELECT ip, count(*) AS requests FROM access_log GROUP BY ip HAVING count(*) > 10 WINDOW 10s;

CREATE QUERY top_endpoints AS
SELECT endpoint, count(*) AS hits FROM access_log GROUP BY endpoint WINDOW 10s
ORDER BY hits DESC, endpoint LIMIT 10;
