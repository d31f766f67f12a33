//! The control API: HTTP/1.1 with JSON bodies on a Unix socket, like Firecracker's and Cloud
//! Hypervisor's, served by a small strict server on std threads (no async runtime, nothing on
//! the vCPU path). The transport knows nothing of the paths; an [`ApiRouter`] gives them
//! meaning, and [`VmRouter`] is the one that drives a VM.
//!
//! - [`http`]: the request parser and the response writers, with the limits.
//! - [`socket`]: the socket file: mode 0600, stale sockets replaced, live ones refused.
//! - [`server`]: [`ApiServer`], one thread per connection, one request per connection.
//! - [`client`]: [`ApiClient`] for `vmm ctl`.
//! - [`routes`]: the [`Endpoint`]s and [`VmRouter`], each endpoint a thin call on a
//!   [`VmHandle`](crate::VmHandle).
//!
//! `openapi.json` in this directory describes the API for clients (OpenAPI 3.0), and its tests
//! hold it to the code.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;
pub mod socket;

#[cfg(test)]
mod tests;

pub use client::{ApiClient, ApiClientError, ApiStream};
pub use http::{HttpError, Request};
pub use routes::{API_PREFIX, Endpoint, VmRouter};
pub use server::{ApiServer, ApiServerError, ApiServerOptions};
pub use socket::{ApiSocket, ApiSocketError};

/// A router's answer to a request.
pub enum ApiReply {
    /// A complete JSON response.
    Json {
        /// The HTTP status, 200 to 599 (anything else is sent as 500).
        status: u16,
        /// The body.
        body: serde_json::Value,
    },
    /// A newline-delimited JSON stream held open: `next()` yields `Some(Some(v))` for an
    /// event line, `Some(None)` for "nothing yet" (the router's iterator waits at most ~1 s
    /// per call, so the server can check whether the client went away), and `None` when the
    /// stream ends (then the connection closes). The server drops the iterator when the
    /// client goes away, which is how the VM side unsubscribes.
    Stream(Box<dyn Iterator<Item = Option<serde_json::Value>> + Send>),
}

/// Maps requests to replies. Called on the connection's own thread, so it may block briefly.
pub trait ApiRouter: Send + Sync + 'static {
    /// Routes a well-formed request. 404/405/400-for-bad-JSON/409 are the router's business.
    /// `path` is the request target as sent: not percent-decoded, query string included.
    /// A HEAD request is routed like any other; the server leaves the body out.
    fn route(&self, method: &str, path: &str, body: &[u8]) -> ApiReply;
}
