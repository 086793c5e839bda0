-- A session's lateness is judged against the session a record would join
-- (window/session.rs): a record inside an open session joins it even when
-- its own [t, t + gap] is past the watermark (Flink's WindowOperator drops
-- an element only when its window after merging is late), and a record
-- touching a closed session is late: it never starts a second session
-- overlapping the one already emitted.
CREATE STREAM clicks (ts TIMESTAMP, page TEXT, user_id TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts');

SELECT user_id, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts
FROM clicks GROUP BY user_id WINDOW SESSION 5s;
