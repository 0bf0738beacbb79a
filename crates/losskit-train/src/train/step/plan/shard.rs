//! The planned step as one worker of a data-parallel run: its shard of the batch through the
//! plan's buffers, the gradients all-reduced from the plan's own gradient buffers. The same
//! bits as the data-parallel tape step (`step/distributed.rs`) on every worker.
//!
//! The tape's data-parallel step reduces each shard's loss with
//! [`losskit::compute_partial`] (the weighted sum and its share of the denominator), learns the
//! global denominator from the first all-reduce, and differentiates `sum · (1/global)` plus the
//! regularization times `1/workers`: its kernels never fold the reduction. So here the row
//! kernel writes the unscaled gradient in the first half ([`StepPlan::shard_loss`]) and the
//! second half ([`StepPlan::shard_gradients`]) scales it once the global denominator is known.

use super::{add_penalty_grads, backward, buf, read, LossPath, StepPlan};
use crate::distribute::Collective;
use losskit::{DType, Result, Tensor};
use losskit_tensor::{slices, Element};

impl StepPlan {
    /// Whether the data-parallel step can run through this plan (a loss with a row kernel), or
    /// why not.
    pub(crate) fn shardable(&self) -> std::result::Result<(), String> {
        if !self.heads.is_empty() {
            return Err("the model has several outputs".into());
        }
        match (self.loss_path, self.loss_weight) {
            (LossPath::Kernel, None) => Ok(()),
            (LossPath::Kernel, Some(_)) => Err("the output has a loss weight".into()),
            (LossPath::Tape, _) => Err("the loss has no row kernel".into()),
        }
    }

    /// The first half of a worker's step on its rows `idx` of the global batch (at least one):
    /// gather, forward, the loss' per-sample values (weighted) and their unscaled gradient.
    /// Returns this shard's share of the reduction as [`losskit::compute_partial`] gives it:
    /// the weighted sum and the denominator (`None` for a `sum` reduction).
    pub(crate) fn shard_loss(
        &mut self,
        model: &mut crate::Model,
        x: &Tensor,
        y: &Tensor,
        w: Option<&Tensor>,
        idx: &[usize],
    ) -> Result<(f64, Option<f64>)> {
        let set = self.begin_step(model, w, idx.len())?;
        match self.dtype {
            DType::F32 => self.shard_loss_typed::<f32>(model, x, y, w, idx, set),
            DType::F64 => self.shard_loss_typed::<f64>(model, x, y, w, idx, set),
        }
    }

    /// [`StepPlan::shard_loss`] in `T`.
    fn shard_loss_typed<T: Element>(
        &mut self,
        model: &mut crate::Model,
        x: &Tensor,
        y: &Tensor,
        w: Option<&Tensor>,
        idx: &[usize],
        set: usize,
    ) -> Result<(f64, Option<f64>)> {
        self.gather_and_forward::<T>(model, (x, Some(y), w), idx, set)?;
        let kernel = self.targets::<T>(model, set)?;
        let b = &mut self.buffers[set];
        let last = b.outs.len() - 1;
        let y_pred = read::<T>(&b.outs[last]);
        let cols = y_pred.len() / b.rows.max(1);
        let values = buf::<T>(&mut b.values);
        kernel.run(read::<T>(&b.targets), y_pred, cols, values, Some(buf::<T>(&mut b.grads[last])), None)?;
        if self.reduce.weighted {
            slices::mul_in_place(values, read::<T>(&b.w));
        }
        let sum = slices::row_sum(values).to_f64().unwrap_or(f64::NAN);
        let denominator = match self.reduce {
            r if !r.divides => None,
            r if r.weighted && r.by_weight_sum => Some(slices::row_sum(read::<T>(&b.w)).to_f64().unwrap_or(f64::NAN)),
            _ => Some(b.rows as f64),
        };
        Ok((sum, denominator))
    }

