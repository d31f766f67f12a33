//! `testbed`: runs the project's KVM scenarios on real arm64 KVM.
//!
//! On an x86-64 machine it boots an emulated arm64 host (QEMU TCG with EL2 and a GICv3), whose
//! Debian kernel has `/dev/kvm`, from an initramfs holding busybox, the cross-built aarch64
//! binaries and the scenario scripts. It streams the host's serial console to a log, enforces
//! each scenario's time limit, and parses the result lines. On a native arm64 host with
//! `/dev/kvm` it runs the same scenario scripts directly.

mod artefacts;
mod bench;
mod console;
mod initramfs;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::artefacts::Artefacts;
use crate::scenarios::Scenario;

/// Runs KVM scenarios inside an emulated arm64 host, or natively on one.
#[derive(Debug, Parser)]
#[command(name = "testbed", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the scenarios.
    List,
    /// Runs scenarios in one boot of the emulated host: the default set when none is named,
    /// every one for `all`.
    Run {
        /// Scenario names.
        scenarios: Vec<String>,
        /// The unpacked arm64 artefacts (kernel, modules, busybox) from scripts/setup.sh.
        #[arg(long, env = "VMM_ARTEFACTS")]
        artefacts: Option<PathBuf>,
        /// Where the initramfs, logs and results go.
        #[arg(long, default_value = "target/testbed")]
        work_dir: PathBuf,
        /// Multiplies every time limit, for slow machines.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Forces the emulated host even on a native arm64 KVM host.
        #[arg(long)]
        emulate: bool,
    },
    /// Boots the emulated host with its console on this terminal and runs vmm in it, in the
    /// foreground, with the guest's root disk and its shell (scripts/run.sh on a terminal);
    /// returns when the guest powers off. Natively on an arm64 KVM host, runs vmm directly.
    Shell {
        /// The unpacked arm64 artefacts (kernel, modules, busybox) from scripts/setup.sh.
        #[arg(long, env = "VMM_ARTEFACTS")]
        artefacts: Option<PathBuf>,
        /// Where the staged tree and the initramfs go.
        #[arg(long, default_value = "target/testbed-shell")]
        work_dir: PathBuf,
        /// Forces the emulated host even on a native arm64 KVM host.
        #[arg(long)]
        emulate: bool,
    },
    /// Stages and packs what `run` would boot, without booting it, to inspect the tree and
    /// the nested guest's images.
    Stage {
        /// Scenario names, as for `run`.
        scenarios: Vec<String>,
        /// The unpacked arm64 artefacts (kernel, modules, busybox) from scripts/setup.sh.
        #[arg(long, env = "VMM_ARTEFACTS")]
        artefacts: Option<PathBuf>,
        /// Where the staged tree and the initramfs go.
        #[arg(long, default_value = "target/testbed")]
        work_dir: PathBuf,
    },
    /// Benchmarks vmm against QEMU in one boot of the emulated host (scripts/bench.sh):
    /// prints a table, writes results.json and results.svg.
    Bench {
        /// Repetitions of every measurement, alternating the VMMs.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Runs only these measurements (comma-separated), e.g. `--only disk,devices` for the
        /// disk-throughput and with-devices rows; all of them by default.
        #[arg(long, value_enum, value_delimiter = ',', value_name = "PART")]
        only: Vec<bench::Part>,
        /// The unpacked arm64 artefacts, QEMU's included (scripts/setup-bench.sh).
        #[arg(long, env = "VMM_ARTEFACTS")]
        artefacts: Option<PathBuf>,
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
    },
}

/// Failures of the runner itself, as opposed to failing scenarios.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A named scenario does not exist.
    #[error("Unknown scenario {0:?} (see `testbed list`)")]
    UnknownScenario(String),
    /// The artefacts are missing or incomplete.
    #[error(transparent)]
    Artefacts(#[from] artefacts::ArtefactError),
    /// The initramfs could not be assembled.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// The host could not be booted or watched.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    /// The benchmark could not run or report.
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("testbed: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool, TestbedError> {
    match cli.command {
        Command::List => {
            for scenario in scenarios::all() {
                println!("{:<24} {}", scenario.name, scenario.description);
            }
            Ok(true)
        }
        Command::Run {
            scenarios: names,
            artefacts,
            work_dir,
            time_scale,
            emulate,
        } => {
            let selected = select(&names)?;
            let artefacts = Artefacts::locate(artefacts)?;
            let staged = initramfs::stage(&work_dir, &artefacts, &selected, time_scale)?;
            let native = !emulate && console::native_kvm_host();
            let outcome = if native {
                console::run_native(&staged, &work_dir)?
            } else {
                let image = initramfs::pack(&staged)?;
                console::run_emulated(&artefacts, &image, &staged, &work_dir)?
            };
            Ok(report::summarise(
                &selected,
                &outcome,
                &mut std::io::stdout(),
            ))
        }
        Command::Shell {
            artefacts,
            work_dir,
            emulate,
        } => {
            let artefacts = Artefacts::locate(artefacts)?;
            let staged = initramfs::stage_shell(&work_dir, &artefacts)?;
            if !emulate && console::native_kvm_host() {
                println!("testbed: running vmm on this arm64 KVM host with the guest's shell.");
                println!(
                    "testbed: if you get stuck, stop vmm from another terminal (kill PID: SIGTERM stops it cleanly)."
                );
                Ok(console::shell_native(&staged)?)
            } else {
                let image = initramfs::pack(&staged)?;
                println!(
                    "testbed: booting the emulated arm64 host (QEMU TCG) on this terminal; it runs vmm with the guest's shell (about a minute)."
                );
                println!(
                    "testbed: if you get stuck, press Ctrl-A then x to quit QEMU (Ctrl-C goes to the guest)."
                );
                Ok(console::shell_emulated(&artefacts, &image)?)
            }
        }
        Command::Stage {
            scenarios: names,
            artefacts,
            work_dir,
        } => {
            let selected = select(&names)?;
            let artefacts = Artefacts::locate(artefacts)?;
            let staged = initramfs::stage(&work_dir, &artefacts, &selected, 1.0)?;
            let image = initramfs::pack(&staged)?;
            println!("staged tree: {}", staged.root.display());
            println!("initramfs:   {}", image.display());
            Ok(true)
        }
        Command::Bench {
            rounds,
            only,
            artefacts,
            work_dir,
            out_dir,
            time_scale,
            emulate,
            from_log,
            profile,
        } => Ok(bench::run(bench::BenchOptions {
            artefacts,
            work_dir,
            out_dir,
            rounds,
            only,
            time_scale,
            emulate,
            from_log,
            profile,
        })?),
    }
}

fn select(names: &[String]) -> Result<Vec<Scenario>, TestbedError> {
    let all = scenarios::all();
    if names.is_empty() {
        return Ok(all
            .into_iter()
            .filter(|scenario| scenario.default)
            .collect());
    }
    if names.iter().any(|name| name == "all") {
        return Ok(all);
    }
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|scenario| scenario.name == name)
                .cloned()
                .ok_or_else(|| TestbedError::UnknownScenario(name.clone()))
        })
        .collect()
}
