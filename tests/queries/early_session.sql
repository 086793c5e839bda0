CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT user_id, count(*) AS n FROM clicks GROUP BY user_id WINDOW SESSION 5s EMIT EVERY 1s;
