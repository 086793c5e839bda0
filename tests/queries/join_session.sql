-- Sessions over a stream joined with a table, keyed by a table column: the
-- session keys come from the join, and an order the inner join drops (an
-- unknown customer, or none) joins no session.
CREATE STREAM orders (ts TIMESTAMP, customer TEXT, amount BIGINT)
  WITH (kafka_topic = 'orders', event_time = 'ts');

CREATE TABLE customers (id TEXT, name TEXT, region TEXT)
  WITH (source = 'file', path = 'tests/queries/customers.csv', format = 'csv', header = true);

SELECT c.region, count(*) AS n, sum(o.amount) AS total
FROM orders o JOIN customers c ON o.customer = c.id
GROUP BY c.region WINDOW SESSION 5s;
