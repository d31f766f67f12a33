//! The control API's routes: each one a thin call on a [`VmHandle`].
//!
//! `GET /api/v1/vm.info`, `PUT /api/v1/vm.{wakeup,power-button,pause,resume,shutdown,sleep,snapshot}` and
//! the `GET /api/v1/vm.events` stream of newline-delimited JSON events.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ApiReply, ApiRouter};
use crate::snapshot::SnapshotRequest;
use crate::vm::{HandleError, VmHandle};

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

fn error(status: u16, message: impl Into<String>) -> ApiReply {
    ApiReply::Json {
        status,
        body: json!({ "error": message.into() }),
    }
}

fn ok(body: Value) -> ApiReply {
    ApiReply::Json { status: 200, body }
}

/// A request that is not valid in the VM's current state is a conflict (409).
fn conflict_or_ok(result: Result<(), HandleError>, done: &str) -> ApiReply {
    match result {
        Ok(()) => ok(json!({ "result": done })),
        Err(err) => error(409, crate::error_chain(&err)),
    }
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
}

impl ApiRouter for VmRouter {
    fn route(&self, method: &str, path: &str, body: &[u8]) -> ApiReply {
        let Some(endpoint) = Endpoint::from_path(path) else {
            return error(404, format!("Unknown path {path}"));
        };
        let allowed = endpoint.method();
        if method != allowed {
            return error(405, format!("{path} takes {allowed}, not {method}"));
        }
        // Actions take no parameters; a body, if any, must still be a JSON object.
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(_)) => {}
                Ok(_) => return error(400, "The request body must be a JSON object"),
                Err(err) => return error(400, format!("Malformed JSON body: {err}")),
            }
        }
        let handle = &self.handle;
        match endpoint {
            Endpoint::Info => self.info(),
            Endpoint::Events => self.events(),
            Endpoint::Wakeup => conflict_or_ok(handle.press_wake_button(), "wake button pressed"),
            Endpoint::PowerButton => {
                conflict_or_ok(handle.press_power_button(), "power button pressed")
            }
            Endpoint::Pause => conflict_or_ok(handle.pause(), "paused"),
            Endpoint::Resume => conflict_or_ok(handle.resume(), "resumed"),
            Endpoint::Shutdown => conflict_or_ok(handle.shutdown(), "shutting down"),
            Endpoint::Sleep => conflict_or_ok(handle.press_sleep_button(), "sleep button pressed"),
            Endpoint::Snapshot => self.snapshot(body),
        }
    }
}

impl VmRouter {
    /// Saves the suspended guest as the body asks.
    fn snapshot(&self, body: &[u8]) -> ApiReply {
        let request: SnapshotRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(err) => return error(400, format!("Invalid snapshot request: {err}")),
        };
        match self.handle.snapshot(request) {
            Ok(taken) => match serde_json::to_value(taken) {
                Ok(body) => ok(body),
                Err(err) => error(500, format!("Cannot encode the snapshot reply: {err}")),
            },
            Err(HandleError::Snapshot(err)) => error(err.http_status(), crate::error_chain(&err)),
            Err(err) => error(409, crate::error_chain(&err)),
        }
    }

    /// The VM's state, vCPUs, memory, uptime and suspend figures.
    fn info(&self) -> ApiReply {
        match serde_json::to_value(self.handle.info()) {
            Ok(info) => ok(info),
            Err(err) => error(500, format!("Cannot encode the VM info: {err}")),
        }
    }

    /// Every event from now until the VM ends, as JSON lines.
    fn events(&self) -> ApiReply {
        if self.handle.has_exited() {
            return error(409, "The VM has stopped");
        }
        let events = self.handle.subscribe();
        let stream = std::iter::from_fn(move || match events.recv_timeout(STREAM_POLL) {
            Ok(event) => Some(serde_json::to_value(event).ok()),
            Err(RecvTimeoutError::Timeout) => Some(None),
            Err(RecvTimeoutError::Disconnected) => None,
        });
        ApiReply::Stream(Box::new(stream))
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
