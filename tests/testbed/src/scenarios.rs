//! The named scenarios. Each one is a shell script run inside the arm64 host with `$ROOT`
//! pointing at the staged tree (`/` in the emulated host), and a time limit.

use std::time::Duration;

/// What a scenario runs.
#[derive(Clone, Copy, Debug)]
pub enum Steps {
    /// Cargo test executables, by `(package, target)`; an empty list means all of them.
    CargoTests(&'static [(&'static str, &'static str)]),
    /// Only the `#[ignore]`d tests of these executables (long runs kept out of the default
    /// set), run with `--ignored`.
    IgnoredCargoTests(&'static [(&'static str, &'static str)]),
    /// Cargo test executables on an arm64 host whose `/dev/kvm` is hidden for the run, as on a
    /// machine without KVM: every test must pass, and the KVM tests must say they skipped.
    CargoTestsWithoutKvm(&'static [(&'static str, &'static str)]),
    /// A shell script, which boots nested Linux guests: one of `tests/testbed/scenarios/`, or
    /// a harness's own (the benchmark's).
    Script(&'static str),
}

/// A named scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name on the command line and in result lines.
    pub name: &'static str,
    /// One line for `testbed list`.
    pub description: &'static str,
    /// Its time limit inside the emulated host.
    pub timeout: Duration,
    /// What it runs.
    pub steps: Steps,
    /// Whether `testbed run` with no names runs it.
    pub default: bool,
}

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "kvm-smoke",
            description: "PSCI guests of raw A64 code on real KVM, vGIC and counter state (hypervisor crate)",
            timeout: Duration::from_secs(120),
            steps: Steps::CargoTests(&[
                ("hypervisor", "psci_guests"),
                ("hypervisor", "snapshot_state"),
            ]),
            default: false,
        },
        Scenario {
            name: "kvm-suspend",
            description: "bare-metal guests through the vmm library: SYSTEM_SUSPEND, wake, deny",
            timeout: Duration::from_secs(240),
            steps: Steps::CargoTests(&[("vmm", "psci_suspend")]),
            default: false,
        },
        Scenario {
            name: "signals",
            description: "SIGTERM and SIGINT stop vmm while its guest resets over and over",
            timeout: Duration::from_secs(240),
            steps: Steps::CargoTests(&[("vmm", "signals")]),
            default: false,
        },
        Scenario {
            name: "seccomp",
            description: "every vmm thread filtered with exactly its list; a forbidden call kills",
            timeout: Duration::from_secs(300),
            steps: Steps::CargoTests(&[("vmm", "seccomp")]),
            default: false,
        },
        Scenario {
            name: "demo",
            description: "the main job in CI: Linux from its root disk with 2 vCPUs, one rtcwake suspend",
            timeout: Duration::from_secs(180),
            steps: Steps::Script(include_str!("../scenarios/demo.sh")),
            default: false,
        },
        Scenario {
            name: "linux-boot",
            description: "Debian arm64 kernel with 1 and 4 vCPUs: nproc, RTC date, poweroff",
            timeout: Duration::from_secs(300),
            steps: Steps::CargoTests(&[("vmm", "linux_boot")]),
            default: false,
        },
        Scenario {
            name: "linux-reboot",
            description: "guest reboot -f: in-process reboot, --no-reboot, SIGTERM",
            timeout: Duration::from_secs(400),
            steps: Steps::CargoTests(&[("vmm", "linux_reboot")]),
            default: false,
        },
        Scenario {
            name: "linux-suspend",
            description: "10 rtcwake -m mem cycles with 1 and 4 vCPUs: deep sleep, all CPUs back",
            timeout: Duration::from_secs(900),
            steps: Steps::CargoTests(&[("vmm", "linux_suspend")]),
            default: false,
        },
        Scenario {
            name: "linux-wake",
            description: "a suspended Linux guest woken by the GPIO button and by a console byte",
            timeout: Duration::from_secs(400),
            steps: Steps::CargoTests(&[("vmm", "linux_wake")]),
            default: false,
        },
        Scenario {
            name: "linux-power",
            description: "vm.info every 10 ms through 20 rtcwake cycles of a 4-vCPU guest: no cycle lost, no kick with the SMCCC filter",
            timeout: Duration::from_secs(600),
            steps: Steps::CargoTests(&[("vmm", "linux_power")]),
            default: false,
        },
        Scenario {
            name: "linux-hibernate",
            description: "a 7.x guest hibernates to its swap partition (SYSTEM_OFF2 on 6.13+ hosts) and the next boot resumes it",
            timeout: Duration::from_secs(900),
            steps: Steps::CargoTests(&[("vmm", "linux_hibernate")]),
            default: false,
        },
        Scenario {
            name: "linux-snapshot",
            description: "a suspended guest saved to disk, vmm ended, restored asleep in a new vmm and woken by button, RTC and console",
            timeout: Duration::from_secs(900),
            steps: Steps::CargoTests(&[("vmm", "linux_snapshot")]),
            default: false,
        },
        Scenario {
            name: "linux-net",
            description: "virtio-net on a tap and virtio-vsock: ping, a TCP stream through 10 suspends, a vsock agent",
            timeout: Duration::from_secs(900),
            steps: Steps::CargoTests(&[("vmm", "linux_net"), ("vmm", "linux_vsock")]),
            default: false,
        },
        Scenario {
            name: "linux-s2idle",
            description: "--no-suspend: no deep in mem_sleep, echo mem still returns (s2idle)",
            timeout: Duration::from_secs(300),
            steps: Steps::CargoTests(&[("vmm", "linux_s2idle")]),
            default: false,
        },
        Scenario {
            name: "linux-disk",
            description: "virtio-blk and -rng: ext4 root, disk data through 20 suspends, read-only disk",
            // About 305 s on a 7.x host; one test executable gets half the limit.
            timeout: Duration::from_secs(1200),
            steps: Steps::CargoTests(&[("vmm", "linux_disk")]),
            default: false,
        },
        Scenario {
            name: "api",
            description: "control API end to end: wake by API, pause/resume, power button, bad requests",
            timeout: Duration::from_secs(600),
            steps: Steps::CargoTests(&[("vmm", "api")]),
            default: false,
        },
        Scenario {
            name: "example",
            description: "vmm/examples/suspend_wake: the library wakes a suspended guest",
            timeout: Duration::from_secs(300),
            steps: Steps::Script(include_str!("../scenarios/example.sh")),
            default: true,
        },
        Scenario {
            name: "soak",
            description: "1000 timer-woken bare-metal suspends and 200 Linux ones with the disk busy, 4 vCPUs; RSS and fds flat",
            timeout: Duration::from_secs(5400),
            steps: Steps::IgnoredCargoTests(&[("vmm", "soak")]),
            default: false,
        },
        Scenario {
            name: "stress",
            description: "flake hunt (#12): 1-vCPU Linux boots and the psci_suspend suite in a loop for 30 min, with kernel stacks of every SIGSEGV, SIGBUS and SIGSYS; name kvm-suspend too, to stage the suite",
            timeout: Duration::from_secs(2400),
            steps: Steps::Script(include_str!("../scenarios/stress.sh")),
            default: false,
        },
        Scenario {
            name: "register-torture",
            description: "host check (#12): vCPU threads keep their SIMD and general registers and SVE vector length across KVM_RUN and kicks (about 9 min)",
            timeout: Duration::from_secs(2400),
            steps: Steps::IgnoredCargoTests(&[("hypervisor", "register_torture")]),
            default: false,
        },
        Scenario {
            name: "no-kvm",
            description: "every test executable with /dev/kvm hidden: all pass, the KVM tests skip and say so",
            timeout: Duration::from_secs(1200),
            steps: Steps::CargoTestsWithoutKvm(&[]),
            default: false,
        },
        Scenario {
            name: "aarch64-tests",
            description: "every crate's test executables on arm64, the KVM ones included",
            // About 850 s on a 7.x host before the linux-boot, -reboot, -suspend, -s2idle and
            // -disk scenarios became test executables, which it runs too (about 600 s more):
            // linux_disk 305 s, linux_net 213 s, linux_power and linux_hibernate 140 s
            // each. One test executable gets half the limit.
            timeout: Duration::from_secs(2400),
            steps: Steps::CargoTests(&[]),
            default: true,
        },
    ]
}
