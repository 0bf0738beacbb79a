//! [`LossBackend`] on burn's cube backends (CubeCL: wgpu's Vulkan, Metal and DX12, CUDA,
//! ROCm): the fused row kernels of [`kernels`] on the device's own buffers, one launch per
//! call that writes each row's value and (when tracked) its gradient; every other loss on the
//! host (`y_pred` read back, losskit's CPU path, the values and gradient written back).
//!
//! On the device ([`Formula`]): sparse and one-hot cross-entropy from logits or probabilities,
//! categorical and binary focal, binary cross-entropy; `y_pred` in f32 (or f16, cast on the
//! device), shape `(rows, cols)` or `(..., cols)` flattened to rows. The targets and sample
//! weights are losskit constants on the host ([`LossCall`]); the prepared targets (class
//! indices checked as on the CPU), the class weights and each row's scale
//! ([`losskit::RowLoss::row_scale`]) are uploaded per call: `rows` floats for sparse targets,
//! `rows × cols` for dense ones.

mod kernels;

use crate::backend::{Graph, LossBackend, LossCall, Outcome};
use burn::backend::fusion::client::GlobalFusionClient;
use burn::backend::fusion::stream::StreamId;
use burn::backend::fusion::{Fusion, FusionBackend, FusionTensor, NoOp};
use burn::backend::ir::{BackendIr, InitOperationIr, OperationIr};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, FloatDType, Shape, TensorData};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::{CubeCount, CubeDim};
use losskit::{Reduction, RowMath};

/// The fusion runtime of burn's cube backend.
type CubeFusionRuntime = <CubeBackend as FusionBackend>::FusionRuntime;

impl LossBackend for CubeBackend {
    fn losskit_loss(y_pred: FloatTensor<Self>, call: LossCall) -> FloatTensor<Self> {
        match DeviceKernel::for_call(&y_pred, &call) {
            Some(Ok(kernel)) => kernel.launch(y_pred, &call),
            Some(Err(e)) => {
                let device = y_pred.device.clone();
                call.leave(Outcome::Failed(e));
                Self::float_from_data(TensorData::new(vec![f32::NAN], [1]), &device)
            }
            None => crate::backend::on_host::<Self>(y_pred, &call),
        }
    }
}

