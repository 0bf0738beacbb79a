//! NaN protection: data checks before training, and a diagnosis when a loss or a gradient goes
//! non-finite (where it started, the likely cause, what to do).

use losskit::{Error, Loss, Result, Tensor};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Features larger than this in absolute value get a scale warning.
pub const LARGE_FEATURE: f64 = 1e3;

/// `row, column` of flat index `i` in a tensor whose first axis is the batch.
fn row_col(t: &Tensor, i: usize) -> (usize, usize) {
    let n = t.shape().first().copied().unwrap_or(1).max(1);
    let per_row = (t.numel() / n).max(1);
    (i / per_row, i % per_row)
}

/// Errors if `t` holds NaN or ±Inf: names the array, the first bad value's row and column,
/// and how many there are.
pub fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    // The common case, all finite, reads the values in place; only a failure copies them to
    // find and count the bad ones.
    if t.all_finite() {
        return Ok(());
    }
    let v = t.to_vec::<f64>();
    let bad: Vec<usize> = v.iter().enumerate().filter(|(_, x)| !x.is_finite()).map(|(i, _)| i).collect();
    if let Some(&first) = bad.first() {
        let (r, c) = row_col(t, first);
        return Err(Error::Value {
            op: "data check".into(),
            msg: format!(
                "{name} contains {} non-finite value{} (first: {} at row {r}, column {c}); clean or impute them before training (or pass check_data(false))",
                bad.len(),
                if bad.len() == 1 { "" } else { "s" },
                v[first]
            ),
        });
    }
    Ok(())
}

/// Losses whose targets must be probabilities in `[0, 1]`.
fn needs_probability_targets(loss: &dyn Loss) -> bool {
    matches!(
        loss.class_name(),
        "BinaryCrossentropy"
            | "BinaryFocalCrossentropy"
            | "CategoricalCrossentropy"
            | "CategoricalFocalCrossentropy"
            | "KLDivergence"
    )
}

/// The data checks `fit` and `evaluate` run before the first step (unless `check_data(false)`):
/// non-finite values in `x`, the targets, `sample_weight` or `class_weight`; targets outside
/// `[0, 1]` for losses that need probabilities. Returns warnings (features with
/// `|x| > 1e3`, which often make training diverge).
pub fn check_data(
    x: &Tensor,
    ys: &[(String, Tensor, &dyn Loss)],
    sample_weight: Option<&Tensor>,
    class_weight: Option<&BTreeMap<i64, f64>>,
) -> Result<Vec<String>> {
    check_data_rescaled(x, 1.0, ys, sample_weight, class_weight)
}

/// [`check_data`] for a model that multiplies its inputs by `input_scale` first (a leading
/// `Rescaling` layer): the size warning is about `x · input_scale`, what the layers see.
pub(crate) fn check_data_rescaled(
    x: &Tensor,
    input_scale: f64,
    ys: &[(String, Tensor, &dyn Loss)],
    sample_weight: Option<&Tensor>,
    class_weight: Option<&BTreeMap<i64, f64>>,
) -> Result<Vec<String>> {
    check_finite("x", x)?;
    for (name, y, loss) in ys {
        let label = if ys.len() == 1 { "y".to_string() } else { format!("y[{name}]") };
        check_finite(&label, y)?;
        if needs_probability_targets(*loss) {
            let v = y.to_vec::<f64>();
            let bad: Vec<usize> =
                v.iter().enumerate().filter(|(_, x)| !(0.0..=1.0).contains(*x)).map(|(i, _)| i).collect();
            if let Some(&first) = bad.first() {
                let (r, c) = row_col(y, first);
                return Err(Error::Value {
                    op: "data check".into(),
                    msg: format!(
                        "{label} has {} value{} outside [0, 1] (first: {} at row {r}, column {c}), but {} needs probability targets",
                        bad.len(),
                        if bad.len() == 1 { "" } else { "s" },
                        v[first],
                        loss.name()
                    ),
                });
            }
        }
    }
    if let Some(w) = sample_weight {
        check_finite("sample_weight", w)?;
    }
    if let Some(cw) = class_weight {
        if let Some((k, v)) = cw.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Value {
                op: "data check".into(),
                msg: format!("class_weight of class {k} is {v}; weights must be finite"),
            });
        }
    }
    let mut warnings = Vec::new();
    let large = LARGE_FEATURE / input_scale.abs();
    if x.max_abs() <= large {
        return Ok(warnings);
    }
    let v = x.to_vec::<f64>();
    if let Some((i, m)) =
        v.iter().enumerate().map(|(i, x)| (i, x.abs())).fold(None, |best: Option<(usize, f64)>, (i, a)| match best {
            Some((_, b)) if b >= a => best,
            _ => Some((i, a)),
        })
    {
        if m > large {
            let (r, c) = row_col(x, i);
            let rescaled = if input_scale == 1.0 {
                String::new()
            } else {
                format!(" (times the model's Rescaling {input_scale})")
            };
            warnings.push(format!(
                "x: the largest |value| is {m:e}{rescaled} (row {r}, column {c}); features this large often make the loss diverge: scale them (e.g. divide by their maximum or standardise them)"
            ));
        }
    }
    Ok(warnings)
}

