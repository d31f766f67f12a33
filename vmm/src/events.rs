//! Typed, serialisable events for guest power transitions, the hub that fans them out to
//! subscribers, and the tracker that tells which device woke a suspended guest.
//!
//! Events are streamed as JSON, one object per event, e.g.
//! `{"at_ms":1767225600123,"event":"resumed","vcpu":0,"latency_us":180,"source":"rtc"}`.

mod subscription;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use subscription::{EVENT_QUEUE_LIMIT, EventReceiver};
use subscription::{Subscribers, Subscription};

use arch_aarch64::psci::{PsciReturn, SuspendDenial};
use devices::irq::{IrqError, IrqLine};
use serde::{Deserialize, Serialize};

/// The device whose interrupt woke the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeSource {
    /// The PL031 RTC alarm.
    Rtc,
    /// The PL061 GPIO controller (the wake button).
    Gpio,
    /// The serial console (received data).
    Serial,
    /// Nothing the VMM tracks, e.g. a timer, or no interrupt was noted.
    #[serde(alias = "other")]
    Unknown,
}

impl WakeSource {
    const ALL: [Self; 4] = [Self::Rtc, Self::Gpio, Self::Serial, Self::Unknown];

    /// Non-zero, so that 0 can mean "none" in an atomic.
    fn code(self) -> u8 {
        match self {
            Self::Rtc => 1,
            Self::Gpio => 2,
            Self::Serial => 3,
            Self::Unknown => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|source| source.code() == code)
    }

    fn level_bit(self) -> u8 {
        1 << self.code()
    }

