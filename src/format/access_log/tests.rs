//! Tests of the access-log decoder: combined and common lines, column
//! subsets, rejected schemas, bad lines and every line `runnel gen` writes.

use super::*;
use crate::generate::{GenKind, Generator};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Field, Int32Type, Int64Type, Schema, TimestampMillisecondType};
use std::sync::Arc;

fn all_columns() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    Arc::new(Schema::new(
        PARTS
            .iter()
            .map(|(n, p)| {
                let t = match p {
                    Part::Ts => ts.clone(),
                    Part::Status => DataType::Int32,
                    Part::Size => DataType::Int64,
                    _ => DataType::Utf8,
                };
                Field::new(*n, t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

fn text(b: &RecordBatch, col: &str, row: usize) -> Option<String> {
    let a = b.column_by_name(col).unwrap().as_string::<i32>();
    a.is_valid(row).then(|| a.value(row).to_string())
}

#[test]
fn combined_and_common_lines() {
    let mut d = AccessLogDecoder::new(all_columns()).unwrap();
    let (b, bad) = d.decode(&[
        br#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#.as_slice(),
        b"192.168.1.2 ident - [10/Oct/2000:13:55:36 +0000] \"POST /login HTTP/1.1\" 304 -\n",
        br#"::1 - - [01/Jan/2024:00:00:00 +0530] "-" 408 - "-" "-" 1234 extra"#,
        br#"10.0.0.1 - - [29/Feb/2024:23:59:59 -0000] "GET /say/\"hi\"\\x HTTP/2.0" 500 0 "-" "curl/8 \"q\"""#,
        br#"10.0.0.2 - - [05/Mar/2024:10:00:00.250 +01:00] "GET /" 200 5"#,
    ]);
    assert!(bad.is_empty(), "{bad:?}");
    let b = b.unwrap();
    assert_eq!(b.num_rows(), 5);
    assert_eq!(text(&b, "ip", 0).as_deref(), Some("127.0.0.1"));
    assert_eq!(text(&b, "identity", 0), None);
    assert_eq!(text(&b, "user", 0).as_deref(), Some("frank"));
    assert_eq!(text(&b, "identity", 1).as_deref(), Some("ident"));
    assert_eq!(text(&b, "user", 1), None);
    assert_eq!(text(&b, "method", 0).as_deref(), Some("GET"));
    assert_eq!(text(&b, "endpoint", 0).as_deref(), Some("/apache_pb.gif"));
    assert_eq!(text(&b, "protocol", 0).as_deref(), Some("HTTP/1.0"));
    assert_eq!(
        text(&b, "request", 0).as_deref(),
        Some("GET /apache_pb.gif HTTP/1.0")
    );
    assert_eq!(
        text(&b, "referer", 0).as_deref(),
        Some("http://www.example.com/start.html")
    );
    assert_eq!(
        text(&b, "agent", 0).as_deref(),
        Some("Mozilla/4.08 [en] (Win98; I ;Nav)")
    );
    // Common format: no referer or agent; `-` size is NULL.
    assert_eq!(text(&b, "referer", 1), None);
    assert_eq!(text(&b, "agent", 1), None);
    // A `-` request has no parts.
    assert_eq!(text(&b, "method", 2), None);
    assert_eq!(text(&b, "request", 2), None);
    assert_eq!(text(&b, "referer", 2), None);
    // Escaped quotes are unescaped; other escapes stay as written.
    assert_eq!(text(&b, "endpoint", 3).as_deref(), Some("/say/\"hi\"\\x"));
    assert_eq!(text(&b, "agent", 3).as_deref(), Some("curl/8 \"q\""));
    assert_eq!(text(&b, "protocol", 4), None);
    assert_eq!(text(&b, "endpoint", 4).as_deref(), Some("/"));

    let status = b
        .column_by_name("status")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(status.values().to_vec(), vec![200, 304, 408, 500, 200]);
    let size = b
        .column_by_name("size")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(size.value(0), 2326);
    assert!(size.is_null(1));
    assert!(size.is_null(2));
    assert_eq!(size.value(3), 0);

    // Times are converted to UTC.
    let ts = b
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.value(0), 971_211_336_000); // 2000-10-10T20:55:36Z
    assert_eq!(ts.value(1), 971_186_136_000); // 2000-10-10T13:55:36Z
    assert_eq!(ts.value(2), 1_704_047_400_000); // 2023-12-31T18:30:00Z
    assert_eq!(ts.value(3), 1_709_251_199_000); // 2024-02-29T23:59:59Z
    assert_eq!(ts.value(4), 1_709_629_200_250); // 2024-03-05T09:00:00.250Z
}

#[test]
fn subset_of_columns_in_any_order() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("size", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
        Field::new("IP", DataType::Utf8, true),
    ]));
    let mut d = AccessLogDecoder::new(schema).unwrap();
    let (b, bad) = d.decode(&[
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7"#.as_slice(),
    ]);
    assert!(bad.is_empty());
    let b = b.unwrap();
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 7);
    assert_eq!(
        b.column(1).as_primitive::<Int64Type>().value(0),
        971_211_336_000
    );
    assert_eq!(b.column(2).as_string::<i32>().value(0), "1.2.3.4");

    let ts_text = Arc::new(Schema::new(vec![Field::new("ts", DataType::Utf8, true)]));
    let (b, _) = AccessLogDecoder::new(ts_text).unwrap().decode(&[
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7"#.as_slice(),
    ]);
    assert_eq!(
        b.unwrap().column(0).as_string::<i32>().value(0),
        "10/Oct/2000:13:55:36 -0700"
    );
}

