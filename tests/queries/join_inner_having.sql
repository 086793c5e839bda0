CREATE STREAM orders (ts TIMESTAMP, customer TEXT, amount BIGINT)
  WITH (kafka_topic = 'orders', event_time = 'ts');

CREATE TABLE customers (id TEXT, name TEXT, region TEXT)
  WITH (source = 'file', path = 'tests/queries/customers.csv', format = 'csv', header = true);

SELECT c.region, count(*) AS n
FROM orders o JOIN customers c ON o.customer = c.id
GROUP BY c.region HAVING sum(o.amount) > 10 WINDOW 10s ORDER BY c.region;