    /// The lowercase name used in JSON and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rtc => "rtc",
            Self::Gpio => "gpio",
            Self::Serial => "serial",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for WakeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a SYSTEM_SUSPEND call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Denial {
    /// Other vCPUs were not OFF (PSCI `DENIED`).
    OtherCpusOn {
        /// How many.
        count: usize,
    },
    /// The entry point is not 4-byte aligned guest RAM (PSCI `INVALID_ADDRESS`).
    InvalidEntry {
        /// The rejected entry point.
        entry: u64,
    },
    /// Another suspend or a host pause was in progress (PSCI `DENIED`).
    Busy,
    /// The VM started stopping during the check (PSCI `DENIED`).
    Stopping,
    /// `x0` held no SYSTEM_SUSPEND function id (PSCI `NOT_SUPPORTED`). KVM never exits so.
    NotSystemSuspend {
        /// The `x0` found.
        function_id: u64,
    },
}

impl Denial {
    /// The PSCI return code the guest receives in `x0`.
    pub fn psci_return(&self) -> PsciReturn {
        match self {
            Self::OtherCpusOn { .. } | Self::Busy | Self::Stopping => PsciReturn::Denied,
            Self::InvalidEntry { .. } => PsciReturn::InvalidAddress,
            Self::NotSystemSuspend { .. } => PsciReturn::NotSupported,
        }
    }
}

impl From<SuspendDenial> for Denial {
    fn from(denial: SuspendDenial) -> Self {
        match denial {
            SuspendDenial::OtherCpusOn { count } => Self::OtherCpusOn { count },
            SuspendDenial::InvalidEntry { entry } => Self::InvalidEntry { entry },
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OtherCpusOn { count } => write!(f, "{count} other vCPU(s) on"),
            Self::InvalidEntry { entry } => write!(f, "invalid entry point {entry:#x}"),
            Self::Busy => f.write_str("another suspend or a pause is in progress"),
            Self::Stopping => f.write_str("the VM is stopping"),
            Self::NotSystemSuspend { function_id } => {
                write!(f, "function {function_id:#x} is not SYSTEM_SUSPEND")
            }
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VmEventKind {
    /// A vCPU called SYSTEM_SUSPEND and the VM started checking the call.
    SuspendRequested {
        /// The caller.
        vcpu: u32,
        /// Where the guest wants to resume.
        entry: u64,
        /// The value the guest wants in `x0` when it resumes.
        context_id: u64,
    },
    /// The call was refused; the guest sees the error and keeps running.
    SuspendDenied {
        /// The caller.
        vcpu: u32,
        /// Why.
        reason: Denial,
    },
    /// The VM is suspended.
    Suspended {
        /// The caller, which resumes.
        vcpu: u32,
        /// From the suspend exit to the caller's MP state being SUSPENDED.
        latency_us: u64,
    },
    /// An interrupt woke the suspended vCPU.
    Woken {
        /// The device that most likely raised it.
        source: WakeSource,
    },
    /// The vCPU was reset to the guest's entry point and is about to re-enter the guest.
    Resumed {
        /// The resumed vCPU.
        vcpu: u32,
        /// From the wakeup exit to the vCPU being ready to re-enter the guest.
        latency_us: u64,
        /// The device that most likely woke the guest.
        source: WakeSource,
    },
    /// A vCPU started another with PSCI CPU_ON (only when the VMM keeps the power states).
    CpuOn {
        /// The caller.
        vcpu: u32,
        /// The vCPU started.
        target: u32,
    },
    /// A vCPU powered itself down with PSCI CPU_OFF (only when the VMM keeps the power states).
    CpuOff {
        /// The vCPU.
        vcpu: u32,
    },
    /// The guest hibernated (PSCI SYSTEM_OFF2): the VM ends, and the next boot with the same
    /// disks resumes it.
    Hibernated {
        /// The vCPU that called SYSTEM_OFF2.
        vcpu: u32,
    },
    /// The suspended guest was saved to a snapshot directory.
    Snapshotted {
        /// The directory.
        path: std::path::PathBuf,
        /// Bytes stored: the state file and the memory file's data (not its holes).
        bytes: u64,
        /// From the request to the snapshot being complete on disk.
        ms: u64,
    },
    /// The guest was restored from a snapshot, still suspended.
    Restored {
        /// The snapshot directory.
        path: std::path::PathBuf,
        /// From reading the snapshot to the VM being suspended again.
        ms: u64,
    },
    /// This subscriber fell `limit` events behind and was dropped; its stream ends here.
    Lagged {
        /// The queue limit it reached.
        limit: usize,
    },
}

/// Also the log line: the product wants `suspended` and `resumed (wakeup: rtc)`.
impl fmt::Display for VmEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SuspendRequested {
                vcpu,
                entry,
                context_id,
            } => write!(
                f,
                "suspend requested by vCPU {vcpu} (entry {entry:#x}, context id {context_id:#x})"
            ),
            Self::SuspendDenied { vcpu, reason } => {
                write!(f, "suspend denied to vCPU {vcpu}: {reason}")
            }
            Self::Suspended { .. } => f.write_str("suspended"),
            Self::Woken { source } => write!(f, "woken by {source}"),
            Self::Resumed { source, .. } => write!(f, "resumed (wakeup: {source})"),
            Self::CpuOn { vcpu, target } => write!(f, "vCPU {vcpu} started vCPU {target}"),
            Self::CpuOff { vcpu } => write!(f, "vCPU {vcpu} powered off"),
            Self::Hibernated { .. } => f.write_str("the guest hibernated"),
            Self::Snapshotted { path, bytes, ms } => write!(
                f,
                "snapshot written to {} ({bytes} bytes in {ms} ms)",
                path.display()
            ),
            Self::Restored { path, ms } => {
                write!(f, "restored from {} in {ms} ms", path.display())
            }
            Self::Lagged { limit } => write!(f, "subscriber dropped {limit} events behind"),
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEvent {
    /// Wall-clock time, milliseconds since the Unix epoch, for correlating with other logs.
    /// Durations are measured on the monotonic clock and carried in the kinds' `latency_us`.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: VmEventKind,
}

impl VmEvent {
    /// `kind`, stamped with the current time.
    pub fn now(kind: VmEventKind) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        Self { at_ms, kind }
    }
}

/// Fans events out to subscribers, each with a bounded queue ([`EVENT_QUEUE_LIMIT`]);
/// publishing never blocks a vCPU thread.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Arc<Subscribers>,
    closed: std::sync::atomic::AtomicBool,
}

impl EventBus {
    /// A bus without subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver of every event published from now on; drop it to unsubscribe.
    pub fn subscribe(&self) -> EventReceiver {
        let queue = Arc::new(Subscription::default());
        let mut subscribers = self.lock();
        // After `close` a subscriber gets a stream that has already ended.
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            queue.end();
        } else {
            subscribers.push(Arc::clone(&queue));
        }
        EventReceiver::new(queue, Arc::downgrade(&self.subscribers))
    }

