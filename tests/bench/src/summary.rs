//! Turns the records of a run into figures (median, min and max of each measurement), the
//! side-by-side table, the goals and the JSON results.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::parse::Record;

/// Who a figure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// Our `vmm`, offering deep suspend.
    Ours,
    /// Our `vmm --no-suspend`: the guest sleeps in s2idle.
    OursS2idle,
    /// QEMU with KVM (s2idle only: it does not enable KVM's SYSTEM_SUSPEND exits).
    Qemu,
    /// `suspend_floor`: the bare ioctl sequence of a suspend cycle.
    Floor,
}

impl Subject {
    fn from_tag(tag: &str) -> Option<Self> {
        Some(match tag {
            "ours" => Self::Ours,
            "ours-s2idle" => Self::OursS2idle,
            "qemu" => Self::Qemu,
            "floor" => Self::Floor,
            _ => return None,
        })
    }

    /// Its name in the JSON and the scenario's lines.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::OursS2idle => "ours-s2idle",
            Self::Qemu => "qemu",
            Self::Floor => "floor",
        }
    }

    /// Its name in the table and the plot.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "vmm",
            Self::OursS2idle => "vmm --no-suspend",
            Self::Qemu => "QEMU",
            Self::Floor => "ioctl floor",
        }
    }
}

/// The devices a run had attached besides the built-in ones (UART, RTC, GPIO): virtio disks
/// and our virtio-rng. Runs without any are the device-less ones QEMU (`-nodefaults`) is
/// compared with. The snapshot runs also set the guest's RAM apart here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Devices {
    /// virtio-blk disks.
    pub disks: u32,
    /// Whether the virtio-rng was there.
    pub rng: bool,
    /// The guest's RAM in MiB where a run names it (`memory_mib=`, the snapshot runs); 0 for
    /// the plan's `memory_mib`.
    pub memory_mib: u32,
}

impl Devices {
    /// No virtio device.
    pub const NONE: Self = Self {
        disks: 0,
        rng: false,
        memory_mib: 0,
    };
    /// The disk-throughput runs: one disk (id `bench`), no rng, on both VMMs.
    pub const DISK_RUN: Self = Self {
        disks: 1,
        rng: false,
        memory_mib: 0,
    };
    /// The network runs: no disk and no rng. Their virtio-net device (and our vsock) is not
    /// counted here: only the network metrics come from those runs.
    pub const NET_RUN: Self = Self::NONE;

    /// The devices of a record's run (`disks=N rng=on|off memory_mib=N`; none of them: none).
    fn of(record: &Record) -> Self {
        Self {
            disks: record.number("disks").map_or(0, |disks| disks as u32),
            rng: record.is("rng", "on"),
            memory_mib: record.number("memory_mib").map_or(0, |mib| mib as u32),
        }
    }
}

impl std::fmt::Display for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.disks, self.rng) {
            (0, false) => f.write_str("no devices"),
            (0, true) => f.write_str("rng"),
            (disks, rng) => write!(
                f,
                "{disks} disk{}{}",
                if disks == 1 { "" } else { "s" },
                if rng { " + rng" } else { "" }
            ),
        }
    }
}

/// What a figure measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Process start to the guest init's marker on the serial console, timed from outside.
    BootToInit,
    /// The same as our boot timer logs it (`Guest boot time: N us since vmm start`).
    BootTimer,
    /// Rss of the VMM process minus its guest-RAM mappings, at the init marker.
    MemoryOverhead,
    /// Suspend exit to the vCPU being SUSPENDED.
    Suspend,
    /// Wakeup exit to the vCPU being ready to re-enter the guest.
    Resume,
    /// The guest's `rtcwake -m mem -s 1` round trip beyond its alarm. util-linux sets the
    /// alarm at the RTC's second + 1 + 1 and the guest starts right after a tick, so the
    /// alarm is 2 s away: what is left is the guest's and the VMM's suspend and resume work.
    RtcwakeTrip,
    /// Host CPU time of the VMM process over 10 s of guest sleep.
    IdleCpu,
    /// The guest's sequential 1 MiB `O_DIRECT` reads from a virtio disk, MB/s.
    DiskSeqRead,
    /// The guest's sequential 1 MiB `O_DIRECT` writes to a virtio disk, MB/s.
    DiskSeqWrite,
    /// The guest's random 4 KiB `O_DIRECT` reads from a virtio disk, IOPS.
    DiskRandRead,
    /// One TCP stream from the guest to the host over virtio-net, MB/s.
    NetTcpGuestToHost,
    /// One TCP stream from the host to the guest over virtio-net, MB/s.
    NetTcpHostToGuest,
    /// The mean of the guest's one-byte TCP round trips to the host, us.
    NetTcpRrMean,
    /// Their 99th percentile, us.
    NetTcpRrP99,
    /// The mean of the guest's one-byte vsock round trips to the host, us.
    VsockRrMean,
    /// Their 99th percentile, us.
    VsockRrP99,
    /// Rss of guest RAM just before a snapshot: what the guest touched, MiB.
    SnapshotTouched,
    /// Saving the suspended guest, wall time: ours `vmm ctl snapshot --exit`, QEMU's QMP
    /// `migrate` to `exec:cat > FILE` until its `completed` event, ms.
    SnapshotSave,
    /// The same as our reply gives it (`ms`).
    SnapshotSaveOwn,
    /// What the snapshot takes on disk (`du`), MiB.
    SnapshotStored,
    /// Process start of the restore to the guest back asleep: ours `vm.info` says suspended,
    /// QEMU (`-incoming`, its guest in s2idle) `query-status` says running, ms.
    RestoreSuspended,
    /// Process start of the restore, through the wakeup, to the guest's `@@guest resumed`, ms.
    RestoreRunning,
}

impl Metric {
    const ALL: [Self; 22] = [
        Self::BootToInit,
        Self::BootTimer,
        Self::MemoryOverhead,
        Self::Suspend,
        Self::Resume,
        Self::RtcwakeTrip,
        Self::IdleCpu,
        Self::DiskSeqRead,
        Self::DiskSeqWrite,
        Self::DiskRandRead,
        Self::NetTcpGuestToHost,
        Self::NetTcpHostToGuest,
        Self::NetTcpRrMean,
        Self::NetTcpRrP99,
        Self::VsockRrMean,
        Self::VsockRrP99,
        Self::SnapshotTouched,
        Self::SnapshotSave,
        Self::SnapshotSaveOwn,
        Self::SnapshotStored,
        Self::RestoreSuspended,
        Self::RestoreRunning,
    ];

    /// The disk-throughput metrics, with their short names.
    pub const DISK: [(Self, &'static str); 3] = [
        (Self::DiskSeqRead, "seq read 1 MiB"),
        (Self::DiskSeqWrite, "seq write 1 MiB"),
        (Self::DiskRandRead, "random read 4 KiB"),
    ];

    /// The TCP throughput metrics, with their short names.
    pub const NET_THROUGHPUT: [(Self, &'static str); 2] = [
        (Self::NetTcpGuestToHost, "TCP guest to host"),
        (Self::NetTcpHostToGuest, "TCP host to guest"),
    ];

    /// The TCP round-trip metrics, with their short names.
    pub const NET_LATENCY: [(Self, &'static str); 2] = [
        (Self::NetTcpRrMean, "TCP round trip mean"),
        (Self::NetTcpRrP99, "TCP round trip p99"),
    ];

    /// Whether a larger figure is the better one (throughput), not a smaller one (time,
    /// memory, CPU).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Self::DiskSeqRead
                | Self::DiskSeqWrite
                | Self::DiskRandRead
                | Self::NetTcpGuestToHost
                | Self::NetTcpHostToGuest
        )
    }

    /// Its key in the JSON.
    pub fn id(self) -> &'static str {
        match self {
            Self::BootToInit => "boot_to_init",
            Self::BootTimer => "boot_timer",
            Self::MemoryOverhead => "memory_overhead",
            Self::Suspend => "suspend_latency",
            Self::Resume => "resume_latency",
            Self::RtcwakeTrip => "rtcwake_s1_round_trip_minus_2s_alarm",
            Self::IdleCpu => "host_cpu_per_10s_of_guest_sleep",
            Self::DiskSeqRead => "disk_seq_read_1m",
            Self::DiskSeqWrite => "disk_seq_write_1m",
            Self::DiskRandRead => "disk_rand_read_4k",
            Self::NetTcpGuestToHost => "net_tcp_guest_to_host",
            Self::NetTcpHostToGuest => "net_tcp_host_to_guest",
            Self::NetTcpRrMean => "net_tcp_rr_mean",
            Self::NetTcpRrP99 => "net_tcp_rr_p99",
            Self::VsockRrMean => "vsock_rr_mean",
            Self::VsockRrP99 => "vsock_rr_p99",
            Self::SnapshotTouched => "snapshot_guest_ram_touched",
            Self::SnapshotSave => "snapshot_save",
            Self::SnapshotSaveOwn => "snapshot_save_own",
            Self::SnapshotStored => "snapshot_stored",
            Self::RestoreSuspended => "restore_to_suspended",
            Self::RestoreRunning => "restore_to_running",
        }
    }

