//! The API server: an accept thread and one short-lived thread per connection, one request
//! per connection. It runs on its own threads so that it never touches the vCPU path.

use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::http::{self, NdjsonWriter, Version};
use super::socket::{self, ApiSocket, ApiSocketError, NoSigPipe};
use super::{ApiReply, ApiRouter};

/// How long a client has to send its whole request before it is answered 408.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write to a client may block (a client that stops reading a stream).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most requests served at once; more are answered 503. Event streams do not count.
pub const MAX_CONNECTIONS: usize = 16;
/// The most event streams held open at once; more are answered 503. They have their own
/// limit, so that open streams never keep `vm.info` or `vm.shutdown` from a slot.
pub const MAX_EVENT_STREAMS: usize = 16;
/// The status of a request refused because the server is at [`MAX_CONNECTIONS`] or
/// [`MAX_EVENT_STREAMS`].
pub(crate) const BUSY_STATUS: u16 = 503;
/// The status of a request whose router panicked or answered a status outside 200 to 599.
pub(crate) const ROUTER_FAILED_STATUS: u16 = 500;
/// Pause after a failed accept (EMFILE...) so that the accept thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The socket could not be created.
    #[error(transparent)]
    Socket(#[from] ApiSocketError),
    /// The listener could not be set up for the accept thread.
    #[error("Cannot set up the API socket listener")]
    Listener(#[source] io::Error),
    /// The eventfd that stops the accept thread could not be created.
    #[error("Cannot create the API server's stop event")]
    StopEvent(#[source] io::Error),
    /// The accept thread could not be started.
    #[error("Cannot start the API server thread")]
    Thread(#[source] io::Error),
}

/// Limits of an [`ApiServer`]; the defaults are the module's constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiServerOptions {
    /// Time to receive a whole request, from the connection's acceptance.
    pub read_timeout: Duration,
    /// Time one write to the client may block.
    pub write_timeout: Duration,
    /// The most requests served at once.
    pub max_connections: usize,
    /// The most event streams held open at once.
    pub max_event_streams: usize,
    /// The seccomp filter of the server's threads ([`Thread::Api`](crate::seccomp::Thread)),
    /// which the accept thread installs and the connection threads inherit. Its list covers
    /// what [`VmRouter`](super::VmRouter) does; a router of your own that needs more
    /// system calls needs `Off`.
    pub seccomp: crate::seccomp::SeccompMode,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_event_streams: MAX_EVENT_STREAMS,
            seccomp: crate::seccomp::SeccompMode::default(),
        }
    }
}

/// What the accept thread and the connection threads share.
struct Shared {
    router: Arc<dyn ApiRouter>,
    options: ApiServerOptions,
    /// Connections holding a request slot: every one until it turns into an event stream.
    live: AtomicUsize,
    /// Event streams open.
    streams: AtomicUsize,
    stopping: AtomicBool,
}

/// A running API server. Stopping it (or dropping it) stops accepting and removes the socket;
/// connections in flight end on their own, streams when their iterator or client ends.
pub struct ApiServer {
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
    accept: Option<JoinHandle<()>>,
    socket: Option<ApiSocket>,
}

impl ApiServer {
    /// Serves `router` on a new socket at `path` with the default limits.
    pub fn start(path: &Path, router: Arc<dyn ApiRouter>) -> Result<Self, ApiServerError> {
        Self::start_with(path, router, ApiServerOptions::default())
    }

