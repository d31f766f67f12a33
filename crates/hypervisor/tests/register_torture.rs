//! A check of the host, not of `vmm` (#12: a rare crash of a vCPU thread that leaves no
//! report): does a vCPU thread's own register state survive `KVM_RUN` and the kick signal?
//!
//! Each vCPU thread loads every SIMD register and x9..x15 with a pattern, enters the guest
//! with a raw `svc` (so no compiler code runs in between), and compares them after; the arm64
//! syscall ABI preserves them all. The guest writes its own values to every SIMD register
//! before each exit, and now and then waits in WFI. A kicker sends SIGRTMIN to random vCPU
//! threads with `immediate_exit` set, as the VMM does, and the signal handler scribbles over
//! the SIMD registers, which the kernel must restore. The SVE vector length, which glibc's
//! SVE `memcpy` reads once and then relies on, is read before and after each run and across a
//! spin, on the vCPU threads and on a thread that never enters a guest.
//!
//! Not in any default set: `testbed run register-torture` (about 9 minutes).
#![cfg(target_arch = "aarch64")]

use std::arch::asm;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch_aarch64::layout::RAM_START;
use arch_aarch64::regs::PC;
use kvm_bindings::{KVM_ARM_VCPU_POWER_OFF, KVM_EXIT_MMIO, kvm_run, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xAE80;
/// `__NR_ioctl` on arm64.
const SYS_IOCTL: u64 = 29;
const GUEST_RAM: usize = 0x10000;
/// The most changed-register lines one thread prints.
const MAX_REPORTS: u64 = 5;

/// Straight to stderr: libtest captures `eprintln!` in every thread a test spawns, and loses
/// it if the process dies.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The guest: enable FP/SIMD, then forever: count in x1, copy x1 to every SIMD register,
/// every 65536th round wait in WFI (until a kick), and write x1 to an address outside RAM (an
/// MMIO exit).
fn guest_program() -> Vec<u32> {
    let mut code = vec![
        0xD2A0_0600, // movz x0, #0x30, lsl #16: CPACR_EL1.FPEN = 0b11
        0xD518_1040, // msr cpacr_el1, x0
        0xD503_3FDF, // isb
        0xD2A2_0002, // movz x2, #0x1000, lsl #16: 0x1000_0000, below RAM
        0xD280_0001, // movz x1, #0
    ];
    let top = code.len();
    code.push(0x9100_0421); // add x1, x1, #1
    for v in 0..32 {
        code.push(0x4E08_0C20 | v); // dup v<v>.2d, x1
    }
    code.push(0x9240_3C23); // and x3, x1, #0xffff
    code.push(0xB500_0043); // cbnz x3, +8
    code.push(0xD503_207F); // wfi
    code.push(0xF900_0041); // str x1, [x2]
    let back = top as i64 - code.len() as i64;
    code.push(0x1400_0000 | (back as u32 & 0x03FF_FFFF)); // b top
    code
}

/// The kick handler: scribbles over the SIMD registers the kernel saved for the thread.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    fence(Ordering::Acquire);
    // SAFETY: changes only the SIMD registers it declares clobbered.
    unsafe {
        asm!(
            "movi v0.16b, #0xa5", "movi v1.16b, #0xa5", "movi v2.16b, #0xa5", "movi v3.16b, #0xa5",
            "movi v4.16b, #0xa5", "movi v5.16b, #0xa5", "movi v6.16b, #0xa5", "movi v7.16b, #0xa5",
            "movi v16.16b, #0xa5", "movi v17.16b, #0xa5", "movi v18.16b, #0xa5", "movi v19.16b, #0xa5",
            "movi v20.16b, #0xa5", "movi v21.16b, #0xa5", "movi v22.16b, #0xa5", "movi v23.16b, #0xa5",
            "movi v24.16b, #0xa5", "movi v25.16b, #0xa5", "movi v26.16b, #0xa5", "movi v27.16b, #0xa5",
            "movi v28.16b, #0xa5", "movi v29.16b, #0xa5", "movi v30.16b, #0xa5", "movi v31.16b, #0xa5",
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _, out("v24") _, out("v25") _,
            out("v26") _, out("v27") _, out("v28") _, out("v29") _, out("v30") _, out("v31") _,
        );
    }
}

