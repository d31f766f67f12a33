//! Tests of the API transport, and the helpers they share.

mod client;
mod fuzz;
mod http;
mod openapi;
mod server;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmm_sys_util::tempdir::TempDir;

use super::{ApiReply, ApiRouter};

/// How long a test waits for something that must happen. Only a broken server takes this long;
/// a slow machine (the emulated arm64 host) may need seconds where a desktop needs microseconds.
pub(super) const SETTLE: Duration = Duration::from_secs(30);

/// A temporary directory and the socket path in it.
pub(super) fn socket_path() -> (TempDir, PathBuf) {
    let dir = TempDir::new_with_prefix("/tmp/vmm-api-test-").unwrap();
    let path = dir.as_path().join("api.sock");
    (dir, path)
}

/// Sends `request` as is and returns everything the server writes until it closes.
pub(super) fn raw(path: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(SETTLE)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Polls `cond` every 10 ms until it holds or [`SETTLE`] passes; returns whether it held.
pub(super) fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// An event iterator that yields `events`, then "nothing yet" (or ends, if `finite`), and
/// records being dropped.
struct Events {
    events: Vec<Value>,
    finite: bool,
    period: Duration,
    dropped: Arc<AtomicBool>,
}

impl Iterator for Events {
    type Item = Option<Value>;

    fn next(&mut self) -> Option<Option<Value>> {
        thread::sleep(self.period);
        match self.events.pop() {
            Some(event) => Some(Some(event)),
            None if self.finite => None,
            None => Some(None),
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Routes the test paths; `dropped` records that the last stream's iterator was dropped.
#[derive(Default)]
pub(super) struct TestRouter {
    pub dropped: Arc<AtomicBool>,
}

impl ApiRouter for TestRouter {
    fn route(&self, method: &str, path: &str, body: &[u8]) -> ApiReply {
        let stream = |events: Vec<Value>, finite, period| {
            let dropped = self.dropped.clone();
            ApiReply::Stream(Box::new(Events {
                events,
                finite,
                period,
                dropped,
            }))
        };
        let ms = Duration::from_millis;
        match (method, path) {
            ("GET" | "HEAD", "/api/v1/vm.info") => ApiReply::Json {
                status: 200,
                body: json!({ "state": "running" }),
            },
            ("PUT", "/api/v1/echo") => match serde_json::from_slice::<Value>(body) {
                Ok(body) => ApiReply::Json { status: 200, body },
                Err(_) => ApiReply::Json {
                    status: 400,
                    body: json!({ "error": "Bad JSON" }),
                },
            },
            // Unwinds like a panic, without the panic message in the test output.
            ("GET", "/api/v1/panic") => std::panic::resume_unwind(Box::new("router bug")),
            ("GET", "/api/v1/events.finite") => {
                stream(vec![json!({ "n": 2 }), json!({ "n": 1 })], true, ms(1))
            }
            // Idles: only the hang-up check can end it.
            ("GET", "/api/v1/events.idle") => stream(vec![json!({ "n": 1 })], false, ms(50)),
            // Never idles: only a write error can end it.
            ("GET", "/api/v1/events.busy") => {
                stream(vec![json!({ "n": 1 }); 100_000], false, ms(5))
            }
            _ => ApiReply::Json {
                status: 404,
                body: json!({ "error": "Not found" }),
            },
        }
    }
}
