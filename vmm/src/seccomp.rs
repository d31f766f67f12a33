//! seccomp-bpf: every thread of the VMM runs under an allow-list of the system calls it needs,
//! which the thread installs itself before its loop, as Cloud Hypervisor's threads call
//! `apply_filter`. A call outside the list kills the whole process (`SECCOMP_RET_KILL_PROCESS`)
//! by default; [`SeccompMode`] can make it log or trap instead, or turn filtering off.
//!
//! # Which thread installs which list
//!
//! | thread | installs | inherits |
//! | --- | --- | --- |
//! | main thread of the `vmm` binary | [`Thread::Main`], once the API server and the VM are started | |
//! | `api-accept` | [`Thread::Api`], before it accepts | |
//! | `api-conn` (one per request or event stream) | | [`Thread::Api`], from `api-accept` |
//! | `vmm` (the VM thread of [`Vm::start`](crate::Vm::start)) | [`Thread::Vmm`], first thing, before it opens anything | |
//! | `console-out` | [`Thread::Console`] | [`Thread::Vmm`] |
//! | `vcpuN` | [`Thread::Vcpu`] | [`Thread::Vmm`] |
//! | `virtio-blk-ID`, `virtio-rng` (device workers) | [`Thread::VirtioWorker`] | [`Thread::Vmm`], [`Thread::Vcpu`] |
//!
//! A thread starts with the filters of the thread that spawned it, and the kernel runs every
//! filter a thread has: a call must pass all of them. So a list also holds what the threads
//! spawned under it need: the `vmm` thread's list covers building the machine at every boot
//! (reboots included: it opens the images and `/dev/kvm` and creates the VM each time) and
//! everything its vCPU and console threads do, and the vCPU list holds what the device
//! workers need, since a vCPU thread starts them when the guest's driver sets DRIVER_OK.
//! The main thread and `api-accept` start before any filter and get small lists.
//!
//! # Why the lists are code
//!
//! They are Rust functions returning seccompiler rules, as in Cloud Hypervisor, rather than
//! Firecracker's JSON files in `resources/seccomp/` compiled by a build script: a list can
//! include another (the inheritance above is [`rules`] merging lists, not copies that drift
//! apart), ioctl requests are named constants computed from the kernel's `_IOW` encoding
//! rather than bare numbers, and there is no build script or JSON schema to keep in step.
//! System calls are named by their aarch64 numbers from the table below (checked against
//! `libc` when building for aarch64), so the filters also build, and are tested, on an x86-64
//! host. Filters are only installed on aarch64, where the VMM runs.

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// What a system call outside a thread's list does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kills the process (`SECCOMP_RET_KILL_PROCESS`): it dies of SIGSYS.
    #[default]
    On,
    /// No filters.
    Off,
    /// Allows the call and has the kernel log it (`SECCOMP_RET_LOG`: an audit record,
    /// `type=1326 ... syscall=N`, in the kernel log).
    Log,
    /// Sends SIGSYS (`SECCOMP_RET_TRAP`); `vmm` prints the call's number and name on stderr,
    /// then dies of the signal.
    Trap,
}

impl SeccompMode {
    /// Every mode, as the CLI and the config file spell them.
    pub const NAMES: [&'static str; 4] = ["on", "off", "log", "trap"];

    /// The action for calls outside the list; `None` when filtering is off.
    pub fn mismatch_action(self) -> Option<SeccompAction> {
        match self {
            Self::On => Some(SeccompAction::KillProcess),
            Self::Off => None,
            Self::Log => Some(SeccompAction::Log),
            Self::Trap => Some(SeccompAction::Trap),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Log => "log",
            Self::Trap => "trap",
        })
    }
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "log" => Ok(Self::Log),
            "trap" => Ok(Self::Trap),
            _ => Err(format!(
                "invalid seccomp mode {text:?}: must be one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// The kinds of thread, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Thread {
    /// The `vmm` binary's main thread once everything is started: it waits for the VM, stops
    /// the API server and exits.
    Main,
    /// The VM thread: builds the machine at every boot, runs the event loop, spawns the vCPU
    /// and console threads.
    Vmm,
    /// A vCPU thread: `KVM_RUN`, MMIO, PSCI suspend and resume; starts and stops the device
    /// workers.
    Vcpu,
    /// The API server's accept thread and the connection threads it spawns.
    Api,
    /// The console output thread.
    Console,
    /// A virtio device's queue worker.
    VirtioWorker,
}

impl Thread {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Main,
        Self::Vmm,
        Self::Vcpu,
        Self::Api,
        Self::Console,
        Self::VirtioWorker,
    ];
}

impl fmt::Display for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Main => "main",
            Self::Vmm => "vmm",
            Self::Vcpu => "vCPU",
            Self::Api => "API",
            Self::Console => "console output",
            Self::VirtioWorker => "virtio worker",
        })
    }
}

