//! Parses the machine-readable lines of a run and summarises them.
//!
//! Markers come from the runner's own scripts (`@@testbed begin|end|done|ready`); results come
//! from libtest (`test NAME ... ok|FAILED|ignored`) and from scenario scripts
//! (`@@result NAME pass|fail [detail]`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::scenarios::Scenario;

/// How a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScenarioStatus {
    /// It never started.
    NotRun,
    /// It started and has not ended.
    Running,
    /// Its script exited 0.
    Passed,
    /// Its script exited non-zero (124 or 143: killed by its time limit).
    Failed(i32),
    /// The run was cut short while it ran.
    Aborted(String),
}

/// One test case or result line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// The test's name.
    pub name: String,
    /// Whether it passed; `None` for ignored tests.
    pub passed: Option<bool>,
    /// What a failure printed: a result line's fields, or libtest's output block for the test.
    pub detail: Vec<String>,
}

impl CaseResult {
    fn new(name: &str, passed: Option<bool>) -> Self {
        Self {
            name: name.to_owned(),
            passed,
            detail: Vec::new(),
        }
    }
}

/// Lines of a failure's detail kept for the summary: the end, where the assertion is.
const DETAIL_LINES: usize = 30;

/// A scenario's results.
#[derive(Clone, Debug)]
pub struct ScenarioResult {
    /// Its name.
    pub name: String,
    /// How it ended.
    pub status: ScenarioStatus,
    /// How long it took, from the watcher's clock.
    pub duration: Duration,
    /// Its test cases.
    pub cases: Vec<CaseResult>,
    started_at: Duration,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Every selected scenario, in order.
    pub scenarios: Vec<ScenarioResult>,
    /// Time from start to the host's init, and the host's own uptime then.
    pub host_ready: Option<(Duration, String)>,
    /// Why the run was cut short, if it was.
    pub aborted: Option<String>,
    current: Option<usize>,
    /// The libtest output block being read (`---- NAME stdout ----`), and its lines.
    block: Option<(String, Vec<String>)>,
    /// A test whose `test NAME ... ` line was cut by output the test wrote meanwhile (a live
    /// guest console, a log): its verdict comes later on a line of its own.
    pending: Option<String>,
}

/// A marker the watcher acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    /// The host reached its init.
    Ready,
    /// A scenario started, with its time limit in seconds.
    Begin {
        /// Its name.
        name: String,
        /// Its limit.
        limit: u64,
    },
    /// A scenario ended.
    End,
    /// Every scenario ran.
    Done,
}

impl Outcome {
    /// An outcome where nothing ran yet.
    pub(crate) fn new(scenarios: &[(String, u64)]) -> Self {
        Self {
            scenarios: scenarios
                .iter()
                .map(|(name, _)| ScenarioResult {
                    name: name.clone(),
                    status: ScenarioStatus::NotRun,
                    duration: Duration::ZERO,
                    cases: Vec::new(),
                    started_at: Duration::ZERO,
                })
                .collect(),
            host_ready: None,
            aborted: None,
            current: None,
            block: None,
            pending: None,
        }
    }

    /// Takes one console line seen `now` after the start.
    pub(crate) fn feed(&mut self, line: &str, now: Duration) -> Option<Marker> {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("@@testbed ") {
            return self.marker(rest, now);
        }
        let current = self.current?;
        if self.block_line(current, line) {
            return None;
        }
        // A result line may follow console output that lacked a final newline.
        let result = line
            .find("@@result ")
            .map(|at| &line[at + "@@result ".len()..]);
        let case = if let Some(rest) = result {
            let mut words = rest.split_whitespace();
            let name = words.next()?;
            let passed = match words.next()? {
                "pass" => Some(true),
                "fail" => Some(false),
                _ => return None,
            };
            let mut case = CaseResult::new(name, passed);
            if passed == Some(false) {
                case.detail.push(words.collect::<Vec<_>>().join(" "));
            }
            case
        } else {
            let verdict = |word: &str| match word {
                "ok" => Some(Some(true)),
                "FAILED" => Some(Some(false)),
                "ignored" => Some(None),
                _ => None,
            };
            if let Some(passed) = verdict(line) {
                let name = self.pending.take()?;
                CaseResult::new(&name, passed)
            } else {
                let rest = line.strip_prefix("test ")?;
                let (name, rest) = rest.split_once(" ... ")?;
                match verdict(rest) {
                    Some(passed) => CaseResult::new(name, passed),
                    None => {
                        self.pending = Some(name.to_owned());
                        return None;
                    }
                }
            }
        };
        self.scenarios[current].cases.push(case);
        None
    }

