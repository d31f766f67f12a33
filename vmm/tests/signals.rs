//! SIGTERM and SIGINT stop the `vmm` binary with status 0 whenever they arrive, even while the
//! guest resets over and over: a signal that lands together with a reset must not be lost to
//! the reboot. The guest is one PSCI SYSTEM_RESET call, so vmm spends its time rebooting and
//! the signals hit every part of a boot. Runs in the arm64 testbed, where `VMM_BIN` is set.
#![cfg(target_arch = "aarch64")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arch_aarch64::a64::Assembler;
use arch_aarch64::psci::SYSTEM_RESET;

/// Signals sent, each to a new vmm after a different number of boots.
const ROUNDS: u32 = 40;
/// Far longer than a boot of this guest or a clean stop takes, even in the emulated host.
const HANG: Duration = Duration::from_secs(60);

fn vmm_binary() -> PathBuf {
    std::env::var_os("VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vmm")))
}

/// An arm64 Image whose first instruction branches over the header to a SYSTEM_RESET call.
fn resetting_image() -> Vec<u8> {
    let mut code = Assembler::new();
    code.psci_call(SYSTEM_RESET, &[]);
    let mut bytes = vec![0u8; 0x1000];
    bytes[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +64
    bytes[16..24].copy_from_slice(&0x1_0000u64.to_le_bytes()); // image_size
    bytes[56..60].copy_from_slice(b"ARM\x64");
    let code = code.to_bytes();
    bytes[64..64 + code.len()].copy_from_slice(&code);
    bytes
}

/// Reads the child's stderr lines on a thread, so that waits can time out.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Waits for a line containing `needle`; returns every line read so far.
fn wait_line(lines: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + HANG;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return true;
        }
    }
    false
}

#[test]
fn a_stop_signal_ends_vmm_even_while_the_guest_keeps_resetting() {
    let dir = std::env::temp_dir().join(format!("vmm-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("Image");
    std::fs::write(&kernel, resetting_image()).unwrap();

    for round in 0..ROUNDS {
        let (signal, name) = if round % 2 == 0 {
            (libc::SIGTERM, "SIGTERM")
        } else {
            (libc::SIGINT, "SIGINT")
        };
        let mut child = Command::new(vmm_binary())
            .arg("--kernel")
            .arg(&kernel)
            .args(["--memory", "64", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm");
        let lines = stderr_lines(&mut child);
        let mut seen = Vec::new();
        let boot = 2 + round % 4;
        assert!(
            wait_line(&lines, &format!("boot {boot}"), &mut seen),
            "round {round}: no boot {boot}: {seen:#?}"
        );
        // A varying delay moves the signal around inside a boot.
        std::thread::sleep(Duration::from_micros(u64::from(round) * 250));
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) only sends a signal to the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);

        let deadline = Instant::now() + HANG;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("round {round}: vmm ignored {name} and went on rebooting");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        seen.extend(lines.iter());
        assert_eq!(status.code(), Some(0), "round {round} ({name}): {seen:#?}");
        let logged = format!("Terminating on signal {signal}");
        assert!(
            seen.iter().any(|line| line.contains(&logged)),
            "round {round}: no {logged:?} in {seen:#?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
