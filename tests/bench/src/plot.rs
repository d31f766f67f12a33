//! Draws the benchmark's SVG: eight panels of medians with min-max whiskers.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::summary::{Devices, Metric, Stats, Subject, Summary, number};

/// The plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters failed; its errors are generic over the backend, so they travel as text.
    #[error("Cannot draw the plot {path}: {message}")]
    Draw {
        /// The SVG file.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
}

const SIZE: (u32, u32) = (1200, 1720);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One series of a panel: its legend, its colour and its figure per category (or vCPU count).
struct Series {
    label: String,
    color: RGBColor,
    stats: Vec<Option<Stats>>,
}

impl Series {
    /// `subject`'s series, in its colour.
    fn of(subject: Subject, stats: Vec<Option<Stats>>) -> Self {
        Self {
            label: subject.label().to_owned(),
            color: color(subject),
            stats,
        }
    }
}

fn color(subject: Subject) -> RGBColor {
    match subject {
        Subject::Ours => RGBColor(31, 119, 180),
        Subject::OursS2idle => RGBColor(255, 127, 14),
        Subject::Qemu => RGBColor(214, 39, 40),
        Subject::Floor => RGBColor(110, 110, 110),
    }
}

/// Ours with the `index`-th set of devices (0: none): darker blues.
fn devices_color(index: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(23, 190, 207),
        RGBColor(44, 62, 140),
        RGBColor(120, 170, 220),
        RGBColor(10, 30, 80),
    ][index % 5]
}

/// Writes the plot of `summary` to `path`.
pub fn draw(summary: &Summary, path: &Path) -> Result<(), PlotError> {
    draw_panels(summary, path).map_err(|message| PlotError::Draw {
        path: path.to_owned(),
        message,
    })
}