    /// Its unit.
    pub fn unit(self) -> &'static str {
        match self {
            Self::BootToInit
            | Self::BootTimer
            | Self::RtcwakeTrip
            | Self::IdleCpu
            | Self::SnapshotSave
            | Self::SnapshotSaveOwn
            | Self::RestoreSuspended
            | Self::RestoreRunning => "ms",
            Self::MemoryOverhead | Self::SnapshotTouched | Self::SnapshotStored => "MiB",
            Self::Suspend
            | Self::Resume
            | Self::NetTcpRrMean
            | Self::NetTcpRrP99
            | Self::VsockRrMean
            | Self::VsockRrP99 => "us",
            Self::DiskSeqRead
            | Self::DiskSeqWrite
            | Self::NetTcpGuestToHost
            | Self::NetTcpHostToGuest => "MB/s",
            Self::DiskRandRead => "IOPS",
        }
    }

    /// The value `record` gives for this metric, if it measures it.
    fn value(self, record: &Record) -> Option<f64> {
        let boot_run = record.kind == "boot" && record.is("run", "boot");
        // A disk figure from a measurement that failed is no figure.
        let disk = |mode| record.kind == "disk" && record.is("rc", "0") && record.is("mode", mode);
        let per_second = |count: f64| Some(count * 1e9 / record.number("ns")?.max(1.0));
        // The same for a network measurement (`@@bench net test=NAME rc=0 ...`).
        let net = |test| record.kind == "net" && record.is("rc", "0") && record.is("test", test);
        let snapshot = record.kind == "snapshot";
        match self {
            Self::BootToInit if boot_run => record.number("boot_ms"),
            Self::BootTimer if boot_run => Some(record.number("timer_us")? / 1e3),
            Self::MemoryOverhead if boot_run => Some(record.number("overhead_kb")? / 1024.0),
            Self::Suspend if record.kind == "suspend" => record.number("suspend_us"),
            Self::Suspend if record.kind == "floor" => Some(record.number("suspend_ns")? / 1e3),
            Self::Resume if record.kind == "suspend" => record.number("resume_us"),
            Self::Resume if record.kind == "floor" => Some(record.number("resume_ns")? / 1e3),
            Self::RtcwakeTrip if record.kind == "trip" && record.is("rc", "0") => {
                Some((record.number("t1")? - record.number("t0")?) * 1e3 - 2e3)
            }
            // A window in which our guest was seen awake does not measure sleep.
            Self::IdleCpu if record.kind == "idle" && !record.is("asleep", "no") => {
                let cpu_ms = record.number("cpu_ns")? / 1e6;
                Some(cpu_ms * 10_000.0 / record.number("window_ms")?.max(1.0))
            }
            // MB/s: 10^6 bytes per second.
            Self::DiskSeqRead if disk("seqread") => {
                Some(per_second(record.number("bytes")?)? / 1e6)
            }
            Self::DiskSeqWrite if disk("seqwrite") => {
                Some(per_second(record.number("bytes")?)? / 1e6)
            }
            Self::DiskRandRead if disk("randread") => per_second(record.number("ops")?),
            Self::NetTcpGuestToHost if net("tcp-guest-to-host") => {
                Some(per_second(record.number("bytes")?)? / 1e6)
            }
            Self::NetTcpHostToGuest if net("tcp-host-to-guest") => {
                Some(per_second(record.number("bytes")?)? / 1e6)
            }
            Self::NetTcpRrMean if net("tcp-rr") => record.number("mean_us"),
            Self::NetTcpRrP99 if net("tcp-rr") => record.number("p99_us"),
            Self::VsockRrMean if net("vsock-rr") => record.number("mean_us"),
            Self::VsockRrP99 if net("vsock-rr") => record.number("p99_us"),
            // A snapshot run's figures are those of the steps it got through.
            Self::SnapshotTouched if snapshot => Some(record.number("guest_rss_kb")? / 1024.0),
            Self::SnapshotSave if snapshot => record.number("save_ms"),
            Self::SnapshotSaveOwn if snapshot => record.number("own_ms"),
            Self::SnapshotStored if snapshot => Some(record.number("stored_kb")? / 1024.0),
            Self::RestoreSuspended if snapshot => record.number("restore_ms"),
            Self::RestoreRunning if snapshot => record.number("running_ms"),
            _ => None,
        }
    }
}

/// Median, minimum and maximum of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// How many samples.
    pub n: usize,
    /// Their median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Stats {
    /// The statistics of `samples`, or `None` for none.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self {
            n,
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// Every figure of a run, with what the run says about itself.
#[derive(Debug, Default)]
pub struct Summary {
    /// Samples by metric, subject, vCPU count and the devices attached.
    pub samples: BTreeMap<(Metric, Subject, u32, Devices), Vec<f64>>,
    /// The emulated host's `@@bench host` line.
    pub host: BTreeMap<String, String>,
    /// How QEMU's disk was set up (`@@bench qemu-drive`: `cache`, `aio`, `cache_none`).
    pub qemu_drive: BTreeMap<String, String>,
    /// The plan the scenario ran (`@@bench plan`).
    pub plan: BTreeMap<String, String>,
    /// Runs that did not get where they should have.
    pub failures: usize,
}

/// One line of the side-by-side table.
#[derive(Debug)]
pub struct Row {
    /// What it shows, with its unit.
    pub what: String,
    /// vCPUs.
    pub cpus: u32,
    /// Our figure.
    pub ours: Option<Stats>,
    /// The figure it is compared with, if any.
    pub peer: Option<Stats>,
}

impl Row {
    /// Ours divided by the peer's, medians.
    pub fn ratio(&self) -> Option<f64> {
        let (ours, peer) = (self.ours?, self.peer?);
        (peer.median > 0.0).then(|| ours.median / peer.median)
    }
}

/// A group of rows of the side-by-side table.
struct Spec {
    what: String,
    metric: Metric,
    ours: (Subject, Devices),
    peer: Option<(Subject, Devices)>,
}

/// A goal of the benchmark issue, judged on this run.
#[derive(Debug)]
pub struct Goal {
    /// The goal as stated.
    pub goal: &'static str,
    /// The figures it was judged on.
    pub measured: String,
    /// `None` when the run lacks the figures.
    pub met: Option<bool>,
}

