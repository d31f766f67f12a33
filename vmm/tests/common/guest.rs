//! A Linux guest of the testbed booted through the library, with its console captured and its
//! events subscribed to: what the tests that watch a real guest sleep and wake share.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::events::{EventReceiver, VmEventKind, WakeSource};
use vmm::{Console, DiskConfig, ExitReason, Vm, VmConfig, VmHandle};
use vmm_sys_util::tempdir::TempDir;

use super::guest_file;

/// A running guest.
pub struct Guest {
    pub handle: VmHandle,
    events: EventReceiver,
    console: Arc<Mutex<Vec<u8>>>,
    /// Holds the root disk's copy, if it has one.
    _scratch: TempDir,
}

/// The testbed guest's configuration: its kernel and initramfs, `vmmtest=MODE` and `extra` on
/// the command line, 256 MiB, `cpus` vCPUs; with `root_disk`, a copy of its root disk in
/// `scratch` as `/dev/vda` (read-write), else no virtio device at all.
pub fn config(scratch: &TempDir, mode: &str, extra: &str, cpus: u32, root_disk: bool) -> VmConfig {
    let mut config = VmConfig::new(guest_file("VMM_TEST_KERNEL"));
    config.initramfs = Some(guest_file("VMM_TEST_INITRD"));
    config.cmdline = format!("console=ttyS0 quiet panic=-1 vmmtest={mode} {extra}");
    if root_disk {
        let root = scratch.as_path().join("rootfs.ext4");
        std::fs::copy(guest_file("VMM_TEST_ROOTFS"), &root).unwrap();
        config.disks = vec![DiskConfig {
            id: Some("root".into()),
            ..DiskConfig::new(root)
        }];
        config.cmdline.push_str(" root=/dev/vda rw");
    } else {
        config.rng = false;
    }
    config.cpus = cpus;
    config.memory_mib = 256;
    config
}

/// A scratch directory for one guest, named after the test.
pub fn scratch(prefix: &str) -> TempDir {
    TempDir::new_with_prefix(std::env::temp_dir().join(prefix)).unwrap()
}

/// The guest's console: kept whole for the test, and its `@@guest` lines echoed on stderr as
/// they come, so that a test killed by its time limit still shows how far the guest got.
struct EchoingConsole {
    text: Arc<Mutex<Vec<u8>>>,
    line: Vec<u8>,
}

