//! Stages the tree the arm64 host runs from and packs it as a newc cpio initramfs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::artefacts::{Artefacts, HostKernel};
use crate::scenarios::{Scenario, Steps};

/// Failures staging or packing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file operation failed.
    #[error("Cannot stage {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A scenario names a test executable that was not built.
    #[error("Scenario {scenario} needs test {package}::{target}, which was not built")]
    MissingTest {
        /// The scenario.
        scenario: &'static str,
        /// The package.
        package: &'static str,
        /// The test target.
        target: &'static str,
    },
    /// `cpio` failed.
    #[error("cpio failed to pack {0}")]
    Cpio(PathBuf),
    /// A tool the staging runs is not installed.
    #[error(
        "Cannot find {tool} in PATH, /usr/sbin or /sbin (install {package}; scripts/setup.sh does)"
    )]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// `testbed shell` needs the cross-built vmm, which is not there.
    #[error("No aarch64 vmm binary to stage (run scripts/build-aarch64.sh build)")]
    MissingVmm,
    /// A tool the staging runs failed.
    #[error("{tool} failed to make {path}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// What it was making.
        path: PathBuf,
    },
}

/// The staged tree.
#[derive(Debug)]
pub struct Staged {
    /// Its root directory.
    pub root: PathBuf,
    /// The scenarios it runs, with their time limits already scaled.
    pub scenarios: Vec<(String, u64)>,
}

impl Staged {
    /// Copies `from` into the tree as `path`, relative to its root: for a harness that boots
    /// more than the scenarios need (the benchmark's QEMU).
    pub fn add_file(&self, from: &Path, path: impl AsRef<Path>) -> Result<(), InitramfsError> {
        copy(from, &self.root.join(path))
    }

    /// Writes `text` into the tree as the plain file `path`, relative to its root.
    pub fn add_text(&self, path: impl AsRef<Path>, text: &str) -> Result<(), InitramfsError> {
        write(&self.root.join(path), text, false)
    }

