//! Turns the records of a run into figures (median, min and max of each measurement), the
//! side-by-side table, the goals and the JSON results.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::parse::Record;

/// Who a figure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// Our `vmm`, offering deep suspend.
    Ours,
    /// Our `vmm --no-suspend`: the guest sleeps in s2idle.
    OursS2idle,
    /// QEMU with KVM (s2idle only: it does not enable KVM's SYSTEM_SUSPEND exits).
    Qemu,
    /// `suspend_floor`: the bare ioctl sequence of a suspend cycle.
    Floor,
}

impl Subject {
    fn from_tag(tag: &str) -> Option<Self> {
        Some(match tag {
            "ours" => Self::Ours,
            "ours-s2idle" => Self::OursS2idle,
            "qemu" => Self::Qemu,
            "floor" => Self::Floor,
            _ => return None,
        })
    }

    /// Its name in the JSON and the scenario's lines.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::OursS2idle => "ours-s2idle",
            Self::Qemu => "qemu",
            Self::Floor => "floor",
        }
    }

    /// Its name in the table and the plot.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "vmm",
            Self::OursS2idle => "vmm --no-suspend",
            Self::Qemu => "QEMU",
            Self::Floor => "ioctl floor",
        }
    }
}

/// What a figure measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Process start to the guest init's marker on the serial console, timed from outside.
    BootToInit,
    /// The same as our boot timer logs it (`Guest boot time: N us since vmm start`).
    BootTimer,
    /// Rss of the VMM process minus its guest-RAM mappings, at the init marker.
    MemoryOverhead,
    /// Suspend exit to the vCPU being SUSPENDED.
    Suspend,
    /// Wakeup exit to the vCPU being ready to re-enter the guest.
    Resume,
    /// The guest's `rtcwake -m mem -s 1` round trip beyond its alarm. util-linux sets the
    /// alarm at the RTC's second + 1 + 1 and the guest starts right after a tick, so the
    /// alarm is 2 s away: what is left is the guest's and the VMM's suspend and resume work.
    RtcwakeTrip,
    /// Host CPU time of the VMM process over 10 s of guest sleep.
    IdleCpu,
}

impl Metric {
    const ALL: [Self; 7] = [
        Self::BootToInit,
        Self::BootTimer,
        Self::MemoryOverhead,
        Self::Suspend,
        Self::Resume,
        Self::RtcwakeTrip,
        Self::IdleCpu,
    ];

    /// Its key in the JSON.
    pub fn id(self) -> &'static str {
        match self {
            Self::BootToInit => "boot_to_init",
            Self::BootTimer => "boot_timer",
            Self::MemoryOverhead => "memory_overhead",
            Self::Suspend => "suspend_latency",
            Self::Resume => "resume_latency",
            Self::RtcwakeTrip => "rtcwake_s1_round_trip_minus_2s_alarm",
            Self::IdleCpu => "host_cpu_per_10s_of_guest_sleep",
        }
    }

    /// Its unit.
    pub fn unit(self) -> &'static str {
        match self {
            Self::BootToInit | Self::BootTimer | Self::RtcwakeTrip | Self::IdleCpu => "ms",
            Self::MemoryOverhead => "MiB",
            Self::Suspend | Self::Resume => "us",
        }
    }

    /// The value `record` gives for this metric, if it measures it.
    fn value(self, record: &Record) -> Option<f64> {
        let boot_run = record.kind == "boot" && record.is("run", "boot");
        match self {
            Self::BootToInit if boot_run => record.number("boot_ms"),
            Self::BootTimer if boot_run => Some(record.number("timer_us")? / 1e3),
            Self::MemoryOverhead if boot_run => Some(record.number("overhead_kb")? / 1024.0),
            Self::Suspend if record.kind == "suspend" => record.number("suspend_us"),
            Self::Suspend if record.kind == "floor" => Some(record.number("suspend_ns")? / 1e3),
            Self::Resume if record.kind == "suspend" => record.number("resume_us"),
            Self::Resume if record.kind == "floor" => Some(record.number("resume_ns")? / 1e3),
            Self::RtcwakeTrip if record.kind == "trip" && record.is("rc", "0") => {
                Some((record.number("t1")? - record.number("t0")?) * 1e3 - 2e3)
            }
            // A window in which our guest was seen awake does not measure sleep.
            Self::IdleCpu if record.kind == "idle" && !record.is("asleep", "no") => {
                let cpu_ms = record.number("cpu_ns")? / 1e6;
                Some(cpu_ms * 10_000.0 / record.number("window_ms")?.max(1.0))
            }
            _ => None,
        }
    }
}

