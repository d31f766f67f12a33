//! Finds what the emulated host needs: the pinned Debian arm64 kernels (`resources/kernels.pin`)
//! with their modules, busybox and the other arm64 tools unpacked by `scripts/setup.sh`, and
//! the cross-built binaries and test executables listed by cargo.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The modules the nested guest loads, by module name (the kernel treats `-` and `_` alike):
/// the wake and power buttons (gpio-keys on the PL061) and evdev for the power-key handler,
/// the virtio-mmio transport, virtio-blk disks, the virtio-rng entropy source, ext4 for the
/// root disk, virtio-net, and vsock over virtio. Their dependencies come from `modules.dep`, and from `modules.softdep` (ext4 and
/// jbd2 want the crc32c crypto module, which no hard dependency pulls in).
pub const GUEST_MODULES: &[&str] = &[
    "gpio_keys",
    "evdev",
    "virtio_mmio",
    "virtio_blk",
    "virtio-rng",
    "ext4",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

/// The modules the emulated host loads, from its own kernel's modules: `tun`, for the taps of
/// the virtio-net tests.
pub const HOST_MODULES: &[&str] = &["tun"];

/// A pinned kernel the emulated host can boot (`resources/kernels.pin`), named as on the
/// command line and in `$ARTEFACTS/kernels/NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelName {
    /// Debian 12's own kernel, which the nested guest always runs.
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12's newer kernel line (bookworm-security).
    #[value(name = "6.12")]
    V6_12,
    /// Debian 13's backported 7.x kernel (trixie-backports).
    #[value(name = "7")]
    V7,
}

impl KernelName {
    /// Every pinned kernel, in the order `--host-kernel all` runs them.
    pub const ALL: [Self; 3] = [Self::V6_1, Self::V6_12, Self::V7];

    /// Its name in `resources/kernels.pin` and under `$ARTEFACTS/kernels`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::V7 => "7",
        }
    }
}

impl std::fmt::Display for KernelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// A pinned kernel for the emulated host was not fetched.
    #[error(
        "Missing host kernel {name} at {dir} (run scripts/setup.sh --host-kernel {name}, or \
         VMM_HOST_KERNELS={name} scripts/setup.sh)"
    )]
    MissingHostKernel {
        /// The kernel's name.
        name: KernelName,
        /// Its directory, with `Image` and `modules`.
        dir: PathBuf,
    },
    /// A module the nested guest needs, or one of its dependencies, is not in `modules.dep`.
    #[error("Module {name} is not in {index} (is the kernel built with it as a module?)")]
    MissingModule {
        /// The module's name.
        name: String,
        /// The `modules.dep` file.
        index: PathBuf,
    },
    /// The kernel's module index could not be read.
    #[error("Cannot read the module index {path} (run scripts/setup.sh, which runs depmod)")]
    ModuleIndex {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
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
    /// The directory they are in (`$ARTEFACTS`).
    pub dir: PathBuf,
    /// The nested guests' arm64 kernel `Image`: the pinned 6.1 (`$ARTEFACTS/Image`).
    pub kernel: PathBuf,
    /// The modules the nested guest loads ([`GUEST_MODULES`] and every dependency), in load
    /// order: dependencies first, each once. Plain `.ko` files, or compressed as the kernel
    /// package ships them (`.ko.xz`, `.ko.zst`, `.ko.gz`).
    pub guest_modules: Vec<PathBuf>,
    /// The newest pinned kernel (`7`) as a second nested guest, for what only a 6.13+ guest
    /// does (hibernation through SYSTEM_OFF2), when `scripts/setup.sh` fetched it.
    pub newest_guest: Option<GuestKernel>,
    /// util-linux's `rtcwake` for arm64 and the glibc it needs (`libc.so.6` and the loader).
    pub rtcwake: [PathBuf; 3],
    /// A static arm64 busybox.
    pub busybox: PathBuf,
    /// A static arm64 `e2fsck` (e2fsck-static), to check ext4 images in the emulated host.
    pub e2fsck: PathBuf,
    /// The cross-built `disk-pattern` (tests/disk-pattern), once built.
    pub disk_pattern: Option<PathBuf>,
    /// The cross-built `guest-agent` (tests/guest-agent), once built.
    pub guest_agent: Option<PathBuf>,
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
    pub(crate) fn staged_name(&self) -> String {
        format!("{}-{}", self.package, self.target)
    }
}

/// A nested guest's kernel other than the default one, with the modules it loads.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    /// Its uncompressed arm64 `Image`.
    pub image: PathBuf,
    /// [`GUEST_MODULES`] and every dependency from this kernel's modules, in load order.
    pub modules: Vec<PathBuf>,
}

impl GuestKernel {
    /// The kernel `name` under `artefacts_dir/kernels`, or `None` when it was not fetched.
    pub(crate) fn locate(
        artefacts_dir: &Path,
        name: KernelName,
    ) -> Result<Option<Self>, ArtefactError> {
        let dir = artefacts_dir.join("kernels").join(name.name());
        let image = dir.join("Image");
        let modules = dir.join("modules");
        if !image.exists() || !modules.join("modules.dep").exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            image,
            modules: guest_modules(&modules, GUEST_MODULES)?,
        }))
    }
}