/// Failures building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not make a valid program (a bug in the lists).
    #[error("Cannot build the seccomp filter of the {thread} thread: {source}")]
    Build {
        /// Whose filter.
        thread: Thread,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter (no `CONFIG_SECCOMP_FILTER`?).
    #[error(
        "Cannot install the seccomp filter of the {thread} thread (run with --seccomp=off on a host without seccomp)"
    )]
    Install {
        /// Whose filter.
        thread: Thread,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
}

/// A thread's allow-list: system call numbers (aarch64) and, for some, the argument values
/// allowed; an empty rule list allows any arguments.
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

macro_rules! aarch64_syscalls {
    ($($name:ident = $nr:literal,)*) => {
        /// aarch64 (asm-generic) system call numbers, whatever the build target.
        #[allow(non_upper_case_globals)]
        pub mod nr {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: i64 = $nr;
            )*
        }

        /// The names of the system calls in [`nr`], by number, for messages.
        pub const SYSCALL_NAMES: &[(i64, &str)] = &[$(($nr, stringify!($name)),)*];

        // The table is the kernel's: where libc has the aarch64 numbers, they must agree.
        #[cfg(target_arch = "aarch64")]
        const _: () = { $(assert!(nr::$name == libc::$name);)* };
    };
}

aarch64_syscalls! {
    SYS_eventfd2 = 19,
    SYS_epoll_create1 = 20,
    SYS_epoll_ctl = 21,
    SYS_epoll_pwait = 22,
    SYS_dup = 23,
    SYS_dup3 = 24,
    SYS_fcntl = 25,
    SYS_ioctl = 29,
    SYS_flock = 32,
    SYS_mkdirat = 34,
    SYS_unlinkat = 35,
    SYS_renameat = 38,
    SYS_ftruncate = 46,
    SYS_openat = 56,
    SYS_close = 57,
    SYS_getdents64 = 61,
    SYS_lseek = 62,
    SYS_read = 63,
    SYS_write = 64,
    SYS_readv = 65,
    SYS_writev = 66,
    SYS_pread64 = 67,
    SYS_pwrite64 = 68,
    SYS_preadv = 69,
    SYS_pwritev = 70,
    SYS_ppoll = 73,
    SYS_newfstatat = 79,
    SYS_fstat = 80,
    SYS_fsync = 82,
    SYS_fdatasync = 83,
    SYS_timerfd_create = 85,
    SYS_timerfd_settime = 86,
    SYS_timerfd_gettime = 87,
    SYS_exit = 93,
    SYS_exit_group = 94,
    SYS_futex = 98,
    SYS_set_robust_list = 99,
    SYS_nanosleep = 101,
    SYS_clock_gettime = 113,
    SYS_clock_nanosleep = 115,
    SYS_ptrace = 117,
    SYS_sched_getaffinity = 123,
    SYS_sched_yield = 124,
    SYS_restart_syscall = 128,
    SYS_kill = 129,
    SYS_tkill = 130,
    SYS_tgkill = 131,
    SYS_sigaltstack = 132,
    SYS_rt_sigaction = 134,
    SYS_rt_sigprocmask = 135,
    SYS_rt_sigreturn = 139,
    SYS_prctl = 167,
    SYS_getpid = 172,
    SYS_gettid = 178,
    SYS_socket = 198,
    SYS_bind = 200,
    SYS_listen = 201,
    SYS_connect = 203,
    SYS_sendto = 206,
    SYS_recvfrom = 207,
    SYS_setsockopt = 208,
    SYS_getsockopt = 209,
    SYS_shutdown = 210,
    SYS_sendmsg = 211,
    SYS_recvmsg = 212,
    SYS_brk = 214,
    SYS_munmap = 215,
    SYS_mremap = 216,
    SYS_clone = 220,
    SYS_execve = 221,
    SYS_mmap = 222,
    SYS_mprotect = 226,
    SYS_madvise = 233,
    SYS_accept4 = 242,
    SYS_wait4 = 260,
    SYS_process_vm_readv = 270,
    SYS_process_vm_writev = 271,
    SYS_renameat2 = 276,
    SYS_seccomp = 277,
    SYS_getrandom = 278,
    SYS_execveat = 281,
    SYS_statx = 291,
    SYS_rseq = 293,
    SYS_clone3 = 435,
}

