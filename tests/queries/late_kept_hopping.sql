-- Late records of hopping windows: a record late for some of its windows
-- but not all still counts in the open ones, is counted late and is kept
-- with only the windows it missed (window/late.rs).
CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 20s SLIDE 10s;
