//! Every losskit loss on [candle](https://github.com/huggingface/candle) tensors, as a node of
//! candle's autodiff graph.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let y_true = Tensor::new(&[2u32, 0], &dev)?;
//! let y_pred = candle_core::Var::new(&[[0.1f32, 0.2, 0.7], [0.8, 0.1, 0.1]], &dev)?;
//! let loss = losskit_candle::get("sparse_categorical_crossentropy")?;
//! let l = loss.forward(&y_true, &y_pred, None)?;          // a candle Tensor (scalar)
//! let grads = l.backward()?;                              // candle's GradStore
//! let d = grads.get(&y_pred).expect("y_pred is a variable");
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! How it works: [`CandleLoss::forward`] applies a candle `CustomOp1` to `y_pred`. Its CPU
//! forward reads `y_pred`'s storage in place: a built-in loss with a row kernel runs on the
//! slice ([`losskit::loss_on_slice`]); any other loss (a composed or custom one, on the tape)
//! runs on candle's buffers lent to losskit for the call ([`losskit_tensor::lend`]: `y_pred`,
//! and `y_true` of `y_pred`'s dtype, read where they are by element-wise ops, sums and fused
//! kernels). A scalar loss' gradient is computed in the forward, while the buffers are lent;
//! a loss with per-sample values (`none`) keeps losskit's graph in the op (what it holds of the
//! buffers copied when the loan ends). candle's backward takes the gradient, times candle's
//! incoming gradient. For a built-in loss on large inputs (≥ 2¹⁶ values, any reduction but `none`)
//! the kernel has already written the reduced loss' gradient, and with candle's usual upstream
//! of 1 that very buffer moves into candle: no scaling pass, no copy. The graph is used up by
//! the first backward; a second backward through the same op recomputes the forward.
//!
//! Memory: every gradient candle keeps is a fresh buffer. With glibc's default `malloc`, buffers
//! over 32 MiB are returned to the system when freed, so each step faults its big buffers in
//! again (about 2.5 µs per 4 KiB page on a VM: candle's own ops pay it too, and it is most of
//! candle's backward on large losses). A training process can keep freed memory for reuse with
//! `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000` in its environment; `candle_bench`
//! measured 1.5–3.2× faster loss steps through candle with it (bench/README.md).
//! `y_true` and `sample_weight` are constants (no gradient flows to them), converted to
//! `y_pred`'s dtype in one pass from candle's storage into a pooled buffer; integer labels may
//! be any of candle's integer dtypes (`u8`, `u32`, `i64`, ...). `y_pred` is `f32` or `f64` (or `f16` / `bf16`,
//! computed in f32).
//!
//! Devices: on a CUDA or Metal tensor the loss runs on the CPU: `y_pred` is copied to the CPU,
//! the result (and, in backward, the gradient) copied back by candle's `to_device`. Correct,
//! not fast.
//!
//! Errors: losskit's errors (shapes, labels out of range, parameters) come back as
//! `candle_core::Error::wrap` of losskit's error, with its message; nothing panics inside the op.
//!
//! Argument order: [`CandleLoss::forward`] takes Keras' `(y_true, y_pred)`; [`nn`] has
//! candle-nn's functions with its names and order `(inp, target)`. A `y_true` that candle
//! tracks while `y_pred` is not is refused (swapped arguments would train nothing). A `y_pred`
//! candle does not track (evaluation) runs the loss' value-only path: no gradient is computed.
//! f16 and bf16 inputs are computed in f32 and answered in their dtype.

#![warn(missing_docs)]

pub mod nn;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use losskit::Loss;
use losskit_tensor::Element;
use std::sync::{Arc, Mutex};

/// candle's result type.
pub type Result<T> = candle_core::Result<T>;

/// A losskit error as candle's, with the same message.
fn candle_err(e: losskit::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// A losskit loss for candle tensors: built from a name, a config or any [`Loss`].
#[derive(Clone)]
pub struct CandleLoss {
    loss: Arc<dyn Loss>,
}

impl std::fmt::Debug for CandleLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CandleLoss({:?})", self.loss.as_ref())
    }
}

/// The registered loss `name` (a Keras class name, alias, PyTorch name or a name added with
/// `losskit::register`) with its defaults.
pub fn get(name: &str) -> Result<CandleLoss> {
    losskit::get(name).map(|l| CandleLoss { loss: Arc::from(l) }).map_err(candle_err)
}

