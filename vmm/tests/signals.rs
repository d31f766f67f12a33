//! SIGTERM and SIGINT stop the `vmm` binary with status 0 whenever they arrive: while the
//! guest resets over and over (a signal that lands together with a reset must not be lost to
//! the reboot; the guest is one PSCI SYSTEM_RESET call, so the signals hit every part of a
//! boot), and while it is suspended with nothing to wake it. Runs in the arm64 testbed, where
//! `VMM_BIN` is set.
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arch_aarch64::a64::Assembler;
use arch_aarch64::image::ImageHeader;
use arch_aarch64::layout::RAM_START;
use arch_aarch64::psci::{SYSTEM_RESET, SYSTEM_SUSPEND_64};
use vmm_sys_util::tempdir::TempDir;

use common::{exit_within, vmm_binary};

/// Signals sent, each to a new vmm after a different number of boots.
const ROUNDS: u32 = 40;
/// Far longer than a boot of this guest or a clean stop takes, even in the emulated host.
const HANG: Duration = Duration::from_secs(60);

/// Where the kernel Image is loaded: RAM + 2 MiB.
const LOAD: u64 = RAM_START + 0x20_0000;

/// An arm64 Image whose first instruction branches over the header to `code`.
fn image(code: &Assembler) -> Vec<u8> {
    let header = ImageHeader {
        text_offset: 0,
        image_size: 0x1_0000,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(code.to_bytes());
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

/// A `vmm -v` running a guest, with what it logged so far.
struct Vmm {
    child: Child,
    lines: mpsc::Receiver<String>,
    logged: Vec<String>,
}

impl Vmm {
    fn start(kernel: &Path) -> Self {
        let mut child = Command::new(vmm_binary())
            .arg("--kernel")
            .arg(kernel)
            .args(["--memory", "64", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm");
        let lines = stderr_lines(&mut child);
        Self {
            child,
            lines,
            logged: Vec::new(),
        }
    }

    /// Waits until vmm logs a line containing `needle`.
    fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + HANG;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = line.contains(needle);
            self.logged.push(line);
            if found {
                return;
            }
        }
        panic!("vmm never logged {needle:?}: {:#?}", self.logged);
    }

    /// Sends `signal` and checks that vmm stops with status 0 and says why.
    fn stop_with(mut self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) only sends a signal to the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let Some(status) = exit_within(&mut self.child, HANG) else {
            panic!("vmm ignored signal {signal}: {:#?}", self.logged);
        };
        self.logged.extend(self.lines.iter());
        assert_eq!(
            status.code(),
            Some(0),
            "signal {signal}: {:#?}",
            self.logged
        );
        let said = format!("Terminating on signal {signal}");
        assert!(
            self.logged.iter().any(|line| line.contains(&said)),
            "no {said:?} in {:#?}",
            self.logged
        );
    }
}

impl Drop for Vmm {
    /// A failed test must not leave a vmm rebooting behind it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `code` as a kernel Image into a temporary directory that lives as long as the result.
fn scratch_kernel(code: &Assembler) -> (TempDir, PathBuf) {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vmm-signals-")).unwrap();
    let kernel = dir.as_path().join("Image");
    std::fs::write(&kernel, image(code)).unwrap();
    (dir, kernel)
}

#[test]
fn a_stop_signal_ends_vmm_even_while_the_guest_keeps_resetting() {
    let mut code = Assembler::new();
    code.psci_call(SYSTEM_RESET, &[]);
    let (_dir, kernel) = scratch_kernel(&code);
    for round in 0..ROUNDS {
        let mut vmm = Vmm::start(&kernel);
        let boot = 2 + round % 4;
        vmm.wait_log(&format!("boot {boot}"));
        // A varying delay moves the signal around inside a boot.
        std::thread::sleep(Duration::from_micros(u64::from(round) * 250));
        let signal = if round % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        vmm.stop_with(signal);
    }
}

#[test]
fn a_stop_signal_ends_vmm_while_the_guest_is_suspended() {
    // SYSTEM_SUSPEND with no wakeup source armed: the guest would sleep forever.
    let mut code = Assembler::new();
    code.psci_call(SYSTEM_SUSPEND_64, &[LOAD, 0]);
    code.b_to(code.offset());
    let (_dir, kernel) = scratch_kernel(&code);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut vmm = Vmm::start(&kernel);
        vmm.wait_log("suspended");
        vmm.stop_with(signal);
    }
}
