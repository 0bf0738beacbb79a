//! The burn backend extension that runs a losskit loss inside burn's graph: [`LossBackend`].
//!
//! [`BurnLoss::forward`](crate::BurnLoss::forward) checks the call and hands it to
//! [`LossBackend::losskit_loss`], routed by burn's `Dispatch` to the tensor's backend:
//! - on a CPU backend (`NdArray`, `Flex`) the loss runs on the backend's own storage of
//!   `y_pred`: a built-in loss with a row kernel on the buffer in place
//!   ([`losskit::loss_on_slice`]: its fused kernel writes the values and, when tracked, the
//!   gradient in one pass); another loss on NdArray's array as a losskit tensor as it is (both
//!   are `ndarray` 0.17 arrays), on Flex on a tensor nothing else holds moved in, or on a
//!   shared one lent for the call ([`losskit_tensor::lend`]); float targets of the input's
//!   dtype are lent too;
//! - on `Autodiff<B>` the output is also a node whose backward pass hands burn losskit's
//!   gradient of `y_pred` times burn's upstream gradient (the gradient's buffer moves into
//!   burn without a copy).

#![allow(deprecated)] // burn 0.22 deprecates its NdArray backend (for Flex); we support both.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::{DType, TensorData};
use losskit::{Error, Loss};
use std::sync::{Arc, Mutex};

/// One loss call, for [`LossBackend::losskit_loss`]: the loss, its constant arguments (targets
/// and sample weights as losskit tensors of the computation's dtype), whether to keep the
/// graph for a gradient, and where the backend leaves its outcome (the graph, or the error:
/// nothing panics inside burn's graph).
#[derive(Clone)]
pub struct LossCall {
    pub(crate) loss: Arc<dyn Loss>,
    pub(crate) y_true: crate::host::TrueValues,
    pub(crate) sample_weight: Option<losskit::Tensor>,
    /// Keep losskit's graph for the gradient (burn tracks `y_pred`).
    pub(crate) tracked: bool,
    /// The dtype losskit computes in (the input's, or f32 for half precision).
    pub(crate) dtype: losskit::DType,
    pub(crate) outcome: Arc<Mutex<Option<Outcome>>>,
}

/// What a backend's run of a [`LossCall`] left: losskit's graph (when tracked) or its error.
pub(crate) enum Outcome {
    Graph(Graph),
    Failed(Error),
}

impl std::fmt::Debug for LossCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LossCall({}, tracked: {})", self.loss.name(), self.tracked)
    }
}

impl LossCall {
    pub(crate) fn leave(&self, outcome: Outcome) {
        if let Ok(mut slot) = self.outcome.lock() {
            *slot = Some(outcome);
        }
    }

    /// The outcome the backend left (taken).
    pub(crate) fn take_outcome(&self) -> Option<Outcome> {
        self.outcome.lock().ok()?.take()
    }
}

/// What the backward pass needs (taken by it), and the dtype of burn's `y_pred` (the
/// gradient's).
#[derive(Clone)]
pub(crate) struct Graph(Arc<Mutex<Option<Kept>>>, DType);

/// losskit's output tensor and the `y_pred` leaf it was computed from, the gradient of a
/// scalar loss computed with its value on the backend's buffer ([`losskit::loss_on_slice`]),
/// or a gradient a device kernel wrote (the backend's own tensor, times the reduction's scale).
enum Kept {
    Tape(losskit::Tensor, losskit::Tensor),
    Gradient(losskit::Tensor),
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Device(Box<dyn std::any::Any + Send>),
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("losskit graph")
    }
}

impl Graph {
    fn new(out: losskit::Tensor, leaf: losskit::Tensor, dtype: DType) -> Graph {
        Graph(Arc::new(Mutex::new(Some(Kept::Tape(out, leaf)))), dtype)
    }

    /// A scalar loss' gradient, ready.
    fn ready(grad: losskit::Tensor, dtype: DType) -> Graph {
        Graph(Arc::new(Mutex::new(Some(Kept::Gradient(grad)))), dtype)
    }