impl Summary {
    /// Sorts `records` into figures.
    pub fn new(records: &[Record]) -> Self {
        let mut summary = Self::default();
        for record in records {
            match record.kind.as_str() {
                "host" => summary.host = record.fields.clone(),
                "plan" => summary.plan = record.fields.clone(),
                "qemu-drive" => summary.qemu_drive = record.fields.clone(),
                "fail" => summary.failures += 1,
                _ => {}
            }
            let (Some(subject), Some(cpus)) = (
                record.get("vmm").and_then(Subject::from_tag),
                record.number("cpus"),
            ) else {
                continue;
            };
            let devices = Devices::of(record);
            for metric in Metric::ALL {
                if let Some(value) = metric.value(record) {
                    summary
                        .samples
                        .entry((metric, subject, cpus as u32, devices))
                        .or_default()
                        .push(value);
                }
            }
        }
        summary
    }

    /// The statistics of one figure of a device-less run.
    pub fn stats(&self, metric: Metric, subject: Subject, cpus: u32) -> Option<Stats> {
        self.stats_with(metric, subject, cpus, Devices::NONE)
    }

    /// The statistics of one figure of runs with `devices`.
    pub fn stats_with(
        &self,
        metric: Metric,
        subject: Subject,
        cpus: u32,
        devices: Devices,
    ) -> Option<Stats> {
        Stats::of(self.samples.get(&(metric, subject, cpus, devices))?)
    }

    /// The vCPU counts `subject` has `metric` figures for, without devices.
    pub fn cpus(&self, metric: Metric, subject: Subject) -> Vec<u32> {
        self.cpus_with(metric, subject, Devices::NONE)
    }

    /// The vCPU counts `subject` has `metric` figures for, with `devices`.
    pub fn cpus_with(&self, metric: Metric, subject: Subject, devices: Devices) -> Vec<u32> {
        self.samples
            .keys()
            .filter(|(m, s, _, d)| *m == metric && *s == subject && *d == devices)
            .map(|&(_, _, cpus, _)| cpus)
            .collect()
    }

    /// The device sets other than none that `subject` has `metric` figures with.
    pub fn device_sets(&self, metric: Metric, subject: Subject) -> Vec<Devices> {
        let mut sets: Vec<Devices> = self
            .samples
            .keys()
            .filter(|(m, s, _, d)| *m == metric && *s == subject && *d != Devices::NONE)
            .map(|&(_, _, _, devices)| devices)
            .collect();
        sets.sort_unstable();
        sets.dedup();
        sets
    }

