//! The control API end to end: the real `vmm` binary with `--api-socket`, a Linux guest, and
//! the API client (and `vmm ctl`) driving it.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`); the
//! testbed sets both, and `VMM_BIN`.
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::api::ApiClient;
use vmm::api::server::MAX_EVENT_STREAMS;

use common::process::{Vmm, follow_events, guest_args, wait_event};
use common::{guest_file, vmm_binary};

/// A `vmm --api-socket` process running the testbed guest in `mode`.
fn start(name: &str, mode: &str, cpus: u32) -> Vmm {
    let cmdline = format!("console=ttyS0 quiet panic=-1 vmmtest={mode}");
    Vmm::start(&format!("api-{name}"), &guest_args(&cmdline, cpus, 256))
}

/// Sends raw bytes and returns the status code of the reply (0 if the server closed without
/// one). A server that neither answers nor closes within a minute fails the test.
fn raw(socket: &Path, request: &[u8]) -> u16 {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // The server may answer and close before it has read everything (413, say).
    let _ = stream.write_all(request);
    let mut reply = String::new();
    if let Err(err) = stream.read_to_string(&mut reply) {
        assert!(
            !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "no reply to {:?}",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
    }
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// How many connection threads the `vmm` process has.
fn connection_threads(vmm: &Vmm) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vmm.child.id())).unwrap();
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "api-conn")
        })
        .count()
}