/// Median, minimum and maximum of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// How many samples.
    pub n: usize,
    /// Their median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Stats {
    /// The statistics of `samples`, or `None` for none.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self {
            n,
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// Every figure of a run, with what the run says about itself.
#[derive(Debug, Default)]
pub struct Summary {
    /// Samples by metric, subject and vCPU count.
    pub samples: BTreeMap<(Metric, Subject, u32), Vec<f64>>,
    /// The emulated host's `@@bench host` line.
    pub host: BTreeMap<String, String>,
    /// The plan the scenario ran (`@@bench plan`).
    pub plan: BTreeMap<String, String>,
    /// Runs that did not get where they should have.
    pub failures: usize,
}

/// One line of the side-by-side table.
#[derive(Debug)]
pub struct Row {
    /// What it shows, with its unit.
    pub what: String,
    /// vCPUs.
    pub cpus: u32,
    /// Our figure.
    pub ours: Option<Stats>,
    /// The figure it is compared with, if any.
    pub peer: Option<Stats>,
}

impl Row {
    /// Ours divided by the peer's, medians.
    pub fn ratio(&self) -> Option<f64> {
        let (ours, peer) = (self.ours?, self.peer?);
        (peer.median > 0.0).then(|| ours.median / peer.median)
    }
}

/// A goal of the benchmark issue, judged on this run.
#[derive(Debug)]
pub struct Goal {
    /// The goal as stated.
    pub goal: &'static str,
    /// The figures it was judged on.
    pub measured: String,
    /// `None` when the run lacks the figures.
    pub met: Option<bool>,
}

impl Summary {
    /// Sorts `records` into figures.
    pub fn new(records: &[Record]) -> Self {
        let mut summary = Self::default();
        for record in records {
            match record.kind.as_str() {
                "host" => summary.host = record.fields.clone(),
                "plan" => summary.plan = record.fields.clone(),
                "fail" => summary.failures += 1,
                _ => {}
            }
            let (Some(subject), Some(cpus)) = (
                record.get("vmm").and_then(Subject::from_tag),
                record.number("cpus"),
            ) else {
                continue;
            };
            for metric in Metric::ALL {
                if let Some(value) = metric.value(record) {
                    summary
                        .samples
                        .entry((metric, subject, cpus as u32))
                        .or_default()
                        .push(value);
                }
            }
        }
        summary
    }

    /// The statistics of one figure.
    pub fn stats(&self, metric: Metric, subject: Subject, cpus: u32) -> Option<Stats> {
        Stats::of(self.samples.get(&(metric, subject, cpus))?)
    }

    /// The vCPU counts `subject` has `metric` figures for.
    pub fn cpus(&self, metric: Metric, subject: Subject) -> Vec<u32> {
        self.samples
            .keys()
            .filter(|(m, s, _)| *m == metric && *s == subject)
            .map(|&(_, _, cpus)| cpus)
            .collect()
    }

    /// Median suspend plus median resume, ours or the floor's, at `cpus`.
    pub fn cycle_median(&self, subject: Subject, cpus: u32) -> Option<f64> {
        Some(
            self.stats(Metric::Suspend, subject, cpus)?.median
                + self.stats(Metric::Resume, subject, cpus)?.median,
        )
    }

    /// The side-by-side table.
    pub fn rows(&self) -> Vec<Row> {
        use Subject::*;
        let specs: [(&str, Metric, Subject, Option<Subject>); 9] = [
            (
                "boot to init, ms (vs QEMU)",
                Metric::BootToInit,
                Ours,
                Some(Qemu),
            ),
            ("boot timer's own figure, ms", Metric::BootTimer, Ours, None),
            (
                "VMM memory overhead, MiB (vs QEMU)",
                Metric::MemoryOverhead,
                Ours,
                Some(Qemu),
            ),
            (
                "suspend latency, us (vs ioctl floor)",
                Metric::Suspend,
                Ours,
                Some(Floor),
            ),
            (
                "resume latency, us (vs ioctl floor)",
                Metric::Resume,
                Ours,
                Some(Floor),
            ),
            (
                "rtcwake -s 1 round trip - its 2 s alarm, deep, ms",
                Metric::RtcwakeTrip,
                Ours,
                None,
            ),
            (
                "rtcwake -s 1 round trip - its 2 s alarm, s2idle, ms (vs QEMU s2idle)",
                Metric::RtcwakeTrip,
                OursS2idle,
                Some(Qemu),
            ),
            (
                "host CPU in 10 s of guest sleep, deep, ms (vs QEMU s2idle)",
                Metric::IdleCpu,
                Ours,
                Some(Qemu),
            ),
            (
                "host CPU in 10 s of guest sleep, s2idle, ms (vs QEMU s2idle)",
                Metric::IdleCpu,
                OursS2idle,
                Some(Qemu),
            ),
        ];
        let mut rows = Vec::new();
        for (what, metric, ours, peer) in specs {
            let mut cpus = self.cpus(metric, ours);
            if let Some(peer) = peer {
                cpus.extend(self.cpus(metric, peer));
            }
            cpus.sort_unstable();
            cpus.dedup();
            for cpus in cpus {
                rows.push(Row {
                    what: what.to_owned(),
                    cpus,
                    ours: self.stats(metric, ours, cpus),
                    peer: peer.and_then(|peer| self.stats(metric, peer, cpus)),
                });
            }
        }
        rows
    }