    /// The guest RAM sizes the snapshot runs had, smallest first, as their device sets.
    pub fn snapshot_sizes(&self) -> Vec<Devices> {
        let mut sizes: Vec<Devices> = self
            .samples
            .keys()
            .filter(|(.., devices)| devices.memory_mib > 0)
            .map(|&(.., devices)| devices)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// Median suspend plus median resume, ours or the floor's, at `cpus`, without devices.
    pub fn cycle_median(&self, subject: Subject, cpus: u32) -> Option<f64> {
        self.cycle_median_with(subject, cpus, Devices::NONE)
    }

    /// Median suspend plus median resume, ours or the floor's, at `cpus`, with `devices`.
    pub fn cycle_median_with(&self, subject: Subject, cpus: u32, devices: Devices) -> Option<f64> {
        Some(
            self.stats_with(Metric::Suspend, subject, cpus, devices)?
                .median
                + self
                    .stats_with(Metric::Resume, subject, cpus, devices)?
                    .median,
        )
    }

    /// What the side-by-side table shows, row group by row group: label, metric, our side and
    /// the side it is compared with. Figures with devices follow the device-less ones.
    fn specs(&self) -> Vec<Spec> {
        use Subject::*;
        let none = Devices::NONE;
        let mut specs = Vec::new();
        let mut add = |what: String, metric, ours: (Subject, Devices), peer| {
            specs.push(Spec {
                what,
                metric,
                ours,
                peer,
            });
        };
        add(
            "boot to init, ms (vs QEMU)".into(),
            Metric::BootToInit,
            (Ours, none),
            Some((Qemu, none)),
        );
        add(
            "boot timer's own figure, ms".into(),
            Metric::BootTimer,
            (Ours, none),
            None,
        );
        add(
            "VMM memory overhead, MiB (vs QEMU)".into(),
            Metric::MemoryOverhead,
            (Ours, none),
            Some((Qemu, none)),
        );
        for (metric, name) in [(Metric::Suspend, "suspend"), (Metric::Resume, "resume")] {
            add(
                format!("{name} latency, us (vs ioctl floor)"),
                metric,
                (Ours, none),
                Some((Floor, none)),
            );
            for devices in self.device_sets(metric, Ours) {
                add(
                    format!("{name} latency, us, {devices} (vs vmm without devices)"),
                    metric,
                    (Ours, devices),
                    Some((Ours, none)),
                );
            }
        }
        add(
            "rtcwake -s 1 round trip - its 2 s alarm, deep, ms".into(),
            Metric::RtcwakeTrip,
            (Ours, none),
            None,
        );
        for devices in self.device_sets(Metric::RtcwakeTrip, Ours) {
            add(
                format!(
                    "rtcwake -s 1 round trip - its 2 s alarm, deep, {devices}, ms (vs vmm without devices)"
                ),
                Metric::RtcwakeTrip,
                (Ours, devices),
                Some((Ours, none)),
            );
        }
        add(
            "rtcwake -s 1 round trip - its 2 s alarm, s2idle, ms (vs QEMU s2idle)".into(),
            Metric::RtcwakeTrip,
            (OursS2idle, none),
            Some((Qemu, none)),
        );
        add(
            "host CPU in 10 s of guest sleep, deep, ms (vs QEMU s2idle)".into(),
            Metric::IdleCpu,
            (Ours, none),
            Some((Qemu, none)),
        );
        for devices in self.device_sets(Metric::IdleCpu, Ours) {
            add(
                format!("host CPU in 10 s of guest sleep, deep, {devices}, ms (vs QEMU s2idle)"),
                Metric::IdleCpu,
                (Ours, devices),
                Some((Qemu, none)),
            );
        }
        add(
            "host CPU in 10 s of guest sleep, s2idle, ms (vs QEMU s2idle)".into(),
            Metric::IdleCpu,
            (OursS2idle, none),
            Some((Qemu, none)),
        );
        for (metric, what) in [
            (Metric::DiskSeqRead, "sequential 1 MiB reads, MB/s"),
            (Metric::DiskSeqWrite, "sequential 1 MiB writes, MB/s"),
            (Metric::DiskRandRead, "random 4 KiB reads, IOPS"),
        ] {
            add(
                format!("disk: {what}, higher is better (vs QEMU)"),
                metric,
                (Ours, Devices::DISK_RUN),
                Some((Qemu, Devices::DISK_RUN)),
            );
        }
        for (metric, what) in [
            (
                Metric::NetTcpGuestToHost,
                "TCP guest to host, MB/s, higher is better",
            ),
            (
                Metric::NetTcpHostToGuest,
                "TCP host to guest, MB/s, higher is better",
            ),
            (Metric::NetTcpRrMean, "TCP 1-byte round trip, mean, us"),
            (Metric::NetTcpRrP99, "TCP 1-byte round trip, p99, us"),
        ] {
            add(
                format!("net: {what} (vs QEMU)"),
                metric,
                (Ours, Devices::NET_RUN),
                Some((Qemu, Devices::NET_RUN)),
            );
        }
        for (metric, what) in [(Metric::VsockRrMean, "mean"), (Metric::VsockRrP99, "p99")] {
            add(
                format!("vsock: 1-byte round trip, {what}, us"),
                metric,
                (Ours, Devices::NET_RUN),
                None,
            );
        }
        for size in self.snapshot_sizes() {
            let mib = size.memory_mib;
            for (metric, what, peer) in [
                (
                    Metric::SnapshotTouched,
                    "guest RAM touched (Rss) before the save, MiB",
                    true,
                ),
                (Metric::SnapshotSave, "save, ms (vs QEMU migrate)", true),
                (Metric::SnapshotSaveOwn, "save, vmm's own figure, ms", false),
                (
                    Metric::SnapshotStored,
                    "stored on disk, MiB (vs QEMU's file)",
                    true,
                ),
                (
                    Metric::RestoreSuspended,
                    "restore to suspended, ms (vs QEMU to running)",
                    true,
                ),
                (
                    Metric::RestoreRunning,
                    "restore to running after wake, ms (vs QEMU)",
                    true,
                ),
            ] {
                add(
                    format!("snapshot of a {mib} MiB guest: {what}"),
                    metric,
                    (Ours, size),
                    peer.then_some((Qemu, size)),
                );
            }
        }
        specs
    }

    /// The side-by-side table: a row per vCPU count either side has figures for (only ours'
    /// against our own device-less figures).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for spec in self.specs() {
            let (ours, devices) = spec.ours;
            let mut cpus = self.cpus_with(spec.metric, ours, devices);
            if let Some((peer, peer_devices)) = spec.peer.filter(|(peer, _)| *peer != ours) {
                cpus.extend(self.cpus_with(spec.metric, peer, peer_devices));
            }
            cpus.sort_unstable();
            cpus.dedup();
            for cpus in cpus {
                rows.push(Row {
                    what: spec.what.clone(),
                    cpus,
                    ours: self.stats_with(spec.metric, ours, cpus, devices),
                    peer: spec.peer.and_then(|(peer, peer_devices)| {
                        self.stats_with(spec.metric, peer, cpus, peer_devices)
                    }),
                });
            }
        }
        rows
    }

    /// The goals, judged on this run.
    pub fn goals(&self) -> Vec<Goal> {
        use Subject::*;
        let mut goals = Vec::new();

        let boot: Vec<_> = self
            .cpus(Metric::BootToInit, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.stats(Metric::BootToInit, Ours, cpus)?.median;
                let qemu = self.stats(Metric::BootToInit, Qemu, cpus)?.median;
                Some((cpus, ours / qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "boot to init: ours <= 0.7 x QEMU",
            measured: list(&boot, |(cpus, ratio)| format!("{ratio:.2} at {cpus} vCPU")),
            met: judge(&boot, |(_, ratio)| *ratio <= 0.7),
        });

        let memory: Vec<_> = self
            .cpus(Metric::MemoryOverhead, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.stats(Metric::MemoryOverhead, Ours, cpus)?.median;
                let qemu = self.stats(Metric::MemoryOverhead, Qemu, cpus)?.median;
                Some((cpus, ours, ours / qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "memory overhead: ours <= 0.1 x QEMU and < 5 MiB",
            measured: list(&memory, |(cpus, ours, ratio)| {
                format!("{ours:.2} MiB, {ratio:.3} x QEMU at {cpus} vCPU")
            }),
            met: judge(&memory, |(_, ours, ratio)| *ours < 5.0 && *ratio <= 0.1),
        });

        let cycles: Vec<_> = self
            .cpus(Metric::Suspend, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.cycle_median(Ours, cpus)?;
                Some((cpus, ours, ours / self.cycle_median(Floor, cpus)?))
            })
            .collect();
        goals.push(Goal {
            goal: "suspend + resume (VMM side): <= 1.5 x the ioctl floor",
            measured: list(&cycles, |(cpus, _, ratio)| {
                format!("{ratio:.2} x at {cpus} vCPU")
            }),
            met: judge(&cycles, |(_, _, ratio)| *ratio <= 1.5),
        });
        let base = cycles.iter().find(|(cpus, _, _)| *cpus == 1).map(|c| c.1);
        let growth: Vec<_> = cycles
            .iter()
            .filter(|(cpus, _, _)| *cpus > 1)
            .filter_map(|&(cpus, ours, _)| Some((cpus, ours / base?)))
            .collect();
        goals.push(Goal {
            goal: "suspend + resume flat in vCPUs: <= 1.5 x the 1-vCPU figure",
            measured: list(&growth, |(cpus, growth)| {
                format!("{growth:.2} x the 1-vCPU figure at {cpus} vCPUs")
            }),
            met: judge(&growth, |(_, growth)| *growth <= 1.5),
        });

        let idle: Vec<_> = self
            .cpus(Metric::IdleCpu, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.stats(Metric::IdleCpu, Ours, cpus)?.median;
                let qemu = self.stats(Metric::IdleCpu, Qemu, cpus)?.median;
                Some((cpus, ours, qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "host CPU in 10 s of sleep: ours (deep) <= 0.1 x QEMU (s2idle)",
            measured: list(&idle, |(cpus, ours, qemu)| {
                format!("{ours:.1} ms vs {qemu:.1} ms at {cpus} vCPUs")
            }),
            met: judge(&idle, |(_, ours, qemu)| *ours <= 0.1 * qemu),
        });

        let idle_devices: Vec<_> = self
            .device_sets(Metric::IdleCpu, Ours)
            .into_iter()
            .flat_map(|devices| {
                self.cpus_with(Metric::IdleCpu, Ours, devices)
                    .into_iter()
                    .filter_map(move |cpus| {
                        let ours = self
                            .stats_with(Metric::IdleCpu, Ours, cpus, devices)?
                            .median;
                        let qemu = self.stats(Metric::IdleCpu, Qemu, cpus)?.median;
                        Some((devices, cpus, ours, qemu))
                    })
            })
            .collect();
        goals.push(Goal {
            goal: "host CPU in 10 s of sleep with devices attached: ours (deep) <= 0.1 x QEMU (s2idle)",
            measured: list(&idle_devices, |(devices, cpus, ours, qemu)| {
                format!("{devices}: {ours:.1} ms vs {qemu:.1} ms at {cpus} vCPUs")
            }),
            met: judge(&idle_devices, |(_, _, ours, qemu)| *ours <= 0.1 * qemu),
        });

        let disk: Vec<_> = Metric::DISK
            .into_iter()
            .flat_map(|(metric, name)| {
                self.cpus_with(metric, Ours, Devices::DISK_RUN)
                    .into_iter()
                    .filter_map(move |cpus| {
                        let ours = self.stats_with(metric, Ours, cpus, Devices::DISK_RUN)?;
                        let qemu = self.stats_with(metric, Qemu, cpus, Devices::DISK_RUN)?;
                        Some((name, cpus, ours.median / qemu.median))
                    })
            })
            .collect();
        goals.push(Goal {
            goal: "disk throughput (higher is better): ours >= 1.0 x QEMU on each figure",
            measured: list(&disk, |(name, cpus, ratio)| {
                format!("{name} {ratio:.2} x at {cpus} vCPU")
            }),
            met: judge(&disk, |(_, _, ratio)| *ratio >= 1.0),
        });

        let versus_qemu = |metrics: [(Metric, &'static str); 2]| -> Vec<_> {
            metrics
                .into_iter()
                .flat_map(|(metric, name)| {
                    self.cpus_with(metric, Ours, Devices::NET_RUN)
                        .into_iter()
                        .filter_map(move |cpus| {
                            let ours = self.stats_with(metric, Ours, cpus, Devices::NET_RUN)?;
                            let qemu = self.stats_with(metric, Qemu, cpus, Devices::NET_RUN)?;
                            Some((name, cpus, ours.median / qemu.median))
                        })
                })
                .collect()
        };
        let throughput = versus_qemu(Metric::NET_THROUGHPUT);
        goals.push(Goal {
            goal: "TCP throughput (higher is better): ours >= 1.0 x QEMU each way",
            measured: list(&throughput, |(name, cpus, ratio)| {
                format!("{name} {ratio:.2} x at {cpus} vCPU")
            }),
            met: judge(&throughput, |(_, _, ratio)| *ratio >= 1.0),
        });
        let latency = versus_qemu(Metric::NET_LATENCY);
        goals.push(Goal {
            goal: "TCP round trip: ours <= 1.0 x QEMU, mean and p99",
            measured: list(&latency, |(name, cpus, ratio)| {
                format!("{name} {ratio:.2} x at {cpus} vCPU")
            }),
            met: judge(&latency, |(_, _, ratio)| *ratio <= 1.0),
        });

        let median = |metric, subject, size| {
            let cpus = *self.cpus_with(metric, subject, size).first()?;
            Some(self.stats_with(metric, subject, cpus, size)?.median)
        };
        let sizes = self.snapshot_sizes();
        let restore: Vec<_> = sizes
            .iter()
            .filter_map(|&size| {
                let ours = median(Metric::RestoreRunning, Ours, size)?;
                let qemu = median(Metric::RestoreRunning, Qemu, size)?;
                Some((size.memory_mib, ours, ours / qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "restore to running after wake: ours <= 0.1 x QEMU",
            measured: list(&restore, |(mib, ours, ratio)| {
                format!("{} ms, {ratio:.2} x QEMU at {mib} MiB", number(*ours))
            }),
            met: judge(&restore, |(_, _, ratio)| *ratio <= 0.1),
        });
        let flat: Vec<_> = sizes
            .first()
            .zip(sizes.last().filter(|_| sizes.len() > 1))
            .and_then(|(&small, &large)| {
                let growth = median(Metric::RestoreRunning, Ours, large)?
                    / median(Metric::RestoreRunning, Ours, small)?;
                Some((small.memory_mib, large.memory_mib, growth))
            })
            .into_iter()
            .collect();
        goals.push(Goal {
            goal: "restore to running flat in guest RAM: <= 1.5 x the smallest guest's",
            measured: list(&flat, |(small, large, growth)| {
                format!("{growth:.2} x at {large} MiB vs {small} MiB")
            }),
            met: judge(&flat, |(_, _, growth)| *growth <= 1.5),
        });
        let stored: Vec<_> = sizes
            .iter()
            .filter_map(|&size| {
                let stored = median(Metric::SnapshotStored, Ours, size)?;
                let touched = median(Metric::SnapshotTouched, Ours, size)?;
                Some((size.memory_mib, stored, touched))
            })
            .collect();
        goals.push(Goal {
            goal: "snapshot size: ours <= the guest RAM it touched + 1 MiB",
            measured: list(&stored, |(mib, stored, touched)| {
                format!(
                    "{} MiB stored, {} MiB touched at {mib} MiB",
                    number(*stored),
                    number(*touched)
                )
            }),
            met: judge(&stored, |(_, stored, touched)| *stored <= touched + 1.0),
        });
        goals
    }

    /// The table and the goals as Markdown.
    pub fn markdown(&self) -> String {
        let mut text = String::from(
            "| figure | vCPUs | vmm: median [min-max] (n) | peer: median [min-max] (n) | vmm / peer |\n\
             | --- | --- | --- | --- | --- |\n",
        );
        for row in self.rows() {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} |",
                row.what,
                row.cpus,
                cell(row.ours),
                cell(row.peer),
                row.ratio()
                    .map_or("-".into(), |ratio| format!("{ratio:.2}"))
            );
        }
        let mut cycles = String::new();
        for cpus in self.cpus(Metric::Suspend, Subject::Ours) {
            if let (Some(ours), Some(floor)) = (
                self.cycle_median(Subject::Ours, cpus),
                self.cycle_median(Subject::Floor, cpus),
            ) {
                let _ = write!(
                    cycles,
                    "{}{cpus} vCPU: {} us vs {} us ({:.1} x)",
                    if cycles.is_empty() { "" } else { "; " },
                    number(ours),
                    number(floor),
                    ours / floor
                );
            }
        }
        if !cycles.is_empty() {
            let _ = writeln!(
                text,
                "\nSuspend + resume, sum of the medians, vmm vs ioctl floor: {cycles}."
            );
        }
        let mut with_devices = String::new();
        for devices in self.device_sets(Metric::Suspend, Subject::Ours) {
            for cpus in self.cpus_with(Metric::Suspend, Subject::Ours, devices) {
                if let (Some(ours), Some(bare)) = (
                    self.cycle_median_with(Subject::Ours, cpus, devices),
                    self.cycle_median(Subject::Ours, cpus),
                ) {
                    let _ = write!(
                        with_devices,
                        "{}{devices} at {cpus} vCPU: {} us vs {} us ({:.2} x)",
                        if with_devices.is_empty() { "" } else { "; " },
                        number(ours),
                        number(bare),
                        ours / bare
                    );
                }
            }
        }
        if !with_devices.is_empty() {
            let _ = writeln!(
                text,
                "\nSuspend + resume with devices, sum of the medians, vs vmm without devices: \
                 {with_devices}."
            );
        }
        let _ = writeln!(
            text,
            "\nvmm / peer is our median divided by the peer's: below 1 is better for times, \
             memory and CPU; for the rows marked higher is better (disk and TCP throughput), \
             above 1 is better."
        );
        if self.samples.keys().any(|&(metric, ..)| {
            Metric::NET_THROUGHPUT
                .iter()
                .chain(&Metric::NET_LATENCY)
                .any(|&(net, _)| net == metric)
        }) {
            let _ = writeln!(
                text,
                "Network: virtio-net on a host tap, vhost off; ours --net, QEMU -netdev tap. \
                 The vsock round trips are ours only (hybrid vsock to a Unix socket)."
            );
        }
        if !self.snapshot_sizes().is_empty() {
            let _ = writeln!(
                text,
                "Snapshots: ours `vmm ctl snapshot --exit` of the guest in deep suspend, then \
                 `vmm --restore` (suspended: vm.info says so) and `vmm ctl wakeup`; QEMU: QMP \
                 `migrate` to `exec:cat > FILE` of the guest in s2idle, then `-incoming \
                 exec:cat FILE` (restored: query-status says running) and a byte on the \
                 console. Restore times run from the restoring process's start; sizes are \
                 `du` of what is stored."
            );
        }
        if let Some(cache) = self.qemu_drive.get("cache") {
            let _ = writeln!(
                text,
                "QEMU's disk: -drive format=raw,cache={cache},aio={}{} -device virtio-blk-device; \
                 ours: --disk path=IMG,id=bench (buffered, through the host's page cache).",
                self.qemu_drive.get("aio").map_or("threads", String::as_str),
                if self.qemu_drive.get("cache_none").map(String::as_str) == Some("refused") {
                    " (cache=none, O_DIRECT, was refused: the image is on the host's tmpfs)"
                } else {
                    ""
                }
            );
        }
        text.push('\n');
        for goal in self.goals() {
            let verdict = match goal.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "no data",
            };
            let _ = writeln!(text, "- {}: **{verdict}** ({})", goal.goal, goal.measured);
        }
        text
    }

    /// Everything as JSON, for `bench/results.json`.
    pub fn json(&self, machine: &str) -> Value {
        let figures: Vec<Value> = self
            .samples
            .iter()
            .filter_map(|(&(metric, subject, cpus, devices), samples)| {
                let stats = Stats::of(samples)?;
                Some(json!({
                    "figure": metric.id(),
                    "vmm": subject.tag(),
                    "cpus": cpus,
                    "disks": devices.disks,
                    "rng": devices.rng,
                    "memory_mib": devices.memory_mib,
                    "higher_is_better": metric.higher_is_better(),
                    "unit": metric.unit(),
                    "n": stats.n,
                    "median": round(stats.median),
                    "min": round(stats.min),
                    "max": round(stats.max),
                    "samples": samples.iter().map(|&value| round(value)).collect::<Vec<_>>(),
                }))
            })
            .collect();
        let goals: Vec<Value> = self
            .goals()
            .into_iter()
            .map(|goal| json!({ "goal": goal.goal, "measured": goal.measured, "met": goal.met }))
            .collect();
        json!({
            "date": self.host.get("date"),
            "machine": machine,
            "emulated_host": { "kernel": self.host.get("kernel"), "cpus": self.host.get("cpus") },
            "qemu": self.host.get("qemu"),
            "qemu_drive": self.qemu_drive,
            "plan": self.plan,
            "failed_runs": self.failures,
            "figures": figures,
            "goals": goals,
        })
    }
}

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return "no figures".into();
    }
    items.iter().map(show).collect::<Vec<_>>().join("; ")
}

