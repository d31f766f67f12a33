//! The control API's routes: each one a thin call on a [`VmHandle`].
//!
//! `GET /api/v1/vm.info`, `PUT /api/v1/vm.{wakeup,power-button,pause,resume,shutdown,sleep,snapshot}` and
//! the `GET /api/v1/vm.events` stream of newline-delimited JSON events. `openapi.json` beside
//! this file describes them for clients; a test holds it to [`Endpoint::statuses`] and to the
//! serde types.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde_json::{Value, json};

use super::http::{self, HttpError};
use super::{ApiReply, ApiRouter, server};
use crate::handle::{HandleError, VmHandle};
use crate::snapshot::dir::SnapshotDirError;
use crate::snapshot::{SnapshotError, SnapshotRequest};

/// The versioned prefix of every path.
pub const API_PREFIX: &str = "/api/v1/";

/// How long an idle event stream waits before letting the server check its client.
const STREAM_POLL: Duration = Duration::from_millis(500);

/// Routes API requests to one VM.
pub struct VmRouter {
    handle: VmHandle,
}

impl VmRouter {
    /// A router for the VM behind `handle`.
    pub fn new(handle: VmHandle) -> Self {
        Self { handle }
    }
}

/// Why a request got an error; the reply's body is `{"error": "<the error's chain>"}`. The
/// messages are the API's, older than this type, hence not all "Cannot ...".
#[derive(Debug, thiserror::Error)]
enum RouteError {
    /// No endpoint has this path.
    #[error("Unknown path {0}")]
    UnknownPath(String),
    /// The endpoint takes another method.
    #[error("{path} takes {allowed}, not {method}")]
    WrongMethod {
        /// The path requested.
        path: String,
        /// The endpoint's method.
        allowed: &'static str,
        /// The method requested.
        method: String,
    },
    /// The body is JSON, but not an object.
    #[error("The request body must be a JSON object")]
    BodyNotObject,
    /// The body is not JSON.
    #[error("Malformed JSON body")]
    MalformedBody(#[source] serde_json::Error),
    /// The body is a JSON object, but not a snapshot request.
    #[error("Invalid snapshot request")]
    SnapshotRequest(#[source] serde_json::Error),
    /// `vm.events` after the VM stopped: there will be no events.
    #[error("The VM has stopped")]
    Stopped,
    /// The VM refused or failed the request.
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// The reply, named by the first field, could not be encoded.
    #[error("Cannot encode the {0}")]
    Encode(&'static str, #[source] serde_json::Error),
}

impl RouteError {
    /// The status the API answers with.
    fn http_status(&self) -> u16 {
        match self {
            Self::UnknownPath(_) => 404,
            Self::WrongMethod { .. } => 405,
            Self::BodyNotObject | Self::MalformedBody(_) | Self::SnapshotRequest(_) => 400,
            Self::Handle(HandleError::Snapshot(err)) => err.http_status(),
            // A request that is not valid in the VM's current state is a conflict.
            Self::Stopped | Self::Handle(_) => 409,
            Self::Encode(..) => 500,
        }
    }
}

fn ok(body: Value) -> ApiReply {
    ApiReply::Json { status: 200, body }
}

/// A 200 reply with `value` as its body; `what` names it in the error.
fn reply(what: &'static str, value: impl serde::Serialize) -> Result<ApiReply, RouteError> {
    let body = serde_json::to_value(value).map_err(|err| RouteError::Encode(what, err))?;
    Ok(ok(body))
}

/// What an action replies once done: `{"result": "<what>"}`.
fn done(result: Result<(), HandleError>, what: &str) -> Result<ApiReply, RouteError> {
    result?;
    Ok(ok(json!({ "result": what })))
}

/// The control API's endpoints. Clients name them through this too, so the names and methods
/// live in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET vm.info`: the VM's state, vCPUs, memory, uptime and suspend figures.
    Info,
    /// `GET vm.events`: newline-delimited JSON events until the VM ends.
    Events,
    /// `PUT vm.wakeup`: press the wake button.
    Wakeup,
    /// `PUT vm.power-button`: press the power button.
    PowerButton,
    /// `PUT vm.pause`: pause every vCPU on the host side.
    Pause,
    /// `PUT vm.resume`: resume a paused VM.
    Resume,
    /// `PUT vm.shutdown`: stop the VM now.
    Shutdown,
    /// `PUT vm.sleep`: press the sleep button (the guest suspends itself if it handles it).
    Sleep,
    /// `PUT vm.snapshot`: save the suspended guest to a directory (`{"destination": DIR,
    /// "then": "stay" | "exit"}`).
    Snapshot,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Self; 9] = [
        Self::Info,
        Self::Events,
        Self::Wakeup,
        Self::PowerButton,
        Self::Pause,
        Self::Resume,
        Self::Shutdown,
        Self::Sleep,
        Self::Snapshot,
    ];

    /// Its name under [`API_PREFIX`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "vm.info",
            Self::Events => "vm.events",
            Self::Wakeup => "vm.wakeup",
            Self::PowerButton => "vm.power-button",
            Self::Pause => "vm.pause",
            Self::Resume => "vm.resume",
            Self::Shutdown => "vm.shutdown",
            Self::Sleep => "vm.sleep",
            Self::Snapshot => "vm.snapshot",
        }
    }

    /// The one method it takes: reads are GET, actions PUT.
    pub fn method(self) -> &'static str {
        match self {
            Self::Info | Self::Events => "GET",
            _ => "PUT",
        }
    }

    /// Its full path.
    pub fn path(self) -> String {
        format!("{API_PREFIX}{}", self.name())
    }

    /// The endpoint at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.strip_prefix(API_PREFIX)?;
        Self::ALL
            .into_iter()
            .find(|endpoint| endpoint.name() == name)
    }

    /// Every status the server can answer a request for this endpoint with: 200, those of
    /// the errors [`VmRouter`] can reply, and the server's own (a request it cannot parse, or
    /// one past its limits). `openapi.json` lists the same, which a test checks.
    pub fn statuses(self) -> BTreeSet<u16> {
        // Every endpoint's request line is far under the limit, so none is ever too long.
        let unparsed = HttpError::answered()
            .into_iter()
            .filter(|err| !matches!(err, HttpError::RequestLineTooLong));
        let server = unparsed
            .map(|err| err.status())
            .chain([server::BUSY_STATUS, server::ROUTER_FAILED_STATUS]);
        let routed = self.errors().into_iter().map(|err| err.http_status());
        [200].into_iter().chain(routed).chain(server).collect()
    }

    /// One of each error a request for this endpoint can get from [`VmRouter::serve`], which
    /// this follows.
    fn errors(self) -> Vec<RouteError> {
        let json_error = || serde_json::from_slice::<Value>(b"").unwrap_err();
        let refused = || RouteError::Handle(HandleError::NotRunning);
        let mut errors = vec![
            RouteError::BodyNotObject,
            RouteError::MalformedBody(json_error()),
        ];
        match self {
            Self::Info => errors.push(RouteError::Encode("VM info", json_error())),
            Self::Events => errors.push(RouteError::Stopped),
            Self::Wakeup
            | Self::PowerButton
            | Self::Pause
            | Self::Resume
            | Self::Shutdown
            | Self::Sleep => errors.push(refused()),
            Self::Snapshot => {
                errors.extend([
                    RouteError::SnapshotRequest(json_error()),
                    refused(),
                    RouteError::Encode("snapshot reply", json_error()),
                ]);
                let failed = snapshot_errors().into_iter().map(HandleError::from);
                errors.extend(failed.map(RouteError::from));
            }
        }
        errors
    }
}

