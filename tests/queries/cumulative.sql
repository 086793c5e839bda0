CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

CREATE QUERY scores AS
SELECT user_id,
       sum(CASE page WHEN 'like' THEN 2 WHEN 'share' THEN 5 ELSE 1 END) AS score
FROM clicks GROUP BY user_id EMIT EVERY 10s;