fn draw_panels(summary: &Summary, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let date = summary.host.get("date").map_or("", String::as_str);
    let root = root
        .titled(
            &format!("vmm vs QEMU (KVM) inside the emulated arm64 host, {date}"),
            ("sans-serif", 22),
        )
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((4, 2));

    let boot_cpus = summary.cpus(Metric::BootToInit, Subject::Ours);
    let per_cpu = |metric, subject, scale: f64| -> Series {
        let stats = boot_cpus
            .iter()
            .map(|&cpus| {
                summary
                    .stats(metric, subject, cpus)
                    .map(|s| scaled(s, scale))
            })
            .collect();
        Series::of(subject, stats)
    };
    let cpu_names: Vec<String> = boot_cpus.iter().map(|cpus| vcpus(*cpus)).collect();
    bars(
        &panels[0],
        "Boot to init (s)",
        &cpu_names,
        &[
            per_cpu(Metric::BootToInit, Subject::Ours, 1e-3),
            per_cpu(Metric::BootToInit, Subject::Qemu, 1e-3),
        ],
    )?;
    bars(
        &panels[1],
        "VMM memory overhead at init (MiB)",
        &cpu_names,
        &[
            per_cpu(Metric::MemoryOverhead, Subject::Ours, 1.0),
            per_cpu(Metric::MemoryOverhead, Subject::Qemu, 1.0),
        ],
    )?;

    let suspend_cpus = summary.cpus(Metric::Suspend, Subject::Ours);
    let lines_of = |metric, subject| -> Series {
        let stats = suspend_cpus
            .iter()
            .map(|&cpus| summary.stats(metric, subject, cpus))
            .collect();
        Series::of(subject, stats)
    };
    lines(
        &panels[2],
        "Suspend (solid) and resume (dashed) latency, us",
        &suspend_cpus,
        &[
            lines_of(Metric::Suspend, Subject::Ours),
            lines_of(Metric::Suspend, Subject::Floor),
        ],
        &[
            lines_of(Metric::Resume, Subject::Ours),
            lines_of(Metric::Resume, Subject::Floor),
        ],
    )?;

    // QEMU's vCPU count, or ours when a partial run has no QEMU figure.
    let idle_cpus = summary
        .cpus(Metric::IdleCpu, Subject::Qemu)
        .into_iter()
        .chain(
            summary
                .device_sets(Metric::IdleCpu, Subject::Ours)
                .into_iter()
                .flat_map(|devices| summary.cpus_with(Metric::IdleCpu, Subject::Ours, devices)),
        )
        .next()
        .unwrap_or(1);
    let mut idle: Vec<Series> = [Subject::Ours, Subject::OursS2idle, Subject::Qemu]
        .into_iter()
        .map(|subject| {
            Series::of(
                subject,
                vec![summary.stats(Metric::IdleCpu, subject, idle_cpus)],
            )
        })
        .collect();
    for (index, devices) in summary
        .device_sets(Metric::IdleCpu, Subject::Ours)
        .into_iter()
        .enumerate()
    {
        idle.push(Series {
            label: format!("vmm, {devices}"),
            color: devices_color(index + 1),
            stats: vec![summary.stats_with(Metric::IdleCpu, Subject::Ours, idle_cpus, devices)],
        });
    }
    bars(
        &panels[3],
        &format!("Host CPU in 10 s of guest sleep, {} (ms)", vcpus(idle_cpus)),
        &["vmm: deep; --no-suspend and QEMU: s2idle".to_owned()],
        &idle,
    )?;

    // Disk throughput: the sequential figures in MB/s, the random reads in IOPS beside them.
    let disk_cpus = summary
        .cpus_with(Metric::DiskSeqRead, Subject::Ours, Devices::DISK_RUN)
        .first()
        .copied()
        .unwrap_or(1);
    let disk_series =
        |metrics: &[(Metric, &str)]| side_by_side(summary, metrics, disk_cpus, Devices::DISK_RUN);
    let names = |metrics: &[(Metric, &str)]| -> Vec<String> {
        metrics.iter().map(|(_, name)| (*name).to_owned()).collect()
    };
    let (sequential, random) = Metric::DISK.split_at(2);
    let (left, right) = panels[4].split_horizontally(panels[4].dim_in_pixel().0 * 62 / 100);
    bars(
        &left,
        &format!(
            "Disk throughput, {}, MB/s (higher is better)",
            vcpus(disk_cpus)
        ),
        &names(sequential),
        &disk_series(sequential),
    )?;
    // Same colours as on the left: no legend to hide the bars' labels.
    let mut random_series = disk_series(random);
    for series in &mut random_series {
        series.label.clear();
    }
    bars(&right, "Random reads, IOPS", &names(random), &random_series)?;

    // Suspend and resume with devices attached, at the fewest vCPUs that have them.
    let device_sets = summary.device_sets(Metric::Suspend, Subject::Ours);
    let device_cpus = device_sets
        .iter()
        .flat_map(|&devices| summary.cpus_with(Metric::Suspend, Subject::Ours, devices))
        .min()
        .unwrap_or(1);
    let with_devices: Vec<Series> = std::iter::once(Devices::NONE)
        .chain(device_sets)
        .enumerate()
        .map(|(index, devices)| Series {
            label: format!("vmm, {devices}"),
            color: devices_color(index),
            stats: [Metric::Suspend, Metric::Resume]
                .into_iter()
                .map(|metric| summary.stats_with(metric, Subject::Ours, device_cpus, devices))
                .collect(),
        })
        .collect();
    bars(
        &panels[5],
        &format!(
            "Suspend and resume with devices, {}, us",
            vcpus(device_cpus)
        ),
        &["suspend".to_owned(), "resume".to_owned()],
        &with_devices,
    )?;

    // The network: TCP throughput both ways, and the round trips (vsock: ours only).
    let net_cpus = summary
        .cpus_with(Metric::NetTcpGuestToHost, Subject::Ours, Devices::NET_RUN)
        .first()
        .copied()
        .unwrap_or(1);
    let net_series =
        |metrics: &[(Metric, &str)]| side_by_side(summary, metrics, net_cpus, Devices::NET_RUN);
    bars(
        &panels[6],
        &format!(
            "Network throughput, {}, MB/s (higher is better)",
            vcpus(net_cpus)
        ),
        &names(&Metric::NET_THROUGHPUT),
        &net_series(&Metric::NET_THROUGHPUT),
    )?;
    let round_trips = [
        (Metric::NetTcpRrMean, "TCP mean"),
        (Metric::NetTcpRrP99, "TCP p99"),
        (Metric::VsockRrMean, "vsock mean"),
        (Metric::VsockRrP99, "vsock p99"),
    ];
    bars(
        &panels[7],
        &format!(
            "1-byte round trips, {}, us (vsock: vmm only)",
            vcpus(net_cpus)
        ),
        &names(&round_trips),
        &net_series(&round_trips),
    )?;
    root.present().map_err(|e| e.to_string())
}