    /// Follows libtest's per-test output blocks, which come after the verdicts, and gives a
    /// failed test its block. Returns whether `line` belonged to a block.
    fn block_line(&mut self, current: usize, line: &str) -> bool {
        let header = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"));
        let ends_block = header.is_some()
            || matches!(line, "failures:" | "successes:")
            || line.starts_with("test result: ")
            || line.contains("@@result ");
        if ends_block && let Some((name, lines)) = self.block.take() {
            let failed = self.scenarios[current]
                .cases
                .iter_mut()
                .find(|case| case.name == name && case.passed == Some(false));
            if let Some(case) = failed {
                let skip = lines.len().saturating_sub(DETAIL_LINES);
                case.detail = lines.into_iter().skip(skip).collect();
            }
        }
        if let Some(name) = header {
            self.block = Some((name.to_owned(), Vec::new()));
            return true;
        }
        match &mut self.block {
            Some((_, lines)) => {
                if !line.is_empty() {
                    lines.push(line.to_owned());
                }
                true
            }
            None => false,
        }
    }

    fn marker(&mut self, rest: &str, now: Duration) -> Option<Marker> {
        let mut words = rest.split_whitespace();
        match words.next()? {
            "ready" => {
                self.host_ready = Some((now, rest.to_owned()));
                Some(Marker::Ready)
            }
            "begin" => {
                let name = words.next()?.to_owned();
                let limit = words
                    .next()
                    .and_then(|word| word.strip_prefix("limit="))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(60);
                let index = self.scenarios.iter().position(|s| s.name == name)?;
                self.block = None;
                let scenario = &mut self.scenarios[index];
                scenario.status = ScenarioStatus::Running;
                scenario.started_at = now;
                self.current = Some(index);
                Some(Marker::Begin { name, limit })
            }
            "end" => {
                let name = words.next()?;
                let rc: i32 = words
                    .next()
                    .and_then(|word| word.strip_prefix("rc="))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(-1);
                self.block = None;
                let scenario = self.scenarios.iter_mut().find(|s| s.name == name)?;
                scenario.duration = now.saturating_sub(scenario.started_at);
                scenario.status = if rc == 0 {
                    ScenarioStatus::Passed
                } else {
                    ScenarioStatus::Failed(rc)
                };
                self.current = None;
                Some(Marker::End)
            }
            "done" => Some(Marker::Done),
            _ => None,
        }
    }

    /// The emulated host's kernel release (`uname -r`) from its ready line, once it was ready.
    pub fn host_release(&self) -> Option<&str> {
        let (_, detail) = self.host_ready.as_ref()?;
        detail
            .split_whitespace()
            .find_map(|word| word.strip_prefix("kernel="))
    }

    /// Cuts the run short: the running scenario, if any, is marked aborted.
    pub(crate) fn abort(&mut self, reason: String) {
        if let Some(index) = self.current.take() {
            self.scenarios[index].status = ScenarioStatus::Aborted(reason.clone());
        }
        self.aborted = Some(reason);
    }
}

/// What a summary counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed, plus scenarios that failed with no failed case.
    pub failed: usize,
    /// Ignored cases.
    pub skipped: usize,
    /// Whether everything passed: no failure, no abort, every scenario ran and reported.
    pub ok: bool,
}

/// The exit status of a harness (`program`) from what its run returned: 0 when everything
/// passed, 1 when something failed inside the host, and 2 when the harness itself could not
/// go on, after printing the error with each of its causes on a line of its own.
pub fn exit_code(program: &str, result: Result<bool, impl std::error::Error>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("{program}: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(2)
        }
    }
}

