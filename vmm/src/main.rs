//! `vmm`: boots an arm64 Linux guest on KVM with a serial console on this terminal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use vmm::{ExitReason, VmConfig, VmmError};

/// Boots an arm64 Linux guest on KVM; its serial console is this terminal.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about)]
struct Cli {
    /// Uncompressed arm64 kernel Image.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initramfs to load.
    #[arg(long, value_name = "FILE")]
    initramfs: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0].
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Guest memory in MiB [default: 512].
    #[arg(long, value_name = "MiB")]
    memory: Option<u64>,
    /// Exit when the guest reboots instead of booting it again.
    #[arg(long)]
    no_reboot: bool,
    /// Do not offer suspend-to-RAM (PSCI SYSTEM_SUSPEND) to the guest; it keeps s2idle.
    #[arg(long)]
    no_suspend: bool,
    /// JSON file with the same settings; flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

impl Cli {
    fn into_config(self) -> Result<VmConfig, VmmError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::new(""),
        };
        if let Some(kernel) = self.kernel {
            config.kernel = kernel;
        }
        if self.initramfs.is_some() {
            config.initramfs = self.initramfs;
        }
        if let Some(cmdline) = self.cmdline {
            config.cmdline = cmdline;
        }
        if let Some(cpus) = self.cpus {
            config.cpus = cpus;
        }
        if let Some(memory) = self.memory {
            config.memory_mib = memory;
        }
        config.no_reboot |= self.no_reboot;
        if self.no_suspend {
            config.suspend = false;
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .format_timestamp_millis()
        .init();

    let result = cli
        .into_config()
        .map_err(std::sync::Arc::new)
        .and_then(|config| vmm::run(&config));
    match result {
        Ok(ExitReason::Error(message)) => {
            eprintln!("vmm: {message}");
            ExitCode::FAILURE
        }
        Ok(ExitReason::GuestCrash) => {
            eprintln!("vmm: the guest crashed");
            ExitCode::FAILURE
        }
        Ok(reason) => {
            log::info!("VM stopped: {reason:?}");
            ExitCode::from(reason.exit_code())
        }
        Err(err) => {
            eprintln!("vmm: {}", vmm::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