/// Where the first non-finite value appeared.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// In the input batch itself.
    Input,
    /// In the output of a layer.
    Activation(String),
    /// In the loss, from finite predictions.
    Loss,
    /// In the regularization penalty.
    Regularization,
    /// In the gradient of a layer's weights (the loss was finite).
    Gradient(String),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Input => write!(f, "the input batch"),
            Stage::Activation(l) => write!(f, "the activations of layer {l}"),
            Stage::Loss => write!(f, "the loss (the predictions were finite)"),
            Stage::Regularization => write!(f, "the regularization penalty"),
            Stage::Gradient(l) => write!(f, "the gradient of layer {l}"),
        }
    }
}

/// The likely cause of a NaN, from the seed's list.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// NaN or Inf in the data.
    NonFiniteData,
    /// Inputs far from unit scale.
    UnscaledInputs {
        /// The largest |x| in the batch.
        max_abs: f64,
    },
    /// A regularization penalty that dominates or overflows (large L2 factor, lr > 1).
    LargeRegularization {
        /// The regularizers, described.
        regularizers: String,
    },
    /// Gradients growing batch after batch (too large a learning rate, no clipping).
    ExplodingGradients,
    /// The loss itself is undefined for the predictions (log of 0, division by 0).
    LossFunction,
}

/// A report on a training step that produced a NaN or an infinity.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Batch within the epoch (0-based).
    pub batch: usize,
    /// Where the first non-finite value appeared.
    pub first: Stage,
    /// The loss of the batch.
    pub loss: f64,
    /// Per-layer gradient L2 norms over the last batches (oldest first), the failing batch last.
    pub grad_norms: Vec<Vec<(String, f64)>>,
    /// The learning rate.
    pub learning_rate: f64,
    /// The likely cause.
    pub cause: Cause,
    /// What to do, in the library's terms (`Optimizer::sgd(0.01)?.clipnorm(1.0)`).
    pub advice: String,
    /// What to do, in `losskit fit`'s flags (`--lr`, `--clipnorm 1.0`).
    pub cli_advice: String,
}

/// A number as a person writes it: `1e30`, `1e-7`, `0.01`, `16.118` (Rust's `{}` prints 1e30 as
/// thirty zeros).
pub fn human_number(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

impl fmt::Display for Diagnosis {
    /// The report with the library's advice; [`Diagnosis::for_cli`] gives the CLI's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, &self.advice)
    }
}

/// A [`Diagnosis`] shown with the CLI's advice.
pub struct CliDiagnosis<'a>(&'a Diagnosis);

impl fmt::Display for CliDiagnosis<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.render(f, &self.0.cli_advice)
    }
}