/// Ours and QEMU's figures for `metrics`, at `cpus` vCPUs with `devices`.
fn side_by_side(
    summary: &Summary,
    metrics: &[(Metric, &str)],
    cpus: u32,
    devices: Devices,
) -> Vec<Series> {
    [Subject::Ours, Subject::Qemu]
        .into_iter()
        .map(|subject| {
            let stats = metrics
                .iter()
                .map(|&(metric, _)| summary.stats_with(metric, subject, cpus, devices))
                .collect();
            Series::of(subject, stats)
        })
        .collect()
}

fn vcpus(cpus: u32) -> String {
    format!("{cpus} vCPU{}", if cpus == 1 { "" } else { "s" })
}

fn scaled(stats: Stats, factor: f64) -> Stats {
    Stats {
        median: stats.median * factor,
        min: stats.min * factor,
        max: stats.max * factor,
        ..stats
    }
}

/// Grouped bars: one group per category, one bar per series, whiskers from min to max.
fn bars(area: &Area, title: &str, categories: &[String], series: &[Series]) -> Result<(), String> {
    let top = series
        .iter()
        .flat_map(|series| series.stats.iter().flatten().map(|s| s.max))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.18;
    let groups = categories.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len().max(1))
        .x_label_formatter(&|x| category(categories, *x))
        .draw()
        .map_err(|e| e.to_string())?;
    let width = 0.8 / series.len().max(1) as f64;
    for (index, series) in series.iter().enumerate() {
        let style = series.color;
        let bars = series
            .stats
            .iter()
            .enumerate()
            .filter_map(|(group, stats)| {
                let left = group as f64 - 0.4 + index as f64 * width;
                stats.map(|s| (left, s))
            });
        let drawn = chart
            .draw_series(bars.clone().flat_map(|(left, s)| {
                let middle = left + width / 2.0;
                let bar = Rectangle::new(
                    [(left + width * 0.08, 0.0), (left + width * 0.92, s.median)],
                    style.filled(),
                );
                let whisker = ErrorBar::new_vertical(
                    middle,
                    s.min,
                    s.median,
                    s.max,
                    BLACK.stroke_width(1),
                    8,
                );
                let label = Text::new(
                    number(s.median),
                    (left + width * 0.1, s.max + top * 0.04),
                    ("sans-serif", 13),
                );
                [bar.into_dyn(), whisker.into_dyn(), label.into_dyn()]
            }))
            .map_err(|e| e.to_string())?;
        if !series.label.is_empty() {
            drawn.label(series.label.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], style.filled())
            });
        }
    }
    if series.iter().all(|series| series.label.is_empty()) {
        return Ok(());
    }
    legend(&mut chart)
}