thread_local! {
    static LAUNCHES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many device kernels this thread has launched (for tests that check a loss ran on the
/// device, not on the host).
pub fn launches() -> usize {
    LAUNCHES.with(|n| n.get())
}

/// The device formula of a loss ([`RowMath`]), with its parameters in f32 as the CPU kernels
/// round them.
#[derive(Debug, Clone, Copy)]
enum Formula {
    /// [`kernels::softmax_cross_entropy`]: `smoothing` is PyTorch's sparse `ε`, `keep`/`add`
    /// Keras' one-hot smoothing.
    Softmax { sparse: bool, smoothing: f32, keep: f32, add: f32 },
    /// [`kernels::probability_cross_entropy`].
    Probabilities { sparse: bool, keep: f32, add: f32 },
    /// [`kernels::binary_cross_entropy`]: `kind` 0 logits, 1 probabilities, 2 focal.
    Binary { kind: u32, focal_logits: bool, balanced: bool, keep: f32, add: f32, gamma: f32, alpha: f32 },
    /// [`kernels::categorical_focal`] (its `α` in the class-weights slot).
    CategoricalFocal { from_logits: bool, gamma: f32 },
}

/// Keras' label smoothing `y·(1 - ls) + ls·share` as the CPU kernels round it: `(keep, add)`.
fn smoothing(ls: f64, share: f64) -> (f32, f32) {
    (1.0 - ls as f32, ls as f32 * share as f32)
}

impl Formula {
    /// The formula of `math` for rows of `cols` values, with its class weights (focal `α`);
    /// `None` for the losses that run on the host.
    fn of(math: RowMath<'_>, cols: usize) -> Option<(Formula, Option<&[f64]>)> {
        let binary = |kind, keep, add| Formula::Binary {
            kind,
            focal_logits: false,
            balanced: false,
            keep,
            add,
            gamma: 0.0,
            alpha: 0.0,
        };
        Some(match math {
            RowMath::SparseCategoricalCrossentropy { from_logits: true, label_smoothing, class_weights } => {
                let f = Formula::Softmax { sparse: true, smoothing: label_smoothing as f32, keep: 1.0, add: 0.0 };
                (f, class_weights)
            }
            RowMath::SparseCategoricalCrossentropy { from_logits: false, class_weights, .. } => {
                (Formula::Probabilities { sparse: true, keep: 1.0, add: 0.0 }, class_weights)
            }
            RowMath::CategoricalCrossentropy { from_logits, label_smoothing } => {
                let (keep, add) = smoothing(label_smoothing, 1.0 / cols as f64);
                match from_logits {
                    true => (Formula::Softmax { sparse: false, smoothing: 0.0, keep, add }, None),
                    false => (Formula::Probabilities { sparse: false, keep, add }, None),
                }
            }
            RowMath::BinaryCrossentropy { from_logits, label_smoothing, class_weights } => {
                let (keep, add) = smoothing(label_smoothing, 0.5);
                (binary(if from_logits { 0 } else { 1 }, keep, add), class_weights)
            }
            RowMath::BinaryFocalCrossentropy { from_logits, gamma, alpha, apply_class_balancing } => {
                let f = Formula::Binary {
                    kind: 2,
                    focal_logits: from_logits,
                    balanced: apply_class_balancing,
                    keep: 1.0,
                    add: 0.0,
                    gamma: gamma as f32,
                    alpha: alpha as f32,
                };
                (f, None)
            }
            RowMath::CategoricalFocalCrossentropy { from_logits, alpha, gamma } => {
                (Formula::CategoricalFocal { from_logits, gamma: gamma as f32 }, Some(alpha))
            }
            _ => return None,
        })
    }
}

/// burn's fused cube backend (what a wgpu device is with burn's `fusion`, its default): the
/// input resolved to the cube backend's tensor (the fusion stream runs up to it), the loss run
/// there, its values and gradient registered back as fusion tensors.
impl LossBackend for Fusion<CubeBackend> {
    fn losskit_loss(y_pred: FloatTensor<Self>, call: LossCall) -> FloatTensor<Self> {
        let client = y_pred.client.clone();
        let inner = client.resolve_tensor_float::<CubeBackend>(y_pred);
        let out = CubeBackend::losskit_loss(inner, call.clone());
        if let Some(outcome) = call.take_outcome() {
            let outcome = match outcome {
                Outcome::Graph(g) => Outcome::Graph(g.map_device(|grad: CubeTensor| fused(&client, grad))),
                failed => failed,
            };
            call.leave(outcome);
        }
        fused(&client, out)
    }
}

/// A cube tensor registered with the fusion client as a fusion tensor (as burn's own
/// `float_from_data` does).
fn fused(client: &GlobalFusionClient<CubeFusionRuntime>, t: CubeTensor) -> FusionTensor<CubeFusionRuntime> {
    let (shape, dtype) = (t.shape(), t.dtype());
    let handle = <CubeBackend as BackendIr>::float_tensor_handle(t);
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    let mut out = client.register(StreamId::current(), OperationIr::Init(desc), NoOp::<CubeBackend>::new());
    out.remove(0)
}

/// A loss call that runs on the device: its formula and the host data it uploads.
struct DeviceKernel {
    rows: usize,
    cols: usize,
    formula: Formula,
    targets: Vec<f32>,
    class_weights: Option<Vec<f32>>,
    row_scale: Vec<f32>,
    reduced: bool,
}

impl DeviceKernel {
    /// The kernel for `call` on `y_pred`, its targets prepared (an error for labels out of
    /// range, as on the CPU); `None` when the call runs on the host.
    fn for_call(y_pred: &FloatTensor<CubeBackend>, call: &LossCall) -> Option<losskit::Result<DeviceKernel>> {
        let shape = y_pred.shape();
        let (&cols, leading) = shape.as_slice().split_last()?;
        let rows = leading.iter().product::<usize>();
        let dtype_fits = matches!(y_pred.dtype, DType::F32 | DType::F16);
        if leading.is_empty() || !dtype_fits || call.dtype != losskit::DType::F32 || rows * cols == 0 {
            return None;
        }
        let loss = call.loss.as_ref();
        let row = losskit::masked_row_kernel(loss)?;
        // A `(rows, cols)` input, or a higher rank one flattened to its rows (`(batch, seq,
        // classes)`: the per-sample values are the rows', the reduction over all of them) when
        // no sample weight says otherwise.
        let weights_fit = call
            .sample_weight
            .as_ref()
            .is_none_or(|w| leading.len() == 1 && matches!(w.shape(), [n] | [n, 1] if *n == rows));
        if !weights_fit || !row.fits(&[rows, cols], &flat_targets(call.y_true.shape(), leading, cols)?) {
            return None;
        }
        let (formula, class_weights) = Formula::of(row.math(), cols)?;
        let mut targets = call.y_true.tensor().to_vec::<f32>();
        if let Err(e) = row.prepare_targets(loss.name(), &mut targets, cols) {
            return Some(Err(e));
        }
        let weights = call.sample_weight.as_ref().map(|w| w.to_vec::<f32>());
        let reduced = loss.reduction() != Reduction::None;
        let row_scale = row.row_scale(loss.reduction(), rows, &targets, weights.as_deref());
        let class_weights = class_weights.map(|w| w.iter().map(|&v| v as f32).collect());
        Some(Ok(DeviceKernel { rows, cols, formula, targets, class_weights, row_scale, reduced }))
    }

    /// Runs the kernel: the loss (`[1]`, or the `[rows]` values for `none`), the gradient
    /// left in `call` when tracked.
    fn launch(self, y_pred: FloatTensor<CubeBackend>, call: &LossCall) -> FloatTensor<CubeBackend> {
        type B = CubeBackend;
        let (device, shape) = (y_pred.device.clone(), y_pred.shape());
        let upload = |v: Vec<f32>| {
            let n = v.len();
            B::float_from_data(TensorData::new(v, [n]), &device)
        };
        let client = y_pred.client.clone();
        // f16 is computed in f32 (cast on the device), its value and gradient cast back.
        let dtype = y_pred.dtype;
        let y_pred = match dtype {
            DType::F32 => y_pred,
            _ => B::float_cast(y_pred, FloatDType::F32),
        };
        let y_pred = burn_cubecl::kernel::into_contiguous(y_pred).into_tensor_arg();
        let targets = upload(self.targets).into_tensor_arg();
        let weighted = self.class_weights.as_ref().is_some_and(|w| w.len() == self.cols);
        let class_weights = upload(self.class_weights.unwrap_or_else(|| vec![1.0])).into_tensor_arg();
        let row_scale = upload(self.row_scale).into_tensor_arg();
        let values = B::float_empty(Shape::new([self.rows]), &device, FloatDType::F32);
        // The gradient in `y_pred`'s own shape (the kernel sees its rows).
        let grad_shape = if call.tracked { shape } else { Shape::new([1]) };
        let grad = B::float_empty(grad_shape, &device, FloatDType::F32);
        let (x, y) = grid(self.rows);
        let (count, dim) = (CubeCount::Static(x, y, 1), CubeDim::new_1d(kernels::units(self.rows)));
        let (rows, cols, tracked) = (self.rows as u32, self.cols as u32, call.tracked);
        let (out, g) = (values.clone().into_tensor_arg(), grad.clone().into_tensor_arg());
        // Keras' clip range: `epsilon()` and `1 - epsilon()` rounded once from f64.
        let (eps, hi) = (1e-7_f32, (1.0 - 1e-7_f64) as f32);
        match self.formula {
            Formula::Softmax { sparse, smoothing, keep, add } => kernels::softmax_cross_entropy::launch(
                &client,
                count,
                dim,
                y_pred,
                targets,
                class_weights,
                row_scale,
                out,
                g,
                rows,
                cols,
                smoothing,
                keep,
                add,
                sparse,
                weighted,
                tracked,
            ),
            Formula::Probabilities { sparse, keep, add } => kernels::probability_cross_entropy::launch(
                &client,
                count,
                dim,
                y_pred,
                targets,
                class_weights,
                row_scale,
                out,
                g,
                rows,
                cols,
                keep,
                add,
                eps,
                hi,
                sparse,
                weighted,
                tracked,
            ),
            Formula::Binary { kind, focal_logits, balanced, keep, add, gamma, alpha } => {
                kernels::binary_cross_entropy::launch(
                    &client,
                    count,
                    dim,
                    y_pred,
                    targets,
                    class_weights,
                    row_scale,
                    out,
                    g,
                    rows,
                    cols,
                    keep,
                    add,
                    eps,
                    hi,
                    gamma,
                    alpha,
                    kind,
                    focal_logits,
                    balanced,
                    weighted,
                    tracked,
                )
            }
            Formula::CategoricalFocal { from_logits, gamma } => kernels::categorical_focal::launch(
                &client,
                count,
                dim,
                y_pred,
                targets,
                class_weights,
                row_scale,
                out,
                g,
                rows,
                cols,
                eps,
                hi,
                gamma,
                from_logits,
                weighted,
                tracked,
            ),
        }
        LAUNCHES.with(|n| n.set(n.get() + 1));
        let back = |t: FloatTensor<B>| if dtype == DType::F32 { t } else { B::float_cast(t, dtype.into()) };
        if call.tracked {
            call.leave(Outcome::Graph(Graph::on_device(back(grad), dtype)));
        }
        back(if self.reduced { B::float_sum(values) } else { values })
    }
}

/// The targets' shape with `y_pred`'s leading dimensions (`leading`) flattened into one:
/// `leading` itself (class indices, with or without a trailing 1) or `leading + [cols]`;
/// `None` for any other shape.
fn flat_targets(target: &[usize], leading: &[usize], cols: usize) -> Option<Vec<usize>> {
    let rows = leading.iter().product::<usize>();
    if target == leading {
        Some(vec![rows])
    } else if target.split_last().is_some_and(|(&last, rest)| rest == leading && (last == cols || last == 1)) {
        Some(vec![rows, target[target.len() - 1]])
    } else {
        None
    }
}

/// The cube grid for `rows` cubes: `(x, y)` with `x·y ≥ rows`, `x` at most 65535 (every
/// runtime's minimum).
fn grid(rows: usize) -> (u32, u32) {
    let x = rows.clamp(1, 65535);
    (x as u32, rows.div_ceil(x).max(1) as u32)
}