impl Diagnosis {
    /// The report with advice in `losskit fit`'s flags.
    pub fn for_cli(&self) -> CliDiagnosis<'_> {
        CliDiagnosis(self)
    }

    /// The report: which value went non-finite where (epoch and batch 1-based, as the progress
    /// bar counts them), the first non-finite stage, the cause, `advice`, the gradient norms.
    fn render(&self, f: &mut fmt::Formatter<'_>, advice: &str) -> fmt::Result {
        let (epoch, batch) = (self.epoch + 1, self.batch + 1);
        if self.loss.is_finite() {
            writeln!(
                f,
                "a gradient became non-finite at epoch {epoch}, batch {batch} (the loss was finite: {})",
                human_number(self.loss)
            )?;
        } else {
            writeln!(f, "the loss became non-finite at epoch {epoch}, batch {batch} (loss = {})", self.loss)?;
        }
        writeln!(f, "  first non-finite value: {}", self.first)?;
        writeln!(f, "  likely cause: {}", self.cause_text())?;
        writeln!(f, "  what to do: {advice}")?;
        if !self.grad_norms.is_empty() {
            writeln!(f, "  gradient norms per layer over the last {} batches (oldest first):", self.grad_norms.len())?;
            let layers: Vec<&String> = self.grad_norms[0].iter().map(|(l, _)| l).collect();
            for layer in layers {
                let norms: Vec<String> = self
                    .grad_norms
                    .iter()
                    .map(|b| b.iter().find(|(l, _)| l == layer).map_or("-".into(), |(_, n)| format!("{n:.3e}")))
                    .collect();
                writeln!(f, "    {layer:<12} {}", norms.join("  "))?;
            }
        }
        write!(f, "  (the weights are those after the last good step)")
    }

    /// One line naming the cause.
    pub fn cause_text(&self) -> String {
        match &self.cause {
            Cause::NonFiniteData => "NaN or Inf in the input data".into(),
            Cause::UnscaledInputs { max_abs } => format!("unscaled input features (|x| up to {max_abs:e})"),
            Cause::LargeRegularization { regularizers } => {
                format!(
                    "a very large regularization penalty ({regularizers}) with learning rate {}",
                    human_number(self.learning_rate)
                )
            }
            Cause::ExplodingGradients => "exploding gradients".into(),
            Cause::LossFunction => "the loss is undefined for these predictions (a log of 0 or a division by 0)".into(),
        }
    }
}

/// A ring buffer of per-layer gradient norms over the last batches.
///
/// The layer names and which layer each weight belongs to are worked out once (at the first
/// batch, again only if the number of weights changes), and the oldest batch's row is reused
/// for the newest: recording a step's norms allocates nothing once the ring is full.
#[derive(Debug, Default)]
pub(crate) struct GradNormHistory {
    /// Layer names, in the order of their first weight.
    layers: Vec<String>,
    /// The layer of each weight (an index into `layers`).
    layer_of: Vec<usize>,
    /// Per batch, oldest first: each layer's norm.
    batches: VecDeque<Vec<f64>>,
}

impl GradNormHistory {
    const KEEP: usize = 5;

    /// Records one batch from its weights' `Σ g²` (in weight order); `names` gives the weights'
    /// names (`layer/weight`) and is only called when the weights are new to the history.
    pub fn push_sums(&mut self, sum_squares: &[f64], names: impl FnOnce() -> Vec<String>) {
        if self.layer_of.len() != sum_squares.len() {
            self.set_weights(&names());
        }
        let mut row =
            if self.batches.len() == Self::KEEP { self.batches.pop_front().unwrap_or_default() } else { Vec::new() };
        row.clear();
        row.resize(self.layers.len(), 0.0);
        for (&layer, &sq) in self.layer_of.iter().zip(sum_squares) {
            row[layer] += sq;
        }
        row.iter_mut().for_each(|v| *v = v.sqrt());
        self.batches.push_back(row);
    }

    /// Groups the weights `names` (`layer/weight`) by layer; forgets the batches recorded for
    /// other weights.
    fn set_weights(&mut self, names: &[String]) {
        self.layers.clear();
        self.layer_of.clear();
        self.batches.clear();
        for name in names {
            let layer = name.split('/').next().unwrap_or(name);
            let i = match self.layers.iter().position(|l| l == layer) {
                Some(i) => i,
                None => {
                    self.layers.push(layer.to_string());
                    self.layers.len() - 1
                }
            };
            self.layer_of.push(i);
        }
    }

    /// Every recorded batch, oldest first, as `(layer, norm)` pairs.
    pub fn all(&self) -> Vec<Vec<(String, f64)>> {
        self.batches.iter().map(|b| self.layers.iter().cloned().zip(b.iter().copied()).collect()).collect()
    }

