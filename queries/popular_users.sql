-- Popular users (seed: popular-users-tdigest): activities scored by CASE, a
-- cumulative score per user (updateStateByKey), and every interval the users
-- at or above the 95th percentile of all scores (t-digest), published as
-- JSON to the Kafka topic popular_users.
CREATE STREAM activity (ts TIMESTAMP, user_id TEXT, activity TEXT)
  WITH (kafka_topic = 'activity', format = 'json', event_time = 'ts', start = 'earliest');

CREATE QUERY popular_users AS
SELECT user_id,
       sum(CASE activity WHEN 'profile.picture.like' THEN 2
                         WHEN 'profile.view' THEN 1
                         WHEN 'message.private' THEN 3
                         ELSE 0 END) AS score
FROM activity
GROUP BY user_id
QUALIFY score >= approx_percentile_cont(score, 0.95) OVER ()
EMIT EVERY 10s
INTO TOPIC 'popular_users';
