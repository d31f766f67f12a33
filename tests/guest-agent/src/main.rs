//! `guest-agent`: the nested guest's end of the testbed's network and vsock checks.
//!
//! ```text
//! guest-agent agent PORT            serve commands on vsock port PORT, one thread each
//! guest-agent exchange ADDR:PORT    connect over TCP and answer exchange rounds until EOF
//! guest-agent udp-sink PORT FILE    count UDP datagrams to PORT, the count kept in FILE
//! guest-agent vsock-line PORT TEXT  send TEXT and a newline to the host's vsock PORT (CID 2),
//!                                   print the line it answers
//! guest-agent serve-bench ADDR [UNIX_PATH] | tcp-send ADDR SECONDS | tcp-recv ADDR SECONDS
//!             | rr ADDR COUNT | vsock-rr PORT COUNT      network benchmarks (see bench.rs)
//! ```
//!
//! `exchange` prints `@@guest exchange round=R ok=0|1 bytes=N` after each round and creates
//! `/tmp/exchange-round-R`, so the guest's script can wait for a round before it suspends.
//! Exit status: 0 success, 1 an error, 2 bad usage.

mod bench;

use std::net::{TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["agent", port] => match port.parse() {
            Ok(port) => agent(port),
            Err(_) => return usage(),
        },
        ["exchange", address] => exchange(address),
        ["udp-sink", port, file] => match port.parse() {
            Ok(port) => udp_sink(port, file),
            Err(_) => return usage(),
        },
        ["vsock-line", port, text] => match port.parse() {
            Ok(port) => vsock_line(port, text),
            Err(_) => return usage(),
        },
        ["serve-bench", address] => bench::serve(address, None),
        ["serve-bench", address, path] => bench::serve(address, Some(path)),
        ["tcp-send", address, seconds] => match seconds.parse() {
            Ok(seconds) => bench::reported("tcp-guest-to-host", bench::tcp_send(address, seconds)),
            Err(_) => return usage(),
        },
        ["tcp-recv", address, seconds] => match seconds.parse() {
            Ok(seconds) => bench::reported("tcp-host-to-guest", bench::tcp_recv(address, seconds)),
            Err(_) => return usage(),
        },
        ["rr", address, count] => match count.parse() {
            Ok(count) => bench::reported("tcp-rr", bench::rr(address, count)),
            Err(_) => return usage(),
        },
        ["vsock-rr", port, count] => match (port.parse(), count.parse()) {
            (Ok(port), Ok(count)) => bench::reported(
                "vsock-rr",
                bench::retrying(|| vsock_connect(port))
                    .and_then(|stream| bench::round_trips("vsock-rr", stream, count)),
            ),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("guest-agent: {err}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: guest-agent agent PORT | exchange ADDR:PORT | udp-sink PORT FILE | vsock-line PORT TEXT \
         | serve-bench ADDR [UNIX_PATH] | tcp-send ADDR SECONDS | tcp-recv ADDR SECONDS \
         | rr ADDR COUNT | vsock-rr PORT COUNT"
    );
    ExitCode::from(2)
}

/// Listens on vsock `port` (any CID) and serves each connection on a thread of its own.
fn agent(port: u32) -> std::io::Result<()> {
    let listener = vsock_listen(port)?;
    println!("@@guest agent-listening port={port}");
    loop {
        // SAFETY: accept4 on our listening socket; null address pointers are allowed.
        let fd = unsafe {
            libc::accept4(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // A transport reset (the guest suspended) may fail an accept: keep listening.
            eprintln!("guest-agent: accept: {err}");
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let mut stream = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        std::thread::spawn(move || {
            if let Err(err) = guest_agent::serve_command(&mut stream) {
                eprintln!("guest-agent: connection: {err}");
            }
        });
    }
}

/// A vsock stream socket and the address `cid:port`.
fn vsock_socket(cid: u32, port: u32) -> std::io::Result<(OwnedFd, libc::sockaddr_vm)> {
    // SAFETY: socket() with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid start.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_port = port;
    address.svm_cid = cid;
    // SAFETY: a new descriptor that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, address))
}

const VSOCK_ADDRESS_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as _;

fn vsock_listen(port: u32) -> std::io::Result<OwnedFd> {
    let (socket, address) = vsock_socket(libc::VMADDR_CID_ANY, port)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: binds our socket to an address of the size given.
    let bound = unsafe { libc::bind(fd, std::ptr::from_ref(&address).cast(), VSOCK_ADDRESS_LEN) };
    // SAFETY: listen on our bound socket.
    if bound < 0 || unsafe { libc::listen(fd, 64) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// A stream to the host's vsock `port`.
fn vsock_connect(port: u32) -> std::io::Result<std::fs::File> {
    let (socket, address) = vsock_socket(libc::VMADDR_CID_HOST, port)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: connects our socket to an address of the size given.
    if unsafe { libc::connect(fd, std::ptr::from_ref(&address).cast(), VSOCK_ADDRESS_LEN) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(socket))
}

/// Sends `text` to the host's vsock `port` and prints the line that comes back.
fn vsock_line(port: u32, text: &str) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let mut stream = vsock_connect(port)?;
    stream.write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    print!("{line}");
    Ok(())
}

/// Connects to `address` and answers rounds until the host closes the connection.
fn exchange(address: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(address)?;
    println!("@@guest exchange-connected to={address}");
    while let Some((round, bytes, ok)) = guest_agent::exchange_as_guest(&mut stream)? {
        // The round is done for the guest's script (which suspends next) only once the host
        // acknowledged every byte: Debian 6.1's virtio_net can wake its transmit queue from a
        // completion that lands between netif_device_detach() and napi_disable() in its freeze,
        // and a retransmission then runs start_xmit() on deleted queues (docs/networking.md).
        let unsent = wait_until_sent(&stream, std::time::Duration::from_secs(30));
        println!(
            "@@guest exchange round={round} ok={} bytes={bytes} unsent={unsent}",
            u8::from(ok)
        );
        std::fs::write(format!("/tmp/exchange-round-{round}"), b"")?;
    }
    println!("@@guest exchange-closed");
    Ok(())
}

/// Waits up to `limit` for every byte written to `stream` to be acknowledged (SIOCOUTQ, the
/// bytes not yet sent or not yet acknowledged, reaches 0); returns what was left.
fn wait_until_sent(stream: &TcpStream, limit: std::time::Duration) -> i32 {
    let started = std::time::Instant::now();
    loop {
        let mut unsent: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `unsent`.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(stream),
                libc::TIOCOUTQ,
                &mut unsent,
            )
        };
        if rc < 0 || unsent == 0 || started.elapsed() > limit {
            return if rc < 0 { -1 } else { unsent };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Counts datagrams to `port`, writing the count to `file` after each.
fn udp_sink(port: u16, file: &str) -> std::io::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", port))?;
    std::fs::write(file, b"0")?;
    let mut buffer = [0u8; 2048];
    let mut count = 0u64;
    loop {
        socket.recv_from(&mut buffer)?;
        count += 1;
        std::fs::write(file, count.to_string())?;
    }
}
