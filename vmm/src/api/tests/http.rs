//! Targeted tests of the parser's limits and statuses, and of the writers.

use std::io::{self, BufReader, Cursor, Read};

use serde_json::json;

use crate::api::http::{
    HttpError, MAX_BODY, MAX_HEADERS, MAX_HEADERS_SIZE, MAX_REQUEST_LINE, NdjsonWriter, Version,
    read_request, write_json, write_json_head,
};

fn parse(input: &[u8]) -> Result<crate::api::Request, HttpError> {
    read_request(&mut Cursor::new(input))
}

fn status(input: &[u8]) -> u16 {
    match parse(input) {
        Ok(request) => panic!("parsed {request:?}"),
        Err(err) => err.status(),
    }
}

fn with_headers(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\n{headers}\r\n").into_bytes()
}

#[test]
fn api_parses_requests() {
    let request =
        parse(b"PUT /api/v1/vm.pause?x=1 HTTP/1.1\r\nHost: x\r\nContent-length:  2 \r\n\r\n{}")
            .unwrap();
    assert_eq!(request.method, "PUT");
    assert_eq!(request.target, "/api/v1/vm.pause?x=1");
    assert_eq!(request.version, Version::Http11);
    assert_eq!(request.header("CONTENT-LENGTH"), Some("2"));
    assert_eq!(request.body, b"{}");
    let request = parse(b"FOO / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        (request.method.as_str(), request.version),
        ("FOO", Version::Http10)
    );
    assert!(request.headers.is_empty() && request.body.is_empty());
}

#[test]
fn api_request_line_limit() {
    let line = |len: usize| format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(len - 14)).into_bytes();
    assert_eq!(
        parse(&line(MAX_REQUEST_LINE)).unwrap().target.len(),
        MAX_REQUEST_LINE - 13
    );
    assert_eq!(status(&line(MAX_REQUEST_LINE + 1)), 414);
    assert_eq!(status(&vec![b'G'; 1 << 20]), 414);
}

#[test]
fn api_header_limits() {
    let many = |n: usize| (0..n).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
    assert_eq!(
        parse(&with_headers(&many(MAX_HEADERS)))
            .unwrap()
            .headers
            .len(),
        MAX_HEADERS
    );
    assert!(matches!(
        parse(&with_headers(&many(MAX_HEADERS + 1))),
        Err(HttpError::TooManyHeaders)
    ));
    // One header line of exactly the budget (CRLF included) fits, one byte more does not.
    let big = |len: usize| format!("X: {}\r\n", "v".repeat(len - 5));
    assert!(parse(&with_headers(&big(MAX_HEADERS_SIZE))).is_ok());
    assert!(matches!(
        parse(&with_headers(&big(MAX_HEADERS_SIZE + 1))),
        Err(HttpError::HeadersTooLarge)
    ));
    let split = format!(
        "{}{}",
        big(MAX_HEADERS_SIZE / 2),
        big(MAX_HEADERS_SIZE / 2 + 1)
    );
    assert_eq!(status(&with_headers(&split)), 431);
}

