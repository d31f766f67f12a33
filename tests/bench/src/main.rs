//! `bench`: our `vmm` side by side with QEMU (KVM) in one boot of the testbed's emulated
//! arm64 host, with the bare ioctl floor of a suspend cycle next to them.
//!
//! The host runs `scenarios/bench.sh`, which alternates the VMMs over the same guest kernel,
//! initramfs and command line for a number of rounds and prints one `@@bench` line per figure.
//! This binary stages it with the testbed library, adding QEMU and the optimised binaries
//! ([`artefacts`]), then reads the console log back ([`parse`]), sorts it into medians, minima
//! and maxima and judges the goals ([`summary`]), prints the table and writes `results.json`
//! and `results.svg` ([`plot`]). Figures from an emulated host are only comparable with each
//! other: every goal is a ratio within one run.

mod artefacts;
mod parse;
mod plot;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use testbed::artefacts::{ArtefactError, Artefacts, HostKernel, KernelName};
use testbed::console::{self, ConsoleError};
use testbed::initramfs::{self, InitramfsError};
use testbed::report;
use testbed::scenarios::{Scenario, Steps};

use crate::artefacts::{BenchArtefacts, MissingArtefact};

/// The most rounds a run may ask for; each takes about five minutes here.
const MAX_ROUNDS: u32 = 50;
/// A generous time limit per round inside the host (a full round took about 250 s on an
/// idle 2-core machine before the network runs, which add about a minute, and three times as
/// long on a busy one).
const ROUND_LIMIT: Duration = Duration::from_secs(1080);

/// The measurements of a round, which `bench --only` picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Boot to init and memory overhead, ours and QEMU.
    Boot,
    /// Host CPU while the guest sleeps, and the rtcwake round trips: ours deep, ours s2idle,
    /// QEMU.
    Idle,
    /// Our suspend and resume latencies at 1 to 8 vCPUs, without devices.
    Suspend,
    /// The ioctl floor of a suspend cycle.
    Floor,
    /// Disk throughput in the guest, ours and QEMU (virtio-blk on a raw image).
    Disk,
    /// Network in the guest, ours and QEMU (virtio-net on a tap): TCP throughput both ways
    /// and TCP round trips; and ours' vsock round trips.
    Net,
    /// Ours with disks and the rng attached: suspend and resume latencies, and the idle cost.
    Devices,
    /// Saving a suspended guest and restoring it, asleep and to running, ours and QEMU
    /// (migration to a file), at two guest RAM sizes.
    Snapshot,
}

impl Part {
    /// Every part.
    pub const ALL: [Self; 8] = [
        Self::Boot,
        Self::Idle,
        Self::Suspend,
        Self::Floor,
        Self::Disk,
        Self::Net,
        Self::Devices,
        Self::Snapshot,
    ];

    /// Its name in the plan (`PARTS`), as `--only` takes it.
    fn name(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Idle => "idle",
            Self::Suspend => "suspend",
            Self::Floor => "floor",
            Self::Disk => "disk",
            Self::Net => "net",
            Self::Devices => "devices",
            Self::Snapshot => "snapshot",
        }
    }
}