/// What one raw `KVM_RUN` left in the registers it was given.
struct RunOutcome {
    result: i64,
    simd: [u128; 32],
    x9_to_x15: [u64; 7],
    vector_length_before: u64,
    vector_length_after: u64,
}

/// One `KVM_RUN` through `svc` with every SIMD register loaded from `simd` and x9..x15 from
/// `x9_to_x15`, and the SVE vector length read (`rdvl`) just before and after.
fn run_with_registers(fd: i32, simd: &[u128; 32], x9_to_x15: [u64; 7]) -> RunOutcome {
    let mut after = [0u128; 32];
    let mut x = x9_to_x15;
    let (result, vl_before, vl_after): (i64, u64, u64);
    // SAFETY: loads from `simd` and stores to `after`, both 512 bytes; the ioctl on a vCPU fd
    // this thread owns writes only the vCPU's run page and changes x0 alone.
    unsafe {
        asm!(
            ".inst 0x04BF5030", // rdvl x16, #1
            "ldp q0, q1, [{b}, #0]", "ldp q2, q3, [{b}, #32]", "ldp q4, q5, [{b}, #64]",
            "ldp q6, q7, [{b}, #96]", "ldp q8, q9, [{b}, #128]", "ldp q10, q11, [{b}, #160]",
            "ldp q12, q13, [{b}, #192]", "ldp q14, q15, [{b}, #224]", "ldp q16, q17, [{b}, #256]",
            "ldp q18, q19, [{b}, #288]", "ldp q20, q21, [{b}, #320]", "ldp q22, q23, [{b}, #352]",
            "ldp q24, q25, [{b}, #384]", "ldp q26, q27, [{b}, #416]", "ldp q28, q29, [{b}, #448]",
            "ldp q30, q31, [{b}, #480]",
            "svc #0",
            "stp q0, q1, [{a}, #0]", "stp q2, q3, [{a}, #32]", "stp q4, q5, [{a}, #64]",
            "stp q6, q7, [{a}, #96]", "stp q8, q9, [{a}, #128]", "stp q10, q11, [{a}, #160]",
            "stp q12, q13, [{a}, #192]", "stp q14, q15, [{a}, #224]", "stp q16, q17, [{a}, #256]",
            "stp q18, q19, [{a}, #288]", "stp q20, q21, [{a}, #320]", "stp q22, q23, [{a}, #352]",
            "stp q24, q25, [{a}, #384]", "stp q26, q27, [{a}, #416]", "stp q28, q29, [{a}, #448]",
            "stp q30, q31, [{a}, #480]",
            ".inst 0x04BF5031", // rdvl x17, #1
            b = in(reg) simd.as_ptr(),
            a = in(reg) after.as_mut_ptr(),
            inlateout("x0") i64::from(fd) => result,
            in("x1") KVM_RUN,
            in("x2") 0u64,
            in("x8") SYS_IOCTL,
            inout("x9") x[0], inout("x10") x[1], inout("x11") x[2], inout("x12") x[3],
            inout("x13") x[4], inout("x14") x[5], inout("x15") x[6],
            out("x16") vl_before,
            out("x17") vl_after,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
        );
    }
    RunOutcome {
        result,
        simd: after,
        x9_to_x15: x,
        vector_length_before: vl_before,
        vector_length_after: vl_after,
    }
}

/// The SVE vector length in bytes, read twice `spins` loop rounds apart: an interrupt or a
/// preemption in between must not change it.
fn vector_length_across(spins: u64) -> (u64, u64) {
    let (first, second): (u64, u64);
    // SAFETY: rdvl and a counted loop, on registers only.
    unsafe {
        asm!(
            ".inst 0x04BF5030", // rdvl x16, #1
            "2:",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            ".inst 0x04BF5031", // rdvl x17, #1
            n = inout(reg) spins.max(1) => _,
            out("x16") first,
            out("x17") second,
        );
    }
    (first, second)
}

/// A vCPU thread's kvm_run page and pthread, for the kicker.
#[derive(Clone, Copy)]
struct Kickable {
    thread: libc::pthread_t,
    run: usize,
}

