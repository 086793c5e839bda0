CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT page, count(*) AS n FROM clicks WHERE page <> 'skip' GROUP BY page HAVING count(*) >= 2 WINDOW 10s;
