//! Step 5 of a planned step: the optimizer's update of the model's weights, in place.

use crate::layers::{Layer, Param};
use crate::optimizers::Weights;
use losskit::{Result, Tensor};

/// Step 5: the optimizer's update of the model's weights with `grads`, in place.
pub(super) fn update(
    model: &mut crate::Model,
    grads: &[Tensor],
    check: Option<bool>,
    sums: &mut Vec<f64>,
) -> Result<(bool, bool)> {
    let compiled = model.compiled.as_mut().expect("checked in StepPlan::new");
    let mut weights = LayerWeights { trunk: &mut model.trunk, heads: &mut model.heads };
    compiled.optimizer.apply_to(&mut weights, grads, check, sums)
}

/// The model's weights walked in place in weight order (the trunk's layers, then each
/// head's), as the optimizer's update walks them.
pub(super) struct LayerWeights<'a> {
    pub(super) trunk: &'a mut [Box<dyn Layer>],
    pub(super) heads: &'a mut [(String, Vec<Box<dyn Layer>>)],
}

impl LayerWeights<'_> {
    /// The chain holding weight `i` (0 the trunk, `k + 1` head `k`), the layer in it holding
    /// it, and the weight's index in that layer.
    fn locate(&self, mut i: usize) -> (usize, usize, usize) {
        let chains = std::iter::once(&*self.trunk).chain(self.heads.iter().map(|(_, h)| h.as_slice()));
        for (c, layers) in chains.enumerate() {
            for (l, layer) in layers.iter().enumerate() {
                let n = layer.param_count();
                if i < n {
                    return (c, l, i);
                }
                i -= n;
            }
        }
        panic!("weight index out of range")
    }

    /// Chain `c`'s layers (0 the trunk, `k + 1` head `k`).
    fn chain(&mut self, c: usize) -> &mut [Box<dyn Layer>] {
        match c {
            0 => self.trunk,
            k => &mut self.heads[k - 1].1,
        }
    }
}

impl Weights for LayerWeights<'_> {
    fn count(&self) -> usize {
        let chains = std::iter::once(&*self.trunk).chain(self.heads.iter().map(|(_, h)| h.as_slice()));
        chains.flat_map(|c| c.iter()).map(|l| l.param_count()).sum()
    }
    fn weight(&self, i: usize) -> &Param {
        let (c, l, w) = self.locate(i);
        let layers: &[Box<dyn Layer>] = if c == 0 { self.trunk } else { &self.heads[c - 1].1 };
        layers[l].param(w).expect("located")
    }
    fn weight_mut(&mut self, i: usize) -> &mut Param {
        let (c, l, w) = self.locate(i);
        self.chain(c)[l].param_mut(w).expect("located")
    }
}