/// The statuses of requests for no endpoint: an unknown path, a known path with another
/// method, and a request line too long to be any endpoint's. `openapi.json` describes them
/// apart from its operations, which a test checks.
pub fn unrouted_statuses() -> BTreeSet<u16> {
    let unknown = RouteError::UnknownPath(String::new());
    let wrong = RouteError::WrongMethod {
        path: String::new(),
        allowed: "GET",
        method: String::new(),
    };
    [unknown.http_status(), wrong.http_status()]
        .into_iter()
        .chain([HttpError::RequestLineTooLong.status()])
        .collect()
}

/// One snapshot error of each kind that [`SnapshotError::http_status`] can tell apart.
fn snapshot_errors() -> Vec<SnapshotError> {
    let io = || std::io::Error::other("");
    let errors = vec![
        SnapshotError::NotSuspended("running"),
        SnapshotError::Paused,
        SnapshotError::Busy,
        SnapshotError::Stopped,
        SnapshotError::Notify(io()),
        SnapshotError::LiveDevice(String::new()),
        SnapshotError::Directory(SnapshotDirError::Destination(PathBuf::new())),
        SnapshotError::Directory(SnapshotDirError::NotASnapshot(PathBuf::new())),
        SnapshotError::Directory(SnapshotDirError::Io {
            what: "",
            path: PathBuf::new(),
            source: io(),
        }),
        SnapshotError::Directory(SnapshotDirError::Content(io().into())),
        SnapshotError::Read {
            what: "",
            source: io().into(),
        },
    ];
    // No catch-all arm: a new kind of error does not compile here until it is in the list.
    for err in &errors {
        match err {
            SnapshotError::NotSuspended(_)
            | SnapshotError::Paused
            | SnapshotError::Busy
            | SnapshotError::Stopped
            | SnapshotError::Notify(_)
            | SnapshotError::LiveDevice(_)
            | SnapshotError::Read { .. }
            | SnapshotError::Directory(
                SnapshotDirError::Destination(_)
                | SnapshotDirError::NotASnapshot(_)
                | SnapshotDirError::Io { .. }
                | SnapshotDirError::Content(_),
            ) => {}
        }
    }
    errors
}

