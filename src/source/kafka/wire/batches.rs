//! A partition's record batches in a fetch answer, read into a chunk:
//! committed records only, from the position fetched.

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::Chunk;

/// The committed records of `records` (a partition's record batches in a
/// fetch answer) at or past offset `from`, and the offset to fetch next.
/// `aborted`: the answer's aborted transactions (producer, first offset).
pub(super) fn read_batches(
    partition: i32,
    mut records: Bytes,
    from: i64,
    mut aborted: Vec<(i64, i64)>,
) -> Result<(Option<Chunk>, i64), String> {
    aborted.sort_by_key(|a| a.1);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: Vec<i64> = Vec::new();
    let mut chunk: Option<Chunk> = None;
    let mut next = from;
    let be = |b: &[u8]| -> u64 { b.iter().fold(0u64, |v, x| (v << 8) | *x as u64) };
    // The batch header (format 2): base offset 0..8, length 8..12, magic
    // 16, attributes 21..23, last offset delta 23..27, max timestamp
    // 35..43, producer id 43..51; 61 bytes in all.
    while records.len() >= 12 {
        let base = be(&records[0..8]) as i64;
        let length = be(&records[8..12]) as u32 as i32;
        if length < 0 {
            return Err("a record batch of negative length".into());
        }
        let size = 12 + length as usize;
        if records.len() < size {
            break; // a batch cut short ends an answer
        }
        let mut batch = records.split_to(size);
        if size < 61 {
            return Err(format!("a record batch of {size} bytes"));
        }
        let magic = batch[16] as i8;
        if magic != 2 {
            return Err(format!(
                "message format v{magic}, which only librdkafka's fetching reads (own_fetch = false)"
            ));
        }
        let attributes = be(&batch[21..23]) as u16;
        let last = base + be(&batch[23..27]) as u32 as i32 as i64;
        let max_time = be(&batch[35..43]) as i64;
        let producer = be(&batch[43..51]) as i64;
        // Transactions are followed from the answer's first batch, even one
        // before the position: its marker may end one.
        while let Some((pid, _)) = aborted.next_if(|a| a.1 <= last) {
            aborting.push(pid);
        }
        let (control, transactional) = (attributes & 0x20 != 0, attributes & 0x10 != 0);
        if control {
            // A marker ends its producer's transaction; it is no record.
            aborting.retain(|p| *p != producer);
            next = next.max(last + 1);
            continue;
        }
        if last < next {
            continue; // all before the position: a fetch starts mid-batch
        }
        if transactional && aborting.contains(&producer) {
            next = last + 1;
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| e.to_string())?;
        let log_append = attributes & 0x08 != 0;
        for r in &set.records {
            if r.offset < next {
                continue;
            }
            let c = chunk.get_or_insert_with(|| {
                let mut c = Chunk::new(partition, r.offset);
                c.reserve(records.len() + size, set.records.len());
                c
            });
            let time = if log_append { max_time } else { r.timestamp };
            let time = if time < 0 { i64::MAX } else { time };
            c.push_logged(r.value.as_deref().unwrap_or_default(), r.offset, time);
        }
        next = last + 1;
    }
    Ok((chunk, next))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;

    /// A record at `offset` whose value is its offset, of `producer`
    /// (-1: none) in a transaction or not.
    fn record(offset: i64, producer: i64, transactional: bool) -> Record {
        Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: producer,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            // Consecutive: the encoder starts a batch at a gap.
            sequence: offset as i32,
            timestamp: 1_000 + offset,
            key: None,
            value: Some(Bytes::from(format!("v{offset}"))),
            headers: Default::default(),
        }
    }

    /// A transaction marker at `offset`: `commit` or abort.
    fn marker(offset: i64, producer: i64, commit: bool) -> Record {
        let mut r = record(offset, producer, true);
        r.control = true;
        r.key = Some(Bytes::from(vec![0, 0, 0, commit as u8]));
        r.value = Some(Bytes::from(vec![0, 0, 0, 0, 0, 0]));
        r
    }

    /// The batches of `batches`, back to back, compressed with `c`.
    fn encode(batches: &[Vec<Record>], c: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        for b in batches {
            let options = RecordEncodeOptions {
                version: 2,
                compression: c,
            };
            RecordBatchEncoder::encode(&mut buf, b, &options).unwrap();
        }
        buf.freeze()
    }

    /// Offsets, values and log times read, and the next offset.
    fn read(records: Bytes, from: i64, aborted: &[(i64, i64)]) -> (Vec<(i64, String, i64)>, i64) {
        let (chunk, next) = read_batches(3, records, from, aborted.to_vec()).unwrap();
        let got = chunk.map_or_else(Vec::new, |c| {
            assert_eq!(c.partition, 3);
            (c.payloads().iter().enumerate())
                .map(|(i, p)| {
                    let v = String::from_utf8(p.to_vec()).unwrap();
                    (c.offset(i), v, c.log_times[i])
                })
                .collect()
        });
        (got, next)
    }

    fn plain(offsets: std::ops::Range<i64>) -> Vec<Record> {
        offsets.map(|o| record(o, -1, false)).collect()
    }

    #[test]
    fn records_from_the_position_on_with_their_offsets_and_times() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records = encode(&[plain(0..4), plain(4..9)], c);
            let (got, next) = read(records.clone(), 0, &[]);
            let want: Vec<_> = (0..9).map(|o| (o, format!("v{o}"), 1_000 + o)).collect();
            assert_eq!((got, next), (want, 9), "{c:?}");
            // A fetch from the middle of a batch gets the whole batch: the
            // records before the position are not read again.
            let (got, next) = read(records.clone(), 6, &[]);
            assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [6, 7, 8]);
            assert_eq!(next, 9);
            // Past every batch: nothing, and the position stays.
            assert_eq!(read(records, 9, &[]), (vec![], 9));
        }
    }

    #[test]
    fn a_batch_cut_short_ends_the_answer() {
        let records = encode(&[plain(0..4), plain(4..9)], Compression::None);
        let first = encode(&[plain(0..4)], Compression::None).len();
        for cut in [first + 1, first + 12, records.len() - 1] {
            let (got, next) = read(records.slice(..cut), 0, &[]);
            assert_eq!(got.len(), 4, "cut at {cut}");
            // The next fetch asks for the batch cut short.
            assert_eq!(next, 4);
        }
    }

    #[test]
    fn aborted_transactions_and_markers_are_skipped() {
        // Producer 7 writes 0..3 and aborts (marker at 3); producer 8 writes
        // 4..6 in a transaction and commits (marker at 7); 8..9 are plain;
        // producer 7 writes 10..11 in a new transaction, committed at 12.
        let batches = vec![
            (0..3).map(|o| record(o, 7, true)).collect(),
            vec![marker(3, 7, false)],
            (4..7).map(|o| record(o, 8, true)).collect(),
            vec![marker(7, 8, true)],
            plain(8..10),
            (10..12).map(|o| record(o, 7, true)).collect(),
            vec![marker(12, 7, true)],
        ];
        let records = encode(&batches, Compression::None);
        let offsets = |(got, next): (Vec<(i64, String, i64)>, i64)| {
            (got.into_iter().map(|r| r.0).collect::<Vec<_>>(), next)
        };
        let want = vec![4, 5, 6, 8, 9, 10, 11];
        assert_eq!(offsets(read(records.clone(), 0, &[(7, 0)])), (want, 13));
        // Without the broker's list, the transactions count as committed;
        // markers are never records.
        let all = vec![0, 1, 2, 4, 5, 6, 8, 9, 10, 11];
        assert_eq!(offsets(read(records.clone(), 0, &[])), (all, 13));
        // From past the abort: the aborted transaction is over.
        assert_eq!(
            offsets(read(records, 4, &[(7, 0)])).0,
            [4, 5, 6, 8, 9, 10, 11]
        );
    }

    #[test]
    fn log_append_time_is_the_batchs_time() {
        let mut records = encode(&[plain(0..3)], Compression::None).to_vec();
        // The broker's time (as LogAppendTime topics write it): attribute
        // bit 3, the batch's max timestamp, the CRC over both.
        records[22] |= 0x08;
        records[35..43].copy_from_slice(&77_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&records[21..]);
        records[17..21].copy_from_slice(&crc.to_be_bytes());
        let (got, _) = read(Bytes::from(records), 0, &[]);
        assert_eq!(got.iter().map(|r| r.2).collect::<Vec<_>>(), [77_000; 3]);
    }

    #[test]
    fn a_corrupt_batch_is_an_error() {
        let mut records = encode(&[plain(0..3)], Compression::None).to_vec();
        let last = records.len() - 1;
        records[last] ^= 1;
        let e = read_batches(0, Bytes::from(records), 0, vec![]).unwrap_err();
        assert!(e.contains("Cyclic redundancy check"), "{e}");
    }
}