    /// Total norms (over layers) per batch.
    fn totals(&self) -> Vec<f64> {
        self.batches.iter().map(|b| b.iter().map(|n| n * n).sum::<f64>().sqrt()).collect()
    }

    /// Whether the norms before the failing batch grew tenfold or got huge (the failing
    /// batch itself, often infinite, does not count).
    pub fn exploding(&self) -> bool {
        let t = self.totals();
        let before = &t[..t.len().saturating_sub(1)];
        let finite: Vec<f64> = before.iter().copied().filter(|v| v.is_finite()).collect();
        let grew = match (finite.first(), finite.last()) {
            (Some(a), Some(b)) if finite.len() >= 2 => *b > 10.0 * a.max(1e-12),
            _ => false,
        };
        grew || finite.iter().any(|v| *v > 1e4)
    }
}

/// Per-layer L2 norms of the gradients (`param name` = `layer/weight`).
pub(crate) fn layer_norms(names: &[String], grads: &[Tensor]) -> Vec<(String, f64)> {
    let sums: Vec<f64> = grads.iter().map(Tensor::sum_of_squares).collect();
    layer_norms_of(names, &sums)
}

/// Each layer's gradient norm from its weights' `Σ g²` (in the order of `names`): one batch
/// grouped by layer as [`GradNormHistory`] groups every batch.
pub(crate) fn layer_norms_of(names: &[String], sum_squares: &[f64]) -> Vec<(String, f64)> {
    let mut once = GradNormHistory::default();
    once.push_sums(sum_squares, || names.to_vec());
    once.all().pop().unwrap_or_default()
}

fn finite(t: &Tensor) -> bool {
    t.all_finite()
}

/// Everything the diagnosis needs about the failing step.
pub(crate) struct Failure<'a> {
    pub epoch: usize,
    pub batch: usize,
    pub loss: f64,
    pub x: &'a Tensor,
    pub trace: Vec<(String, Tensor)>,
    pub output_loss_finite: bool,
    pub regularization: Option<f64>,
    pub data_loss: f64,
    pub regularizers: Vec<(String, crate::regularizers::Regularizer)>,
    pub grad_names: Vec<String>,
    pub grads: &'a [Tensor],
    pub history: &'a GradNormHistory,
    pub learning_rate: f64,
}

/// Works out where the non-finite value started and why.
pub(crate) fn diagnose(f: Failure<'_>) -> Diagnosis {
    let x = f.x.to_vec::<f64>();
    let max_abs = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let first = if !x.iter().all(|v| v.is_finite()) {
        Stage::Input
    } else if let Some((l, _)) = f.trace.iter().find(|(_, t)| !finite(t)) {
        Stage::Activation(l.clone())
    } else if !f.output_loss_finite {
        Stage::Loss
    } else if f.regularization.is_some_and(|r| !r.is_finite()) {
        Stage::Regularization
    } else {
        let bad = f
            .grad_names
            .iter()
            .zip(f.grads)
            .find(|(_, g)| !finite(g))
            .map(|(n, _)| n.split('/').next().unwrap_or(n).to_string());
        Stage::Gradient(bad.unwrap_or_else(|| "?".into()))
    };
    let reg_dominates = f.regularization.is_some_and(|r| !r.is_finite() || r > 1e3 * f.data_loss.abs().max(1.0));
    let cause = if first == Stage::Input {
        Cause::NonFiniteData
    } else if !f.regularizers.is_empty() && reg_dominates {
        let regularizers =
            f.regularizers.iter().map(|(l, r)| format!("{} on {l}", r.describe())).collect::<Vec<_>>().join(", ");
        Cause::LargeRegularization { regularizers }
    } else if max_abs > LARGE_FEATURE {
        Cause::UnscaledInputs { max_abs }
    } else if first == Stage::Loss && !f.history.exploding() {
        Cause::LossFunction
    } else {
        Cause::ExplodingGradients
    };
    let lr = f.learning_rate;
    let (advice, cli_advice) = advice(&cause, lr);
    let mut grad_norms = f.history.all();
    if grad_norms.is_empty() {
        grad_norms.push(layer_norms(&f.grad_names, f.grads));
    }
    Diagnosis {
        epoch: f.epoch,
        batch: f.batch,
        first,
        loss: f.loss,
        grad_norms,
        learning_rate: lr,
        cause,
        advice,
        cli_advice,
    }
}

