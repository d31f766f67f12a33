//! Embeds the `vmm` library: boots a guest that suspends itself to RAM, waits for the
//! `suspended` event, wakes it with the GPIO button through the handle, and waits for
//! `resumed`.
//!
//! ```text
//! suspend_wake KERNEL INITRAMFS [CMDLINE]
//! ```
//! The guest's console goes to stdout. The guest must suspend on its own, e.g. run `echo mem >
//! /sys/power/state` from its init (the testbed's guest does with `vmmtest=suspend-wait`, the
//! default command line here).
//!
//! On stderr it reports each step as one line of `key=value` words after a kind, for scripts
//! to read (the testbed's `example` scenario does), taken from the typed events and exit:
//!
//! ```text
//! @@example suspended vcpu=0 latency_us=412
//! @@example resumed vcpu=0 source=gpio latency_us=530
//! @@example exit reason=poweroff
//! ```
//!
//! `source` is the device that woke the guest (`rtc`, `gpio`, `serial`, `unknown`), as in the
//! event stream. A failure is one `suspend_wake: MESSAGE` line instead, with exit status 1.

use std::process::ExitCode;
use std::time::Duration;

use vmm::events::VmEventKind;
use vmm::{Console, ExitReason, Vm, VmConfig};

const LIMIT: Duration = Duration::from_secs(180);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(kernel), Some(initramfs)) = (args.first(), args.get(1)) else {
        eprintln!("usage: suspend_wake KERNEL INITRAMFS [CMDLINE]");
        return ExitCode::from(2);
    };
    let mut config = VmConfig::new(kernel);
    config.initramfs = Some(initramfs.into());
    config.cmdline = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "console=ttyS0 quiet panic=-1 vmmtest=suspend-wait".into());
    config.cpus = 2;
    config.memory_mib = 256;
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("suspend_wake: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: VmConfig) -> Result<(), String> {
    let vm = Vm::new(config)
        .map_err(|err| vmm::error_chain(&err))?
        .with_console(Console::Terminal);
    // Subscribe before starting, so that no event is missed.
    let events = vm.subscribe();
    let handle = vm.start().map_err(|err| vmm::error_chain(&err))?;
    loop {
        let event = events
            .recv_timeout(LIMIT)
            .map_err(|_| "no event: the guest did not suspend in time".to_owned())?;
        match event.kind {
            VmEventKind::Suspended { vcpu, latency_us } => {
                eprintln!("@@example suspended vcpu={vcpu} latency_us={latency_us}");
                handle
                    .press_wake_button()
                    .map_err(|err| vmm::error_chain(&err))?;
            }
            VmEventKind::Resumed {
                vcpu,
                latency_us,
                source,
            } => {
                eprintln!(
                    "@@example resumed vcpu={vcpu} source={} latency_us={latency_us}",
                    source.as_str()
                );
                break;
            }
            _ => {}
        }
    }
    match handle.wait_timeout(LIMIT) {
        Some(Ok(ExitReason::PowerOff)) => {
            eprintln!("@@example exit reason=poweroff");
            Ok(())
        }
        Some(Ok(other)) => Err(format!("the VM stopped: {other:?}")),
        Some(Err(err)) => Err(vmm::error_chain(err.as_ref())),
        None => {
            let _ = handle.shutdown();
            Err("the guest did not power off in time".to_owned())
        }
    }
}