/// Failures of the benchmark runner, as opposed to runs that failed inside the host.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The round count is out of range.
    #[error("Invalid round count {0}: must be 1 to {MAX_ROUNDS}")]
    Rounds(u32),
    /// The testbed's artefacts are missing.
    #[error(transparent)]
    Artefacts(#[from] ArtefactError),
    /// QEMU or an optimised binary is missing.
    #[error(transparent)]
    BenchArtefacts(#[from] MissingArtefact),
    /// The initramfs could not be assembled.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// The host could not be booted or watched.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The console log could not be read.
    #[error("Cannot read the console log {path}")]
    ReadLog {
        /// The log.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The log holds no figures at all.
    #[error("The console log {0} has no benchmark figures")]
    NoFigures(PathBuf),
    /// An output file could not be written.
    #[error("Cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

/// Benchmarks vmm against QEMU in one boot of the emulated host (scripts/bench.sh): prints a
/// table, writes results.json and results.svg.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// Repetitions of every measurement, alternating the VMMs.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Runs only these measurements (comma-separated), e.g. `--only disk,devices` for the
    /// disk-throughput and with-devices rows; all of them by default.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART")]
    only: Vec<Part>,
    /// The unpacked arm64 artefacts, QEMU's included (scripts/setup-bench.sh).
    #[arg(long, env = "VMM_ARTEFACTS")]
    artefacts: Option<PathBuf>,
    /// The emulated host's kernel (resources/kernels.pin); the guests run 6.1.
    #[arg(long, value_enum, default_value_t = KernelName::V7)]
    host_kernel: KernelName,
    /// Where the initramfs and the console log go.
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Where results.json and results.svg go.
    #[arg(long, default_value = "bench")]
    out_dir: PathBuf,
    /// Multiplies every time limit, for slow machines.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Forces the emulated host even on a native arm64 KVM host.
    #[arg(long)]
    emulate: bool,
    /// Re-reads the console log of an earlier run instead of running.
    #[arg(long, value_name = "LOG")]
    from_log: Option<PathBuf>,
    /// Profiles the suspend and resume paths with ftrace instead of benchmarking.
    #[arg(long)]
    profile: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    report::exit_code("bench", run(&cli))
}

/// The plan for `scenarios/bench.sh`, as shell assignments: `parts` (all when empty) at
/// `rounds` rounds.
///
/// The disk-throughput image (raw, 256 MiB, in the emulated host's tmpfs /tmp, next to up to
/// two 16 MiB images for the `devices` runs) is sized to leave the 3 GiB host room for the
/// staged initramfs (about 0.3 GiB, in RAM too) and a 256 MiB guest with its VMM. The network
/// runs measure `NET_SECONDS` of TCP each way and `NET_RR_COUNT` round trips at 1 vCPU. The
/// snapshot runs boot 256 MiB and 2 GiB guests: the host's 3 GiB hold the larger, as the guest
/// touches little of it, and the sparse snapshot (ours) or migration file (QEMU) in tmpfs holds
/// only what it touched.
fn plan_env(rounds: u32, time_scale: f64, parts: &[Part]) -> String {
    let run_limit = (240.0 * time_scale).ceil() as u64;
    let parts = if parts.is_empty() {
        &Part::ALL[..]
    } else {
        parts
    };
    let parts: Vec<&str> = Part::ALL
        .iter()
        .filter(|part| parts.contains(part))
        .map(|part| part.name())
        .collect();
    let parts = parts.join(" ");
    format!(
        "# Written by `bench`.\n\
         ROUNDS={rounds}\n\
         PARTS=\"{parts}\"\n\
         MEMORY=256\n\
         BOOT_CPUS=\"1 4\"\n\
         SUSPEND_CPUS=\"1 2 4 8\"\n\
         SUSPEND_CYCLES=2\n\
         IDLE_CPUS=2\n\
         IDLE_TRIPS=1\n\
         IDLE_SETTLE=3\n\
         IDLE_WINDOW=10\n\
         FLOOR_CYCLES=10\n\
         DISK_CPUS=1\n\
         DISK_IMAGE_MIB=256\n\
         DISK_SECONDS=4\n\
         NET_CPUS=1\n\
         NET_SECONDS=5\n\
         NET_RR_COUNT=2000\n\
         DEVICE_DISK_MIB=16\n\
         DEVICE_SUSPEND_CPUS=\"1 2\"\n\
         DEVICE_DISKS=\"1 2\"\n\
         SNAPSHOT_MIB=\"256 2048\"\n\
         SNAPSHOT_CPUS=1\n\
         RUN_LIMIT={run_limit}\n"
    )
}

fn scenario(rounds: u32) -> Scenario {
    Scenario {
        name: "bench",
        description: "vmm and QEMU side by side: boot, memory, suspend/resume, idle cost, disk, net, snapshot",
        timeout: ROUND_LIMIT * rounds + Duration::from_secs(60),
        steps: Steps::Script(include_str!("../scenarios/bench.sh")),
        default: false,
    }
}

fn profile_scenario() -> Scenario {
    Scenario {
        name: "bench-profile",
        description: "ftrace of the suspend and resume paths of vmm and of the ioctl floor",
        timeout: Duration::from_secs(900),
        steps: Steps::Script(include_str!("../scenarios/bench-profile.sh")),
        default: false,
    }
}

/// Runs the benchmark (or reads an earlier run's log), prints the table and writes the
/// results. Returns whether every run inside the host succeeded.
fn run(options: &Cli) -> Result<bool, BenchError> {
    if !(1..=MAX_ROUNDS).contains(&options.rounds) {
        return Err(BenchError::Rounds(options.rounds));
    }
    let (log, ran_ok) = match &options.from_log {
        Some(log) => (log.clone(), true),
        None => (options.work_dir.join("console.log"), execute(options)?),
    };
    let text = std::fs::read_to_string(&log).map_err(|source| BenchError::ReadLog {
        path: log.clone(),
        source,
    })?;
    if options.profile {
        println!("\nprofile of the suspend and resume paths (ftrace; spans in us):");
        for line in text
            .lines()
            .filter_map(|line| line.split_once("@@profile "))
        {
            println!("  {}", line.1);
        }
        return Ok(ran_ok);
    }
    let summary = summary::Summary::new(&parse::records(&text));
    if summary.samples.is_empty() {
        return Err(BenchError::NoFigures(log));
    }

    let machine = machine();
    println!(
        "\nbenchmark: {machine}; emulated arm64 host {:?}",
        summary.host
    );
    println!("{}", summary.markdown());
    std::fs::create_dir_all(&options.out_dir).map_err(|source| BenchError::Write {
        path: options.out_dir.clone(),
        source,
    })?;
    let json_path = options.out_dir.join("results.json");
    let json = serde_json::to_string_pretty(&summary.json(&machine)).unwrap_or_default() + "\n";
    std::fs::write(&json_path, json).map_err(|source| BenchError::Write {
        path: json_path.clone(),
        source,
    })?;
    let svg_path = options.out_dir.join("results.svg");
    plot::draw(&summary, &svg_path)?;
    println!(
        "benchmark: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );
    if summary.failures > 0 {
        println!(
            "benchmark: {} runs failed; see {}",
            summary.failures,
            log.display()
        );
    }
    Ok(ran_ok && summary.failures == 0)
}

/// Stages the host with QEMU and the optimised binaries, and runs the scenario.
fn execute(options: &Cli) -> Result<bool, BenchError> {
    let artefacts = Artefacts::locate(options.artefacts.clone())?;
    let bench = BenchArtefacts::locate(&artefacts.dir)?;
    let artefacts = Artefacts {
        vmm: Some(bench.vmm.clone()),
        // The benchmark boots the default guest only: a smaller initramfs to stage and boot.
        newest_guest: None,
        ..artefacts
    };
    let scenario = if options.profile {
        profile_scenario()
    } else {
        scenario(options.rounds)
    };
    let scenarios = [scenario];
    let host = if !options.emulate && console::native_kvm_host() {
        None
    } else {
        Some(HostKernel::locate(&artefacts.dir, options.host_kernel)?)
    };
    let staged = initramfs::stage(
        &options.work_dir,
        &artefacts,
        host.as_ref(),
        &scenarios,
        options.time_scale,
    )?;
    bench.stage(
        &staged,
        &plan_env(options.rounds, options.time_scale, &options.only),
    )?;
    let outcome = match &host {
        None => console::run_native(&staged, &options.work_dir)?,
        Some(host) => {
            let image = initramfs::pack(&staged)?;
            console::run_emulated(host, &image, &staged, &options.work_dir)?
        }
    };
    let host_name = host.as_ref().map(|host| host.name.name());
    Ok(report::summarise(&scenarios, &outcome, host_name, &mut std::io::stdout()).ok)
}

/// What this machine is, for the results: architecture, cores and CPU model.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string(Path::new("/proc/cpuinfo"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} with {cores} cores ({model})", std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_shell_assignments_with_scaled_limits() {
        let env = plan_env(5, 1.5, &[]);
        assert!(env.contains("ROUNDS=5\n"));
        assert!(env.contains("PARTS=\"boot idle suspend floor disk net devices snapshot\"\n"));
        assert!(env.contains("SNAPSHOT_MIB=\"256 2048\"\nSNAPSHOT_CPUS=1\n"));
        assert!(env.contains("NET_CPUS=1\nNET_SECONDS=5\nNET_RR_COUNT=2000\n"));
        assert!(env.contains("SUSPEND_CPUS=\"1 2 4 8\"\n"));
        assert!(env.contains("RUN_LIMIT=360\n"));
        assert_eq!(scenario(5).timeout, Duration::from_secs(5 * 1080 + 60));
        // --only keeps the round's order, whatever order it was given in.
        let env = plan_env(1, 1.0, &[Part::Devices, Part::Net, Part::Disk]);
        assert!(env.contains("PARTS=\"disk net devices\"\n"));
        let env = plan_env(1, 1.0, &[Part::Net]);
        assert!(env.contains("PARTS=\"net\"\n"));
    }

    #[test]
    fn rejects_bad_round_counts_before_touching_anything() {
        let cli = Cli::try_parse_from([
            "bench",
            "--rounds",
            "0",
            "--artefacts",
            "/nonexistent",
            "--work-dir",
            "/nonexistent",
            "--out-dir",
            "/nonexistent",
        ])
        .unwrap();
        assert!(matches!(run(&cli), Err(BenchError::Rounds(0))));
    }

    #[test]
    fn takes_one_pinned_host_kernel_and_parts_by_name() {
        let cli =
            Cli::try_parse_from(["bench", "--host-kernel", "6.1", "--only", "net,disk"]).unwrap();
        assert_eq!(cli.host_kernel, KernelName::V6_1);
        assert_eq!(cli.only, [Part::Net, Part::Disk]);
        assert!(Cli::try_parse_from(["bench", "--host-kernel", "all"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--only", "cpu"]).is_err());
    }
}