/// The loss a Keras-style config describes (`{"class_name": ..., "config": {...}}`).
pub fn from_config(config: &serde_json::Value) -> Result<CandleLoss> {
    losskit::from_config(config).map(|l| CandleLoss { loss: Arc::from(l) }).map_err(candle_err)
}

impl<L: Loss + 'static> From<L> for CandleLoss {
    fn from(loss: L) -> Self {
        CandleLoss { loss: Arc::new(loss) }
    }
}

impl CandleLoss {
    /// Wraps a shared loss (e.g. one of `losskit::build`'s).
    pub fn from_arc(loss: Arc<dyn Loss>) -> Self {
        CandleLoss { loss }
    }

    /// The losskit loss.
    pub fn loss(&self) -> &dyn Loss {
        self.loss.as_ref()
    }

    /// The loss of `y_pred` against `y_true`, weighted by `sample_weight` and reduced as the
    /// loss' reduction says (shapes as for [`Loss::call`]: a scalar, or per-sample values for
    /// `none`). Differentiable with respect to `y_pred` by candle's `backward`.
    pub fn forward(&self, y_true: &Tensor, y_pred: &Tensor, sample_weight: Option<&Tensor>) -> Result<Tensor> {
        let tracked = y_pred.track_op();
        if y_true.track_op() && !tracked {
            return Err(candle_core::Error::Msg(format!(
                "{}: y_true is tracked by candle's autodiff and y_pred is not: forward takes Keras' order (y_true, y_pred); candle-nn's order (inp, target) is losskit_candle::nn",
                self.loss.name()
            )));
        }
        let device = y_pred.device().clone();
        let on_cpu = |t: &Tensor| if device.is_cpu() { Ok(t.clone()) } else { t.to_device(&Device::Cpu) };
        let given = y_pred.dtype();
        let pred = on_cpu(y_pred)?;
        // Half precision is computed in f32 (candle's `to_dtype` carries the gradient back).
        let pred = match given {
            DType::F16 | DType::BF16 => pred.to_dtype(DType::F32)?,
            _ => pred,
        }
        .contiguous()?;
        let dtype = match pred.dtype() {
            DType::F32 => losskit::DType::F32,
            DType::F64 => losskit::DType::F64,
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "{}: y_pred is {other:?}; losskit computes in f32 or f64 (and f16/bf16 in f32)",
                    self.loss.name()
                )))
            }
        };
        let constant = |t: &Tensor, what: &str| -> Result<losskit::Tensor> {
            let t = on_cpu(t)?;
            let converted = match dtype {
                losskit::DType::F32 => constant_values::<f32>(&t),
                losskit::DType::F64 => constant_values::<f64>(&t),
            };
            converted.map_err(|e| {
                candle_core::Error::Msg(format!("{}: {what} of dtype {:?}: {e}", self.loss.name(), t.dtype()))
            })
        };
        // Targets of y_pred's dtype stay candle's buffer (read in place by a built-in loss,
        // converted only if a loss on the tape needs them); others are converted now.
        let y_true_cpu = on_cpu(y_true)?.contiguous()?;
        let y_true = if y_true_cpu.dtype() == pred.dtype() {
            TrueValues::Candle(y_true_cpu, std::sync::OnceLock::new())
        } else {
            TrueValues::Converted(constant(&y_true_cpu, "y_true")?)
        };
        let op = LossOp {
            loss: self.loss.clone(),
            y_true,
            sample_weight: sample_weight.map(|w| constant(w, "sample_weight")).transpose()?,
            tracked,
            graph: Graph::default(),
        };
        let out = pred.apply_op1(op)?;
        let out = if given == out.dtype() { out } else { out.to_dtype(given)? };
        if device.is_cpu() {
            Ok(out)
        } else {
            out.to_device(&device)
        }
    }
}

/// The loss as a candle op on `y_pred`: the forward keeps losskit's graph for the backward.
struct LossOp {
    loss: Arc<dyn Loss>,
    y_true: TrueValues,
    sample_weight: Option<losskit::Tensor>,
    /// candle tracks `y_pred` (else the forward runs the loss' value-only path).
    tracked: bool,
    /// losskit's graph of the last forward.
    graph: Graph,
}

