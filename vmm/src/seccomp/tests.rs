//! The lists, checked on any host: the programs are run through a small classic-BPF
//! interpreter with the `seccomp_data` the kernel would pass on aarch64.

use seccompiler::sock_filter;

use super::ioctl::*;
use super::*;

const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_LOG: u32 = 0x7FFC_0000;
const RET_ALLOW: u32 = 0x7FFF_0000;

/// Runs `program` on a call of `syscall` with `args` from `arch`, as the kernel would.
fn run_on(program: &[sock_filter], arch: u32, syscall: i64, args: &[u64]) -> u32 {
    // struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&(syscall as i32).to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (index, arg) in args.iter().enumerate() {
        data[16 + 8 * index..24 + 8 * index].copy_from_slice(&arg.to_le_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let sock_filter { code, jt, jf, k } = program[pc];
        pc += 1;
        match code {
            // BPF_LD | BPF_W | BPF_ABS
            0x20 => {
                let at = k as usize;
                acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            }
            // BPF_ALU | BPF_AND | BPF_K
            0x54 => acc &= k,
            // BPF_JMP | BPF_JA
            0x05 => pc += k as usize,
            // BPF_JMP | BPF_JEQ, BPF_JGT, BPF_JGE (| BPF_K)
            0x15 | 0x25 | 0x35 => {
                let taken = match code {
                    0x15 => acc == k,
                    0x25 => acc > k,
                    _ => acc >= k,
                };
                pc += usize::from(if taken { jt } else { jf });
            }
            // BPF_RET | BPF_K
            0x06 => return k,
            other => panic!("unexpected BPF instruction {other:#x}"),
        }
    }
}

fn run(program: &[sock_filter], syscall: i64, args: &[u64]) -> u32 {
    run_on(program, AUDIT_ARCH_AARCH64, syscall, args)
}

fn on(thread: Thread) -> BpfProgram {
    program(thread, SeccompMode::On).unwrap().unwrap()
}

#[test]
fn kvm_and_terminal_ioctl_numbers_are_the_kernels() {
    // From include/uapi/linux/kvm.h as built for arm64 (as Cloud Hypervisor lists them).
    for (ours, kernel) in [
        (KVM_GET_API_VERSION, 0xAE00),
        (KVM_CREATE_VM, 0xAE01),
        (KVM_CHECK_EXTENSION, 0xAE03),
        (KVM_GET_VCPU_MMAP_SIZE, 0xAE04),
        (KVM_CREATE_VCPU, 0xAE41),
        (KVM_SET_USER_MEMORY_REGION, 0x4020_AE46),
        (KVM_IRQ_LINE, 0x4008_AE61),
        (KVM_IRQFD, 0x4020_AE76),
        (KVM_IOEVENTFD, 0x4040_AE79),
        (KVM_RUN, 0xAE80),
        (KVM_GET_MP_STATE, 0x8004_AE98),
        (KVM_SET_MP_STATE, 0x4004_AE99),
        (KVM_ENABLE_CAP, 0x4068_AEA3),
        (KVM_GET_ONE_REG, 0x4010_AEAB),
        (KVM_SET_ONE_REG, 0x4010_AEAC),
        (KVM_ARM_VCPU_INIT, 0x4020_AEAE),
        (KVM_ARM_PREFERRED_TARGET, 0x8020_AEAF),
        (KVM_CREATE_DEVICE, 0xC00C_AEE0),
        (KVM_SET_DEVICE_ATTR, 0x4018_AEE1),
        (KVM_HAS_DEVICE_ATTR, 0x4018_AEE3),
    ] {
        assert_eq!(ours, kernel, "{ours:#x} vs {kernel:#x}");
    }
}

#[test]
fn every_list_builds_in_every_mode() {
    for thread in Thread::ALL {
        assert!(program(thread, SeccompMode::Off).unwrap().is_none());
        for mode in [SeccompMode::On, SeccompMode::Log, SeccompMode::Trap] {
            let program = program(thread, mode).unwrap().unwrap();
            // Far from BPF_MAXINSNS (4096), and from the 32768 instructions the kernel allows
            // the filters of one thread together (a device worker has three).
            assert!(program.len() < 1500, "{thread}: {}", program.len());
        }
        println!(
            "{thread}: {} system calls, {} BPF instructions",
            rules(thread).len(),
            on(thread).len()
        );
    }
}

