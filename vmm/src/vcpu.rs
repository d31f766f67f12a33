//! The loop each vCPU thread runs: enter the guest, serve MMIO, turn system events into VM
//! exits. It is generic over [`Vcpu`] so that tests drive it with a fake.

use std::sync::Arc;

use devices::bus::MmioBus;
use hypervisor::{SystemEvent, Vcpu, VcpuKick, VmExit};

use crate::events::VmEventKind;
use crate::exit::{ExitControl, ExitReason, VmFailureKind};
use crate::suspend::SuspendCoordinator;

/// What a vCPU thread shares with the rest of the VM.
pub struct VcpuContext {
    /// The MMIO devices.
    pub bus: Arc<MmioBus>,
    /// The VM's exit control.
    pub control: Arc<ExitControl>,
    /// The VM-wide suspend state machine.
    pub suspend: Arc<SuspendCoordinator>,
}

/// Runs `vcpu` until the VM stops; a panic on the way (with unwinding: the release profile
/// aborts) stops the VM with an error naming the vCPU, so that nothing waits for it forever.
pub fn run_vcpu_guarded<V: Vcpu>(vcpu: V, kick: &dyn VcpuKick, context: &VcpuContext) {
    let index = vcpu.index();
    let run = std::panic::AssertUnwindSafe(|| run_vcpu(vcpu, kick, context));
    if let Err(payload) = std::panic::catch_unwind(run) {
        kick.unbind_thread();
        let message = crate::panic_message(payload.as_ref());
        log::error!("vCPU {index} panicked: {message}");
        context.control.request_exit(ExitReason::Error(
            VmFailureKind::VcpuPanicked { index, message }.into(),
        ));
    }
}

/// Runs `vcpu` until the VM stops.
pub fn run_vcpu<V: Vcpu>(mut vcpu: V, kick: &dyn VcpuKick, context: &VcpuContext) {
    kick.bind_current_thread();
    while !context.control.stopping() {
        // Another vCPU may be checking power states for SYSTEM_SUSPEND: stay out of KVM_RUN.
        if let Err(err) = context.suspend.park_if_requested(&vcpu) {
            context.control.request_exit(ExitReason::Error(err.into()));
            continue;
        }
        // A vCPU that is off (when the VMM keeps the power states) waits here for its CPU_ON.
        match context.suspend.wait_until_on(&mut vcpu) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                context.control.request_exit(ExitReason::Error(err.into()));
                continue;
            }
        }
        if let Some(reason) = step(&mut vcpu, context) {
            context.control.request_exit(reason);
        }
    }
    kick.unbind_thread();
    log::debug!("vCPU {} stopped", vcpu.index());
}

