//! The control API's HTTP/1.1 request parser, `vmm::api::http::read_request`, on arbitrary
//! bytes (the same entry point as `vmm/src/api/tests/fuzz.rs`).
//!
//! Checks: it never reads more than the limits allow; a parsed request round-trips through
//! `Request::to_bytes`; an error is a 4xx/5xx with a JSON body; the router's pure part (path
//! to endpoint, the body must be a JSON object) takes whatever the parser accepts. Inputs of
//! odd length go through a `BufReader` of 1 to 64 bytes, so lines and bodies straddle
//! buffer refills.

use std::io::{BufReader, Cursor};

use vmm::api::Endpoint;
use vmm::api::http::{
    MAX_BODY, MAX_HEADERS_SIZE, MAX_REQUEST_LINE, Request, read_request, write_json,
};

/// The most a request can take: the request line, the headers, the blank line and the body.
const MAX_CONSUMED: u64 = (MAX_REQUEST_LINE + 2 + MAX_HEADERS_SIZE + 2 + MAX_BODY) as u64;

/// Parses `data` as one request.
pub fn run(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let (result, slack) = if data.len().is_multiple_of(2) {
        (read_request(&mut cursor), 0)
    } else {
        // The reader may buffer up to its capacity past the request.
        let capacity = 1 + data.len() % 64;
        let mut reader = BufReader::with_capacity(capacity, &mut cursor);
        (read_request(&mut reader), capacity as u64)
    };
    assert!(
        cursor.position() <= MAX_CONSUMED + slack,
        "read {} bytes",
        cursor.position()
    );
    match result {
        Ok(request) => check_request(&request),
        Err(err) => {
            let status = err.status();
            assert!((400..600).contains(&status), "{err}: status {status}");
            let mut response = Vec::new();
            write_json(&mut response, status, &err.to_json()).unwrap();
            assert!(response.starts_with(b"HTTP/1.1 "));
        }
    }
}

fn check_request(request: &Request) {
    let bytes = request.to_bytes();
    let mut cursor = Cursor::new(&bytes[..]);
    let again = read_request(&mut cursor).expect("a parsed request must parse again");
    assert_eq!(&again, request);
    assert_eq!(cursor.position(), bytes.len() as u64);
    assert!(request.target.starts_with('/'));
    assert!(request.body.len() <= MAX_BODY);
    let _ = request.header("content-length");
    // What `VmRouter::route` does before it needs a VM.
    if let Some(endpoint) = Endpoint::from_path(&request.target) {
        assert_eq!(endpoint.path(), request.target);
        let _ = endpoint.method() == request.method;
    }
    if !request.body.iter().all(u8::is_ascii_whitespace) {
        let _ = serde_json::from_slice::<serde_json::Value>(&request.body);
    }
}
