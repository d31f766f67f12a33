//! SIGTERM and SIGINT stop the `vmm` binary with status 0 whenever they arrive: while the
//! guest resets over and over (a signal that lands together with a reset must not be lost to
//! the reboot; the guest is one PSCI SYSTEM_RESET call, so the signals hit every part of a
//! boot), while it is suspended with nothing to wake it, and while it floods a console that
//! nobody reads (`vmm | sleep 3600`). Runs in the arm64 testbed, where `VMM_BIN` is set.
#![cfg(target_arch = "aarch64")]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use arch_aarch64::layout::UART_BASE;
use arch_aarch64::psci::{CPU_ON_64, SYSTEM_RESET, SYSTEM_SUSPEND_64};
use test_utils::a64::Assembler;
use test_utils::image::{CODE, LOAD, kernel_image, write_kernel};
use vmm_sys_util::tempdir::TempDir;

use common::exit_within;
use common::process::{Launch, Vmm, path_text};

/// Signals sent, each to a new vmm after a different number of boots.
const ROUNDS: u32 = 40;
/// Far longer than a boot of this guest or a clean stop takes, even in the emulated host.
const HANG: Duration = Duration::from_secs(60);

/// A bare-metal guest of `code` with 64 MiB of RAM and `extra` arguments, in a `vmm` started
/// as `launch` says, and the directory that holds its kernel.
fn start(name: &str, code: &Assembler, extra: &[&str], launch: Launch) -> (TempDir, Vmm) {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vmm-signals-")).unwrap();
    let kernel = write_kernel(dir.as_path(), &kernel_image(code, &[]));
    let mut args = vec!["--kernel", path_text(&kernel), "--memory", "64"];
    args.extend(extra);
    let vmm = Vmm::launch(name, &args, launch);
    (dir, vmm)
}

/// A `vmm` without an API socket.
fn no_api() -> Launch {
    Launch {
        api: false,
        ..Launch::default()
    }
}

/// Sends `signal` and checks that vmm stops within `limit` with status 0 and says why.
fn stop_within(mut vmm: Vmm, signal: libc::c_int, limit: Duration) {
    let pid = libc::pid_t::try_from(vmm.child.id()).unwrap();
    // SAFETY: kill(2) only sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let Some(status) = exit_within(&mut vmm.child, limit) else {
        panic!("vmm ignored signal {signal}:\n{}", vmm.stderr());
    };
    assert_eq!(status.code(), Some(0), "signal {signal}:\n{}", vmm.stderr());
    let said = format!("Terminating on signal {signal}");
    assert!(
        vmm.stderr().contains(&said),
        "no {said:?} in\n{}",
        vmm.stderr()
    );
}

#[test]
fn a_stop_signal_ends_vmm_even_while_the_guest_keeps_resetting() {
    test_utils::require_kvm!();
    let mut code = Assembler::new();
    code.psci_call(SYSTEM_RESET, &[]);
    for round in 0..ROUNDS {
        let (_dir, vmm) = start("signals-reset", &code, &[], no_api());
        let boot = 2 + round % 4;
        vmm.wait_stderr(&format!("boot {boot}"), HANG);
        // A varying delay moves the signal around inside a boot.
        std::thread::sleep(Duration::from_micros(u64::from(round) * 250));
        let signal = if round % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        stop_within(vmm, signal, HANG);
    }
}

#[test]
fn a_stop_signal_ends_vmm_while_the_guest_is_suspended() {
    test_utils::require_kvm!();
    // SYSTEM_SUSPEND with no wakeup source armed: the guest would sleep forever.
    let mut code = Assembler::new();
    code.psci_call(SYSTEM_SUSPEND_64, &[LOAD, 0]);
    code.b_to(code.offset());
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (_dir, vmm) = start("signals-suspended", &code, &[], no_api());
        vmm.wait_stderr("suspended", HANG);
        stop_within(vmm, signal, HANG);
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
    code.patch_b(0, start);
    code.psci_call(CPU_ON_64, &[1, CODE + flood, 0]);
    code.b_to(flood);
    code
}

/// Shrinks the pipe to vmm's stdout to one page, so that the guest fills it in seconds even
/// under emulation, and waits until a thread of vmm blocks writing to it.
fn fill_console_pipe(vmm: &Vmm) {
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
    // `vmm ... | sleep 3600`: the pipe's reader never reads.
    let piped = |api| Launch {
        api,
        stdout: Some(Stdio::piped()),
        ..Launch::default()
    };
    let code = console_flood();
    let (_dir, vmm) = start("signals-flood", &code, &["--cpus", "2"], piped(false));
    vmm.wait_stderr("boot 1", HANG);
    fill_console_pipe(&vmm);
    let started = Instant::now();
    stop_within(vmm, libc::SIGTERM, Duration::from_secs(10));
    println!("stopped by SIGTERM in {} ms", started.elapsed().as_millis());

    let (_dir, mut vmm) = start("signals-flood-api", &code, &["--cpus", "2"], piped(true));
    vmm.wait_stderr("boot 1", HANG);
    fill_console_pipe(&vmm);
    let (status, _) = vmm
        .client()
        .request("PUT", "/api/v1/vm.shutdown", None)
        .expect("vm.shutdown");
    assert_eq!(status, 200);
    let status = exit_within(&mut vmm.child, Duration::from_secs(10))
        .expect("vm.shutdown did not stop vmm within 10 s");
    assert_eq!(status.code(), Some(0));
}
