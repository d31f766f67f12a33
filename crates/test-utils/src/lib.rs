//! Test doubles and helpers shared by the workspace's tests. Only ever a dev-dependency: nothing
//! here is part of a crate's API.

pub mod a64;
pub mod fake_vcpu;
pub mod kvm;