/// The targets of a [`LossOp`]: candle's own CPU buffer (of `y_pred`'s dtype, converted into a
/// losskit tensor only when first needed), or converted at the call.
enum TrueValues {
    Candle(Tensor, std::sync::OnceLock<losskit::Tensor>),
    Converted(losskit::Tensor),
}

impl TrueValues {
    /// The targets as a losskit tensor (converted once).
    fn tensor(&self) -> Result<&losskit::Tensor> {
        match self {
            TrueValues::Converted(t) => Ok(t),
            TrueValues::Candle(t, cell) => {
                if let Some(done) = cell.get() {
                    return Ok(done);
                }
                let converted = match t.dtype() {
                    DType::F64 => constant_values::<f64>(t)?,
                    _ => constant_values::<f32>(t)?,
                };
                Ok(cell.get_or_init(|| converted))
            }
        }
    }
}

/// f32 and f64 in candle's CPU storage.
trait CpuElement: Element {
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

impl CpuElement for f32 {
    fn slice(s: &CpuStorage) -> Option<&[f32]> {
        if let CpuStorage::F32(v) = s {
            Some(v)
        } else {
            None
        }
    }
    fn storage(v: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl CpuElement for f64 {
    fn slice(s: &CpuStorage) -> Option<&[f64]> {
        if let CpuStorage::F64(v) = s {
            Some(v)
        } else {
            None
        }
    }
    fn storage(v: Vec<f64>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// A CPU tensor's values as a losskit tensor of dtype `T`, converted in one pass from candle's
/// storage into a pooled buffer (integer labels and floats alike; the buffer of the previous
/// call's constant comes back to the pool, so no fresh pages). Dtypes without a direct
/// conversion here (f16, bf16, ...) go through candle's `to_dtype(F64)` first.
fn constant_values<T: Element>(t: &Tensor) -> Result<losskit::Tensor> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("losskit: expected a CPU tensor".into()));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("losskit: expected a contiguous tensor".into()))?;
    let mut out = losskit_tensor::pool::take::<T>(end - start);
    match cpu {
        CpuStorage::F32(v) => fill_from(&mut out, &v[start..end], |&x| f64::from(x)),
        CpuStorage::F64(v) => fill_from(&mut out, &v[start..end], |&x| x),
        CpuStorage::U8(v) => fill_from(&mut out, &v[start..end], |&x| f64::from(x)),
        CpuStorage::U32(v) => fill_from(&mut out, &v[start..end], |&x| f64::from(x)),
        CpuStorage::I16(v) => fill_from(&mut out, &v[start..end], |&x| f64::from(x)),
        CpuStorage::I32(v) => fill_from(&mut out, &v[start..end], |&x| f64::from(x)),
        CpuStorage::I64(v) => fill_from(&mut out, &v[start..end], |&x| x as f64),
        _ => {
            drop(storage);
            let values: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            fill_from(&mut out, &values, |&x| x);
        }
    }
    losskit::Tensor::from_vec(out, t.dims()).map_err(candle_err)
}

/// `out[i] = f(values[i])` in `T`, in one vectorisable pass.
fn fill_from<T: Element, V>(out: &mut [T], values: &[V], f: impl Fn(&V) -> f64) {
    out.iter_mut().zip(values).for_each(|(o, v)| *o = T::c(f(v)));
}

/// The values of a contiguous candle CPU storage as a losskit tensor of `shape`.
fn to_losskit(storage: &CpuStorage, layout: &Layout) -> Result<losskit::Tensor> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("losskit: y_pred must be contiguous".into()))?;
    let shape = layout.dims();
    let t = match storage {
        CpuStorage::F32(v) => losskit::Tensor::from_vec(pooled_copy(&v[start..end]), shape),
        CpuStorage::F64(v) => losskit::Tensor::from_vec(pooled_copy(&v[start..end]), shape),
        other => return Err(candle_core::Error::Msg(format!("losskit: y_pred of dtype {:?}", other.dtype()))),
    };
    t.map_err(candle_err)
}

