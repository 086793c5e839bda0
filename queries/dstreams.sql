-- DStream concepts (seed: dstreams-concepts).

-- A stream-static join: publisher names from a CSV file enrich the stream,
-- and a spam-IP style blocklist cleans it.
CREATE TABLE publishers (id TEXT, name TEXT, tier TEXT)
  WITH (source = 'file', path = 'queries/publishers.csv', format = 'csv');

CREATE QUERY revenue_by_tier AS
SELECT p.tier, count(*) AS imps, sum(i.bid) AS spend
FROM impressions i JOIN publishers p ON i.publisher = p.id
WHERE i.geo <> 'unknown'
GROUP BY p.tier
WINDOW 10s;

-- countByValueAndWindow: counts of each value over a 30 s window sliding every 10 s.
CREATE QUERY geo_counts AS
SELECT geo, count(*) AS n FROM impressions GROUP BY geo WINDOW 30s SLIDE 10s;