    /// Packs the nested guest's initramfs again with `extra` files, each `(from, path in the
    /// guest)`, as `path` in the tree (`guest/initrd-NAME.cpio`), so that only the runs that
    /// boot it carry them; the default `guest/initrd.cpio` stays as it is.
    pub fn add_guest_initramfs(
        &self,
        path: impl AsRef<Path>,
        extra: &[(&Path, &str)],
    ) -> Result<(), InitramfsError> {
        let guest_root = self
            .root
            .parent()
            .unwrap_or(Path::new("."))
            .join(GUEST_ROOT);
        for (from, to) in extra {
            copy(from, &guest_root.join(to))?;
        }
        cpio(&guest_root, &self.root.join(path))?;
        for (_, to) in extra {
            let staged = guest_root.join(to);
            std::fs::remove_file(&staged).map_err(io_err(&staged))?;
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), InitramfsError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::copy(from, to).map_err(io_err(from))?;
    Ok(())
}

fn write(path: &Path, text: &str, executable: bool) -> Result<(), InitramfsError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::write(path, text).map_err(io_err(path))?;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Lays out `work_dir/root`: busybox, the binaries, the scenario scripts and `/init`, with the
/// modules of the emulated host's kernel `host` (none natively, where the machine's own kernel
/// runs the scenarios).
pub fn stage(
    work_dir: &Path,
    artefacts: &Artefacts,
    host: Option<&HostKernel>,
    scenarios: &[Scenario],
    time_scale: f64,
) -> Result<Staged, InitramfsError> {
    let root = work_dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io_err(&root))?;
    }
    for dir in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "tests",
        "testbed/scenarios",
    ] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    copy(&artefacts.busybox, &root.join("bin/busybox"))?;
    copy(&artefacts.e2fsck, &root.join("bin/e2fsck.static"))?;
    let host_modules = root.join("lib/modules");
    let mut load_order = String::new();
    for module in host.iter().flat_map(|host| &host.modules) {
        let _ = writeln!(load_order, "{}", stage_module(module, &host_modules)?);
    }
    write(&host_modules.join("load-order"), &load_order, false)?;
    if let Some(disk_pattern) = &artefacts.disk_pattern {
        copy(disk_pattern, &root.join("bin/disk-pattern"))?;
    }
    if let Some(vmm) = &artefacts.vmm {
        copy(vmm, &root.join("bin/vmm"))?;
    }
    if let Some(example) = &artefacts.example {
        copy(example, &root.join("bin/suspend_wake"))?;
    }

    // Every scenario may boot a nested guest: the vmm's own tests use its kernel too.
    stage_guest(work_dir, artefacts, &root)?;
    write(&root.join("testbed/lib.sh"), LIB_SH, false)?;

    let mut staged_scenarios = Vec::new();
    for scenario in scenarios {
        let limit = (scenario.timeout.as_secs_f64() * time_scale).ceil() as u64;
        let script = match scenario.steps {
            Steps::CargoTests(selection)
            | Steps::IgnoredCargoTests(selection)
            | Steps::CargoTestsWithoutKvm(selection) => {
                let tests: Vec<_> = if selection.is_empty() {
                    artefacts.tests.iter().collect()
                } else {
                    selection
                        .iter()
                        .map(|&(package, target)| {
                            artefacts
                                .test(package, target)
                                .ok_or(InitramfsError::MissingTest {
                                    scenario: scenario.name,
                                    package,
                                    target,
                                })
                        })
                        .collect::<Result<_, _>>()?
                };
                let mut names = Vec::new();
                for test in tests {
                    let name = test.staged_name();
                    let target = root.join("tests").join(&name);
                    if !target.exists() {
                        copy(&test.path, &target)?;
                    }
                    names.push(name);
                }
                match scenario.steps {
                    Steps::CargoTestsWithoutKvm(_) => {
                        cargo_tests_without_kvm_script(&names, limit / 2)
                    }
                    Steps::IgnoredCargoTests(_) => cargo_tests_script(&names, limit / 2, true),
                    _ => cargo_tests_script(&names, limit / 2, false),
                }
            }
            Steps::Script(script) => script.to_owned(),
        };
        let path = root.join(format!("testbed/scenarios/{}.sh", scenario.name));
        write(&path, &script, true)?;
        staged_scenarios.push((scenario.name.to_owned(), limit));
    }

    write(
        &root.join("testbed/run.sh"),
        &run_script(&staged_scenarios),
        true,
    )?;
    write(&root.join("init"), &format!("{INIT_PRELUDE}{INIT}"), true)?;
    Ok(Staged {
        root,
        scenarios: staged_scenarios,
    })
}

const SHELL_SH: &str = include_str!("../scenarios/shell.sh");

/// Stages what `testbed shell` boots: the tree of [`stage`] with no scenario, plus
/// `testbed/shell.sh`, which runs vmm in the foreground with the guest's shell, and an init that
/// runs it with the console as its controlling terminal, then powers the host off.
pub fn stage_shell(
    work_dir: &Path,
    artefacts: &Artefacts,
    host: Option<&HostKernel>,
) -> Result<Staged, InitramfsError> {
    if artefacts.vmm.is_none() {
        return Err(InitramfsError::MissingVmm);
    }
    let staged = stage(work_dir, artefacts, host, &[], 1.0)?;
    write(&staged.root.join("testbed/shell.sh"), SHELL_SH, true)?;
    write(
        &staged.root.join("init"),
        &format!("{INIT_PRELUDE}{SHELL_INIT}"),
        true,
    )?;
    Ok(staged)
}

const LIB_SH: &str = include_str!("../scenarios/lib.sh");
const GUEST_INIT: &str = include_str!("../../../resources/guest/init.sh");

/// Where the nested guest's initramfs tree is staged, under the work directory.
const GUEST_ROOT: &str = "guest-root";

/// The size of the nested guest's root disk image (sparse on this side).
const ROOTFS_SIZE: &str = "64M";

