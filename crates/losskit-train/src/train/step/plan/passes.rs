//! Steps 1, 2 and 4 of a planned step: the batch gathered into the step's buffers, then the
//! stages' forward and backward passes over them (`losskit_tensor::slices`: the tape ops' own
//! maths).

use super::{buf, read, weight, Buffers, Stage};
use crate::layers::Layer;
use losskit::{Result, Tensor};
use losskit_tensor::random::{self, Rng};
use losskit_tensor::slices::{self, DenseGrads, DenseShape};
use losskit_tensor::Element;

/// The rows `idx` of `data` (any float dtype, rows of `out`'s width) into `out`, converted to `T`.
pub(super) fn gather<T: Element>(data: &Tensor, idx: &[usize], out: &mut Tensor) -> Result<()> {
    let width = out.numel() / idx.len().max(1);
    let out = buf::<T>(out);
    let rows = data.shape().first().copied().unwrap_or(0);
    if let Some(&bad) = idx.iter().find(|&&i| i >= rows) {
        return Err(losskit::Error::Shape { op: "fit".into(), msg: format!("row {bad} of {rows}") });
    }
    match (data.values::<f32>(), data.values::<f64>()) {
        (Some(d), _) => copy_rows(d, idx, width, out),
        (_, Some(d)) => copy_rows(d, idx, width, out),
        _ => unreachable!("checked in StepPlan::new"),
    }
    Ok(())
}

/// Batches of at least this many values are gathered in parallel, in pieces of about this many.
const GATHER_PIECE: usize = 1 << 14;

/// The rows `idx` of `data` (rows of `width` values) into `out`, converted; in parallel pieces
/// of rows for a large batch (a plain copy: the same values on any thread count).
pub(super) fn copy_rows<S: Element, T: Element>(data: &[S], idx: &[usize], width: usize, out: &mut [T]) {
    let width = width.max(1);
    let copy = |out: &mut [T], idx: &[usize]| {
        for (o, &i) in out.chunks_exact_mut(width).zip(idx) {
            for (o, &v) in o.iter_mut().zip(&data[i * width..(i + 1) * width]) {
                *o = T::c(v.to_f64().unwrap_or(f64::NAN));
            }
        }
    };
    if out.len() < 2 * GATHER_PIECE {
        return copy(out, idx);
    }
    use rayon::prelude::*;
    let rows = (GATHER_PIECE / width).max(1);
    out.par_chunks_mut(rows * width).zip(idx.par_chunks(rows)).for_each(|(out, idx)| copy(out, idx));
}

/// Step 2: each stage's output from the one before (the batch's inputs for the first).
/// Dropout draws its masks from `rng` in training; without one (inference) it passes its input.
pub(super) fn forward<T: Element>(
    stages: &[Stage],
    layers: &[Box<dyn Layer>],
    mut rng: Option<&mut Rng>,
    b: &mut Buffers,
) -> Result<()> {
    let rows = b.rows;
    for (i, stage) in stages.iter().enumerate() {
        let (done, rest) = b.outs.split_at_mut(i);
        let input = read::<T>(done.last().unwrap_or(&b.x));
        let out = buf::<T>(&mut rest[0]);
        match *stage {
            Stage::Dense { layer, shape: (inputs, units), activation, bias, .. } => {
                let (w, bias) = (weight::<T>(layers, layer, 0), bias.then(|| weight::<T>(layers, layer, 1)));
                slices::dense_forward(input, w, bias, activation, DenseShape { rows, inputs, units }, out);
            }
            Stage::Softmax { cols } => slices::softmax_forward(input, cols, out),
            Stage::Activation { activation, cols } => slices::activation_forward(input, cols, activation, out),
            Stage::Elementwise { kind, .. } => slices::elementwise_forward(input, kind, out),
            Stage::Sparsemax { cols } => slices::sparsemax_forward(input, cols, out),
            Stage::LogSoftmax { cols } => slices::log_softmax_forward(input, cols, out),
            Stage::Glu { cols } => slices::glu_forward(input, cols, out),
            Stage::Rescale { scale, offset, .. } => {
                // As the tape's `x.mul_scalar(scale)` then, when not 0, `.add_scalar(offset)`.
                let (s, o) = (T::c(scale), T::c(offset));
                match offset == 0.0 {
                    true => out.iter_mut().zip(input).for_each(|(y, &x)| *y = x * s),
                    false => out.iter_mut().zip(input).for_each(|(y, &x)| *y = x * s + o),
                }
            }
            Stage::Dropout { rate, .. } => match rng.as_deref_mut() {
                Some(rng) => {
                    let keep = 1.0 - rate;
                    let mask = buf::<T>(&mut b.masks[i]);
                    random::mask_into(mask, keep, 1.0 / keep, rng);
                    slices::mul(input, mask, out);
                }
                None => out.copy_from_slice(input),
            },
        }
    }
    Ok(())
}