/// The name of aarch64 system call `number`, if the table has it.
pub fn syscall_name(number: i64) -> Option<&'static str> {
    SYSCALL_NAMES
        .iter()
        .find(|(nr, _)| *nr == number)
        .map(|(_, name)| name.trim_start_matches("SYS_"))
}

/// ioctl request numbers (aarch64 uses the generic `_IOC` encoding).
pub mod ioctl {
    const KVMIO: u32 = 0xAE;
    const WRITE: u32 = 1;
    const READ: u32 = 2;

    const fn ioc(dir: u32, kind: u32, nr: u32, size: u32) -> u32 {
        (dir << 30) | (size << 16) | (kind << 8) | nr
    }
    const fn io(nr: u32) -> u32 {
        ioc(0, KVMIO, nr, 0)
    }
    const fn ior(nr: u32, size: u32) -> u32 {
        ioc(READ, KVMIO, nr, size)
    }
    const fn iow(nr: u32, size: u32) -> u32 {
        ioc(WRITE, KVMIO, nr, size)
    }
    const fn iowr(nr: u32, size: u32) -> u32 {
        ioc(READ | WRITE, KVMIO, nr, size)
    }

    // On /dev/kvm.
    /// `KVM_GET_API_VERSION`
    pub const KVM_GET_API_VERSION: u32 = io(0x00);
    /// `KVM_CREATE_VM`
    pub const KVM_CREATE_VM: u32 = io(0x01);
    /// `KVM_CHECK_EXTENSION` (also on a VM)
    pub const KVM_CHECK_EXTENSION: u32 = io(0x03);
    /// `KVM_GET_VCPU_MMAP_SIZE`
    pub const KVM_GET_VCPU_MMAP_SIZE: u32 = io(0x04);
    // On a VM.
    /// `KVM_CREATE_VCPU`
    pub const KVM_CREATE_VCPU: u32 = io(0x41);
    /// `KVM_SET_USER_MEMORY_REGION` (struct kvm_userspace_memory_region, 32 bytes)
    pub const KVM_SET_USER_MEMORY_REGION: u32 = iow(0x46, 32);
    /// `KVM_IRQ_LINE` (struct kvm_irq_level, 8 bytes)
    pub const KVM_IRQ_LINE: u32 = iow(0x61, 8);
    /// `KVM_IRQFD` (struct kvm_irqfd, 32 bytes)
    pub const KVM_IRQFD: u32 = iow(0x76, 32);
    /// `KVM_IOEVENTFD` (struct kvm_ioeventfd, 64 bytes)
    pub const KVM_IOEVENTFD: u32 = iow(0x79, 64);
    /// `KVM_ENABLE_CAP` (struct kvm_enable_cap, 104 bytes)
    pub const KVM_ENABLE_CAP: u32 = iow(0xA3, 104);
    /// `KVM_ARM_PREFERRED_TARGET` (struct kvm_vcpu_init, 32 bytes)
    pub const KVM_ARM_PREFERRED_TARGET: u32 = ior(0xAF, 32);
    /// `KVM_CREATE_DEVICE` (struct kvm_create_device, 12 bytes)
    pub const KVM_CREATE_DEVICE: u32 = iowr(0xE0, 12);
    // On a vCPU.
    /// `KVM_RUN`
    pub const KVM_RUN: u32 = io(0x80);
    /// `KVM_GET_MP_STATE` (struct kvm_mp_state, 4 bytes)
    pub const KVM_GET_MP_STATE: u32 = ior(0x98, 4);
    /// `KVM_SET_MP_STATE`
    pub const KVM_SET_MP_STATE: u32 = iow(0x99, 4);
    /// `KVM_GET_ONE_REG` (struct kvm_one_reg, 16 bytes)
    pub const KVM_GET_ONE_REG: u32 = iow(0xAB, 16);
    /// `KVM_SET_ONE_REG`
    pub const KVM_SET_ONE_REG: u32 = iow(0xAC, 16);
    /// `KVM_ARM_VCPU_INIT` (struct kvm_vcpu_init, 32 bytes)
    pub const KVM_ARM_VCPU_INIT: u32 = iow(0xAE, 32);
    // On a device.
    /// `KVM_SET_DEVICE_ATTR` (struct kvm_device_attr, 24 bytes)
    pub const KVM_SET_DEVICE_ATTR: u32 = iow(0xE1, 24);
    /// `KVM_HAS_DEVICE_ATTR`
    pub const KVM_HAS_DEVICE_ATTR: u32 = iow(0xE3, 24);
    /// `KVM_GET_DEVICE_ATTR` (it writes through the attribute's pointer, but is declared
    /// `_IOW`)
    pub const KVM_GET_DEVICE_ATTR: u32 = iow(0xE2, 24);
    /// `KVM_ARM_SET_COUNTER_OFFSET` (struct kvm_arm_counter_offset, 16 bytes; Linux 6.4)
    pub const KVM_ARM_SET_COUNTER_OFFSET: u32 = iow(0xB5, 16);
    // Terminals and sockets (asm-generic/ioctls.h).
    /// `TCGETS`
    pub const TCGETS: u32 = 0x5401;
    /// `TCSETS`
    pub const TCSETS: u32 = 0x5402;
    /// `TCSETSW`
    pub const TCSETSW: u32 = 0x5403;
    /// `TCSETSF`
    pub const TCSETSF: u32 = 0x5404;
    /// `FIONBIO` (what `set_nonblocking` does on a socket)
    pub const FIONBIO: u32 = 0x5421;
    // Taps (linux/if_tun.h).
    /// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`): a virtio-net device probes it when
    /// built and sets the guest's offloads when its driver activates it.
    pub const TUNSETOFFLOAD: u32 = ioc(WRITE, b'T' as u32, 208, 4);