/// Stages the nested guest: its kernel (the pinned 6.1, whichever kernel the emulated host
/// boots) as `guest/Image`; a busybox initramfs as
/// `guest/initrd.cpio`, whose init is `resources/guest/init.sh` and which holds the modules
/// with their load order in `lib/modules/load-order`; and an ext4 root disk image as
/// `guest/rootfs.ext4` for `root=/dev/vdX`, which the initramfs's init switches to.
///
/// With the newest pinned kernel fetched, also `guest/Image-7` and `guest/initrd-7.cpio`: the
/// same initramfs with that kernel's modules, for the tests only a 6.13+ guest can pass.
fn stage_guest(work_dir: &Path, artefacts: &Artefacts, root: &Path) -> Result<(), InitramfsError> {
    copy(&artefacts.kernel, &root.join("guest/Image"))?;
    stage_guest_initramfs(
        artefacts,
        &artefacts.guest_modules,
        &work_dir.join(GUEST_ROOT),
        &root.join("guest/initrd.cpio"),
    )?;
    if let Some(newest) = &artefacts.newest_guest {
        copy(&newest.image, &root.join("guest/Image-7"))?;
        stage_guest_initramfs(
            artefacts,
            &newest.modules,
            &work_dir.join(format!("{GUEST_ROOT}-7")),
            &root.join("guest/initrd-7.cpio"),
        )?;
    }

    // The root disk: the same tools and init, with /on-rootfs telling the init where it runs.
    let rootfs = fresh_dir(&work_dir.join("guest-rootfs"))?;
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    stage_guest_tools(artefacts, &rootfs)?;
    write(&rootfs.join("sbin/init"), GUEST_INIT, true)?;
    write(&rootfs.join("on-rootfs"), "", false)?;
    if let Some(disk_pattern) = &artefacts.disk_pattern {
        copy(disk_pattern, &rootfs.join("bin/disk-pattern"))?;
    }
    if let Some(guest_agent) = &artefacts.guest_agent {
        copy(guest_agent, &rootfs.join("bin/guest-agent"))?;
    }
    mke2fs(&rootfs, &root.join("guest/rootfs.ext4"))
}

/// Builds a guest initramfs in `tree` with `modules` and their load order, packed as `cpio`.
fn stage_guest_initramfs(
    artefacts: &Artefacts,
    modules: &[PathBuf],
    tree: &Path,
    packed: &Path,
) -> Result<(), InitramfsError> {
    let guest_root = fresh_dir(tree)?;
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "newroot"] {
        let path = guest_root.join(dir);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    stage_guest_tools(artefacts, &guest_root)?;
    let modules_dir = guest_root.join("lib/modules");
    let mut load_order = String::new();
    for module in modules {
        let _ = writeln!(load_order, "{}", stage_module(module, &modules_dir)?);
    }
    write(&modules_dir.join("load-order"), &load_order, false)?;
    cpio(&guest_root, packed)
}

/// Removes `dir` if it exists and creates it empty.
fn fresh_dir(dir: &Path) -> Result<PathBuf, InitramfsError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    Ok(dir.to_owned())
}

/// What both the guest's initramfs and its root disk hold: busybox, rtcwake with the glibc it
/// loads, and the init script.
fn stage_guest_tools(artefacts: &Artefacts, guest_root: &Path) -> Result<(), InitramfsError> {
    copy(&artefacts.busybox, &guest_root.join("bin/busybox"))?;
    let [rtcwake, libc, loader] = &artefacts.rtcwake;
    copy(rtcwake, &guest_root.join("bin/rtcwake"))?;
    copy(libc, &guest_root.join("lib/libc.so.6"))?;
    copy(loader, &guest_root.join("lib/ld-linux-aarch64.so.1"))?;
    write(&guest_root.join("init"), GUEST_INIT, true)
}

/// Copies a kernel module into `dir` as a plain `NAME.ko`, decompressing a `.ko.xz`, `.ko.zst`
/// or `.ko.gz` on the way, so that the guest's insmod needs no decompressor; returns the file
/// name.
fn stage_module(module: &Path, dir: &Path) -> Result<String, InitramfsError> {
    let file_name = module
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(at) = file_name.find(".ko") else {
        return Err(InitramfsError::Io {
            path: module.to_owned(),
            source: std::io::Error::other("not a kernel module file"),
        });
    };
    let name = format!("{}.ko", &file_name[..at]);
    let target = dir.join(&name);
    let decompressor = match &file_name[at..] {
        ".ko" => None,
        ".ko.xz" => Some(("xz", "xz-utils")),
        ".ko.zst" => Some(("zstd", "zstd")),
        ".ko.gz" => Some(("gzip", "gzip")),
        _ => {
            return Err(InitramfsError::Io {
                path: module.to_owned(),
                source: std::io::Error::other("unknown module compression"),
            });
        }
    };
    let Some((tool, package)) = decompressor else {
        copy(module, &target)?;
        return Ok(name);
    };
    let program = find_tool(tool).ok_or(InitramfsError::MissingTool { tool, package })?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let output = std::fs::File::create(&target).map_err(io_err(&target))?;
    let status = Command::new(program)
        .arg("-dc")
        .arg(module)
        .stdout(output)
        .stderr(Stdio::inherit())
        .status()
        .map_err(io_err(module))?;
    if !status.success() {
        return Err(InitramfsError::Tool { tool, path: target });
    }
    Ok(name)
}

