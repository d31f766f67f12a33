//! `testbed`: runs the project's KVM scenarios on real arm64 KVM.
//!
//! On an x86-64 machine it boots an emulated arm64 host (QEMU TCG with EL2 and a GICv3), whose
//! Debian kernel has `/dev/kvm`, from an initramfs holding busybox, the cross-built aarch64
//! binaries and the scenario scripts. The host boots one of the pinned kernels of
//! `resources/kernels.pin` (`--host-kernel`, 7 by default; `all` boots each in turn); the
//! nested guests always run the pinned 6.1. It streams the host's serial console to a log,
//! enforces each scenario's time limit, and parses the result lines. On a native arm64 host
//! with `/dev/kvm` it runs the same scenario scripts directly, on that machine's own kernel.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use testbed::artefacts::{self, Artefacts, HostKernel, KernelName};
use testbed::report::{self, KernelRun};
use testbed::scenarios::{self, Scenario};
use testbed::{console, initramfs};

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
    /// every one for `all`. With `--host-kernel all`, one boot per pinned kernel.
    Run {
        /// Scenario names.
        scenarios: Vec<String>,
        /// The unpacked arm64 artefacts (kernel, modules, busybox) from scripts/setup.sh.
        #[arg(long, env = "VMM_ARTEFACTS")]
        artefacts: Option<PathBuf>,
        /// The emulated host's kernel (resources/kernels.pin), or `all` to run the scenarios
        /// on each in turn; the nested guests run 6.1 either way.
        #[arg(long, default_value = "7", value_parser = host_kernels())]
        host_kernel: HostKernels,
        /// Where the initramfs, logs and results go, in `host-KERNEL/` for each host kernel.
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
        /// The emulated host's kernel (resources/kernels.pin); the guest runs 6.1.
        #[arg(long, value_enum, default_value_t = KernelName::V7)]
        host_kernel: KernelName,
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
        /// The emulated host's kernel, whose modules the tree holds.
        #[arg(long, value_enum, default_value_t = KernelName::V7)]
        host_kernel: KernelName,
        /// Where the staged tree and the initramfs go.
        #[arg(long, default_value = "target/testbed")]
        work_dir: PathBuf,
    },
}

/// The pinned kernels `run --host-kernel` names: one, or every one for `all`.
#[derive(Clone, Debug)]
struct HostKernels(Vec<KernelName>);

/// Parses `--host-kernel`: a pinned kernel's name or `all`, listed in `--help`.
fn host_kernels() -> impl TypedValueParser<Value = HostKernels> {
    let names: Vec<&'static str> = KernelName::ALL
        .iter()
        .map(|kernel| kernel.name())
        .chain(["all"])
        .collect();
    PossibleValuesParser::new(names).map(|name| {
        HostKernels(
            KernelName::ALL
                .into_iter()
                .filter(|kernel| name == "all" || kernel.name() == name)
                .collect(),
        )
    })
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    report::exit_code("testbed", run(cli))
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
            host_kernel,
            work_dir,
            time_scale,
            emulate,
        } => {
            let selected = select(&names)?;
            let artefacts = Artefacts::locate(artefacts)?;
            if !emulate && console::native_kvm_host() {
                println!(
                    "testbed: native arm64 KVM host: the scenarios run on this machine's own kernel (--host-kernel does not apply)"
                );
                let staged = initramfs::stage(&work_dir, &artefacts, None, &selected, time_scale)?;
                let outcome = console::run_native(&staged, &work_dir)?;
                let totals = report::summarise(&selected, &outcome, None, &mut std::io::stdout());
                return Ok(totals.ok);
            }
            // Every kernel is found before the first boot, so a missing one fails at once.
            let hosts = host_kernel
                .0
                .iter()
                .map(|&name| HostKernel::locate(&artefacts.dir, name))
                .collect::<Result<Vec<_>, _>>()?;
            let mut runs = Vec::new();
            for host in &hosts {
                let started = Instant::now();
                let dir = work_dir.join(format!("host-{}", host.name));
                let staged = initramfs::stage(&dir, &artefacts, Some(host), &selected, time_scale)?;
                let image = initramfs::pack(&staged)?;
                let outcome = console::run_emulated(host, &image, &staged, &dir)?;
                let totals = report::summarise(
                    &selected,
                    &outcome,
                    Some(host.name.name()),
                    &mut std::io::stdout(),
                );
                runs.push(KernelRun {
                    name: host.name.to_string(),
                    release: outcome.host_release().map(str::to_owned),
                    totals,
                    elapsed: started.elapsed(),
                });
            }
            if runs.len() > 1 {
                Ok(report::summarise_kernels(&runs, &mut std::io::stdout()))
            } else {
                Ok(runs.iter().all(|run| run.totals.ok))
            }
        }
        Command::Shell {
            artefacts,
            host_kernel,
            work_dir,
            emulate,
        } => {
            let artefacts = Artefacts::locate(artefacts)?;
            let native = !emulate && console::native_kvm_host();
            let host = if native {
                None
            } else {
                Some(HostKernel::locate(&artefacts.dir, host_kernel)?)
            };
            let staged = initramfs::stage_shell(&work_dir, &artefacts, host.as_ref())?;
            match host {
                None => {
                    println!("testbed: running vmm on this arm64 KVM host with the guest's shell.");
                    println!(
                        "testbed: if you get stuck, stop vmm from another terminal (kill PID: SIGTERM stops it cleanly)."
                    );
                    Ok(console::shell_native(&staged)?)
                }
                Some(host) => {
                    let image = initramfs::pack(&staged)?;
                    println!(
                        "testbed: booting the emulated arm64 host (QEMU TCG, host kernel {}) on this terminal; it runs vmm with the guest's shell (about a minute).",
                        host.name
                    );
                    println!(
                        "testbed: if you get stuck, press Ctrl-A then x to quit QEMU (Ctrl-C goes to the guest)."
                    );
                    Ok(console::shell_emulated(&host, &image)?)
                }
            }
        }
        Command::Stage {
            scenarios: names,
            artefacts,
            host_kernel,
            work_dir,
        } => {
            let selected = select(&names)?;
            let artefacts = Artefacts::locate(artefacts)?;
            let host = HostKernel::locate(&artefacts.dir, host_kernel)?;
            let staged = initramfs::stage(&work_dir, &artefacts, Some(&host), &selected, 1.0)?;
            let image = initramfs::pack(&staged)?;
            println!("staged tree: {}", staged.root.display());
            println!("initramfs:   {}", image.display());
            Ok(true)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host_kernels_of(args: &[&str]) -> Result<Vec<KernelName>, clap::Error> {
        let cli = Cli::try_parse_from(["testbed", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run { host_kernel, .. } => Ok(host_kernel.0),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn host_kernel_defaults_to_7_and_takes_each_pin_or_all() {
        assert_eq!(host_kernels_of(&[]).unwrap(), [KernelName::V7]);
        assert_eq!(
            host_kernels_of(&["--host-kernel", "6.1", "kvm-smoke"]).unwrap(),
            [KernelName::V6_1]
        );
        assert_eq!(
            host_kernels_of(&["--host-kernel=6.12"]).unwrap(),
            [KernelName::V6_12]
        );
        assert_eq!(
            host_kernels_of(&["--host-kernel", "all"]).unwrap(),
            KernelName::ALL
        );
        assert!(host_kernels_of(&["--host-kernel", "6"]).is_err());
        let cli = Cli::try_parse_from(["testbed", "shell", "--host-kernel", "6.1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Shell {
                host_kernel: KernelName::V6_1,
                ..
            }
        ));
    }
}