    #[cfg(target_arch = "aarch64")]
    const _: () = {
        assert!(TCGETS as libc::Ioctl == libc::TCGETS);
        assert!(TCSETS as libc::Ioctl == libc::TCSETS);
        assert!(TCSETSW as libc::Ioctl == libc::TCSETSW);
        assert!(TCSETSF as libc::Ioctl == libc::TCSETSF);
        assert!(FIONBIO as libc::Ioctl == libc::FIONBIO);
        assert!(TUNSETOFFLOAD as libc::Ioctl == libc::TUNSETOFFLOAD as libc::Ioctl);
    };
}

use nr::*;

// Argument values (the same on every Linux architecture).
const PROT_EXEC: u64 = 0x4;
const PR_SET_NAME: u64 = 15;
const AF_UNIX: u64 = 1;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const F_GETFD: u64 = 1;
const F_SETFD: u64 = 2;
const F_GETFL: u64 = 3;
const F_SETFL: u64 = 4;
const F_DUPFD_CLOEXEC: u64 = 1030;
const CLONE_VM: u64 = 0x100;
const CLONE_THREAD: u64 = 0x10000;

/// A list under construction.
#[derive(Default)]
struct List(Rules);

impl List {
    /// Allows `syscalls` with any arguments.
    fn allow(mut self, syscalls: &[i64]) -> Self {
        for &syscall in syscalls {
            self.0.insert(syscall, Vec::new());
        }
        self
    }

    /// Allows `syscall` when one of `rules` matches (and keeps what was allowed already).
    fn allow_when(mut self, syscall: i64, rules: Vec<SeccompRule>) -> Self {
        let mut other = Rules::new();
        other.insert(syscall, rules);
        merge(&mut self.0, other);
        self
    }

