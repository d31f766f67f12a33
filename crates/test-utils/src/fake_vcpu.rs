//! A fake vCPU that blocks where KVM blocks, so that code which would deadlock on KVM hangs
//! (and fails by its test's deadline) in a unit test too.
//!
//! What it keeps of KVM:
//! * `KVM_RUN` holds the vCPU's mutex for as long as the guest runs, and every other vCPU ioctl
//!   takes it: [`Vcpu::mp_state`], [`Vcpu::set_mp_state`], the register accesses and
//!   [`Vcpu::reset`] called from another thread wait until [`Vcpu::run`] returns.
//! * A guest never leaves `KVM_RUN` on its own: `run` returns the next exit the test scripted
//!   ([`FakeVcpu::push_exit`]), or blocks until a kick ([`VmExit::Interrupted`]). A kick that
//!   lands outside `run` makes the next entry return at once.
//! * A SUSPENDED vCPU sleeps in `KVM_RUN` until an interrupt is pending
//!   ([`FakeVcpu::set_interrupt`]), then exits with `KVM_SYSTEM_EVENT_WAKEUP`, again at every
//!   entry until userspace changes its MP state: SUSPENDED is sticky, as in KVM. A STOPPED
//!   (powered-off) vCPU sleeps there until kicked.
//!
//! Clones are handles on the same vCPU, as threads sharing its file descriptor would have. The
//! `peek_*` methods and counters are the test's view from outside: they never block.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use arch_aarch64::regs::{PSTATE, PSTATE_EL1H_DAIF_MASKED};
use hypervisor::{MpState, SystemEvent, Vcpu, VcpuError, VcpuKick, VmExit};

/// A fake vCPU; see the [module documentation](self).
#[derive(Clone)]
pub struct FakeVcpu {
    index: u32,
    kvm: Arc<Kvm>,
}

/// What the test scripted the guest to do at its next exit.
enum Step {
    Exit(VmExit),
    Panic,
}

/// KVM's side of one vCPU.
struct Kvm {
    /// The vCPU mutex every vCPU ioctl takes; `run` holds it throughout.
    ioctl: Mutex<()>,
    state: Mutex<State>,
    /// Wakes a `run` that sleeps: a kick, an interrupt, a scripted exit, an MP state change.
    changed: Condvar,
    /// Runs when the vCPU is made SUSPENDED, outside every lock, so that a test can inject a
    /// race there.
    on_suspended: Mutex<Option<Box<dyn Fn() + Send>>>,
}

struct State {
    regs: HashMap<u64, u64>,
    mp: MpState,
    interrupt: bool,
    kick_pending: bool,
    in_run: bool,
    script: VecDeque<Step>,
    completed_reads: Vec<Vec<u8>>,
    fail_mp_reads: bool,
    fail_mp_writes: bool,
    runs: usize,
    mp_reads: usize,
    resets: usize,
    kicks: usize,
}

impl Kvm {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the vCPU mutex, as every vCPU ioctl does: waits while another thread is in `run`.
    fn ioctl(&self) -> MutexGuard<'_, ()> {
        // A panic scripted in `run` poisons it; KVM has no such state to lose.
        self.ioctl.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state());
        self.changed.notify_all();
    }
}

impl FakeVcpu {
    /// vCPU `index` in MP state `mp`, its registers all zero, nothing scripted.
    pub fn new(index: u32, mp: MpState) -> Self {
        let state = State {
            regs: HashMap::new(),
            mp,
            interrupt: false,
            kick_pending: false,
            in_run: false,
            script: VecDeque::new(),
            completed_reads: Vec::new(),
            fail_mp_reads: false,
            fail_mp_writes: false,
            runs: 0,
            mp_reads: 0,
            resets: 0,
            kicks: 0,
        };
        Self {
            index,
            kvm: Arc::new(Kvm {
                ioctl: Mutex::new(()),
                state: Mutex::new(state),
                changed: Condvar::new(),
                on_suspended: Mutex::new(None),
            }),
        }
    }

    /// The kicker of this vCPU's `run`, as the VMM's signal-based one.
    pub fn kicker(&self) -> Arc<FakeKick> {
        Arc::new(FakeKick {
            kvm: Arc::clone(&self.kvm),
        })
    }

    /// The guest's next exit: `run` returns it once the vCPU runs (not while it is SUSPENDED
    /// or STOPPED), waking a `run` that waits.
    pub fn push_exit(&self, exit: VmExit) {
        self.kvm
            .changed(|state| state.script.push_back(Step::Exit(exit)));
    }

    /// Makes the `run` after the scripted exits unwind as a panic would, standing for a bug in
    /// the code that handles an exit.
    pub fn push_panic(&self) {
        self.kvm
            .changed(|state| state.script.push_back(Step::Panic));
    }