#[test]
fn a_call_outside_the_list_kills_logs_or_traps_as_the_mode_says() {
    for (mode, verdict) in [
        (SeccompMode::On, RET_KILL_PROCESS),
        (SeccompMode::Log, RET_LOG),
        (SeccompMode::Trap, RET_TRAP),
    ] {
        for thread in Thread::ALL {
            let program = program(thread, mode).unwrap().unwrap();
            assert_eq!(run(&program, SYS_execve, &[]), verdict, "{thread} {mode}");
            assert_eq!(run(&program, SYS_futex, &[]), RET_ALLOW, "{thread} {mode}");
        }
    }
}

#[test]
fn no_thread_may_run_programs_open_network_sockets_or_touch_other_processes() {
    for thread in Thread::ALL {
        let program = on(thread);
        // AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK: only Unix sockets, for vsock.
        for domain in [2, 10, 16, 17, 40] {
            assert_eq!(
                run(&program, SYS_socket, &[domain]),
                RET_KILL_PROCESS,
                "{thread} may open a socket of domain {domain}"
            );
        }
        if matches!(thread, Thread::Main | Thread::Api | Thread::Console) {
            for syscall in [SYS_socket, SYS_connect, SYS_bind] {
                assert_eq!(run(&program, syscall, &[1]), RET_KILL_PROCESS, "{thread}");
            }
        }
        for syscall in [
            SYS_execve,
            SYS_execveat,
            SYS_ptrace,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
            SYS_kill,
            SYS_wait4,
            SYS_flock,
        ] {
            assert_eq!(
                run(&program, syscall, &[]),
                RET_KILL_PROCESS,
                "{thread} may call {}",
                syscall_name(syscall).unwrap()
            );
        }
        // No new executable memory anywhere.
        let rwx = 0x7;
        assert_eq!(run(&program, SYS_mmap, &[0, 4096, rwx]), RET_KILL_PROCESS);
        assert_eq!(
            run(&program, SYS_mprotect, &[0, 4096, rwx]),
            RET_KILL_PROCESS
        );
        assert_eq!(run(&program, SYS_mmap, &[0, 4096, 0x3]), RET_ALLOW);
        // Rust's debug check that a descriptor is open before it closes it; nothing else.
        assert_eq!(run(&program, SYS_fcntl, &[5, F_GETFD]), RET_ALLOW);
        assert_eq!(run(&program, SYS_fcntl, &[5, 8]), RET_KILL_PROCESS); // F_SETOWN
        // A panic restores the terminal from any thread, and nothing else of the kind.
        let tcsets = u64::from(TCSETS);
        assert_eq!(run(&program, SYS_ioctl, &[0, tcsets]), RET_ALLOW);
        assert_eq!(run(&program, SYS_ioctl, &[5, tcsets]), RET_KILL_PROCESS);
        // A call made as another architecture's, with its own numbers.
        assert_eq!(
            run_on(&program, AUDIT_ARCH_X86_64, SYS_futex, &[]),
            RET_KILL_PROCESS
        );
    }
}

