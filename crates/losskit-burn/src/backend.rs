//! The burn backend extension that puts a losskit loss into burn's graph: [`LossBackend`].
//!
//! [`BurnLoss::forward`](crate::BurnLoss::forward) runs the loss on the host through losskit's
//! one call path (a built-in loss' fused kernel writes the value and, when `y_pred` is tracked,
//! the gradient in one pass) and hands the result to [`LossBackend::losskit_loss`]: on a plain
//! backend it becomes the output tensor; on `Autodiff<B>` the output is also a node whose
//! backward pass hands burn losskit's gradient of `y_pred`, times burn's upstream gradient.

#![allow(deprecated)] // burn 0.22 deprecates its NdArray backend (for Flex); we support both.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::{DType, TensorData};
use std::sync::{Arc, Mutex};

/// A loss computed on the host, ready to enter burn's graph: its values and, when `y_pred` was
/// tracked, losskit's graph for the gradient.
#[derive(Clone)]
pub struct Computed {
    /// The loss' values (`[1]` for a reduced loss, the per-sample values flattened for `none`),
    /// in `y_pred`'s float dtype.
    pub(crate) values: TensorData,
    /// losskit's output and its leaf `y_pred` (taken by the first backward pass).
    pub(crate) graph: Option<Graph>,
}

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Computed({:?}, gradient: {})", self.values.shape(), self.graph.is_some())
    }
}

/// losskit's output tensor and the `y_pred` leaf it was computed from, shared by the node's
/// clones until the backward pass takes them, and the dtype of burn's `y_pred` (the gradient's).
#[derive(Clone)]
pub(crate) struct Graph(Arc<Mutex<Option<(losskit::Tensor, losskit::Tensor)>>>, DType);

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("losskit graph")
    }
}

impl Graph {
    pub(crate) fn new(out: losskit::Tensor, leaf: losskit::Tensor, dtype: DType) -> Graph {
        Graph(Arc::new(Mutex::new(Some((out, leaf)))), dtype)
    }

    /// A graph with nothing to differentiate: the gradient is not registered.
    fn empty() -> Graph {
        Graph(Arc::new(Mutex::new(None)), DType::F32)
    }

    /// `∂(Σ out · upstream)/∂y_pred` as data of `y_pred`'s dtype (with the usual upstream of
    /// 1, the gradient losskit's kernel wrote, moved out without a copy); `None` when the graph
    /// is gone (a second backward pass through the same node).
    fn gradient(&self, upstream: TensorData) -> Option<TensorData> {
        let taken = self.0.lock().map(|mut g| g.take()).unwrap_or(None);
        let (out, leaf) = taken?;
        let upstream: Vec<f64> = upstream.iter::<f64>().collect();
        let seeded = if upstream.len() == 1 && upstream[0] == 1.0 {
            out.sum_all()
        } else {
            let up = losskit::Tensor::from_vec(upstream, out.shape()).map(|u| u.to_dtype(out.dtype()));
            out.mul(&up.expect("burn's upstream gradient has the loss' shape")).expect("same shapes").sum_all()
        };
        let mut grads = seeded.backward().expect("losskit's graph of a loss that ran");
        drop((seeded, out));
        let grad = grads.remove(&leaf).unwrap_or_else(|| leaf.zeros_like());
        Some(crate::host::to_data(grad).convert_dtype(self.1))
    }
}

/// The operation that enters a losskit loss into burn's graph (a burn backend extension,
/// routed by burn's `Dispatch` to the tensor's backend).
///
/// `losskit_loss(y_pred, computed)`: the output is `computed`'s values (shape `[1]` for a
/// reduced loss, `[n]` per-sample values for `none`) on `y_pred`'s device; on `Autodiff<B>`, when
/// `y_pred` is tracked, the output's gradient flows to `y_pred` as losskit's
/// `∂(Σ loss · upstream)/∂y_pred` (the shape of `y_pred`).
#[backend_extension(NdArray: cfg(feature = "ndarray"), Flex: cfg(feature = "flex"), Autodiff)]
pub trait LossBackend: Backend {
    /// The loss' values as a tensor on `y_pred`'s device (see the trait's docs).
    fn losskit_loss(y_pred: FloatTensor<Self>, computed: Computed) -> FloatTensor<Self> {
        let device = y_pred.device();
        Self::float_from_data(computed.values, &device)
    }
}

#[cfg(feature = "ndarray")]
impl LossBackend for burn::backend::NdArray {}
#[cfg(feature = "flex")]
impl LossBackend for burn::backend::Flex {}

/// The backward pass of a losskit loss node.
#[derive(Debug)]
struct LosskitBackward;

impl<B: Backend> Backward<B, 1> for LosskitBackward {
    type State = Graph;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let Some(parent) = parent else { return };
        let device = upstream.device();
        let upstream = burn::tensor::try_read_sync(B::float_into_data(upstream))
            .expect("a CPU backend reads synchronously")
            .expect("burn's upstream gradient can be read");
        // No graph: an empty one, or a second backward pass through this node (burn's own
        // nodes keep their state; losskit's graph is used up by the first).
        let grad = ops.state.gradient(upstream).expect("losskit-burn: a second backward pass through one loss node");
        grads.register::<B>(parent.id, B::float_from_data(grad, &device));
    }
}

impl<B: LossBackend, C: CheckpointStrategy> LossBackend for Autodiff<B, C> {
    fn losskit_loss(y_pred: FloatTensor<Self>, computed: Computed) -> FloatTensor<Self> {
        let (primitive, node) = y_pred.into_parts();
        let prepared = LosskitBackward.prepare::<C>([node]).compute_bound().stateful();
        let graph = computed.graph.clone();
        let output = B::losskit_loss(primitive, Computed { graph: None, ..computed });
        match (prepared, graph) {
            (OpsKind::Tracked(prep), Some(graph)) => prep.finish(graph, output),
            // Tracked by burn but computed without losskit's graph (`BurnLoss` always keeps
            // one when burn tracks y_pred): a constant for burn.
            (OpsKind::Tracked(prep), None) => prep.finish(Graph::empty(), output),
            (OpsKind::UnTracked(prep), _) => prep.finish(output),
        }
    }
}