/// Medians over vCPU counts on a log scale: `solid` series drawn solid, `dashed` dashed.
fn lines(
    area: &Area,
    title: &str,
    cpus: &[u32],
    solid: &[Series],
    dashed: &[Series],
) -> Result<(), String> {
    let all = || {
        solid
            .iter()
            .chain(dashed)
            .flat_map(|series| series.stats.iter().flatten())
    };
    let low = all().map(|s| s.min).fold(f64::INFINITY, f64::min);
    let high = all().map(|s| s.max).fold(0.0, f64::max);
    let (low, high) = if low.is_finite() && high > 0.0 {
        (low.max(0.1) / 2.0, high * 2.0)
    } else {
        (1.0, 10.0)
    };
    let names: Vec<String> = cpus.iter().map(|cpus| vcpus(*cpus)).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(
            -0.5..cpus.len().max(1) as f64 - 0.5,
            (low..high).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(cpus.len().max(1))
        .x_label_formatter(&|x| category(&names, *x))
        .y_label_formatter(&|y| number(*y))
        .draw()
        .map_err(|e| e.to_string())?;
    for (dashes, series) in [(false, solid), (true, dashed)] {
        for series in series {
            let style = series.color.stroke_width(2);
            let points: Vec<(f64, Stats)> = series
                .stats
                .iter()
                .enumerate()
                .filter_map(|(index, s)| s.map(|s| (index as f64, s)))
                .collect();
            let line: Vec<(f64, f64)> = points.iter().map(|(x, s)| (*x, s.median)).collect();
            let drawn = if dashes {
                chart.draw_series(DashedLineSeries::new(line, 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(line, style))
            }
            .map_err(|e| e.to_string())?;
            if !dashes {
                drawn
                    .label(series.label.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], style));
            }
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|(x, s)| ErrorBar::new_vertical(*x, s.min, s.median, s.max, style, 8)),
                )
                .map_err(|e| e.to_string())?;
        }
    }
    legend(&mut chart)
}

fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// The category name at integer positions of a categorical axis, nothing elsewhere.
fn category(names: &[String], x: f64) -> String {
    let index = x.round();
    if (x - index).abs() > 1e-6 || index < 0.0 {
        return String::new();
    }
    names.get(index as usize).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::records;

    #[test]
    fn draws_an_svg_even_with_missing_figures() {
        let dir = std::env::temp_dir().join(format!("testbed-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plot.svg");
        let log = "@@bench boot run=boot vmm=ours cpus=1 round=1 boot_ms=3000 overhead_kb=3072\n\
                   @@bench boot run=boot vmm=qemu cpus=1 round=1 boot_ms=6000 overhead_kb=99000\n\
                   @@bench suspend run=suspend vmm=ours cpus=2 round=1 suspend_us=900\n\
                   @@bench suspend run=suspend vmm=ours cpus=1 round=1 disks=2 rng=on suspend_us=9\n\
                   @@bench idle run=idle vmm=qemu cpus=2 round=1 cpu_ns=4000000 window_ms=10000\n\
                   @@bench idle run=idle vmm=ours cpus=2 round=1 disks=1 rng=on cpu_ns=0 window_ms=10000\n\
                   @@bench disk run=disk vmm=qemu cpus=1 round=1 disks=1 rng=off rc=0 mode=randread ops=9 ns=9\n\
                   @@bench net run=net vmm=ours cpus=1 round=1 disks=0 rng=off test=vsock-rr rc=0 mean_us=90 p99_us=300\n\
                   @@bench net run=net vmm=qemu cpus=1 round=1 disks=0 rng=off test=tcp-guest-to-host rc=0 bytes=9 ns=9\n";
        draw(&Summary::new(&records(log)), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Boot to init"));
        assert!(svg.contains("Disk throughput"));
        assert!(svg.contains("vmm, 1 disk + rng"));
        assert!(svg.contains("vmm, 2 disks + rng"));
        assert!(svg.contains("Network throughput, 1 vCPU"));
        assert!(svg.contains("vsock mean"));
        draw(&Summary::default(), &path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn categories_sit_on_integers() {
        let names = ["a".to_owned(), "b".to_owned()];
        assert_eq!(category(&names, 1.0), "b");
        assert_eq!(category(&names, 0.5), "");
        assert_eq!(category(&names, 2.0), "");
        assert_eq!(category(&names, -1.0), "");
    }
}
