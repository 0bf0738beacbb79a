//! Learning-curve plots (PNG and SVG): one panel per metric, training vs validation.

use super::{Callback, CallbackState, History, Logs};
use crate::model::Model;
use losskit::{Error, Result};
use losskit_tensor::npy::write_replacing;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Width of one panel in pixels; a plot with `n` metrics is `n · PANEL_WIDTH` wide.
pub const PANEL_WIDTH: u32 = 480;
/// Height of the plot in pixels.
pub const PANEL_HEIGHT: u32 = 360;

static FONT: Once = Once::new();

/// Registers the bundled DejaVu Sans (so plots need no system fonts).
fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        // A font that fails to load only loses the text, never the plot.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// The metrics to draw: every log name without its `val_` prefix, `loss` first.
fn panels(history: &History) -> Vec<String> {
    let mut names: Vec<String> =
        history.history.keys().map(|k| k.strip_prefix("val_").unwrap_or(k).to_string()).collect();
    names.sort_by_key(|n| (n != "loss", n.clone()));
    names.dedup();
    names
}

/// One curve: its legend label, colour and points.
type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path.display().to_string(), format!("cannot draw the plot: {e}"))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    history: &History,
    names: &[String],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, names.len().max(1)));
    let epochs: Vec<f64> = history.epochs.iter().map(|&e| e as f64 + 1.0).collect();
    let x_max = epochs.last().copied().unwrap_or(1.0).max(2.0);
    let x_min = epochs.first().copied().unwrap_or(1.0).min(x_max - 1.0);
    for (area, name) in areas.iter().zip(names) {
        let series: Vec<Curve> = [
            ("training", name.clone(), RGBColor(31, 119, 180)),
            ("validation", format!("val_{name}"), RGBColor(255, 127, 14)),
        ]
        .into_iter()
        .filter_map(|(label, key, color)| {
            history.get(&key).map(|v| {
                (label, color, epochs.iter().copied().zip(v.iter().copied()).filter(|(_, y)| y.is_finite()).collect())
            })
        })
        .collect();
        let ys = series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, (lo - pad)..(hi + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(epoch_tick_count(x_min, x_max))
            .x_label_formatter(&|x| epoch_tick(*x))
            .x_desc("epoch")
            .y_desc(name.as_str())
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (label, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// An epoch tick's label: whole epochs as integers (`5`, not `5.0`); ticks between epochs get
/// no label.
fn epoch_tick(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

/// How many x ticks to ask for: one per epoch up to 11, so short runs get whole epochs only.
fn epoch_tick_count(x_min: f64, x_max: f64) -> usize {
    ((x_max - x_min).round() as usize + 1).clamp(2, 11)
}

/// Draws `history` (one panel per metric, training and validation curves, epochs on x) to a
/// PNG and/or an SVG file, each written through a temporary file and a rename. Returns the
/// number of panels; the PNG is `panels · PANEL_WIDTH × PANEL_HEIGHT` pixels.
pub fn plot_history(history: &History, png: Option<&Path>, svg: Option<&Path>) -> Result<usize> {
    register_font();
    let names = panels(history);
    let (w, h) = (PANEL_WIDTH * names.len().max(1) as u32, PANEL_HEIGHT);
    if let Some(path) = png {
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            draw(&root, history, &names).map_err(|e| err(path, e))?;
        }
        write_replacing(path, false, |out| {
            let mut enc = png::Encoder::new(out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            // Written after every epoch: fast compression (the default made deflate ~10% of `losskit fit`).
            enc.set_compression(png::Compression::Fast);
            let mut writer = enc.write_header().map_err(std::io::Error::other)?;
            writer.write_image_data(&buf).map_err(std::io::Error::other)?;
            writer.finish().map_err(std::io::Error::other)
        })?;
    }
    if let Some(path) = svg {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
            draw(&root, history, &names).map_err(|e| err(path, e))?;
        }
        write_replacing(path, false, |out| out.write_all(text.as_bytes()))?;
    }
    Ok(names.len())
}

/// Redraws `<dir>/curves.png` and `<dir>/curves.svg` from the logs so far: after the first
/// epoch, then after an epoch when at least [`PlotLearningCurves::refresh_every`] (1 s by
/// default) has passed since the last drawing, and at the end of training (so the final files
/// hold every epoch). Drawing both files takes ~10 ms, more than a whole epoch of a small model.
pub struct PlotLearningCurves {
    dir: PathBuf,
    history: History,
    every: Duration,
    drawn: Option<Instant>,
    pending: bool,
}

impl PlotLearningCurves {
    /// Plots written into `dir` (created if needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PlotLearningCurves {
            dir: dir.into(),
            history: History::default(),
            every: Duration::from_secs(1),
            drawn: None,
            pending: false,
        }
    }
    /// The least time between two drawings during training (`Duration::ZERO`: after every
    /// epoch).
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }
    fn draw(&mut self) -> Result<()> {
        plot_history(&self.history, Some(&self.png_path()), Some(&self.svg_path()))?;
        self.drawn = Some(Instant::now());
        self.pending = false;
        Ok(())
    }
    /// The PNG's path.
    pub fn png_path(&self) -> PathBuf {
        self.dir.join("curves.png")
    }
    /// The SVG's path.
    pub fn svg_path(&self) -> PathBuf {
        self.dir.join("curves.svg")
    }
}

impl Callback for PlotLearningCurves {
    fn on_train_begin(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        self.history = History::default();
        (self.drawn, self.pending) = (None, false);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(self.dir.display().to_string(), "cannot create", e))
    }
    fn on_epoch_end(&mut self, epoch: usize, logs: &Logs, _model: &mut Model) -> Result<()> {
        self.history.push(epoch, logs);
        self.pending = true;
        match self.drawn {
            Some(t) if t.elapsed() < self.every => Ok(()),
            _ => self.draw(),
        }
    }
    fn on_train_end(&mut self, _logs: &Logs, _model: &mut Model) -> Result<()> {
        if self.pending {
            self.draw()?;
        }
        Ok(())
    }
    fn state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("PlotLearningCurves");
        super::backup::set_history(&mut s, "history", &self.history);
        Some(s)
    }
    fn restore_state(&mut self, s: CallbackState) -> Result<()> {
        self.history = super::backup::get_history(&s, "history")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{epoch_tick, epoch_tick_count};

    #[test]
    fn epoch_ticks_are_whole_numbers() {
        assert_eq!(epoch_tick(5.0), "5");
        assert_eq!(epoch_tick(10.0), "10");
        assert_eq!(epoch_tick(2.5), "");
        assert_eq!(epoch_tick_count(1.0, 3.0), 3);
        assert_eq!(epoch_tick_count(1.0, 50.0), 11);
    }
}