/// The emulated host's kernel: one of the pinned kernels, from `$ARTEFACTS/kernels/NAME`.
#[derive(Clone, Debug)]
pub struct HostKernel {
    /// Which one.
    pub name: KernelName,
    /// Its uncompressed arm64 `Image`.
    pub image: PathBuf,
    /// The modules the emulated host loads ([`HOST_MODULES`] and every dependency) from this
    /// kernel's own modules, in load order; compressed as the package ships them.
    pub modules: Vec<PathBuf>,
}

impl HostKernel {
    /// Finds the kernel `name` under `artefacts_dir/kernels`.
    pub fn locate(artefacts_dir: &Path, name: KernelName) -> Result<Self, ArtefactError> {
        let dir = artefacts_dir.join("kernels").join(name.name());
        let image = dir.join("Image");
        let modules = dir.join("modules");
        if !image.exists() || !modules.join("modules.dep").exists() {
            return Err(ArtefactError::MissingHostKernel { name, dir });
        }
        Ok(Self {
            name,
            image,
            modules: guest_modules(&modules, HOST_MODULES)?,
        })
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
            e2fsck: existing("arm64 e2fsck.static", dir.join("e2fsck.static"))?,
            rtcwake: [
                existing("arm64 rtcwake", dir.join("rtcwake"))?,
                existing("arm64 libc.so.6", dir.join("lib/libc.so.6"))?,
                existing(
                    "arm64 dynamic loader",
                    dir.join("lib/ld-linux-aarch64.so.1"),
                )?,
            ],
            guest_modules: guest_modules(&dir.join("modules"), GUEST_MODULES)?,
            newest_guest: GuestKernel::locate(&dir, KernelName::V7)?,
            vmm: Some(build.join("vmm")).filter(|path| path.exists()),
            disk_pattern: Some(build.join("disk-pattern")).filter(|path| path.exists()),
            guest_agent: Some(build.join("guest-agent")).filter(|path| path.exists()),
            example: Some(build.join("examples/suspend_wake")).filter(|path| path.exists()),
            tests: test_executables(&messages)?,
            dir,
        })
    }

    /// The test executable of `package`'s target `target`.
    pub(crate) fn test(&self, package: &str, target: &str) -> Option<&TestExecutable> {
        self.tests
            .iter()
            .find(|test| test.package == package && test.target == target)
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

/// The files of `wanted` and their dependencies in the kernel's module directory `dir` (the
/// `lib/modules/VERSION` of the kernel package, with depmod's index), in load order. Used for
/// the nested guest's modules and for the emulated host's.
fn guest_modules(dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, ArtefactError> {
    let read = |name: &str, required: bool| {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(String::new())
            }
            Err(source) => Err(ArtefactError::ModuleIndex { path, source }),
        }
    };
    let index = ModuleIndex::parse(
        &read("modules.dep", true)?,
        &read("modules.softdep", false)?,
        &read("modules.alias", false)?,
    );
    let order = index
        .load_order(wanted)
        .map_err(|name| ArtefactError::MissingModule {
            name,
            index: dir.join("modules.dep"),
        })?;
    order
        .into_iter()
        .map(|file| existing("kernel module", dir.join(file)))
        .collect()
}

/// A module's name from its file: `kernel/drivers/char/hw_random/virtio-rng.ko.xz` is
/// `virtio_rng`, since the kernel treats `-` and `_` in module names alike.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.find(".ko").map_or(base, |at| &base[..at]);
    stem.replace('-', "_")
}

/// What depmod wrote: each module's file and hard dependencies (`modules.dep`), its soft
/// dependencies to load first (`pre:` in `modules.softdep`), and the aliases those name
/// (`modules.alias`).
#[derive(Debug, Default)]
struct ModuleIndex {
    /// Module name to (file, dependency files as listed).
    modules: HashMap<String, (String, Vec<String>)>,
    /// Module name to the names or aliases it wants loaded before it.
    pre: HashMap<String, Vec<String>>,
    /// Alias to module names (`-` read as `_` in both, as kmod does).
    aliases: HashMap<String, Vec<String>>,
}