/// Handles one exit; returns why the VM must end, if it must.
fn step<V: Vcpu>(vcpu: &mut V, context: &VcpuContext) -> Option<ExitReason> {
    let index = vcpu.index();
    let exit = match vcpu.run() {
        Ok(exit) => exit,
        Err(err) => return Some(ExitReason::Error(err.into())),
    };
    match exit {
        VmExit::MmioRead { addr, len } => {
            let mut data = [0u8; 8];
            let data = &mut data[..len.min(8)];
            if let Err(err) = context.bus.read(addr, data) {
                log::debug!("vCPU {index}: {err}");
            }
            if let Err(err) = vcpu.complete_mmio_read(data) {
                return Some(ExitReason::Error(err.into()));
            }
        }
        VmExit::MmioWrite { addr, data } => {
            if let Err(err) = context.bus.write(addr, data.as_slice()) {
                log::debug!("vCPU {index}: {err}");
            }
        }
        VmExit::SystemEvent(event @ SystemEvent::Shutdown { .. }) if event.is_hibernation() => {
            context
                .suspend
                .events()
                .emit(VmEventKind::Hibernated { vcpu: index });
            return Some(ExitReason::Hibernated);
        }
        VmExit::SystemEvent(SystemEvent::Shutdown { .. }) => return Some(ExitReason::PowerOff),
        VmExit::SystemEvent(SystemEvent::Reset { .. }) => return Some(ExitReason::Reboot),
        VmExit::SystemEvent(SystemEvent::Crash) => return Some(ExitReason::GuestCrash),
        VmExit::SystemEvent(SystemEvent::Suspend) => {
            if let Err(err) = context.suspend.on_suspend_exit(vcpu) {
                return Some(ExitReason::Error(err.into()));
            }
        }
        VmExit::SystemEvent(SystemEvent::Wakeup) => {
            if let Err(err) = context.suspend.on_wakeup_exit(vcpu) {
                return Some(ExitReason::Error(err.into()));
            }
        }
        VmExit::Hypercall { function_id, .. } => {
            if let Err(err) = context.suspend.on_power_call(vcpu, function_id) {
                return Some(ExitReason::Error(err.into()));
            }
        }
        VmExit::Interrupted => {}
        other => {
            return Some(ExitReason::Error(
                VmFailureKind::UnhandledExit {
                    index,
                    exit: format!("{other:?}"),
                }
                .into(),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use arch_aarch64::layout::GuestRegion;
    use devices::bus::MmioDevice;
    use hypervisor::{MmioData, MpState};
    use test_utils::fake_vcpu::FakeVcpu;

    use super::*;
    use crate::events::{EventBus, WakeSourceTracker};

    /// A register file: reads return what was last written.
    struct Register(u64);
    impl MmioDevice for Register {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            let bytes = self.0.to_le_bytes();
            data.copy_from_slice(&bytes[..data.len()]);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            let mut bytes = [0; 8];
            bytes[..data.len()].copy_from_slice(data);
            self.0 = u64::from_le_bytes(bytes);
        }
    }

    /// A one-vCPU VM whose bus has a [`Register`] at 0x1000, for `vcpu`.
    fn context(vcpu: &FakeVcpu) -> VcpuContext {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Register(0))))
            .unwrap();
        let control = Arc::new(ExitControl::new().unwrap());
        let suspend = Arc::new(SuspendCoordinator::new(
            1,
            vec![GuestRegion {
                start: 0x4000_0000,
                size: 1 << 20,
            }],
            vec![vcpu.kicker() as Arc<dyn VcpuKick>],
            Arc::new(EventBus::new()),
            Arc::new(WakeSourceTracker::new()),
            Arc::clone(&control),
        ));
        VcpuContext {
            bus: Arc::new(bus),
            control,
            suspend,
        }
    }

    /// Runs a vCPU whose guest makes `exits`, the last of which must end the VM; returns why
    /// it ended and the data of the MMIO reads the guest got.
    fn run_script(exits: Vec<VmExit>) -> (Option<ExitReason>, Vec<Vec<u8>>) {
        let vcpu = FakeVcpu::new(0, MpState::Runnable);
        for exit in exits {
            vcpu.push_exit(exit);
        }
        let context = context(&vcpu);
        run_vcpu(vcpu.clone(), &*vcpu.kicker(), &context);
        (context.control.exit_reason(), vcpu.completed_reads())
    }

    #[test]
    fn serves_mmio_from_the_bus_until_the_guest_powers_off() {
        let (reason, reads) = run_script(vec![
            VmExit::MmioWrite {
                addr: 0x1000,
                data: MmioData::new(&0xABCDu32.to_le_bytes()),
            },
            VmExit::Interrupted,
            VmExit::MmioRead {
                addr: 0x1000,
                len: 4,
            },
            // Unmapped: the guest reads zeros and keeps running.
            VmExit::MmioRead {
                addr: 0x9000,
                len: 2,
            },
            VmExit::SystemEvent(SystemEvent::Shutdown { flags: 0 }),
            VmExit::MmioRead {
                addr: 0x1000,
                len: 4,
            },
        ]);
        assert_eq!(reason, Some(ExitReason::PowerOff));
        assert_eq!(reads, [vec![0xCD, 0xAB, 0, 0], vec![0, 0]]);
    }

    #[test]
    fn a_vcpu_that_panics_stops_the_vm_with_an_error() {
        let vcpu = FakeVcpu::new(0, MpState::Runnable);
        vcpu.push_exit(VmExit::Interrupted);
        vcpu.push_panic();
        let context = context(&vcpu);
        run_vcpu_guarded(vcpu.clone(), &*vcpu.kicker(), &context);
        let Some(ExitReason::Error(failure)) = context.control.exit_reason() else {
            panic!("{:?}", context.control.exit_reason());
        };
        assert!(
            matches!(failure.kind(), VmFailureKind::VcpuPanicked { index: 0, message } if message == "scripted vCPU panic"),
            "{failure:?}"
        );
    }

    #[test]
    fn reset_and_crash_and_unknown_exits_end_the_vm() {
        let reboot = run_script(vec![VmExit::SystemEvent(SystemEvent::Reset { flags: 0 })]);
        assert_eq!(reboot.0, Some(ExitReason::Reboot));
        let crash = run_script(vec![VmExit::SystemEvent(SystemEvent::Crash)]);
        assert_eq!(crash.0, Some(ExitReason::GuestCrash));
        let (reason, _) = run_script(vec![VmExit::InternalError]);
        let Some(ExitReason::Error(failure)) = reason else {
            panic!("{reason:?}");
        };
        assert!(
            matches!(failure.kind(), VmFailureKind::UnhandledExit { index: 0, exit } if exit == "InternalError"),
            "{failure:?}"
        );
    }
}
