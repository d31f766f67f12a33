//! Finds what the emulated host needs: the Debian arm64 kernel and busybox unpacked by
//! `scripts/setup.sh`, and the cross-built test executables listed by cargo.

use std::path::{Path, PathBuf};

/// Missing or unreadable artefacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    /// An artefact file is missing.
    #[error("Missing {what} at {path} (run scripts/setup.sh and scripts/build-aarch64.sh)")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// An artefact only the benchmark needs is missing.
    #[error(
        "Missing {what} at {path} (run scripts/bench.sh, or scripts/setup-bench.sh and \
         scripts/build-aarch64.sh build --profile bench-release)"
    )]
    MissingBench {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Cargo's build messages could not be read.
    #[error("Cannot read the aarch64 build messages at {path}")]
    BuildMessages {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The arm64 artefacts and cross-built binaries.
#[derive(Clone, Debug)]
pub struct Artefacts {
    /// The arm64 kernel `Image`, used for the emulated host and for nested guests.
    pub kernel: PathBuf,
    /// Modules the nested guest loads: `gpio_keys.ko` (wake and power buttons) and `evdev.ko`
    /// (so its power-key handler can read key events).
    pub guest_modules: Vec<PathBuf>,
    /// util-linux's `rtcwake` for arm64 and the glibc it needs (`libc.so.6` and the loader).
    pub rtcwake: [PathBuf; 3],
    /// A static arm64 busybox.
    pub busybox: PathBuf,
    /// The cross-built `vmm` binary, once the workspace has one.
    pub vmm: Option<PathBuf>,
    /// The cross-built library example `suspend_wake`, once built.
    pub example: Option<PathBuf>,
    /// Every cross-built test executable.
    pub tests: Vec<TestExecutable>,
}

/// A test executable from `cargo test --no-run`.
#[derive(Clone, Debug)]
pub struct TestExecutable {
    /// The package, e.g. `hypervisor`.
    pub package: String,
    /// The test target, e.g. `psci_guests`, or the package name for unit tests.
    pub target: String,
    /// Its path on this machine.
    pub path: PathBuf,
}

impl TestExecutable {
    /// Its file name in the initramfs.
    pub fn staged_name(&self) -> String {
        format!("{}-{}", self.package, self.target)
    }
}

impl Artefacts {
    /// Looks in `dir`, or in the default cache of `scripts/setup.sh`.
    pub fn locate(dir: Option<PathBuf>) -> Result<Self, ArtefactError> {
        let dir = dir.unwrap_or_else(default_dir);
        let build = PathBuf::from("target/aarch64/aarch64-unknown-linux-gnu/debug");
        let messages = PathBuf::from("target/aarch64/artifacts.json");
        Ok(Self {
            kernel: existing("arm64 kernel Image", dir.join("Image"))?,
            busybox: existing("arm64 busybox", dir.join("busybox"))?,
            rtcwake: [
                existing("arm64 rtcwake", dir.join("rtcwake"))?,
                existing("arm64 libc.so.6", dir.join("lib/libc.so.6"))?,
                existing(
                    "arm64 dynamic loader",
                    dir.join("lib/ld-linux-aarch64.so.1"),
                )?,
            ],
            guest_modules: vec![
                existing(
                    "gpio_keys.ko",
                    dir.join("modules/kernel/drivers/input/keyboard/gpio_keys.ko"),
                )?,
                existing(
                    "evdev.ko",
                    dir.join("modules/kernel/drivers/input/evdev.ko"),
                )?,
            ],
            vmm: Some(build.join("vmm")).filter(|path| path.exists()),
            example: Some(build.join("examples/suspend_wake")).filter(|path| path.exists()),
            tests: test_executables(&messages)?,
        })
    }

    /// The test executable of `package`'s target `target`.
    pub fn test(&self, package: &str, target: &str) -> Option<&TestExecutable> {
        self.tests
            .iter()
            .find(|test| test.package == package && test.target == target)
    }
}

/// The cargo profile of the benchmark's binaries: release code, built faster.
pub const BENCH_PROFILE: &str = "bench-release";

/// What only `testbed bench` stages: QEMU for arm64 from scripts/setup-bench.sh, and our
/// binaries built with [`BENCH_PROFILE`].
#[derive(Clone, Debug)]
pub struct BenchArtefacts {
    /// `qemu-system-aarch64`.
    pub qemu: PathBuf,
    /// The shared libraries it loads, the dynamic loader among them.
    pub qemu_libs: Vec<PathBuf>,
    /// The Debian version of the QEMU package.
    pub qemu_version: PathBuf,
    /// The optimised `vmm`.
    pub vmm: PathBuf,
    /// The hypervisor crate's `suspend_floor` example.
    pub floor: PathBuf,
}

impl BenchArtefacts {
    /// Looks in `dir`, or in the default cache, and in the aarch64 build of [`BENCH_PROFILE`].
    pub fn locate(dir: Option<PathBuf>) -> Result<Self, ArtefactError> {
        let qemu_dir = dir.unwrap_or_else(default_dir).join("qemu-arm64");
        let build = Path::new("target/aarch64/aarch64-unknown-linux-gnu").join(BENCH_PROFILE);
        let bench = |what, path: PathBuf| {
            if path.exists() {
                Ok(path)
            } else {
                Err(ArtefactError::MissingBench { what, path })
            }
        };
        bench("QEMU for arm64", qemu_dir.join(".complete"))?;
        let lib_dir = qemu_dir.join("lib");
        let qemu_libs = std::fs::read_dir(&lib_dir)
            .and_then(|entries| entries.map(|entry| Ok(entry?.path())).collect())
            .map_err(|_| ArtefactError::MissingBench {
                what: "QEMU's libraries",
                path: lib_dir,
            })?;
        Ok(Self {
            qemu: bench(
                "qemu-system-aarch64",
                qemu_dir.join("bin/qemu-system-aarch64"),
            )?,
            qemu_libs,
            qemu_version: bench("QEMU's version", qemu_dir.join("version"))?,
            vmm: bench("optimised vmm", build.join("vmm"))?,
            floor: bench("suspend_floor", build.join("examples/suspend_floor"))?,
        })
    }
}

fn default_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("vmm-testbed/artefacts")
}

fn existing(what: &'static str, path: PathBuf) -> Result<PathBuf, ArtefactError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(ArtefactError::Missing { what, path })
    }
}

