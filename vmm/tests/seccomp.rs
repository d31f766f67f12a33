//! seccomp on every thread, on real KVM in the arm64 testbed.
//!
//! * Every thread of a running `vmm` (Linux guest with a root disk, virtio-rng, the API socket
//!   and an open event stream, so that each kind of thread exists) has `Seccomp: 2`, and each
//!   has exactly the filters it should: read back from the kernel with
//!   `PTRACE_SECCOMP_GET_FILTER` and compared, instruction by instruction, with the programs
//!   `vmm::seccomp::program` builds (its own, then those it inherited).
//! * A forbidden system call made by a real vCPU thread kills `vmm` with SIGSYS. The test
//!   makes one without any test hook in `vmm`: as a ptrace tracer it stops the vCPU thread at
//!   its next system call and changes the call's number to `openat` (which only the VM thread
//!   may make); the kernel runs seccomp on the changed call (Linux 4.8+).
//! * A fault on a vCPU thread kills `vmm` with SIGSEGV and a line naming the thread, not with
//!   the SIGSYS that Rust's own fault handler's `sigaction` would draw.
//! * The filters themselves, installed in forked children: a call outside a thread's list
//!   kills in `on` mode and traps in `trap` mode (with `vmm`'s report on stderr), passes in
//!   `log` mode, and the calls on the list work.
//!
//! Needs an arm64 KVM host and, for the first test, the testbed's guest (`VMM_TEST_KERNEL`,
//! `VMM_TEST_INITRD`, `VMM_TEST_ROOTFS`); the testbed sets them and `VMM_BIN`, and runs it as
//! root (ptrace and `PTRACE_SECCOMP_GET_FILTER` need it).
#![cfg(target_arch = "aarch64")]

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use seccompiler::{BpfProgram, sock_filter};
use test_utils::a64::Assembler;
use test_utils::image::{kernel_image, write_kernel};
use vmm::seccomp::{SeccompMode, Thread, ioctl, nr, program};
use vmm_sys_util::tempdir::TempDir;

use common::process::{Launch, Vmm, guest_args, path_text};
use common::{exit_within, guest_file};

/// Far longer than anything here takes in the emulated host, unless something hangs; short
/// enough that every test here ends within the testbed's limit for the executable.
const HANG: Duration = Duration::from_secs(60);

/// Progress on stderr as it happens: libtest holds back what `println!` prints until the
/// test ends, which a test killed for hanging never does.
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The kernel's audit records of seccomp (`type=1326`): which call, by which process.
fn seccomp_audit() -> String {
    Command::new("dmesg")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|line| line.contains("type=1326"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420C;
const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420E;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_SYSCALL: libc::c_uint = 24;
const PTRACE_DETACH: libc::c_uint = 17;
const PTRACE_O_TRACESYSGOOD: usize = 1;
const PTRACE_EVENT_STOP: i32 = 128;
const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
/// The regset that holds the number of the system call a stopped arm64 thread makes.
const NT_ARM_SYSTEM_CALL: usize = 0x404;

/// `ptrace(request, tid, addr, data)`.
fn ptrace(request: libc::c_uint, tid: i32, addr: usize, data: usize) -> std::io::Result<i64> {
    // SAFETY: the callers pass, for `addr` and `data`, either plain values or pointers to
    // buffers that live across the call and are as large as the request writes.
    let rc = unsafe {
        libc::ptrace(
            request,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Waits for the traced thread `tid` to stop; returns the wait status.
fn wait_stop(tid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for a thread this process traces; `status` is a valid int.
    let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    assert_eq!(
        rc,
        tid,
        "waitpid({tid}): {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFSTOPPED(status),
        "thread {tid} did not stop: {status:#x}"
    );
    status
}

/// Attaches to thread `tid` and stops it.
fn seize_and_stop(tid: i32) {
    ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD).expect("PTRACE_SEIZE");
    ptrace(PTRACE_INTERRUPT, tid, 0, 0).expect("PTRACE_INTERRUPT");
    let status = wait_stop(tid);
    assert_eq!(status >> 16, PTRACE_EVENT_STOP, "{status:#x}");
}

/// The seccomp filters of the stopped thread `tid`, in the kernel's index order (the oldest
/// first: `get_nth_filter` counts from the first installed).
fn filters_of(tid: i32) -> Vec<Vec<sock_filter>> {
    let mut filters = Vec::new();
    for index in 0.. {
        let len = match ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, 0) {
            Ok(len) => len as usize,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
            Err(err) => panic!("PTRACE_SECCOMP_GET_FILTER on {tid}: {err}"),
        };
        let mut program = vec![
            sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            len
        ];
        ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index,
            program.as_mut_ptr() as usize,
        )
        .expect("PTRACE_SECCOMP_GET_FILTER");
        filters.push(program);
    }
    filters
}

fn on(thread: Thread) -> BpfProgram {
    program(thread, SeccompMode::On).unwrap().unwrap()
}

/// A thread of a process: its id, its name, and its `Seccomp` and `Seccomp_filters` lines.
struct Task {
    tid: i32,
    name: String,
    mode: String,
    filters: String,
}

fn tasks(pid: u32) -> Vec<Task> {
    let mut tasks: Vec<Task> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the vmm is running")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let tid = path.file_name()?.to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map_or_else(|| "?".to_owned(), |value| value.trim().to_owned())
            };
            Some(Task {
                tid,
                name: field("Name:"),
                mode: field("Seccomp:"),
                filters: field("Seccomp_filters:"),
            })
        })
        .collect();
    tasks.sort_by_key(|task| task.tid);
    tasks
}

