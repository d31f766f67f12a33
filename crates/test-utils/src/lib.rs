//! Test doubles and helpers shared by the workspace's tests. Only ever a dev-dependency: nothing
//! here is part of a crate's API.
//!
//! - [`a64`]: an A64 encoder for bare-metal guests, and [`programs`] that several tests run;
//! - [`image`]: those guests as kernel Images for `vmm`;
//! - `guest` (arm64 only): those guests in a VM of the `hypervisor` crate, on real KVM;
//! - [`fake_vcpu`]: a vCPU that blocks where KVM does, for tests without KVM;
//! - [`kvm`]: skipping the tests that need `/dev/kvm` on a machine without it.
//!
//! The devices' doubles (a recording interrupt line, a manual clock) implement traits of the
//! `devices` crate, whose own tests use them: they are `devices::test_utils`, behind its
//! `test-utils` feature.

pub mod a64;
pub mod fake_vcpu;
#[cfg(target_arch = "aarch64")]
pub mod guest;
pub mod image;
pub mod kvm;
pub mod programs;
