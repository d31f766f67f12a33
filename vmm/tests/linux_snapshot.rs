//! Scale to zero on real KVM: a Linux guest with a root disk suspends itself, the host saves
//! it to a snapshot directory and `vmm` exits; a new `vmm --restore` brings it back asleep,
//! costing no CPU, and a wakeup (the wake button, an RTC alarm that fell due while the guest
//! was on disk, a byte on the console) resumes it: its counting process goes on, the file it
//! wrote is intact, its clock is right, and it saw an ordinary suspend.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`,
//! `VMM_TEST_ROOTFS`); the testbed sets them and `VMM_BIN`.
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use common::guest::field;
use common::process::{Vmm, follow_events, guest_args, path_text, wait_event};
use common::{guest_file, vmm_binary};

const MIB: u64 = 1 << 20;

/// Progress on stderr as it happens: libtest holds back what `eprintln!` prints until the
/// test ends, which a test killed for hanging never does.
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Runs `command` to its end within `limit`; a hung one is killed and fails the test, with
/// `context` (the VM's log) to say why.
fn output_within(command: &mut Command, limit: Duration, context: impl Fn() -> String) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match result.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{command:?} did not end within {limit:?}:\n{}", context());
        }
    }
}

/// A scratch directory with a copy of the guest's root disk, kept for the whole test: both
/// `vmm` processes use the same disk.
struct Scratch {
    dir: PathBuf,
    disk: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-snapshot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("rootfs.ext4");
        std::fs::copy(guest_file("VMM_TEST_ROOTFS"), &disk).unwrap();
        Self { dir, disk }
    }

    fn snapshot(&self) -> PathBuf {
        self.dir.join("snapshot")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first `vmm`: the testbed guest in snapshot mode with its root disk.
fn boot(scratch: &Scratch, name: &str, cpus: u32, extra: &str) -> Vmm {
    let cmdline = format!("console=ttyS0 quiet panic=-1 vmmtest=snapshot root=/dev/vda rw {extra}");
    let mut args = guest_args(&cmdline, cpus, 256);
    args.push("--disk".into());
    args.push(format!("path={},id=root", path_text(&scratch.disk)));
    Vmm::start(name, &args)
}

/// Polls `vm.info` until `done` holds for it (`what` names that in the failure), and returns
/// it; fails if the VM stops first.
fn wait_info(vmm: &Vmm, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, info) = vmm.call("GET", "vm.info");
        if status == 200 && done(&info) {
            return info;
        }
        assert!(
            info["state"] != "stopped" && Instant::now() < deadline,
            "not {what} within {limit:?}: {info}\n{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the guest said before it slept: its counting process, its token, its count.
struct Before {
    pid: String,
    token: String,
    ticks: u64,
    /// When its line came.
    at: Instant,
}

/// How the guest goes to sleep before it is saved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// It runs `echo mem` itself.
    ByItself,
    /// `vmm ctl snapshot --sleep` presses its sleep button (KEY_SLEEP).
    SleepButton,
}

/// Boots the guest, lets it suspend, and saves it with `vmm ctl snapshot --exit`: `vmm` must
/// end with status 0 and leave a sparse snapshot.
fn boot_and_save(scratch: &Scratch, name: &str, cpus: u32, extra: &str, sleep: Sleep) -> Before {
    let extra = match sleep {
        Sleep::ByItself => extra.to_owned(),
        Sleep::SleepButton => format!("{extra} sleepkey=1"),
    };
    let mut first = boot(scratch, &format!("{name}-first"), cpus, &extra);
    // The suspend is awaited on the event stream, not by polling `vm.info`: where KVM keeps the
    // power states (6.1), each `vm.info` parks every vCPU for a census (docs/power.md).
    let early_events = follow_events(&first.socket);
    let first_line = match sleep {
        Sleep::ByItself => "@@guest suspending",
        Sleep::SleepButton => "@@guest waiting-for-sleep-key",
    };
    progress!("snapshot test {name}: booting");
    first.wait_console(first_line, Duration::from_secs(180));
    let at = Instant::now();
    if sleep == Sleep::ByItself {
        wait_event(&early_events, "suspended", Duration::from_secs(60));
        // A first snapshot that keeps the guest asleep here; the one below replaces it.
        let body = json!({ "destination": scratch.snapshot(), "then": "stay" }).to_string();
        let (status, reply) = first
            .client()
            .request("PUT", "/api/v1/vm.snapshot", Some(body.as_bytes()))
            .unwrap();
        assert_eq!(status, 200, "{reply}");
        let (_, info) = first.call("GET", "vm.info");
        assert_eq!(info["state"], "suspended", "{info}");
    }
    let events = follow_events(&first.socket);
    let mut ctl = Command::new(vmm_binary());
    ctl.args(["ctl", "--api-socket", path_text(&first.socket), "--json"])
        .args(["snapshot", path_text(&scratch.snapshot()), "--exit"]);
    if sleep == Sleep::SleepButton {
        ctl.arg("--sleep");
    }
    progress!("snapshot test {name}: saving");
    let ctl = output_within(&mut ctl, Duration::from_secs(120), || {
        format!("{}\n{}", first.console_text(), first.stderr())
    });
    assert!(
        ctl.status.success(),
        "vmm ctl snapshot: {}\n{}\n{}",
        String::from_utf8_lossy(&ctl.stderr),
        first.console_text(),
        first.stderr()
    );
    let line = first.wait_console("@@guest suspending", Duration::from_secs(10));
    let before = Before {
        pid: field(&line, "pid").unwrap().to_owned(),
        token: field(&line, "token").unwrap().to_owned(),
        ticks: field(&line, "ticks")
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no number ticks= in {line}")),
        at,
    };
    let taken: Value = serde_json::from_slice(&ctl.stdout).unwrap();
    let event = wait_event(&events, "snapshotted", Duration::from_secs(30));
    assert_eq!(event["bytes"], taken["bytes"], "{event} {taken}");
    assert_eq!(
        first.wait_exit(Duration::from_secs(60)),
        0,
        "{}",
        first.stderr()
    );

    // Sparse: what the guest touched (a 256 MiB guest that booted from an initramfs and
    // mounted ext4 touches far less), plus the state file.
    let memory = std::fs::metadata(scratch.snapshot().join("memory")).unwrap();
    assert_eq!(memory.len(), 256 * MIB);
    let allocated = memory.blocks() * 512;
    let stored = taken["bytes"].as_u64().unwrap();
    assert!(allocated < 200 * MIB, "{allocated} bytes allocated");
    assert!(
        allocated <= stored + MIB,
        "{allocated} allocated, {stored} stored"
    );
    eprintln!(
        "snapshot of {name}: {stored} bytes stored of {} bytes of RAM in {} ms",
        taken["memory_bytes"], taken["ms"]
    );
    before
}

/// The CPU time `pid` used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `vmm --restore`, which must come back suspended from `snapshot` and stay idle.
fn restore(snapshot: &Path, name: &str, stdin: Stdio) -> Vmm {
    progress!("snapshot test {name}: restoring");
    let restored = Vmm::start_with_stdin(name, &["--restore", path_text(snapshot)], stdin);
    let info = wait_info(&restored, "suspended", Duration::from_secs(60), |info| {
        info["state"] == "suspended"
    });
    assert_eq!(info["restored_from"], json!(snapshot), "{info}");
    let start = cpu_ticks(restored.child.id());
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_ticks(restored.child.id()) - start;
    // 10 ms ticks: a vmm that spins, polls or wakes its vCPUs shows up at once.
    assert!(
        used <= 5,
        "the restored vmm used {used} ticks of CPU in 5 s asleep"
    );
    restored
}

/// Checks the guest's report after its resume.
fn check_resumed(restored: &mut Vmm, before: &Before, cpus: u32) -> String {
    progress!("snapshot test: waiting for the guest's resume");
    let line = restored.wait_console("@@guest resumed", Duration::from_secs(120));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(field(&line, "rc"), Some("0"), "{line}");
    assert_eq!(field(&line, "pid"), Some(before.pid.as_str()), "{line}");
    assert_eq!(field(&line, "alive"), Some("yes"), "{line}");
    assert_eq!(field(&line, "token"), Some(before.token.as_str()), "{line}");
    let number = |name| -> u64 {
        field(&line, name)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no number {name}= in {line}"))
    };
    let ticks = number("ticks");
    let later = number("ticks_later");
    assert!(ticks >= before.ticks, "the count went back: {line}");
    assert!(later > ticks, "the counting process does not run: {line}");
    let pm_exit = number("pm_exit");
    assert!(
        pm_exit >= 1,
        "no `PM: suspend exit` in the guest's log: {line}"
    );
    let date = number("date");
    assert!(
        date.abs_diff(now) <= 2,
        "the guest's clock is {date}, the host's {now}: {line}"
    );
    let online = if cpus == 1 {
        "0".to_owned()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(field(&line, "online"), Some(online.as_str()), "{line}");
    line
}

#[test]
fn a_guest_saved_to_disk_comes_back_asleep_in_a_new_vmm_and_the_wake_button_resumes_it() {
    test_utils::require_kvm!();
    let scratch = Scratch::new("button");
    let before = boot_and_save(&scratch, "button", 1, "", Sleep::ByItself);
    bad_snapshots_are_refused(&scratch);

    let mut restored = restore(&scratch.snapshot(), "button-restored", Stdio::null());
    let events = follow_events(&restored.socket);
    let (status, reply) = restored.call("PUT", "vm.wakeup");
    assert_eq!(status, 200, "{reply}");
    let resumed = wait_event(&events, "resumed", Duration::from_secs(60));
    assert_eq!(resumed["source"], "gpio", "{resumed}");
    check_resumed(&mut restored, &before, 1);
    assert_eq!(restored.wait_exit(Duration::from_secs(60)), 0);

    // The guest may well not have written its disk since; anything that does makes the
    // snapshot stale, and it is refused.
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&scratch.disk)
        .unwrap();
    disk.set_modified(SystemTime::now() + Duration::from_secs(1))
        .unwrap();
    drop(disk);
    let refused = restore_fails(&scratch.snapshot());
    assert!(refused.contains("changed since the snapshot"), "{refused}");
}

/// Also one host command from a running guest to disk: `vmm ctl snapshot --sleep --exit`.
#[test]
fn an_rtc_alarm_that_fell_due_on_disk_wakes_the_guest_as_soon_as_it_is_restored() {
    test_utils::require_kvm!();
    let scratch = Scratch::new("rtc");
    // Long enough for the suspend and the snapshot in the emulated host (an alarm that fires
    // before the snapshot wakes the guest, and the snapshot is refused); the guest set it
    // just before it said it was suspending. The test then waits past it before restoring.
    let alarm = 30;
    let before = boot_and_save(
        &scratch,
        "rtc",
        1,
        &format!("alarm={alarm}"),
        Sleep::SleepButton,
    );
    let due = Duration::from_secs(alarm + 5);
    while before.at.elapsed() < due {
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut restored = Vmm::start(
        "rtc-restored",
        &["--restore", path_text(&scratch.snapshot())],
    );
    // Nobody presses anything: the alarm is due and fires at once. The wake source is read
    // while the guest still runs: it powers off a second after its resume, and `vmm` exits
    // with it, taking its API socket along.
    let info = wait_info(&restored, "woken", Duration::from_secs(120), |info| {
        info["last_wake_source"].is_string()
    });
    assert_eq!(info["last_wake_source"], "rtc", "{info}");
    check_resumed(&mut restored, &before, 1);
    assert_eq!(restored.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn four_vcpus_come_back_from_disk_woken_by_a_console_byte_and_suspend_five_more_times() {
    test_utils::require_kvm!();
    let scratch = Scratch::new("four");
    let before = boot_and_save(&scratch, "four", 4, "more=5", Sleep::ByItself);
    let mut restored = restore(&scratch.snapshot(), "four-restored", Stdio::piped());
    let events = follow_events(&restored.socket);
    let mut stdin = restored.child.stdin.take().unwrap();
    stdin.write_all(b"\r").unwrap();
    let resumed = wait_event(&events, "resumed", Duration::from_secs(60));
    assert_eq!(resumed["source"], "serial", "{resumed}");
    check_resumed(&mut restored, &before, 4);
    let done = restored.wait_console("@@guest cycles-done", Duration::from_secs(300));
    assert_eq!(field(&done, "good"), Some("5"), "{done}");
    drop(stdin);
    assert_eq!(restored.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn a_guest_that_is_not_suspended_is_not_saved_and_runs_on() {
    test_utils::require_kvm!();
    let scratch = std::env::temp_dir().join(format!("vmm-snapshot-{}-busy", std::process::id()));
    let cmdline = "console=ttyS0 quiet panic=-1 vmmtest=ticker";
    let vmm = Vmm::start("busy", &guest_args(cmdline, 1, 128));
    vmm.wait_console("@@guest tick n=2 ", Duration::from_secs(120));
    let snapshot = |then: &str| {
        let body = json!({ "destination": scratch, "then": then }).to_string();
        vmm.client()
            .request("PUT", "/api/v1/vm.snapshot", Some(body.as_bytes()))
            .unwrap()
    };
    let (status, reply) = snapshot("exit");
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("running"),
        "{reply}"
    );
    assert_eq!(vmm.call("PUT", "vm.pause").0, 200);
    let (status, reply) = snapshot("exit");
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("paused"),
        "{reply}"
    );
    assert_eq!(vmm.call("PUT", "vm.resume").0, 200);
    // This guest has no KEY_SLEEP handler: the sleep button changes nothing, and
    // `snapshot --sleep` says so once its time is up.
    let ctl = Command::new(vmm_binary())
        .args(["ctl", "--api-socket", path_text(&vmm.socket)])
        .args([
            "snapshot",
            path_text(&scratch),
            "--sleep",
            "--exit",
            "--timeout",
            "5",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ctl.stderr);
    assert_eq!(ctl.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not suspend within 5 s"), "{stderr}");
    let (status, reply) = vmm
        .client()
        .request("PUT", "/api/v1/vm.snapshot", Some(b"{\"then\":\"exit\"}"))
        .unwrap();
    assert_eq!(status, 400, "{reply}");
    assert!(!scratch.exists());
    // The guest never noticed: it ticks on.
    vmm.wait_console("@@guest tick n=5 ", Duration::from_secs(60));
    let (_, info) = vmm.call("GET", "vm.info");
    assert_eq!(info["state"], "running", "{info}");
}

/// `vmm --restore DIR` fails: status 1 and the first line of stderr, which must say `vmm:`.
fn restore_fails(dir: &Path) -> String {
    let output = output_within(
        Command::new(vmm_binary()).args(["--restore", path_text(dir)]),
        Duration::from_secs(60),
        String::new,
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
        .lines()
        .find(|line| line.starts_with("vmm: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_owned()
}

/// Each kind of damage to the snapshot in `scratch` gets its own error, and nothing runs.
fn bad_snapshots_are_refused(scratch: &Scratch) {
    let good = scratch.snapshot();
    let bad = scratch.dir.join("bad");
    let state = std::fs::read(good.join("state")).unwrap();
    let fresh = |state: &[u8]| {
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("state"), state).unwrap();
        // The same memory file, not a copy of it.
        std::fs::hard_link(good.join("memory"), bad.join("memory")).unwrap();
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", state[..state.len() - 10].to_vec()),
        ("corrupted", {
            let mut flipped = state.clone();
            let last = flipped.len() - 5;
            flipped[last] ^= 0x20;
            flipped
        }),
        (
            "version 2",
            String::from_utf8_lossy(&state)
                .replacen("vmm-snapshot v1 ", "vmm-snapshot v2 ", 1)
                .into_bytes(),
        ),
    ];
    for (what, bytes) in cases {
        fresh(&bytes);
        let error = restore_fails(&bad);
        assert!(error.contains(what), "{what}: {error}");
    }
    let error = restore_fails(&scratch.dir.join("nothing-here"));
    assert!(error.contains("No such file"), "{error}");

    // A memory file cut short.
    fresh(&state);
    std::fs::remove_file(bad.join("memory")).unwrap();
    let memory = std::fs::File::create(bad.join("memory")).unwrap();
    memory.set_len(128 * MIB).unwrap();
    let error = restore_fails(&bad);
    assert!(error.contains("memory file"), "{error}");
    let _ = std::fs::remove_dir_all(&bad);
}
