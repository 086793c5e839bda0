//! The access-log record shape of `runnel gen`: Apache combined log lines
//! with hot clients, skewed endpoints and a mix of statuses.

use std::io::Write;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::{Generator, push_u64, zipf_rank};

/// Client IPs that send a large share of access-log traffic (crawlers,
/// monitoring, a busy proxy), so "top IPs" queries have clear winners.
const HOT_IPS: [&str; 5] = [
    "66.249.66.1",
    "157.55.39.200",
    "198.51.100.23",
    "203.0.113.54",
    "192.0.2.147",
];
/// User agent index used by each hot IP, so a crawler always looks like one.
const HOT_IP_AGENTS: [usize; 5] = [6, 7, 5, 0, 3];
/// Share of access-log requests coming from [`HOT_IPS`], in per mille.
const HOT_IP_PER_MILLE: u32 = 300;
/// Number of ordinary clients, each with a stable IP and user agent.
const NUM_CLIENTS: u64 = 50_000;

/// Method, path and typical response size of each endpoint, most popular
/// first: endpoints are picked with a Zipf-like skew over this order.
const ENDPOINTS: [(&str, &str, u32); 16] = [
    ("GET", "/", 7_800),
    ("GET", "/products", 24_000),
    ("GET", "/js/app.js", 96_000),
    ("GET", "/css/site.css", 18_000),
    ("GET", "/images/logo.png", 12_400),
    ("GET", "/search", 15_000),
    ("GET", "/product/detail", 21_000),
    ("GET", "/api/v1/products", 3_200),
    ("POST", "/api/v1/cart", 450),
    ("GET", "/cart", 9_600),
    ("POST", "/login", 1_200),
    ("GET", "/index.html", 7_800),
    ("POST", "/api/v1/checkout", 820),
    ("GET", "/about.html", 5_400),
    ("GET", "/favicon.ico", 1_150),
    ("GET", "/robots.txt", 68),
];

/// Referers of requests that have one (the rest send `-`).
const REFERERS: [&str; 6] = [
    "https://www.google.com/",
    "https://www.bing.com/search?q=runnel+shop",
    "https://duckduckgo.com/",
    "https://news.ycombinator.com/",
    "https://t.co/x7Qm2pLk",
    "https://shop.example.com/products",
];
/// Share of access-log requests with a referer, in per mille.
const REFERER_PER_MILLE: u32 = 450;

/// User agents; ordinary clients use indexes `0..ORDINARY_AGENTS`, the rest
/// are crawlers used only by hot IPs.
const AGENTS: [&str; 8] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
];
const ORDINARY_AGENTS: u64 = 6;

impl Generator {
    pub(super) fn write_access_log(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        // Client: a hot IP, or one of many ordinary clients whose IP and user
        // agent are derived from the client number so they stay consistent.
        self.key.clear();
        let agent = if self.rng.random_range(0..1_000u32) < HOT_IP_PER_MILLE {
            let hot = self.rng.random_range(0..HOT_IPS.len());
            self.key.extend_from_slice(HOT_IPS[hot].as_bytes());
            AGENTS[HOT_IP_AGENTS[hot]]
        } else {
            let client = self.rng.random_range(0..NUM_CLIENTS);
            let h = mix64(client ^ 0x5EED_1F00_u64);
            let mut first = 11 + (h % 212) as u8;
            if first == 127 {
                first = 128;
            }
            push_u64(&mut self.key, u64::from(first));
            for octet in [(h >> 8) as u8, (h >> 16) as u8, 1 + ((h >> 24) % 254) as u8] {
                self.key.push(b'.');
                push_u64(&mut self.key, u64::from(octet));
            }
            AGENTS[((h >> 32) % ORDINARY_AGENTS) as usize]
        };

        let (method, path, typical_size) =
            ENDPOINTS[zipf_rank(&mut self.rng, ENDPOINTS.len() as u64) as usize];
        let roll = self.rng.random_range(0..1_000u32);
        let (status, size): (u32, u32) = match roll {
            0..850 => (
                200,
                typical_size / 2 + self.rng.random_range(0..=typical_size),
            ),
            850..910 => (304, 0),
            910..960 => (404, self.rng.random_range(196..=230)),
            960..980 => (401, 381),
            980..995 => (500, self.rng.random_range(520..=540)),
            _ => (503, 299),
        };
        let referer = if self.rng.random_range(0..1_000u32) < REFERER_PER_MILLE {
            REFERERS[self.rng.random_range(0..REFERERS.len())]
        } else {
            "-"
        };

        out.extend_from_slice(&self.key);
        out.extend_from_slice(b" - - [");
        self.push_clf_time(ts_ms, out);
        out.extend_from_slice(b"] \"");
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\" ");
        push_u64(out, u64::from(status));
        out.push(b' ');
        push_u64(out, u64::from(size));
        out.extend_from_slice(b" \"");
        out.extend_from_slice(referer.as_bytes());
        out.extend_from_slice(b"\" \"");
        out.extend_from_slice(agent.as_bytes());
        out.push(b'"');
    }

    /// Writes `ts_ms` as a common log format time (`10/Oct/2000:13:55:36 +0000`).
    fn push_clf_time(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let second = ts_ms.div_euclid(1_000);
        if second != self.clf_second {
            let time = DateTime::<Utc>::from_timestamp(second, 0).unwrap_or(DateTime::UNIX_EPOCH);
            self.clf_time.clear();
            write!(self.clf_time, "{}", time.format("%d/%b/%Y:%H:%M:%S +0000"))
                .expect("a constant time format writes into a Vec");
            self.clf_second = second;
        }
        out.extend_from_slice(&self.clf_time);
    }
}

/// SplitMix64 finalizer: turns consecutive client numbers into unrelated
/// looking bits for their IPs and user agents.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
