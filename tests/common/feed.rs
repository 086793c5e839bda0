//! A steady producer of impressions for tests that kill servers mid-stream.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel::connect::kafka::send_waiting;
use runnel::generate::{GenKind, Generator};

/// Produces impressions (generator `seed`) to topic `imps`, round-robin over
/// 4 partitions, at about `rate` records/s, event times `step_ms` apart from
/// `base`, while `more(records so far)`; returns how many.
pub fn produce_paced(
    brokers: &str,
    seed: u64,
    base: i64,
    step_ms: i64,
    rate: u64,
    mut more: impl FnMut(u64) -> bool,
) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut g = Generator::new(GenKind::Impressions, seed);
    let mut buf = Vec::new();
    let start = Instant::now();
    let mut i = 0u64;
    while more(i) {
        buf.clear();
        g.write_record(base + i as i64 * step_ms, &mut buf);
        let record = BaseRecord::<(), [u8]>::to("imps")
            .payload(&buf)
            .partition((i % 4) as i32);
        send_waiting(&producer, record).unwrap();
        i += 1;
        if i.is_multiple_of(100) {
            producer.poll(Duration::ZERO);
            let due = Duration::from_millis(i * 1000 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    i
}
