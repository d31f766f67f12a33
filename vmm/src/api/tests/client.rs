//! The socket file's rules, and the client against canned responses.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread;

use serde_json::json;

use super::{TestRouter, socket_path};
use crate::api::socket::MAX_SOCKET_PATH;
use crate::api::{ApiClient, ApiClientError, ApiServer, ApiServerError, ApiSocket, ApiSocketError};

#[test]
fn api_socket_mode_and_cleanup() {
    let (dir, path) = socket_path();
    let socket = ApiSocket::bind(&path).unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // The private directory is gone.
    let entries: Vec<_> = fs::read_dir(dir.as_path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["api.sock"]);
    drop(socket);
    assert!(!path.exists());
}

fn info_status(path: &std::path::Path) -> u16 {
    let (status, _) = ApiClient::new(path)
        .request("GET", "/api/v1/vm.info", None)
        .unwrap();
    status
}

#[test]
fn api_socket_replaces_stale_refuses_live() {
    let (_dir, path) = socket_path();
    drop(UnixListener::bind(&path).unwrap());
    let server = ApiServer::start(&path, Arc::new(TestRouter::default())).unwrap();
    assert_eq!(info_status(&path), 200);

    let err = ApiServer::start(&path, Arc::new(TestRouter::default()))
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ApiServerError::Socket(ApiSocketError::InUse { .. })
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "API socket {} is in use by a running process",
            path.display()
        )
    );
    assert_eq!(info_status(&path), 200);

    // A successor's socket at the path is not removed by the old server.
    fs::remove_file(&path).unwrap();
    let successor = ApiSocket::bind(&path).unwrap();
    server.stop();
    assert!(path.exists());
    drop(successor);
}

#[test]
fn api_socket_takes_any_path_sun_path_holds() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    // A 107-byte path (the longest a client can connect to) with a short name in a deep
    // directory: a temporary name next to it must not push the bind past sun_path.
    let base = dir.as_path().to_str().unwrap().len();
    let parent = dir
        .as_path()
        .join("d".repeat(MAX_SOCKET_PATH - base - "/vm.sock".len() - 1));
    fs::create_dir(&parent).unwrap();
    let path = parent.join("vm.sock");
    assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
    let socket = ApiSocket::bind(&path).unwrap();
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    drop(socket);
    let longer = parent.join("vm.sock2");
    assert_eq!(
        ApiSocket::bind(&longer).unwrap_err().to_string(),
        format!(
            "API socket path {} is 108 bytes; the limit is 107",
            longer.display()
        )
    );
}

#[test]
fn api_socket_refuses_other_files() {
    let (dir, path) = socket_path();
    fs::write(&path, "keep").unwrap();
    let err = ApiSocket::bind(&path).unwrap_err();
    assert!(matches!(err, ApiSocketError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "keep");
    let err = ApiSocket::bind(&path.join("api.sock")).unwrap_err();
    assert!(matches!(err, ApiSocketError::Inspect { .. }), "{err}");
    let err = ApiSocket::bind(&dir.as_path().join("missing/api.sock")).unwrap_err();
    assert!(matches!(err, ApiSocketError::Create { .. }), "{err}");
}

/// Serves one connection with `response` after reading the request head.
fn canned(response: &'static [u8]) -> (vmm_sys_util::tempdir::TempDir, ApiClient) {
    let (dir, path) = socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let _ = (&stream).write_all(response);
    });
    (dir, ApiClient::new(path))
}

#[test]
fn api_client_framings() {
    let (_dir, client) = canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\nT: 1\r\n\r\n");
    assert_eq!(
        client.request("GET", "/", None).unwrap(),
        (200, json!({ "a": 1 }))
    );
    let (_dir, client) = canned(b"HTTP/1.0 409 Conflict\r\n\r\n{\"error\": \"Busy\"}");
    assert_eq!(
        client.request("PUT", "/", Some(b"{}")).unwrap(),
        (409, json!({ "error": "Busy" }))
    );
    let (_dir, client) = canned(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        client.request("PUT", "/", None).unwrap(),
        (204, serde_json::Value::Null)
    );
    let (_dir, client) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{");
    assert!(matches!(
        client.request("GET", "/", None),
        Err(ApiClientError::Malformed(_))
    ));
    let (_dir, client) = canned(b"SSH-2.0-OpenSSH\r\n\r\n");
    assert!(matches!(
        client.request("GET", "/", None),
        Err(ApiClientError::Malformed(_))
    ));
    let (_dir, client) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot");
    assert!(matches!(
        client.request("GET", "/", None),
        Err(ApiClientError::Json(_))
    ));
}

#[test]
fn api_client_stream_lines() {
    // Lines split across chunks, two lines in a chunk, then a truncated stream.
    let (_dir, client) = canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n6\r\na\":1}\n\r\n4\r\n2\n3\n\r\n1\r\n");
    let events: Vec<_> = client.stream("/").unwrap().collect();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].as_ref().unwrap(), &json!({ "a": 1 }));
    assert_eq!(events[1].as_ref().unwrap(), &json!(2));
    assert_eq!(events[2].as_ref().unwrap(), &json!(3));
    assert!(matches!(events[3], Err(ApiClientError::Malformed(_))));
}