    /// Allows `ioctl` with these requests.
    fn ioctls(self, requests: &[u32]) -> Self {
        let rules = requests
            .iter()
            .map(|&request| rule(&[(1, SeccompCmpOp::Eq, u64::from(request))]))
            .collect();
        self.allow_when(SYS_ioctl, rules)
    }

    /// Allows `ioctl` with these requests on stdin (the terminal) only.
    fn stdin_ioctls(self, requests: &[u32]) -> Self {
        let rules = requests
            .iter()
            .map(|&request| {
                rule(&[
                    (0, SeccompCmpOp::Eq, 0),
                    (1, SeccompCmpOp::Eq, u64::from(request)),
                ])
            })
            .collect();
        self.allow_when(SYS_ioctl, rules)
    }

    /// Also allows everything `other` allows.
    fn and(mut self, other: Rules) -> Self {
        merge(&mut self.0, other);
        self
    }
}

/// Adds `other` to `into`: a call is allowed if either allows it.
fn merge(into: &mut Rules, other: Rules) {
    for (syscall, rules) in other {
        match into.get_mut(&syscall) {
            None => {
                into.insert(syscall, rules);
            }
            // Already allowed with any arguments.
            Some(existing) if existing.is_empty() => {}
            Some(existing) if rules.is_empty() => existing.clear(),
            Some(existing) => {
                for rule in rules {
                    if !existing.contains(&rule) {
                        existing.push(rule);
                    }
                }
            }
        }
    }
}

/// A rule whose conditions, on 32-bit argument values, must all hold.
fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> SeccompRule {
    let conditions = conditions
        .iter()
        .map(|(arg, op, value)| {
            SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
                .expect("system calls have six arguments")
        })
        .collect();
    SeccompRule::new(conditions).expect("a rule has a condition")
}

/// Rules allowing argument `arg` to be one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&value| rule(&[(arg, SeccompCmpOp::Eq, value)]))
        .collect()
}

/// What every thread may do: wait on futexes, allocate (never executable memory), write (log
/// lines on stderr; the SIGTERM handler's eventfd write, which runs on whichever thread the
/// signal lands), return from signal handlers, sleep, read clocks the vDSO cannot, exit, and
/// abort (a panic with `panic = "abort"`, `pthread_kill`). A panic on any thread first
/// restores the terminal: `tcsetattr(0, TCSANOW)`, which is `ioctl(0, TCSETS)`. Closing a
/// descriptor is `close`, preceded in debug builds by Rust's check that it is open,
/// `fcntl(fd, F_GETFD)`.
fn common() -> List {
    let no_exec = || vec![rule(&[(2, SeccompCmpOp::MaskedEq(PROT_EXEC), 0)])];
    List::default()
        .allow(&[
            SYS_brk,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_close,
            SYS_exit,
            SYS_exit_group,
            SYS_futex,
            SYS_getpid,
            SYS_getrandom,
            SYS_gettid,
            SYS_madvise,
            SYS_mremap,
            SYS_munmap,
            SYS_nanosleep,
            SYS_restart_syscall,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_sched_yield,
            SYS_sigaltstack,
            SYS_tgkill,
            SYS_write,
            SYS_writev,
        ])
        .allow_when(SYS_mmap, no_exec())
        .allow_when(SYS_mprotect, no_exec())
        .allow_when(SYS_fcntl, one_of(1, &[F_GETFD]))
        .stdin_ioctls(&[ioctl::TCSETS])
}

/// What starting a thread takes, in the spawning thread and in the new thread before its
/// first line of Rust: `clone` for a thread (never a process: `CLONE_THREAD` and `CLONE_VM`
/// must be set; glibc 2.36 uses it on aarch64, newer ones `clone3`, whose flags a filter
/// cannot see), rseq and robust-list registration, Rust's stack guard lookup
/// (`sched_getaffinity` in `pthread_getattr_np`), the thread's name, and the new thread's own
/// filter.
fn spawning() -> List {
    let thread_flags = CLONE_THREAD | CLONE_VM;
    List::default()
        .allow_when(
            SYS_clone,
            vec![rule(&[(
                0,
                SeccompCmpOp::MaskedEq(thread_flags),
                thread_flags,
            )])],
        )
        .allow(&[
            SYS_clone3,
            SYS_rseq,
            SYS_sched_getaffinity,
            SYS_set_robust_list,
        ])
        .allow_when(SYS_prctl, one_of(0, &[PR_SET_NAME, PR_SET_NO_NEW_PRIVS]))
        .allow_when(SYS_seccomp, one_of(0, &[SECCOMP_SET_MODE_FILTER]))
}

