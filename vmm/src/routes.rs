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

/// The endpoints and the method each takes.
const ENDPOINTS: [(&str, &str); 7] = [
    ("vm.info", "GET"),
    ("vm.events", "GET"),
    ("vm.wakeup", "PUT"),
    ("vm.power-button", "PUT"),
    ("vm.pause", "PUT"),
    ("vm.resume", "PUT"),
    ("vm.shutdown", "PUT"),
];

impl ApiRouter for VmRouter {
    fn route(&self, method: &str, path: &str, body: &[u8]) -> ApiReply {
        let Some(endpoint) = path.strip_prefix(API_PREFIX) else {
            return error(404, format!("Unknown path {path}"));
        };
        let Some(&(_, allowed)) = ENDPOINTS.iter().find(|(name, _)| *name == endpoint) else {
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
        match endpoint {
            "vm.info" => match serde_json::to_value(self.handle.info()) {
                Ok(info) => ok(info),
                Err(err) => error(500, format!("Cannot encode the VM info: {err}")),
            },
            "vm.events" => self.events(),
            "vm.wakeup" => conflict_or_ok(self.handle.press_wake_button(), "wake button pressed"),
            "vm.power-button" => {
                conflict_or_ok(self.handle.press_power_button(), "power button pressed")
            }
            "vm.pause" => conflict_or_ok(self.handle.pause(), "paused"),
            "vm.resume" => conflict_or_ok(self.handle.resume(), "resumed"),
            "vm.shutdown" => conflict_or_ok(self.handle.shutdown(), "shutting down"),
            _ => error(404, format!("Unknown path {path}")),
        }
    }
}

impl VmRouter {
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
