//! 100 000 generated and mutated statements through the parser, and every
//! one that parses as a continuous query through the planner: no panic.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runnel::plan::ContinuousPlan;
use runnel::sql::{Statement, parse_sql, parse_statement};

const SEEDS: &[&str] = &[
    "SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps, approx_distinct(cookie) AS uniques FROM impressions WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s",
    "SELECT geo, count(*) FROM impressions GROUP BY geo WINDOW 60s SLIDE 10s GRACE 5s ORDER BY 2 DESC LIMIT 3",
    "SELECT cookie, count(*), min(ts), max(ts) FROM impressions GROUP BY cookie WINDOW SESSION 30s",
    "CREATE QUERY q AS SELECT publisher, sum(CASE WHEN bid > 0.5 THEN 1 ELSE 0 END) FROM impressions GROUP BY publisher EMIT EVERY 5s",
    "SELECT publisher, approx_percentile(bid, 0.95) AS p95 FROM impressions GROUP BY publisher HAVING count(*) > 10 WINDOW TUMBLING (SIZE 10 SECONDS)",
    "CREATE STREAM s (ts TIMESTAMP, a TEXT, b DOUBLE, c BIGINT) WITH (kafka_topic = 't', event_time = 'ts', watermark_delay = '5s')",
    "EXPLAIN SELECT upper(geo), count(DISTINCT cookie) FROM impressions WHERE bid BETWEEN 0.1 AND 0.9 GROUP BY upper(geo) WINDOW 1m",
    "SHOW STREAMS; SHOW QUERIES; DESCRIBE impressions; DROP QUERY IF EXISTS q",
    "SELECT website, count(*) FROM impressions WHERE website LIKE 'website_1%' AND geo IN ('US', 'FR') GROUP BY website WINDOW INTERVAL '10' SECOND",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
];

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "WINDOW",
    "SLIDE",
    "SESSION",
    "GRACE",
    "EMIT",
    "EVERY",
    "INTO",
    "TOPIC",
    "HAVING",
    "ORDER",
    "LIMIT",
    "CREATE",
    "STREAM",
    "QUERY",
    "AS",
    "WITH",
    "(",
    ")",
    ",",
    ";",
    "'",
    "\"",
    "*",
    "+",
    "-",
    "/",
    "%",
    "=",
    "<>",
    "<",
    ">",
    "0",
    "-1",
    "10s",
    "1e309",
    "99999999999999999999",
    "NULL",
    "CASE",
    "WHEN",
    "THEN",
    "END",
    "count(",
    "sum(",
    "approx_distinct(",
    "approx_percentile(",
    "ts",
    "geo",
    "bid",
    "window_start",
    "impressions",
    "ü",
    "\u{0}",
    "\n",
    "--",
    "/*",
    "INTERVAL",
    "SECOND",
    "TUMBLING",
    "HOPPING",
    "SIZE",
    "ADVANCE",
    "0ms",
    "UNION",
    "JOIN",
    "ON",
];

fn mutate(rng: &mut SmallRng, s: &str) -> String {
    let mut out: Vec<String> = s.split_inclusive(' ').map(String::from).collect();
    for _ in 0..rng.random_range(1..4) {
        let n = out.len().max(1);
        match rng.random_range(0..6) {
            0 if !out.is_empty() => {
                out.remove(rng.random_range(0..n));
            }
            1 => out.insert(
                rng.random_range(0..=out.len()),
                format!("{} ", TOKENS[rng.random_range(0..TOKENS.len())]),
            ),
            2 if out.len() > 1 => {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                out.swap(a, b);
            }
            3 => {
                let cut = rng.random_range(0..=out.len());
                out.truncate(cut);
            }
            4 if !out.is_empty() => {
                let i = rng.random_range(0..n);
                let dup = out[i].clone();
                out.insert(i, dup);
            }
            _ => {
                // Byte-level damage on one token, kept valid UTF-8.
                if let Some(t) = out.get_mut(rng.random_range(0..n)) {
                    let mut chars: Vec<char> = t.chars().collect();
                    if !chars.is_empty() {
                        let i = rng.random_range(0..chars.len());
                        chars[i] = char::from_u32(rng.random_range(0x20..0x2FF)).unwrap_or('?');
                    }
                    *t = chars.into_iter().collect();
                }
            }
        }
    }
    out.concat()
}

#[tokio::test]
async fn parser_and_planner_never_panic() {
    let Statement::CreateStream(stream) = parse_statement(
        "CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT, geo TEXT, bid DOUBLE, cookie TEXT)
         WITH (kafka_topic = 'x', event_time = 'ts')",
    )
    .unwrap()
    .stmt
    else {
        unreachable!()
    };
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let (mut parsed, mut planned) = (0, 0);
    let mut current: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    for i in 0..100_000 {
        let base = &current[rng.random_range(0..current.len())];
        let sql = mutate(&mut rng, base);
        let result = std::panic::catch_unwind(|| parse_sql(&sql));
        let stmts = match result {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                assert!(e.status() < 500, "{sql:?}: {e}");
                continue;
            }
            Err(_) => panic!("parser panicked on {sql:?}"),
        };
        parsed += 1;
        // Keep some survivors as new seeds so mutations compound.
        if i % 50 == 0 && current.len() < 200 {
            current.push(sql.clone());
        }
        for p in stmts {
            let select = match p.stmt {
                Statement::Select(s)
                | Statement::Explain(s)
                | Statement::CreateQuery { select: s, .. } => s,
                _ => continue,
            };
            planned += 1;
            let r = AssertUnwindSafe(ContinuousPlan::build(&stream, &select))
                .catch_unwind()
                .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => assert!(
                    e.status() < 500 || e.to_string().contains("not supported"),
                    "{sql:?}: {e}"
                ),
                Err(_) => panic!("planner panicked on {sql:?}"),
            }
        }
    }
    eprintln!("100000 statements: {parsed} parsed, {planned} planned");
    assert!(
        parsed > 10_000 && planned > 1_000,
        "mutations too destructive: {parsed} parsed, {planned} planned"
    );
}
