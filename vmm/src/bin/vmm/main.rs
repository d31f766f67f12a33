//! `vmm`: boots an arm64 Linux guest on KVM with a serial console on this terminal, and
//! `vmm ctl` drives a running one through its API socket.

mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use vmm::api::{ApiServer, ApiServerOptions, VmRouter};
use vmm::seccomp::{SeccompMode, Thread};
use vmm::{
    ConfigError, CpuPowerMode, DiskConfig, ExitReason, NetConfig, PsciVersion, Vm, VmConfig,
    VmmError, VsockConfig,
};

/// Boots an arm64 Linux guest on KVM; its serial console is this terminal.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 when the guest powered off, was saved to a snapshot (vm.snapshot with \"then\": \"exit\") or vmm was stopped; 1 on an error or a guest crash; 2 on bad usage; 3 when the guest hibernated."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drives a running vmm through its API socket.
    Ctl(ctl::CtlArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
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
    /// A virtio-blk disk on a raw image: path=FILE[,readonly=on][,id=NAME]. Repeat for more
    /// disks; the guest sees them as vda, vdb, ... in this order.
    #[arg(long, value_name = "path=FILE[,readonly=on][,id=NAME]")]
    disk: Vec<String>,
    /// Do not give the guest a virtio-rng entropy device.
    #[arg(long)]
    no_rng: bool,
    /// A virtio-net device on a host tap, opened or created (CAP_NET_ADMIN); with ip= and
    /// mask=, vmm gives the host side that address and brings the tap up. Repeat for more
    /// devices (eth0, eth1, ... in the guest).
    #[arg(long, value_name = "tap=NAME[,ip=ADDR,mask=MASK][,mac=MAC]")]
    net: Vec<String>,
    /// A virtio-vsock device: host programs connect to the Unix socket PATH and send
    /// "CONNECT <port>\n"; the guest reaches the host's port P at PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    vsock: Option<String>,
    /// Serve the control API (HTTP/1.1, JSON) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// JSON file with the same settings; flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// seccomp filters on every thread: what a system call outside a thread's list does
    /// [default: on].
    #[arg(long, value_name = "MODE")]
    seccomp: Option<SeccompArg>,
    /// Who keeps the vCPUs' PSCI power states [default: auto]: vmm needs a host whose KVM
    /// forwards PSCI calls (Linux 6.4+), so that a suspend decision stops no vCPU; kvm is the
    /// fallback; auto picks vmm when the host allows.
    #[arg(long, value_name = "KEEPER")]
    cpu_power: Option<CpuPowerArg>,
    /// Restore a guest saved by `vm.snapshot` (`vmm ctl snapshot DIR`) from DIR: it comes back
    /// suspended, and its next wakeup resumes it. The machine is the snapshot's; only the API
    /// socket, logging and seccomp are set here.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = [
            "kernel", "initramfs", "cmdline", "cpus", "memory", "no_reboot", "no_suspend",
            "disk", "no_rng", "net", "vsock", "config", "cpu_power", "psci_version",
        ]
    )]
    restore: Option<PathBuf>,
    /// Lower the PSCI version the guest sees, e.g. 1.1 (below 1.3 the guest cannot hibernate
    /// through SYSTEM_OFF2; below 1.0 it has no SYSTEM_SUSPEND). Default: what KVM offers.
    #[arg(long, value_name = "MAJOR.MINOR")]
    psci_version: Option<PsciVersion>,
}

/// The values of `--cpu-power`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum CpuPowerArg {
    /// vmm when the host's KVM can forward PSCI calls, KVM otherwise.
    Auto,
    /// vmm; an error on a host that cannot forward PSCI calls.
    Vmm,
    /// KVM.
    Kvm,
}

impl From<CpuPowerArg> for CpuPowerMode {
    fn from(arg: CpuPowerArg) -> Self {
        match arg {
            CpuPowerArg::Auto => Self::Auto,
            CpuPowerArg::Vmm => Self::Vmm,
            CpuPowerArg::Kvm => Self::Kvm,
        }
    }
}

