//! Tests of the JSON decoder, its fast path against arrow-json's, and
//! projections.

use super::*;
use datafusion::arrow::array::{Array, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMillisecondType};
use std::sync::Arc;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("geo", DataType::Utf8, true),
        Field::new("bid", DataType::Float64, true),
    ]))
}

#[test]
fn timestamps_in_three_forms() {
    let mut d = JsonDecoder::new(schema()).unwrap();
    let (b, bad) = d.decode(&[
        br#"{"ts": 1000, "geo": "US", "bid": 0.5}"#.as_slice(),
        br#"{"ts": "1970-01-01T00:00:02Z", "geo": "FR"}"#,
        br#"{"ts": "1970-01-01 00:00:03", "bid": 1, "extra": [1,2]}"#,
    ]);
    // The unknown field is noted; the record is in the batch.
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!((bad[0].index, bad[0].reason), (2, "unknown_field"));
    assert!(bad[0].detail.contains("'extra'"), "{bad:?}");
    let b = b.unwrap();
    let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.values().to_vec(), vec![1000, 2000, 3000]);
    let bid = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
    assert!(bid.is_null(1));
    assert_eq!(bid.value(2), 1.0);
}

#[test]
fn bad_records_are_isolated() {
    let mut d = JsonDecoder::new(schema()).unwrap();
    let payloads: Vec<&[u8]> = vec![
        br#"{"ts": 1, "geo": "a"}"#,
        b"{not json",
        br#"{"ts": 2, "geo": "b"}"#,
        b"",
        br#"{"ts": 3} {"ts": 4}"#,
        br#"{"ts": 5, "bid": "lots"}"#,
        b"\xff\xfe",
        br#"{"ts": 6, "geo": "c"}"#,
    ];
    let (b, bad) = d.decode(&payloads);
    let b = b.unwrap();
    let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.values().to_vec(), vec![1, 2, 6]);
    let idx: Vec<usize> = bad.iter().map(|b| b.index).collect();
    assert_eq!(idx, vec![1, 3, 4, 5, 6]);
    assert_eq!(bad[1].reason, "empty");
}

fn slow(schema: SchemaRef) -> JsonDecoder {
    let mut d = JsonDecoder::new(schema).unwrap();
    d.fast = None;
    d
}

#[test]
fn fast_path_agrees_with_arrow_json() {
    let cases: Vec<&[u8]> = vec![
        br#"{"ts": 1000, "geo": "US", "bid": 0.5}"#,
        br#" {"ts":-5,"geo":null,"bid":1e3,"x":[1,{"a":2}]} "#,
        br#"{"geo": "caf\u00e9", "ts": 7}"#,
        br#"{"ts": 1, "ts": 2}"#,
        br#"{"ts": "1970-01-01T00:00:02Z"}"#,
        br#"{"bid": "1.5", "extra": true, "more": null, "n": -0.25E+2}"#,
        br#"{"bid": 01}"#,
        br#"{"bid": 1.}"#,
        br#"{"ts": 1.5}"#,
        br#"{"ts": -9223372036854775808}"#,
        br#"{"ts": 9223372036854775807}"#,
        br#"{"ts": 9223372036854775808}"#,
        br#"{"ts": -9223372036854775809}"#,
        br#"{"ts": -0}"#,
        br#"{"tsx": 1, "geo": "a", "ts": 2, "bi": 3, "bid": 4}"#,
        br#"{"ts\"": 1, "geo\u0041": "b", "ge": "c"}"#,
        br#"{}"#,
        b"{\"geo\": \"\xc3\xa9t\xc3\xa9\"}",
        // Not UTF-8: in a read string, an unknown field's string, an
        // escape, a key, and outside any string.
        b"{\"geo\": \"\xff\"}",
        b"{\"ts\": 1, \"other\": \"a\xc3\"}",
        b"{\"ts\": 1, \"other\": \"\\\xff\"}",
        b"{\"ts\": 1, \"x\xc3\x28\": 2}",
        b"{\"ts\": 1}\xff",
        b"{\"ts\": 1 \xc3\xa9}",
        br#"{"geo": 12, "bid": true}"#,
        br#"{"geo": "a"} x"#,
        br#"[1]"#,
        b"  ",
    ];
    let both = |payloads: &[&[u8]]| {
        let (fb, fbad) = JsonDecoder::new(schema()).unwrap().decode(payloads);
        let (sb, sbad) = slow(schema()).decode(payloads);
        assert_eq!(fb, sb, "{payloads:?}");
        assert_eq!(fbad, sbad, "{payloads:?}");
    };
    for c in &cases {
        both(&[c]);
    }
    // One decoder over call after call (its builders start each call with
    // the last one's room) decodes as fresh ones do.
    let mut reused = JsonDecoder::new(schema()).unwrap();
    for payloads in [&cases[..], &cases[..2], &cases[..1], &cases[..]] {
        let again = reused.decode(payloads);
        assert_eq!(again, JsonDecoder::new(schema()).unwrap().decode(payloads));
    }
    both(&cases);
    both(&cases[..2]);
    // Fields in changing orders within one call (the fast path tries the
    // field after the last one first), with text that is not ASCII.
    both(&[
        br#"{"ts": 1, "geo": "US", "bid": 0.5}"#,
        br#"{"bid": 2.5, "ts": 2, "geo": "DE"}"#,
        "{\"geo\": \"été\", \"bid\": 1, \"ts\": 3}".as_bytes(),
        r#"{"ts": 4, "extra": 1, "bid": 3, "geo": "日本"}"#.as_bytes(),
        br#"{"geo": "FR", "ts": 5}"#,
    ]);
    // Projected: the read columns are the same, the rest may be NULL.
    let payloads = &[cases[0], cases[9]];
    let (p, _) = JsonDecoder::with_projection(schema(), &[0, 2])
        .unwrap()
        .decode(payloads);
    let (s, _) = slow(schema()).decode(payloads);
    let (p, s) = (p.unwrap(), s.unwrap());
    assert_eq!(p.column(0), s.column(0));
    assert_eq!(p.column(2), s.column(2));
    assert_eq!(p.column(1).null_count(), 2);
}

