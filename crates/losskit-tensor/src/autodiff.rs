//! Reverse-mode automatic differentiation: graph nodes, `backward`, and the no-grad switch.

pub(crate) use crate::flags::with_flag;
use crate::{Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether operations on this thread currently record themselves for autodiff.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` with recording switched off on this thread (as PyTorch's `torch.no_grad()`):
/// results of operations inside never require gradients. Used for inference and inside
/// `backward` itself, so gradient formulas can be written with ordinary tensor operations.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&GRAD_ENABLED, false, f)
}

/// A differentiable operation: how to send the gradient of its output back to its inputs.
///
/// This is the hook for fused operations defined outside this crate (losskit's built-in losses
/// are one `CustomOp` each): compute the output yourself, then record it with
/// [`Tensor::from_op`].
pub trait CustomOp: Send + Sync {
    /// A short name for messages and debugging.
    fn name(&self) -> &str;

    /// Given the inputs, the output and `grad = ∂L/∂output` (same shape as the output), returns
    /// `∂L/∂input` for each input, in order (`None` where an input gets no gradient).
    /// Runs with recording off.
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>>;
}

/// A [`CustomOp`] from a closure; the built-in operations use it.
pub(crate) struct FnOp<F> {
    pub name: &'static str,
    pub f: F,
}

impl<F> CustomOp for FnOp<F>
where
    F: Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync,
{
    fn name(&self) -> &str {
        self.name
    }
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        (self.f)(inputs, output, grad)
    }
}

/// The gradients computed by [`Tensor::backward`], keyed by tensor.
///
/// Holds `∂L/∂t` for every leaf tensor `t` that requires gradients and took part in computing
/// `L`; each gradient has the shape and dtype of its tensor.
#[derive(Debug, Default, Clone)]
pub struct Gradients {
    map: HashMap<u64, Tensor>,
}

impl Gradients {
    /// The gradient of `t`, if `t` is a leaf that requires gradients and `L` depends on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The working sets of one [`backward`], kept per thread between calls (cleared, with their
/// capacity) so that a training step's backward does not allocate them again.
#[derive(Default)]
struct Scratch {
    order: Vec<Tensor>,
    seen: HashSet<u64>,
    stack: Vec<(Tensor, bool)>,
    grads: HashMap<u64, Tensor>,
}

thread_local! {
    /// This thread's [`Scratch`] between two calls of [`backward`].
    static KEPT_SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
}

impl Scratch {
    /// This thread's kept scratch (a new one when none is kept, e.g. in a nested `backward`).
    fn take() -> Scratch {
        KEPT_SCRATCH.try_with(|k| k.borrow_mut().take()).ok().flatten().unwrap_or_default()
    }

    /// Empties the sets (dropping the tensors they hold) and keeps them for the next call.
    fn keep(mut self) {
        self.order.clear();
        self.seen.clear();
        self.stack.clear();
        self.grads.clear();
        let _ = KEPT_SCRATCH.try_with(|k| *k.borrow_mut() = Some(self));
    }
}

/// Fills `s.order` with the nodes reachable from `root` that require gradients, inputs before
/// the nodes that use them.
fn topological_order(root: &Tensor, s: &mut Scratch) {
    // Iterative post-order DFS: (tensor, children pushed?)
    s.stack.push((root.clone(), false));
    while let Some((t, expanded)) = s.stack.pop() {
        if expanded {
            s.order.push(t);
            continue;
        }
        if !t.requires_grad_flag() || !s.seen.insert(t.id()) {
            continue;
        }
        s.stack.push((t.clone(), true));
        if let Some(node) = t.node() {
            for input in node.inputs.iter().rev() {
                if input.requires_grad_flag() && !s.seen.contains(&input.id()) {
                    s.stack.push((input.clone(), false));
                }
            }
        }
    }
}

pub(crate) fn backward(root: &Tensor) -> Result<Gradients> {
    if root.numel() != 1 {
        return Err(crate::Error::shape(
            "backward",
            format!("needs a scalar (one element), got shape {:?}; reduce it first (e.g. `sum`)", root.shape()),
        ));
    }
    let mut leaves = Gradients::default();
    if !root.requires_grad_flag() {
        return Ok(leaves);
    }
    let mut scratch = Scratch::take();
    let result = propagate(root, &mut scratch, &mut leaves);
    scratch.keep();
    result?;
    // Lazy gradients are computed here, while their inputs are at hand (and so that `backward`
    // returns values, not recipes that keep the forward graph alive).
    for g in leaves.map.values_mut() {
        if g.is_lazy() {
            *g = Tensor::from_storage(g.storage().clone());
        }
    }
    Ok(leaves)
}

/// Sends `∂root/∂root = 1` back through the graph in reverse topological order, summing what
/// reaches each node; the leaves' gradients go to `leaves`.
fn propagate(root: &Tensor, scratch: &mut Scratch, leaves: &mut Gradients) -> Result<()> {
    topological_order(root, scratch);
    let Scratch { order, grads, .. } = scratch;
    grads.insert(root.id(), root.ones_like());
    no_grad(|| {
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else { continue };
            let Some(node) = t.node() else {
                leaves.map.insert(t.id(), g);
                continue;
            };
            let input_grads = node.op.backward(&node.inputs, t, &g)?;
            for (input, ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !input.requires_grad_flag() {
                    continue;
                }
                if ig.shape() != input.shape() {
                    return Err(crate::Error::shape(
                        format!("backward of {}", node.op.name()),
                        format!("gradient of shape {:?} for an input of shape {:?}", ig.shape(), input.shape()),
                    ));
                }
                let total = match grads.remove(&input.id()) {
                    Some(prev) => crate::fusion::accumulate(prev, ig)?,
                    None => ig,
                };
                grads.insert(input.id(), total);
            }
        }
        Ok(())
    })
}