    /// Ends every subscription: receivers see the end once they drained it. Called when the
    /// VM has stopped for good.
    pub fn close(&self) {
        let mut subscribers = self.lock();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        for queue in subscribers.drain(..) {
            queue.end();
        }
    }

    /// Logs `event` and queues it for every subscriber, dropping those that fell behind.
    pub fn publish(&self, event: VmEvent) {
        match event.kind {
            VmEventKind::Woken { .. } => log::debug!("{}", event.kind),
            VmEventKind::Suspended { latency_us, .. } | VmEventKind::Resumed { latency_us, .. } => {
                log::info!("{} (in {latency_us} us)", event.kind)
            }
            // A guest sets the rate of these: a loop of refused calls must not flood the log.
            VmEventKind::SuspendRequested { .. } | VmEventKind::SuspendDenied { .. } => {
                if GUEST_EVENT_LOG.allow() {
                    log::info!("{}", event.kind)
                }
            }
            // Every suspend of an 8-vCPU guest has 14 of these.
            VmEventKind::CpuOn { .. } | VmEventKind::CpuOff { .. } => log::debug!("{}", event.kind),
            _ => log::info!("{}", event.kind),
        }
        self.lock().retain(|queue| {
            let keep = queue.push(&event);
            if !keep {
                log::warn!(
                    "An event subscriber fell {EVENT_QUEUE_LIMIT} events behind and was dropped"
                );
            }
            keep
        });
    }

    /// Publishes `kind` stamped with the current time, and returns the event.
    pub fn emit(&self, kind: VmEventKind) -> VmEvent {
        let event = VmEvent::now(kind);
        self.publish(event.clone());
        event
    }

