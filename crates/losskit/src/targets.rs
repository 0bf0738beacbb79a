//! Preparing targets before a loss: class indices, label smoothing, moving an axis last.

use crate::{Error, Result, Tensor};

/// The multi-index of flat position `flat` in `shape` (for error messages).
fn position(flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut rest = flat;
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = rest % d;
            rest /= d;
        }
    }
    idx
}

/// Class indices from float labels, as Keras reads them (cast to int by truncation toward
/// zero). `ignore_class` entries become `-1` and get 0 in the returned mask; every other label
/// must be in `0..classes`, else an error names the loss, the label and its position.
///
/// Returns the indices (as floats, in `labels`' shape) and, with `ignore_class`, the mask.
pub(crate) fn class_indices(
    loss: &str,
    labels: &Tensor,
    classes: usize,
    ignore_class: Option<i64>,
) -> Result<(Tensor, Option<Tensor>)> {
    let values = labels.to_vec::<f64>();
    let mut out = Vec::with_capacity(values.len());
    let mut mask = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        let k = v.trunc();
        if ignore_class.is_some_and(|c| v.is_finite() && k as i64 == c) {
            out.push(-1.0);
            mask.push(0.0);
        } else if v.is_finite() && k >= 0.0 && (k as usize) < classes {
            out.push(k);
            mask.push(1.0);
        } else {
            return Err(not_a_class_index(loss, v, &position(i, labels.shape()), classes, ignore_class));
        }
    }
    let indices = Tensor::from_vec(out, labels.shape())?;
    let mask = ignore_class.map(|_| Tensor::from_vec(mask, labels.shape())).transpose()?;
    Ok((indices, mask))
}

/// The error for a label `v` (at `position` in the labels) that is not a class index in
/// `0..classes` (nor `ignore_class`).
pub(crate) fn not_a_class_index(
    loss: &str,
    v: f64,
    position: &[usize],
    classes: usize,
    ignore_class: Option<i64>,
) -> Error {
    let extra = ignore_class.map(|c| format!(" or ignore_class {c}")).unwrap_or_default();
    Error::Value {
        op: loss.into(),
        msg: format!(
            "label {v} at position {position:?} is not a class index: expected an integer in 0..{classes}{extra}"
        ),
    }
}

/// `y·(1 - ls) + ls·share` (Keras' label smoothing, `share` = 0.5 for binary, `1/K` for
/// categorical); `y` unchanged when `ls == 0`. The result is a constant.
pub(crate) fn smooth(y: &Tensor, label_smoothing: f64, share: f64) -> Result<Tensor> {
    if label_smoothing == 0.0 {
        return Ok(y.detach());
    }
    y.detach().mul_scalar(1.0 - label_smoothing)?.add_scalar(label_smoothing * share)
}

/// Moves `axis` of `t` to the end (a copy; differentiable). Errors when out of range.
pub(crate) fn move_axis_last(loss: &str, t: &Tensor, axis: isize) -> Result<Tensor> {
    let rank = t.rank();
    let a = resolve_axis(loss, axis, rank)?;
    if a + 1 == rank {
        return Ok(t.clone());
    }
    let mut perm: Vec<usize> = (0..rank).filter(|&i| i != a).collect();
    perm.push(a);
    t.transpose(Some(&perm))
}

/// `axis` normalised against `rank`, or an error naming the loss.
pub(crate) fn resolve_axis(loss: &str, axis: isize, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(Error::Shape {
            op: loss.into(),
            msg: format!("axis {axis} is out of range for inputs of rank {rank}"),
        });
    }
    Ok(a as usize)
}

/// Errors unless `y_true` and `y_pred` have exactly the same shape (the probabilistic losses
/// do not broadcast, as in Keras).
pub(crate) fn same_shape(loss: &str, y_true: &Tensor, y_pred: &Tensor, hint: &str) -> Result<()> {
    if y_true.shape() != y_pred.shape() {
        return Err(Error::Shape {
            op: loss.into(),
            msg: format!(
                "y_true of shape {:?} and y_pred of shape {:?} must have the same shape{hint}",
                y_true.shape(),
                y_pred.shape()
            ),
        });
    }
    Ok(())
}

/// Checks a per-class weight vector against the number of classes.
pub(crate) fn check_class_weights(loss: &str, weights: Option<&[f64]>, classes: usize) -> Result<()> {
    match weights {
        Some(w) if w.len() != classes => Err(Error::Shape {
            op: loss.into(),
            msg: format!("class_weights has {} entries but there are {classes} classes", w.len()),
        }),
        _ => Ok(()),
    }
}