    /// A gradient on the device, `∂(Σ out)/∂y_pred` (a backend's float tensor).
    #[cfg(feature = "wgpu")]
    pub(crate) fn on_device<T: Send + 'static>(grad: T, dtype: DType) -> Graph {
        Graph(Arc::new(Mutex::new(Some(Kept::Device(Box::new(grad))))), dtype)
    }

    /// The same graph with its device gradient (of type `T`) made a `U` by `f` (a backend's
    /// tensor wrapped for the backend around it).
    #[cfg(feature = "wgpu")]
    pub(crate) fn map_device<T: 'static, U: Send + 'static>(self, f: impl FnOnce(T) -> U) -> Graph {
        let kept = self.0.lock().map(|mut g| g.take()).unwrap_or(None);
        let kept = match kept {
            Some(Kept::Device(grad)) => {
                let grad = *grad.downcast::<T>().expect("a device gradient of the inner backend");
                Some(Kept::Device(Box::new(f(grad))))
            }
            other => other,
        };
        Graph(Arc::new(Mutex::new(kept)), self.1)
    }

    /// A graph with nothing to differentiate.
    fn empty() -> Graph {
        Graph(Arc::new(Mutex::new(None)), DType::F32)
    }

    /// `∂(Σ out · upstream)/∂y_pred` as `B`'s tensor in `y_pred`'s dtype (with the usual
    /// upstream of 1, the gradient the kernel wrote, as it is); `None` when the graph is gone
    /// (a second backward pass through the node).
    fn gradient<B: Backend>(&self, upstream: FloatTensor<B>) -> Option<FloatTensor<B>> {
        let taken = self.0.lock().map(|mut g| g.take()).unwrap_or(None)?;
        let device = upstream.device();
        let host_upstream = || -> Vec<f64> { B::float_into_data_sync(upstream.clone()).iter::<f64>().collect() };
        let grad = match taken {
            Kept::Tape(out, leaf) => {
                losskit::upstream_gradients(out, &[leaf], host_upstream()).map(|mut g| g.remove(0))
            }
            // A scalar loss: its gradient times burn's scalar upstream.
            Kept::Gradient(grad) => losskit::scaled_gradient(grad, &host_upstream()),
            Kept::Device(grad) => {
                let grad = *grad.downcast::<FloatTensor<B>>().expect("a device gradient of this node's backend");
                return Some(scaled_on_device::<B>(grad, upstream));
            }
        };
        let grad = grad.expect("burn's upstream gradient has the shape of the loss that ran");
        // The gradient's buffer moves into burn's tensor.
        Some(B::float_from_data(crate::host::to_data(grad).convert_dtype(self.1), &device))
    }
}

/// The operation that runs a losskit loss on burn's tensors (a burn backend extension, routed
/// by burn's `Dispatch` to the tensor's backend; see the module docs).
///
/// `losskit_loss(y_pred, call)`: the loss' values, `[1]` for a reduced loss or the `[n]`
/// per-sample values for `none`, on `y_pred`'s device in `y_pred`'s dtype. On `Autodiff<B>`,
/// when `y_pred` is tracked, the gradient flows to `y_pred` as losskit's
/// `∂(Σ loss · upstream)/∂y_pred`. A failed call leaves its error in `call` (and returns a NaN).
#[backend_extension(NdArray: cfg(feature = "ndarray"), Flex: cfg(feature = "flex"), Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait LossBackend: Backend {
    /// The loss' values (see the trait's docs).
    fn losskit_loss(y_pred: FloatTensor<Self>, call: LossCall) -> FloatTensor<Self>;
}

/// Runs `call` on `pred` (losskit's view of burn's `y_pred`, of `dtype` in burn) and returns the
/// values as data of burn's dtype, leaving the graph or the error in `call`. The targets are
/// lent for the call when they are burn's data in the computation's dtype (not copied).
fn run(call: &LossCall, pred: losskit::Tensor, dtype: DType) -> TensorData {
    losskit_tensor::lend(|lender| run_against(call, &call.y_true.lent(lender), pred, dtype))
}

/// [`run`] on a backend's contiguous buffer of `y_pred`, lent to losskit for the call
/// ([`losskit_tensor::lend`]) with the targets when they are burn's data of that type: neither
/// is copied.
#[cfg(any(feature = "flex", feature = "ndarray"))]
fn run_lent<T: losskit_tensor::Element>(call: &LossCall, y_pred: &[T], shape: &[usize], dtype: DType) -> TensorData {
    losskit_tensor::lend(|lender| {
        let pred = lender.tensor(y_pred, shape).expect("the tensor's own shape");
        run_against(call, &call.y_true.lent(lender), pred, dtype)
    })
}

