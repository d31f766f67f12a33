//! The testbed library: what the `testbed` runner and the benchmark harness (`tests/bench`)
//! both do to run scripts on real arm64 KVM.
//!
//! On an x86-64 machine that means an emulated arm64 host (QEMU TCG with EL2 and a GICv3)
//! booting one of the pinned Debian kernels, with `/dev/kvm`, from an initramfs that holds
//! busybox, the cross-built aarch64 binaries, a nested guest and the scripts to run; on a
//! native arm64 host with `/dev/kvm` the same staged tree runs directly. A harness:
//!
//! 1. finds the artefacts ([`artefacts::Artefacts::locate`], [`artefacts::HostKernel::locate`]);
//! 2. stages the tree for its [`scenarios::Scenario`]s ([`initramfs::stage`]), adds what else
//!    it needs ([`initramfs::Staged::add_file`] and its siblings) and packs it
//!    ([`initramfs::pack`]);
//! 3. boots it and follows the console under each scenario's time limit
//!    ([`console::run_emulated`], or [`console::run_native`] where
//!    [`console::native_kvm_host`]), which gives a [`report::Outcome`] and the console log
//!    `WORK_DIR/console.log`;
//! 4. prints the summary ([`report::summarise`]).

pub mod artefacts;
pub mod console;
pub mod initramfs;
pub mod report;
pub mod scenarios;
