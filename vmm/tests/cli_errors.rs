//! Bad input gets one clear line on stderr and a non-zero exit, never a panic or a hang.
//!
//! These run the real `vmm` binary: on the build host, and inside the arm64 testbed host, where
//! the testbed points `VMM_BIN` at the staged binary. Each case fails before any guest code
//! runs, so the fake kernels here never execute.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use arch_aarch64::image::ImageHeader;
use vmm_sys_util::tempdir::TempDir;

use common::{exit_within, vmm_binary};

/// Far longer than any rejection takes, even in the emulated arm64 host.
const HANG: Duration = Duration::from_secs(60);

/// A temporary directory, removed when dropped.
struct Scratch(TempDir);

impl Scratch {
    fn new() -> Self {
        let prefix = std::env::temp_dir().join("vmm-cli-");
        Self(TempDir::new_with_prefix(prefix).unwrap())
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.as_path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A file with a valid arm64 Image header claiming `image_size` bytes, and no code.
    fn fake_image(&self, image_size: u64) -> PathBuf {
        let header = ImageHeader {
            text_offset: 0,
            image_size,
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.resize(4096, 0);
        self.file("Image", &bytes)
    }
}

/// Runs vmm with `args` (and `VMM_KVM_PATH` if given) and checks the one-line failure.
fn fails_with(args: &[&str], kvm_path: Option<&Path>, expected: &str) {
    let mut command = Command::new(vmm_binary());
    if let Some(path) = kvm_path {
        command.env("VMM_KVM_PATH", path);
    }
    command_fails_with(command, args, expected);
}

/// Runs `command` with `args` and checks the one-line failure.
fn command_fails_with(mut command: Command, args: &[&str], expected: &str) {
    command.args(args);
    let output = output_unless_hung(command, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "vmm {args:?} succeeded");
    assert_eq!(output.status.code(), Some(1), "vmm {args:?}: {stderr}");
    let lines: Vec<_> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "vmm {args:?} printed {lines:?}");
    assert!(lines[0].starts_with("vmm: "), "{}", lines[0]);
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in {:?}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `command` to completion. Bad input fails before any guest runs, so only a hang takes
/// [`HANG`]; it is killed and named rather than left for the scenario's time limit.
fn output_unless_hung(mut command: Command, args: &[&str]) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vmm");
    if exit_within(&mut child, HANG).is_none() {
        panic!("vmm {args:?} hung");
    }
    child.wait_with_output().expect("collect the output of vmm")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_kernel() {
    fails_with(
        &["--kernel", "/nonexistent/Image"],
        None,
        "Cannot read kernel /nonexistent/Image",
    );
    fails_with(&[], None, "No kernel given");
}

#[test]
fn kernel_that_is_not_an_arm64_image() {
    let scratch = Scratch::new();
    let text = scratch.file("notes.txt", &[b'x'; 4096]);
    fails_with(&["--kernel", path(&text)], None, "not an arm64 Image");
    let gz = scratch.file("Image.gz", &[0x1F, 0x8B, 8, 0, 0, 0, 0, 0]);
    fails_with(&["--kernel", path(&gz)], None, "gzip-compressed");
    fails_with(
        &["--kernel", path(scratch.0.as_path())],
        None,
        "Cannot read kernel",
    );
}

#[test]
fn initramfs_that_does_not_fit() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let initrd = scratch.file("initrd.cpio", &vec![0u8; 60 << 20]);
    fails_with(
        &[
            "--kernel",
            path(&kernel),
            "--initramfs",
            path(&initrd),
            "--memory",
            "64",
        ],
        None,
        "Guest memory of 64 MiB cannot hold the boot images",
    );
    let missing = scratch.0.as_path().join("missing.cpio");
    fails_with(
        &["--kernel", path(&kernel), "--initramfs", path(&missing)],
        None,
        "Cannot read initramfs",
    );
}

#[test]
fn memory_too_small_for_kernel_and_device_tree() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(30 << 20);
    fails_with(
        &["--kernel", path(&kernel), "--memory", "32"],
        None,
        "Guest memory of 32 MiB cannot hold the boot images",
    );
    fails_with(
        &["--kernel", path(&kernel), "--memory", "4"],
        None,
        "Invalid memory size 4 MiB",
    );
    fails_with(
        &["--kernel", path(&kernel), "--memory", "63"],
        None,
        "Invalid memory size 63 MiB",
    );
}

