//! `--plot FILE.svg`: the run's latency percentile distribution drawn as the HdrHistogram
//! plotter draws it: x is the percentile on the 1/(1-p) log scale (90%, 99%, 99.9% equally
//! spaced), y the latency in milliseconds. One line per operation; in open loop each
//! operation's service time (from the actual send) is drawn dashed beside its corrected
//! latency (from the intended send). `--plot-with A.hgrm,B.hgrm` overlays earlier runs from
//! the distributions `--hgrm` wrote, so two servers can be compared on one picture.
//!
//! Drawn with `plotters`' SVG backend and none of its font features: labels are SVG `<text>`
//! elements that the viewer renders, so nothing here needs a system font.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::cli::Plan;
use crate::engine::Outcome;
use crate::stats::NS_PER_MS;

/// Percentile ticks per half distance, as the `--hgrm` distribution has them.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Picture size in pixels.
const SIZE: (u32, u32) = (1100, 650);
/// Line colours, told apart also by people with the commonest colour-vision deficiencies
/// (matplotlib's "tab10").
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The plot's command-line options, flattened into [`crate::cli::Args`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PlotArgs {
    /// Draw the latency percentile distribution to FILE (SVG): x the percentile on the
    /// 1/(1-p) log scale, y the latency, one line per operation (open loop: the service time
    /// dashed beside the corrected latency)
    #[arg(long = "plot", value_name = "FILE.svg")]
    pub path: Option<PathBuf>,

    /// Overlay earlier runs on the --plot: distributions written by --hgrm, comma-separated;
    /// each line is named after its file
    #[arg(
        long = "plot-with",
        value_name = "A.hgrm,B.hgrm",
        value_delimiter = ',',
        requires = "path"
    )]
    pub with: Vec<PathBuf>,

    /// Name of this run's lines on the --plot (beside each operation's name)
    #[arg(long = "plot-label", value_name = "TEXT", requires = "path")]
    pub label: Option<String>,

    /// The --plot's latency axis: linear (as the HdrHistogram plotter draws it) or log (for
    /// lines that differ by orders of magnitude)
    #[arg(long = "plot-y", value_enum, default_value_t = YScale::Linear, requires = "path")]
    pub y_scale: YScale,
}

/// The latency axis of a plot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum YScale {
    #[default]
    Linear,
    Log,
}

/// One line on the plot: (quantile, milliseconds) points, quantiles below 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Curve {
    /// The percentile distribution of `h` (nanoseconds), at the quantiles `--hgrm` lists.
    pub fn from_histogram(label: String, h: &Histogram<u64>, dashed: bool) -> Curve {
        let points = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
                .map(|v| {
                    (
                        v.quantile_iterated_to(),
                        v.value_iterated_to() as f64 / NS_PER_MS,
                    )
                })
                .filter(|&(q, _)| q < 1.0)
                .collect()
        };
        Curve {
            label,
            points,
            dashed,
        }
    }

    /// Reads a distribution in HdrHistogram's text format (what `--hgrm` writes; values in
    /// milliseconds), named after the file.
    pub fn read_hgrm(path: &Path) -> anyhow::Result<Curve> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --plot-with {}", path.display()))?;
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        if !text.lines().any(|l| l.trim_start().starts_with("Value")) {
            bail!(
                "--plot-with {}: not an HdrHistogram percentile distribution (as --hgrm writes: \
                 a `Value Percentile TotalCount 1/(1-Percentile)` header, then its rows)",
                path.display()
            );
        }
        // A run that got no replies writes a distribution without rows: nothing to draw.
        Ok(Curve {
            label,
            points: parse_hgrm(&text).with_context(|| format!("--plot-with {}", path.display()))?,
            dashed: false,
        })
    }
}

/// Reads every `--plot-with` file, before the run, so that a bad one fails at once.
pub fn read_overlays(args: &PlotArgs) -> anyhow::Result<Vec<Curve>> {
    args.with.iter().map(|p| Curve::read_hgrm(p)).collect()
}

