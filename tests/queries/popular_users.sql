CREATE STREAM activity (ts TIMESTAMP, user_id TEXT, activity TEXT)
  WITH (kafka_topic = 'activity', event_time = 'ts');

-- Scores per user, cumulative (updateStateByKey); each emission keeps only
-- the users at or above the 95th percentile of all scores (t-digest).
CREATE QUERY popular_users AS
SELECT user_id, sum(CASE activity WHEN 'profile.picture.like' THEN 2
                                  WHEN 'profile.view' THEN 1
                                  WHEN 'message.private' THEN 3 ELSE 0 END) AS score
FROM activity
GROUP BY user_id
QUALIFY score >= approx_percentile_cont(score, 0.95) OVER ()
EMIT EVERY 10s;