/// The fast path's string scan, byte by byte: where the string starting at
/// the quote `b[0]` ends (past its closing quote) and whether it has
/// escapes; `None` at a control byte, without a closing quote, or when its
/// text is not UTF-8.
fn string_end_bytewise(b: &[u8]) -> Option<(usize, bool)> {
    let (mut j, mut escaped) = (1, false);
    while j < b.len() {
        match b[j] {
            b'"' => return std::str::from_utf8(&b[1..j]).ok().map(|_| (j + 1, escaped)),
            b'\\' => {
                escaped = true;
                j += 2;
            }
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
    None
}

#[test]
fn strings_scanned_eight_bytes_at_a_time_end_where_byte_by_byte_says() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    // Mostly plain text, with the bytes that end or break a string, a byte
    // one off each of them, and UTF-8 continuation bytes.
    let alphabet: &[u8] = b"aZ09 _.-\x22\\\x1f\x00\x20\x21\x23\x5b\x5d\x7f\x80\xc3\xa9\xff";
    for n in 0..20_000 {
        let len = rng.random_range(0..40);
        let mut b = vec![b'"'];
        for _ in 0..len {
            let c = if rng.random_bool(0.7) {
                b'a' + (n % 26) as u8
            } else {
                alphabet[rng.random_range(0..alphabet.len())]
            };
            b.push(c);
        }
        let fast = super::fast::string_end(&b, 0).ok();
        assert_eq!(fast, string_end_bytewise(&b), "{b:?}");
    }
}

/// Decimals read by the fast path are the `f64`s `str::parse` gives, bit
/// for bit: plain decimals of every length (within and past the exact
/// range), negative zero, exponents, and the mantissa's and the fraction's
/// limits on both sides.
#[test]
fn floats_read_as_str_parse_reads_them() {
    use rand::{Rng, SeedableRng};
    let same = |t: &str| {
        let fast = super::fast::float(t.as_bytes()).ok().map(f64::to_bits);
        assert_eq!(fast, t.parse::<f64>().ok().map(f64::to_bits), "{t}");
    };
    for t in [
        "0",
        "-0",
        "-0.0",
        "0.5",
        "0.1",
        "0.000001",
        "1.7976931348623157",
        "123456.789",
        "9007199254740992",
        "9007199254740993",
        "900719925474099.3",
        "900719925474099.37",
        "0.1234567890123456789012",
        "0.12345678901234567890123",
        "1e3",
        "-2.5E-3",
        "1.0e+22",
        "18446744073709551616",
        "99999999999999999999.5",
        "0.0000000000000000000001",
        "0.00000000000000000000001",
        "-0.00000000000000000000003",
    ] {
        same(t);
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let digits = |rng: &mut rand::rngs::SmallRng, n: usize, lead: bool| -> String {
        (0..n)
            .map(|i| match (i, lead) {
                (0, true) => char::from(b'1' + rng.random_range(0..9u8)),
                _ => char::from(b'0' + rng.random_range(0..10u8)),
            })
            .collect()
    };
    for _ in 0..200_000 {
        let mut t = String::new();
        if rng.random_bool(0.3) {
            t.push('-');
        }
        match rng.random_range(0..21) {
            0 => t.push('0'),
            n => t.push_str(&digits(&mut rng, n, true)),
        }
        if rng.random_bool(0.8) {
            t.push('.');
            let n = rng.random_range(1..26);
            t.push_str(&digits(&mut rng, n, false));
        }
        if rng.random_bool(0.05) {
            t.push('e');
            t.push_str(&rng.random_range(-30..30).to_string());
        }
        same(&t);
    }
}

/// Keys recognised by the column names' words (names up to 15 bytes) and
/// byte by byte (longer ones, or near a record's end) decode as arrow-json
/// does: every name, the name with one byte changed, cut short or run on.
#[test]
fn keys_compared_by_words_match_the_column_names() {
    let names = [
        "a",
        "geo",
        "cookie7",
        "website8",
        "publisher_name1",
        "a_sixteen_bytes_",
        "x_twenty_bytes_long_",
    ];
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Int64, true))
            .collect::<Vec<_>>(),
    ));
    let record = |keys: &[String]| -> Vec<u8> {
        let fields: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("\"{k}\":{i}"))
            .collect();
        format!("{{{}}}", fields.join(",")).into_bytes()
    };
    let mut records: Vec<Vec<u8>> = Vec::new();
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    records.push(record(&all));
    for (i, n) in names.iter().enumerate() {
        let mut variants = vec![format!("{n}x"), n[..n.len() - 1].to_string()];
        for at in 0..n.len() {
            let mut v = n.as_bytes().to_vec();
            v[at] = if v[at] == b'z' { b'y' } else { b'z' };
            variants.push(String::from_utf8(v).unwrap());
        }
        for v in variants {
            let mut keys = all.clone();
            keys[i] = v;
            records.push(record(&keys));
        }
        // The column alone, last, with fewer than 16 bytes after its quote.
        records.push(format!("{{\"{n}\":1}}").into_bytes());
    }
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    // Each record on its own (one that needs the general path sends its
    // whole call there), then all together.
    let each = payloads.chunks(1);
    for chunk in each.chain([&payloads[..]]) {
        let (fb, fbad) = JsonDecoder::new(schema.clone()).unwrap().decode(chunk);
        let (sb, sbad) = slow(schema.clone()).decode(chunk);
        assert_eq!(fb, sb);
        assert_eq!(fbad, sbad);
    }
    // The unknown keys were noticed: one per changed record.
    let (_, bad) = JsonDecoder::new(schema).unwrap().decode(&payloads);
    let changed: usize = names.iter().map(|n| n.len() + 2).sum();
    assert_eq!(bad.len(), changed);
}

/// A number with a fraction is not cut to fit an integer column: the
/// record is refused as the wrong type. Whole numbers, written with `.0`
/// or as text, fit.
#[test]
fn fractions_in_integer_columns_are_the_wrong_type() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int32, true),
        Field::new("m", DataType::Int64, true),
    ]));
    let mut d = JsonDecoder::new(schema).unwrap();
    let (b, bad) = d.decode(&[
        br#"{"n": 7.9, "m": 1}"#.as_slice(),
        br#"{"n": 7.0, "m": 2}"#,
        br#"{"n": "8", "m": 2.5}"#,
        br#"{"n": 9, "m": 3}"#,
    ]);
    let refused: Vec<(usize, &str)> = bad.iter().map(|b| (b.index, b.reason)).collect();
    assert_eq!(refused, [(0, "wrong_type"), (2, "wrong_type")], "{bad:?}");
    assert!(
        bad[0].detail.contains("n: 7.9 is not a whole number"),
        "{bad:?}"
    );
    assert!(bad[1].detail.contains("m: 2.5"), "{bad:?}");
    let b = b.unwrap();
    let n = b
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
    assert_eq!(n.values().to_vec(), vec![7, 9]);
}