/// The filters a thread called `name` must have, the one it installed itself first, then the
/// ones it inherited.
fn expected_filters(name: &str, main: bool) -> Option<Vec<Thread>> {
    use Thread::*;
    Some(match name {
        _ if main => vec![Main],
        "vmm" => vec![Vmm],
        "api-accept" | "api-conn" => vec![Api],
        "console-out" => vec![Console, Vmm],
        _ if name.starts_with("vcpu") => vec![Vcpu, Vmm],
        _ if name.starts_with("virtio-") => vec![VirtioWorker, Vcpu, Vmm],
        _ => return None,
    })
}

/// Waits up to [`HANG`] until `done` says `vmm` got there; on failure reports its console,
/// stderr and the kernel's seccomp records.
fn wait_for(vmm: &mut Vmm, what: &str, done: impl Fn(&Vmm) -> bool) {
    let deadline = Instant::now() + HANG;
    while !done(vmm) {
        let exited = vmm.child.try_wait().expect("wait for vmm");
        if exited.is_some() || Instant::now() > deadline {
            let report = format!(
                "no {what}: vmm {}\n--- console\n{}\n--- stderr\n{}\n--- seccomp audit\n{}",
                exited.map_or_else(|| "still running".to_owned(), |s| format!("{s:?}")),
                vmm.console_text(),
                vmm.stderr(),
                seccomp_audit()
            );
            progress!("{report}");
            panic!("{report}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    progress!("seccomp test: {what}");
}

#[test]
fn every_thread_of_a_running_vmm_has_exactly_its_filters() {
    test_utils::require_kvm!();
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vmm-seccomp-")).unwrap();
    let root = dir.as_path().join("rootfs.ext4");
    std::fs::copy(guest_file("VMM_TEST_ROOTFS"), &root).unwrap();
    let cmdline = "console=ttyS0 quiet panic=-1 vmmtest=ticker root=/dev/vda rw";
    let mut args = guest_args(cmdline, 2, 256);
    args.extend([
        "--disk".into(),
        format!("path={},id=root", path_text(&root)),
    ]);
    let mut vmm = Vmm::start("seccomp-threads", &args);
    wait_for(&mut vmm, "tick from the guest", |vmm| {
        vmm.console_text().contains("@@guest tick n=2 ")
    });
    // A connection thread exists while an event stream is open.
    let client = vmm.client();
    let events = client.stream("/api/v1/vm.events").expect("vm.events");
    let pid = vmm.child.id();
    wait_for(&mut vmm, "api-conn thread", |_| {
        tasks(pid).iter().any(|task| task.name == "api-conn")
    });

    let mut failures = Vec::new();
    let mut seen = BTreeMap::<String, usize>::new();
    println!("tid     thread           Seccomp  filters  read back (kernel index order)");
    for task in tasks(pid) {
        let main = task.tid == pid as i32;
        let label = if main {
            "vmm (main)".to_owned()
        } else {
            task.name.clone()
        };
        *seen
            .entry(label.trim_end_matches(char::is_numeric).to_owned())
            .or_default() += 1;
        let Some(expected) = expected_filters(&task.name, main) else {
            failures.push(format!("{label} ({}): a thread of unknown kind", task.tid));
            continue;
        };
        progress!(
            "seccomp test: reading the filters of {label} ({})",
            task.tid
        );
        seize_and_stop(task.tid);
        let installed = filters_of(task.tid);
        ptrace(PTRACE_DETACH, task.tid, 0, 0).expect("PTRACE_DETACH");
        let kinds: Vec<String> = installed
            .iter()
            .map(|filter| {
                Thread::ALL
                    .into_iter()
                    .find(|&kind| on(kind) == *filter)
                    .map_or_else(|| "UNKNOWN".to_owned(), |kind| kind.to_string())
            })
            .collect();
        println!(
            "{:<7} {label:<16} {:<8} {:<8} {}",
            task.tid,
            task.mode,
            task.filters,
            kinds.join(", ")
        );
        if task.mode != "2" {
            failures.push(format!("{label} ({}): Seccomp: {}", task.tid, task.mode));
        }
        if task.filters != installed.len().to_string() {
            failures.push(format!(
                "{label}: Seccomp_filters {} but {} read back",
                task.filters,
                installed.len()
            ));
        }
        // Either way round: what matters is which filters, each exactly.
        let want: Vec<BpfProgram> = expected.iter().map(|&kind| on(kind)).collect();
        if installed != want && !installed.iter().rev().eq(want.iter()) {
            let expected: Vec<String> = expected.iter().map(Thread::to_string).collect();
            failures.push(format!(
                "{label} ({}): filters [{}], expected [{}]",
                task.tid,
                kinds.join(", "),
                expected.join(", ")
            ));
        }
    }
    println!("threads: {seen:?}");
    for kind in [
        "vmm (main)",
        "vmm",
        "api-accept",
        "api-conn",
        "console-out",
        "vcpu",
        "virtio-blk-root",
        "virtio-rng",
    ] {
        if !seen.contains_key(kind) {
            failures.push(format!("no {kind} thread"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Still alive after all that: the power button powers the guest off and vmm exits cleanly.
    let (status, _) = client
        .request("PUT", "/api/v1/vm.power-button", None)
        .expect("vm.power-button");
    assert_eq!(status, 200);
    drop(events);
    let status = exit_within(&mut vmm.child, HANG).expect("vmm did not exit");
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}\n{}\n{}\n{}",
        vmm.console_text(),
        vmm.stderr(),
        seccomp_audit()
    );
    assert!(!vmm.stderr().contains("seccomp"));
}

/// A `vmm` running a bare-metal guest that waits for interrupts forever, once its vCPU 0
/// thread installed its own filter on top of the vmm thread's; and the directory of its kernel.
fn idle_vmm_with_filtered_vcpu0(name: &str) -> (TempDir, Vmm, Task) {
    let mut code = Assembler::new();
    let top = code.offset();
    code.wfi();
    code.b_to(top);
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vmm-seccomp-")).unwrap();
    let kernel = write_kernel(dir.as_path(), &kernel_image(&code, &[]));
    let launch = Launch {
        api: false,
        ..Launch::default()
    };
    let args = ["--kernel", path_text(&kernel), "--memory", "64"];
    let mut vmm = Vmm::launch(name, &args, launch);
    let pid = vmm.child.id();
    let vcpu0 = || tasks(pid).into_iter().find(|task| task.name == "vcpu0");
    wait_for(&mut vmm, "filtered vcpu0", |_| {
        vcpu0().is_some_and(|task| task.filters == "2")
    });
    let vcpu = vcpu0().unwrap();
    (dir, vmm, vcpu)
}

/// Stops the traced thread `tid` at the entry of its next system call.
fn stop_at_syscall_entry(tid: i32) {
    let mut signal = 0;
    loop {
        ptrace(PTRACE_SYSCALL, tid, 0, signal).expect("PTRACE_SYSCALL");
        let status = wait_stop(tid);
        signal = 0;
        let stop = libc::WSTOPSIG(status);
        if stop == (libc::SIGTRAP | 0x80) {
            // struct ptrace_syscall_info: `op` first.
            let mut info = [0u8; 88];
            ptrace(
                PTRACE_GET_SYSCALL_INFO,
                tid,
                info.len(),
                info.as_mut_ptr() as usize,
            )
            .expect("PTRACE_GET_SYSCALL_INFO");
            if info[0] == PTRACE_SYSCALL_INFO_ENTRY {
                return;
            }
        } else if status >> 16 != PTRACE_EVENT_STOP {
            // A signal on its way to the thread (a kick): deliver it.
            signal = stop as usize;
        }
    }
}

#[test]
fn a_forbidden_system_call_on_a_vcpu_thread_kills_vmm() {
    test_utils::require_kvm!();
    let (_dir, mut vmm, vcpu) = idle_vmm_with_filtered_vcpu0("seccomp-openat");
    progress!(
        "seccomp test: stopping vcpu0 ({}) at its next system call",
        vcpu.tid
    );
    seize_and_stop(vcpu.tid);
    stop_at_syscall_entry(vcpu.tid);
    progress!("seccomp test: turning it into openat");
    // Its next system call (KVM_RUN, most likely) becomes openat.
    let mut number = nr::SYS_openat as i32;
    let iov = libc::iovec {
        iov_base: (&raw mut number).cast(),
        iov_len: std::mem::size_of::<i32>(),
    };
    ptrace(
        PTRACE_SETREGSET,
        vcpu.tid,
        NT_ARM_SYSTEM_CALL,
        &raw const iov as usize,
    )
    .expect("set the system call number");
    ptrace(PTRACE_DETACH, vcpu.tid, 0, 0).expect("PTRACE_DETACH");
    let Some(status) = exit_within(&mut vmm.child, HANG) else {
        panic!(
            "vmm survived a forbidden openat:\n{}\n{}",
            vmm.stderr(),
            seccomp_audit()
        );
    };
    progress!("seccomp test: vmm after vcpu0 called openat: {status:?}");
    progress!("{}", seccomp_audit());
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}\n{}",
        vmm.stderr()
    );
}

/// Rust's own SIGSEGV handler calls `sigaction`, which no filtered thread may: a fault on a
/// vCPU thread used to end as an unexplained SIGSYS. Sent as a signal, the fault takes the
/// same handler as a real one (the fork test in `fault_report` covers a real one).
#[test]
fn a_fault_on_a_vcpu_thread_kills_vmm_with_sigsegv_and_names_the_thread() {
    test_utils::require_kvm!();
    let (_dir, mut vmm, vcpu) = idle_vmm_with_filtered_vcpu0("seccomp-sigsegv");
    let pid = vmm.child.id();
    // SAFETY: a signal to a thread of our own child.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, vcpu.tid, libc::SIGSEGV) };
    assert_eq!(sent, 0, "tgkill: {}", std::io::Error::last_os_error());
    let Some(status) = exit_within(&mut vmm.child, HANG) else {
        panic!("vmm survived a SIGSEGV on vcpu0:\n{}", vmm.stderr());
    };
    let stderr = vmm.stderr();
    progress!("seccomp test: vmm after a SIGSEGV on vcpu0: {status:?}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "{status:?}\n{stderr}\n{}",
        seccomp_audit()
    );
    let thread = format!("on thread {}", vcpu.tid);
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("vmm: fatal SIGSEGV") && line.contains(&thread)),
        "no report naming thread {}:\n{stderr}",
        vcpu.tid
    );
}

/// How a forked child that installed a filter and made a call ended, and what it wrote on
/// stderr.
fn in_child(thread: Thread, mode: SeccompMode, call: impl FnOnce() -> i64) -> (i32, String) {
    // Built here: the child only installs it and makes the call.
    let program = program(thread, mode).unwrap().unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which are then owned below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors from pipe2, owned once each.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only calls dup2, installs the filter (prctl, seccomp), makes `call`
    // and _exits: no allocation and no lock that another thread could have held at the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe {
            libc::dup2(writer.as_raw_fd(), libc::STDERR_FILENO);
            if vmm::seccomp::install(thread, mode, &program).is_err() {
                libc::_exit(3);
            }
            let rc = call();
            libc::_exit(if rc < 0 { 2 } else { 0 });
        }
    }
    drop(writer);
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(reader), &mut stderr).unwrap();
    (status, stderr)
}

fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn exited(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

fn openat() -> i64 {
    // SAFETY: opens a path from a NUL-terminated literal; the descriptor is left to _exit.
    unsafe {
        libc::syscall(
            nr::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/stat".as_ptr(),
            0,
        )
    }
}

fn ioctl(request: u32) -> i64 {
    // SAFETY: an ioctl on a descriptor that is not open fails with EBADF without reading
    // its argument.
    unsafe { libc::syscall(nr::SYS_ioctl, 1000, u64::from(request), 0) }
}

#[test]
fn a_call_outside_a_threads_list_kills_its_process() {
    test_utils::require_kvm!();
    // The vCPU list: no files, no KVM_CREATE_VM, no sockets, no programs.
    for (what, call) in [
        ("openat", openat as fn() -> i64),
        ("ioctl(KVM_CREATE_VM)", || ioctl(ioctl::KVM_CREATE_VM)),
        ("ioctl(KVM_SET_USER_MEMORY_REGION)", || {
            ioctl(ioctl::KVM_SET_USER_MEMORY_REGION)
        }),
        // SAFETY: socket(2) with plain values.
        ("socket", || unsafe {
            libc::syscall(nr::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
        }),
        // SAFETY: execve of a missing program with no arguments or environment.
        ("execve", || unsafe {
            libc::syscall(
                nr::SYS_execve,
                c"/nonexistent".as_ptr(),
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
            )
        }),
    ] {
        let (status, _) = in_child(Thread::Vcpu, SeccompMode::On, call);
        assert!(killed_by_sigsys(status), "{what}: {status:#x}");
        println!("vCPU filter, {what}: killed by SIGSYS");
    }
    // What a vCPU does passes the filter (and fails here for want of a vCPU fd).
    for request in [
        ioctl::KVM_RUN,
        ioctl::KVM_SET_ONE_REG,
        ioctl::KVM_SET_MP_STATE,
    ] {
        let (status, _) = in_child(Thread::Vcpu, SeccompMode::On, || ioctl(request));
        assert_eq!(exited(status), Some(2), "{request:#x}: {status:#x}");
    }
    // Device workers have no KVM at all; nobody runs programs.
    let (status, _) = in_child(Thread::VirtioWorker, SeccompMode::On, || {
        ioctl(ioctl::KVM_RUN)
    });
    assert!(killed_by_sigsys(status), "{status:#x}");
    for thread in Thread::ALL {
        let (status, _) = in_child(thread, SeccompMode::On, openat);
        let allowed = thread == Thread::Vmm;
        assert_eq!(
            !killed_by_sigsys(status),
            allowed,
            "{thread} openat: {status:#x}"
        );
    }
}

#[test]
fn log_mode_lets_the_call_through_and_trap_mode_names_it() {
    test_utils::require_kvm!();
    let (status, _) = in_child(Thread::Vcpu, SeccompMode::Log, openat);
    assert_eq!(exited(status), Some(0), "{status:#x}");
    let (status, stderr) = in_child(Thread::Vcpu, SeccompMode::Trap, openat);
    assert!(killed_by_sigsys(status), "{status:#x}");
    let said = format!(
        "vmm: seccomp: forbidden system call {} (openat) on thread ",
        nr::SYS_openat
    );
    assert!(stderr.starts_with(&said), "{stderr:?}");
    println!("trap: {}", stderr.trim());
}