/// What to do about `cause`: in the library's terms, then in `losskit fit`'s flags.
fn advice(cause: &Cause, lr: f64) -> (String, String) {
    let rate = human_number(lr);
    match cause {
        Cause::NonFiniteData => (
            "clean the data: fit checks it before training unless check_data(false) is set".into(),
            "clean the data file (losskit fit checks it before training)".into(),
        ),
        Cause::UnscaledInputs { .. } => (
            "scale the inputs (divide by their maximum or standardise them), and/or lower the learning rate".into(),
            format!("scale the inputs (divide by their maximum or standardise them), and/or lower --lr (now {rate})"),
        ),
        Cause::LargeRegularization { .. } => {
            let high = if lr > 1.0 { format!(" and the learning rate ({rate} > 1)") } else { String::new() };
            (format!("lower the L2/L1 factor{high}"), format!("lower the L2/L1 factor{high}"))
        }
        Cause::ExplodingGradients => (
            format!("lower the learning rate (now {rate}) or clip the gradients, e.g. Optimizer::sgd({rate})?.clipnorm(1.0)"),
            format!("lower --lr (now {rate}) or clip the gradients with --clipnorm 1.0"),
        ),
        Cause::LossFunction => (
            "use from_logits=True with a linear last layer (stable log-softmax), or clip the predictions before the log"
                .into(),
            "use --loss-config '{\"from_logits\": true}' with a linear last layer, or a loss that clips its predictions"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{human_number, layer_norms_of, GradNormHistory};

    #[test]
    fn the_norm_history_keeps_the_last_five_batches_per_layer_and_asks_names_once() {
        let names = || vec!["dense/kernel".to_string(), "dense/bias".into(), "dense_1/kernel".into()];
        let mut h = GradNormHistory::default();
        let mut asked = 0;
        for b in 0..7 {
            let scale = f64::from(b + 1);
            // Σ g²: dense 9 + 16 = 25 (norm 5), dense_1 144 (norm 12), times scale².
            let sums = [9.0 * scale * scale, 16.0 * scale * scale, 144.0 * scale * scale];
            h.push_sums(&sums, || {
                asked += 1;
                names()
            });
        }
        assert_eq!(asked, 1, "names are worked out at the first batch only");
        let all = h.all();
        assert_eq!(all.len(), 5);
        // Batches 3..=7 (scales 3 to 7), oldest first.
        for (i, batch) in all.iter().enumerate() {
            let scale = (i + 3) as f64;
            assert_eq!(batch, &vec![("dense".to_string(), 5.0 * scale), ("dense_1".to_string(), 12.0 * scale)]);
        }
        let once = layer_norms_of(&names(), &[81.0, 144.0, 1296.0]);
        assert_eq!(once, vec![("dense".to_string(), 15.0), ("dense_1".to_string(), 36.0)], "a one-off reading");
        assert_eq!(all[0], once, "the same as the one-off reading");
        assert_eq!(h.totals(), vec![39.0, 52.0, 65.0, 78.0, 91.0]);
        assert!(!h.exploding(), "growth from 39 to 78 before the last batch is not tenfold");
        // New weights (another count): the history starts again with their names.
        h.push_sums(&[4.0], || vec!["out/kernel".to_string()]);
        assert_eq!(h.all(), vec![vec![("out".to_string(), 2.0)]]);
        h.push_sums(&[1.0], || unreachable!("known weights"));
        h.push_sums(&[1e10], || unreachable!("known weights"));
        h.push_sums(&[f64::INFINITY], || unreachable!("known weights"));
        assert!(h.exploding(), "2 -> 1e5 before the failing batch");
    }

    #[test]
    fn numbers_read_as_a_person_writes_them() {
        assert_eq!(human_number(1e30), "1e30");
        assert_eq!(human_number(1e-7), "1e-7");
        assert_eq!(human_number(0.01), "0.01");
        assert_eq!(human_number(16.118), "16.118");
        assert_eq!(human_number(0.0), "0");
        assert_eq!(human_number(f64::NAN), "NaN");
    }
}
