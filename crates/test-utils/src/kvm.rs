//! Tests that need `/dev/kvm` skip, saying why, on a machine without it, except where the
//! environment says KVM must be there: the testbed sets [`REQUIRE_KVM`] inside the emulated
//! host, so a KVM test is never silently lost there.

/// Set (to anything) where a missing `/dev/kvm` must fail the tests instead of skipping them.
pub const REQUIRE_KVM: &str = "VMM_TEST_REQUIRE_KVM";

/// The KVM device the tests open.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Why this machine cannot run KVM tests, or `None` if it can.
///
/// # Panics
/// When `/dev/kvm` cannot be opened and [`REQUIRE_KVM`] is set.
pub fn missing() -> Option<String> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE);
    match opened {
        Ok(_) => None,
        Err(err) if std::env::var_os(REQUIRE_KVM).is_some() => {
            panic!("{KVM_DEVICE} is required here ({REQUIRE_KVM} is set): {err}")
        }
        Err(err) => Some(format!("cannot open {KVM_DEVICE}: {err}")),
    }
}

/// The host kernel's `major.minor`, from `/proc/sys/kernel/osrelease` ("7.3.4+deb13-arm64"):
/// what KVM offers depends on it.
pub fn host_kernel() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// Returns from the calling test, with one line on stderr saying it skipped and why, when this
/// machine has no usable `/dev/kvm` (see [`missing`]).
#[macro_export]
macro_rules! require_kvm {
    () => {
        if let Some(reason) = $crate::kvm::missing() {
            // libtest names each test's thread after the test.
            let thread = std::thread::current();
            eprintln!(
                "skipped {}: {reason}",
                thread.name().unwrap_or(module_path!())
            );
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_kvm_is_told_apart_from_one_with_it() {
        // Either answer is right for this machine; what matters is that it matches the device.
        let openable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM_DEVICE)
            .is_ok();
        if std::env::var_os(REQUIRE_KVM).is_none() || openable {
            assert_eq!(missing().is_none(), openable);
        }
    }
}
