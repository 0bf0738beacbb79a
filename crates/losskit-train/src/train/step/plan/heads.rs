//! The planned step of a model with heads (several outputs): the trunk's stages once, then each
//! head's stages on a copy of the trunk's output (dropout masks drawn in the tape's order:
//! trunk, then head by head), each output's loss (its row kernel, or its small tape) times its
//! loss weight, each head's backward pass down to its input, and the sum of those input
//! gradients, in the order the tape adds them (the last head's first), through the trunk's
//! backward pass. The total is the tape's: `Σ Lₖ·wₖ` added output by output, plus the
//! regularization of the trunk's and then the heads' layers. The tape's bits.

use super::{
    backward, buf, forward, gather, kernel_targets, loss_and_gradient, read, tape_loss_of, weighted, Buffers, LossPath,
    Reduce, Stage, StepPlan,
};
use losskit::{Reduction, Result, Tensor};
use losskit_tensor::Element;

/// One output of a model with heads: its head's stages (layers of its head, weights numbered
/// among the model's), how its loss is computed and weighed, its targets' per-sample shape.
pub(super) struct HeadPlan {
    pub(super) stages: Vec<Stage>,
    pub(super) loss_path: LossPath,
    pub(super) loss_weight: Option<f64>,
    /// The reduction of this output's loss (`weighted` follows the plan's sample weights).
    pub(super) reduce: Reduce,
    pub(super) target_shape: Vec<usize>,
}

impl StepPlan {
    /// The plan of a model with heads trained on `x` and each output's targets `ys` (in head
    /// order), or the reason it takes the tape.
    pub(crate) fn with_heads(model: &crate::Model, x: &Tensor, ys: &[Tensor]) -> std::result::Result<StepPlan, String> {
        let compiled = model.compiled.as_ref().ok_or("not compiled")?;
        if ys.len() != model.heads.len() || compiled.losses.len() != model.heads.len() {
            return Err(format!(
                "{} outputs, {} targets, {} losses",
                model.heads.len(),
                ys.len(),
                compiled.losses.len()
            ));
        }
        let standard = |t: &Tensor| t.values::<f32>().is_some() || t.values::<f64>().is_some();
        if !standard(x) || !ys.iter().all(standard) {
            return Err("inputs or targets not in standard layout".into());
        }
        let input = model.input_shape.as_deref().ok_or("not built")?;
        let (stages, features) = Self::stages(model, input)?;
        let trunk_cols = stages.last().map_or(features, Stage::cols);
        let mut weight: usize = model.trunk.iter().map(|l| l.param_count()).sum();
        let mut heads = Vec::with_capacity(model.heads.len());
        for (k, (name, layers)) in model.heads.iter().enumerate() {
            let (head_stages, _) =
                Self::chain(layers, &[trunk_cols], weight).map_err(|e| format!("output {name}: {e}"))?;
            let classes =
                head_stages.last().ok_or_else(|| format!("output {name}: no layer computes anything"))?.cols();
            weight += layers.iter().map(|l| l.param_count()).sum::<usize>();
            let loss = &compiled.losses[k];
            if loss.reduction() == Reduction::None {
                return Err(format!("output {name}: the loss is not reduced"));
            }
            let loss_path = match losskit::row_kernel(loss.as_ref()) {
                Some(kernel) => {
                    if !kernel.fits(&[ys[k].shape().first().copied().unwrap_or(0), classes], ys[k].shape()) {
                        return Err(format!(
                            "output {name}: targets of shape {:?} per sample for {classes} outputs",
                            &ys[k].shape()[1..]
                        ));
                    }
                    LossPath::Kernel
                }
                None => LossPath::Tape,
            };
            let reduce = Reduce {
                divides: loss.reduction() != Reduction::Sum,
                weighted: false,
                by_weight_sum: loss.reduction() == Reduction::MeanWithSampleWeight,
            };
            let target_shape = ys[k].shape()[1..].to_vec();
            let loss_weight = compiled.loss_weights.get(k).copied().flatten();
            heads.push(HeadPlan { stages: head_stages, loss_path, loss_weight, reduce, target_shape });
        }
        let has_weights = |s: &[Stage]| s.iter().any(|s| matches!(s, Stage::Dense { .. }));
        if !has_weights(&stages) && !heads.iter().any(|h| has_weights(&h.stages)) {
            return Err("no weights".into());
        }
        let mut plan = StepPlan::new_unchecked(model, stages, features);
        // The trunk's backward pass runs from its first layer with weights (none: not at all).
        plan.first_trained =
            plan.stages.iter().position(|s| matches!(s, Stage::Dense { .. })).unwrap_or(plan.stages.len());
        plan.heads = heads;
        Ok(plan)
    }