    /// How many scripted exits `run` has not returned yet.
    pub fn pending_exits(&self) -> usize {
        self.kvm.state().script.len()
    }

    /// Sets a register as the guest left it (the arguments of the call it exits for).
    pub fn poke_reg(&self, id: u64, value: u64) {
        self.kvm.state().regs.insert(id, value);
    }

    /// A register's value, without asking KVM (which would wait for `run`).
    pub fn peek_reg(&self, id: u64) -> u64 {
        self.kvm.state().regs.get(&id).copied().unwrap_or(0)
    }

    /// The MP state, without asking KVM (which would wait for `run`).
    pub fn peek_mp_state(&self) -> MpState {
        self.kvm.state().mp
    }

    /// Changes the MP state as KVM itself does, without the VMM asking: a PSCI CPU_OFF or
    /// CPU_ON that KVM handles.
    pub fn kvm_sets_mp_state(&self, mp: MpState) {
        self.kvm.changed(|state| state.mp = mp);
    }

    /// Drives the vCPU's pending interrupt, as the GIC would: while it is high, a SUSPENDED
    /// vCPU's `run` exits with a wakeup.
    pub fn set_interrupt(&self, pending: bool) {
        self.kvm.changed(|state| state.interrupt = pending);
    }

    /// Whether a thread is in `run` now.
    pub fn is_in_run(&self) -> bool {
        self.kvm.state().in_run
    }

    /// Makes [`Vcpu::mp_state`] fail while `failing`.
    pub fn fail_mp_state_reads(&self, failing: bool) {
        self.kvm.state().fail_mp_reads = failing;
    }

    /// Makes [`Vcpu::set_mp_state`] fail while `failing`.
    pub fn fail_mp_state_writes(&self, failing: bool) {
        self.kvm.state().fail_mp_writes = failing;
    }

    /// Runs `hook` each time the vCPU is made SUSPENDED, right after the change.
    pub fn on_suspended(&self, hook: impl Fn() + Send + 'static) {
        let mut slot = self
            .kvm
            .on_suspended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *slot = Some(Box::new(hook));
    }

    /// Entries into the guest ([`Vcpu::run`] calls).
    pub fn runs(&self) -> usize {
        self.kvm.state().runs
    }

    /// [`Vcpu::mp_state`] calls, failed ones included.
    pub fn mp_reads(&self) -> usize {
        self.kvm.state().mp_reads
    }

    /// [`Vcpu::reset`] calls.
    pub fn resets(&self) -> usize {
        self.kvm.state().resets
    }

    /// Kicks received, whether or not they found the vCPU in `run`.
    pub fn kicks(&self) -> usize {
        self.kvm.state().kicks
    }

    /// The data of each completed MMIO read, oldest first.
    pub fn completed_reads(&self) -> Vec<Vec<u8>> {
        self.kvm.state().completed_reads.clone()
    }

    fn injected(&self) -> VcpuError {
        VcpuError::MpState {
            index: self.index,
            source: std::io::Error::other("injected"),
        }
    }
}

impl Vcpu for FakeVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn run(&mut self) -> Result<VmExit, VcpuError> {
        let _ioctl = self.kvm.ioctl();
        let mut state = self.kvm.state();
        state.runs += 1;
        state.in_run = true;
        let step = loop {
            if std::mem::take(&mut state.kick_pending) {
                break Step::Exit(VmExit::Interrupted);
            }
            match state.mp {
                MpState::Suspended if state.interrupt => {
                    break Step::Exit(VmExit::SystemEvent(SystemEvent::Wakeup));
                }
                MpState::Suspended | MpState::Stopped => {}
                _ => {
                    if let Some(step) = state.script.pop_front() {
                        break step;
                    }
                }
            }
            state = self
                .kvm
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        };
        state.in_run = false;
        drop(state);
        match step {
            Step::Exit(exit) => Ok(exit),
            // Unwinds without a panic message in the test's output.
            Step::Panic => std::panic::resume_unwind(Box::new("scripted vCPU panic")),
        }
    }

    fn complete_mmio_read(&mut self, data: &[u8]) -> Result<(), VcpuError> {
        let _ioctl = self.kvm.ioctl();
        self.kvm.state().completed_reads.push(data.to_vec());
        Ok(())
    }

    fn reg(&self, id: u64) -> Result<u64, VcpuError> {
        let _ioctl = self.kvm.ioctl();
        Ok(self.peek_reg(id))
    }

    fn set_reg(&self, id: u64, value: u64) -> Result<(), VcpuError> {
        let _ioctl = self.kvm.ioctl();
        self.poke_reg(id, value);
        Ok(())
    }

    fn mp_state(&self) -> Result<MpState, VcpuError> {
        let _ioctl = self.kvm.ioctl();
        let mut state = self.kvm.state();
        state.mp_reads += 1;
        if state.fail_mp_reads {
            return Err(self.injected());
        }
        Ok(state.mp)
    }

    fn set_mp_state(&self, mp: MpState) -> Result<(), VcpuError> {
        let _ioctl = self.kvm.ioctl();
        {
            let mut state = self.kvm.state();
            if state.fail_mp_writes {
                return Err(self.injected());
            }
            state.mp = mp;
        }
        if mp == MpState::Suspended {
            let hook = self
                .kvm
                .on_suspended
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(hook) = hook.as_ref() {
                hook();
            }
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), VcpuError> {
        let _ioctl = self.kvm.ioctl();
        let mut state = self.kvm.state();
        state.resets += 1;
        state.mp = MpState::Runnable;
        state.regs.clear();
        state.regs.insert(PSTATE, PSTATE_EL1H_DAIF_MASKED);
        Ok(())
    }
}