/// The loss of `pred` against `y_true` (see [`run`]). Tracked, a scalar loss' gradient is
/// computed here (nothing of a lent buffer is kept for later); per-sample values (`none`) keep
/// losskit's graph for burn's upstream.
fn run_against(call: &LossCall, y_true: &losskit::Tensor, pred: losskit::Tensor, dtype: DType) -> TensorData {
    let pred = if call.tracked { pred.requires_grad() } else { pred };
    let graph = |out: &losskit::Tensor| -> losskit::Result<Graph> {
        if out.numel() != 1 {
            return Ok(Graph::new(out.clone(), pred.clone(), dtype));
        }
        let grad = out.backward()?.get(&pred).cloned();
        Ok(Graph::ready(grad.unwrap_or_else(|| pred.zeros_like()), dtype))
    };
    let out = call.loss.call(y_true, &pred, call.sample_weight.as_ref());
    match out.and_then(|out| Ok((call.tracked.then(|| graph(&out)).transpose()?, out))) {
        Ok((graph, out)) => {
            if let Some(graph) = graph {
                call.leave(Outcome::Graph(graph));
            }
            crate::host::values(&out).convert_dtype(dtype)
        }
        Err(e) => {
            call.leave(Outcome::Failed(e));
            TensorData::new(vec![f32::NAN], [1]).convert_dtype(dtype)
        }
    }
}

#[cfg(feature = "ndarray")]
impl LossBackend for burn::backend::NdArray {
    fn losskit_loss(y_pred: FloatTensor<Self>, call: LossCall) -> FloatTensor<Self> {
        use burn_ndarray::NdArrayTensor;
        use losskit_tensor::Storage;
        let (device, dtype) = (y_pred.device(), y_pred.dtype());
        // A built-in loss on the array's own buffer (its value, and when tracked its gradient),
        // as on Flex.
        let shape = y_pred.shape();
        let value = match &y_pred {
            NdArrayTensor::F32(s) => s.view().to_slice().and_then(|v| in_place(&call, v, &shape, dtype)),
            NdArrayTensor::F64(s) => s.view().to_slice().and_then(|v| in_place(&call, v, &shape, dtype)),
            _ => None,
        };
        if let Some(values) = value {
            return Self::float_from_data(values, &device);
        }
        // Another loss on the same `ndarray` arrays: shared, not copied.
        let pred = match (y_pred, call.dtype) {
            (NdArrayTensor::F32(s), losskit::DType::F32) => {
                losskit::Tensor::from_storage(Storage::F32(s.into_shared()))
            }
            (NdArrayTensor::F64(s), losskit::DType::F64) => {
                losskit::Tensor::from_storage(Storage::F64(s.into_shared()))
            }
            (other, to) => crate::host::converted(Self::float_into_data_sync(other), to),
        };
        Self::float_from_data(run(&call, pred, dtype), &device)
    }
}

#[cfg(feature = "flex")]
impl LossBackend for burn::backend::Flex {
    fn losskit_loss(y_pred: FloatTensor<Self>, call: LossCall) -> FloatTensor<Self> {
        let (device, dtype) = (y_pred.device(), y_pred.dtype());
        // A built-in loss on Flex's own buffer (its value, and when tracked its gradient): no
        // copy of y_pred.
        let shape = y_pred.shape();
        let value = match (y_pred.as_slice::<f32>(), y_pred.as_slice::<f64>()) {
            (Some(v), _) => in_place(&call, v, &shape, dtype),
            (_, Some(v)) => in_place(&call, v, &shape, dtype),
            _ => None,
        };
        if let Some(values) = value {
            return Self::float_from_data(values, &device);
        }
        let own_dtype = crate::host::compute_dtype(dtype, "y_pred").is_ok_and(|d| d == call.dtype)
            && matches!(dtype, DType::F32 | DType::F64);
        let whole = y_pred.is_contiguous() && y_pred.layout().start_offset() == 0;
        let pred = if own_dtype && whole && y_pred.is_unique() {
            // burn's buffer alone holds the values: moved into losskit, not copied.
            crate::host::owned(y_pred.into_data())
        } else {
            // Shared (burn's graph keeps it too): its contiguous values lent for the call.
            let lent = match (y_pred.as_slice::<f32>(), y_pred.as_slice::<f64>(), call.dtype) {
                (Some(v), _, losskit::DType::F32) => Some(run_lent(&call, v, shape.as_slice(), dtype)),
                (_, Some(v), losskit::DType::F64) => Some(run_lent(&call, v, shape.as_slice(), dtype)),
                _ => None,
            };
            if let Some(values) = lent {
                return Self::float_from_data(values, &device);
            }
            crate::host::converted(Self::float_into_data_sync(y_pred), call.dtype)
        };
        Self::float_from_data(run(&call, pred, dtype), &device)
    }
}

