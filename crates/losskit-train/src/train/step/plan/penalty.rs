//! The regularizers' penalties of a planned step: their sum added to the loss as the tape's
//! total adds it, and their gradients where the optimizer does not fold them in.

use super::{buf, heads, weight, Stage, StepPlan};
use crate::layers::Layer;
use crate::regularizers::Regularizer;
use losskit::{DType, Tensor};
use losskit_tensor::Element;

impl StepPlan {
    /// The model's regularization penalty (`Σ penalties`, in the model's dtype, as
    /// `Model::regularization_loss` adds them), or `None` when nothing is regularized.
    pub(crate) fn penalty(&self, model: &crate::Model) -> Option<f64> {
        match self.dtype {
            DType::F32 => penalty_of_weights::<f32>(&self.stages, &model.trunk).map(f64::from),
            DType::F64 => penalty_of_weights::<f64>(&self.stages, &model.trunk),
        }
    }
}

/// `loss + Σ penalties` as the tape's total adds the model's regularization to the loss (in
/// `T`, the penalties of [`penalty_of_weights`]), or `loss` when nothing is regularized.
pub(super) fn with_penalty<T: Element>(loss: f64, stages: &[Stage], layers: &[Box<dyn Layer>]) -> f64 {
    plus_penalty::<T>(loss, penalty_of_weights::<T>(stages, layers))
}

/// `Σ penalties` of the stages' weights in `T` (each weight's `c·Σ f(w)`), `None` when
/// nothing is regularized ([`penalty_sum`]).
pub(super) fn penalty_of_weights<T: Element>(stages: &[Stage], layers: &[Box<dyn Layer>]) -> Option<T> {
    penalty_sum(stages.iter(), |layer, _, i, r| r.penalty_of(weight::<T>(layers, layer, i)))
}

/// `Σ penalties` in `T` as `Model::regularization_loss` adds them: a layer's kernel then bias
/// penalty added, the layers added in order; `None` when nothing is regularized. `penalty`
/// gives each regularized weight's from its layer's index, its own index in weight order,
/// its index in the layer and its regularizer.
pub(super) fn penalty_sum<'s, T: Element>(
    stages: impl Iterator<Item = &'s Stage>,
    mut penalty: impl FnMut(usize, usize, usize, Regularizer) -> T,
) -> Option<T> {
    let mut total: Option<T> = None;
    for stage in stages {
        let Stage::Dense { layer, weight: k, regularizers, .. } = *stage else { continue };
        let mut of_layer: Option<T> = None;
        for (i, r) in regularizers.iter().enumerate() {
            if let Some(r) = *r {
                let p = penalty(layer, k + i, i, r);
                of_layer = Some(of_layer.map_or(p, |q| q + p));
            }
        }
        if let Some(p) = of_layer {
            total = Some(total.map_or(p, |t| t + p));
        }
    }
    total
}

/// `loss + penalty` in `T` (`loss` when there is none).
pub(super) fn plus_penalty<T: Element>(loss: f64, penalty: Option<T>) -> f64 {
    match penalty {
        Some(p) => (T::c(loss) + p).to_f64().unwrap_or(f64::NAN),
        None => loss,
    }
}

/// The trunk's stages, then each head's.
pub(super) fn all_stages<'s>(stages: &'s [Stage], heads: &'s [heads::HeadPlan]) -> impl Iterator<Item = &'s Stage> {
    stages.iter().chain(heads.iter().flat_map(|h| h.stages.iter()))
}

/// `loss + Σ penalties` in `T` from each weight's penalty `values` (weight order), added as
/// [`penalty_sum`] adds them (the trunk's layers, then each head's).
pub(super) fn loss_with_penalties<'s, T: Element>(
    loss: f64,
    stages: impl Iterator<Item = &'s Stage>,
    values: &[f64],
) -> f64 {
    plus_penalty::<T>(loss, penalty_sum(stages, |_, k, _, _| T::c(values[k])))
}

/// Adds each regularized weight's penalty gradient, times `share` (1, or 1/workers in a
/// data-parallel step), to its gradient ([`Regularizer::add_gradient`]).
pub(super) fn add_penalty_grads<T: Element>(
    stages: &[Stage],
    layers: &[Box<dyn Layer>],
    weight_grads: &mut [Tensor],
    share: f64,
) {
    for stage in stages {
        let Stage::Dense { layer, weight: k, regularizers, .. } = *stage else { continue };
        for (i, r) in regularizers.iter().enumerate() {
            if let Some(r) = r {
                r.add_gradient(weight::<T>(layers, layer, i), buf::<T>(&mut weight_grads[k + i]), share);
            }
        }
    }
}
