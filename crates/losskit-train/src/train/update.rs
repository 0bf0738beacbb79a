//! The optimizer's update of the model's weights, with or without the NaN guard's check.

use crate::model::Model;
use losskit::{Result, Tensor};

/// The optimizer's update of every weight with the gradients `g` (in weight order).
pub(crate) fn apply_update(model: &mut Model, g: &[Tensor]) -> Result<()> {
    with_optimizer(model, |opt, params| opt.apply(params, g))
}

/// [`apply_update`] when every gradient value is finite, with the gradients' `Σ g²`.
pub(crate) fn apply_update_checked(model: &mut Model, g: &[Tensor]) -> Result<crate::GradientCheck> {
    with_optimizer(model, |opt, params| opt.apply_checked(params, g, true))
}

/// Runs `f` on the optimizer and the weights (the optimizer is taken out of the compiled
/// state meanwhile, so both can be borrowed mutably).
pub(crate) fn with_optimizer<R>(
    model: &mut Model,
    f: impl FnOnce(&mut crate::Optimizer, &mut [&mut crate::layers::Param]) -> Result<R>,
) -> Result<R> {
    let compiled = model.compiled.as_mut().expect("checked");
    let mut optimizer = std::mem::replace(&mut compiled.optimizer, crate::Optimizer::sgd(0.0)?);
    let result = f(&mut optimizer, &mut model.params_mut());
    model.compiled.as_mut().expect("checked").optimizer = optimizer;
    result
}
