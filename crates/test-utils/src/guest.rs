//! Bare-metal guests on real KVM, through the `hypervisor` crate: 1 MiB of RAM with a program
//! of raw A64 code at its start, and guest code that reports values by storing them to an
//! unmapped address, which reaches the host as an MMIO write.

use std::sync::mpsc;
use std::time::Duration;

use arch_aarch64::layout::RAM_START;
use arch_aarch64::regs;
use hypervisor::kvm::{KvmHypervisor, KvmVcpu, KvmVm, KvmVmOptions};
use hypervisor::{Vcpu, VcpuKick, VmExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::a64::{Assembler, Reg};

/// The guest's RAM, from [`RAM_START`].
pub const RAM_SIZE: usize = 1 << 20;
/// An unmapped address below RAM: guest stores there reach the host as MMIO writes.
pub const REPORT_ADDR: u64 = 0x0A00_0000;
/// The register [`reporting_program`] points at [`REPORT_ADDR`].
pub const REPORT_REG: Reg = 9;

/// A program that starts by pointing [`REPORT_REG`] at [`REPORT_ADDR`]: `str_x(n,
/// REPORT_REG, 0)` then reports `xn`.
pub fn reporting_program() -> Assembler {
    let mut asm = Assembler::new();
    asm.mov_imm(REPORT_REG, REPORT_ADDR);
    asm
}

/// A VM of `vcpus` vCPUs with `program` at the start of its RAM; vCPU 0 starts there in EL1h
/// with interrupts masked, the others powered off as KVM creates them.
pub struct BareMetal {
    /// The VM.
    pub vm: KvmVm,
    /// Its vCPUs, by index.
    pub vcpus: Vec<KvmVcpu>,
}

impl BareMetal {
    /// Builds the VM with `options`.
    ///
    /// # Panics
    /// When KVM refuses any step.
    pub fn new(options: KvmVmOptions, program: &Assembler, vcpus: u32) -> Self {
        let hypervisor = KvmHypervisor::new().expect("open /dev/kvm");
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_START), RAM_SIZE)]).unwrap();
        memory
            .write_slice(&program.to_bytes(), GuestAddress(RAM_START))
            .unwrap();
        let vm = KvmVm::new(&hypervisor, memory, options).expect("create VM");
        let vcpus: Vec<KvmVcpu> = (0..vcpus)
            .map(|index| vm.create_vcpu(index).expect("create vCPU"))
            .collect();
        vcpus[0].set_reg(regs::PC, RAM_START).unwrap();
        vcpus[0]
            .set_reg(regs::PSTATE, regs::PSTATE_EL1H_DAIF_MASKED)
            .unwrap();
        Self { vm, vcpus }
    }

    /// Runs vCPU 0, as [`run_reporting`] does.
    pub fn run(&mut self, count: usize, limit: Duration) -> (Vec<u64>, Option<VmExit>) {
        run_reporting(&mut self.vcpus[0], count, limit)
    }
}

/// Runs `vcpu` until it has made `count` reports (the exit is then `None`) or another exit
/// comes. After `limit` a watchdog kicks it out of `KVM_RUN`: the exit is then `Interrupted`.
pub fn run_reporting(
    vcpu: &mut KvmVcpu,
    count: usize,
    limit: Duration,
) -> (Vec<u64>, Option<VmExit>) {
    let kicker = vcpu.kicker();
    kicker.bind_current_thread();
    let (cancel, cancelled) = mpsc::channel::<()>();
    let watchdog = {
        let kicker = kicker.clone();
        std::thread::spawn(move || {
            if cancelled.recv_timeout(limit).is_err() {
                kicker.kick();
            }
        })
    };
    let mut reports = Vec::new();
    let exit = loop {
        if reports.len() == count {
            break None;
        }
        match vcpu.run().expect("KVM_RUN") {
            VmExit::MmioWrite { addr, data } if addr == REPORT_ADDR => reports.push(data.value()),
            other => break Some(other),
        }
    };
    let _ = cancel.send(());
    watchdog.join().unwrap();
    kicker.unbind_thread();
    (reports, exit)
}
