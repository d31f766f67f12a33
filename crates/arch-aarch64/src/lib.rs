//! The arm64 guest platform as pure data and logic.
//!
//! Nothing here calls KVM, so every module builds and is unit-tested on any host. The
//! `hypervisor` crate turns these values into ioctls; the `vmm` crate decides with them.

pub mod boot;
pub mod cpu_power;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod psci;
pub mod regs;