/// Writes the summary of one boot to `out`, naming the emulated host's kernel `host` when there
/// is one, and returns its totals.
pub fn summarise(
    selected: &[Scenario],
    outcome: &Outcome,
    host: Option<&str>,
    out: &mut impl Write,
) -> Totals {
    let label = match host {
        Some(name) => format!(
            " (host kernel {name}{})",
            outcome
                .host_release()
                .map(|release| format!(", {release}"))
                .unwrap_or_default()
        ),
        None => String::new(),
    };
    let _ = writeln!(out);
    let _ = writeln!(out, "testbed summary{label}");
    if let Some((elapsed, detail)) = &outcome.host_ready {
        let _ = writeln!(
            out,
            "  arm64 host ready after {:.1} s ({detail})",
            elapsed.as_secs_f64()
        );
    }
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    let mut all_ok = outcome.aborted.is_none();
    for (scenario, result) in selected.iter().zip(&outcome.scenarios) {
        let cases_passed = result
            .cases
            .iter()
            .filter(|c| c.passed == Some(true))
            .count();
        let cases_failed = result
            .cases
            .iter()
            .filter(|c| c.passed == Some(false))
            .count();
        passed += cases_passed;
        failed += cases_failed;
        ignored += result.cases.iter().filter(|c| c.passed.is_none()).count();
        let status = match &result.status {
            ScenarioStatus::Passed if result.cases.is_empty() => {
                // A scenario that reports no result proves nothing.
                failed += 1;
                all_ok = false;
                "FAILED (no results)".to_owned()
            }
            ScenarioStatus::Passed => "ok".to_owned(),
            other => {
                all_ok = false;
                if cases_failed == 0 {
                    failed += 1;
                }
                format!("FAILED ({other:?})")
            }
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<24} {:>6.1} s  {} passed, {} failed  (limit {} s)",
            scenario.name,
            status,
            result.duration.as_secs_f64(),
            cases_passed,
            cases_failed,
            scenario.timeout.as_secs()
        );
        for case in result.cases.iter().filter(|c| c.passed == Some(false)) {
            let _ = writeln!(out, "      failed: {}", case.name);
            for line in &case.detail {
                let _ = writeln!(out, "        | {line}");
            }
        }
    }
    if let Some(reason) = &outcome.aborted {
        let _ = writeln!(out, "  run aborted: {reason}");
    }
    all_ok &= failed == 0;
    let _ = writeln!(
        out,
        "testbed{label}: {passed} passed, {failed} failed, {ignored} skipped"
    );
    Totals {
        passed,
        failed,
        skipped: ignored,
        ok: all_ok,
    }
}

/// One boot of a `--host-kernel all` run.
#[derive(Clone, Debug)]
pub struct KernelRun {
    /// The pinned kernel's name.
    pub name: String,
    /// Its release as the host reported it (`uname -r`), if it got that far.
    pub release: Option<String>,
    /// What its summary counted.
    pub totals: Totals,
    /// The whole boot, from QEMU's start to its exit.
    pub elapsed: Duration,
}

