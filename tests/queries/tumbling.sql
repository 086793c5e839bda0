CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT page, count(*) AS n, sum(ms) AS total_ms, min(ms) AS min_ms, max(ms) AS max_ms, avg(ms) AS avg_ms
FROM clicks
GROUP BY page
WINDOW 10s;