#[test]
fn vcpu_threads_get_their_kvm_ioctls_and_no_others() {
    let vcpu = on(Thread::Vcpu);
    for request in [
        KVM_RUN,
        KVM_GET_ONE_REG,
        KVM_SET_ONE_REG,
        KVM_GET_MP_STATE,
        KVM_SET_MP_STATE,
        KVM_ARM_VCPU_INIT,
        KVM_IRQ_LINE,
    ] {
        assert_eq!(
            run(&vcpu, SYS_ioctl, &[7, u64::from(request)]),
            RET_ALLOW,
            "{request:#x}"
        );
    }
    for request in [
        KVM_CREATE_VM,
        KVM_CREATE_VCPU,
        KVM_SET_USER_MEMORY_REGION,
        KVM_IRQFD,
        TCSETS,
        FIONBIO,
    ] {
        assert_eq!(
            run(&vcpu, SYS_ioctl, &[7, u64::from(request)]),
            RET_KILL_PROCESS,
            "{request:#x}"
        );
    }
    for syscall in [
        SYS_openat,
        SYS_bind,
        SYS_listen,
        SYS_rt_sigaction,
        SYS_unlinkat,
        SYS_dup,
    ] {
        assert_eq!(run(&vcpu, syscall, &[]), RET_KILL_PROCESS);
    }
    // What the device workers it starts do (they inherit this filter), vsock's included.
    assert_eq!(run(&vcpu, SYS_accept4, &[]), RET_ALLOW);
    assert_eq!(
        run(&vcpu, SYS_ioctl, &[7, u64::from(TUNSETOFFLOAD)]),
        RET_ALLOW
    );
    assert_eq!(run(&vcpu, SYS_fcntl, &[5, F_DUPFD_CLOEXEC]), RET_ALLOW);
    assert_eq!(run(&vcpu, SYS_fcntl, &[5, F_SETFL]), RET_KILL_PROCESS);
    // Threads, not processes.
    let pthread_create = 0x3D_0F00; // CLONE_VM | CLONE_FS | ... | CLONE_THREAD | ...
    assert_eq!(run(&vcpu, SYS_clone, &[pthread_create]), RET_ALLOW);
    assert_eq!(run(&vcpu, SYS_clone, &[17]), RET_KILL_PROCESS); // fork(): SIGCHLD
    assert_eq!(run(&vcpu, SYS_clone, &[0x100 | 17]), RET_KILL_PROCESS); // CLONE_VM only
    // Only the prctl and seccomp operations a new thread needs.
    assert_eq!(run(&vcpu, SYS_prctl, &[PR_SET_NAME]), RET_ALLOW);
    assert_eq!(run(&vcpu, SYS_prctl, &[PR_SET_NO_NEW_PRIVS, 1]), RET_ALLOW);
    assert_eq!(run(&vcpu, SYS_prctl, &[22]), RET_KILL_PROCESS); // PR_SET_SECCOMP
    assert_eq!(run(&vcpu, SYS_seccomp, &[1]), RET_ALLOW);
    assert_eq!(run(&vcpu, SYS_seccomp, &[2]), RET_KILL_PROCESS); // SECCOMP_GET_ACTION_AVAIL
}

#[test]
fn device_workers_do_disk_and_tap_io_and_nothing_of_kvm() {
    let worker = on(Thread::VirtioWorker);
    for syscall in [
        SYS_preadv,
        SYS_pwritev,
        SYS_fdatasync,
        SYS_getrandom,
        SYS_epoll_pwait,
        SYS_epoll_ctl,
        SYS_read,
        SYS_writev,
        SYS_accept4,
        SYS_connect,
        SYS_sendto,
        SYS_shutdown,
    ] {
        assert_eq!(run(&worker, syscall, &[]), RET_ALLOW);
    }
    // Unix sockets for vsock, never an AF_INET (2) or AF_PACKET (17) one.
    assert_eq!(run(&worker, SYS_socket, &[1]), RET_ALLOW);
    for domain in [2, 10, 16, 17] {
        assert_eq!(run(&worker, SYS_socket, &[domain]), RET_KILL_PROCESS);
    }
    for syscall in [
        SYS_ioctl,
        SYS_openat,
        SYS_clone3,
        SYS_eventfd2,
        SYS_bind,
        SYS_listen,
    ] {
        assert_eq!(run(&worker, syscall, &[]), RET_KILL_PROCESS);
    }
    let console = on(Thread::Console);
    assert_eq!(run(&console, SYS_write, &[1]), RET_ALLOW);
    for syscall in [SYS_read, SYS_ioctl, SYS_preadv, SYS_clone3] {
        assert_eq!(run(&console, syscall, &[]), RET_KILL_PROCESS);
    }
}

#[test]
fn the_api_and_main_threads_cannot_reach_kvm_beyond_interrupt_lines() {
    let api = on(Thread::Api);
    assert_eq!(run(&api, SYS_accept4, &[]), RET_ALLOW);
    assert_eq!(run(&api, SYS_ioctl, &[3, u64::from(FIONBIO)]), RET_ALLOW);
    assert_eq!(
        run(&api, SYS_ioctl, &[3, u64::from(KVM_IRQ_LINE)]),
        RET_ALLOW
    );
    for request in [KVM_RUN, KVM_SET_ONE_REG, KVM_CREATE_VM] {
        assert_eq!(
            run(&api, SYS_ioctl, &[3, u64::from(request)]),
            RET_KILL_PROCESS
        );
    }
    assert_eq!(run(&api, SYS_openat, &[]), RET_KILL_PROCESS);
    let main = on(Thread::Main);
    assert_eq!(run(&main, SYS_unlinkat, &[]), RET_ALLOW);
    for syscall in [SYS_ioctl, SYS_openat, SYS_clone3, SYS_accept4, SYS_read] {
        assert_eq!(run(&main, syscall, &[]), RET_KILL_PROCESS);
    }
}