/// Waits until the `vmm` process has `count` connection threads; the server ends a stream whose
/// client hung up within a second.
fn wait_connection_threads(vmm: &Vmm, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while connection_threads(vmm) != count {
        assert!(
            Instant::now() < deadline,
            "{} connection threads, not {count}",
            connection_threads(vmm)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn api_sees_a_guest_suspend_and_wakes_it_with_the_gpio_button() {
    test_utils::require_kvm!();
    let mut vmm = start("wake", "suspend-wait", 2);
    let mode = std::fs::metadata(&vmm.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let events = follow_events(&vmm.socket);

    wait_event(&events, "suspended", Duration::from_secs(120));
    let (status, info) = vmm.call("GET", "vm.info");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "suspended", "{info}");
    assert_eq!(info["vcpus"][0]["power"], "suspended", "{info}");
    assert_eq!(info["vcpus"][1]["power"], "off", "{info}");
    assert_eq!(info["suspend_count"], 1, "{info}");
    // virtio-rng (on by default) was set up at boot and reset by the guest before it slept.
    let rng = &info["devices"][0];
    assert_eq!(rng["kind"], "rng", "{info}");
    assert!(rng["activations"].as_u64() >= Some(1), "{info}");
    assert_eq!(rng["resets"], rng["activations"], "{info}");
    assert_eq!(rng["features"], 1u64 << 32, "VERSION_1 only: {info}");

    let (status, reply) = vmm.call("PUT", "vm.wakeup");
    assert_eq!(status, 200, "{reply}");
    let resumed = wait_event(&events, "resumed", Duration::from_secs(30));
    assert_eq!(resumed["source"], "gpio", "{resumed}");
    let line = vmm.wait_console("@@guest resumed", Duration::from_secs(60));
    assert!(
        line.contains("rc=0") && line.contains("online=0-1"),
        "{line}"
    );
    assert_eq!(vmm.wait_exit(Duration::from_secs(60)), 0);
    assert!(!vmm.socket.exists(), "the socket outlived vmm");
}

/// The guest's (tick number, date) lines so far.
fn ticks(vmm: &Vmm) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .and_then(|value| value.parse().ok())
            .unwrap_or_default()
    };
    vmm.console_lines("@@guest tick")
        .iter()
        .map(|line| (field(line, "n="), field(line, "date=")))
        .collect()
}

#[test]
fn pause_and_resume_keep_the_guest_clock_and_the_power_button_powers_it_off() {
    test_utils::require_kvm!();
    let mut vmm = start("pause", "ticker", 1);
    vmm.wait_console("@@guest tick n=3 ", Duration::from_secs(120));

    assert_eq!(vmm.call("PUT", "vm.pause").0, 200);
    assert_eq!(vmm.call("GET", "vm.info").1["state"], "paused");
    // A line the guest printed just before the pause may still be on its way to this test.
    std::thread::sleep(Duration::from_secs(1));
    let before = ticks(&vmm);
    std::thread::sleep(Duration::from_secs(3));
    let during = ticks(&vmm);
    assert_eq!(before, during, "the guest ran while paused");
    assert_eq!(vmm.call("PUT", "vm.pause").0, 409, "a second pause");

    assert_eq!(vmm.call("PUT", "vm.resume").0, 200);
    assert_eq!(vmm.call("PUT", "vm.resume").0, 409, "resume when running");
    let (last_n, last_date) = *during.last().unwrap();
    vmm.wait_console(
        &format!("@@guest tick n={} ", last_n + 2),
        Duration::from_secs(30),
    );
    let after = ticks(&vmm);
    let (_, next_date) = after
        .iter()
        .find(|(n, _)| *n == last_n + 1)
        .copied()
        .unwrap();
    println!("guest date across a 3 s pause: {last_date} -> {next_date}");
    assert!(
        next_date >= last_date + 3,
        "the guest clock stopped: {last_date} -> {next_date}"
    );

    assert_eq!(vmm.call("PUT", "vm.power-button").0, 200);
    vmm.wait_console("@@guest power-key pressed", Duration::from_secs(30));
    assert_eq!(vmm.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn bad_requests_get_clear_errors_and_the_guest_is_unaffected() {
    test_utils::require_kvm!();
    let mut vmm = start("bad", "ticker", 1);
    vmm.wait_console("@@guest tick n=2 ", Duration::from_secs(120));
    let socket = vmm.socket.clone();

    let put = |path: &str, body: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    assert_eq!(
        raw(&socket, put("/api/v1/vm.pause", "{not json").as_bytes()),
        400
    );
    assert_eq!(
        raw(
            &socket,
            b"GET /api/v1/vm.nothing HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
        404
    );
    assert_eq!(
        raw(&socket, b"GET /api/v1/vm.pause HTTP/1.1\r\nHost: x\r\n\r\n"),
        405
    );
    assert_eq!(
        raw(
            &socket,
            put("/api/v1/vm.pause", &"x".repeat(80 * 1024)).as_bytes()
        ),
        413
    );
    assert_eq!(raw(&socket, b"\x16\x03\x01 garbage\r\n\r\n"), 400);
    assert_eq!(vmm.call("PUT", "vm.resume").0, 409, "resume while running");

    // A client that connects and never sends is told 408 after the server's read timeout.
    assert_eq!(raw(&socket, b""), 408, "silent client");

    // Clients that hang up in the middle of the event stream, as many at once as the server
    // takes: one more stream is refused, while requests keep their own slots; each connection
    // ends with its client, so none is left holding a slot.
    wait_connection_threads(&vmm, 0);
    let events = b"GET /api/v1/vm.events HTTP/1.1\r\nHost: x\r\n\r\n";
    let streams: Vec<UnixStream> = (0..MAX_EVENT_STREAMS)
        .map(|_| {
            let mut stream = UnixStream::connect(&socket).unwrap();
            stream.write_all(events).unwrap();
            let mut status = [0u8; 12];
            stream.read_exact(&mut status).unwrap();
            assert_eq!(&status, b"HTTP/1.1 200", "an event stream");
            stream
        })
        .collect();
    assert_eq!(connection_threads(&vmm), MAX_EVENT_STREAMS);
    assert_eq!(
        raw(&socket, events),
        503,
        "an event stream beyond the limit"
    );
    let info = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        raw(&socket, info),
        200,
        "a request while the streams are full"
    );
    drop(streams);
    wait_connection_threads(&vmm, 0);

    // The guest kept running, and the API still answers, also through `vmm ctl`.
    let (n, _) = *ticks(&vmm).last().unwrap();
    vmm.wait_console(
        &format!("@@guest tick n={} ", n + 2),
        Duration::from_secs(30),
    );
    let ctl = Command::new(vmm_binary())
        .args(["ctl", "--api-socket"])
        .arg(&socket)
        .arg("info")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ctl.stdout);
    assert!(
        ctl.status.success() && text.contains("state:        running"),
        "{text}"
    );
    let ctl = Command::new(vmm_binary())
        .args(["ctl", "--api-socket"])
        .arg(&socket)
        .args(["--json", "shutdown"])
        .output()
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert_eq!(vmm.wait_exit(Duration::from_secs(30)), 0);
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    test_utils::require_kvm!();
    let dir = std::env::temp_dir().join(format!("vmm-api-{}-stale", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());

    let mut first = start("live", "ticker", 1);
    // Reuse the stale path for a second VMM: it must take it over.
    let mut second = Command::new(vmm_binary())
        .arg("--kernel")
        .arg(guest_file("VMM_TEST_KERNEL"))
        .args(["--api-socket"])
        .arg(&stale)
        .args([
            "--cmdline",
            "console=ttyS0 quiet panic=-1 vmmtest=ticker",
            "--memory",
            "128",
        ])
        .arg("--initramfs")
        .arg(guest_file("VMM_TEST_INITRD"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ApiClient::new(&stale)
        .request("GET", "/api/v1/vm.info", None)
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the stale socket was not taken over"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = second.kill();
    let _ = second.wait();

    // The first VMM's socket is live: a third VMM must refuse it and exit 1.
    let refused = Command::new(vmm_binary())
        .arg("--kernel")
        .arg(guest_file("VMM_TEST_KERNEL"))
        .arg("--api-socket")
        .arg(&first.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&first.socket.display().to_string()),
        "{stderr}"
    );
    assert_eq!(
        first.call("GET", "vm.info").0,
        200,
        "the live VMM was disturbed"
    );
    assert_eq!(first.call("PUT", "vm.shutdown").0, 200);
    assert_eq!(first.wait_exit(Duration::from_secs(30)), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
