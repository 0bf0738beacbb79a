//! The data `fit` and `evaluate` train on: checks before the first step, `class_weight` →
//! per-sample weights, the validation split, and the rows of a batch.

use super::options::{Fit, Targets};
use crate::model::Model;
use crate::nan;
use losskit::{no_grad, Error, Result, Tensor};
use std::collections::BTreeMap;

/// Rows `idx` of a tensor.
pub(crate) fn rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    t.gather(0, idx)
}

pub(crate) fn count_rows(what: &str, t: &Tensor) -> Result<usize> {
    t.shape()
        .first()
        .copied()
        .ok_or_else(|| Error::Shape { op: "fit".into(), msg: format!("{what} needs a batch axis, got a scalar") })
}

/// Keras' `class_weight` → per-sample weights: argmax of one-hot rows, squeeze of `(N, 1)`,
/// then round to the nearest class; missing classes weigh 1.
pub(crate) fn class_weights_to_samples(y: &Tensor, cw: &BTreeMap<i64, f64>) -> Result<Tensor> {
    let n = count_rows("y", y)?;
    let per_row = y.numel().checked_div(n).unwrap_or(0);
    let v = y.to_vec::<f64>();
    let classes: Vec<f64> = if y.rank() > 1 && per_row > 1 {
        v.chunks(per_row)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
                    .0 as f64
            })
            .collect()
    } else {
        v
    };
    let w: Vec<f64> = classes.iter().map(|c| *cw.get(&(c.round() as i64)).unwrap_or(&1.0)).collect();
    Ok(Tensor::from_vec(w, &[n])?.to_dtype(y.dtype()))
}

/// Inputs, targets (one per output) and optional per-sample weights: a training set, a
/// validation set or one batch.
pub(crate) struct Dataset {
    pub(crate) x: Tensor,
    pub(crate) ys: Vec<Tensor>,
    pub(crate) w: Option<Tensor>,
}

impl Dataset {
    /// The rows `idx` of `x`, every target and (if `with_weights`) the weights.
    pub(crate) fn rows_of(
        x: &Tensor,
        ys: &[Tensor],
        w: Option<&Tensor>,
        idx: &[usize],
        with_weights: bool,
    ) -> Result<Dataset> {
        Ok(Dataset {
            x: rows(x, idx)?,
            ys: ys.iter().map(|t| rows(t, idx)).collect::<Result<_>>()?,
            w: if with_weights { w.map(|w| rows(w, idx)).transpose()? } else { w.cloned() },
        })
    }
}

/// The training data of `fit`, prepared once, and the validation set if any.
pub(crate) struct FitData {
    pub(crate) x: Tensor,
    pub(crate) ys: Vec<Tensor>,
    pub(crate) w: Option<Tensor>,
    pub(crate) n: usize,
    pub(crate) validation: Option<Dataset>,
}

/// Per-sample weights for `fit`: from `class_weight` (single output only) or `sample_weight`,
/// never both.
pub(crate) fn fit_sample_weights(ys: &[Tensor], opts: &Fit<'_>) -> Result<Option<Tensor>> {
    if opts.class_weight.is_some() && opts.sample_weight.is_some() {
        return Err(Error::Config("fit: class_weight and sample_weight cannot be combined".into()));
    }
    match &opts.class_weight {
        Some(cw) => {
            if ys.len() != 1 {
                return Err(Error::Config("fit: class_weight needs a single-output model".into()));
            }
            Ok(Some(class_weights_to_samples(&ys[0], cw)?))
        }
        None => Ok(opts.sample_weight.clone()),
    }
}

/// `batch_size >= 1` and `validation_split` in `[0, 1)`.
pub(crate) fn check_fit_options(opts: &Fit<'_>) -> Result<()> {
    if opts.batch_size == 0 {
        return Err(Error::invalid_parameter("fit", "batch_size", "0", ">= 1"));
    }
    let f = opts.validation_split;
    if !(0.0..1.0).contains(&f) {
        return Err(Error::invalid_parameter("fit", "validation_split", f, "a number in [0, 1)"));
    }
    Ok(())
}

/// Training and validation row indices: the last fraction `f` of the `n` rows validates.
pub(crate) fn validation_split(n: usize, f: f64) -> Result<(Vec<usize>, Vec<usize>)> {
    if f == 0.0 {
        return Ok(((0..n).collect(), Vec::new()));
    }
    let split = (n as f64 * (1.0 - f)).floor() as usize;
    if split == 0 || split == n {
        return Err(Error::Config(format!(
            "fit: validation_split {f} leaves no training or no validation samples out of {n}"
        )));
    }
    Ok(((0..split).collect(), (split..n).collect()))
}

pub(crate) fn compiled_or_err(model: &Model) -> Result<()> {
    if model.compiled.is_none() {
        return Err(Error::Config("the model must be compiled before fit/evaluate".into()));
    }
    Ok(())
}