#[test]
fn vcpu_counts_outside_what_the_vgic_allows() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    fails_with(
        &["--kernel", path(&kernel), "--cpus", "0"],
        None,
        "Invalid vCPU count 0",
    );
    fails_with(
        &["--kernel", path(&kernel), "--cpus", "124"],
        None,
        "must be 1 to 123",
    );
}

#[test]
fn command_line_too_long() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let long = "x".repeat(3000);
    fails_with(
        &["--kernel", path(&kernel), "--cmdline", &long],
        None,
        "Kernel command line is 3000 bytes; the limit is 2047",
    );
}

#[test]
fn no_kvm_device() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    fails_with(
        &["--kernel", path(&kernel)],
        Some(Path::new("/nonexistent/kvm")),
        "/nonexistent/kvm does not exist: this host has no KVM",
    );
}

#[test]
fn a_device_that_is_not_kvm() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    fails_with(
        &["--kernel", path(&kernel)],
        Some(Path::new("/dev/null")),
        "/dev/null is not a KVM device",
    );
}

/// On an x86-64 (or any non-arm64) host, KVM exists but cannot run arm64 guests.
#[cfg(not(target_arch = "aarch64"))]
#[test]
fn kvm_without_arm64_support() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let expected = if Path::new("/dev/kvm").exists() {
        "this VMM needs an arm64 (aarch64) host"
    } else {
        "/dev/kvm does not exist"
    };
    fails_with(&["--kernel", path(&kernel)], None, expected);
}

#[test]
fn bad_config_files() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let broken = scratch.file("broken.json", b"{\"kernel\": ");
    fails_with(&["--config", path(&broken)], None, "Invalid config file");
    let unknown = scratch.file(
        "unknown.json",
        format!("{{\"kernel\": \"{}\", \"vcpus\": 2}}", path(&kernel)).as_bytes(),
    );
    fails_with(&["--config", path(&unknown)], None, "unknown field `vcpus`");
    let zero = scratch.file(
        "zero.json",
        format!("{{\"kernel\": \"{}\", \"cpus\": 0}}", path(&kernel)).as_bytes(),
    );
    fails_with(&["--config", path(&zero)], None, "Invalid vCPU count 0");
    // A flag overrides the file.
    fails_with(
        &["--config", path(&zero), "--cpus", "200"],
        None,
        "Invalid vCPU count 200",
    );
    fails_with(
        &["--config", "/nonexistent.json"],
        None,
        "Cannot read config file",
    );
}

#[test]
fn malformed_flags_are_usage_errors() {
    let output = Command::new(vmm_binary())
        .args(["--cpus", "many"])
        .output()
        .expect("run vmm");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'many'"));
    let output = Command::new(vmm_binary())
        .args(["--kernel", "Image", "--seccomp=kill"])
        .output()
        .expect("run vmm");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'kill' for '--seccomp <MODE>'")
            && stderr.contains("[possible values: on, off, log, trap]"),
        "{stderr}"
    );
    // A guest has at most one vsock device (Linux drives one).
    let output = Command::new(vmm_binary())
        .args(["--kernel", "Image", "--vsock", "cid=3,socket=/tmp/a"])
        .args(["--vsock", "cid=4,socket=/tmp/b"])
        .output()
        .expect("run vmm");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be used multiple times"));
}

