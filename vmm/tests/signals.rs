//! SIGTERM and SIGINT stop the `vmm` binary with status 0 whenever they arrive: while the
//! guest resets over and over (a signal that lands together with a reset must not be lost to
//! the reboot; the guest is one PSCI SYSTEM_RESET call, so the signals hit every part of a
//! boot), while it is suspended with nothing to wake it, and while it floods a console that
//! nobody reads (`vmm | sleep 3600`). Runs in the arm64 testbed, where `VMM_BIN` is set.
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arch_aarch64::image::ImageHeader;
use arch_aarch64::layout::{RAM_START, UART_BASE};
use arch_aarch64::psci::{CPU_ON_64, SYSTEM_RESET, SYSTEM_SUSPEND_64};
use test_utils::a64::Assembler;
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
        Self::start_with(kernel, &[], Stdio::null())
    }

    /// Starts `vmm -v` on `kernel` with `args` and its console going to `stdout`.
    fn start_with(kernel: &Path, args: &[&str], stdout: Stdio) -> Self {
        let mut child = Command::new(vmm_binary())
            .arg("--kernel")
            .arg(kernel)
            .args(["--memory", "64", "-v"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
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
    fn stop_with(self, signal: libc::c_int) {
        self.stop_within(signal, HANG);
    }

    /// Sends `signal` and checks that vmm stops within `limit` with status 0 and says why.
    fn stop_within(mut self, signal: libc::c_int, limit: Duration) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) only sends a signal to the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let Some(status) = exit_within(&mut self.child, limit) else {
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
    test_utils::require_kvm!();
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
    test_utils::require_kvm!();
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

/// Each thread of process `pid` with where it waits, as `name:wchan`.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(path).map_or_else(|_| "?".to_owned(), |text| text.trim().to_owned())
    };
    tasks
        .filter_map(Result::ok)
        .map(|task| {
            format!(
                "{}:{}",
                read(task.path().join("comm")),
                read(task.path().join("wchan"))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A guest whose two vCPUs write to the console as fast as they can, forever: while one is
/// stuck in the UART, the other waits for it.
fn console_flood() -> Assembler {
    let mut code = Assembler::new();
    // 0: skip the loop; 4: the loop both vCPUs run.
    code.b_to(0);
    let flood = code.offset();
    code.mov_imm(9, UART_BASE);
    code.mov_imm(1, u64::from(b'x'));
    let top = code.offset();
    code.strb(1, 9, 0);
    code.b_to(top);
    let start = code.offset();
    code.psci_call(CPU_ON_64, &[1, LOAD + 64 + flood, 0]);
    code.b_to(flood);
    let mut words = code.to_bytes();
    // Patch the first branch now that `start` is known.
    let mut skip = Assembler::new();
    skip.b_to(start);
    words[..4].copy_from_slice(&skip.to_bytes());
    let mut patched = Assembler::new();
    for word in words.chunks(4) {
        patched.word(u32::from_le_bytes(word.try_into().unwrap()));
    }
    patched
}

/// Shrinks the pipe to vmm's stdout to one page, so that the guest fills it in seconds even
/// under emulation, and waits until a thread of vmm blocks writing to it.
fn fill_console_pipe(vmm: &mut Vmm) {
    use std::os::fd::AsRawFd;
    let pipe = vmm
        .child
        .stdout
        .as_ref()
        .expect("a piped stdout")
        .as_raw_fd();
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this test owns; it takes an int argument.
    assert!(unsafe { libc::fcntl(pipe, libc::F_SETPIPE_SZ, 4096) } > 0);
    let deadline = Instant::now() + HANG;
    while !thread_states(vmm.child.id()).contains("pipe_write") {
        assert!(
            Instant::now() < deadline,
            "the console pipe never filled: {}",
            thread_states(vmm.child.id())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("pipe full: {}", thread_states(vmm.child.id()));
}

#[test]
fn a_console_nobody_reads_does_not_keep_vmm_from_stopping() {
    test_utils::require_kvm!();
    let (dir, kernel) = scratch_kernel(&console_flood());
    // `vmm ... | sleep 3600`: the pipe's reader never reads.
    let mut vmm = Vmm::start_with(&kernel, &["--cpus", "2"], Stdio::piped());
    vmm.wait_log("boot 1");
    fill_console_pipe(&mut vmm);
    let started = Instant::now();
    vmm.stop_within(libc::SIGTERM, Duration::from_secs(10));
    println!("stopped by SIGTERM in {} ms", started.elapsed().as_millis());

    let socket = dir.as_path().join("api.sock");
    let mut vmm = Vmm::start_with(
        &kernel,
        &["--cpus", "2", "--api-socket", socket.to_str().unwrap()],
        Stdio::piped(),
    );
    vmm.wait_log("boot 1");
    fill_console_pipe(&mut vmm);
    let client = vmm::api::ApiClient::new(&socket);
    let (status, _) = client
        .request("PUT", "/api/v1/vm.shutdown", None)
        .expect("vm.shutdown");
    assert_eq!(status, 200);
    let status = exit_within(&mut vmm.child, Duration::from_secs(10))
        .expect("vm.shutdown did not stop vmm within 10 s");
    assert_eq!(status.code(), Some(0));
}