/// A copy of `values` in a buffer from losskit's pool (the previous call's `y_pred` buffer comes
/// back to it when candle drops the graph: no fresh pages to fault in).
fn pooled_copy<T: Element>(values: &[T]) -> Vec<T> {
    let mut v = losskit_tensor::pool::take::<T>(values.len());
    v.copy_from_slice(values);
    v
}

/// A losskit tensor's values as candle storage of its dtype.
fn to_candle(t: &losskit::Tensor) -> (CpuStorage, Shape) {
    let storage = match t.dtype() {
        losskit::DType::F32 => CpuStorage::F32(t.to_vec::<f32>()),
        losskit::DType::F64 => CpuStorage::F64(t.to_vec::<f64>()),
    };
    (storage, Shape::from(t.shape().to_vec()))
}

/// losskit's graph of the last forward: the output and the leaves candle differentiates.
#[derive(Default)]
struct Graph(Mutex<Option<Kept>>);

/// What a forward keeps for candle's backward.
enum Kept {
    /// losskit's output and the leaves to differentiate it by.
    Tape(losskit::Tensor, Vec<losskit::Tensor>),
    /// The gradient of a scalar loss with respect to the op's one input, computed with the
    /// value on candle's buffer ([`losskit::loss_on_slice`]).
    Gradient(losskit::Tensor),
}

impl Graph {
    fn lock_err() -> candle_core::Error {
        candle_core::Error::Msg("losskit: poisoned graph lock".into())
    }

    fn keep(&self, out: &losskit::Tensor, leaves: Vec<losskit::Tensor>) -> Result<()> {
        *self.0.lock().map_err(|_| Self::lock_err())? = Some(Kept::Tape(out.clone(), leaves));
        Ok(())
    }

    fn keep_gradient(&self, grad: losskit::Tensor) -> Result<()> {
        *self.0.lock().map_err(|_| Self::lock_err())? = Some(Kept::Gradient(grad));
        Ok(())
    }

    /// The gradients of `Σ out·grad_res` for each leaf, as candle tensors on `device`.
    ///
    /// The graph is used up: once the gradients are computed it is dropped, so that each
    /// gradient's buffer has no other owner and moves into candle without a copy (a built-in
    /// loss on large inputs hands out the buffer its kernel wrote). A second backward through
    /// the same op runs `recompute` (the forward again) first.
    fn grads(&self, grad_res: &Tensor, device: &Device, recompute: impl FnOnce() -> Result<()>) -> Result<Vec<Tensor>> {
        let taken = self.0.lock().map_err(|_| Self::lock_err())?.take();
        let kept = match taken {
            Some(kept) => kept,
            None => {
                recompute()?;
                self.0
                    .lock()
                    .map_err(|_| Self::lock_err())?
                    .take()
                    .ok_or_else(|| candle_core::Error::Msg("losskit: backward before forward".into()))?
            }
        };
        let upstream: Vec<f64> = grad_res.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let grads = match kept {
            Kept::Tape(out, leaves) => losskit::upstream_gradients(out, &leaves, upstream),
            // A scalar loss' gradient, times candle's scalar upstream.
            Kept::Gradient(grad) => losskit::scaled_gradient(grad, &upstream).map(|g| vec![g]),
        }
        .map_err(candle_err)?;
        // Unshared buffers: handed to candle without a copy.
        grads.into_iter().map(|g| into_candle(g)?.to_device(device)).collect()
    }
}

/// Runs `forward` on the CPU storages of `args` (a second backward's recompute).
fn rerun<R>(args: &[&Tensor], forward: impl FnOnce(&[(&CpuStorage, &Layout)]) -> Result<R>) -> Result<()> {
    let held: Vec<_> = args.iter().map(|a| a.storage_and_layout()).collect();
    let mut inputs = Vec::with_capacity(held.len());
    for (storage, layout) in &held {
        match &**storage {
            candle_core::Storage::Cpu(cpu) => inputs.push((cpu, *layout)),
            _ => return Err(candle_core::Error::Msg("losskit: expected the op's CPU inputs".into())),
        }
    }
    forward(&inputs).map(|_| ())
}