/// The loss of `call` on a backend's own buffer ([`losskit::loss_on_slice`]): its value as data
/// of the buffer's dtype, its gradient (when tracked) or its error left in `call`; `None` when
/// that path does not apply.
#[cfg(any(feature = "flex", feature = "ndarray"))]
fn in_place<T: losskit_tensor::Element + burn::tensor::Element>(
    call: &LossCall,
    y_pred: &[T],
    shape: &burn::tensor::Shape,
    dtype: DType,
) -> Option<TensorData> {
    if T::DTYPE != call.dtype {
        return None;
    }
    let (loss, w) = (call.loss.as_ref(), call.sample_weight.as_ref());
    // burn's targets in place when they have the type, else losskit's converted tensor.
    let converted;
    let y_true = match call.y_true.slice::<T>() {
        Some(v) => v,
        None => {
            converted = call.y_true.tensor().values_or_copy::<T>();
            &converted
        }
    };
    let value = losskit::loss_on_slice(loss, y_true, call.y_true.shape(), y_pred, shape.as_slice(), w, call.tracked)?;
    Some(match value {
        Ok((v, grad)) => {
            if let Some(g) = grad {
                let g = losskit::Tensor::from_vec(g, shape.as_slice()).expect("y_pred's own shape");
                call.leave(Outcome::Graph(Graph::ready(g, dtype)));
            }
            TensorData::new(vec![v], [1])
        }
        Err(e) => {
            call.leave(Outcome::Failed(e));
            TensorData::new(vec![T::c(f64::NAN)], [1])
        }
    })
}

/// A device gradient `grad` (`(..., cols)`, for an upstream of 1) times burn's `upstream` (one
/// value, or one per row for `none`), on the device. A large gradient is kept as it is when
/// every upstream value is 1 (the usual `loss.backward()`; reading the upstream costs a host
/// round trip, the product a pass over the gradient); a small one is always multiplied (no
/// round trip).
fn scaled_on_device<B: Backend>(grad: FloatTensor<B>, upstream: FloatTensor<B>) -> FloatTensor<B> {
    const SMALL: usize = 1 << 16;
    let mut shape = grad.shape();
    if shape.num_elements() >= SMALL {
        let up = B::float_into_data_sync(upstream.clone());
        if up.iter::<f64>().all(|u| u == 1.0) {
            return grad;
        }
    }
    // The upstream broadcast over each row's values: `(..., 1)`, or all ones for a scalar.
    let n = upstream.shape().num_elements();
    let dims = shape.as_slice().len();
    for (i, d) in shape.iter_mut().enumerate() {
        if n == 1 || i + 1 == dims {
            *d = 1;
        }
    }
    let upstream = B::float_cast(upstream, grad.dtype().into());
    B::float_mul(grad, B::float_reshape(upstream, shape))
}

/// A loss on the host for a backend without a device kernel for it: `y_pred` read back,
/// losskit's CPU path, the values written to `y_pred`'s device (the gradient, kept on the
/// host, follows in the backward pass).
#[cfg(feature = "wgpu")]
pub(crate) fn on_host<B: Backend>(y_pred: FloatTensor<B>, call: &LossCall) -> FloatTensor<B> {
    let (device, dtype) = (y_pred.device(), y_pred.dtype());
    let pred = crate::host::converted(B::float_into_data_sync(y_pred), call.dtype);
    B::float_from_data(run(call, pred, dtype), &device)
}

/// Reading a backend's tensor synchronously (the host waits for the device).
trait ReadSync: Backend {
    fn float_into_data_sync(t: FloatTensor<Self>) -> TensorData {
        burn::tensor::try_read_sync(Self::float_into_data(t))
            .expect("the backend reads synchronously")
            .expect("the tensor can be read")
    }
}

impl<B: Backend> ReadSync for B {}

/// The backward pass of a losskit loss node.
#[derive(Debug)]
struct LosskitBackward;

impl<B: Backend> Backward<B, 1> for LosskitBackward {
    type State = Graph;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let Some(parent) = parent else { return };
        let grad =
            ops.state.gradient::<B>(upstream).expect("losskit-burn: a second backward pass through one loss node");
        grads.register::<B>(parent.id, grad);
    }
}

impl<B: LossBackend, C: CheckpointStrategy> LossBackend for Autodiff<B, C> {
    fn losskit_loss(y_pred: FloatTensor<Self>, call: LossCall) -> FloatTensor<Self> {
        let (primitive, node) = y_pred.into_parts();
        let prepared = LosskitBackward.prepare::<C>([node]).compute_bound().stateful();
        let output = B::losskit_loss(primitive, call.clone());
        match prepared {
            OpsKind::Tracked(prep) => {
                // The graph goes into the node; an error stays in `call` for the caller.
                let graph = match call.take_outcome() {
                    Some(Outcome::Graph(g)) => g,
                    Some(failed) => {
                        call.leave(failed);
                        Graph::empty()
                    }
                    None => Graph::empty(),
                };
                prep.finish(graph, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}