    /// The goals, judged on this run.
    pub fn goals(&self) -> Vec<Goal> {
        use Subject::*;
        let mut goals = Vec::new();

        let boot: Vec<_> = self
            .cpus(Metric::BootToInit, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.stats(Metric::BootToInit, Ours, cpus)?.median;
                let qemu = self.stats(Metric::BootToInit, Qemu, cpus)?.median;
                Some((cpus, ours / qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "boot to init: ours <= 0.7 x QEMU",
            measured: list(&boot, |(cpus, ratio)| format!("{ratio:.2} at {cpus} vCPU")),
            met: judge(&boot, |(_, ratio)| *ratio <= 0.7),
        });

        let memory: Vec<_> = self
            .cpus(Metric::MemoryOverhead, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.stats(Metric::MemoryOverhead, Ours, cpus)?.median;
                let qemu = self.stats(Metric::MemoryOverhead, Qemu, cpus)?.median;
                Some((cpus, ours, ours / qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "memory overhead: ours <= 0.1 x QEMU and < 5 MiB",
            measured: list(&memory, |(cpus, ours, ratio)| {
                format!("{ours:.2} MiB, {ratio:.3} x QEMU at {cpus} vCPU")
            }),
            met: judge(&memory, |(_, ours, ratio)| *ours < 5.0 && *ratio <= 0.1),
        });

        let cycles: Vec<_> = self
            .cpus(Metric::Suspend, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.cycle_median(Ours, cpus)?;
                Some((cpus, ours, ours / self.cycle_median(Floor, cpus)?))
            })
            .collect();
        goals.push(Goal {
            goal: "suspend + resume (VMM side): <= 2 x the ioctl floor",
            measured: list(&cycles, |(cpus, _, ratio)| {
                format!("{ratio:.1} x at {cpus} vCPU")
            }),
            met: judge(&cycles, |(_, _, ratio)| *ratio <= 2.0),
        });
        let base = cycles.iter().find(|(cpus, _, _)| *cpus == 1).map(|c| c.1);
        let growth: Vec<_> = cycles
            .iter()
            .filter(|(cpus, _, _)| *cpus > 1)
            .filter_map(|&(cpus, ours, _)| Some((cpus, ours / base?)))
            .collect();
        goals.push(Goal {
            goal: "suspend + resume grows no worse than linearly with vCPUs",
            measured: list(&growth, |(cpus, growth)| {
                format!("{growth:.2} x the 1-vCPU figure at {cpus} vCPUs")
            }),
            met: judge(&growth, |(cpus, growth)| *growth <= f64::from(*cpus)),
        });

        let idle: Vec<_> = self
            .cpus(Metric::IdleCpu, Ours)
            .into_iter()
            .filter_map(|cpus| {
                let ours = self.stats(Metric::IdleCpu, Ours, cpus)?.median;
                let qemu = self.stats(Metric::IdleCpu, Qemu, cpus)?.median;
                Some((cpus, ours, qemu))
            })
            .collect();
        goals.push(Goal {
            goal: "host CPU in 10 s of sleep: ours (deep) <= 0.1 x QEMU (s2idle)",
            measured: list(&idle, |(cpus, ours, qemu)| {
                format!("{ours:.1} ms vs {qemu:.1} ms at {cpus} vCPUs")
            }),
            met: judge(&idle, |(_, ours, qemu)| *ours <= 0.1 * qemu),
        });
        goals
    }

    /// The table and the goals as Markdown.
    pub fn markdown(&self) -> String {
        let mut text = String::from(
            "| figure | vCPUs | vmm: median [min-max] (n) | peer: median [min-max] (n) | vmm / peer |\n\
             | --- | --- | --- | --- | --- |\n",
        );
        for row in self.rows() {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} |",
                row.what,
                row.cpus,
                cell(row.ours),
                cell(row.peer),
                row.ratio()
                    .map_or("-".into(), |ratio| format!("{ratio:.2}"))
            );
        }
        let mut cycles = String::new();
        for cpus in self.cpus(Metric::Suspend, Subject::Ours) {
            if let (Some(ours), Some(floor)) = (
                self.cycle_median(Subject::Ours, cpus),
                self.cycle_median(Subject::Floor, cpus),
            ) {
                let _ = write!(
                    cycles,
                    "{}{cpus} vCPU: {} us vs {} us ({:.1} x)",
                    if cycles.is_empty() { "" } else { "; " },
                    number(ours),
                    number(floor),
                    ours / floor
                );
            }
        }
        if !cycles.is_empty() {
            let _ = writeln!(
                text,
                "\nSuspend + resume, sum of the medians, vmm vs ioctl floor: {cycles}."
            );
        }
        text.push('\n');
        for goal in self.goals() {
            let verdict = match goal.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "no data",
            };
            let _ = writeln!(text, "- {}: **{verdict}** ({})", goal.goal, goal.measured);
        }
        text
    }

    /// Everything as JSON, for `bench/results.json`.
    pub fn json(&self, machine: &str) -> Value {
        let figures: Vec<Value> = self
            .samples
            .iter()
            .filter_map(|(&(metric, subject, cpus), samples)| {
                let stats = Stats::of(samples)?;
                Some(json!({
                    "figure": metric.id(),
                    "vmm": subject.tag(),
                    "cpus": cpus,
                    "unit": metric.unit(),
                    "n": stats.n,
                    "median": round(stats.median),
                    "min": round(stats.min),
                    "max": round(stats.max),
                    "samples": samples.iter().map(|&value| round(value)).collect::<Vec<_>>(),
                }))
            })
            .collect();
        let goals: Vec<Value> = self
            .goals()
            .into_iter()
            .map(|goal| json!({ "goal": goal.goal, "measured": goal.measured, "met": goal.met }))
            .collect();
        json!({
            "date": self.host.get("date"),
            "machine": machine,
            "emulated_host": { "kernel": self.host.get("kernel"), "cpus": self.host.get("cpus") },
            "qemu": self.host.get("qemu"),
            "plan": self.plan,
            "failed_runs": self.failures,
            "figures": figures,
            "goals": goals,
        })
    }
}

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return "no figures".into();
    }
    items.iter().map(show).collect::<Vec<_>>().join("; ")
}