    /// How many subscribers there are.
    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Subscription>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Suspend requests and denials come at the guest's rate: at most this many log lines a second.
static GUEST_EVENT_LOG: devices::log_limit::LogLimit = devices::log_limit::LogLimit::new(10);

/// Remembers which device interrupts were raised, so that the wakeup can name its source.
///
/// The rule: the first source noted since [`arm`](Self::arm) (the VM entering Suspending);
/// if none, a source whose level-triggered line is still asserted (its interrupt was pending
/// before the suspend, and an enabled pending interrupt wakes the vCPU at once); else
/// [`WakeSource::Unknown`] (e.g. the arch timer, which the VMM does not see).
///
/// Lock-free: two atomics, so device threads can note every assertion.
#[derive(Debug, Default)]
pub struct WakeSourceTracker {
    /// The code of the first source noted since `arm`, 0 for none.
    first: AtomicU8,
    /// One bit per source whose line is high.
    asserted: AtomicU8,
}

impl WakeSourceTracker {
    /// A tracker that has noted nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `source` asserted its interrupt. Call it before the interrupt reaches KVM,
    /// so that the wakeup exit it causes finds it.
    pub fn note(&self, source: WakeSource) {
        // The load keeps the common case (already noted) free of a contended write.
        if self.first.load(Ordering::Acquire) == 0 {
            let _ =
                self.first
                    .compare_exchange(0, source.code(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Records the level of `source`'s line; a high level is also [noted](Self::note).
    pub fn set_level(&self, source: WakeSource, high: bool) {
        if high {
            self.note(source);
            self.asserted.fetch_or(source.level_bit(), Ordering::AcqRel);
        } else {
            self.asserted
                .fetch_and(!source.level_bit(), Ordering::AcqRel);
        }
    }

    /// Forgets the sources noted so far: the VM starts suspending.
    pub fn arm(&self) {
        self.first.store(0, Ordering::Release);
    }

    /// The source of the wakeup, by the rule above, and forgets the noted one.
    pub fn take(&self) -> WakeSource {
        if let Some(source) = WakeSource::from_code(self.first.swap(0, Ordering::AcqRel)) {
            return source;
        }
        let asserted = self.asserted.load(Ordering::Acquire);
        WakeSource::ALL
            .into_iter()
            .find(|source| asserted & source.level_bit() != 0)
            .unwrap_or(WakeSource::Unknown)
    }
}

/// An [`IrqLine`] that tells a [`WakeSourceTracker`] about each level change before passing
/// it on. Wrap each wake-capable device's line with it.
pub struct WakeSourceIrqLine {
    inner: Arc<dyn IrqLine>,
    tracker: Arc<WakeSourceTracker>,
    source: WakeSource,
}

impl WakeSourceIrqLine {
    /// `inner`, reporting its assertions as `source`.
    pub fn wrap(
        inner: Arc<dyn IrqLine>,
        tracker: Arc<WakeSourceTracker>,
        source: WakeSource,
    ) -> Arc<dyn IrqLine> {
        Arc::new(Self {
            inner,
            tracker,
            source,
        })
    }
}

impl IrqLine for WakeSourceIrqLine {
    fn set_level(&self, high: bool) -> Result<(), IrqError> {
        // First: the vCPU may take the wakeup exit as soon as KVM sees the line.
        self.tracker.set_level(self.source, high);
        self.inner.set_level(high)
    }
}

#[cfg(test)]
mod tests {
    use devices::test_utils::RecordingIrqLine;

    use super::*;

    #[test]
    fn events_serialise_as_flat_tagged_json() {
        let event = VmEvent {
            at_ms: 1_700_000_000_123,
            kind: VmEventKind::Resumed {
                vcpu: 0,
                latency_us: 180,
                source: WakeSource::Rtc,
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"at_ms":1700000000123,"event":"resumed","vcpu":0,"latency_us":180,"source":"rtc"}"#
        );
        assert_eq!(serde_json::from_str::<VmEvent>(&json).unwrap(), event);

        let denied = VmEventKind::SuspendDenied {
            vcpu: 1,
            reason: Denial::OtherCpusOn { count: 2 },
        };
        assert_eq!(
            serde_json::to_value(&denied).unwrap(),
            serde_json::json!({
                "event": "suspend_denied",
                "vcpu": 1,
                "reason": {"kind": "other_cpus_on", "count": 2},
            })
        );
    }

    #[test]
    fn wake_sources_are_lowercase() {
        for (source, name) in [
            (WakeSource::Rtc, "rtc"),
            (WakeSource::Gpio, "gpio"),
            (WakeSource::Serial, "serial"),
            (WakeSource::Unknown, "unknown"),
        ] {
            assert_eq!(
                serde_json::to_string(&source).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(source.to_string(), name);
        }
        let other: WakeSource = serde_json::from_str("\"other\"").unwrap();
        assert_eq!(other, WakeSource::Unknown);
    }

    #[test]
    fn log_lines_are_the_product_wording() {
        let suspended = VmEventKind::Suspended {
            vcpu: 0,
            latency_us: 5,
        };
        assert_eq!(suspended.to_string(), "suspended");
        let resumed = VmEventKind::Resumed {
            vcpu: 0,
            latency_us: 5,
            source: WakeSource::Rtc,
        };
        assert_eq!(resumed.to_string(), "resumed (wakeup: rtc)");
    }

    #[test]
    fn denials_map_to_psci_codes() {
        assert_eq!(Denial::Busy.psci_return(), PsciReturn::Denied);
        let invalid = Denial::from(SuspendDenial::InvalidEntry { entry: 8 });
        assert_eq!(invalid, Denial::InvalidEntry { entry: 8 });
        assert_eq!(invalid.psci_return(), PsciReturn::InvalidAddress);
        let other = Denial::NotSystemSuspend { function_id: 1 };
        assert_eq!(other.psci_return(), PsciReturn::NotSupported);
    }

    #[test]
    fn the_bus_reaches_live_subscribers_and_drops_dead_ones() {
        let bus = EventBus::new();
        let first = bus.subscribe();
        let second = bus.subscribe();
        assert_eq!(bus.subscriber_count(), 2);
        drop(second);
        // A dropped receiver leaves at once, not at the next publish.
        assert_eq!(bus.subscriber_count(), 1);
        let sent = bus.emit(VmEventKind::Woken {
            source: WakeSource::Gpio,
        });
        assert_eq!(bus.subscriber_count(), 1);
        assert_eq!(first.try_recv().unwrap(), sent);
        assert!(sent.at_ms > 0);
        // Publishing with nobody listening is fine.
        drop(first);
        bus.emit(VmEventKind::Woken {
            source: WakeSource::Gpio,
        });
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[test]
    fn a_subscriber_that_does_not_read_is_dropped_with_a_lagged_event() {
        let bus = EventBus::new();
        let idle = bus.subscribe();
        let reader = bus.subscribe();
        let woken = VmEventKind::Woken {
            source: WakeSource::Rtc,
        };
        for _ in 0..EVENT_QUEUE_LIMIT * 4 {
            bus.emit(woken.clone());
            assert_eq!(reader.try_recv().unwrap().kind, woken);
        }
        // The reader kept up and stays; the idle one holds at most the limit plus one.
        assert_eq!(bus.subscriber_count(), 1);
        let kept: Vec<_> = idle.try_iter().map(|event| event.kind).collect();
        assert_eq!(kept.len(), EVENT_QUEUE_LIMIT + 1);
        assert!(kept[..EVENT_QUEUE_LIMIT].iter().all(|kind| *kind == woken));
        assert_eq!(
            kept[EVENT_QUEUE_LIMIT],
            VmEventKind::Lagged {
                limit: EVENT_QUEUE_LIMIT
            }
        );
        assert_eq!(
            idle.recv_timeout(std::time::Duration::ZERO),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        bus.close();
        assert_eq!(
            reader.recv(),
            Err(std::sync::mpsc::RecvError),
            "closing ends every stream"
        );
    }

    #[test]
    fn the_first_source_noted_since_arming_wins() {
        let tracker = WakeSourceTracker::new();
        tracker.note(WakeSource::Serial);
        tracker.arm();
        assert_eq!(tracker.take(), WakeSource::Unknown, "noted before arming");
        tracker.arm();
        tracker.note(WakeSource::Rtc);
        tracker.note(WakeSource::Gpio);
        assert_eq!(tracker.take(), WakeSource::Rtc);
        assert_eq!(tracker.take(), WakeSource::Unknown, "taken");
    }

    #[test]
    fn a_line_still_high_from_before_arming_is_the_fallback() {
        let tracker = WakeSourceTracker::new();
        tracker.set_level(WakeSource::Gpio, true);
        tracker.arm();
        assert_eq!(tracker.take(), WakeSource::Gpio);
        tracker.set_level(WakeSource::Gpio, false);
        assert_eq!(tracker.take(), WakeSource::Unknown);
    }

    #[test]
    fn the_irq_adapter_notes_then_forwards() {
        let tracker = Arc::new(WakeSourceTracker::new());
        let inner = Arc::new(RecordingIrqLine::new());
        let line = WakeSourceIrqLine::wrap(inner.clone(), tracker.clone(), WakeSource::Serial);
        tracker.arm();
        line.pulse().unwrap();
        assert_eq!(inner.levels(), vec![true, false]);
        assert_eq!(tracker.take(), WakeSource::Serial);
    }
}
