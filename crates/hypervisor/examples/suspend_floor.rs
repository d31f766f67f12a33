//! The floor for the VMM's suspend and resume latencies: the bare KVM ioctl sequence of a PSCI
//! SYSTEM_SUSPEND cycle, with nothing around it, issued straight through kvm-ioctls.
//!
//! ```text
//! suspend_floor [--cpus N] [--cycles M]
//! ```
//!
//! A raw A64 guest on vCPU 0 (the others are created powered off, each blocked in `KVM_RUN` on
//! its own thread, as a suspended Linux guest leaves them) enables the virtual timer's PPI,
//! arms the timer about 8 ms ahead and calls SYSTEM_SUSPEND with its own start as the entry
//! point and the cycles left as the context id. Each cycle here is:
//!
//! - suspend: `KVM_EXIT_SYSTEM_EVENT` SUSPEND, read x1 and x2 (entry, context id),
//!   `KVM_SET_MP_STATE(SUSPENDED)`;
//! - `KVM_RUN`, which blocks until the timer fires;
//! - resume: `KVM_EXIT_SYSTEM_EVENT` WAKEUP, `KVM_ARM_VCPU_INIT` again (the reset PSCI wants),
//!   set PC = entry and x0 = context id.
//!
//! Spans are measured like the `vmm`'s `suspended (in N us)` and `resumed (in N us)`: from the
//! exit returning to the vCPU being ready to run. After the last cycle the guest calls
//! SYSTEM_OFF and one line per cycle is printed, for the benchmark runner:
//!
//! ```text
//! @@floor cpus=1 cycle=1 suspend_ns=41200 resume_ns=35100 asleep_ns=8100000
//! ```