/// Step 4: from `∂L/∂output`, each stage's backward pass down to the first with weights; the
/// weights' gradients into `weight_grads`.
pub(super) fn backward<T: Element>(
    stages: &[Stage],
    first_trained: usize,
    layers: &[Box<dyn Layer>],
    b: &mut Buffers,
    weight_grads: &mut [Tensor],
) -> Result<()> {
    let rows = b.rows;
    // A head (its input gradient buffer is not empty) sends `∂L/∂input` on to the trunk.
    let to_input = b.input_grad.numel() > 0;
    for i in (first_trained..stages.len()).rev() {
        let (before, from_here) = b.grads.split_at_mut(i);
        let before: &mut [Tensor] = if i == 0 && to_input { std::slice::from_mut(&mut b.input_grad) } else { before };
        let needed = i > first_trained || (i == 0 && to_input);
        let g = buf::<T>(&mut from_here[0]);
        let out = read::<T>(&b.outs[i]);
        match stages[i] {
            Stage::Dense { layer, weight: k, shape: (inputs, units), activation, bias, .. } => {
                let x = if i == 0 { read::<T>(&b.x) } else { read::<T>(&b.outs[i - 1]) };
                let w = weight::<T>(layers, layer, 0);
                let (gw, gb) = match &mut weight_grads[k..] {
                    [gw, gb, ..] if bias => (buf::<T>(gw), Some(buf::<T>(gb))),
                    [gw, ..] => (buf::<T>(gw), None),
                    [] => unreachable!("one gradient per weight"),
                };
                let input = needed.then(|| buf::<T>(before.last_mut().expect("a stage before")));
                let grads = DenseGrads { kernel: Some(gw), bias: gb, input };
                slices::dense_backward(x, w, out, g, activation, DenseShape { rows, inputs, units }, grads);
            }
            Stage::Softmax { cols } => {
                slices::softmax_backward(out, g, cols);
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::Dropout { .. } => {
                slices::mul_in_place(g, read::<T>(&b.masks[i]));
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::Rescale { scale, .. } => {
                let s = T::c(scale);
                g.iter_mut().for_each(|v| *v = *v * s);
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::Activation { activation, .. } => {
                slices::activation_backward_in_place(out, g, activation);
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::Elementwise { kind, .. } => {
                let x = if i == 0 { read::<T>(&b.x) } else { read::<T>(&b.outs[i - 1]) };
                slices::elementwise_backward_in_place(x, g, kind);
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::Sparsemax { cols } => {
                slices::sparsemax_backward(out, g, cols);
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::LogSoftmax { cols } => {
                slices::log_softmax_backward(out, g, cols);
                pass_down(before, &mut from_here[0], needed);
            }
            Stage::Glu { cols } => {
                // Another shape than its input: written into the stage before's buffer.
                if needed {
                    let x = if i == 0 { read::<T>(&b.x) } else { read::<T>(&b.outs[i - 1]) };
                    slices::glu_backward(x, g, cols, buf::<T>(before.last_mut().expect("a stage before")));
                }
            }
        }
    }
    Ok(())
}

/// After an element-wise stage's backward pass in place, its buffer holds the gradient of its
/// input: it becomes the stage before's (the two buffers swap; same shape).
pub(super) fn pass_down(before: &mut [Tensor], this: &mut Tensor, needed: bool) {
    if needed {
        std::mem::swap(before.last_mut().expect("a stage before"), this);
    }
}
