CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT user_id, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts
FROM clicks GROUP BY user_id WINDOW SESSION 10s;