/// Checks the data before any step: row counts, sparse labels against the model's classes,
/// and one forward pass + loss on the first rows (a loss whose shape does not fit the
/// model's output fails here).
pub(crate) fn check_data(model: &mut Model, x: &Tensor, ys: &[Tensor], w: Option<&Tensor>) -> Result<usize> {
    let n = count_rows("x", x)?;
    for (name, y) in model.output_names().iter().zip(ys) {
        let m = count_rows("y", y)?;
        if m != n {
            return Err(Error::Shape { op: "fit".into(), msg: format!("x has {n} samples but y ({name}) has {m}") });
        }
    }
    if let Some(w) = w {
        let m = count_rows("sample_weight", w)?;
        if m != n {
            return Err(Error::Shape { op: "fit".into(), msg: format!("x has {n} samples but sample_weight has {m}") });
        }
    }
    if n == 0 {
        return Err(Error::Shape { op: "fit".into(), msg: "no samples".into() });
    }
    model.ensure_built(x)?;
    let shapes = model.output_shapes();
    let compiled = model.compiled.as_ref().expect("checked");
    for ((loss, y), shape) in compiled.losses.iter().zip(ys).zip(&shapes) {
        if loss.class_name() == "SparseCategoricalCrossentropy" {
            let classes = shape.last().copied().unwrap_or(0);
            let ignore = loss.config()["ignore_class"].as_i64();
            for (i, v) in y.to_vec::<f64>().iter().enumerate() {
                let k = v.trunc();
                if ignore.is_some_and(|c| k as i64 == c) {
                    continue;
                }
                if !(v.is_finite() && k >= 0.0 && (k as usize) < classes) {
                    return Err(Error::Value {
                        op: "fit".into(),
                        msg: format!(
                            "label {v} at position {i} of y is outside the model's {classes} classes (0..{classes}) for loss {}",
                            loss.name()
                        ),
                    });
                }
            }
        }
    }
    let head: Vec<usize> = (0..n.min(2)).collect();
    let xb = rows(x, &head)?;
    let outs = no_grad(|| model.forward(&xb, false))?;
    let compiled = model.compiled.as_ref().expect("checked");
    for ((loss, y), out) in compiled.losses.iter().zip(ys).zip(&outs) {
        let v = no_grad(|| loss.call(&rows(y, &head)?, out, None))?;
        if v.numel() != 1 {
            return Err(Error::Shape {
                op: "fit".into(),
                msg: format!(
                    "loss {} returned shape {:?}; training needs a reduction to a scalar",
                    loss.name(),
                    v.shape()
                ),
            });
        }
    }
    Ok(n)
}

/// Everything `fit` settles before the first step: per-sample weights (from `class_weight`
/// or `sample_weight`), the data checks and their warnings, the options' ranges, and the
/// validation split (the last fraction, before any shuffling; sample weights split too).
pub(crate) fn prepare_fit(model: &mut Model, x: &Tensor, y: Targets, opts: &mut Fit<'_>) -> Result<FitData> {
    model.ensure_built(x)?;
    let ys = y.ordered(&model.output_names())?;
    let weights = fit_sample_weights(&ys, opts)?;
    let n_all = check_data(model, x, &ys, weights.as_ref())?;
    model.warnings.clear();
    model.last_diagnosis = None;
    if opts.check_data {
        let sw = if opts.class_weight.is_some() { None } else { weights.as_ref() };
        model.warnings = data_warnings(model, x, &ys, sw, opts.class_weight.as_ref())?;
        for w in &model.warnings {
            eprintln!("warning: {w}");
        }
    }
    check_fit_options(opts)?;
    let (train_idx, val_idx) = validation_split(n_all, opts.validation_split)?;
    let validation = if let Some((vx, vy)) = opts.validation_data.take() {
        Some(Dataset { x: vx, ys: vy.ordered(&model.output_names())?, w: None })
    } else if !val_idx.is_empty() {
        let vw = match &weights {
            Some(w) if opts.class_weight.is_none() => Some(rows(w, &val_idx)?),
            _ => None,
        };
        Some(Dataset::rows_of(x, &ys, vw.as_ref(), &val_idx, false)?)
    } else {
        None
    };
    let train = if val_idx.is_empty() {
        Dataset { x: x.clone(), ys, w: weights }
    } else {
        Dataset::rows_of(x, &ys, weights.as_ref(), &train_idx, true)?
    };
    Ok(FitData { n: train_idx.len(), x: train.x, ys: train.ys, w: train.w, validation })
}

/// The warnings of [`nan::check_data`] for `x` and the targets of every output.
pub(crate) fn data_warnings(
    model: &Model,
    x: &Tensor,
    ys: &[Tensor],
    sample_weight: Option<&Tensor>,
    class_weight: Option<&BTreeMap<i64, f64>>,
) -> Result<Vec<String>> {
    let losses = model.compiled.as_ref().expect("checked").losses.clone();
    let named: Vec<(String, Tensor, &dyn losskit::Loss)> =
        model.output_names().into_iter().zip(ys).zip(&losses).map(|((n, y), l)| (n, y.clone(), l.as_ref())).collect();
    // A leading Rescaling layer is what the layers see of `x`.
    nan::check_data_rescaled(x, model.input_rescaling().unwrap_or(1.0), &named, sample_weight, class_weight)
}

/// What `evaluate` checks first: compiled, built for `x`, one target per output, the data
/// (row counts, labels, the loss' fit), and the data's warnings.
pub(crate) fn evaluation_targets(
    model: &mut Model,
    x: &Tensor,
    y: Targets,
    sample_weight: Option<&Tensor>,
) -> Result<Vec<Tensor>> {
    compiled_or_err(model)?;
    model.ensure_built(x)?;
    let ys = y.ordered(&model.output_names())?;
    check_data(model, x, &ys, sample_weight)?;
    model.warnings = data_warnings(model, x, &ys, sample_weight, None)?;
    Ok(ys)
}