#[cfg(target_arch = "aarch64")]
fn main() -> std::process::ExitCode {
    match floor::Options::parse(std::env::args().skip(1)).and_then(|options| floor::run(&options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("suspend_floor: {err}");
            std::process::ExitCode::from(if matches!(err, floor::FloorError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn main() -> std::process::ExitCode {
    eprintln!("suspend_floor: needs an arm64 host with /dev/kvm");
    std::process::ExitCode::FAILURE
}

#[cfg(target_arch = "aarch64")]
mod floor {
    use std::time::{Duration, Instant};

    use arch_aarch64::layout::{GIC_DIST_BASE, GIC_REDIST_BASE, RAM_START};
    use arch_aarch64::regs::{PC, PSTATE, PSTATE_EL1H_DAIF_MASKED, xreg};
    use kvm_bindings::{
        KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_CAP_ARM_SYSTEM_SUSPEND,
        KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_MP_STATE_SUSPENDED, KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_SUSPEND,
        KVM_SYSTEM_EVENT_WAKEUP, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
        kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        kvm_enable_cap, kvm_mp_state, kvm_userspace_memory_region, kvm_vcpu_init,
    };
    use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};
    use test_utils::programs::timer_woken_suspends;

    const RAM_SIZE: usize = 1 << 20;
    /// The most vCPUs whose redistributors fit before the device area.
    const MAX_CPUS: u32 = 123;

    /// What went wrong; the run stops at the first failure.
    #[derive(Debug, thiserror::Error)]
    pub enum FloorError {
        /// The command line is wrong.
        #[error("{0} (usage: suspend_floor [--cpus N] [--cycles M])")]
        Usage(String),
        /// The host's KVM cannot exit on SYSTEM_SUSPEND.
        #[error("KVM on this host lacks KVM_CAP_ARM_SYSTEM_SUSPEND")]
        NoSystemSuspend,
        /// Guest memory could not be mapped.
        #[error("Cannot map guest memory")]
        Memory(#[source] std::io::Error),
        /// A KVM ioctl failed.
        #[error("{what} failed")]
        Kvm {
            /// The ioctl.
            what: &'static str,
            /// The errno.
            #[source]
            source: kvm_ioctls::Error,
        },
        /// The guest did something else than the cycle expects.
        #[error("Unexpected guest behaviour: {0}")]
        Exit(String),
    }

    fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
        move |source| FloorError::Kvm { what, source }
    }

    /// The command line.
    #[derive(Debug)]
    pub struct Options {
        cpus: u32,
        cycles: u64,
    }

    impl Options {
        /// Parses `--cpus N` (1 to 123, default 1) and `--cycles M` (1 or more, default 20).
        pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, FloorError> {
            let mut options = Self {
                cpus: 1,
                cycles: 20,
            };
            while let Some(flag) = args.next() {
                let value = args.next();
                let number = || {
                    value
                        .as_deref()
                        .and_then(|text| text.parse::<u64>().ok())
                        .ok_or_else(|| FloorError::Usage(format!("{flag} needs a number")))
                };
                match flag.as_str() {
                    "--cpus" => {
                        options.cpus = u32::try_from(number()?)
                            .ok()
                            .filter(|cpus| (1..=MAX_CPUS).contains(cpus))
                            .ok_or_else(|| {
                                FloorError::Usage(format!("--cpus must be 1 to {MAX_CPUS}"))
                            })?;
                    }
                    "--cycles" => {
                        options.cycles =
                            Some(number()?)
                                .filter(|&cycles| cycles > 0)
                                .ok_or_else(|| {
                                    FloorError::Usage("--cycles must be 1 or more".into())
                                })?;
                    }
                    other => return Err(FloorError::Usage(format!("Unknown argument {other:?}"))),
                }
            }
            Ok(options)
        }
    }

    /// One cycle's spans.
    struct Cycle {
        suspend: Duration,
        resume: Duration,
        asleep: Duration,
    }

    /// Guest RAM: an anonymous mapping that lives as long as the process.
    fn map_ram() -> Result<*mut u8, FloorError> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(FloorError::Memory(std::io::Error::last_os_error()));
        }
        Ok(addr.cast())
    }

    fn create_gic(vm: &VmFd) -> Result<DeviceFd, FloorError> {
        let mut device = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = vm
            .create_device(&mut device)
            .map_err(kvm("KVM_CREATE_DEVICE (vGICv3)"))?;
        let (dist, redist) = (GIC_DIST_BASE, GIC_REDIST_BASE);
        for (group, attr, addr) in [
            (
                KVM_DEV_ARM_VGIC_GRP_ADDR,
                KVM_VGIC_V3_ADDR_TYPE_DIST,
                &dist as *const u64 as u64,
            ),
            (
                KVM_DEV_ARM_VGIC_GRP_ADDR,
                KVM_VGIC_V3_ADDR_TYPE_REDIST,
                &redist as *const u64 as u64,
            ),
            (KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, 0),
        ] {
            let attribute = kvm_device_attr {
                flags: 0,
                group,
                attr: u64::from(attr),
                addr,
            };
            gic.set_device_attr(&attribute)
                .map_err(kvm("KVM_SET_DEVICE_ATTR (vGICv3)"))?;
        }
        Ok(gic)
    }

    fn set(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), FloorError> {
        vcpu.set_one_reg(id, &value.to_le_bytes())
            .map(drop)
            .map_err(kvm("KVM_SET_ONE_REG"))
    }

    fn get(vcpu: &VcpuFd, id: u64) -> Result<u64, FloorError> {
        let mut bytes = [0; 8];
        vcpu.get_one_reg(id, &mut bytes)
            .map_err(kvm("KVM_GET_ONE_REG"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Builds the VM, runs the cycles and prints them.
    pub fn run(options: &Options) -> Result<(), FloorError> {
        let kvm_fd = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        // The 40-bit default, as the VMM creates its VMs.
        let vm = kvm_fd
            .create_vm_with_type(hypervisor::kvm::VM_TYPE_40_BIT_IPA)
            .map_err(kvm("KVM_CREATE_VM"))?;
        if vm.check_extension_raw(KVM_CAP_ARM_SYSTEM_SUSPEND.into()) <= 0 {
            return Err(FloorError::NoSystemSuspend);
        }
        let ram = map_ram()?;
        let program = timer_woken_suspends(RAM_START).to_bytes();
        // SAFETY: `ram` is a fresh writable mapping of RAM_SIZE bytes, larger than the program.
        unsafe { std::ptr::copy_nonoverlapping(program.as_ptr(), ram, program.len()) };
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: RAM_START,
            memory_size: RAM_SIZE as u64,
            userspace_addr: ram as u64,
        };
        // SAFETY: the mapping is never unmapped, so KVM never sees a dangling address.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        let cap = kvm_enable_cap {
            cap: KVM_CAP_ARM_SYSTEM_SUSPEND,
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .map_err(kvm("KVM_ENABLE_CAP (SYSTEM_SUSPEND)"))?;

        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(kvm("KVM_ARM_PREFERRED_TARGET"))?;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        let mut vcpus = Vec::new();
        for index in 0..options.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            let mut features = init;
            if index > 0 {
                features.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
            }
            vcpu.vcpu_init(&features)
                .map_err(kvm("KVM_ARM_VCPU_INIT"))?;
            vcpus.push(vcpu);
        }
        let _gic = create_gic(&vm)?;
        let mut boot = vcpus.remove(0);
        set(&boot, PC, RAM_START)?;
        set(&boot, PSTATE, PSTATE_EL1H_DAIF_MASKED)?;
        set(&boot, xreg(0), options.cycles)?;
        // The secondaries block in KVM_RUN while powered off, until the process exits.
        for mut vcpu in vcpus {
            std::thread::spawn(move || while vcpu.run().is_ok() {});
        }

        let cycles = run_cycles(&mut boot, &init, options.cycles)?;
        for (index, cycle) in cycles.iter().enumerate() {
            println!(
                "@@floor cpus={} cycle={} suspend_ns={} resume_ns={} asleep_ns={}",
                options.cpus,
                index + 1,
                cycle.suspend.as_nanos(),
                cycle.resume.as_nanos(),
                cycle.asleep.as_nanos()
            );
        }
        Ok(())
    }

    /// Drives vCPU 0 through the guest's cycles until it powers off.
    fn run_cycles(
        vcpu: &mut VcpuFd,
        init: &kvm_vcpu_init,
        count: u64,
    ) -> Result<Vec<Cycle>, FloorError> {
        let mut cycles = Vec::new();
        let mut resume_at = (0, 0);
        let mut suspended_at = None;
        let mut suspend = Duration::ZERO;
        loop {
            let exit = vcpu.run();
            let exited = Instant::now();
            match exit {
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SUSPEND, _)) => {
                    resume_at = (get(vcpu, xreg(1))?, get(vcpu, xreg(2))?);
                    vcpu.set_mp_state(kvm_mp_state {
                        mp_state: KVM_MP_STATE_SUSPENDED,
                    })
                    .map_err(kvm("KVM_SET_MP_STATE"))?;
                    let now = Instant::now();
                    suspend = now - exited;
                    suspended_at = Some(now);
                }
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_WAKEUP, _)) => {
                    let Some(asleep_from) = suspended_at.take() else {
                        return Err(FloorError::Exit("WAKEUP without a suspend".into()));
                    };
                    // The reset PSCI requires on resume also makes the vCPU runnable.
                    vcpu.vcpu_init(init).map_err(kvm("KVM_ARM_VCPU_INIT"))?;
                    let (entry, context_id) = resume_at;
                    set(vcpu, PC, entry)?;
                    set(vcpu, xreg(0), context_id)?;
                    cycles.push(Cycle {
                        suspend,
                        resume: exited.elapsed(),
                        asleep: exited - asleep_from,
                    });
                }
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => {
                    if cycles.len() as u64 == count {
                        return Ok(cycles);
                    }
                    return Err(FloorError::Exit(format!(
                        "SYSTEM_OFF after {} of {count} cycles: SYSTEM_SUSPEND was refused",
                        cycles.len()
                    )));
                }
                Ok(VcpuExit::Intr) => {}
                Err(err) if err.errno() == libc::EINTR => {}
                Ok(other) => return Err(FloorError::Exit(format!("exit {other:?}"))),
                Err(source) => {
                    return Err(FloorError::Kvm {
                        what: "KVM_RUN",
                        source,
                    });
                }
            }
        }
    }
}
