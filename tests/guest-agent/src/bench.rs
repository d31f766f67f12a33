//! Network benchmarks for `scripts/bench.sh`: the host side serves, the guest side measures and
//! prints one `@@bench net ...` line per measurement.
//!
//! * `serve-bench ADDR [UNIX_PATH]` (host): on ADDR port [`SINK_PORT`] it reads and discards
//!   each connection until EOF; on [`SOURCE_PORT`] it writes to each connection until the
//!   peer closes; on [`ECHO_PORT`] (and at UNIX_PATH, for vsock) it echoes.
//! * `tcp-send ADDR SECONDS`, `tcp-recv ADDR SECONDS` (guest): one stream at full speed for
//!   SECONDS; the rate counts only bytes the other end took (`tcp-send` waits for the sink to
//!   close after its EOF).
//! * `rr ADDR COUNT`, `vsock-rr PORT COUNT` (guest): COUNT one-byte round trips, one at a time.
//!
//! The guest's clients keep trying to connect for [`CONNECT_PATIENCE`] (the host starts its
//! server once the guest's network is up), and a measurement that fails prints
//! `@@bench net test=NAME rc=1 error=...` instead of its figures.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Port of the host's discard server.
pub const SINK_PORT: u16 = 5201;
/// Port of the host's endless source.
pub const SOURCE_PORT: u16 = 5202;
/// Port of the host's TCP echo server.
pub const ECHO_PORT: u16 = 5203;
/// How long the guest's clients keep trying to connect.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

/// Calls `connect` until it succeeds or [`CONNECT_PATIENCE`] has passed (then returns the
/// last error), 100 ms apart.
pub fn retrying<T>(mut connect: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let started = Instant::now();
    loop {
        match connect() {
            Ok(connected) => return Ok(connected),
            Err(err) if started.elapsed() >= CONNECT_PATIENCE => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A TCP connection to `address`:`port`, retried; no attempt outlasts the patience left.
fn tcp_connect(address: &str, port: u16) -> std::io::Result<TcpStream> {
    let started = Instant::now();
    retrying(|| {
        let target = (address, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
        let left = CONNECT_PATIENCE.saturating_sub(started.elapsed());
        TcpStream::connect_timeout(&target, left.max(Duration::from_secs(1)))
    })
}

/// Passes `result` on; a failure of measurement `test` is also printed as its
/// `@@bench net test=TEST rc=1 error=...` line, the error last.
pub fn reported(test: &str, result: std::io::Result<()>) -> std::io::Result<()> {
    if let Err(err) = &result {
        println!("@@bench net test={test} rc=1 error={err}");
    }
    result
}

/// Serves forever: a thread per listener and per connection.
pub fn serve(address: &str, unix_path: Option<&str>) -> std::io::Result<()> {
    let sink = TcpListener::bind((address, SINK_PORT))?;
    let source = TcpListener::bind((address, SOURCE_PORT))?;
    let echo = TcpListener::bind((address, ECHO_PORT))?;
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || echo_stream(stream));
            }
        });
    }
    std::thread::spawn(move || {
        for stream in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = vec![0u8; CHUNK];
                while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
            });
        }
    });
    std::thread::spawn(move || {
        for stream in source.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let buffer = vec![0x5au8; CHUNK];
                while stream.write_all(&buffer).is_ok() {}
            });
        }
    });
    println!("@@bench net-server ready address={address}");
    for stream in echo.incoming().flatten() {
        let _ = stream.set_nodelay(true);
        std::thread::spawn(move || echo_stream(stream));
    }
    Ok(())
}

fn echo_stream(mut stream: impl Read + Write) {
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
            return;
        }
    }
}

fn report(what: &str, bytes: u64, elapsed: Duration) {
    let mbps = bytes as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "@@bench net test={what} rc=0 bytes={bytes} ns={} mbps={mbps:.1}",
        elapsed.as_nanos()
    );
}

/// Sends to the host's sink for `seconds`.
pub fn tcp_send(address: &str, seconds: f64) -> std::io::Result<()> {
    let mut stream = tcp_connect(address, SINK_PORT)?;
    let buffer = vec![0xa5u8; CHUNK];
    let (started, span) = (Instant::now(), Duration::from_secs_f64(seconds));
    let mut bytes = 0u64;
    while started.elapsed() < span {
        stream.write_all(&buffer)?;
        bytes += CHUNK as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    // The sink closes once it read everything: only then have the bytes arrived.
    let mut rest = [0u8; 16];
    while stream.read(&mut rest)? > 0 {}
    report("tcp-guest-to-host", bytes, started.elapsed());
    Ok(())
}

/// Receives from the host's source for `seconds`.
pub fn tcp_recv(address: &str, seconds: f64) -> std::io::Result<()> {
    let mut stream = tcp_connect(address, SOURCE_PORT)?;
    let mut buffer = vec![0u8; CHUNK];
    let (started, span) = (Instant::now(), Duration::from_secs_f64(seconds));
    let mut bytes = 0u64;
    while started.elapsed() < span {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes += n as u64;
    }
    let elapsed = started.elapsed();
    drop(stream);
    report("tcp-host-to-guest", bytes, elapsed);
    Ok(())
}

/// `count` one-byte round trips over `stream`; prints their mean and percentiles.
pub fn round_trips(what: &str, mut stream: impl Read + Write, count: usize) -> std::io::Result<()> {
    let mut times = Vec::with_capacity(count);
    let mut byte = [0u8];
    for index in 0..count {
        let started = Instant::now();
        stream.write_all(&[index as u8])?;
        stream.read_exact(&mut byte)?;
        times.push(started.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    let mean = times.iter().sum::<u64>() / count.max(1) as u64;
    let at = |q: f64| times[((count as f64 - 1.0) * q).round() as usize] / 1000;
    println!(
        "@@bench net test={what} rc=0 count={count} mean_us={} p50_us={} p99_us={}",
        mean / 1000,
        at(0.5),
        at(0.99)
    );
    Ok(())
}

/// TCP round trips to the host's echo server.
pub fn rr(address: &str, count: usize) -> std::io::Result<()> {
    let stream = tcp_connect(address, ECHO_PORT)?;
    stream.set_nodelay(true)?;
    round_trips("tcp-rr", stream, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrying_keeps_trying_until_a_connection_succeeds() {
        let mut attempts = 0;
        let connected = retrying(|| {
            attempts += 1;
            if attempts < 3 {
                Err(std::io::ErrorKind::ConnectionRefused.into())
            } else {
                Ok(attempts)
            }
        });
        assert_eq!(connected.unwrap(), 3);
    }
}
