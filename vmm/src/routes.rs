//! The control API's routes: each one a thin call on a [`VmHandle`].
//!
//! `GET /api/v1/vm.info`, `PUT /api/v1/vm.{wakeup,power-button,pause,resume,shutdown}` and
//! the `GET /api/v1/vm.events` stream of newline-delimited JSON events.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::{ApiReply, ApiRouter};
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

/// What serves an endpoint.
type Handler = fn(&VmRouter) -> ApiReply;

/// Every endpoint: its name under [`API_PREFIX`], the method it takes, and what serves it.
const ENDPOINTS: [(&str, &str, Handler); 7] = [
    ("vm.info", "GET", VmRouter::info),
    ("vm.events", "GET", VmRouter::events),
    ("vm.wakeup", "PUT", |router| {
        conflict_or_ok(router.handle.press_wake_button(), "wake button pressed")
    }),
    ("vm.power-button", "PUT", |router| {
        conflict_or_ok(router.handle.press_power_button(), "power button pressed")
    }),
    ("vm.pause", "PUT", |router| {
        conflict_or_ok(router.handle.pause(), "paused")
    }),
    ("vm.resume", "PUT", |router| {
        conflict_or_ok(router.handle.resume(), "resumed")
    }),
    ("vm.shutdown", "PUT", |router| {
        conflict_or_ok(router.handle.shutdown(), "shutting down")
    }),
];

impl ApiRouter for VmRouter {
    fn route(&self, method: &str, path: &str, body: &[u8]) -> ApiReply {
        let endpoint = path
            .strip_prefix(API_PREFIX)
            .and_then(|name| ENDPOINTS.iter().find(|(known, ..)| *known == name));
        let Some(&(_, allowed, handler)) = endpoint else {
            return error(404, format!("Unknown path {path}"));
        };
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
        handler(self)
    }
}

impl VmRouter {
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
        // Booting: nothing to press or pause yet.
        assert_eq!(status(router.route("PUT", "/api/v1/vm.wakeup", b"")).0, 409);
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