#[test]
fn bad_disks_are_refused_before_kvm_is_touched() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let good = scratch.file("good.img", &[0u8; 4096]);
    let odd = scratch.file("odd.img", &[0u8; 1000]);
    let run = |disks: &[String], expected: &str| {
        let mut args = vec!["--kernel".to_owned(), path(&kernel).to_owned()];
        for disk in disks {
            args.push("--disk".into());
            args.push(disk.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // No KVM: a disk check that came after the KVM check would report KVM instead.
        fails_with(&args, Some(Path::new("/nonexistent/kvm")), expected);
    };
    run(
        &["path=/nonexistent/disk.img".into()],
        "Cannot open disk image /nonexistent/disk.img: No such file or directory",
    );
    run(
        &[format!("path={}", path(scratch.0.as_path()))],
        "is not a regular file or a block device",
    );
    run(
        &[format!("path={}", path(&odd))],
        "is 1000 bytes, not a multiple of 512",
    );
    // A FIFO must neither hang the open nor be taken for an image.
    let fifo = scratch.0.as_path().join("fifo");
    mkfifo(&fifo);
    run(
        &[format!("path={}", path(&fifo))],
        "is not a regular file or a block device",
    );
    run(
        &["readonly=on".into()],
        "Invalid --disk \"readonly=on\": no path=FILE",
    );
    run(
        &[format!("path={},cache=none", path(&good))],
        "unknown or empty key \"cache\"",
    );
    run(
        &[
            format!("path={},id=same", path(&good)),
            format!("path={},id=same,readonly=on", path(&odd)),
        ],
        "Duplicate disk id \"same\"",
    );
    let many: Vec<String> = (0..32)
        .map(|_| format!("path={},readonly=on", path(&good)))
        .collect();
    run(&many, "Too many virtio devices: 33 given");
    // The same writable image twice: the second open finds the first one's lock.
    run(
        &[
            format!("path={}", path(&good)),
            format!("path={}", path(&good)),
        ],
        "is in use by another process (locked)",
    );
}

#[test]
fn a_disk_locked_by_another_process_is_refused() {
    use std::os::fd::AsRawFd;
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let image = scratch.file("locked.img", &[0u8; 4096]);
    let holder = std::fs::File::open(&image).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH) }, 0);
    let disk = format!("path={}", path(&image));
    fails_with(
        &["--kernel", path(&kernel), "--disk", &disk],
        Some(Path::new("/nonexistent/kvm")),
        "is in use by another process (locked)",
    );
    // A shared (read-only) user does not stop another read-only one: the check moves on to
    // the missing KVM device.
    let readonly = format!("{disk},readonly=on");
    fails_with(
        &["--kernel", path(&kernel), "--disk", &readonly],
        Some(Path::new("/nonexistent/kvm")),
        "/nonexistent/kvm",
    );
}

#[test]
fn a_writable_disk_on_a_file_the_host_keeps_read_only() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let image = scratch.file("ro.img", &[0u8; 4096]);
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut command = Command::new(vmm_binary());
    command.env("VMM_KVM_PATH", "/nonexistent/kvm");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // root may write any file: run as nobody, who may only read it.
        std::fs::set_permissions(scratch.0.as_path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
        command.uid(65534).gid(65534);
    }
    let disk = format!("path={}", path(&image));
    command_fails_with(
        command,
        &["--kernel", path(&kernel), "--disk", &disk],
        "for writing (add readonly=on to use it read-only)",
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

#[test]
fn fifos_devices_and_huge_files_are_refused_without_hanging() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let fifo = scratch.0.as_path().join("fifo");
    mkfifo(&fifo);
    fails_with(&["--kernel", path(&fifo)], None, "not a regular file");
    fails_with(
        &["--kernel", path(&kernel), "--initramfs", path(&fifo)],
        None,
        "Cannot read initramfs",
    );
    fails_with(&["--config", path(&fifo)], None, "not a regular file");
    fails_with(&["--config", "/dev/zero"], None, "not a regular file");
    let huge = scratch.file("huge.json", &vec![b' '; (1 << 20) + 1]);
    fails_with(&["--config", path(&huge)], None, "is larger than 1 MiB");
}

#[test]
fn a_nul_in_the_command_line_is_refused() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let config = scratch.file(
        "nul.json",
        format!(
            "{{\"kernel\": \"{}\", \"cmdline\": \"console=ttyS0\\u0000 init=/x\"}}",
            path(&kernel)
        )
        .as_bytes(),
    );
    fails_with(
        &["--config", path(&config)],
        None,
        "Kernel command line contains a NUL byte",
    );
}