fn judge<T>(items: &[T], ok: impl Fn(&T) -> bool) -> Option<bool> {
    (!items.is_empty()).then(|| items.iter().all(ok))
}

fn cell(stats: Option<Stats>) -> String {
    stats.map_or("-".into(), |s| {
        format!(
            "{} [{}-{}] ({})",
            number(s.median),
            number(s.min),
            number(s.max),
            s.n
        )
    })
}

/// A figure with the decimals its size deserves.
pub fn number(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Three decimals are plenty in the JSON.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::records;

    const LOG: &str = "\
@@bench host date=2026-11-25T03:00:00Z kernel=6.1.0-56-arm64 cpus=2 qemu=1:7.2
@@bench plan rounds=2
@@bench boot run=boot vmm=ours cpus=1 round=1 boot_ms=3000 rss_kb=9000 guest_rss_kb=6000 overhead_kb=3072 timer_us=2950000
@@bench boot run=boot vmm=ours cpus=1 round=2 boot_ms=3200 overhead_kb=3072 timer_us=3150000
@@bench boot run=boot vmm=qemu cpus=1 round=1 boot_ms=6000 overhead_kb=102400
@@bench boot run=boot vmm=qemu cpus=1 round=2 boot_ms=6400 overhead_kb=102400
@@bench boot run=idle vmm=ours cpus=2 round=1 boot_ms=99999 overhead_kb=1
@@bench suspend run=suspend vmm=ours cpus=1 round=1 suspend_us=100
@@bench suspend run=suspend vmm=ours cpus=1 round=1 resume_us=50
@@bench suspend run=suspend vmm=ours cpus=4 round=1 suspend_us=200
@@bench suspend run=suspend vmm=ours cpus=4 round=1 resume_us=100
@@bench floor run=floor vmm=floor round=1 cpus=1 cycle=1 suspend_ns=40000 resume_ns=35000
@@bench floor run=floor vmm=floor round=1 cpus=4 cycle=1 suspend_ns=100000 resume_ns=50000
@@bench trip run=suspend vmm=ours cpus=1 round=1 cycle=1 rc=0 t0=10.00 t1=12.25
@@bench trip run=idle vmm=qemu cpus=2 round=1 cycle=1 rc=1 t0=10.00 t1=10.50
@@bench idle run=idle vmm=ours cpus=2 round=1 cpu_ns=2000000 window_ms=10000 asleep=yes
@@bench idle run=idle vmm=ours cpus=2 round=2 cpu_ns=9000000000 window_ms=10000 asleep=no
@@bench idle run=idle vmm=qemu cpus=2 round=1 cpu_ns=400000000 window_ms=20000 asleep=unknown
@@bench fail run=boot vmm=qemu cpus=4 round=2 reached=none
@@bench qemu-drive cache=writeback aio=threads cache_none=refused
@@bench suspend run=suspend vmm=ours cpus=1 round=1 disks=1 rng=on suspend_us=110
@@bench suspend run=suspend vmm=ours cpus=1 round=1 disks=1 rng=on resume_us=60
@@bench suspend run=suspend vmm=ours cpus=1 round=1 disks=2 rng=on suspend_us=130
@@bench suspend run=suspend vmm=ours cpus=1 round=1 disks=2 rng=on resume_us=70
@@bench trip run=suspend vmm=ours cpus=1 round=1 disks=1 rng=on cycle=1 rc=0 t0=10.00 t1=12.30
@@bench idle run=idle vmm=ours cpus=2 round=1 disks=1 rng=on cpu_ns=0 window_ms=10000 asleep=yes
@@bench disk run=disk vmm=ours cpus=1 round=1 disks=1 rng=off rc=0 mode=seqread block=1048576 ops=300 bytes=314572800 ns=2000000000
@@bench disk run=disk vmm=qemu cpus=1 round=1 disks=1 rng=off rc=0 mode=seqread block=1048576 ops=200 bytes=209715200 ns=2000000000
@@bench disk run=disk vmm=ours cpus=1 round=1 disks=1 rng=off rc=0 mode=seqwrite block=1048576 ops=100 bytes=104857600 ns=1000000000
@@bench disk run=disk vmm=qemu cpus=1 round=1 disks=1 rng=off rc=0 mode=seqwrite block=1048576 ops=100 bytes=104857600 ns=1000000000
@@bench disk run=disk vmm=ours cpus=1 round=1 disks=1 rng=off rc=0 mode=randread block=4096 ops=3000 bytes=12288000 ns=2000000000
@@bench disk run=disk vmm=qemu cpus=1 round=1 disks=1 rng=off rc=0 mode=randread block=4096 ops=4000 bytes=16384000 ns=2000000000
@@bench disk run=disk vmm=qemu cpus=1 round=2 disks=1 rng=off rc=1 mode=randread
@@bench net run=net vmm=ours cpus=1 round=1 disks=0 rng=off test=tcp-guest-to-host rc=0 bytes=500000000 ns=5000000000 mbps=100.0
@@bench net run=net vmm=ours cpus=1 round=2 disks=0 rng=off test=tcp-guest-to-host rc=0 bytes=600000000 ns=5000000000 mbps=120.0
@@bench net run=net vmm=qemu cpus=1 round=1 disks=0 rng=off test=tcp-guest-to-host rc=0 bytes=400000000 ns=5000000000 mbps=80.0
@@bench net run=net vmm=ours cpus=1 round=1 disks=0 rng=off test=tcp-host-to-guest rc=0 bytes=250000000 ns=5000000000 mbps=50.0
@@bench net run=net vmm=qemu cpus=1 round=1 disks=0 rng=off test=tcp-host-to-guest rc=0 bytes=500000000 ns=5000000000 mbps=100.0
@@bench net run=net vmm=ours cpus=1 round=1 disks=0 rng=off test=tcp-rr rc=0 count=2000 mean_us=150 p50_us=140 p99_us=400
@@bench net run=net vmm=qemu cpus=1 round=1 disks=0 rng=off test=tcp-rr rc=0 count=2000 mean_us=200 p50_us=190 p99_us=500
@@bench net run=net vmm=qemu cpus=1 round=2 disks=0 rng=off test=tcp-rr rc=1 error=Connection refused (os error 111)
@@bench net run=net vmm=ours cpus=1 round=1 disks=0 rng=off test=vsock-rr rc=0 count=2000 mean_us=90 p50_us=80 p99_us=300
";

    #[test]
    fn stats_take_the_middle_of_sorted_samples() {
        let odd = Stats::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((odd.n, odd.median, odd.min, odd.max), (3, 3.0, 1.0, 5.0));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn sorts_records_into_figures() {
        let summary = Summary::new(&records(LOG));
        let boot = summary.stats(Metric::BootToInit, Subject::Ours, 1).unwrap();
        // Only boot runs count: the idle run's marker is not a boot figure.
        assert_eq!((boot.n, boot.median), (2, 3100.0));
        assert_eq!(summary.cpus(Metric::BootToInit, Subject::Ours), [1]);
        let timer = summary.stats(Metric::BootTimer, Subject::Ours, 1).unwrap();
        assert_eq!(timer.median, 3050.0);
        let memory = summary
            .stats(Metric::MemoryOverhead, Subject::Qemu, 1)
            .unwrap();
        assert_eq!(memory.median, 100.0);
        assert_eq!(summary.cycle_median(Subject::Ours, 1), Some(150.0));
        assert_eq!(summary.cycle_median(Subject::Floor, 1), Some(75.0));
        let trip = summary
            .stats(Metric::RtcwakeTrip, Subject::Ours, 1)
            .unwrap();
        assert!((trip.median - 250.0).abs() < 1e-9);
        // A failed rtcwake is no round trip, and an awake window is no idle figure.
        assert_eq!(summary.stats(Metric::RtcwakeTrip, Subject::Qemu, 2), None);
        let idle = summary.stats(Metric::IdleCpu, Subject::Ours, 2).unwrap();
        assert_eq!((idle.n, idle.median), (1, 2.0));
        // Normalised to 10 s.
        assert_eq!(
            summary
                .stats(Metric::IdleCpu, Subject::Qemu, 2)
                .unwrap()
                .median,
            200.0
        );
        assert_eq!(summary.failures, 1);
        assert_eq!(summary.host["kernel"], "6.1.0-56-arm64");
        assert_eq!(summary.qemu_drive["cache"], "writeback");
    }

    #[test]
    fn keeps_figures_with_devices_apart() {
        let summary = Summary::new(&records(LOG));
        let one = Devices {
            disks: 1,
            rng: true,
            memory_mib: 0,
        };
        let two = Devices { disks: 2, ..one };
        // The device-less figures are what they were.
        assert_eq!(summary.cycle_median(Subject::Ours, 1), Some(150.0));
        assert_eq!(
            summary.cycle_median_with(Subject::Ours, 1, one),
            Some(170.0)
        );
        assert_eq!(
            summary.cycle_median_with(Subject::Ours, 1, two),
            Some(200.0)
        );
        assert_eq!(
            summary.device_sets(Metric::Suspend, Subject::Ours),
            [one, two]
        );
        assert_eq!(summary.cpus_with(Metric::IdleCpu, Subject::Ours, one), [2]);
        assert_eq!(
            summary
                .stats(Metric::IdleCpu, Subject::Ours, 2)
                .unwrap()
                .median,
            2.0
        );
        assert_eq!(one.to_string(), "1 disk + rng");
        assert_eq!(two.to_string(), "2 disks + rng");
        assert_eq!(Devices::DISK_RUN.to_string(), "1 disk");
        assert_eq!(Devices::NONE.to_string(), "no devices");
    }

    #[test]
    fn disk_figures_are_rates_of_the_successful_measurements() {
        let summary = Summary::new(&records(LOG));
        let disk = |metric, subject| {
            summary
                .stats_with(metric, subject, 1, Devices::DISK_RUN)
                .unwrap()
        };
        // 314572800 bytes in 2 s: 157.3 MB/s (10^6 bytes).
        assert!((disk(Metric::DiskSeqRead, Subject::Ours).median - 157.2864).abs() < 1e-9);
        assert!((disk(Metric::DiskSeqWrite, Subject::Qemu).median - 104.8576).abs() < 1e-9);
        assert_eq!(disk(Metric::DiskRandRead, Subject::Ours).median, 1500.0);
        // The failed measurement (rc=1) is no sample.
        assert_eq!(disk(Metric::DiskRandRead, Subject::Qemu).n, 1);
        assert_eq!(summary.stats(Metric::DiskSeqRead, Subject::Ours, 1), None);
        assert!(Metric::DiskRandRead.higher_is_better());
        assert!(!Metric::Suspend.higher_is_better());
    }

    #[test]
    fn judges_the_goals() {
        let goals = Summary::new(&records(LOG)).goals();
        let met: Vec<_> = goals.iter().map(|goal| goal.met).collect();
        // Boot 0.5 x, memory 3 MiB and 0.03 x; cycles 2 x the floor and 2 x the 1-vCPU cycle
        // at 4 vCPUs (both over 1.5 x); idle 2 ms vs 200 ms, idle with a disk and the rng
        // 0 ms; disk throughput 1.5 x and 1.0 x QEMU's, but random reads 0.75 x; TCP 1.38 x
        // guest to host but 0.5 x host to guest; TCP round trips 0.75 x (mean) and 0.8 x (p99).
        assert_eq!(
            met,
            [
                Some(true),
                Some(true),
                Some(false),
                Some(false),
                Some(true),
                Some(true),
                Some(false),
                Some(false),
                Some(true),
                // No snapshot runs.
                None,
                None,
                None
            ]
        );
        assert_eq!(
            goals[7].measured,
            "TCP guest to host 1.38 x at 1 vCPU; TCP host to guest 0.50 x at 1 vCPU"
        );
        assert_eq!(
            goals[8].measured,
            "TCP round trip mean 0.75 x at 1 vCPU; TCP round trip p99 0.80 x at 1 vCPU"
        );
        assert_eq!(
            goals[6].measured,
            "seq read 1 MiB 1.50 x at 1 vCPU; seq write 1 MiB 1.00 x at 1 vCPU; \
             random read 4 KiB 0.75 x at 1 vCPU"
        );
        assert_eq!(
            goals[5].measured,
            "1 disk + rng: 0.0 ms vs 200.0 ms at 2 vCPUs"
        );
        let empty = Summary::new(&[]).goals();
        assert!(empty.iter().all(|goal| goal.met.is_none()));
    }

    #[test]
    fn table_and_json_carry_every_figure() {
        let summary = Summary::new(&records(LOG));
        let table = summary.markdown();
        assert!(table.contains("| boot to init, ms (vs QEMU) | 1 | 3100 [3000-3200] (2) | 6200 [6000-6400] (2) | 0.50 |"));
        assert!(table.contains("1 vCPU: 150 us vs 75.0 us (2.0 x)"));
        assert!(table.contains("**met**"));
        // Rows with devices sit next to the device-less ones, against those.
        let suspend_rows: Vec<&str> = table
            .lines()
            .filter(|line| line.starts_with("| suspend latency"))
            .collect();
        assert_eq!(
            suspend_rows,
            [
                "| suspend latency, us (vs ioctl floor) | 1 | 100 [100-100] (1) | 40.0 [40.0-40.0] (1) | 2.50 |",
                "| suspend latency, us (vs ioctl floor) | 4 | 200 [200-200] (1) | 100 [100-100] (1) | 2.00 |",
                "| suspend latency, us, 1 disk + rng (vs vmm without devices) | 1 | 110 [110-110] (1) | 100 [100-100] (1) | 1.10 |",
                "| suspend latency, us, 2 disks + rng (vs vmm without devices) | 1 | 130 [130-130] (1) | 100 [100-100] (1) | 1.30 |",
            ]
        );
        assert!(table.contains("| rtcwake -s 1 round trip - its 2 s alarm, deep, 1 disk + rng, ms (vs vmm without devices) | 1 | 300 [300-300] (1) | 250 [250-250] (1) | 1.20 |"));
        assert!(table.contains("| host CPU in 10 s of guest sleep, deep, 1 disk + rng, ms (vs QEMU s2idle) | 2 | 0.00 [0.00-0.00] (1) | 200 [200-200] (1) | 0.00 |"));
        assert!(table.contains("| disk: sequential 1 MiB reads, MB/s, higher is better (vs QEMU) | 1 | 157 [157-157] (1) | 105 [105-105] (1) | 1.50 |"));
        assert!(table.contains("| disk: random 4 KiB reads, IOPS, higher is better (vs QEMU) | 1 | 1500 [1500-1500] (1) | 2000 [2000-2000] (1) | 0.75 |"));
        assert!(table.contains("1 disk + rng at 1 vCPU: 170 us vs 150 us (1.13 x)"));
        assert!(table.contains("(disk and TCP throughput), above 1 is better"));
        assert!(table.contains("| net: TCP guest to host, MB/s, higher is better (vs QEMU) | 1 | 110 [100-120] (2) | 80.0 [80.0-80.0] (1) | 1.38 |"));
        assert!(table.contains("| net: TCP 1-byte round trip, p99, us (vs QEMU) | 1 | 400 [400-400] (1) | 500 [500-500] (1) | 0.80 |"));
        assert!(
            table.contains(
                "| vsock: 1-byte round trip, mean, us | 1 | 90.0 [90.0-90.0] (1) | - | - |"
            )
        );
        assert!(table.contains("Network: virtio-net on a host tap"));
        assert!(table.contains("cache=writeback,aio=threads (cache=none, O_DIRECT, was refused"));
        let json = summary.json("test machine");
        assert_eq!(json["date"], "2026-11-25T03:00:00Z");
        assert_eq!(json["failed_runs"], 1);
        let figures = json["figures"].as_array().unwrap();
        assert!(
            figures
                .iter()
                .any(|figure| figure["figure"] == "boot_to_init"
                    && figure["vmm"] == "qemu"
                    && figure["median"] == 6200.0)
        );
        assert!(
            figures
                .iter()
                .any(|figure| figure["figure"] == "disk_rand_read_4k"
                    && figure["vmm"] == "ours"
                    && figure["disks"] == 1
                    && figure["rng"] == false
                    && figure["higher_is_better"] == true
                    && figure["unit"] == "IOPS")
        );
        assert_eq!(json["qemu_drive"]["cache_none"], "refused");
        assert!(
            figures
                .iter()
                .any(|figure| figure["figure"] == "net_tcp_rr_p99"
                    && figure["vmm"] == "qemu"
                    && figure["higher_is_better"] == false
                    && figure["unit"] == "us"
                    && figure["median"] == 500.0)
        );
    }

    #[test]
    fn net_figures_are_medians_of_the_successful_measurements() {
        let summary = Summary::new(&records(LOG));
        let net = |metric, subject| summary.stats_with(metric, subject, 1, Devices::NET_RUN);
        // 500 and 600 MB in 5 s: 100 and 120 MB/s, from bytes and ns (not the rounded mbps).
        let ours = net(Metric::NetTcpGuestToHost, Subject::Ours).unwrap();
        assert_eq!((ours.n, ours.median, ours.min), (2, 110.0, 100.0));
        assert_eq!(
            net(Metric::NetTcpHostToGuest, Subject::Qemu)
                .unwrap()
                .median,
            100.0
        );
        assert_eq!(
            net(Metric::NetTcpRrMean, Subject::Ours).unwrap().median,
            150.0
        );
        // QEMU's failed round trips (rc=1) are no sample.
        assert_eq!(net(Metric::NetTcpRrP99, Subject::Qemu).unwrap().n, 1);
        assert_eq!(
            net(Metric::VsockRrP99, Subject::Ours).unwrap().median,
            300.0
        );
        assert_eq!(net(Metric::VsockRrMean, Subject::Qemu), None);
        // The TCP lines give no disk or boot figure, and vice versa.
        assert_eq!(net(Metric::NetTcpRrMean, Subject::Floor), None);
        assert_eq!(summary.stats(Metric::DiskSeqRead, Subject::Ours, 1), None);
        assert!(Metric::NetTcpHostToGuest.higher_is_better());
        assert!(!Metric::VsockRrMean.higher_is_better());
        let rows: Vec<_> = summary
            .rows()
            .into_iter()
            .filter(|row| row.what.starts_with("net: TCP host to guest"))
            .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ratio(), Some(0.5));
    }

    const SNAPSHOT_LOG: &str = "\
@@bench snapshot run=snapshot vmm=ours cpus=1 round=1 disks=0 rng=off memory_mib=256 rss_kb=60000 guest_rss_kb=51200 overhead_kb=8800 own_ms=90 save_ms=150 stored_kb=51300 restore_ms=40 running_ms=60 reached=done
@@bench snapshot run=snapshot vmm=ours cpus=1 round=2 disks=0 rng=off memory_mib=256 rss_kb=60000 guest_rss_kb=51200 overhead_kb=8800 own_ms=110 save_ms=170 stored_kb=51300 restore_ms=60 running_ms=80 reached=done
@@bench snapshot run=snapshot vmm=qemu cpus=1 round=1 disks=0 rng=off memory_mib=256 rss_kb=150000 guest_rss_kb=61440 overhead_kb=88560 save_ms=900 stored_kb=40960 restore_ms=700 running_ms=1000 reached=done
@@bench snapshot run=snapshot vmm=ours cpus=1 round=1 disks=0 rng=off memory_mib=2048 rss_kb=80000 guest_rss_kb=71680 overhead_kb=8320 own_ms=100 save_ms=160 stored_kb=75776 restore_ms=50 running_ms=140 reached=done
@@bench snapshot run=snapshot vmm=qemu cpus=1 round=1 disks=0 rng=off memory_mib=2048 rss_kb=160000 guest_rss_kb=71680 overhead_kb=88320 save_ms=4000 stored_kb=51200 restore_ms=2500 running_ms=2800 reached=done
@@bench snapshot run=snapshot vmm=qemu cpus=1 round=2 disks=0 rng=off memory_mib=2048 rss_kb=160000 guest_rss_kb=71680 overhead_kb=88320 save_ms=4200 stored_kb=51200 reached=saved
@@bench fail run=snapshot vmm=qemu cpus=1 round=2 disks=0 rng=off memory_mib=2048 reached=saved
";

    #[test]
    fn snapshot_figures_are_per_guest_size_beside_qemu() {
        let summary = Summary::new(&records(SNAPSHOT_LOG));
        let size = |memory_mib| Devices {
            memory_mib,
            ..Devices::NONE
        };
        let (small, large) = (size(256), size(2048));
        assert_eq!(summary.snapshot_sizes(), [small, large]);
        assert_eq!(summary.failures, 1);
        let stats = |metric, subject, size| summary.stats_with(metric, subject, 1, size).unwrap();
        assert_eq!(
            stats(Metric::RestoreRunning, Subject::Ours, small).median,
            70.0
        );
        assert_eq!(
            stats(Metric::SnapshotStored, Subject::Ours, large).median,
            74.0
        );
        assert_eq!(
            stats(Metric::SnapshotTouched, Subject::Qemu, small).median,
            60.0
        );
        // A run that got no further than the save gives its save figures only.
        assert_eq!(stats(Metric::SnapshotSave, Subject::Qemu, large).n, 2);
        assert_eq!(stats(Metric::RestoreRunning, Subject::Qemu, large).n, 1);
        // They are no boot or memory-overhead figures, and nothing device-less.
        assert_eq!(
            summary.stats(Metric::MemoryOverhead, Subject::Ours, 1),
            None
        );
        assert!(
            summary
                .device_sets(Metric::Suspend, Subject::Ours)
                .is_empty()
        );

        let rows = summary.rows();
        let row = |what: &str| rows.iter().find(|row| row.what == what).unwrap();
        let restore =
            row("snapshot of a 2048 MiB guest: restore to running after wake, ms (vs QEMU)");
        assert_eq!(restore.ratio(), Some(0.05));
        let own = row("snapshot of a 256 MiB guest: save, vmm's own figure, ms");
        assert_eq!((own.ours.unwrap().median, own.peer), (100.0, None));
        assert_eq!(rows.len(), 12);

        let goals = summary.goals();
        let snapshot = &goals[goals.len() - 3..];
        // Restore 70 ms vs 1000 ms (0.07 x) and 140 vs 2800 (0.05 x); 2 x from 256 MiB to
        // 2 GiB; stored 50.1 MiB for 50 touched, and 74 for 70.
        let met: Vec<_> = snapshot.iter().map(|goal| goal.met).collect();
        assert_eq!(met, [Some(true), Some(false), Some(false)]);
        assert_eq!(
            snapshot[0].measured,
            "70.0 ms, 0.07 x QEMU at 256 MiB; 140 ms, 0.05 x QEMU at 2048 MiB"
        );
        assert_eq!(snapshot[1].measured, "2.00 x at 2048 MiB vs 256 MiB");
        assert_eq!(
            snapshot[2].measured,
            "50.1 MiB stored, 50.0 MiB touched at 256 MiB; 74.0 MiB stored, 70.0 MiB touched at 2048 MiB"
        );
        let table = summary.markdown();
        assert!(table.contains(
            "| snapshot of a 256 MiB guest: stored on disk, MiB (vs QEMU's file) | 1 | 50.1 [50.1-50.1] (2) | 40.0 [40.0-40.0] (1) | 1.25 |"
        ));
        let json = summary.json("test");
        assert_eq!(json["figures"][0]["memory_mib"], 256);
    }
}