impl ApiRouter for VmRouter {
    fn route(&self, method: &str, path: &str, body: &[u8]) -> ApiReply {
        self.serve(method, path, body)
            .unwrap_or_else(|err| ApiReply::Json {
                status: err.http_status(),
                body: http::error_body(&crate::error_chain(&err)),
            })
    }
}

impl VmRouter {
    /// Answers a request, or says why not.
    fn serve(&self, method: &str, path: &str, body: &[u8]) -> Result<ApiReply, RouteError> {
        let endpoint =
            Endpoint::from_path(path).ok_or_else(|| RouteError::UnknownPath(path.to_owned()))?;
        let allowed = endpoint.method();
        if method != allowed {
            return Err(RouteError::WrongMethod {
                path: path.to_owned(),
                allowed,
                method: method.to_owned(),
            });
        }
        // Actions take no parameters; a body, if any, must still be a JSON object.
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(_)) => {}
                Ok(_) => return Err(RouteError::BodyNotObject),
                Err(err) => return Err(RouteError::MalformedBody(err)),
            }
        }
        let handle = &self.handle;
        match endpoint {
            Endpoint::Info => self.info(),
            Endpoint::Events => self.events(),
            Endpoint::Wakeup => done(handle.press_wake_button(), "wake button pressed"),
            Endpoint::PowerButton => done(handle.press_power_button(), "power button pressed"),
            Endpoint::Pause => done(handle.pause(), "paused"),
            Endpoint::Resume => done(handle.resume(), "resumed"),
            Endpoint::Shutdown => done(handle.shutdown(), "shutting down"),
            Endpoint::Sleep => done(handle.press_sleep_button(), "sleep button pressed"),
            Endpoint::Snapshot => self.snapshot(body),
        }
    }

    /// Saves the suspended guest as the body asks.
    fn snapshot(&self, body: &[u8]) -> Result<ApiReply, RouteError> {
        let request: SnapshotRequest =
            serde_json::from_slice(body).map_err(RouteError::SnapshotRequest)?;
        reply("snapshot reply", self.handle.snapshot(request)?)
    }

    /// The VM's state, vCPUs, memory, uptime and suspend figures.
    fn info(&self) -> Result<ApiReply, RouteError> {
        reply("VM info", self.handle.info())
    }

    /// Every event from now until the VM ends, as JSON lines.
    fn events(&self) -> Result<ApiReply, RouteError> {
        if self.handle.has_exited() {
            return Err(RouteError::Stopped);
        }
        let events = self.handle.subscribe();
        let stream = std::iter::from_fn(move || match events.recv_timeout(STREAM_POLL) {
            Ok(event) => Some(serde_json::to_value(event).ok()),
            Err(RecvTimeoutError::Timeout) => Some(None),
            Err(RecvTimeoutError::Disconnected) => None,
        });
        Ok(ApiReply::Stream(Box::new(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router over a VM that was never started: no KVM needed.
    fn router() -> (VmRouter, VmHandle) {
        let handle = VmHandle::detached();
        (VmRouter::new(handle.clone()), handle)
    }

    fn status(reply: ApiReply) -> (u16, Value) {
        match reply {
            ApiReply::Json { status, body } => (status, body),
            ApiReply::Stream(_) => (0, Value::Null),
        }
    }

    #[test]
    fn every_endpoint_is_found_by_its_path_and_takes_one_method() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(&endpoint.path()), Some(endpoint));
            let (router, _) = router();
            let wrong = if endpoint.method() == "GET" {
                "PUT"
            } else {
                "GET"
            };
            assert_eq!(status(router.route(wrong, &endpoint.path(), b"")).0, 405);
        }
        assert_eq!(Endpoint::Info.path(), "/api/v1/vm.info");
        assert_eq!(Endpoint::from_path("vm.info"), None);
    }

    #[test]
    fn unknown_paths_wrong_methods_and_bad_bodies_are_4xx() {
        let (router, _) = router();
        assert_eq!(
            status(router.route("GET", "/api/v1/vm.nothing", b"")).0,
            404
        );
        assert_eq!(status(router.route("GET", "/api/v2/vm.info", b"")).0, 404);
        assert_eq!(status(router.route("GET", "/", b"")).0, 404);
        let (code, body) = status(router.route("GET", "/api/v1/vm.pause", b""));
        assert_eq!(code, 405);
        assert_eq!(body["error"], "/api/v1/vm.pause takes PUT, not GET");
        let (code, body) = status(router.route("PUT", "/api/v1/vm.pause", b"{oops"));
        assert_eq!(code, 400);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("Malformed JSON body"),
            "{body}"
        );
        assert_eq!(
            status(router.route("PUT", "/api/v1/vm.pause", b"[1]")).0,
            400
        );
    }

    #[test]
    fn actions_on_a_vm_that_is_not_running_are_conflicts() {
        let (router, handle) = router();
        // Booting: nothing to press, pause or save yet.
        assert_eq!(status(router.route("PUT", "/api/v1/vm.wakeup", b"")).0, 409);
        assert_eq!(status(router.route("PUT", "/api/v1/vm.sleep", b"")).0, 409);
        let save = br#"{"destination":"/tmp/a","then":"exit"}"#;
        assert_eq!(
            status(router.route("PUT", "/api/v1/vm.snapshot", save)).0,
            409
        );
        // A body that is not a snapshot request is refused before the VM is asked.
        let (code, body) = status(router.route("PUT", "/api/v1/vm.snapshot", b"{}"));
        assert_eq!(code, 400, "{body}");
        assert_eq!(
            status(router.route("PUT", "/api/v1/vm.pause", b"{}")).0,
            409
        );
        let (code, info) = status(router.route("GET", "/api/v1/vm.info", b""));
        assert_eq!((code, info["state"].as_str()), (200, Some("booting")));
        // Shutting down: pause is refused, shutdown stays accepted.
        assert_eq!(
            status(router.route("PUT", "/api/v1/vm.shutdown", b"")).0,
            200
        );
        let (code, body) = status(router.route("PUT", "/api/v1/vm.pause", b""));
        assert_eq!(
            (code, body["error"].as_str()),
            (409, Some("The VM is shutting down"))
        );
        assert_eq!(handle.state(), crate::VmState::ShuttingDown);
    }
}