/// A program in PATH, or in the sbin directories a non-root PATH often lacks.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Builds an ext4 image of [`ROOTFS_SIZE`] at `image` holding the tree `dir`, labelled
/// `vmmroot`.
fn mke2fs(dir: &Path, image: &Path) -> Result<(), InitramfsError> {
    let program = find_tool("mke2fs").ok_or(InitramfsError::MissingTool {
        tool: "mke2fs",
        package: "e2fsprogs",
    })?;
    if let Some(parent) = image.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    if image.exists() {
        std::fs::remove_file(image).map_err(io_err(image))?;
    }
    let status = Command::new(program)
        .args(["-q", "-t", "ext4", "-b", "4096", "-L", "vmmroot", "-d"])
        .arg(dir)
        .arg(image)
        .arg(ROOTFS_SIZE)
        .stdin(Stdio::null())
        // It says "Creating regular file" even with -q.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(io_err(image))?;
    if !status.success() {
        return Err(InitramfsError::Tool {
            tool: "mke2fs",
            path: image.to_owned(),
        });
    }
    Ok(())
}

/// Runs test executables one after the other; the libtest lines are the result lines. The
/// vmm's own tests find the binary, a real kernel and the host-side disk tools through the
/// environment, which also says
/// that KVM must be there: a KVM test fails here instead of skipping (`test_utils::kvm`). Each executable
/// has `exec_limit` seconds, so that one that hangs is named and the rest still run (busybox's
/// `timeout` exits 143 where GNU's exits 124). With `ignored`, only `#[ignore]`d tests run.
/// What the tests find through the environment: the `vmm` binary, the guest's kernel, initramfs
/// and tools.
const TEST_ENVIRONMENT: &str = "export VMM_BIN=\"$ROOT/bin/vmm\" VMM_TEST_KERNEL=\"$ROOT/guest/Image\" VMM_TEST_INITRD=\"$ROOT/guest/initrd.cpio\" VMM_TEST_ROOTFS=\"$ROOT/guest/rootfs.ext4\" VMM_TEST_KERNEL_7=\"$ROOT/guest/Image-7\" VMM_TEST_INITRD_7=\"$ROOT/guest/initrd-7.cpio\" VMM_TEST_DISK_PATTERN=\"$ROOT/bin/disk-pattern\" VMM_TEST_E2FSCK=\"$ROOT/bin/e2fsck.static\"\n";

fn cargo_tests_script(names: &[String], exec_limit: u64, ignored: bool) -> String {
    let only_ignored = if ignored { " --ignored" } else { "" };
    let mut script =
        format!("#!/bin/sh\nrc=0\ncd /tmp\n{TEST_ENVIRONMENT}export VMM_TEST_REQUIRE_KVM=1\n");
    for name in names {
        let _ = writeln!(
            script,
            "echo \"@@testbed exec {name}\"\n\
             timeout {exec_limit} \"$ROOT/tests/{name}\" --test-threads=1 --show-output{only_ignored}\n\
             status=$?\n\
             [ $status = 0 ] || rc=1\n\
             case $status in 124|143) echo \"\n@@result {name} fail killed after {exec_limit} s\" ;; esac"
        );
    }
    script.push_str("exit $rc\n");
    script
}

