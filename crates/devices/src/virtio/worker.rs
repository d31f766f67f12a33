//! The thread that serves an active device's queues, from activation to reset.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActiveQueue, VirtioInterrupt};

/// Failures starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The epoll set or the stop eventfd could not be made.
    #[error("Cannot set up the worker's epoll set")]
    Epoll(#[source] std::io::Error),
    /// The thread could not be spawned.
    #[error("Cannot spawn the worker thread")]
    Spawn(#[source] std::io::Error),
}

/// What a device does on its worker thread: serve notified queues and, for devices with a
/// host-side backend (a tap, sockets), react to the backend's file descriptors.
pub trait QueueHandler: Send + 'static {
    /// Serves every available chain of queue `index` (it was notified, or the worker starts);
    /// returns whether the guest must be interrupted. Must never panic on guest input.
    fn process(&mut self, index: usize, io: &mut WorkerIo<'_>) -> bool;

    /// Runs once on the worker thread before any queue is served: register the backend's
    /// file descriptors with [`WorkerIo::watch`] here. An error ends the worker (logged).
    fn started(&mut self, _io: &mut WorkerIo<'_>) -> std::io::Result<()> {
        Ok(())
    }

    /// A descriptor registered under `key` is ready with `events`; returns whether the guest
    /// must be interrupted.
    fn ready(&mut self, _key: u64, _events: EventSet, _io: &mut WorkerIo<'_>) -> bool {
        false
    }

    /// The device is being reset: complete what the driver already made available that can
    /// be completed without waiting. By default every queue is served once more. The guest
    /// is not interrupted for these.
    fn stopping(&mut self, io: &mut WorkerIo<'_>) {
        for index in 0..io.queues.len() {
            self.process(index, io);
        }
    }
}

/// What a handler works with on its worker thread: the queues, guest memory, and the epoll set
/// its own descriptors join.
pub struct WorkerIo<'a> {
    /// The device's queues, in order.
    pub queues: &'a mut [Queue],
    /// Guest memory.
    pub memory: &'a GuestMemoryMmap,
    epoll: &'a Epoll,
    first_token: u64,
}

impl WorkerIo<'_> {
    /// Watches `fd` for `events`, reported to [`QueueHandler::ready`] with `key`.
    pub fn watch(&self, fd: RawFd, events: EventSet, key: u64) -> std::io::Result<()> {
        self.control(ControlOperation::Add, fd, events, key)
    }

    /// Changes what `fd` (already watched) is watched for.
    pub fn rewatch(&self, fd: RawFd, events: EventSet, key: u64) -> std::io::Result<()> {
        self.control(ControlOperation::Modify, fd, events, key)
    }

    /// Stops watching `fd`.
    pub fn unwatch(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    fn control(
        &self,
        operation: ControlOperation,
        fd: RawFd,
        events: EventSet,
        key: u64,
    ) -> std::io::Result<()> {
        let token = key
            .checked_add(self.first_token)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        self.epoll
            .ctl(operation, fd, EpollEvent::new(events, token))
    }
}

/// Runs first on each worker thread, before it touches a queue: the VMM installs the thread's
/// seccomp filter there. An error ends the thread at once (it is logged), so a worker never
/// serves the guest without what its hook set up.
pub type ThreadStartHook = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// A running worker thread; [`QueueWorker::stop`] (or drop) ends and joins it.
pub struct QueueWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl QueueWorker {
    /// Starts serving `queues` with `handler` on a thread called `name`.
    pub fn start<H: QueueHandler>(
        name: String,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        handler: H,
    ) -> Result<Self, WorkerError> {
        Self::start_with_hook(name, memory, queues, interrupt, handler, None)
    }

    /// [`QueueWorker::start`], with `on_start` run first on the new thread.
    pub fn start_with_hook<H: QueueHandler>(
        name: String,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        handler: H,
        on_start: Option<ThreadStartHook>,
    ) -> Result<Self, WorkerError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Epoll)?;
        let epoll = Epoll::new().map_err(WorkerError::Epoll)?;
        let stop_token = queues.len() as u64;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, stop_token),
            )
            .map_err(WorkerError::Epoll)?;
        for (index, queue) in queues.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    queue.event.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, index as u64),
                )
                .map_err(WorkerError::Epoll)?;
        }
        let thread_stop = stop.try_clone().map_err(WorkerError::Epoll)?;
        let (queues, events) = queues
            .into_iter()
            .map(|active| (active.queue, active.event))
            .unzip();
        let mut state = WorkerState {
            epoll,
            stop: thread_stop,
            stop_token,
            memory,
            queues,
            events,
            interrupt,
            handler,
        };
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Some(Err(err)) = on_start.map(|hook| hook()) {
                    log::error!("virtio worker {name} not started: {err}");
                    return;
                }
                state.run()
            })
            .map_err(WorkerError::Spawn)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Completes the chains already available, ends the thread and waits for it: afterwards it
    /// touches no guest memory.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(err) = self.stop.write(1) {
            log::error!("Cannot stop a virtio worker: {err}");
        }
        if thread.join().is_err() {
            log::error!("A virtio worker thread panicked");
        }
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A device's worker while it is active, and the hook each new worker thread runs first.
#[derive(Default)]
pub(crate) struct WorkerSlot {
    worker: Option<QueueWorker>,
    hook: Option<ThreadStartHook>,
}

impl WorkerSlot {
    pub(crate) fn set_hook(&mut self, hook: Option<ThreadStartHook>) {
        self.hook = hook;
    }

