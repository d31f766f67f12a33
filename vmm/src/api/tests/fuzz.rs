//! A deterministic fuzz test of the request parser (`cargo fuzz` needs nightly): mutations of
//! a corpus of valid and invalid requests must parse to a request that round-trips, or fail
//! with a 4xx/5xx, never panic, and never read past the limits.

use std::io::Cursor;
use std::time::Instant;

use crate::api::http::{MAX_BODY, MAX_HEADERS_SIZE, MAX_REQUEST_LINE, read_request};

const ITERATIONS: usize = 100_000;
/// The most a request can take: the request line, the headers, the blank line and the body.
const MAX_CONSUMED: u64 = (MAX_REQUEST_LINE + 2 + MAX_HEADERS_SIZE + 2 + MAX_BODY) as u64;

const CORPUS: &[&[u8]] = &[
    b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /api/v1/vm.wakeup HTTP/1.0\r\nContent-Length: 13\r\n\r\n{\"at\": 12345}",
    b"GET /api/v1/vm.events HTTP/1.1\r\nX:\t tab \r\n\r\n",
    b"DELETE /x?y=z HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"PATCH / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HEAD / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"\r\n",
];

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"\r\n: \t/\x00\x7f\xff0";
    let at = rng.below(input.len() + 1);
    match rng.below(10) {
        0 if !input.is_empty() => {
            let last = input.len() - 1;
            input[at.min(last)] ^= 1 << rng.below(8);
        }
        1 => input.insert(at, rng.next() as u8),
        2 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
        3 if at < input.len() => {
            input.remove(at);
        }
        4 => input.truncate(at),
        5 => {
            let header: &[u8] = match rng.below(4) {
                0 => b"Content-Length: 5\r\n",
                1 => b"Content-Length: 18446744073709551616\r\n",
                2 => b"Transfer-Encoding: chunked\r\n",
                _ => b"Host: localhost\r\n",
            };
            let line_start = input.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            input.splice(line_start..line_start, header.iter().copied());
        }
        6 => {
            let n = rng.below(16);
            input.splice(at..at, (0..n).map(|_| rng.next() as u8));
        }
        // Repeats a slice so that the limits are reached now and then.
        7 if rng.below(16) == 0 => {
            let (start, len) = (rng.below(input.len()), 1 + rng.below(64));
            let end = (start + len).min(input.len());
            let chunk = input[start..end].to_vec();
            for _ in 0..(MAX_HEADERS_SIZE + MAX_BODY) / chunk.len().max(1) / (1 + rng.below(4)) {
                input.extend_from_slice(&chunk);
            }
        }
        8 => {
            let other = CORPUS[rng.below(CORPUS.len())];
            let from = rng.below(other.len());
            input.splice(at..at, other[from..].iter().copied());
        }
        _ => {
            let n = input.len();
            if n > 1 {
                input.swap(rng.below(n), rng.below(n));
            }
        }
    }
}

#[test]
fn api_fuzz_parser() {
    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut parsed, mut rejected) = (0, 0);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut input = CORPUS[i % CORPUS.len()].to_vec();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input);
        }
        let mut cursor = Cursor::new(&input[..]);
        let result = read_request(&mut cursor);
        assert!(
            cursor.position() <= MAX_CONSUMED,
            "read {} bytes",
            cursor.position()
        );
        match result {
            Ok(request) => {
                parsed += 1;
                let bytes = request.to_bytes();
                let mut cursor = Cursor::new(&bytes[..]);
                assert_eq!(read_request(&mut cursor).unwrap(), request, "{input:?}");
                assert_eq!(cursor.position(), bytes.len() as u64);
            }
            Err(err) => {
                rejected += 1;
                *statuses.entry(err.status()).or_insert(0) += 1;
                assert!((400..600).contains(&err.status()), "{err}: {input:?}");
            }
        }
    }
    eprintln!(
        "{ITERATIONS} iterations in {:?}: {parsed} parsed, rejected {statuses:?}",
        started.elapsed()
    );
    // Every path of the parser must be exercised for the test to mean anything.
    assert!(parsed > ITERATIONS / 20 && rejected > ITERATIONS / 20);
    for status in [400, 411, 413, 414, 431, 505] {
        assert!(
            statuses.contains_key(&status),
            "no {status} in {statuses:?}"
        );
    }
}