impl Kickable {
    /// Sets `immediate_exit` and sends SIGRTMIN, as the VMM's kicker does.
    ///
    /// # Safety
    /// The vCPU's run page is still mapped and its thread not yet joined.
    unsafe fn kick(self) {
        // SAFETY: the caller keeps the page mapped and the thread alive.
        unsafe {
            std::ptr::addr_of_mut!((*(self.run as *mut kvm_run)).immediate_exit).write_volatile(1);
            fence(Ordering::Release);
            libc::pthread_kill(self.thread, libc::SIGRTMIN());
        }
    }
}

/// Shared between the threads of one run.
struct Shared {
    stop: AtomicBool,
    failures: AtomicU64,
    kickable: Mutex<Vec<Kickable>>,
}

/// One vCPU thread: runs until `stop`, checking every run. Returns the vCPU, so that its run
/// page stays mapped until the thread is joined.
fn vcpu_thread(index: u64, mut vcpu: VcpuFd, shared: &Shared) -> VcpuFd {
    let run = vcpu.get_kvm_run() as *mut kvm_run;
    // SAFETY: pthread_self has no preconditions.
    let thread = unsafe { libc::pthread_self() };
    shared.kickable.lock().unwrap().push(Kickable {
        thread,
        run: run as usize,
    });
    let fd = vcpu.as_raw_fd();
    let vector_length = vector_length_across(1).0;
    let mut source = vec![0u8; 1 << 16];
    let mut copy = vec![0u8; 1 << 16];
    let (mut rounds, mut interrupted, mut exits, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut fail = |what: String| {
        failed += 1;
        shared.failures.fetch_add(1, Ordering::Relaxed);
        if failed <= MAX_REPORTS {
            say(&format!("vcpu{index}: {what}"));
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        rounds += 1;
        let seed = (index << 56) ^ rounds.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let simd: [u128; 32] = std::array::from_fn(|i| {
            (u128::from(seed ^ i as u64) << 64) | u128::from(!seed ^ ((i as u64) << 8))
        });
        let x9_to_x15: [u64; 7] = std::array::from_fn(|i| seed ^ (i as u64 + 9));
        let outcome = run_with_registers(fd, &simd, x9_to_x15);
        let result = outcome.result;
        for (i, (&was, &is)) in simd.iter().zip(&outcome.simd).enumerate() {
            if was != is {
                fail(format!(
                    "round {rounds}, KVM_RUN {result}: v{i} {was:#034x} became {is:#034x}"
                ));
            }
        }
        for (i, (&was, &is)) in x9_to_x15.iter().zip(&outcome.x9_to_x15).enumerate() {
            if was != is {
                fail(format!(
                    "round {rounds}, KVM_RUN {result}: x{} {was:#x} became {is:#x}",
                    i + 9
                ));
            }
        }
        let (spin_start, spin_end) = vector_length_across(rounds % 5000);
        for (when, length) in [
            ("before KVM_RUN", outcome.vector_length_before),
            ("after KVM_RUN", outcome.vector_length_after),
            ("before a spin", spin_start),
            ("after a spin", spin_end),
        ] {
            if length != vector_length {
                fail(format!(
                    "round {rounds}: SVE vector length {length} {when}, {vector_length} at start"
                ));
            }
        }
        if result == -i64::from(libc::EINTR) {
            interrupted += 1;
            // SAFETY: the run page is mapped while `vcpu` lives.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
        } else if result == 0 {
            // SAFETY: as above; KVM wrote the exit before KVM_RUN returned.
            let reason = unsafe { (*run).exit_reason };
            assert_eq!(reason, KVM_EXIT_MMIO, "vcpu{index}: exit {reason}");
            exits += 1;
        } else {
            panic!("vcpu{index}: KVM_RUN returned {result}");
        }
        // glibc's SVE memcpy between runs, as the VMM's exit handling does.
        let at = rounds as usize % source.len();
        source[at] = rounds as u8;
        copy.copy_from_slice(&source);
        std::hint::black_box(&copy);
    }
    say(&format!(
        "vcpu{index}: {rounds} runs, {exits} MMIO exits, {interrupted} kicked, {failed} failed checks (SVE vector length {vector_length})"
    ));
    vcpu
}

/// A thread that never enters a guest, watching its own vector length.
fn spinner_thread(shared: &Shared) {
    let vector_length = vector_length_across(1).0;
    let (mut rounds, mut failed) = (0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        rounds += 1;
        let (first, second) = vector_length_across(100_000);
        if first != vector_length || second != vector_length {
            failed += 1;
            shared.failures.fetch_add(1, Ordering::Relaxed);
            if failed <= MAX_REPORTS {
                say(&format!(
                    "spinner: SVE vector length {first} then {second}, {vector_length} at start"
                ));
            }
        }
    }
    say(&format!("spinner: {rounds} spins, {failed} failed checks"));
}

/// Kicks a random vCPU thread every 0-500 µs until `stop`.
fn kicker_thread(shared: &Shared) {
    let (mut random, mut kicks) = (0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        random = random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let kickable = shared.kickable.lock().unwrap();
        if !kickable.is_empty() {
            let target = kickable[(random >> 33) as usize % kickable.len()];
            // SAFETY: vCPU threads return their vCPU and are joined only after `stop` and the
            // kicker's end.
            unsafe { target.kick() };
            kicks += 1;
        }
        drop(kickable);
        std::thread::sleep(Duration::from_micros((random >> 40) % 500));
    }
    say(&format!("kicker: {kicks} kicks"));
}

/// A VM whose vCPUs all run [`guest_program`] from the start of RAM.
fn vm_with_program(kvm: &Kvm) -> VmFd {
    let vm = kvm.create_vm().unwrap();
    // SAFETY: a fresh anonymous mapping, never unmapped: it outlives the VM.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUEST_RAM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED);
    let program = guest_program();
    // SAFETY: the program is far smaller than the mapping.
    unsafe { std::ptr::copy_nonoverlapping(program.as_ptr(), host.cast::<u32>(), program.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: RAM_START,
        memory_size: GUEST_RAM as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the mapping stays for the life of the process.
    unsafe { vm.set_user_memory_region(region).unwrap() };
    vm
}

fn torture(vcpus: u64, duration: Duration) {
    // SAFETY: the handler only touches SIMD registers; all signals are blocked while it runs,
    // as in vmm-sys-util's `register_signal_handler`, which the VMM uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_kick as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigfillset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGRTMIN(), &action, std::ptr::null_mut()),
            0
        );
    }
    let kvm = Kvm::new().unwrap();
    let vm = vm_with_program(&kvm);
    let mut init = kvm_bindings::kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init).unwrap();
    init.features[0] &= !(1 << KVM_ARM_VCPU_POWER_OFF);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        failures: AtomicU64::new(0),
        kickable: Mutex::default(),
    });
    let mut vcpu_threads = Vec::new();
    for index in 0..vcpus {
        let vcpu = vm.create_vcpu(index).unwrap();
        vcpu.vcpu_init(&init).unwrap();
        vcpu.set_one_reg(PC, &RAM_START.to_le_bytes()).unwrap();
        let shared = Arc::clone(&shared);
        vcpu_threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu_thread(index, vcpu, &shared))
                .unwrap(),
        );
    }
    let spinner = std::thread::spawn({
        let shared = Arc::clone(&shared);
        move || spinner_thread(&shared)
    });
    let kicker = std::thread::spawn({
        let shared = Arc::clone(&shared);
        move || kicker_thread(&shared)
    });
    let start = Instant::now();
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(100));
    }
    shared.stop.store(true, Ordering::Relaxed);
    kicker.join().unwrap();
    spinner.join().unwrap();
    // A thread in WFI leaves only when kicked.
    for target in shared.kickable.lock().unwrap().iter() {
        // SAFETY: no vCPU thread has been joined yet, and each keeps its vCPU until then.
        unsafe { target.kick() };
    }
    for thread in vcpu_threads {
        drop(thread.join().unwrap());
    }
    assert_eq!(
        shared.failures.load(Ordering::Relaxed),
        0,
        "registers or the vector length changed under a thread (lines above)"
    );
}

#[test]
#[ignore = "a host check, minutes long: testbed run register-torture"]
fn eight_vcpu_threads_keep_their_registers_across_runs_and_kicks() {
    torture(8, Duration::from_secs(300));
}

#[test]
#[ignore = "a host check, minutes long: testbed run register-torture"]
fn two_vcpu_threads_keep_their_registers_across_runs_and_kicks() {
    torture(2, Duration::from_secs(200));
}
