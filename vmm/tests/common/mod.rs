//! What the integration tests share: running the `vmm` binary, and the testbed guest's files.
// Each test file compiles this module on its own and uses only some of it.
#![allow(dead_code)]

#[cfg(target_arch = "aarch64")]
pub mod guest;
#[cfg(target_arch = "aarch64")]
pub mod process;

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// The `vmm` binary: the one the testbed staged in the arm64 host (`VMM_BIN`), else cargo's.
pub fn vmm_binary() -> PathBuf {
    std::env::var_os("VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vmm")))
}

/// Waits up to `limit` for `child` to exit. One still running then is killed and reaped, and
/// `None` says it hung, so that the caller can name what it was waiting for.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for vmm") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A file of the testbed's guest named by the environment variable `variable`
/// (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`, `VMM_TEST_ROOTFS`), which the testbed sets.
pub fn guest_file(variable: &str) -> PathBuf {
    std::env::var_os(variable)
        .unwrap_or_else(|| panic!("{variable} must name the testbed guest's file"))
        .into()
}
