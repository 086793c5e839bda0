-- A record between two open sessions of its key joins both into one
-- (ksqlDB, Spark and Flink merge sessions a record bridges); a record the
-- WHERE clause filters out joins no session.
CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT user_id, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts
FROM clicks WHERE coalesce(page, '') <> 'bot' GROUP BY user_id WINDOW SESSION 5s;