/// Runs test executables as on an arm64 machine without KVM: `/dev/kvm` is moved aside for the
/// run (and put back however the script ends). Every executable must pass; the KVM tests' skip
/// lines are counted, and there must be some. Then one executable with skips runs again with
/// `VMM_TEST_REQUIRE_KVM` set, and must fail: that is what keeps the other scenarios from
/// skipping silently.
fn cargo_tests_without_kvm_script(names: &[String], exec_limit: u64) -> String {
    let mut script = format!(
        "#!/bin/sh\nrc=0 skipped=0 with_skips=\ncd /tmp\n{TEST_ENVIRONMENT}\
         mv /dev/kvm /dev/kvm.hidden || {{ echo \"@@result no-kvm-setup fail cannot hide /dev/kvm\"; exit 1; }}\n\
         trap 'mv /dev/kvm.hidden /dev/kvm' EXIT\n\
         trap 'exit 143' TERM\n"
    );
    for name in names {
        let _ = writeln!(
            script,
            "echo \"@@testbed exec {name}\"\n\
             timeout {exec_limit} \"$ROOT/tests/{name}\" --test-threads=1 --show-output >/tmp/no-kvm.out 2>&1\n\
             status=$?\n\
             cat /tmp/no-kvm.out\n\
             [ $status = 0 ] || rc=1\n\
             n=$(grep -c '^skipped ' /tmp/no-kvm.out)\n\
             skipped=$((skipped + n))\n\
             [ \"$n\" -gt 0 ] && [ -z \"$with_skips\" ] && with_skips={name}"
        );
    }
    script.push_str(
        "if [ \"$skipped\" -gt 0 ]; then\n\
         \x20   echo \"@@result no-kvm-skips pass skipped=$skipped\"\n\
         \x20   VMM_TEST_REQUIRE_KVM=1 timeout 300 \"$ROOT/tests/$with_skips\" --test-threads=1 >/tmp/no-kvm.out 2>&1\n\
         \x20   if [ $? = 0 ]; then echo \"@@result no-kvm-required fail $with_skips passed with VMM_TEST_REQUIRE_KVM set\"; rc=1\n\
         \x20   else echo \"@@result no-kvm-required pass $with_skips failed with VMM_TEST_REQUIRE_KVM set\"; fi\n\
         else\n\
         \x20   echo \"@@result no-kvm-skips fail no test said it skipped\"; rc=1\n\
         fi\n\
         exit $rc\n",
    );
    script
}

/// Has the kernel record a stack for every SIGSEGV, SIGBUS and SIGSYS it generates, and log the
/// registers of every fatal one and the PC and ESR of every user fault, so that a scenario that
/// fails with a process killed by one shows how the signal came about (#12: a rare vCPU-thread
/// crash that leaves no user-space report). Some scenarios raise these signals on purpose, so
/// the stacks and the kernel log are printed only for a failed scenario.
const FATAL_SIGNAL_TRACE: &str = r#"T=/sys/kernel/tracing
[ -d "$T/events" ] || mount -t tracefs tracefs "$T" 2>/dev/null
E="$T/events/signal/signal_generate"
if [ -w "$E/enable" ]; then
    echo 4096 > "$T/buffer_size_kb"
    fatal='sig == 11 || sig == 7 || sig == 31'
    echo "$fatal" > "$E/filter"
    # A trigger has its own condition: the event's filter does not apply to it.
    echo "stacktrace if $fatal" > "$E/trigger"
    echo 1 > "$T/options/userstacktrace" 2>/dev/null
    echo 1 > "$E/enable"
else
    echo "testbed: no signal tracing on this host kernel"
fi
echo 1 > /proc/sys/kernel/print-fatal-signals
echo 1 > /proc/sys/debug/exception-trace 2>/dev/null
"#;

fn run_script(scenarios: &[(String, u64)]) -> String {
    let mut script = String::from(
        "#!/bin/sh\n# Runs each scenario under its time limit between begin and end markers; a vmm it\n\
         # left running must not load the next one.\n",
    );
    script.push_str(FATAL_SIGNAL_TRACE);
    for (name, limit) in scenarios {
        let _ = writeln!(
            script,
            "echo > \"$T/trace\" 2>/dev/null\n\
             dmesg -c >/dev/null\n\
             echo \"@@testbed begin {name} limit={limit}\"\n\
             ROOT=\"$ROOT\" timeout {limit} sh \"$ROOT/testbed/scenarios/{name}.sh\"\n\
             rc=$?\n\
             echo \"@@testbed end {name} rc=$rc\"\n\
             if [ $rc != 0 ] && grep -q signal_generate \"$T/trace\" 2>/dev/null; then\n\
             \x20   echo \"testbed: the fatal signals generated during {name}, with kernel and user stacks:\"\n\
             \x20   grep -v '^#' \"$T/trace\" | tail -n 300\n\
             \x20   echo \"testbed: the host kernel's log during {name}:\"\n\
             \x20   dmesg | tail -n 100\n\
             fi\n\
             killall -KILL vmm 2>/dev/null && echo \"testbed: killed a vmm that {name} left running\""
        );
    }
    script.push_str("echo \"@@testbed done\"\n");
    script
}