/// The values of `--seccomp`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum SeccompArg {
    /// Kills vmm (SIGSYS).
    On,
    /// No filters.
    Off,
    /// Allowed, and logged by the kernel (audit type=1326).
    Log,
    /// SIGSYS: vmm names the call on stderr and dies of it.
    Trap,
}

impl From<SeccompArg> for SeccompMode {
    fn from(arg: SeccompArg) -> Self {
        match arg {
            SeccompArg::On => Self::On,
            SeccompArg::Off => Self::Off,
            SeccompArg::Log => Self::Log,
            SeccompArg::Trap => Self::Trap,
        }
    }
}

impl RunArgs {
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
        if !self.disk.is_empty() {
            config.disks = self
                .disk
                .iter()
                .map(|text| DiskConfig::parse(text))
                .collect::<Result<_, _>>()?;
        }
        if self.no_rng {
            config.rng = false;
        }
        if !self.net.is_empty() {
            config.nets = self
                .net
                .iter()
                .map(|text| NetConfig::parse(text))
                .collect::<Result<_, _>>()
                .map_err(ConfigError::from)?;
        }
        if let Some(vsock) = &self.vsock {
            config.vsock = Some(VsockConfig::parse(vsock).map_err(ConfigError::from)?);
        }
        if let Some(seccomp) = self.seccomp {
            config.seccomp = seccomp.into();
        }
        if let Some(cpu_power) = self.cpu_power {
            config.cpu_power = cpu_power.into();
        }
        if self.psci_version.is_some() {
            config.psci_version = self.psci_version;
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    // Before any thread starts, so that every thread's fault is named (seccomp forbids the
    // `sigaction` that Rust's own handler makes).
    vmm::fault_report::install();
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

    if let Some(Command::Ctl(args)) = cli.command {
        return ctl::run(args);
    }
    match run_vm(cli.run) {
        Ok(ExitReason::Error(failure)) => {
            eprintln!("vmm: {}", vmm::error_chain(&failure));
            ExitCode::FAILURE
        }
        Ok(ExitReason::GuestCrash) => {
            eprintln!("vmm: the guest crashed");
            ExitCode::FAILURE
        }
        Ok(ExitReason::Snapshotted(path)) => {
            // Not an error: the guest lives on in the snapshot.
            eprintln!(
                "vmm: the guest was saved to {}; vmm --restore {} brings it back",
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Ok(ExitReason::Hibernated) => {
            // Not an error, but the next step is the user's: boot it again to resume it.
            eprintln!("vmm: the guest hibernated; boot it again with the same disks to resume it");
            ExitCode::from(ExitReason::HIBERNATED_EXIT_CODE)
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

/// Checks, serves the API socket if asked, boots, and waits for the VM to stop.
fn run_vm(args: RunArgs) -> Result<ExitReason, Arc<VmmError>> {
    let api_socket = args.api_socket.clone();
    let (vm, seccomp) = match &args.restore {
        Some(dir) => {
            let seccomp = args
                .seccomp
                .map_or(SeccompMode::default(), SeccompMode::from);
            (Vm::restore(dir)?.with_seccomp(seccomp), seccomp)
        }
        None => {
            let config = args.into_config()?;
            let seccomp = config.seccomp;
            (Vm::new(config)?, seccomp)
        }
    };
    let server = match api_socket {
        Some(path) => Some(
            ApiServer::start_with(
                &path,
                Arc::new(VmRouter::new(vm.handle())),
                ApiServerOptions {
                    seccomp,
                    ..Default::default()
                },
            )
            .map_err(|err| Arc::new(VmmError::Api(err)))?,
        ),
        None => None,
    };
    let handle = vm.start()?;
    // Everything is started: from here this thread only waits for the VM, stops the API
    // server and exits.
    if let Err(err) = vmm::seccomp::apply(Thread::Main, seccomp) {
        let _ = handle.shutdown();
        let _ = handle.wait();
        return Err(Arc::new(err.into()));
    }
    let result = handle.wait();
    // Event streams end with the VM; other requests in flight get to send their reply.
    if let Some(server) = server {
        if !server.stop_gracefully(Duration::from_secs(2)) {
            log::warn!("API requests still in flight at exit");
        }
    }
    result
}