/// This run's lines: per operation its latency, and in open loop its service time dashed.
pub fn run_curves(plan: &Plan, outcome: &Outcome) -> Vec<Curve> {
    let name = |what: String| match &plan.plot.label {
        Some(label) => format!("{label} {what}"),
        None => what,
    };
    let mut curves = Vec::new();
    for op in plan.mix.ops() {
        let latency = &outcome.total.latency[op.index()];
        if plan.rate.is_some() {
            curves.push(Curve::from_histogram(
                name(format!("{} latency (from intended send)", op.name())),
                latency,
                false,
            ));
            curves.push(Curve::from_histogram(
                name(format!("{} service time (from actual send)", op.name())),
                &outcome.total.service[op.index()],
                true,
            ));
        } else {
            curves.push(Curve::from_histogram(
                name(format!("{} latency", op.name())),
                latency,
                false,
            ));
        }
    }
    curves
}

/// Draws the `--plot` the plan asks for, this run's lines first, then the overlays.
pub fn write(plan: &Plan, outcome: &Outcome, overlays: Vec<Curve>) -> anyhow::Result<()> {
    let Some(path) = &plan.plot.path else {
        return Ok(());
    };
    let mut curves = run_curves(plan, outcome);
    curves.extend(overlays);
    draw(path, &plan.describe(), &curves, plan.plot.y_scale)
}

/// The (quantile, value) rows of an HdrHistogram percentile distribution, quantiles below 1.
fn parse_hgrm(text: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [value, q, _count, ..] => value.parse::<f64>().ok().zip(q.parse::<f64>().ok()),
            _ => None,
        };
        let Some((value, q)) = parsed else {
            bail!("line {}: not a percentile row: {line}", n + 1);
        };
        if !(0.0..=1.0).contains(&q) || !value.is_finite() || value < 0.0 {
            bail!(
                "line {}: percentile {q} or value {value} out of range",
                n + 1
            );
        }
        if q < 1.0 {
            points.push((q, value));
        }
    }
    Ok(points)
}

/// The x of quantile `q`: 1/(1-q).
fn x_of(q: f64) -> f64 {
    1.0 / (1.0 - q)
}

/// The percentile an x of the 1/(1-p) scale stands for, with as many decimals as it needs
/// (10 is 90%, 1000 is 99.9%).
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{p:.decimals$}%")
}

/// A latency in milliseconds with the decimals its magnitude needs.
fn ms_label(y: f64) -> String {
    let decimals = match y.abs() {
        y if y >= 100.0 => 0,
        y if y >= 10.0 => 1,
        y if y >= 1.0 => 2,
        y if y >= 0.1 => 3,
        _ => 4,
    };
    format!("{y:.decimals$}")
}