fn judge<T>(items: &[T], ok: impl Fn(&T) -> bool) -> Option<bool> {
    (!items.is_empty()).then(|| items.iter().all(ok))
}

fn cell(stats: Option<Stats>) -> String {
    stats.map_or("-".into(), |s| {
        format!(
            "{} [{}-{}] ({})",
            number(s.median),
            number(s.min),
            number(s.max),
            s.n
        )
    })
}

/// A figure with the decimals its size deserves.
pub fn number(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Three decimals are plenty in the JSON.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::parse::records;
    use super::*;

    const LOG: &str = "\
@@bench host date=2026-11-25T03:00:00Z kernel=6.1.0-56-arm64 cpus=2 qemu=1:7.2
@@bench plan rounds=2
@@bench boot run=boot vmm=ours cpus=1 round=1 boot_ms=3000 rss_kb=9000 guest_rss_kb=6000 overhead_kb=3072 timer_us=2950000
@@bench boot run=boot vmm=ours cpus=1 round=2 boot_ms=3200 overhead_kb=3072 timer_us=3150000
@@bench boot run=boot vmm=qemu cpus=1 round=1 boot_ms=6000 overhead_kb=102400
@@bench boot run=boot vmm=qemu cpus=1 round=2 boot_ms=6400 overhead_kb=102400
@@bench boot run=idle vmm=ours cpus=2 round=1 boot_ms=99999 overhead_kb=1
@@bench suspend run=suspend vmm=ours cpus=1 round=1 suspend_us=100
@@bench suspend run=suspend vmm=ours cpus=1 round=1 resume_us=50
@@bench suspend run=suspend vmm=ours cpus=4 round=1 suspend_us=200
@@bench suspend run=suspend vmm=ours cpus=4 round=1 resume_us=100
@@bench floor run=floor vmm=floor round=1 cpus=1 cycle=1 suspend_ns=40000 resume_ns=35000
@@bench floor run=floor vmm=floor round=1 cpus=4 cycle=1 suspend_ns=100000 resume_ns=50000
@@bench trip run=suspend vmm=ours cpus=1 round=1 cycle=1 rc=0 t0=10.00 t1=12.25
@@bench trip run=idle vmm=qemu cpus=2 round=1 cycle=1 rc=1 t0=10.00 t1=10.50
@@bench idle run=idle vmm=ours cpus=2 round=1 cpu_ns=2000000 window_ms=10000 asleep=yes
@@bench idle run=idle vmm=ours cpus=2 round=2 cpu_ns=9000000000 window_ms=10000 asleep=no
@@bench idle run=idle vmm=qemu cpus=2 round=1 cpu_ns=400000000 window_ms=20000 asleep=unknown
@@bench fail run=boot vmm=qemu cpus=4 round=2 reached=none
";

    #[test]
    fn stats_take_the_middle_of_sorted_samples() {
        let odd = Stats::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((odd.n, odd.median, odd.min, odd.max), (3, 3.0, 1.0, 5.0));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn sorts_records_into_figures() {
        let summary = Summary::new(&records(LOG));
        let boot = summary.stats(Metric::BootToInit, Subject::Ours, 1).unwrap();
        // Only boot runs count: the idle run's marker is not a boot figure.
        assert_eq!((boot.n, boot.median), (2, 3100.0));
        assert_eq!(summary.cpus(Metric::BootToInit, Subject::Ours), [1]);
        let timer = summary.stats(Metric::BootTimer, Subject::Ours, 1).unwrap();
        assert_eq!(timer.median, 3050.0);
        let memory = summary
            .stats(Metric::MemoryOverhead, Subject::Qemu, 1)
            .unwrap();
        assert_eq!(memory.median, 100.0);
        assert_eq!(summary.cycle_median(Subject::Ours, 1), Some(150.0));
        assert_eq!(summary.cycle_median(Subject::Floor, 1), Some(75.0));
        let trip = summary
            .stats(Metric::RtcwakeTrip, Subject::Ours, 1)
            .unwrap();
        assert!((trip.median - 250.0).abs() < 1e-9);
        // A failed rtcwake is no round trip, and an awake window is no idle figure.
        assert_eq!(summary.stats(Metric::RtcwakeTrip, Subject::Qemu, 2), None);
        let idle = summary.stats(Metric::IdleCpu, Subject::Ours, 2).unwrap();
        assert_eq!((idle.n, idle.median), (1, 2.0));
        // Normalised to 10 s.
        assert_eq!(
            summary
                .stats(Metric::IdleCpu, Subject::Qemu, 2)
                .unwrap()
                .median,
            200.0
        );
        assert_eq!(summary.failures, 1);
        assert_eq!(summary.host["kernel"], "6.1.0-56-arm64");
    }

    #[test]
    fn judges_the_goals() {
        let goals = Summary::new(&records(LOG)).goals();
        let met: Vec<_> = goals.iter().map(|goal| goal.met).collect();
        // Boot 0.5 x, memory 3 MiB and 0.03 x, cycles 2 x the floor, 2 x the 1-vCPU cycle at
        // 4 vCPUs, idle 2 ms vs 200 ms.
        assert_eq!(
            met,
            [Some(true), Some(true), Some(true), Some(true), Some(true)]
        );
        let empty = Summary::new(&[]).goals();
        assert!(empty.iter().all(|goal| goal.met.is_none()));
    }

    #[test]
    fn table_and_json_carry_every_figure() {
        let summary = Summary::new(&records(LOG));
        let table = summary.markdown();
        assert!(table.contains("| boot to init, ms (vs QEMU) | 1 | 3100 [3000-3200] (2) | 6200 [6000-6400] (2) | 0.50 |"));
        assert!(table.contains("1 vCPU: 150 us vs 75.0 us (2.0 x)"));
        assert!(table.contains("**met**"));
        let json = summary.json("test machine");
        assert_eq!(json["date"], "2026-11-25T03:00:00Z");
        assert_eq!(json["failed_runs"], 1);
        let figures = json["figures"].as_array().unwrap();
        assert!(
            figures
                .iter()
                .any(|figure| figure["figure"] == "boot_to_init"
                    && figure["vmm"] == "qemu"
                    && figure["median"] == 6200.0)
        );
    }
}