/// The `vmm` binary's main thread once the API server and the VM run: it waits for the VM,
/// stops the API server (its socket file is removed) and exits.
pub fn main_rules() -> Rules {
    common().allow(&[SYS_newfstatat, SYS_statx, SYS_unlinkat]).0
}

/// The VM thread. Before its event loop, at every boot (reboots included), it opens the boot
/// images and `/dev/kvm`, creates the VM, its memory, vCPUs, vGIC, devices, irqfds and
/// ioeventfds, and the terminal goes raw; then it spawns the vCPU threads (the console thread
/// once), runs the event loop (console input, the RTC's timerfd, signals), and kicks and joins
/// the vCPUs at the end. Its threads inherit this filter, so it also allows what they do.
/// A reboot listens on the vsock socket again (`bind`, `listen`, `FIONBIO`, after a `connect`
/// that tells a socket in use from a stale one), and the VM's end removes it (`unlinkat`).
/// Snapshots are written, and restored, here too: the vGIC's registers through its device
/// attributes, the guest's counter, and the snapshot directory's files.
pub fn vmm_rules() -> Rules {
    use ioctl::*;
    common()
        .and(spawning().0)
        .allow(&[
            SYS_bind,
            SYS_listen,
            SYS_unlinkat,
            SYS_dup,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_pwait,
            SYS_eventfd2,
            SYS_fstat,
            SYS_lseek,
            SYS_newfstatat,
            SYS_openat,
            SYS_read,
            SYS_rt_sigaction,
            SYS_statx,
            SYS_timerfd_create,
            SYS_timerfd_settime,
            // Snapshots: a directory of synced files renamed into place (over an older one,
            // which is removed), the memory file written sparse from what the pagemap says.
            SYS_mkdirat,
            SYS_ftruncate,
            SYS_pwrite64,
            SYS_pread64,
            SYS_fsync,
            SYS_renameat,
            SYS_renameat2,
            SYS_getdents64,
        ])
        .allow_when(
            SYS_fcntl,
            one_of(1, &[F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC]),
        )
        .ioctls(&[
            KVM_GET_API_VERSION,
            KVM_CREATE_VM,
            KVM_CHECK_EXTENSION,
            KVM_GET_VCPU_MMAP_SIZE,
            KVM_CREATE_VCPU,
            KVM_SET_USER_MEMORY_REGION,
            KVM_IRQ_LINE,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_ENABLE_CAP,
            KVM_ARM_PREFERRED_TARGET,
            KVM_CREATE_DEVICE,
            KVM_ARM_VCPU_INIT,
            KVM_GET_ONE_REG,
            KVM_SET_ONE_REG,
            KVM_SET_DEVICE_ATTR,
            KVM_HAS_DEVICE_ATTR,
            // Snapshots: the vGIC's state out and back, the guest's counter on a restore.
            KVM_GET_DEVICE_ATTR,
            KVM_ARM_SET_COUNTER_OFFSET,
            FIONBIO,
        ])
        // Raw mode for the console on stdin, and back.
        .stdin_ioctls(&[TCGETS, TCSETS, TCSETSW, TCSETSF])
        .and(vcpu_rules())
        .and(console_rules())
        .0
}