/// Draws `curves` into the SVG file `path`.
pub fn draw(path: &Path, title: &str, curves: &[Curve], y_scale: YScale) -> anyhow::Result<()> {
    let drawn: Vec<&Curve> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    if drawn.is_empty() {
        bail!("--plot {}: no latencies to draw", path.display());
    }
    let max_x = drawn
        .iter()
        .flat_map(|c| c.points.iter().map(|&(q, _)| x_of(q)))
        .fold(1.0f64, f64::max);
    // Whole decades, at least up to 99.9%.
    let max_x = 10f64.powf(max_x.log10().ceil()).max(1e3);
    let max_y = drawn
        .iter()
        .flat_map(|c| c.points.iter().map(|&(_, v)| v))
        .fold(0.0f64, f64::max);
    let max_y = if max_y > 0.0 { max_y * 1.08 } else { 1.0 };
    // A log axis starts just below the smallest latency above zero (zeros sit on it).
    let min_y = drawn
        .iter()
        .flat_map(|c| c.points.iter().map(|&(_, v)| v))
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let min_y = if min_y.is_finite() {
        min_y * 0.8
    } else {
        max_y / 1e3
    };

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("--plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    // The two axes make charts of different types; the drawing is the same.
    macro_rules! draw_with_y {
        ($y_range:expr, $floor:expr) => {{
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(20)
                .margin_right(50)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d((1.0..max_x).log_scale(), $y_range)
                .map_err(|e| failed(&e))?;
            chart
                .configure_mesh()
                .x_desc("percentile (1/(1-p) scale)")
                .y_desc("latency, ms")
                .x_label_formatter(&|x| percentile_label(*x))
                .y_label_formatter(&|y| ms_label(*y))
                .draw()
                .map_err(|e| failed(&e))?;
            let mut colour = 0;
            for (i, curve) in drawn.iter().enumerate() {
                // A dashed service time takes the colour of the latency drawn just before it.
                if i > 0 && !curve.dashed {
                    colour += 1;
                }
                let style = COLOURS[colour % COLOURS.len()].stroke_width(2);
                let points: Vec<(f64, f64)> = curve
                    .points
                    .iter()
                    .map(|&(q, v)| (x_of(q), v.max($floor)))
                    .collect();
                let label = curve.label.as_str();
                if curve.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points, 8, 5, style))
                        .map_err(|e| failed(&e))?
                        .label(label)
                        .legend(move |(x, y)| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (9, 0)], style)
                                + PathElement::new(vec![(15, 0), (24, 0)], style)
                        });
                } else {
                    chart
                        .draw_series(LineSeries::new(points, style))
                        .map_err(|e| failed(&e))?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
                }
            }
            chart
                .configure_series_labels()
                // Latency rises to the right: the lower right is where the lines are not.
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| failed(&e))?;
        }};
    }
    match y_scale {
        YScale::Linear => draw_with_y!(0.0..max_y, 0.0),
        YScale::Log => draw_with_y!((min_y..max_y * 1.5).log_scale(), min_y),
    }
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::percentile_distribution;
    use crate::stats::new_histogram;

    #[test]
    fn an_hgrm_file_reads_back_as_the_distribution_it_came_from() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.record(us * 1_000).unwrap();
        }
        let text = percentile_distribution(&h, NS_PER_MS);
        let read = parse_hgrm(&text).unwrap();
        let direct = Curve::from_histogram("x".into(), &h, false).points;
        assert_eq!(read.len(), direct.len());
        for ((q1, v1), (q2, v2)) in read.iter().zip(&direct) {
            assert!((q1 - q2).abs() < 1e-9, "{q1} {q2}");
            // --hgrm rounds values to the histogram's 3 significant digits.
            assert!((v1 - v2).abs() <= 0.0005 * v2.max(1.0), "{v1} {v2}");
        }
        assert!(read.iter().all(|&(q, _)| q < 1.0));
        assert!(read.last().unwrap().0 > 0.999);
    }

    #[test]
    fn what_is_not_a_distribution_is_refused() {
        assert!(parse_hgrm("1.0 0.5 10 2.0\nnonsense here\n").is_err());
        assert!(parse_hgrm("1.0 1.5 10\n").is_err());
        assert!(parse_hgrm("# only comments\n").unwrap().is_empty());
        // An empty run's distribution reads as an empty line; a file that is none is refused.
        let dir = std::env::temp_dir().join(format!("percore-hgrm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.hgrm");
        std::fs::write(&empty, percentile_distribution(&new_histogram(), NS_PER_MS)).unwrap();
        assert!(Curve::read_hgrm(&empty).unwrap().points.is_empty());
        let other = dir.join("other.hgrm");
        std::fs::write(&other, "percore listening on 127.0.0.1:1\n").unwrap();
        assert!(Curve::read_hgrm(&other).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percentiles_are_labelled_as_the_plotter_does() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn a_plot_is_an_svg_with_every_line_named() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1_000).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("percore-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let curves = [
            Curve::from_histogram("get latency".into(), &h, false),
            Curve::from_histogram("get service".into(), &h, true),
        ];
        draw(&path, "test", &curves, YScale::Linear).unwrap();
        let linear = std::fs::read_to_string(&path).unwrap();
        draw(&path, "test", &curves, YScale::Log).unwrap();
        assert_ne!(std::fs::read_to_string(&path).unwrap(), linear);
        draw(&path, "test", &curves, YScale::Linear).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in ["get latency", "get service", "99.9%", "latency, ms"] {
            assert!(svg.contains(text), "no {text} in the SVG");
        }
        assert!(draw(
            Path::new("/nonexistent/dir/p.svg"),
            "t",
            &curves,
            YScale::Log
        )
        .is_err());
        assert!(draw(Path::new("x.svg"), "t", &[], YScale::Linear).is_err());
    }
}
