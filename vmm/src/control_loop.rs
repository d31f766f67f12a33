//! The running VM's control loop, on the VM thread (event-manager's epoll): console input, the RTC alarm timer, signals, and
//! the VM's exit event. Device work that is not MMIO happens here, on one thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::Serial16550;
use devices::rtc_pl031::{Pl031Rtc, SystemClock, TimerFdAlarm};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitControl, ExitReason};

/// The RTC as the VMM builds it.
pub type Rtc = Pl031Rtc<SystemClock, TimerFdAlarm>;

/// Event loop failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlLoopError {
    /// event-manager could not set up or poll its epoll.
    #[error("Cannot run the control loop")]
    EventManager(#[source] event_manager::Error),
}

/// Host bytes to the guest's serial port, with back-pressure: when the receive FIFO is full,
/// stdin is left unread until the guest drains it.
pub struct ConsoleInput {
    stdin: RawFd,
    serial: Arc<Mutex<Serial16550>>,
    rx_space: EventFd,
    pending: Vec<u8>,
    reading: bool,
    open: bool,
}

impl ConsoleInput {
    /// Feeds `stdin` into `serial`; `rx_space` is the event the serial raises when its FIFO
    /// empties.
    pub fn new(stdin: RawFd, serial: Arc<Mutex<Serial16550>>, rx_space: EventFd) -> Self {
        Self {
            stdin,
            serial,
            rx_space,
            pending: Vec::new(),
            reading: false,
            open: true,
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let taken = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(&self.pending);
        self.pending.drain(..taken);
    }

    fn read_stdin(&mut self) {
        let mut buffer = [0u8; 64];
        // SAFETY: reads at most `buffer.len()` bytes into a buffer we own.
        let read = unsafe { libc::read(self.stdin, buffer.as_mut_ptr().cast(), buffer.len()) };
        match read {
            0 => self.open = false,
            n if n > 0 => self.pending.extend_from_slice(&buffer[..n as usize]),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::WouldBlock
                    && err.kind() != std::io::ErrorKind::Interrupted
                {
                    log::warn!("Console input failed: {err}");
                    self.open = false;
                }
            }
        }
    }

    /// Reads stdin only while there is nowhere else to put bytes and it is still open.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.open && self.pending.is_empty();
        if want != self.reading {
            let events = Events::new_raw(self.stdin, EventSet::IN);
            let result = if want {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            match result {
                Ok(()) => self.reading = want,
                Err(err) => {
                    // A regular file or a closed fd cannot be polled: no console input.
                    log::debug!("Console input not polled: {err:?}");
                    self.open = false;
                    self.reading = false;
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.rx_space, EventSet::IN)) {
            log::warn!("Serial receive space not polled: {err:?}");
        }
        self.update_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.stdin {
            if events.event_set().contains(EventSet::IN) {
                self.read_stdin();
            } else {
                self.open = false;
            }
        } else if events.fd() == self.rx_space.as_raw_fd() {
            let _ = self.rx_space.read();
        }
        self.flush();
        self.update_interest(ops);
    }
}

/// Raises the RTC alarm when its timerfd expires.
pub struct RtcAlarm {
    rtc: Arc<Mutex<Rtc>>,
    timer: RawFd,
}

impl RtcAlarm {
    /// Watches `rtc`'s alarm timer.
    pub fn new(rtc: Arc<Mutex<Rtc>>) -> Self {
        let timer = rtc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alarm_timer()
            .as_raw_fd();
        Self { rtc, timer }
    }
}

impl MutEventSubscriber for RtcAlarm {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new_raw(self.timer, EventSet::IN)) {
            log::error!("RTC alarm timer not polled: {err:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let result = self
            .rtc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_alarm_timer();
        if let Err(err) = result {
            log::warn!("RTC alarm: {err}");
        }
    }
}

/// Turns SIGTERM and SIGINT into a clean VM exit.
pub struct SignalWatcher {
    event: &'static EventFd,
    control: Arc<ExitControl>,
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(self.event, EventSet::IN)) {
            log::error!("Signals not polled: {err:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        // The runner logs it once the VM has stopped, whichever boot the signal ended.
        let signal = crate::signals::last_signal();
        self.control.request_exit(ExitReason::Signal(signal));
    }
}

/// Consumes the VM's exit event so that the loop wakes up and sees the exit reason.
struct ExitWatcher {
    control: Arc<ExitControl>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(self.control.exit_event(), EventSet::IN)) {
            log::error!("VM exit event not polled: {err:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.control.exit_event().read();
    }
}

/// The subscribers of one VM run.
pub struct ControlLoop {
    manager: EventManager<Box<dyn MutEventSubscriber>>,
    control: Arc<ExitControl>,
}

impl ControlLoop {
    /// A loop that ends when `control` records an exit; `signals` is the signal eventfd, when
    /// this VM owns the process's SIGTERM and SIGINT.
    pub fn new(
        control: Arc<ExitControl>,
        signals: Option<&'static EventFd>,
    ) -> Result<Self, ControlLoopError> {
        let mut manager: EventManager<Box<dyn MutEventSubscriber>> =
            EventManager::new().map_err(ControlLoopError::EventManager)?;
        manager.add_subscriber(Box::new(ExitWatcher {
            control: Arc::clone(&control),
        }));
        if let Some(event) = signals {
            manager.add_subscriber(Box::new(SignalWatcher {
                event,
                control: Arc::clone(&control),
            }));
        }
        Ok(Self { manager, control })
    }

    /// Adds a device subscriber.
    pub fn add(&mut self, subscriber: Box<dyn MutEventSubscriber>) {
        self.manager.add_subscriber(subscriber);
    }

    /// Dispatches events until the VM exits, and returns why.
    pub fn run(&mut self) -> Result<ExitReason, ControlLoopError> {
        loop {
            if let Some(reason) = self.control.exit_reason() {
                return Ok(reason);
            }
            self.manager.run().map_err(ControlLoopError::EventManager)?;
        }
    }
}
