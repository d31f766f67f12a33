//! The server over a real Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{SETTLE, TestRouter, eventually, raw, socket_path};
use crate::api::{ApiClient, ApiClientError, ApiServer, ApiServerOptions};

fn start(
    options: ApiServerOptions,
) -> (vmm_sys_util::tempdir::TempDir, ApiServer, Arc<TestRouter>) {
    let (dir, path) = socket_path();
    let router = Arc::new(TestRouter::default());
    let server = ApiServer::start_with(&path, router.clone(), options).unwrap();
    (dir, server, router)
}

/// The read deadline of [`short_timeout`] servers.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);

fn short_timeout() -> ApiServerOptions {
    ApiServerOptions {
        read_timeout: SHORT_TIMEOUT,
        ..Default::default()
    }
}

#[test]
fn api_server_json() {
    let (_dir, server, _) = start(Default::default());
    let client = ApiClient::new(server.path());
    assert_eq!(
        client.request("GET", "/api/v1/vm.info", None).unwrap(),
        (200, json!({ "state": "running" }))
    );
    let body = br#"{"a": [1, 2]}"#;
    assert_eq!(
        client.request("PUT", "/api/v1/echo", Some(body)).unwrap(),
        (200, json!({ "a": [1, 2] }))
    );
    assert_eq!(
        client.request("PUT", "/api/v1/echo", Some(b"{")).unwrap().0,
        400
    );
    assert_eq!(
        client.request("GET", "/nope", None).unwrap(),
        (404, json!({ "error": "Not found" }))
    );
    assert_eq!(
        client.request("HEAD", "/api/v1/vm.info", None).unwrap(),
        (200, serde_json::Value::Null)
    );
    let response = raw(server.path(), b"HEAD /api/v1/vm.info HTTP/1.1\r\n\r\n");
    assert!(
        response.ends_with("Content-Length: 19\r\nConnection: close\r\n\r\n"),
        "{response}"
    );
    assert!(eventually(|| server.connections() == 0));
}

#[test]
fn api_server_rejects_bad_requests() {
    let (_dir, server, _) = start(Default::default());
    let response = raw(server.path(), b"GARBAGE\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with("\r\n\r\n{\"error\":\"Malformed request line\"}"),
        "{response}"
    );
    let response = raw(server.path(), b"GET /api/v1/vm.info HTTP/3.0\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 505 "), "{response}");
    // Answered before the body is read, and the client still gets the answer.
    let client = ApiClient::new(server.path());
    let big = vec![b' '; 1 << 20];
    let (status, body) = client.request("PUT", "/api/v1/echo", Some(&big)).unwrap();
    assert_eq!(
        (status, body),
        (413, json!({ "error": "Request body too large" }))
    );
    let (status, body) = client.request("GET", "/api/v1/panic", None).unwrap();
    assert_eq!((status, body), (500, json!({ "error": "Internal error" })));
}

#[test]
fn api_server_times_out_silent_clients() {
    let (_dir, server, _) = start(short_timeout());
    let started = Instant::now();
    let mut silent = UnixStream::connect(server.path()).unwrap();
    let mut half = UnixStream::connect(server.path()).unwrap();
    half.write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHo")
        .unwrap();
    for stream in [&mut silent, &mut half] {
        stream.set_read_timeout(Some(SETTLE)).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{response}"
        );
    }
    // A lower bound only: a server that answered 408 at once would pass the checks above, and
    // an upper bound would measure the machine rather than the server.
    assert!(
        started.elapsed() >= SHORT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert!(eventually(|| server.connections() == 0));
}

