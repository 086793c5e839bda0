-- Ad network (seed: adnetwork-spark-streaming): per publisher and geo,
-- skipping unresolved geos, every 10 s: average bid, impressions, and
-- unique cookies by HyperLogLog++.
CREATE STREAM impressions (
  ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
  geo TEXT, bid DOUBLE, cookie TEXT
) WITH (kafka_topic = 'adnetwork-topic', format = 'json', event_time = 'ts',
        watermark_delay = '2s', start = 'earliest');

CREATE QUERY adnetwork AS
SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps,
       approx_distinct(cookie) AS uniques
FROM impressions
WHERE geo <> 'unknown'
GROUP BY publisher, geo
WINDOW 10s;

-- The same over the last minute, updated every 10 s.
CREATE QUERY adnetwork_sliding AS
SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps,
       approx_distinct(cookie) AS uniques
FROM impressions
WHERE geo <> 'unknown'
GROUP BY publisher, geo
WINDOW 60s SLIDE 10s;