#[test]
fn a_crafted_image_header_is_an_error_not_an_overflow() {
    let scratch = Scratch::new();
    let header = ImageHeader {
        text_offset: u64::MAX - 0xFFF,
        image_size: 0x1000,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.resize(4096, 0);
    let evil = scratch.file("evil.img", &bytes);
    fails_with(
        &["--kernel", path(&evil)],
        None,
        "Kernel header has text_offset 0xfffffffffffff000; it must be below 2 MiB",
    );
    let huge = scratch.fake_image(u64::MAX);
    fails_with(&["--kernel", path(&huge)], None, "does not fit in RAM");
}

#[test]
fn ctl_whose_reader_went_away_ends_without_a_panic() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::ExitStatusExt;
    let scratch = Scratch::new();
    let socket = scratch.0.as_path().join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // A stand-in API server: one vm.info answer.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let body = r#"{"state":"running","vcpus":[],"memory_mib":512,"devices":[]}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    let mut child = Command::new(vmm_binary())
        .args(["ctl", "--api-socket", path(&socket), "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `vmm ctl info | true`: the reader is gone before ctl writes a byte.
    drop(child.stdout.take());
    let status = exit_within(&mut child, HANG).expect("vmm ctl hung");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    server.join().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {stderr}");
}

#[test]
fn bad_network_and_vsock_settings_are_refused_before_kvm_is_touched() {
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let run = |flags: &[&str], expected: &str| {
        let mut args = vec!["--kernel", path(&kernel)];
        args.extend_from_slice(flags);
        fails_with(&args, Some(Path::new("/nonexistent/kvm")), expected);
    };
    run(
        &["--net", "tap=a-very-long-tap0"],
        "Invalid tap name \"a-very-long-tap0\": must be 1 to 15 bytes",
    );
    run(
        &["--net", "tap=t0,mac=01:00:5e:00:00:01"],
        "Invalid MAC address \"01:00:5e:00:00:01\"",
    );
    run(
        &["--net", "tap=t0,ip=169.254.0.1"],
        "Tap t0: ip and mask go together",
    );
    run(
        &["--net", "tap=t0", "--net", "tap=t0"],
        "Duplicate tap \"t0\"",
    );
    for cid in ["0", "1", "2"] {
        run(
            &["--vsock", &format!("cid={cid},socket=/tmp/x.vsock")],
            &format!("Invalid vsock CID {cid}"),
        );
    }
    run(
        &["--vsock", "cid=3"],
        "Invalid --vsock \"cid=3\": no socket=PATH",
    );

    // A socket another process listens on, and a path that is not a socket.
    let busy = scratch.0.as_path().join("busy.vsock");
    let _listener = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    let vsock = format!("cid=3,socket={}", path(&busy));
    run(&["--vsock", &vsock], "is in use by another process");
    let file = scratch.file("plain.vsock", b"");
    let vsock = format!("cid=3,socket={}", path(&file));
    run(&["--vsock", &vsock], "exists and is not a socket");
    assert!(file.exists(), "vmm removed a file that was not its socket");
}

#[test]
fn a_tap_vmm_may_not_create_is_refused() {
    use std::os::unix::process::CommandExt;
    let scratch = Scratch::new();
    let kernel = scratch.fake_image(8 << 20);
    let mut command = Command::new(vmm_binary());
    command.env("VMM_KVM_PATH", "/nonexistent/kvm");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // root without CAP_NET_ADMIN (dropped from the bounding set before exec, so the new
        // program's permitted set lacks it), as in a container.
        // SAFETY: prctl in the child between fork and exec, on its own capabilities only.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, 12 /* CAP_NET_ADMIN */, 0, 0, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let expected = if root {
        "Cannot attach to tap vmmnocap0 (creating a tap needs CAP_NET_ADMIN"
    } else {
        // Without root, /dev/net/tun itself may be closed to this user.
        "Cannot "
    };
    command_fails_with(
        command,
        &["--kernel", path(&kernel), "--net", "tap=vmmnocap0"],
        expected,
    );
    assert!(
        !Path::new("/sys/class/net/vmmnocap0").exists(),
        "a tap was left behind"
    );
}

#[test]
fn a_restore_from_what_is_not_a_snapshot_is_refused_before_kvm_is_touched() {
    let scratch = Scratch::new();
    let dir = scratch.0.as_path();
    fails_with(
        &["--restore", "/nonexistent/snapshot"],
        None,
        "Cannot access the state file /nonexistent/snapshot/state",
    );
    std::fs::write(dir.join("state"), b"{\"config\":{}}\n").unwrap();
    fails_with(&["--restore", path(dir)], None, "not a vmm snapshot");
    // The machine is the snapshot's: flags that describe another are usage errors.
    let output = Command::new(vmm_binary())
        .args(["--restore", path(dir), "--memory", "512"])
        .output()
        .expect("run vmm");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
