//! The JSON record shapes of `runnel gen`: ad impressions and user activity,
//! written byte by byte into a caller's buffer.

use rand::Rng;
use rand::rngs::SmallRng;

use super::{
    ACTIVITIES, FIRST_USER, GEOS, Generator, NUM_ADVERTISERS, NUM_COOKIES, NUM_USERS, NUM_WEBSITES,
    push_i64, push_u64, zipf_rank,
};

/// Appends one impression with event time `ts_ms` drawn from `rng`, with
/// publishers `0..publishers`, and returns its cookie number (the record's
/// key is `cookie_<n>`). [`Generator`] writes its impressions with this; the
/// benchmark dataset too, with its own number of publishers.
pub fn write_impression(rng: &mut SmallRng, ts_ms: i64, publishers: u32, out: &mut Vec<u8>) -> u32 {
    let publisher = rng.random_range(0..publishers.max(1));
    let advertiser = rng.random_range(0..NUM_ADVERTISERS);
    let website = rng.random_range(0..NUM_WEBSITES);
    let geo = GEOS[rng.random_range(0..GEOS.len())];
    let bid_micros = rng.random_range(0..1_000_000u32);
    let cookie = rng.random_range(0..NUM_COOKIES);

    out.extend_from_slice(b"{\"ts\":");
    push_i64(out, ts_ms);
    out.extend_from_slice(b",\"publisher\":\"publisher_");
    push_u64(out, u64::from(publisher));
    out.extend_from_slice(b"\",\"advertiser\":\"advertiser_");
    push_u64(out, u64::from(advertiser));
    out.extend_from_slice(b"\",\"website\":\"website_");
    push_u64(out, u64::from(website));
    out.extend_from_slice(b".com\",\"geo\":\"");
    out.extend_from_slice(geo.as_bytes());
    out.extend_from_slice(b"\",\"bid\":");
    push_micros_fraction(out, bid_micros);
    out.extend_from_slice(b",\"cookie\":\"cookie_");
    push_u64(out, u64::from(cookie));
    out.extend_from_slice(b"\"}");
    cookie
}

impl Generator {
    pub(super) fn write_activity(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let rank = zipf_rank(&mut self.rng, NUM_USERS);
        // Scatter popularity ranks over the id space so the popular users are
        // not simply the smallest ids; 7919 is prime and coprime with
        // NUM_USERS, which makes this a permutation.
        let user = FIRST_USER + (rank * 7_919 + 4_271) % NUM_USERS;
        let activity = ACTIVITIES[self.rng.random_range(0..ACTIVITIES.len())];

        self.key.clear();
        self.key.extend_from_slice(b"user_");
        push_u64(&mut self.key, user);

        out.extend_from_slice(b"{\"ts\":");
        push_i64(out, ts_ms);
        out.extend_from_slice(b",\"user_id\":\"");
        out.extend_from_slice(&self.key);
        out.extend_from_slice(b"\",\"activity\":\"");
        out.extend_from_slice(activity.as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

/// Appends `micros / 1e6` (with `micros < 1_000_000`) as `0.` followed by at
/// most six digits. There is always a decimal point, so JSON readers infer a
/// float column even when a value happens to be round (`0.5`, `0.0`).
pub(super) fn push_micros_fraction(out: &mut Vec<u8>, micros: u32) {
    debug_assert!(micros < 1_000_000);
    let mut digits = [b'0'; 6];
    let mut v = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let mut len = digits.len();
    while len > 1 && digits[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(b"0.");
    out.extend_from_slice(&digits[..len]);
}
