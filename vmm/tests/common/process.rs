//! A `vmm` binary with `--api-socket`, its console and stderr in files of a scratch directory:
//! what the tests that drive the real process through the API share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm::api::ApiClient;

use super::{exit_within, vmm_binary};

/// `vmm`'s arguments for the testbed's guest: its kernel and initramfs, `cmdline`, `cpus`
/// vCPUs and `memory_mib`; add the rest.
pub fn guest_args(cmdline: &str, cpus: u32, memory_mib: u64) -> Vec<String> {
    let file = |variable| super::guest_file(variable).to_string_lossy().into_owned();
    vec![
        "--kernel".into(),
        file("VMM_TEST_KERNEL"),
        "--initramfs".into(),
        file("VMM_TEST_INITRD"),
        "--cmdline".into(),
        cmdline.into(),
        "--cpus".into(),
        cpus.to_string(),
        "--memory".into(),
        memory_mib.to_string(),
    ]
}

/// A path as a command-line argument.
pub fn path_text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A `vmm --api-socket` process.
pub struct Vmm {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub console: PathBuf,
}

/// How [`Vmm::launch`] starts `vmm`, beyond its arguments.
pub struct Launch {
    /// Whether it serves the API on `api.sock` in its directory; the launch then waits for the
    /// socket.
    pub api: bool,
    /// The console's input.
    pub stdin: Stdio,
    /// The console's output; `None` is `console.log` in its directory.
    pub stdout: Option<Stdio>,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            api: true,
            stdin: Stdio::null(),
            stdout: None,
        }
    }
}

impl Vmm {
    /// Starts `vmm ARGS -v --api-socket DIR/api.sock` in a fresh scratch directory named after
    /// `name`, and waits for its socket.
    pub fn start(name: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Self {
        Self::launch(name, args, Launch::default())
    }

    /// [`Vmm::start`] with the console's input from `stdin`.
    pub fn start_with_stdin(
        name: &str,
        args: &[impl AsRef<std::ffi::OsStr>],
        stdin: Stdio,
    ) -> Self {
        let launch = Launch {
            stdin,
            ..Launch::default()
        };
        Self::launch(name, args, launch)
    }

    /// Starts `vmm ARGS -v` in a fresh scratch directory named after `name`, its stderr in
    /// `stderr.log` there, as `launch` says.
    pub fn launch(name: &str, args: &[impl AsRef<std::ffi::OsStr>], launch: Launch) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let console = dir.join("console.log");
        let mut command = Command::new(vmm_binary());
        command.args(args).arg("-v");
        if launch.api {
            command.arg("--api-socket").arg(&socket);
        }
        let stdout = launch
            .stdout
            .unwrap_or_else(|| std::fs::File::create(&console).unwrap().into());
        let child = command
            .stdin(launch.stdin)
            .stdout(stdout)
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start vmm");
        let mut vmm = Self {
            child,
            dir,
            socket,
            console,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while launch.api && !vmm.socket.exists() {
            let exited = vmm.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "no API socket ({exited:?}): {}",
                vmm.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        vmm
    }

    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.socket)
    }

    pub fn call(&self, method: &str, endpoint: &str) -> (u16, Value) {
        self.client()
            .request(method, &format!("/api/v1/{endpoint}"), None)
            .unwrap_or_else(|err| {
                panic!(
                    "{method} {endpoint}: {} ({}); its stderr:\n{}",
                    vmm::error_chain(&err),
                    self.status(),
                    self.stderr()
                )
            })
    }

    /// Whether `vmm` still runs, or how it ended, without reaping it (`Drop` does that).
    pub fn status(&self) -> String {
        // SAFETY: a zeroed siginfo_t is valid; waitid writes it for our own child, and
        // WNOWAIT leaves the child to be waited for again.
        let info = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_PID, self.child.id(), &mut info, flags) != 0 {
                return format!("vmm state unknown: {}", std::io::Error::last_os_error());
            }
            info
        };
        // SAFETY: for a child that ended, waitid filled in si_pid and si_status.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        match info.si_code {
            _ if pid == 0 => "vmm still runs".to_owned(),
            libc::CLD_EXITED => format!("vmm exited with status {status}"),
            _ => format!("vmm was killed by signal {status}"),
        }
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Whole console lines containing `text`.
    pub fn console_lines(&self, text: &str) -> Vec<String> {
        whole_lines_containing(&self.console_text(), text)
    }

    pub fn wait_console(&self, text: &str, limit: Duration) -> String {
        let poll = Duration::from_millis(100);
        self.wait_line("console", text, limit, poll, |vmm| vmm.console_lines(text))
    }

    /// Waits up to `limit` for a whole line containing `text` on vmm's stderr; returns it.
    /// Looks often: a test may time what it does next from that line.
    pub fn wait_stderr(&self, text: &str, limit: Duration) -> String {
        self.wait_line("stderr", text, limit, Duration::from_millis(5), |vmm| {
            whole_lines_containing(&vmm.stderr(), text)
        })
    }

    fn wait_line(
        &self,
        place: &str,
        text: &str,
        limit: Duration,
        poll: Duration,
        lines: impl Fn(&Self) -> Vec<String>,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = lines(self).pop() {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} not on the {place} within {limit:?}:\n{}\n{}",
                self.console_text(),
                self.stderr()
            );
            std::thread::sleep(poll);
        }
    }

    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        match exit_within(&mut self.child, limit) {
            Some(status) => status.code().unwrap_or(-1),
            None => panic!("vmm did not exit: {}", self.stderr()),
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole lines of `text` (the last one only once it ends) that contain `needle`.
fn whole_lines_containing(text: &str, needle: &str) -> Vec<String> {
    let complete = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
    complete
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Follows `vm.events` on a thread; events arrive on the returned channel.
pub fn follow_events(socket: &Path) -> mpsc::Receiver<Value> {
    let client = ApiClient::new(socket);
    let events = client
        .stream("/api/v1/vm.events")
        .expect("open the event stream");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for event in events.flatten() {
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    receiver
}

pub fn wait_event(events: &mpsc::Receiver<Value>, name: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {name:?} event within {limit:?}"));
        if event["event"] == name {
            return event;
        }
    }
}