#[test]
fn unknown_columns_and_bad_types_are_rejected() {
    let s = |f: Field| Arc::new(Schema::new(vec![f]));
    let err = AccessLogDecoder::new(s(Field::new("url", DataType::Utf8, true)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no column 'url'"), "{err}");
    assert!(AccessLogDecoder::new(s(Field::new("ts", DataType::Float64, true))).is_err());
}

#[test]
fn bad_lines_are_isolated() {
    let mut d = AccessLogDecoder::new(all_columns()).unwrap();
    let good = br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7"#;
    let payloads: Vec<&[u8]> = vec![
        good,
        b"",
        b"just some text",
        br#"1.2.3.4 - - 10/Oct/2000:13:55:36 -0700 "GET / HTTP/1.0" 200 7"#,
        br#"1.2.3.4 - - [32/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7"#,
        br#"1.2.3.4 - - [10/Foo/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7"#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36] "GET / HTTP/1.0" 200 7"#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0 200 7"#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" OK 7"#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200"#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7 trailing"#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 7 "ref""#,
        br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 99999999999 7"#,
        b"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] \"GET /\xff HTTP/1.0\" 200 7",
        good,
    ];
    let (b, bad) = d.decode(&payloads);
    assert_eq!(b.unwrap().num_rows(), 2);
    let idx: Vec<usize> = bad.iter().map(|b| b.index).collect();
    assert_eq!(idx, (1..=13).collect::<Vec<_>>());
    assert!(bad.iter().all(|b| b.reason == INVALID), "{bad:?}");
    assert!(bad[11].detail.contains("status"), "{bad:?}");
    // Nothing of the bad lines is left behind.
    let (b, bad) = d.decode(&[good.as_slice()]);
    assert!(bad.is_empty());
    assert_eq!(b.unwrap().num_rows(), 1);
    assert_eq!(d.decode(&[b"x".as_slice()]).0, None);
}

#[test]
fn every_generated_line_parses() {
    const TS: i64 = 1_700_000_000_123;
    let mut generator = Generator::new(GenKind::AccessLog, 1);
    let lines: Vec<Vec<u8>> = (0..5_000)
        .map(|i| {
            let mut buf = Vec::new();
            generator.write_record(TS + i * 250, &mut buf);
            buf
        })
        .collect();
    let payloads: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let mut d = AccessLogDecoder::new(all_columns()).unwrap();
    let (b, bad) = d.decode(&payloads);
    assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(3)]);
    let b = b.unwrap();
    assert_eq!(b.num_rows(), lines.len());
    let ts = b
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    for (i, t) in ts.values().iter().enumerate() {
        assert_eq!(*t, (TS + i as i64 * 250).div_euclid(1_000) * 1_000);
    }
    for col in ["ip", "method", "endpoint", "protocol", "agent"] {
        assert_eq!(b.column_by_name(col).unwrap().null_count(), 0, "{col}");
    }
    let status = b
        .column_by_name("status")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert!(status.values().iter().all(|s| (200..600).contains(s)));
    let size = b.column_by_name("size").unwrap();
    assert_eq!(size.null_count(), 0);
}