/// Writes one line per host kernel to `out` and returns whether every one passed.
pub fn summarise_kernels(runs: &[KernelRun], out: &mut impl Write) -> bool {
    let _ = writeln!(out);
    let _ = writeln!(out, "testbed summary per host kernel");
    for run in runs {
        let _ = writeln!(
            out,
            "  {:<6} {:<22} {:<7} {:>7.1} s  {} passed, {} failed, {} skipped",
            run.name,
            run.release.as_deref().unwrap_or("(never ready)"),
            if run.totals.ok { "ok" } else { "FAILED" },
            run.elapsed.as_secs_f64(),
            run.totals.passed,
            run.totals.failed,
            run.totals.skipped
        );
    }
    runs.iter().all(|run| run.totals.ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome::new(&[("kvm".into(), 60), ("linux".into(), 90)])
    }

    #[test]
    fn follows_markers_and_collects_libtest_and_result_lines() {
        let mut out = outcome();
        let t = Duration::from_secs;
        assert_eq!(
            out.feed("@@testbed ready uptime=5.1 kvm=yes", t(6)),
            Some(Marker::Ready)
        );
        assert_eq!(
            out.feed("@@testbed begin kvm limit=60", t(7)),
            Some(Marker::Begin {
                name: "kvm".into(),
                limit: 60
            })
        );
        out.feed("test psci_system_off_gives_a_shutdown_exit ... ok", t(8));
        out.feed("test suspend_denied ... FAILED", t(8));
        out.feed("test slow ... ignored", t(8));
        out.feed("some noise ... ok?", t(8));
        assert_eq!(
            out.feed("@@testbed end kvm rc=101", t(9)),
            Some(Marker::End)
        );
        out.feed("test outside_any_scenario ... ok", t(9));
        out.feed("@@testbed begin linux limit=90", t(10));
        out.feed("[guest] cut off@@result linux-boot pass uptime=7.2", t(20));
        out.feed("@@testbed end linux rc=0", t(21));
        assert_eq!(out.feed("@@testbed done", t(22)), Some(Marker::Done));

        let kvm = &out.scenarios[0];
        assert_eq!(kvm.status, ScenarioStatus::Failed(101));
        assert_eq!(kvm.duration, t(2));
        assert_eq!(
            kvm.cases,
            [
                CaseResult::new("psci_system_off_gives_a_shutdown_exit", Some(true)),
                CaseResult::new("suspend_denied", Some(false)),
                CaseResult::new("slow", None),
            ]
        );
        let linux = &out.scenarios[1];
        assert_eq!(linux.status, ScenarioStatus::Passed);
        assert_eq!(linux.cases, [CaseResult::new("linux-boot", Some(true))]);
    }

    #[test]
    fn a_verdict_cut_off_by_what_the_test_printed_still_counts() {
        let mut out = outcome();
        for line in [
            "@@testbed begin kvm limit=60",
            "test a_guest_on_a_tap ... [guest] @@guest net-up rc=0",
            "[guest] @@guest cycle=1 rc=0",
            "ok",
            "test next ... [2026-11-30T07:30:30.976Z INFO  vmm::runner] Booting",
            "FAILED",
            "ok",
            "@@testbed end kvm rc=1",
        ] {
            out.feed(line, Duration::ZERO);
        }
        assert_eq!(
            out.scenarios[0].cases,
            [
                CaseResult::new("a_guest_on_a_tap", Some(true)),
                CaseResult::new("next", Some(false)),
            ]
        );
    }

    #[test]
    fn failures_keep_what_they_printed_for_the_summary() {
        let mut out = outcome();
        let lines = [
            "@@testbed begin kvm limit=60",
            "test good ... ok",
            "test bad ... FAILED",
            "",
            "successes:",
            "",
            "---- good stdout ----",
            "figures of a passing test",
            "",
            "failures:",
            "",
            "---- bad stdout ----",
            "thread 'bad' panicked at vmm/tests/x.rs:7:5:",
            "round 3: vmm ignored SIGTERM",
            "@@guest tick n=3",
            "",
            "failures:",
            "    bad",
            "",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored",
            "@@testbed end kvm rc=101",
            "@@testbed begin linux limit=90",
            "@@result linux-boot fail exit=124 nproc=",
            "@@testbed end linux rc=1",
        ];
        for line in lines {
            out.feed(line, Duration::ZERO);
        }
        let kvm = &out.scenarios[0].cases;
        assert_eq!(kvm.len(), 2, "{kvm:?}");
        assert!(kvm[0].detail.is_empty());
        assert_eq!(
            kvm[1].detail,
            [
                "thread 'bad' panicked at vmm/tests/x.rs:7:5:",
                "round 3: vmm ignored SIGTERM",
                "@@guest tick n=3"
            ]
        );
        assert_eq!(out.scenarios[1].cases[0].detail, ["exit=124 nproc="]);

        let selected: Vec<_> = ["kvm-smoke", "kvm-suspend"]
            .iter()
            .map(|name| {
                let all = crate::scenarios::all();
                all.into_iter().find(|s| s.name == *name).unwrap()
            })
            .collect();
        let mut text = Vec::new();
        assert!(!summarise(&selected, &out, None, &mut text).ok);
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("failed: bad\n        | thread 'bad' panicked"),
            "{text}"
        );
        assert!(text.contains("        | exit=124 nproc=\n"), "{text}");
    }

    #[test]
    fn summaries_name_the_host_kernel_and_its_release() {
        let selected: Vec<_> = crate::scenarios::all().into_iter().take(1).collect();
        let mut out = Outcome::new(&[(selected[0].name.to_owned(), 1)]);
        for line in [
            "@@testbed ready uptime=9.8 kvm=yes cpus=2 kernel=7.3.4+deb13-arm64",
            "@@testbed begin kvm-smoke limit=1",
            "test a ... ok",
            "test b ... ignored",
            "@@testbed end kvm-smoke rc=0",
        ] {
            out.feed(line, Duration::from_secs(3));
        }
        assert_eq!(out.host_release(), Some("7.3.4+deb13-arm64"));
        let mut text = Vec::new();
        let totals = summarise(&selected, &out, Some("7"), &mut text);
        assert_eq!(
            totals,
            Totals {
                passed: 1,
                failed: 0,
                skipped: 1,
                ok: true
            }
        );
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("testbed summary (host kernel 7, 7.3.4+deb13-arm64)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "testbed (host kernel 7, 7.3.4+deb13-arm64): 1 passed, 0 failed, 1 skipped"
            ),
            "{text}"
        );

        let runs = [
            KernelRun {
                name: "6.1".into(),
                release: Some("6.1.0-57-arm64".into()),
                totals,
                elapsed: Duration::from_secs(60),
            },
            KernelRun {
                name: "7".into(),
                release: None,
                totals: Totals::default(),
                elapsed: Duration::from_secs(200),
            },
        ];
        let mut text = Vec::new();
        assert!(!summarise_kernels(&runs, &mut text));
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("  6.1    6.1.0-57-arm64         ok         60.0 s  1 passed"),
            "{text}"
        );
        assert!(
            text.contains("  7      (never ready)          FAILED    200.0 s  0 passed"),
            "{text}"
        );
        assert!(summarise_kernels(&runs[..1], &mut std::io::sink()));
    }

    #[test]
    fn an_abort_marks_the_running_scenario() {
        let mut out = outcome();
        out.feed("@@testbed begin kvm limit=60", Duration::ZERO);
        out.abort("kernel panic".into());
        assert_eq!(
            out.scenarios[0].status,
            ScenarioStatus::Aborted("kernel panic".into())
        );
        assert_eq!(out.scenarios[1].status, ScenarioStatus::NotRun);
    }

    #[test]
    fn summary_fails_on_failed_cases_on_silent_scenarios_and_on_scenarios_not_run() {
        let selected: Vec<_> = crate::scenarios::all().into_iter().take(2).collect();
        let names: Vec<_> = selected.iter().map(|s| (s.name.to_owned(), 1)).collect();
        let mut out = Outcome::new(&names);
        for scenario in &names {
            out.feed(
                &format!("@@testbed begin {} limit=1", scenario.0),
                Duration::ZERO,
            );
            out.feed("test a ... ok", Duration::ZERO);
            out.feed(
                &format!("@@testbed end {} rc=0", scenario.0),
                Duration::ZERO,
            );
        }
        assert!(summarise(&selected, &out, None, &mut std::io::sink()).ok);

        let mut silent = Outcome::new(&names);
        for scenario in &names {
            silent.feed(
                &format!("@@testbed begin {} limit=1", scenario.0),
                Duration::ZERO,
            );
            silent.feed(
                &format!("@@testbed end {} rc=0", scenario.0),
                Duration::ZERO,
            );
        }
        assert!(!summarise(&selected, &silent, None, &mut std::io::sink()).ok);

        let not_run = Outcome::new(&names);
        assert!(!summarise(&selected, &not_run, None, &mut std::io::sink()).ok);
    }
}
