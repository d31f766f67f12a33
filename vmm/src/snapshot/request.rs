//! A snapshot request, from whichever thread asks (the API, a library caller) to the VM
//! thread, which alone may write files and read KVM's state (its seccomp filter allows it).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::SnapshotError;

/// What the VM does once the snapshot is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSnapshot {
    /// Keep sleeping; a wakeup resumes the guest here.
    #[default]
    Stay,
    /// End the process with status 0: the guest lives on in the snapshot only.
    Exit,
}

/// `PUT /api/v1/vm.snapshot`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot directory to create (or an older snapshot to replace).
    pub destination: PathBuf,
    /// What happens next.
    #[serde(default)]
    pub then: AfterSnapshot,
}

/// A snapshot on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTaken {
    /// The directory.
    pub path: PathBuf,
    /// Bytes stored: the state file and the memory file's data (not its holes).
    pub bytes: u64,
    /// The guest's RAM, the memory file's length.
    pub memory_bytes: u64,
    /// From the request to the snapshot being complete on disk.
    pub ms: u64,
}

/// How a snapshot request ended.
pub type SnapshotResult = Result<SnapshotTaken, SnapshotError>;

type Reply = SyncSender<SnapshotResult>;

/// The one request in flight, and the event that tells the VM thread about it.
#[derive(Debug)]
pub struct SnapshotPort {
    /// `Err` once the VM thread stopped taking requests.
    pending: Mutex<Result<Option<(SnapshotRequest, Reply)>, ()>>,
    event: EventFd,
}

impl SnapshotPort {
    /// A port with nothing pending.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            pending: Mutex::new(Ok(None)),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The event the VM thread polls.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Hands `request` to the VM thread; the reply comes on the receiver. One at a time.
    pub fn submit(
        &self,
        request: SnapshotRequest,
    ) -> Result<Receiver<SnapshotResult>, SnapshotError> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(slot) = pending.as_mut() else {
            return Err(SnapshotError::Stopped);
        };
        if slot.is_some() {
            return Err(SnapshotError::Busy);
        }
        let (reply, receiver) = sync_channel(1);
        *slot = Some((request, reply));
        self.event.write(1).map_err(SnapshotError::Notify)?;
        Ok(receiver)
    }

    /// Asks for a snapshot and waits for it.
    pub fn take(&self, request: SnapshotRequest) -> Result<SnapshotTaken, SnapshotError> {
        self.submit(request)?
            .recv()
            .unwrap_or(Err(SnapshotError::Stopped))
    }

    /// On the VM thread: the pending request, if any. Its reply frees the port for the next.
    pub fn next(&self) -> Option<(SnapshotRequest, impl FnOnce(SnapshotResult) + '_)> {
        let _ = self.event.read();
        let (request, reply) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok()?
            .as_ref()
            .map(|(request, reply)| (request.clone(), reply.clone()))?;
        let finish = move |result| {
            let _ = reply.send(result);
            if let Ok(slot) = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                slot.take();
            }
        };
        Some((request, finish))
    }

    /// On the VM thread, as the VM ends: a request still pending gets [`SnapshotError::Stopped`],
    /// and so does every later one.
    pub fn close(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some((_, reply))) = std::mem::replace(&mut *pending, Err(())) {
            let _ = reply.send(Err(SnapshotError::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SnapshotRequest {
        SnapshotRequest {
            destination: "/var/lib/vms/a".into(),
            then: AfterSnapshot::Exit,
        }
    }

    #[test]
    fn the_request_body_is_the_issue_s_json_and_then_defaults_to_stay() {
        let body: SnapshotRequest =
            serde_json::from_str(r#"{"destination":"/var/lib/vms/a","then":"exit"}"#).unwrap();
        assert_eq!(body, request());
        let body: SnapshotRequest = serde_json::from_str(r#"{"destination":"a"}"#).unwrap();
        assert_eq!(body.then, AfterSnapshot::Stay);
        for bad in [
            r#"{}"#,
            r#"{"destination":"a","then":"later"}"#,
            r#"{"destination":"a","thne":"exit"}"#,
        ] {
            assert!(
                serde_json::from_str::<SnapshotRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn one_request_at_a_time_and_the_vm_thread_replies() {
        let port = SnapshotPort::new().unwrap();
        assert!(port.next().is_none());
        let receiver = port.submit(request()).unwrap();
        assert!(matches!(port.submit(request()), Err(SnapshotError::Busy)));
        let (asked, finish) = port.next().unwrap();
        assert_eq!(asked, request());
        let taken = SnapshotTaken {
            path: asked.destination,
            bytes: 1,
            memory_bytes: 2,
            ms: 3,
        };
        finish(Ok(taken.clone()));
        assert_eq!(receiver.recv().unwrap().unwrap(), taken);
        // Free again.
        drop(port.submit(request()).unwrap());
    }

    #[test]
    fn a_vm_that_ends_without_replying_is_an_error_not_a_hang() {
        let port = SnapshotPort::new().unwrap();
        let receiver = port.submit(request()).unwrap();
        port.close();
        assert!(matches!(
            receiver.recv().unwrap(),
            Err(SnapshotError::Stopped)
        ));
        assert!(matches!(
            port.submit(request()),
            Err(SnapshotError::Stopped)
        ));
        assert!(port.next().is_none());
    }
}
