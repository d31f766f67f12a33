//! A Linux guest with a virtio-vsock device (Firecracker's hybrid vsock on a Unix socket),
//! across suspend-to-RAM: a host program runs commands in the guest through `guest-agent`'s
//! vsock agent, one at a time and 16 at once, before and after 5 suspend cycles; the guest
//! reaches a host program listening on `<socket>_PORT`, and is refused where nobody listens;
//! a stream open across a suspend is closed (Linux resets its connected vsock sockets when its
//! virtio-vsock device is frozen) while the listening socket keeps working.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`,
//! `VMM_TEST_ROOTFS`, whose init understands `vmmtest=vsock` and has `guest-agent`).
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm::VsockConfig;

use common::guest::{self, Guest, field};

const AGENT_PORT: u32 = 1234;

/// Runs `command` in the guest through its agent, via the VMM's hybrid vsock socket.
fn run_in_guest(socket: &Path, command: &str) -> guest_agent::CommandOutput {
    let stream = guest_agent::connect_hybrid(socket, AGENT_PORT, Duration::from_secs(60)).unwrap();
    guest_agent::run_command(stream, command).unwrap()
}

/// One command, then 16 at once, each with about 100 KiB of output (more than one credit
/// window of a small socket buffer), checked exactly.
fn agent_works(socket: &Path, when: &str) {
    let output = run_in_guest(socket, "echo $((6 * 7)); exit 3");
    assert_eq!(
        (output.code, output.output.as_slice()),
        (3, &b"42\n"[..]),
        "{when}"
    );
    let expected: String = (1..=20_000).map(|n| format!("{n}\n")).collect();
    let workers: Vec<_> = (0..16)
        .map(|index| {
            let socket = socket.to_owned();
            std::thread::spawn(move || run_in_guest(&socket, &format!("echo {index}; seq 1 20000")))
        })
        .collect();
    for (index, worker) in workers.into_iter().enumerate() {
        let output = worker.join().unwrap();
        assert_eq!(output.code, 0, "{when}");
        let text = String::from_utf8(output.output).unwrap();
        assert_eq!(
            text,
            format!("{index}\n{expected}"),
            "{when}: connection {index}"
        );
    }
    println!("{when}: 1 + 16 concurrent agent commands ok");
}

#[test]
fn a_host_program_drives_a_guest_agent_over_vsock_across_five_suspends() {
    test_utils::require_kvm!();
    let scratch = guest::scratch("linux-vsock-");
    let socket = scratch.as_path().join("vm.vsock");
    let mut config = guest::config(&scratch, "vsock", "cycles=5 wake=3 retry=1", 2, true);
    config.vsock = Some(VsockConfig {
        cid: 3,
        socket: socket.clone(),
    });
    let guest = Guest::start(config, scratch);
    guest.wait_console("@@guest agent-listening", Duration::from_secs(120));
    agent_works(&socket, "before suspending");

    // The guest reaches a host program listening on `<socket>_5000`.
    let host_socket = format!("{}_5000", socket.display());
    let listener = UnixListener::bind(&host_socket).unwrap();
    let answer = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(b"world\n").unwrap();
        line
    });
    let output = run_in_guest(&socket, "guest-agent vsock-line 5000 hello");
    assert_eq!(answer.join().unwrap(), "hello\n");
    assert_eq!(
        (output.code, output.output.as_slice()),
        (0, &b"world\n"[..])
    );
    let output = run_in_guest(&socket, "guest-agent vsock-line 5001 nobody");
    assert_ne!(
        output.code, 0,
        "a connection to a port nobody listens on must fail"
    );

    // A stream left open across the suspends (an idle agent connection).
    let mut idle =
        guest_agent::connect_hybrid(&socket, AGENT_PORT, Duration::from_secs(300)).unwrap();
    let output = run_in_guest(&socket, "touch /tmp/go-suspend");
    assert_eq!(output.code, 0);
    let done = guest.wait_console("@@guest cycles-done", Duration::from_secs(400));
    assert_eq!(field(&done, "good"), Some("5"), "{done}");
    let mut byte = [0u8];
    match idle.read(&mut byte) {
        Ok(0) => println!("the stream open across the suspends was closed (EOF)"),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
            println!("the stream open across the suspends was reset")
        }
        other => panic!("a stream open across a suspend must be closed: {other:?}"),
    }

    agent_works(&socket, "after 5 suspends");
    let started = Instant::now();
    let _ = run_in_guest(&socket, "touch /tmp/go-poweroff");
    guest.powers_off();
    assert!(!socket.exists(), "vmm left its vsock socket behind");
    println!(
        "powered off {:.1} s after the request",
        started.elapsed().as_secs_f64()
    );
}
