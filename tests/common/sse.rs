//! A minimal reader of a server-sent events response, for the results
//! stream's tests.

use std::time::Duration;

use serde_json::Value;

/// One server-sent event.
#[derive(Debug, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// A minimal SSE reader over a streaming response.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut ev = Event::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.trim_start());
                    }
                }
                if ev.event.is_empty() && ev.data.is_empty() {
                    continue;
                }
                return ev;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.resp.chunk())
                .await
                .expect("an event within 60 s")
                .unwrap()
                .expect("stream still open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads `row` events until `n` rows arrived.
    pub async fn rows(&mut self, n: usize, out: &mut Vec<(i64, Value)>) {
        let want = out.len() + n;
        while out.len() < want {
            let ev = self.next().await;
            assert_eq!(ev.event, "row", "{ev:?}");
            let id: i64 = ev.id.expect("row events carry an id").parse().unwrap();
            out.push((id, serde_json::from_str(&ev.data).unwrap()));
        }
    }
}