#[test]
fn the_vmm_thread_can_build_a_machine_and_set_the_terminal() {
    let vmm = on(Thread::Vmm);
    for request in [
        KVM_GET_API_VERSION,
        KVM_CREATE_VM,
        KVM_CREATE_VCPU,
        KVM_SET_USER_MEMORY_REGION,
        KVM_IRQFD,
        KVM_IOEVENTFD,
        KVM_CREATE_DEVICE,
        KVM_SET_DEVICE_ATTR,
    ] {
        assert_eq!(run(&vmm, SYS_ioctl, &[3, u64::from(request)]), RET_ALLOW);
    }
    for request in [TCGETS, TCSETS, TCSETSW, TCSETSF] {
        assert_eq!(run(&vmm, SYS_ioctl, &[0, u64::from(request)]), RET_ALLOW);
        assert_eq!(
            run(&vmm, SYS_ioctl, &[3, u64::from(request)]),
            RET_KILL_PROCESS
        );
    }
    assert_eq!(run(&vmm, SYS_openat, &[]), RET_ALLOW);
    assert_eq!(run(&vmm, SYS_fcntl, &[3, F_SETFL]), RET_ALLOW);
    assert_eq!(run(&vmm, SYS_fcntl, &[3, 8]), RET_KILL_PROCESS); // F_SETOWN
    // The vsock socket: listened on at every boot, its connections served by the worker.
    for syscall in [SYS_bind, SYS_listen, SYS_accept4, SYS_connect, SYS_unlinkat] {
        assert_eq!(run(&vmm, syscall, &[1]), RET_ALLOW);
    }
    assert_eq!(run(&vmm, SYS_ioctl, &[3, u64::from(FIONBIO)]), RET_ALLOW);
}

/// Whether `parent` allows every call `child` allows, with the same arguments.
fn covers(parent: &Rules, child: &Rules) -> Result<(), String> {
    for (syscall, rules) in child {
        let name = syscall_name(*syscall).unwrap_or("?");
        match parent.get(syscall) {
            None => return Err(format!("{name} is not allowed")),
            Some(allowed) if allowed.is_empty() => {}
            Some(_) if rules.is_empty() => return Err(format!("{name} has conditions")),
            Some(allowed) => {
                if let Some(rule) = rules.iter().find(|rule| !allowed.contains(rule)) {
                    return Err(format!("{name}: {rule:?} is not allowed"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_thread_allows_what_the_threads_it_spawns_need() {
    // The kernel runs every filter a thread inherited: a call must pass them all.
    for (parent, child) in [
        (Thread::Vmm, Thread::Vcpu),
        (Thread::Vmm, Thread::Console),
        (Thread::Vcpu, Thread::VirtioWorker),
        (Thread::Vmm, Thread::VirtioWorker),
    ] {
        covers(&rules(parent), &rules(child))
            .unwrap_or_else(|err| panic!("{parent} > {child}: {err}"));
    }
    // Stricter children, so the inheritance really narrows something.
    assert!(covers(&rules(Thread::Vcpu), &rules(Thread::Vmm)).is_err());
    assert!(covers(&rules(Thread::VirtioWorker), &rules(Thread::Vcpu)).is_err());
}

#[test]
fn the_syscall_table_has_unique_names_and_numbers() {
    let mut numbers: Vec<i64> = SYSCALL_NAMES.iter().map(|(nr, _)| *nr).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), SYSCALL_NAMES.len());
    assert_eq!(syscall_name(SYS_ioctl), Some("ioctl"));
    assert_eq!(syscall_name(SYS_clone3), Some("clone3"));
    assert_eq!(syscall_name(9999), None);
    for thread in Thread::ALL {
        for syscall in rules(thread).keys() {
            assert!(syscall_name(*syscall).is_some(), "{syscall}");
        }
    }
}

#[test]
fn modes_parse_print_and_default_to_on() {
    assert_eq!(SeccompMode::default(), SeccompMode::On);
    for name in SeccompMode::NAMES {
        let mode: SeccompMode = name.parse().unwrap();
        assert_eq!(mode.to_string(), name);
        assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<SeccompMode>(&format!("\"{name}\"")).unwrap(),
            mode
        );
    }
    assert_eq!(
        "kill".parse::<SeccompMode>().unwrap_err(),
        "invalid seccomp mode \"kill\": must be one of on, off, log, trap"
    );
    assert!(serde_json::from_str::<SeccompMode>("\"true\"").is_err());
}
