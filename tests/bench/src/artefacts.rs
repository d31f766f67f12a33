//! Finds what only the benchmark stages on top of the testbed's tree: QEMU for arm64 from
//! scripts/setup-bench.sh, and our binaries built with [`BENCH_PROFILE`].

use std::path::{Path, PathBuf};

use testbed::initramfs::{InitramfsError, Staged};

/// The cargo profile of the benchmark's binaries: release code, built faster.
const BENCH_PROFILE: &str = "bench-release";

/// An artefact only the benchmark needs is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "Missing {what} at {path} (run scripts/bench.sh, or scripts/setup-bench.sh and \
     scripts/build-aarch64.sh build --profile bench-release)"
)]
pub struct MissingArtefact {
    /// What it is.
    what: &'static str,
    /// Where it was looked for.
    path: PathBuf,
}

/// QEMU for arm64 and the optimised binaries.
#[derive(Clone, Debug)]
pub struct BenchArtefacts {
    /// `qemu-system-aarch64`.
    qemu: PathBuf,
    /// The shared libraries it loads, the dynamic loader among them.
    qemu_libs: Vec<PathBuf>,
    /// The Debian version of the QEMU package.
    qemu_version: PathBuf,
    /// The optimised `vmm`.
    pub vmm: PathBuf,
    /// The hypervisor crate's `suspend_floor` example.
    floor: PathBuf,
    /// The optimised `disk-pattern`, whose `bench` measures disk throughput in the guest.
    disk_pattern: PathBuf,
    /// The optimised `guest-agent`: the host serves the network runs with it, their guest
    /// measures with it.
    guest_agent: PathBuf,
}

impl BenchArtefacts {
    /// Looks in the testbed's artefacts directory `artefacts_dir` (QEMU's unpacked package is
    /// in `qemu-arm64/`) and in the aarch64 build of [`BENCH_PROFILE`].
    pub fn locate(artefacts_dir: &Path) -> Result<Self, MissingArtefact> {
        let qemu_dir = artefacts_dir.join("qemu-arm64");
        let build = Path::new("target/aarch64/aarch64-unknown-linux-gnu").join(BENCH_PROFILE);
        let existing = |what, path: PathBuf| {
            if path.exists() {
                Ok(path)
            } else {
                Err(MissingArtefact { what, path })
            }
        };
        existing("QEMU for arm64", qemu_dir.join(".complete"))?;
        let lib_dir = qemu_dir.join("lib");
        let qemu_libs = std::fs::read_dir(&lib_dir)
            .and_then(|entries| entries.map(|entry| Ok(entry?.path())).collect())
            .map_err(|_| MissingArtefact {
                what: "QEMU's libraries",
                path: lib_dir,
            })?;
        Ok(Self {
            qemu: existing(
                "qemu-system-aarch64",
                qemu_dir.join("bin/qemu-system-aarch64"),
            )?,
            qemu_libs,
            qemu_version: existing("QEMU's version", qemu_dir.join("version"))?,
            vmm: existing("optimised vmm", build.join("vmm"))?,
            floor: existing("suspend_floor", build.join("examples/suspend_floor"))?,
            disk_pattern: existing("optimised disk-pattern", build.join("disk-pattern"))?,
            // build-aarch64.sh builds it next to the optimised vmm.
            guest_agent: existing("optimised guest-agent", build.join("guest-agent"))?,
        })
    }

    /// Adds them to a staged tree, with the plan: QEMU under `qemu/` (run through its own
    /// loader, `qemu/lib/ld-linux-aarch64.so.1 --library-path qemu/lib`), the floor program as
    /// `bin/suspend_floor`, the optimised guest-agent as `bin/guest-agent` (the host's end of
    /// the network runs), the plan as `testbed/bench.env`, `guest/initrd-disk.cpio`: the
    /// nested guest's initramfs with the optimised `bin/disk-pattern` in it, for the disk
    /// throughput runs, and `guest/initrd-net.cpio`: the same with `bin/guest-agent`, for the
    /// network runs (the other runs keep booting the initramfs without either).
    pub fn stage(&self, staged: &Staged, plan_env: &str) -> Result<(), InitramfsError> {
        staged.add_file(&self.qemu, "qemu/bin/qemu-system-aarch64")?;
        staged.add_file(&self.qemu_version, "qemu/version")?;
        for lib in &self.qemu_libs {
            if let Some(name) = lib.file_name() {
                staged.add_file(lib, Path::new("qemu/lib").join(name))?;
            }
        }
        staged.add_file(&self.floor, "bin/suspend_floor")?;
        staged.add_guest_initramfs(
            "guest/initrd-disk.cpio",
            &[(&self.disk_pattern, "bin/disk-pattern")],
        )?;
        staged.add_file(&self.guest_agent, "bin/guest-agent")?;
        staged.add_guest_initramfs(
            "guest/initrd-net.cpio",
            &[(&self.guest_agent, "bin/guest-agent")],
        )?;
        staged.add_text("testbed/bench.env", plan_env)
    }
}