#[test]
fn api_server_deadline_covers_the_whole_request() {
    let (_dir, server, _) = start(short_timeout());
    let mut slow = UnixStream::connect(server.path()).unwrap();
    // One byte every 50 ms never trips a per-read timeout of 300 ms, and sending all of them
    // takes 20 s: only a deadline on the whole request cuts the client off first.
    let mut request = b"GET /api/v1/vm.info HTTP/1.1\r\nX-Slow: ".to_vec();
    request.resize(400, b'z');
    let mut sent = 0;
    for &byte in &request {
        if slow.write_all(&[byte]).is_err() {
            break;
        }
        sent += 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(sent < request.len(), "the server read all {sent} bytes");
    slow.set_read_timeout(Some(SETTLE)).unwrap();
    let mut response = String::new();
    let _ = slow.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
}

#[test]
fn api_server_caps_connections() {
    let (_dir, server, _) = start(ApiServerOptions {
        max_connections: 2,
        // The held connections must outlast the test, however slow the machine.
        read_timeout: 2 * SETTLE,
        ..Default::default()
    });
    let held: Vec<_> = (0..2)
        .map(|_| UnixStream::connect(server.path()).unwrap())
        .collect();
    assert!(eventually(|| server.connections() == 2));
    let client = ApiClient::new(server.path());
    // Refused without a read, so the client may find the socket closed while it sends.
    let (status, body) = client.request("GET", "/api/v1/vm.info", None).unwrap();
    assert_eq!(
        (status, body),
        (503, json!({ "error": "Too many connections" }))
    );
    drop(held);
    assert!(eventually(|| server.connections() == 0));
    assert_eq!(
        client.request("GET", "/api/v1/vm.info", None).unwrap().0,
        200
    );
}

#[test]
fn event_streams_have_their_own_limit_and_never_take_a_request_slot() {
    let (_dir, server, _) = start(ApiServerOptions {
        max_connections: 2,
        max_event_streams: 3,
        ..Default::default()
    });
    let client = ApiClient::new(server.path());
    // As many streams as allowed, each with its first event read (so each is streaming).
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let mut events = client.stream("/api/v1/events.idle").unwrap();
            assert_eq!(events.next().unwrap().unwrap(), json!({ "n": 1 }));
            events
        })
        .collect();
    assert!(eventually(|| server.connections() == 0));
    // Requests still get both of their slots.
    for _ in 0..2 {
        assert_eq!(
            client.request("GET", "/api/v1/vm.info", None).unwrap().0,
            200
        );
    }
    match client.stream("/api/v1/events.idle") {
        Err(ApiClientError::Status {
            status: 503,
            message,
        }) => assert_eq!(message, "Too many event streams"),
        other => panic!("a fourth stream: {:?}", other.map(|_| ())),
    }
    // Their slots come back once the server sees the clients gone.
    drop(streams);
    assert!(eventually(|| client.stream("/api/v1/events.idle").is_ok()));
}

#[test]
fn api_server_streams() {
    let (_dir, server, router) = start(Default::default());
    let client = ApiClient::new(server.path());
    let events: Vec<_> = client
        .stream("/api/v1/events.finite")
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events, [json!({ "n": 1 }), json!({ "n": 2 })]);
    let dropped = || router.dropped.load(Ordering::SeqCst);
    assert!(eventually(dropped));
    // HTTP/1.0 has no chunked coding: the stream ends with the connection.
    let response = raw(server.path(), b"GET /api/v1/events.finite HTTP/1.0\r\n\r\n");
    assert!(
        response.ends_with("Connection: close\r\n\r\n{\"n\":1}\n{\"n\":2}\n"),
        "{response}"
    );
    match client.stream("/nope") {
        Err(ApiClientError::Status {
            status: 404,
            message,
        }) => assert_eq!(message, "Not found"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn api_server_ends_streams_of_departed_clients() {
    let (_dir, server, router) = start(Default::default());
    // One stream idles, so only the hang-up check notices; the other writes, so a write fails.
    for path in ["/api/v1/events.idle", "/api/v1/events.busy"] {
        router.dropped.store(false, Ordering::SeqCst);
        let mut events = ApiClient::new(server.path()).stream(path).unwrap();
        assert_eq!(events.next().unwrap().unwrap(), json!({ "n": 1 }));
        drop(events);
        assert!(
            eventually(|| router.dropped.load(Ordering::SeqCst)),
            "{path}"
        );
        assert!(eventually(|| server.connections() == 0), "{path}");
    }
}

#[test]
fn api_server_stop_removes_the_socket() {
    let (_dir, server, _) = start(Default::default());
    let path = server.path().to_owned();
    assert!(path.exists());
    server.stop();
    assert!(!path.exists());
    let err = ApiClient::new(&path).request("GET", "/", None).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(
        text.starts_with(&format!(
            "Cannot connect to the API socket {}: No such file",
            path.display()
        )),
        "{text}"
    );
    // Dropping works the same, and the path can be served again at once.
    let server = ApiServer::start(&path, Arc::new(TestRouter::default())).unwrap();
    drop(server);
    assert!(!path.exists());
}