/// A vCPU thread: `KVM_RUN` and the vCPU ioctls of the suspend and resume paths (power
/// states, registers, `KVM_ARM_VCPU_INIT` on a wakeup), MMIO to the devices (`KVM_IRQ_LINE`,
/// the RTC's timerfd, eventfds), kicking other vCPUs out of `KVM_RUN` (`tgkill`), and
/// starting and stopping device workers when the guest's driver activates or resets a device:
/// the workers inherit this filter, so it holds theirs too.
pub fn vcpu_rules() -> Rules {
    use ioctl::*;
    common()
        .and(spawning().0)
        .allow(&[
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_eventfd2,
            SYS_read,
            SYS_timerfd_gettime,
            SYS_timerfd_settime,
        ])
        // EventFd::try_clone for a worker's queue and stop events.
        .allow_when(SYS_fcntl, one_of(1, &[F_DUPFD_CLOEXEC]))
        .ioctls(&[
            KVM_RUN,
            KVM_GET_ONE_REG,
            KVM_SET_ONE_REG,
            KVM_GET_MP_STATE,
            KVM_SET_MP_STATE,
            KVM_ARM_VCPU_INIT,
            KVM_IRQ_LINE,
            TUNSETOFFLOAD,
        ])
        .and(virtio_worker_rules())
        .0
}

/// The API server: accepting (`ppoll`, `accept4`), a thread per connection, reading and
/// writing with timeouts, and what the routes do through the VM's handle: kick the vCPUs
/// (pause, `vm.info`), press buttons and queue console input (`KVM_IRQ_LINE`), stop the VM.
pub fn api_rules() -> Rules {
    use ioctl::*;
    common()
        .and(spawning().0)
        .allow(&[
            SYS_accept4,
            SYS_ppoll,
            SYS_read,
            SYS_recvfrom,
            SYS_sendto,
            SYS_setsockopt,
            SYS_shutdown,
        ])
        .ioctls(&[FIONBIO, KVM_IRQ_LINE])
        .0
}

/// The console output thread: it waits for bytes and writes them out.
pub fn console_rules() -> Rules {
    common().0
}

/// A virtio device's worker: waits on its queues' eventfds, serves disk requests
/// (`preadv`, `pwritev`, `fdatasync`), entropy (`getrandom`) and frames (`read` from and
/// `writev` to a tap), interrupts the guest through an eventfd.
pub fn virtio_worker_rules() -> Rules {
    common()
        .allow(&[
            // virtio-vsock: host programs connect to its Unix socket, it connects to theirs
            // for the guest, and ends streams; it writes with MSG_NOSIGNAL.
            SYS_accept4,
            SYS_connect,
            SYS_sendto,
            SYS_shutdown,
            // virtio-net watches its tap only while the guest has receive buffers, and
            // virtio-vsock each host stream while it can move bytes.
            SYS_epoll_ctl,
            SYS_epoll_pwait,
            SYS_fdatasync,
            SYS_preadv,
            SYS_pwritev,
            SYS_read,
        ])
        // Unix sockets only: a worker never opens a network socket.
        .allow_when(SYS_socket, one_of(0, &[AF_UNIX]))
        .0
}

/// The allow-list of `thread`.
pub fn rules(thread: Thread) -> Rules {
    match thread {
        Thread::Main => main_rules(),
        Thread::Vmm => vmm_rules(),
        Thread::Vcpu => vcpu_rules(),
        Thread::Api => api_rules(),
        Thread::Console => console_rules(),
        Thread::VirtioWorker => virtio_worker_rules(),
    }
}

/// The aarch64 BPF program of `thread`'s list in `mode`; `None` when filtering is off.
pub fn program(thread: Thread, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let Some(mismatch) = mode.mismatch_action() else {
        return Ok(None);
    };
    let build = |source| SeccompError::Build { thread, source };
    let filter = SeccompFilter::new(
        rules(thread),
        mismatch,
        SeccompAction::Allow,
        TargetArch::aarch64,
    )
    .map_err(build)?;
    filter.try_into().map(Some).map_err(build)
}

/// Builds `thread`'s filter for `mode` and installs it on the calling thread, for good.
/// Filters are only installed on aarch64: elsewhere this does nothing (the VMM cannot run
/// there).
pub fn apply(thread: Thread, mode: SeccompMode) -> Result<(), SeccompError> {
    #[cfg(target_arch = "aarch64")]
    if let Some(program) = program(thread, mode)? {
        install(thread, mode, &program)?;
    }
    #[cfg(not(target_arch = "aarch64"))]
    let _ = (thread, mode);
    Ok(())
}

/// Installs `program`, `thread`'s filter in `mode`, on the calling thread.
#[cfg(target_arch = "aarch64")]
pub fn install(
    thread: Thread,
    mode: SeccompMode,
    program: &BpfProgram,
) -> Result<(), SeccompError> {
    if mode == SeccompMode::Trap {
        trap_report::install();
    }
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { thread, source })
}