/// Kicks a [`FakeVcpu`] out of `run`, now or at its next entry.
pub struct FakeKick {
    kvm: Arc<Kvm>,
}

impl VcpuKick for FakeKick {
    fn bind_current_thread(&self) {}

    fn unbind_thread(&self) {}

    fn kick(&self) {
        self.kvm.changed(|state| {
            state.kicks += 1;
            state.kick_pending = true;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;

    /// Long enough for a blocked call to have returned had it not been blocked.
    const BLOCKED: Duration = Duration::from_millis(100);
    /// Only a deadlock takes this long.
    const LIMIT: Duration = Duration::from_secs(30);

    /// Runs `vcpu` once on a thread; the exit arrives on the returned channel.
    fn run_on_thread(vcpu: &FakeVcpu) -> mpsc::Receiver<VmExit> {
        let (sender, exits) = mpsc::channel();
        let mut vcpu = vcpu.clone();
        thread::spawn(move || sender.send(vcpu.run().unwrap()));
        exits
    }

    fn entered(vcpu: &FakeVcpu) {
        let deadline = std::time::Instant::now() + LIMIT;
        while !vcpu.is_in_run() {
            assert!(std::time::Instant::now() < deadline, "never entered run");
            thread::yield_now();
        }
    }

    #[test]
    fn the_mp_state_cannot_be_read_from_another_thread_until_run_is_kicked() {
        let vcpu = FakeVcpu::new(0, MpState::Runnable);
        let exit = run_on_thread(&vcpu);
        entered(&vcpu);

        let (sender, read) = mpsc::channel();
        let reader = vcpu.clone();
        thread::spawn(move || sender.send(reader.mp_state().unwrap()));
        assert!(read.recv_timeout(BLOCKED).is_err(), "read while in KVM_RUN");

        vcpu.kicker().kick();
        assert_eq!(exit.recv_timeout(LIMIT).unwrap(), VmExit::Interrupted);
        assert_eq!(read.recv_timeout(LIMIT).unwrap(), MpState::Runnable);
    }

    #[test]
    fn a_running_guest_leaves_run_only_for_its_scripted_exits_or_a_kick() {
        let mut vcpu = FakeVcpu::new(0, MpState::Runnable);
        vcpu.push_exit(VmExit::MmioRead { addr: 8, len: 4 });
        assert_eq!(vcpu.run().unwrap(), VmExit::MmioRead { addr: 8, len: 4 });
        let exit = run_on_thread(&vcpu);
        assert!(exit.recv_timeout(BLOCKED).is_err(), "left KVM_RUN unasked");
        vcpu.push_exit(VmExit::InternalError);
        assert_eq!(exit.recv_timeout(LIMIT).unwrap(), VmExit::InternalError);
        // A kick before the entry makes it return at once.
        vcpu.kicker().kick();
        assert_eq!(vcpu.run().unwrap(), VmExit::Interrupted);
    }

    #[test]
    fn a_suspended_vcpu_sleeps_until_an_interrupt_and_stays_suspended() {
        let mut vcpu = FakeVcpu::new(0, MpState::Suspended);
        vcpu.push_exit(VmExit::InternalError);
        let exit = run_on_thread(&vcpu);
        assert!(exit.recv_timeout(BLOCKED).is_err(), "ran while SUSPENDED");
        vcpu.set_interrupt(true);
        let wakeup = VmExit::SystemEvent(SystemEvent::Wakeup);
        assert_eq!(exit.recv_timeout(LIMIT).unwrap(), wakeup);
        assert_eq!(vcpu.run().unwrap(), wakeup, "SUSPENDED is sticky");
        vcpu.set_mp_state(MpState::Runnable).unwrap();
        assert_eq!(vcpu.run().unwrap(), VmExit::InternalError);
    }
}