    /// The second half of a worker's step: with `global` the all-reduced denominator (`None`
    /// for a `sum` reduction), the gradient of this shard's `sum · (1/global)` (0 when `global`
    /// is 0) back into the weights' gradients, plus the regularization's gradient times
    /// `reg_share`. With `rows = 0` (a worker with no rows in this batch) only the
    /// regularization's share.
    pub(crate) fn shard_gradients(
        &mut self,
        model: &crate::Model,
        rows: usize,
        global: Option<f64>,
        reg_share: f64,
    ) -> Result<()> {
        if self.weight_grads.is_empty() {
            self.weight_grads = model.params().iter().map(|p| p.value.zeros_like()).collect();
        }
        match self.dtype {
            DType::F32 => self.shard_gradients_typed::<f32>(model, rows, global, reg_share),
            DType::F64 => self.shard_gradients_typed::<f64>(model, rows, global, reg_share),
        }
    }

    /// [`StepPlan::shard_gradients`] in `T`.
    fn shard_gradients_typed<T: Element>(
        &mut self,
        model: &crate::Model,
        rows: usize,
        global: Option<f64>,
        reg_share: f64,
    ) -> Result<()> {
        if let Some(cols) = self.stages.last().map(|s| s.cols()).filter(|_| rows > 0) {
            let set = self.buffers.iter().position(|b| b.rows == rows).expect("shard_loss ran on these rows");
            let b = &mut self.buffers[set];
            // As the tape's `sum.mul_scalar(1/global)` differentiates: the scale in `T`.
            let factor = match global {
                None => T::one(),
                Some(0.0) => T::zero(),
                Some(g) => T::c(1.0 / g),
            };
            let last = b.outs.len() - 1;
            let grad = buf::<T>(&mut b.grads[last]);
            let weights = self.reduce.weighted.then(|| read::<T>(&b.w));
            for (r, row) in grad.chunks_exact_mut(cols.max(1)).enumerate() {
                let s = weights.map_or(factor, |w| factor * w[r]);
                row.iter_mut().for_each(|g| *g = *g * s);
            }
            backward::<T>(&self.stages, self.first_trained, &model.trunk, b, &mut self.weight_grads)?;
        } else {
            self.weight_grads.iter_mut().for_each(|g| buf::<T>(g).fill(T::zero()));
        }
        add_penalty_grads::<T>(&self.stages, &model.trunk, &mut self.weight_grads, reg_share);
        Ok(())
    }

    /// Sums the weights' gradients over the workers of `group` in place (in the model's dtype,
    /// in weight order: the tape's flattening), through one flat buffer kept across steps.
    pub(crate) fn all_reduce_gradients(&mut self, group: &dyn Collective) -> Result<()> {
        match self.dtype {
            DType::F32 => {
                let flat = flatten::<f32>(&self.weight_grads, &mut self.flat.0);
                group.all_reduce_sum_f32(flat)?;
                unflatten::<f32>(flat, &mut self.weight_grads);
            }
            DType::F64 => {
                let flat = flatten::<f64>(&self.weight_grads, &mut self.flat.1);
                group.all_reduce_sum(flat)?;
                unflatten::<f64>(flat, &mut self.weight_grads);
            }
        }
        Ok(())
    }
}

/// Every tensor's values one after the other into `flat` (its capacity kept).
fn flatten<'f, T: Element>(tensors: &[Tensor], flat: &'f mut Vec<T>) -> &'f mut [T] {
    flat.clear();
    for t in tensors {
        flat.extend_from_slice(read::<T>(t));
    }
    flat
}

/// `flat`'s values back into the tensors, in order.
fn unflatten<T: Element>(flat: &[T], tensors: &mut [Tensor]) {
    let mut at = 0;
    for t in tensors {
        let v = buf::<T>(t);
        v.copy_from_slice(&flat[at..at + v.len()]);
        at += v.len();
    }
}