/// A losskit tensor as a candle CPU tensor, moving its buffer when it is unshared.
fn into_candle(t: losskit::Tensor) -> Result<Tensor> {
    let shape = Shape::from(t.shape().to_vec());
    let lost = || candle_core::Error::Msg("losskit: a tensor of an unexpected dtype".into());
    match t.dtype() {
        losskit::DType::F32 => Tensor::from_vec(t.into_vec::<f32>().ok_or_else(lost)?, shape, &Device::Cpu),
        losskit::DType::F64 => Tensor::from_vec(t.into_vec::<f64>().ok_or_else(lost)?, shape, &Device::Cpu),
    }
}

impl LossOp {
    /// A built-in loss computed on candle's storage in place ([`losskit::loss_on_slice`]): its
    /// value, and when tracked its gradient, kept for the backward pass; `None` when that path
    /// does not apply (the caller copies `y_pred` into a tensor).
    fn in_place(&self, storage: &CpuStorage, layout: &Layout) -> Option<Result<(CpuStorage, Shape)>> {
        let (start, end) = layout.contiguous_offsets()?;
        match storage {
            CpuStorage::F32(v) => self.in_place_typed(&v[start..end], layout.dims()),
            CpuStorage::F64(v) => self.in_place_typed(&v[start..end], layout.dims()),
            _ => None,
        }
    }

    /// [`LossOp::in_place`] on `y_pred`'s values of type `T` (and `y_true`'s: candle's buffer
    /// read in place when it has that type).
    fn in_place_typed<T: CpuElement>(&self, y_pred: &[T], dims: &[usize]) -> Option<Result<(CpuStorage, Shape)>> {
        let held;
        let converted;
        let (y_true, true_shape): (&[T], &[usize]) = match &self.y_true {
            TrueValues::Candle(t, _) => {
                held = t.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*held.0 else { return None };
                let (start, end) = held.1.contiguous_offsets()?;
                (&T::slice(cpu)?[start..end], t.dims())
            }
            TrueValues::Converted(t) => {
                converted = t.values_or_copy::<T>();
                (&converted, t.shape())
            }
        };
        let w = self.sample_weight.as_ref();
        let (value, grad) =
            match losskit::loss_on_slice(self.loss.as_ref(), y_true, true_shape, y_pred, dims, w, self.tracked)? {
                Ok(done) => done,
                Err(e) => return Some(Err(candle_err(e))),
            };
        if let Some(g) = grad {
            let kept = losskit::Tensor::from_vec(g, dims).map_err(candle_err).and_then(|g| self.graph.keep_gradient(g));
            if let Err(e) = kept {
                return Some(Err(e));
            }
        }
        Some(Ok((T::storage(vec![value]), Shape::from(()))))
    }
}

impl LossOp {
    /// The loss through losskit's call path (the tape, for a loss without a row kernel) on
    /// candle's buffers lent for the call ([`losskit_tensor::lend`]: `y_pred`, and `y_true`
    /// when it has `y_pred`'s type, are read in place). Tracked, a scalar loss' gradient is
    /// computed here, while the buffers are lent; a loss with per-sample values (the `none`
    /// reduction) keeps its graph for candle's upstream, and the loans end with a copy of what
    /// it holds.
    fn on_tape<T: CpuElement>(&self, y_pred: &[T], dims: &[usize]) -> Result<(CpuStorage, Shape)> {
        let held;
        let lent_true = match &self.y_true {
            TrueValues::Candle(t, _) if t.dtype() == pred_dtype::<T>() => {
                held = t.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*held.0 else {
                    return Err(candle_core::Error::Msg("losskit: expected a CPU tensor".into()));
                };
                let (start, end) = held
                    .1
                    .contiguous_offsets()
                    .ok_or_else(|| candle_core::Error::Msg("losskit: y_true must be contiguous".into()))?;
                T::slice(cpu).map(|v| (&v[start..end], t.dims()))
            }
            _ => None,
        };
        losskit_tensor::lend(|lender| {
            let y_pred = lender.tensor(y_pred, dims).map_err(candle_err)?;
            let y_true = match lent_true {
                Some((values, shape)) => lender.tensor(values, shape).map_err(candle_err)?,
                None => self.y_true.tensor()?.clone(),
            };
            let w = self.sample_weight.as_ref();
            if !self.tracked {
                // No gradient will be asked for: the value alone.
                return Ok(to_candle(&self.loss.call(&y_true, &y_pred, w).map_err(candle_err)?));
            }
            let y_pred = y_pred.requires_grad();
            let out = self.loss.call(&y_true, &y_pred, w).map_err(candle_err)?;
            if out.numel() == 1 {
                let grad = out.backward().map_err(candle_err)?.get(&y_pred).cloned();
                self.graph.keep_gradient(grad.unwrap_or_else(|| y_pred.zeros_like()))?;
            } else {
                self.graph.keep(&out, vec![y_pred])?;
            }
            Ok(to_candle(&out))
        })
    }
}