/// Reads cargo's `--message-format=json` output for test executables.
fn test_executables(messages: &Path) -> Result<Vec<TestExecutable>, ArtefactError> {
    let text =
        std::fs::read_to_string(messages).map_err(|source| ArtefactError::BuildMessages {
            path: messages.to_owned(),
            source,
        })?;
    let mut tests = Vec::new();
    for line in text.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(path) = message["executable"].as_str() else {
            continue;
        };
        let package = message["target"]["name"].as_str().unwrap_or_default();
        // A package's lib and bin targets share a name; tell their test executables apart.
        let is_bin = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"));
        let crate_name = message["package_id"]
            .as_str()
            .and_then(package_name)
            .unwrap_or(package);
        tests.push(TestExecutable {
            package: crate_name.to_owned(),
            target: if is_bin {
                format!("{}_bin", package.replace('-', "_"))
            } else {
                package.replace('-', "_")
            },
            path: PathBuf::from(path),
        });
    }
    if tests.is_empty() {
        return Err(ArtefactError::Missing {
            what: "test executables",
            path: messages.to_owned(),
        });
    }
    Ok(tests)
}

/// The package name in a cargo package id, either `path+file:///…/name#version` or the older
/// `name version (source)` form.
fn package_name(id: &str) -> Option<&str> {
    if let Some((url, fragment)) = id.split_once('#') {
        // `…/dir#name@version` spells the name out when it differs from the directory.
        if let Some((name, _version)) = fragment.split_once('@') {
            return Some(name);
        }
        return url.rsplit('/').next();
    }
    id.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_package_names_from_both_id_forms() {
        assert_eq!(
            package_name("path+file:///work/main/crates/hypervisor#0.1.0"),
            Some("hypervisor")
        );
        assert_eq!(
            package_name("hypervisor 0.1.0 (path+file:///work/main/crates/hypervisor)"),
            Some("hypervisor")
        );
        assert_eq!(
            package_name("path+file:///work/main/tests/bed#testbed@0.1.0"),
            Some("testbed")
        );
    }

    #[test]
    fn finds_test_executables_in_cargo_messages() {
        let dir = std::env::temp_dir().join(format!("testbed-msg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("messages.json");
        std::fs::write(
            &file,
            concat!(
                r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/hypervisor#0.1.0","target":{"name":"psci_guests"},"profile":{"test":true},"executable":"/t/psci_guests-1"}"#,
                "\n",
                r#"{"reason":"compiler-artifact","package_id":"path+file:///w/vmm#0.1.0","target":{"name":"vmm"},"profile":{"test":false},"executable":"/t/vmm"}"#,
                "\n",
                r#"{"reason":"build-finished","success":true}"#,
                "\n"
            ),
        )
        .unwrap();
        let tests = test_executables(&file).unwrap();
        assert_eq!(tests.len(), 1);
        assert_eq!(tests[0].staged_name(), "hypervisor-psci_guests");
        assert_eq!(tests[0].path, PathBuf::from("/t/psci_guests-1"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