impl ModuleIndex {
    fn parse(dep: &str, softdep: &str, alias: &str) -> Self {
        let mut index = Self::default();
        for line in dep.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            index
                .modules
                .insert(module_name(file), (file.trim().to_owned(), deps));
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            let mut pre = false;
            for word in words {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => index
                        .pre
                        .entry(module.replace('-', "_"))
                        .or_default()
                        .push(name.to_owned()),
                    _ => {}
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(name), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .entry(name.replace('-', "_"))
                    .or_default()
                    .push(module.replace('-', "_"));
            }
        }
        index
    }

    /// The files to load for `wanted`, dependencies first and each once; `Err` names a wanted
    /// module or hard dependency that is missing. Soft dependencies that resolve to no module
    /// (built into the kernel) are skipped, as modprobe does.
    fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            self.visit(&name.replace('-', "_"), &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let (file, deps) = self.modules.get(name).ok_or_else(|| name.to_owned())?;
        for soft in self.pre.get(name).into_iter().flatten() {
            let soft = soft.replace('-', "_");
            if self.modules.contains_key(&soft) {
                self.visit(&soft, seen, order)?;
            } else {
                for module in self.aliases.get(&soft).into_iter().flatten() {
                    if self.modules.contains_key(module) {
                        self.visit(module, seen, order)?;
                    }
                }
            }
        }
        // depmod lists every transitive dependency, the ones loaded first last.
        for dep in deps.iter().rev() {
            self.visit(&module_name(dep), seen, order)?;
        }
        order.push(file.clone());
        Ok(())
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

    const MODULES_DEP: &str = "\
kernel/drivers/input/keyboard/gpio_keys.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/btrfs/btrfs.ko: kernel/lib/libcrc32c.ko kernel/lib/raid6/raid6_pq.ko
kernel/lib/libcrc32c.ko:
";
    const MODULES_SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep libcrc32c pre: crc32c
softdep virtio_rng pre: builtin-thing post: gpio_keys
";
    const MODULES_ALIAS: &str = "\
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias of:N*T*Cgpio-keys gpio_keys
";

    #[test]
    fn resolves_modules_with_their_dependencies_in_load_order() {
        let index = ModuleIndex::parse(MODULES_DEP, MODULES_SOFTDEP, MODULES_ALIAS);
        assert_eq!(
            index
                .load_order(&["gpio_keys", "virtio-rng", "ext4", "jbd2", "crc16"])
                .unwrap(),
            [
                "kernel/drivers/input/keyboard/gpio_keys.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko.xz",
                // ext4's soft dependency through the alias, then its hard ones.
                "kernel/crypto/crc32c_generic.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        // Without the softdep and alias files only the hard dependencies are known.
        let index = ModuleIndex::parse(MODULES_DEP, "", "");
        assert_eq!(
            index.load_order(&["ext4"]).unwrap(),
            [
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
    }

    #[test]
    fn a_missing_module_or_dependency_is_named() {
        let index = ModuleIndex::parse(MODULES_DEP, MODULES_SOFTDEP, MODULES_ALIAS);
        assert_eq!(
            index.load_order(&["gpio_keys", "virtio_blk"]),
            Err("virtio_blk".to_owned())
        );
        assert_eq!(index.load_order(&["btrfs"]), Err("raid6_pq".to_owned()));

        let dir = std::env::temp_dir().join(format!("testbed-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modules.dep"), MODULES_DEP).unwrap();
        let err = guest_modules(&dir, &["virtio_mmio"]).unwrap_err();
        assert!(
            matches!(&err, ArtefactError::MissingModule { name, .. } if name == "virtio_mmio"),
            "{err}"
        );
        // Listed but not on disk.
        let err = guest_modules(&dir, &["crc16"]).unwrap_err();
        assert!(matches!(err, ArtefactError::Missing { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = guest_modules(&dir, &["crc16"]).unwrap_err();
        assert!(matches!(err, ArtefactError::ModuleIndex { .. }), "{err}");
    }

    #[test]
    fn every_pinned_kernel_has_a_name_and_every_name_a_pin() {
        // Compiled in: the test also runs inside the emulated host, which has no source tree.
        let pins = include_str!("../../../resources/kernels.pin");
        let pinned: Vec<&str> = pins
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        let named: Vec<&str> = KernelName::ALL.iter().map(|kernel| kernel.name()).collect();
        assert_eq!(pinned, named);
    }

    #[test]
    fn host_kernels_come_from_their_own_directory_with_their_own_tun() {
        let dir = std::env::temp_dir().join(format!("testbed-kernels-{}", std::process::id()));
        let err = HostKernel::locate(&dir, KernelName::V6_12).unwrap_err();
        assert!(
            matches!(
                &err,
                ArtefactError::MissingHostKernel {
                    name: KernelName::V6_12,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("run scripts/setup.sh --host-kernel 6.12"),
            "{err}"
        );

        let modules = dir.join("kernels/7/modules");
        std::fs::create_dir_all(modules.join("kernel/drivers/net")).unwrap();
        std::fs::write(dir.join("kernels/7/Image"), b"").unwrap();
        std::fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/net/tun.ko.xz:\nkernel/drivers/net/tap.ko.xz:\n",
        )
        .unwrap();
        std::fs::write(modules.join("kernel/drivers/net/tun.ko.xz"), b"").unwrap();
        let host = HostKernel::locate(&dir, KernelName::V7).unwrap();
        assert_eq!(host.image, dir.join("kernels/7/Image"));
        assert_eq!(host.modules, [modules.join("kernel/drivers/net/tun.ko.xz")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn module_names_ignore_compression_and_dashes() {
        assert_eq!(module_name("kernel/a/virtio-rng.ko"), "virtio_rng");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.zst"), "ext4");
        assert_eq!(module_name("gpio_keys.ko.xz"), "gpio_keys");
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