/// The start of the emulated host's init: busybox's applets and the basic mounts.
const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin ROOT=/
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# The host's own modules, from the kernel it booted (--host-kernel): tun, for the tests' taps.
while read -r module; do
    insmod "/lib/modules/$module" || echo "@@testbed insmod-failed module=$module"
done </lib/modules/load-order
"#;

/// The rest of the emulated host's init for scenarios: report readiness, run, power off.
const INIT: &str = r#"echo "@@testbed ready uptime=$(cut -d' ' -f1 /proc/uptime) kvm=$(test -c /dev/kvm && echo yes || echo no) cpus=$(nproc) kernel=$(uname -r)"
sh /testbed/run.sh
poweroff -f
"#;

/// The rest of the emulated host's init for `testbed shell`. cttyhack reopens the console's
/// real device (ttyAMA0; /dev/console cannot be a controlling terminal) in the new session, so
/// vmm's stdin is a tty it puts in raw mode, and the keys reach the guest.
const SHELL_INIT: &str = r#"echo "host: the emulated arm64 host (Linux $(uname -r)) is up after $(cut -d' ' -f1 /proc/uptime) s (kvm: $(test -c /dev/kvm && echo yes || echo no))"
setsid cttyhack sh /testbed/shell.sh
poweroff -f
"#;

/// Packs the staged tree into `work_dir/arm64-host.cpio`.
pub fn pack(staged: &Staged) -> Result<PathBuf, InitramfsError> {
    let work_dir = staged.root.parent().unwrap_or(Path::new("."));
    let image = work_dir.join("arm64-host.cpio");
    cpio(&staged.root, &image)?;
    Ok(image)
}

/// Packs the tree at `root` into a newc cpio archive at `image`.
fn cpio(root: &Path, image: &Path) -> Result<(), InitramfsError> {
    if let Some(parent) = image.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let image = std::path::absolute(image).map_err(io_err(image))?;
    let output = std::fs::File::create(&image).map_err(io_err(&image))?;
    let status = Command::new("sh")
        .args(["-c", "find . -print0 | cpio --null -o -H newc --quiet"])
        .current_dir(root)
        .stdout(output)
        .stderr(Stdio::inherit())
        .status()
        .map_err(io_err(&image))?;
    if !status.success() {
        return Err(InitramfsError::Cpio(image));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_modules_as_plain_ko_files() {
        let dir = std::env::temp_dir().join(format!("testbed-ko-{}", std::process::id()));
        let src = fresh_dir(&dir.join("src")).unwrap();
        let out = dir.join("out");
        std::fs::write(src.join("virtio-rng.ko"), b"plain module").unwrap();
        assert_eq!(
            stage_module(&src.join("virtio-rng.ko"), &out).unwrap(),
            "virtio-rng.ko"
        );
        assert_eq!(
            std::fs::read(out.join("virtio-rng.ko")).unwrap(),
            b"plain module"
        );

        // A compressed module is unpacked when its tool is there.
        std::fs::write(src.join("ext4.ko"), b"compressed module").unwrap();
        if find_tool("gzip").is_some() {
            let status = Command::new("gzip")
                .arg(src.join("ext4.ko"))
                .status()
                .unwrap();
            assert!(status.success());
            assert_eq!(
                stage_module(&src.join("ext4.ko.gz"), &out).unwrap(),
                "ext4.ko"
            );
            assert_eq!(
                std::fs::read(out.join("ext4.ko")).unwrap(),
                b"compressed module"
            );
        }
        assert!(stage_module(&src.join("ext4.ko.lz4"), &out).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
