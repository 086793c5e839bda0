CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT page, user_id, count(*) AS n FROM clicks GROUP BY page, user_id WINDOW 10s;
