-- Late records kept (window/late.rs): each record dropped as late is listed
-- with its partition, offset, event time, how late it came (_late_ms = the
-- running watermark it was judged against − its event time) and the windows
-- it missed, and the columns the query decodes (ts, page; not user_id).
CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s;