impl std::io::Write for EchoingConsole {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.lock().unwrap().extend_from_slice(bytes);
        for &byte in bytes {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&self.line);
                if line.contains("@@guest") {
                    // Straight to the descriptor: the test harness captures eprintln!.
                    let _ = std::io::Write::write_all(
                        &mut std::io::stderr(),
                        format!("[guest] {}\n", line.trim_end()).as_bytes(),
                    );
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(byte);
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Guest {
    /// Starts `config`, keeping `scratch` (its files) as long as the guest.
    pub fn start(config: VmConfig, scratch: TempDir) -> Self {
        // vmm's own log (suspends, resumes, device warnings) on stderr, as the binary has it
        // with -v: a failure then shows what the VMM saw.
        // No colours: deciding them asks whether stderr is a terminal, an ioctl the seccomp
        // filters of the VMM's threads forbid.
        let _ = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Info)
            .write_style(env_logger::WriteStyle::Never)
            .format_timestamp_millis()
            .try_init();
        let console: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let writer = EchoingConsole {
            text: Arc::clone(&console),
            line: Vec::new(),
        };
        let vm = Vm::new(config)
            .unwrap()
            .with_console(Console::Writer(Arc::new(Mutex::new(writer))));
        let events = vm.subscribe();
        let handle = vm.start().unwrap();
        Self {
            handle,
            events,
            console,
            _scratch: scratch,
        }
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    /// Waits for the first event `pick` accepts.
    pub fn wait_event<T>(&self, limit: Duration, pick: impl Fn(&VmEventKind) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    if let Some(value) = pick(&event.kind) {
                        return value;
                    }
                }
                Err(_) => panic!(
                    "no such event within {limit:?}; console:\n{}",
                    self.console_text()
                ),
            }
        }
    }

    /// The events not taken by [`wait_event`](Self::wait_event) yet, without waiting.
    pub fn events_so_far(&self) -> Vec<VmEventKind> {
        self.events.try_iter().map(|event| event.kind).collect()
    }

    /// Waits for a whole console line containing `text`, and returns it.
    pub fn wait_console(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let console = self.console_text();
            // Only whole lines: the guest may be in the middle of writing one.
            let complete = console.rsplit_once('\n').map_or("", |(whole, _)| whole);
            if let Some(line) = complete.lines().find(|line| line.contains(text)) {
                return line.to_owned();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{text:?} not on the console within {limit:?}:\n{}",
            self.console_text()
        );
    }

    /// What the VMM is doing, for a failure message: the VM's state and info (given 5 s: a
    /// stuck vCPU may never answer) and every thread of this process with its state and the
    /// kernel function it waits in.
    pub fn diagnose(&self) -> String {
        let handle = self.handle.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(format!("{:?}\n{:#?}", handle.state(), handle.info()));
        });
        let mut text = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "vm.info did not answer within 5 s".to_owned());
        text.push_str("\nthreads (name, state, wchan):\n");
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let read = |file: &str| {
                std::fs::read_to_string(task.path().join(file))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest.trim())
                .split(' ')
                .next()
                .unwrap_or("");
            text.push_str(&format!(
                "  {:<16} {state} {}\n",
                read("comm"),
                read("wchan")
            ));
        }
        text
    }

    /// Waits up to `limit` for the VM to stop, taking every event on the way (a queue left
    /// unread would drop this subscriber after [`vmm::events::EVENT_QUEUE_LIMIT`] events), and
    /// returns how it ended with the events not taken before.
    pub fn run_to_end(&self, limit: Duration) -> (ExitReason, Vec<VmEventKind>) {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    assert!(
                        !matches!(event.kind, VmEventKind::Lagged { .. }),
                        "events lost: {event:?}"
                    );
                    events.push(event.kind);
                }
                // The VM has stopped for good: its bus ended every subscription.
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let diagnosis = self.diagnose();
                    // Not left running into the next test.
                    let _ = self.handle.shutdown();
                    panic!(
                        "the VM did not stop within {limit:?}\n{diagnosis}\nconsole:\n{}",
                        self.console_text()
                    )
                }
            }
        }
        let exit = self
            .handle
            .wait_timeout(Duration::from_secs(30))
            .expect("the VM ended its events but not its run")
            .unwrap_or_else(|err| panic!("the VM failed: {}", vmm::error_chain(err.as_ref())));
        (exit, events)
    }

    /// The `@@guest` lines of the console so far.
    pub fn reports(&self) -> Vec<Report> {
        reports(&self.console_text())
    }

    /// Waits for the guest to power off.
    pub fn powers_off(&self) {
        let exit = self
            .handle
            .wait_timeout(Duration::from_secs(120))
            .expect("the guest did not power off")
            .unwrap();
        assert_eq!(exit, vmm::ExitReason::PowerOff);
    }
}

/// The value of `key=` among the `key=value` words of a guest's `@@guest` line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// One `@@guest KIND ...` line of the testbed guest's init, its words after the kind as
/// `key=value` fields, e.g. `@@guest init uptime=2.31 nproc=4 ...` (kind `init`). A first word
/// that is itself `key=value` gives the kind and a field: `@@guest cycle=3 rc=0 ...` is of
/// kind `cycle`.
#[derive(Clone, Debug)]
pub struct Report {
    pub kind: String,
    pub fields: BTreeMap<String, String>,
    /// The whole line, for messages.
    pub line: String,
}

impl Report {
    /// Parses the words after `@@guest` in `line`, or `None` if it has none.
    pub fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.split_once("@@guest ")?;
        let mut words = rest.split_whitespace().peekable();
        let first = *words.peek()?;
        let kind = first
            .split_once('=')
            .map_or(first, |(key, _)| key)
            .to_owned();
        let fields = words
            .filter_map(|word| word.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Some(Self {
            kind,
            fields,
            line: line.trim_end().to_owned(),
        })
    }

