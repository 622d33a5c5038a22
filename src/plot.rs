//! Learning curves as a PNG (`vlal report --plot`): test accuracy (mean over seeds, with a
//! ± std band) against the number of labels, one line per strategy, one panel per pipeline ×
//! trainer, drawn with plotters into a buffer and saved with `image` (temporary file, renamed).
//! Text uses DejaVu Sans (Debian fonts-dejavu-core) or the TTF file named by `VLAL_FONT`.

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One group of the summary: a (pipeline, trainer, strategy, round) over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub pipeline: String,
    pub trainer: String,
    pub strategy: String,
    pub round: i64,
    /// Mean test accuracy over the group's rows.
    pub acc_mean: f64,
    /// Sample standard deviation of the accuracy (0 for a single row).
    pub acc_std: f64,
    /// Distinct seeds.
    pub seeds: usize,
    /// Mean number of labels.
    pub n_labeled: f64,
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// (labels, mean, std) points of one strategy, in round order.
type Curve = Vec<(f64, f64, f64)>;

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("VLAL_FONT").unwrap_or_else(|_| FONT.to_string());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!("{path}: no font for the plot's text ({e}); install fonts-dejavu-core or set VLAL_FONT")
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The summary of `report::summary` as curves per (pipeline, trainer) and strategy.
fn curves(groups: &[Group]) -> BTreeMap<(String, String), BTreeMap<String, Curve>> {
    let mut out: BTreeMap<(String, String), BTreeMap<String, Vec<(i64, f64, f64, f64)>>> =
        BTreeMap::new();
    // a round without test labels has no accuracy to draw (a pool without ground truth)
    for g in groups.iter().filter(|g| g.acc_mean.is_finite()) {
        out.entry((g.pipeline.clone(), g.trainer.clone()))
            .or_default()
            .entry(g.strategy.clone())
            .or_default()
            .push((g.round, g.n_labeled, g.acc_mean, g.acc_std));
    }
    out.into_iter()
        .map(|(k, v)| {
            let v = v
                .into_iter()
                .map(|(s, mut pts)| {
                    pts.sort_by_key(|p| p.0);
                    (s, pts.into_iter().map(|p| (p.1, p.2, p.3)).collect())
                })
                .collect();
            (k, v)
        })
        .collect()
}

/// Draw the curves of a `report::summary` into the PNG `path`.
pub fn learning_curves(groups: &[Group], path: &Path) -> Result<()> {
    let panels = curves(groups);
    if panels.is_empty() {
        bail!(
            "{}: no results to plot (no round has a test accuracy)",
            path.display()
        );
    }
    register_font()?;
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (640 * cols as u32, 440 * rows as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    draw(&panels, &mut buf, (w, h), (rows, cols)).map_err(|e| anyhow!("plotting: {e}"))?;
    let img = image::RgbImage::from_raw(w, h, buf).expect("w × h × 3 bytes");
    let tmp = path.with_extension("png.tmp");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot move into place", path.display()))
}

fn draw(
    panels: &BTreeMap<(String, String), BTreeMap<String, Curve>>,
    buf: &mut [u8],
    size: (u32, u32),
    grid: (usize, usize),
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, ((pipeline, trainer), series)) in root.split_evenly(grid).iter().zip(panels) {
        let pts = series.values().flatten();
        let (x0, x1) = pts
            .clone()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = pts.fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(p.1 - p.2), b.max(p.1 + p.2))
        });
        let pad = ((y1 - y0) * 0.05).max(0.01);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{pipeline} · {trainer}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(
                x0..x1.max(x0 + 1.0),
                (y0 - pad).max(0.0)..(y1 + pad).min(1.0),
            )?;
        chart
            .configure_mesh()
            .x_desc("labels")
            .y_desc("test accuracy")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (strategy, c)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let band: Vec<(f64, f64)> = c
                .iter()
                .map(|p| (p.0, p.1 + p.2))
                .chain(c.iter().rev().map(|p| (p.0, p.1 - p.2)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.12))))?;
            chart
                .draw_series(LineSeries::new(
                    c.iter().map(|p| (p.0, p.1)),
                    colour.stroke_width(2),
                ))?
                .label(strategy.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                c.iter()
                    .map(|p| Circle::new((p.0, p.1), 3, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_panel_per_pipeline_and_trainer() {
        if std::env::var("VLAL_FONT").is_err() && !Path::new(FONT).exists() {
            eprintln!("skipped: no {FONT}");
            return;
        }
        let g = |trainer: &str, strategy: &str, round: i64, acc_mean: f64, acc_std: f64| Group {
            pipeline: "p".into(),
            trainer: trainer.into(),
            strategy: strategy.into(),
            round,
            acc_mean,
            acc_std,
            seeds: 2,
            n_labeled: 10.0 * (round + 1) as f64,
        };
        let groups = [
            g("linear", "random", 0, 0.5, 0.02),
            g("linear", "random", 1, 0.6, 0.01),
            g("linear", "entropy", 0, 0.5, 0.02),
            g("linear", "entropy", 1, 0.7, 0.03),
            g("dho", "random", 0, 0.55, 0.0),
            g("dho", "random", 1, 0.65, 0.01),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        learning_curves(&groups, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1280, 440));
        // lines in the strategy colours were drawn
        let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        let orange = img.pixels().filter(|p| p.0 == [255, 127, 14]).count();
        assert!(blue > 100 && orange > 100, "{blue} {orange}");
        assert!(!dir.path().join("curves.png.tmp").exists());
    }
}
