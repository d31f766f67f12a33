//! One subscriber's bounded queue of events.
//!
//! The guest sets the rate of events (a guest can loop on refused SYSTEM_SUSPEND calls), so a
//! subscriber that does not read must not grow memory without limit. Each queue holds at most
//! [`EVENT_QUEUE_LIMIT`] events. A subscriber that falls that far behind is dropped: it gets a
//! final [`VmEventKind::Lagged`] event after the ones it has, then its stream ends. A dropped
//! receiver leaves the bus at once.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{VmEvent, VmEventKind};

/// The most events one subscriber may have waiting.
pub const EVENT_QUEUE_LIMIT: usize = 256;

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<VmEvent>,
    /// No more events will come: the bus closed, or the subscriber lagged.
    ended: bool,
}

/// The queue the bus writes and the receiver reads.
#[derive(Debug, Default)]
pub(super) struct Subscription {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl Subscription {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event`; returns false when the subscriber is done with (it lagged, and got a
    /// last `Lagged` event instead).
    pub(super) fn push(&self, event: &VmEvent) -> bool {
        let mut state = self.lock();
        if state.ended {
            return false;
        }
        let keep = if state.events.len() < EVENT_QUEUE_LIMIT {
            state.events.push_back(event.clone());
            true
        } else {
            state.events.push_back(VmEvent::now(VmEventKind::Lagged {
                limit: EVENT_QUEUE_LIMIT,
            }));
            state.ended = true;
            false
        };
        drop(state);
        self.ready.notify_all();
        keep
    }

    /// No more events: the receiver drains what it has, then sees the end.
    pub(super) fn end(&self) {
        self.lock().ended = true;
        self.ready.notify_all();
    }
}

/// The subscribers of one bus; receivers hold it weakly, to leave it when dropped.
pub(super) type Subscribers = Mutex<Vec<Arc<Subscription>>>;

/// The receiving end of a subscription, used like `std::sync::mpsc::Receiver`.
#[derive(Debug)]
pub struct EventReceiver {
    queue: Arc<Subscription>,
    bus: Weak<Subscribers>,
}

impl EventReceiver {
    pub(super) fn new(queue: Arc<Subscription>, bus: Weak<Subscribers>) -> Self {
        Self { queue, bus }
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<VmEvent, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.queue.lock();
        loop {
            if let Some(event) = state.events.pop_front() {
                return Ok(event);
            }
            if state.ended {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self
                .queue
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next event, waiting as long as it takes.
    pub fn recv(&self) -> Result<VmEvent, RecvError> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Ok(event) => return Ok(event),
                Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Result<VmEvent, TryRecvError> {
        let mut state = self.queue.lock();
        match state.events.pop_front() {
            Some(event) => Ok(event),
            None if state.ended => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Every event, blocking, until the subscription ends.
    pub fn iter(&self) -> impl Iterator<Item = VmEvent> + '_ {
        std::iter::from_fn(|| self.recv().ok())
    }

    /// The events waiting now.
    pub fn try_iter(&self) -> impl Iterator<Item = VmEvent> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|queue| !Arc::ptr_eq(queue, &self.queue));
        }
    }
}