    pub fn is(&self, kind: &str) -> bool {
        self.kind == kind
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The value of `key`, which must be there and parse as a `T`.
    pub fn value<T: FromStr>(&self, key: &str) -> T {
        self.get(key)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= of that type in {:?}", self.line))
    }
}

/// The `@@guest` lines of a console, in order, whole lines only (the last one may still be
/// being written).
pub fn reports(console: &str) -> Vec<Report> {
    let complete = console.rsplit_once('\n').map_or("", |(whole, _)| whole);
    complete.lines().filter_map(Report::parse).collect()
}

/// The one report of `kind`, which must be there.
pub fn the_report<'a>(reports: &'a [Report], kind: &str) -> &'a Report {
    let mut of_kind = reports.iter().filter(|report| report.is(kind));
    let report = of_kind
        .next()
        .unwrap_or_else(|| panic!("no @@guest {kind} line among {reports:#?}"));
    assert!(
        of_kind.next().is_none(),
        "more than one @@guest {kind} line"
    );
    report
}

/// The guest's `/sys/devices/system/cpu/online` with all of `cpus` online.
pub fn all_online(cpus: u32) -> String {
    if cpus == 1 {
        "0".to_owned()
    } else {
        format!("0-{}", cpus - 1)
    }
}

/// The `@@guest cycle=N` reports of `rtcwake -m mem` round trips (aborted attempts included),
/// and how many of them succeeded, counted in `suspend_stats` and brought all `cpus` back.
pub fn suspend_cycles(reports: &[Report], cpus: u32) -> (Vec<&Report>, usize) {
    let cycles: Vec<&Report> = reports.iter().filter(|report| report.is("cycle")).collect();
    let online = all_online(cpus);
    let good = cycles
        .iter()
        .filter(|cycle| {
            cycle.get("rc") == Some("0")
                && cycle.value::<u64>("success_after") == cycle.value::<u64>("success_before") + 1
                && cycle.get("online") == Some(online.as_str())
        })
        .count();
    (cycles, good)
}

/// Checks that the VMM saw exactly `cycles` suspends, each followed by a resume that the RTC
/// woke, and returns the VMM-side suspend and resume latencies as min/median/max in us.
pub fn rtc_suspend_cycles(events: &[VmEventKind], cycles: usize) -> (String, String) {
    let steps: Vec<&VmEventKind> = events
        .iter()
        .filter(|event| {
            matches!(
                event,
                VmEventKind::Suspended { .. } | VmEventKind::Resumed { .. }
            )
        })
        .collect();
    assert_eq!(
        steps.len(),
        2 * cycles,
        "{cycles} suspends and resumes expected: {steps:#?}"
    );
    let (mut suspend_us, mut resume_us) = (Vec::new(), Vec::new());
    for pair in steps.chunks(2) {
        match pair {
            [
                VmEventKind::Suspended { latency_us: s, .. },
                VmEventKind::Resumed {
                    source: WakeSource::Rtc,
                    latency_us: r,
                    ..
                },
            ] => {
                suspend_us.push(*s);
                resume_us.push(*r);
            }
            other => panic!("not a suspend and an RTC resume: {other:?}"),
        }
    }
    (spread(suspend_us), spread(resume_us))
}

/// Min/median/max of `values` as `a/b/c`, or `none`.
pub fn spread(values: impl IntoIterator<Item = u64>) -> String {
    let mut values: Vec<u64> = values.into_iter().collect();
    values.sort_unstable();
    match (values.first(), values.last()) {
        (Some(min), Some(max)) => format!("{min}/{}/{max}", values[(values.len() - 1) / 2]),
        _ => "none".to_owned(),
    }
}

/// User plus system CPU time of this process, which is the VMM.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (USER_HZ = 100).
    Duration::from_millis((fields[11] + fields[12]) * 10)
}
