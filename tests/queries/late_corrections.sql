CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s ALLOW LATE 20s;