/// candle's dtype of `T`.
fn pred_dtype<T: CpuElement>() -> DType {
    match T::DTYPE {
        losskit::DType::F32 => DType::F32,
        losskit::DType::F64 => DType::F64,
    }
}

impl CustomOp1 for LossOp {
    fn name(&self) -> &'static str {
        "losskit"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // A built-in loss on candle's own buffer: no copy of y_pred.
        if let Some(done) = self.in_place(storage, layout) {
            return done;
        }
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("losskit: y_pred must be contiguous".into()))?;
        match storage {
            CpuStorage::F32(v) => self.on_tape(&v[start..end], layout.dims()),
            CpuStorage::F64(v) => self.on_tape(&v[start..end], layout.dims()),
            other => Err(candle_core::Error::Msg(format!("losskit: y_pred of dtype {:?}", other.dtype()))),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let recompute = || rerun(&[arg], |s| self.cpu_fwd(s[0].0, s[0].1));
        Ok(self.graph.grads(grad_res, arg.device(), recompute)?.pop())
    }
}

/// [`losskit::LinearCrossEntropy`] on candle tensors, fused (the logits never materialised):
/// `hidden (..., D)`, `weight (V, D)`, optional `bias (V,)`, integer `labels (...)` of any
/// candle dtype. Differentiable by candle with respect to hidden, weight and bias; the result is
/// a scalar, or per-token losses for the `none` reduction.
pub fn linear_cross_entropy(
    loss: &losskit::LinearCrossEntropy,
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    labels: &Tensor,
) -> Result<Tensor> {
    let device = hidden.device().clone();
    let cpu = |t: &Tensor| -> Result<Tensor> {
        let t = if device.is_cpu() { t.clone() } else { t.to_device(&Device::Cpu)? };
        t.to_dtype(hidden.dtype())?.contiguous()
    };
    let labels_cpu = if device.is_cpu() { labels.clone() } else { labels.to_device(&Device::Cpu)? };
    let values: Vec<f64> = labels_cpu.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let labels = losskit::Tensor::from_vec(values, labels_cpu.dims()).map_err(candle_err)?;
    let op = LinearOp { loss: loss.clone(), labels, graph: Graph::default() };
    let (h, w) = (cpu(hidden)?, cpu(weight)?);
    let out = match bias {
        Some(b) => h.apply_op3(&w, &cpu(b)?, op)?,
        None => h.apply_op2(&w, op)?,
    };
    if device.is_cpu() {
        Ok(out)
    } else {
        out.to_device(&device)
    }
}

/// The fused linear cross-entropy as a candle op on (hidden, weight[, bias]).
struct LinearOp {
    loss: losskit::LinearCrossEntropy,
    labels: losskit::Tensor,
    graph: Graph,
}

impl LinearOp {
    fn forward(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let leaves = inputs
            .iter()
            .map(|(s, l)| to_losskit(s, l).map(losskit::Tensor::requires_grad))
            .collect::<Result<Vec<_>>>()?;
        let out = self.loss.forward(&leaves[0], &leaves[1], leaves.get(2), &self.labels).map_err(candle_err)?;
        self.graph.keep(&out, leaves)?;
        Ok(to_candle(&out))
    }
}

impl candle_core::CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "losskit-linear-cross-entropy"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(&[(s1, l1), (s2, l2)])
    }
    fn bwd(&self, a1: &Tensor, a2: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.graph.grads(grad, a1.device(), || rerun(&[a1, a2], |s| self.forward(s)))?.into_iter();
        Ok((g.next(), g.next()))
    }
}

impl candle_core::CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "losskit-linear-cross-entropy"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(&[(s1, l1), (s2, l2), (s3, l3)])
    }
    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.graph.grads(grad, a1.device(), || rerun(&[a1, a2, a3], |s| self.forward(s)))?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}