    /// Starts serving `queues` with `handler` on a thread called `name` (activation).
    pub(crate) fn start<H: QueueHandler>(
        &mut self,
        name: String,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        handler: H,
    ) -> Result<(), super::ActivateError> {
        if queues.is_empty() {
            return Err(super::ActivateError::QueueNotReady(0));
        }
        let worker = QueueWorker::start_with_hook(
            name,
            memory,
            queues,
            interrupt,
            handler,
            self.hook.clone(),
        )
        .map_err(super::ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    /// Stops the worker, if any (reset): it completes every chain it can take first, so no
    /// request the driver made available is left half done.
    pub(crate) fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

struct WorkerState<H> {
    epoll: Epoll,
    stop: EventFd,
    stop_token: u64,
    memory: GuestMemoryMmap,
    queues: Vec<Queue>,
    events: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    handler: H,
}

/// How many ready descriptors one `epoll_wait` returns at most.
const EVENTS_PER_WAIT: usize = 64;

impl<H: QueueHandler> WorkerState<H> {
    fn run(&mut self) {
        let (handler, mut io) = self.split();
        if let Err(err) = handler.started(&mut io) {
            log::error!("virtio worker: cannot start its backend: {err}");
            return;
        }
        // Chains made available before activation (or while the eventfd was being handed
        // over) are served without waiting for another notification.
        for index in 0..self.queues.len() {
            self.serve(index);
        }
        let mut events = vec![EpollEvent::default(); EVENTS_PER_WAIT];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::error!("virtio worker: epoll_wait failed: {err}");
                    return;
                }
            };
            for event in &events[..ready] {
                let token = event.data();
                if token == self.stop_token {
                    let _ = self.stop.read();
                    // A reset takes effect after every chain the driver already made
                    // available is completed, whether or not its notification was seen. No
                    // interrupt for those: the driver is resetting the device and reclaims
                    // every buffer itself (virtio 1.2, 2.4: no notification after a reset).
                    // Linux's virtio-net detaches its transmit buffers right after the reset;
                    // an interrupt taken by another vCPU meanwhile made it look for them in
                    // the used ring afterwards ("output.0:id N is not a head!").
                    let (handler, mut io) = self.split();
                    handler.stopping(&mut io);
                    return;
                }
                if token > self.stop_token {
                    let key = token - self.stop_token - 1;
                    let (handler, mut io) = self.split();
                    let interrupt = handler.ready(key, event.event_set(), &mut io);
                    self.raise(interrupt);
                    continue;
                }
                let index = token as usize;
                if let Some(queue_event) = self.events.get(index) {
                    // Non-blocking: a notification already consumed reads EAGAIN.
                    let _ = queue_event.read();
                    self.serve(index);
                }
            }
        }
    }

    fn split(&mut self) -> (&mut H, WorkerIo<'_>) {
        (
            &mut self.handler,
            WorkerIo {
                queues: &mut self.queues,
                memory: &self.memory,
                epoll: &self.epoll,
                first_token: self.stop_token + 1,
            },
        )
    }

    fn serve(&mut self, index: usize) {
        let (handler, mut io) = self.split();
        let interrupt = handler.process(index, &mut io);
        self.raise(interrupt);
    }

    fn raise(&self, interrupt: bool) {
        if interrupt {
            if let Err(err) = self.interrupt.signal(VirtioInterrupt::USED_RING) {
                log::error!("virtio worker: cannot raise the interrupt: {err}");
            }
        }
    }
}

/// Pops every available chain of `queue` and hands it to `serve`, which returns the number of
/// bytes it wrote into the chain; then tells whether the driver wants an interrupt.
///
/// Notifications are disabled while chains are served and enabled again before the queue
/// is found empty, so a chain made available in between is not missed (the virtio
/// "enable, then check again" pattern).
pub(crate) fn drain_queue(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    mut serve: impl FnMut(&mut virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    use virtio_queue::QueueT;
    let mut used_any = false;
    // Rounds in a row in which the ring said "more" but nothing could be popped: one is the
    // race the recheck exists for (a chain published as notifications were enabled); a second
    // means the driver's available ring is broken (an index too far ahead, a ring at address
    // 0), which virtio-queue refuses to iterate. Then the queue is left alone until the next
    // notification, instead of spinning here and never letting a reset join this thread.
    let mut empty_rounds = 0;
    loop {
        if let Err(err) = queue.disable_notification(memory) {
            log::warn!("virtio: cannot disable notifications: {err}");
            break;
        }
        let mut popped = false;
        while let Some(mut chain) = queue.pop_descriptor_chain(memory) {
            popped = true;
            let head = chain.head_index();
            let written = serve(&mut chain);
            if let Err(err) = queue.add_used(memory, head, written) {
                log::warn!("virtio: cannot add a used entry: {err}");
                return used_any;
            }
            used_any = true;
        }
        empty_rounds = if popped { 0 } else { empty_rounds + 1 };
        match queue.enable_notification(memory) {
            Ok(true) if empty_rounds < 2 => continue,
            Ok(true) => {
                log::debug!("virtio: the driver's available ring is invalid; left until notified");
                break;
            }
            Ok(false) => break,
            Err(err) => {
                log::warn!("virtio: cannot enable notifications: {err}");
                break;
            }
        }
    }
    used_any
        && queue.needs_notification(memory).unwrap_or_else(|err| {
            log::warn!("virtio: cannot read the used event index: {err}");
            true
        })
}