/// The filters of one VM's threads, built once when it starts.
#[cfg(target_arch = "aarch64")]
pub(crate) struct VmFilters {
    mode: SeccompMode,
    vmm: Option<BpfProgram>,
    vcpu: Option<BpfProgram>,
    console: Option<BpfProgram>,
    worker: Option<BpfProgram>,
}

#[cfg(target_arch = "aarch64")]
impl VmFilters {
    /// Builds the VM's filters for `mode`.
    pub(crate) fn new(mode: SeccompMode) -> Result<std::sync::Arc<Self>, SeccompError> {
        if mode == SeccompMode::Trap {
            // Before any filter: it takes rt_sigaction, which most lists do not allow.
            trap_report::install();
        }
        if mode != SeccompMode::Off {
            // Rust's own SIGSEGV/SIGBUS handler calls rt_sigaction, which no filtered thread
            // may: a fault on a vCPU thread would end as an unexplained SIGSYS, in an
            // embedding program too. This one names the fault and dies of it.
            crate::fault_report::install();
        }
        Ok(std::sync::Arc::new(Self {
            mode,
            vmm: program(Thread::Vmm, mode)?,
            vcpu: program(Thread::Vcpu, mode)?,
            console: program(Thread::Console, mode)?,
            worker: program(Thread::VirtioWorker, mode)?,
        }))
    }

    /// Installs `thread`'s filter on the calling thread.
    pub(crate) fn apply(&self, thread: Thread) -> Result<(), SeccompError> {
        let program = match thread {
            Thread::Vmm => &self.vmm,
            Thread::Vcpu => &self.vcpu,
            Thread::Console => &self.console,
            Thread::VirtioWorker => &self.worker,
            Thread::Main | Thread::Api => return apply(thread, self.mode),
        };
        match program {
            Some(program) => install(thread, self.mode, program),
            None => Ok(()),
        }
    }

    /// A hook that installs `thread`'s filter on the thread that runs it; `None` when
    /// filtering is off.
    pub(crate) fn hook(
        self: &std::sync::Arc<Self>,
        thread: Thread,
    ) -> Option<devices::virtio::ThreadStartHook> {
        if self.mode == SeccompMode::Off {
            return None;
        }
        let filters = std::sync::Arc::clone(self);
        Some(std::sync::Arc::new(move || {
            filters
                .apply(thread)
                .map_err(|err| std::io::Error::other(crate::error_chain(&err)))
        }))
    }
}

/// `--seccomp=trap`: a SIGSYS handler that names the forbidden call on stderr, then lets the
/// signal kill the process as it would without a handler.
#[cfg(target_arch = "aarch64")]
mod trap_report {
    use std::sync::Once;

    /// Where the system call number is in a SIGSYS `siginfo_t` (`si_syscall`: after
    /// `si_signo`, `si_errno`, `si_code`, padding and `si_call_addr`).
    const SI_SYSCALL_OFFSET: usize = 24;

    extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t, and for a seccomp SIGSYS the int at
        // this offset is `si_syscall`.
        let number = unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read()
        };
        // No allocation and no locks here: a fixed buffer, then write(2).
        let mut line = crate::fault_report::Line::new();
        line.put(b"vmm: seccomp: forbidden system call ")
            .decimal(i64::from(number))
            .put(b" (")
            .put(
                super::syscall_name(i64::from(number))
                    .unwrap_or("?")
                    .as_bytes(),
            )
            .put(b") on thread ")
            // SAFETY: gettid has no preconditions.
            .decimal(i64::from(unsafe { libc::gettid() }))
            .put(b"\n");
        line.write_to_stderr();
        // SAFETY: async-signal-safe calls without pointers. SA_RESETHAND made SIGSYS's action
        // the default again and SA_NODEFER leaves it unblocked: the process dies of it here.
        unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid(),
                libc::gettid(),
                libc::SIGSYS,
            );
        }
    }

    /// Installs the handler, once per process.
    pub(super) fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe
            // calls.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                    log::warn!(
                        "Cannot report seccomp traps: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