    /// Serves `router` on a new socket at `path` with `options`.
    pub fn start_with(
        path: &Path,
        router: Arc<dyn ApiRouter>,
        options: ApiServerOptions,
    ) -> Result<Self, ApiServerError> {
        let socket = ApiSocket::bind(path)?;
        let listener = socket
            .listener()
            .try_clone()
            .map_err(ApiServerError::Listener)?;
        // Readiness can be stale by the time accept runs; it must not block then.
        listener
            .set_nonblocking(true)
            .map_err(ApiServerError::Listener)?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ApiServerError::StopEvent)?);
        let shared = Arc::new(Shared {
            router,
            options,
            live: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let (thread_shared, thread_stop) = (shared.clone(), stop.clone());
        let accept = thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || {
                // Before the first accept; the connection threads inherit it.
                let api = crate::seccomp::Thread::Api;
                if let Err(err) = crate::seccomp::apply(api, thread_shared.options.seccomp) {
                    log::error!(
                        "The API server is not serving: {}",
                        crate::error_chain(&err)
                    );
                    return;
                }
                accept_loop(&listener, &thread_stop, &thread_shared)
            })
            .map_err(ApiServerError::Thread)?;
        Ok(Self {
            shared,
            stop,
            accept: Some(accept),
            socket: Some(socket),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        // Only `shutdown` takes the socket, and it consumes or drops the server.
        self.socket.as_ref().map_or(Path::new(""), ApiSocket::path)
    }

    /// How many connection threads are alive.
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Stops accepting, removes the socket and waits for the accept thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops accepting, then gives requests in flight up to `grace` to finish, so that a
    /// request which ended the VM (a power-button press, a shutdown) still gets its reply
    /// before the process exits. Returns whether every connection finished.
    pub fn stop_gracefully(mut self, grace: std::time::Duration) -> bool {
        self.shutdown();
        let deadline = std::time::Instant::now() + grace;
        while self.connections() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Err(err) = self.stop.write(1) {
            log::error!("Cannot stop the API server: {err}");
        }
        if let Some(accept) = self.accept.take() {
            if accept.join().is_err() {
                log::error!("The API server thread panicked");
            }
        }
        self.socket = None;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &UnixListener, stop: &EventFd, shared: &Arc<Shared>) {
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stopping.load(Ordering::SeqCst) {
        let mut fds = [pollfd(listener.as_raw_fd()), pollfd(stop.as_raw_fd())];
        if let Err(err) = socket::poll(&mut fds, None) {
            log::error!("Cannot wait for API connections: {err}");
            thread::sleep(ACCEPT_BACKOFF);
            continue;
        }
        if fds[1].revents != 0 {
            break;
        }
        match listener.accept() {
            Ok((stream, _)) => dispatch(stream, shared),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(err) => {
                log::warn!("Cannot accept an API connection: {err}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Decrements the live count when a connection thread ends, even by a panic.
struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn dispatch(stream: UnixStream, shared: &Arc<Shared>) {
    if shared.live.fetch_add(1, Ordering::SeqCst) >= shared.options.max_connections {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        // A fresh socket's buffer takes this small reply without blocking the accept thread.
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let body = http::error_body("Too many connections");
        let _ = http::write_json(&mut NoSigPipe(&stream), BUSY_STATUS, &body);
        discard_pending(&stream);
        return;
    }
    let guard = LiveGuard(shared.clone());
    let spawned = thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            serve(stream, &guard.0);
            drop(guard);
        });
    // On failure the closure is dropped: the stream closes and the guard decrements.
    if let Err(err) = spawned {
        log::warn!("Cannot start an API connection thread: {err}");
    }
}

/// Reads from the stream until a deadline for the whole request, so that a client sending
/// a byte every few seconds cannot hold its thread longer than one without any.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

fn serve(stream: UnixStream, shared: &Shared) {
    respond(&stream, shared);
    discard_pending(&stream);
}

/// Drops what the client sent beyond the request, if it is there already: closing a Unix
/// socket with unread data makes the client's reads fail (ECONNRESET) after the response.
fn discard_pending(stream: &UnixStream) {
    if stream.set_nonblocking(true).is_ok() {
        let mut scrap = [0; 4096];
        for _ in 0..16 {
            if !matches!((&mut &*stream).read(&mut scrap), Ok(1..)) {
                break;
            }
        }
    }
}

fn respond(stream: &UnixStream, shared: &Shared) {
    let options = &shared.options;
    // Accepted sockets do not inherit O_NONBLOCK on Linux; made sure of, as reads rely on it.
    let setup = stream.set_nonblocking(false);
    if let Err(err) = setup.and_then(|()| stream.set_write_timeout(Some(options.write_timeout))) {
        log::warn!("Cannot set up an API connection: {err}");
        return;
    }
    let deadline = Instant::now() + options.read_timeout;
    let mut reader = BufReader::new(DeadlineReader { stream, deadline });
    let request = match http::read_request(&mut reader) {
        Ok(request) => request,
        Err(err) if !err.is_answered() => return,
        Err(err) => {
            log::debug!("Rejected an API request: {err}");
            let _ = http::write_json(&mut NoSigPipe(stream), err.status(), &err.to_json());
            return;
        }
    };
    let head = request.method == "HEAD";
    let route = || {
        shared
            .router
            .route(&request.method, &request.target, &request.body)
    };
    let reply = catch_unwind(AssertUnwindSafe(route)).unwrap_or_else(|_| {
        log::error!(
            "The API router panicked on {} {}",
            request.method,
            request.target
        );
        ApiReply::Json {
            status: ROUTER_FAILED_STATUS,
            body: http::error_body("Internal error"),
        }
    });
    let mut out = NoSigPipe(stream);
    match reply {
        ApiReply::Json { status, body } => {
            // A router bug must not put an unparsable or informational (1xx) status line out.
            let status = if (200..=599).contains(&status) {
                status
            } else {
                ROUTER_FAILED_STATUS
            };
            let _ = if head {
                http::write_json_head(&mut out, status, &body)
            } else {
                http::write_json(&mut out, status, &body)
            };
        }
        ApiReply::Stream(events) => {
            let Some(_slot) = StreamSlot::take(shared) else {
                let body = http::error_body("Too many event streams");
                let _ = http::write_json(&mut out, BUSY_STATUS, &body);
                return;
            };
            stream_events(stream, request.version, head, events)
        }
    }
}

/// An event stream's slot; while it is held, its connection gives its request slot back.
struct StreamSlot<'a>(&'a Shared);

impl<'a> StreamSlot<'a> {
    fn take(shared: &'a Shared) -> Option<Self> {
        if shared.streams.fetch_add(1, Ordering::SeqCst) >= shared.options.max_event_streams {
            shared.streams.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        shared.live.fetch_sub(1, Ordering::SeqCst);
        Some(Self(shared))
    }
}

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        // The connection's guard gives the request slot back when the thread ends.
        self.0.live.fetch_add(1, Ordering::SeqCst);
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes events until the iterator ends, a write fails or the client hangs up; returning
/// drops the iterator, which is how the VM side learns the subscriber left.
fn stream_events(
    stream: &UnixStream,
    version: Version,
    head: bool,
    mut events: Box<dyn Iterator<Item = Option<serde_json::Value>> + Send>,
) {
    let Ok(mut writer) = NdjsonWriter::start(NoSigPipe(stream), version) else {
        return;
    };
    if head {
        return;
    }
    loop {
        match events.next() {
            Some(Some(event)) => {
                if writer.write_line(&event).is_err() {
                    return;
                }
            }
            Some(None) if socket::peer_closed(stream) => return,
            Some(None) => {}
            None => {
                let _ = writer.finish();
                return;
            }
        }
    }
}