    /// Steps 1–4 of a model with heads in `T` (see the module docs). Returns the total loss.
    pub(super) fn heads_forward_backward<T: Element>(
        &mut self,
        model: &mut crate::Model,
        x: &Tensor,
        ys: &[Tensor],
        w: Option<&Tensor>,
        idx: &[usize],
        set: usize,
    ) -> Result<f64> {
        // The trunk's targets are the heads' (gathered per head below).
        self.gather_and_forward::<T>(model, (x, None, w), idx, set)?;
        let b = &mut self.buffers[set];
        let mut total: Option<T> = None;
        self.each.clear();
        for (k, head) in self.heads.iter().enumerate() {
            let hb = &mut b.heads[k];
            buf::<T>(&mut hb.x).copy_from_slice(read::<T>(b.outs.last().unwrap_or(&b.x)));
            gather::<T>(&ys[k], idx, &mut hb.y)?;
            if w.is_some() {
                buf::<T>(&mut hb.w).copy_from_slice(read::<T>(&b.w));
            }
            forward::<T>(&head.stages, &model.heads[k].1, Some(&mut model.rng), hb)?;
            let reduce = Reduce { weighted: self.reduce.weighted, ..head.reduce };
            let (each, term) = match head.loss_path {
                LossPath::Kernel => {
                    let classes = head.stages.last().expect("checked in with_heads").cols();
                    let kernel = kernel_targets::<T>(model, k, classes, hb)?;
                    let loss = loss_and_gradient::<T>(kernel, reduce, hb)?;
                    match head.loss_weight {
                        Some(lw) => {
                            (loss, weighted::<T>(loss, lw, Some(buf::<T>(hb.grads.last_mut().expect("a stage")))))
                        }
                        None => (loss, loss),
                    }
                }
                LossPath::Tape => tape_loss_of::<T>(model, k, reduce, head.loss_weight, hb, true)?,
            };
            self.each.push(each);
            let term = T::c(term);
            total = Some(total.map_or(term, |t| t + term));
            backward::<T>(&head.stages, 0, &model.heads[k].1, hb, &mut self.weight_grads)?;
        }
        if self.first_trained < self.stages.len() {
            sum_input_grads::<T>(b);
            backward::<T>(&self.stages, self.first_trained, &model.trunk, b, &mut self.weight_grads)?;
        }
        // The penalties are added with the optimizer's update (`apply_with_penalties`).
        Ok(total.expect("a head at least").to_f64().unwrap_or(f64::NAN))
    }
}

/// `∂L/∂` the trunk's output: the heads' input gradients added as the tape adds them, the last
/// head's first (`((gₙ + gₙ₋₁) + …) + g₁`), into the trunk's last gradient buffer.
fn sum_input_grads<T: Element>(b: &mut Buffers) {
    let out = buf::<T>(b.grads.last_mut().expect("the trunk has stages"));
    let mut heads = b.heads.iter().rev();
    let first = heads.next().expect("a head at least");
    out.copy_from_slice(read::<T>(&first.input_grad));
    for h in heads {
        out.iter_mut().zip(read::<T>(&h.input_grad)).for_each(|(o, &g)| *o = *o + g);
    }
}
