//! Boots the arm64 host (or runs natively), streams its console to a log file and to stdout,
//! and enforces the time limits while it watches the markers.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::artefacts::HostKernel;
use crate::initramfs::Staged;
use crate::report::{Marker, Outcome, ScenarioStatus};

/// How long the emulated host may take to reach its init.
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// Slack on top of a scenario's own limit, which `timeout` enforces inside the host.
const WATCHDOG_SLACK: Duration = Duration::from_secs(30);
/// Lines of the log shown when something goes wrong.
const TAIL_LINES: usize = 40;

/// Failures to start or watch the host.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The log file could not be written.
    #[error("Cannot write the log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU or the shell could not be started.
    #[error("Cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Whether this machine is itself an arm64 KVM host.
pub fn native_kvm_host() -> bool {
    cfg!(target_arch = "aarch64") && Path::new("/dev/kvm").exists()
}

/// Boots QEMU's emulated arm64 host on the kernel `host` with the initramfs and watches it.
pub fn run_emulated(
    host: &HostKernel,
    initramfs: &Path,
    staged: &Staged,
    work_dir: &Path,
) -> Result<Outcome, ConsoleError> {
    let command = qemu_command(host, initramfs, "stdio");
    println!(
        "testbed: booting the emulated arm64 host (QEMU TCG, EL2, GICv3) on host kernel {} ({})",
        host.name,
        host.image.display()
    );
    watch(command, "qemu-system-aarch64", staged, work_dir, true)
}

/// QEMU's emulated arm64 host booting the kernel `host` with `initramfs`, its console (ttyAMA0)
/// on `serial`.
fn qemu_command(host: &HostKernel, initramfs: &Path, serial: &str) -> Command {
    let memory_mib = std::env::var("TESTBED_HOST_MEMORY_MIB").unwrap_or_else(|_| "3072".into());
    // QEMU's own hash for pointer authentication instead of QARMA: the architected behaviour
    // stays, and TCG runs the PAC-built Debian kernels and binaries about 1.6x faster.
    let cpu = std::env::var("TESTBED_HOST_CPU").unwrap_or_else(|_| "max,pauth-impdef=on".into());
    let mut command = Command::new("qemu-system-aarch64");
    command
        .args(["-M", "virt,virtualization=on,gic-version=3", "-cpu", &cpu])
        .args(["-smp", "2", "-m", &memory_mib])
        .args(["-nodefaults", "-display", "none", "-serial", serial])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(&host.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyAMA0 panic=-1 quiet rdinit=/init"]);
    command
}

/// Boots the emulated arm64 host with its console on this terminal (QEMU's stdio, with its
/// monitor multiplexed: Ctrl-A x quits) and waits until it powers off. No time limit and no
/// markers: the user drives it. Returns whether QEMU exited with status 0.
pub fn shell_emulated(host: &HostKernel, initramfs: &Path) -> Result<bool, ConsoleError> {
    let mut command = qemu_command(host, initramfs, "mon:stdio");
    run_inherited(&mut command, "qemu-system-aarch64")
}

/// Runs the staged `testbed/shell.sh` directly on this arm64 KVM host, on this terminal.
pub fn shell_native(staged: &Staged) -> Result<bool, ConsoleError> {
    let mut command = Command::new("sh");
    command
        .arg(staged.root.join("testbed/shell.sh"))
        .env("ROOT", &staged.root);
    run_inherited(&mut command, "sh")
}

/// Runs `command` with this process's stdin, stdout and stderr; returns whether it exited 0.
fn run_inherited(command: &mut Command, program: &str) -> Result<bool, ConsoleError> {
    let status = command
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|source| ConsoleError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    Ok(status.success())
}

/// Runs the scenarios directly on this arm64 KVM host.
pub fn run_native(staged: &Staged, work_dir: &Path) -> Result<Outcome, ConsoleError> {
    let mut command = Command::new("sh");
    command
        .arg(staged.root.join("testbed/run.sh"))
        .env("ROOT", &staged.root);
    println!("testbed: running natively on this arm64 KVM host");
    watch(command, "sh", staged, work_dir, false)
}

fn watch(
    mut command: Command,
    program: &str,
    staged: &Staged,
    work_dir: &Path,
    emulated: bool,
) -> Result<Outcome, ConsoleError> {
    let log_path = work_dir.join("console.log");
    let mut log = std::fs::File::create(&log_path).map_err(|source| ConsoleError::Log {
        path: log_path.clone(),
        source,
    })?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ConsoleError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let guard = KillOnDrop(&mut child);
    let lines = spawn_reader(guard.0);

    let started = Instant::now();
    let mut outcome = Outcome::new(&staged.scenarios);
    let mut deadline = started + if emulated { BOOT_LIMIT } else { WATCHDOG_SLACK };
    let mut phase = String::from("boot");
    let mut tail: Vec<String> = Vec::new();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(wait) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                outcome.abort(format!("time limit exceeded during {phase}"));
                break;
            }
        };
        let _ = writeln!(log, "{line}");
        println!("[arm64-host] {line}");
        tail.push(line.clone());
        if tail.len() > TAIL_LINES {
            tail.remove(0);
        }
        if line.contains("Kernel panic") {
            outcome.abort(format!("kernel panic during {phase}"));
            break;
        }
        match outcome.feed(&line, started.elapsed()) {
            Some(Marker::Begin { limit, name }) => {
                deadline = Instant::now() + Duration::from_secs(limit) + WATCHDOG_SLACK;
                phase = format!("scenario {name}");
            }
            Some(Marker::Ready) => {
                deadline = Instant::now() + WATCHDOG_SLACK;
                phase = String::from("start-up");
            }
            Some(Marker::End) => {
                deadline = Instant::now() + WATCHDOG_SLACK;
                phase = String::from("the gap between scenarios");
            }
            Some(Marker::Done) => {
                deadline = Instant::now() + WATCHDOG_SLACK;
                phase = String::from("power-off");
            }
            None => {}
        }
    }
    drop(guard);
    if outcome
        .scenarios
        .iter()
        .any(|scenario| !matches!(scenario.status, ScenarioStatus::Passed))
    {
        println!("testbed: last {} console lines:", tail.len());
        for line in &tail {
            println!("  | {line}");
        }
    }
    println!("testbed: console log in {}", log_path.display());
    Ok(outcome)
}

/// Reads the child's stdout line by line on its own thread, so the watcher can time out.
fn spawn_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buffer);
                        let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                        if sender.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    receiver
}

/// Kills and reaps the child however the watcher ends.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        // Give a powered-off QEMU a moment to exit on its own before killing it.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