#[test]
fn api_body_limits() {
    let body = |len: usize| {
        let mut r = format!("POST / HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        r.resize(r.len() + len, b'x');
        r
    };
    assert_eq!(parse(&body(MAX_BODY)).unwrap().body.len(), MAX_BODY);
    assert_eq!(status(&body(MAX_BODY + 1)), 413);
    assert_eq!(
        status(&with_headers(
            "Content-Length: 99999999999999999999999999\r\n"
        )),
        413
    );
    assert_eq!(
        status(&with_headers("Content-Length: 18446744073709551615\r\n")),
        413
    );
    assert!(matches!(parse(&body(10)[..45]), Err(HttpError::Incomplete)));
}

#[test]
fn api_content_length_and_transfer_encoding() {
    for bad in ["abc", "+5", "-1", "5, 5", "", "0x10", "1 2"] {
        let input = with_headers(&format!("Content-Length: {bad}\r\n"));
        assert!(
            matches!(parse(&input), Err(HttpError::ContentLength)),
            "{bad:?}"
        );
    }
    let dup = with_headers("Content-Length: 0\r\ncontent-length: 0\r\n");
    assert!(matches!(
        parse(&dup),
        Err(HttpError::DuplicateContentLength)
    ));
    assert_eq!(status(&with_headers("Transfer-Encoding: chunked\r\n")), 411);
    assert_eq!(
        status(&with_headers(
            "Content-Length: 0\r\nTransfer-Encoding: identity\r\n"
        )),
        411
    );
}

#[test]
fn api_request_line_errors() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.2\r\n\r\n", 505),
        (b"GET / HTXP/1.1\r\n\r\n", 400),
        (b"G@T / HTTP/1.1\r\n\r\n", 400),
        (b"GET foo HTTP/1.1\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\n\r\n", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHo\rst: x\r\n\r\n", 400),
    ];
    for (input, expected) in cases {
        assert_eq!(
            status(input),
            *expected,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn api_header_errors() {
    for bad in [
        "NoColon",
        "Host : x",
        " Folded: x",
        ": empty",
        "X: a\x01b",
        "X: \x7f",
        "X\u{e9}: v",
    ] {
        assert!(
            matches!(
                parse(&with_headers(&format!("{bad}\r\n"))),
                Err(HttpError::Header)
            ),
            "{bad:?}"
        );
    }
    let request = parse(&with_headers("X:\t a\tb \t\r\nY:\r\n")).unwrap();
    assert_eq!(
        request.headers,
        [("X".into(), "a\tb".into()), ("Y".into(), String::new())]
    );
}

#[test]
fn api_eof_and_timeouts() {
    assert!(matches!(parse(b""), Err(HttpError::Closed)));
    assert!(matches!(parse(b"GET / HT"), Err(HttpError::Incomplete)));
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
        Err(HttpError::Incomplete)
    ));
    struct Stalled;
    impl Read for Stalled {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
    let err = read_request(&mut BufReader::new(Stalled)).unwrap_err();
    assert_eq!(
        (err.status(), err.to_json()),
        (408, json!({ "error": "Request timeout" }))
    );
}

#[test]
fn api_error_bodies() {
    assert_eq!(
        HttpError::BodyTooLarge.to_json(),
        json!({ "error": "Request body too large" })
    );
    assert_eq!(HttpError::Version.to_string(), "HTTP version not supported");
}

#[test]
fn api_round_trips() {
    let input = b"PATCH /x HTTP/1.0\r\nA: 1\r\nContent-Length: 3\r\nB:  two words \r\n\r\nabc";
    let request = parse(input).unwrap();
    assert_eq!(parse(&request.to_bytes()).unwrap(), request);
}

#[test]
fn api_writes_json() {
    let mut out = Vec::new();
    write_json(&mut out, 404, &json!({ "error": "Not found" })).unwrap();
    let expected = "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
        Content-Length: 21\r\nConnection: close\r\n\r\n{\"error\":\"Not found\"}";
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    let mut out = Vec::new();
    write_json_head(&mut out, 200, &json!({ "error": "Not found" })).unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .ends_with("Content-Length: 21\r\nConnection: close\r\n\r\n")
    );
}

#[test]
fn api_writes_no_content() {
    let mut out = Vec::new();
    write_json(&mut out, 204, &serde_json::Value::Null).unwrap();
    assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
}

#[test]
fn api_writes_ndjson() {
    let mut writer = NdjsonWriter::start(Vec::new(), Version::Http11).unwrap();
    writer.write_line(&json!({ "a": 1 })).unwrap();
    let out = String::from_utf8(writer.finish().unwrap()).unwrap();
    let expected = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\n{\"a\":1}\n\r\n0\r\n\r\n";
    assert_eq!(out, expected);
    let mut writer = NdjsonWriter::start(Vec::new(), Version::Http10).unwrap();
    writer.write_line(&json!(1)).unwrap();
    let out = String::from_utf8(writer.finish().unwrap()).unwrap();
    assert!(out.ends_with("Connection: close\r\n\r\n1\n") && !out.contains("chunked"));
}
