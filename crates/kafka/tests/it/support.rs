//! Test helpers of this crate's own (the broker and the readers are `eventfold_kafka::testing`'s),
//! and an independent reader (`kcat`).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use eventfold_core::{testkit, Actor, NewEvent};

pub use eventfold_kafka::testing::{broker, event_id_of, read_from_start};

/// A topic prefix of this test's own.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// An event whose payload is `{"n": n}`.
pub fn event(n: u64) -> NewEvent {
    testkit::event(
        "Happened",
        Actor::system("relay-test"),
        format!("{{\"n\":{n}}}"),
    )
}

/// A message as kcat printed it.
#[derive(Debug)]
pub struct Message {
    pub key: String,
    pub headers: HashMap<String, String>,
    pub value: String,
}

/// Reads every message of `topic` from the beginning with kcat, retrying until at least
/// `expected` arrived (or 30 s passed), in partition order.
pub fn consume(topic: &str, expected: usize) -> Vec<Message> {
    let started = Instant::now();
    loop {
        let out = Command::new("kcat")
            .args([
                "-b",
                &broker(),
                "-C",
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            .args(["-f", "%k\u{1f}%h\u{1f}%s\u{1e}"])
            .output()
            .expect("kcat runs (scripts/test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let messages: Vec<Message> = text
            .split('\u{1e}')
            .filter(|m| !m.trim().is_empty())
            .map(|m| {
                let mut parts = m.splitn(3, '\u{1f}');
                let key = parts.next().unwrap_or_default().trim_start().to_owned();
                let headers = parts
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let value = parts.next().unwrap_or_default().to_owned();
                Message {
                    key,
                    headers,
                    value,
                }
            })
            .collect();
        if messages.len() >= expected || started.elapsed() > Duration::from_secs(30) {
            return messages;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Appends events `from + 1 ..= from + n` to `stream` one at a time (payload `{"n": version}`).
pub async fn append(
    store: &std::sync::Arc<dyn eventfold_core::EventStore>,
    stream: &str,
    from: u64,
    n: u64,
) {
    use eventfold_core::{AppendRequest, ExpectedVersion};
    for v in from..from + n {
        let expected = if v == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(v)
        };
        store
            .append(AppendRequest::new(stream, expected, vec![event(v + 1)]))
            .await
            .unwrap();
    }
}
