//! Every losskit loss on [burn](https://burn.dev) tensors, differentiable by burn's autodiff.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! # fn main() -> losskit::Result<()> {
//! let device = Device::flex().autodiff();
//! let logits = Tensor::<2>::from_floats([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], &device).require_grad();
//! let labels = Tensor::<1, Int>::from_ints([0, 2], &device);
//! let loss = losskit_burn::get("sparse_categorical_crossentropy")?.from_logits(true)?;
//! let l = loss.forward(logits.clone(), labels)?;   // burn's order: (input, target)
//! let grads = l.backward();
//! let d_logits = logits.grad(&grads).expect("tracked");
//! # Ok(()) }
//! ```
//!
//! How it works: [`BurnLoss::forward`] checks the call (devices, the swapped-argument trap,
//! dtypes), converts the targets, and hands the call to a burn backend extension,
//! [`LossBackend`], which burn routes to the tensor's backend. On burn's CPU backends (`Flex`,
//! `NdArray`) it runs the loss on the backend's own buffer: a built-in loss with a row kernel
//! through [`losskit::loss_on_slice`] (the fused kernel writes the value and, when tracked, the
//! gradient in one pass), any other loss through losskit's one call path on NdArray's shared
//! array, a Flex tensor nothing else holds moved in, or a shared one lent for the call
//! ([`losskit_tensor::lend`]: read in place, as are float targets of the input's dtype). On `Autodiff<B>` the output is a node whose backward
//! pass hands burn losskit's gradient of `y_pred` times burn's upstream gradient (the gradient's
//! buffer moves into burn). A `y_pred` that burn does not track (evaluation, `.inner()`, no
//! autodiff) runs the loss' value-only path: no gradient is computed.
//!
//! burn's config idiom: `CategoricalFocalCrossentropyConfig::new().with_gamma(3.0).init()?`
//! (typed configs for the common losses, [`LossConfig`] for any by name).
//!
//! Conventions: burn's argument order, `forward(input, target)` (the reverse of Keras'
//! `(y_true, y_pred)`, which [`BurnLoss::call`] keeps); targets of any burn dtype (integer class
//! indices for the sparse losses), constants of the loss; `y_pred` in f32 or f64 (computed in
//! its dtype) or f16 / bf16 (computed in f32, the value and gradient returned in the input's
//! dtype). A `target` that burn tracks while `input` is not is refused (the two arguments are
//! almost surely swapped: the model's output would get no gradient). The result is `[1]` for a
//! reduced loss (burn's convention for a scalar) and the flattened per-sample values for the
//! `none` reduction.
//!
//! Devices: burn's CPU backends; with the `wgpu` feature also burn's cube backend on wgpu
//! devices (Vulkan, Metal, DX12), where the cross-entropy family (sparse and one-hot, from
//! logits or probabilities, categorical and binary focal, binary) runs as fused CubeCL kernels
//! on the device's buffers — one launch writes each row's value and gradient — and every other
//! loss on the host (see `docs/burn.md`; tested on Vulkan through Mesa's lavapipe). Another
//! backend is refused by [`BurnLoss::forward`] with a clear error instead of a panic.
//!
//! Errors are [`losskit::Error`]: shapes, labels out of range, parameters, with losskit's
//! messages; nothing panics inside burn's graph.

#![warn(missing_docs)]

mod backend;
pub mod config;
#[cfg(feature = "wgpu")]
mod cube;
mod host;

pub use backend::{LossBackend, LossCall};
pub use config::{
    BinaryCrossentropyConfig, BinaryFocalCrossentropyConfig, CategoricalCrossentropyConfig,
    CategoricalFocalCrossentropyConfig, DiceConfig, HuberConfig, LossConfig, SparseCategoricalCrossentropyConfig,
    TverskyConfig,
};
/// How many fused device kernels this thread has launched on burn's cube backends (the
/// losses that ran on the GPU rather than on the host); for tests and diagnostics.
#[cfg(feature = "wgpu")]
pub use cube::launches as device_launches;

use backend::Outcome;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::{Device, Float, Int, Tensor, TensorData};

/// The loss runs where [`LossBackend`] is implemented: burn's CPU backends.
#[allow(unreachable_patterns)] // burn's device enum has more variants with more features
fn check_device(name: &str, device: &Device) -> Result<()> {
    match device.clone().inner().as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => Ok(()),
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => Ok(()),
        #[cfg(feature = "wgpu")]
        DispatchDevice::Cube(_) => Ok(()),
        other => Err(Error::Config(format!(
            "{name}: the input is on {other:?}; losskit-burn runs on burn's CPU backends (Flex, NdArray) for now"
        ))),
    }
}
use losskit::{Error, Loss, Result};
use std::sync::Arc;

/// A losskit loss for burn tensors: built from a name ([`get`]), a Keras config
/// ([`from_config`]) or any [`Loss`] (`From`).
#[derive(Clone)]
pub struct BurnLoss {
    loss: Arc<dyn Loss>,
}

impl std::fmt::Debug for BurnLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BurnLoss({:?})", self.loss.as_ref())
    }
}

/// The registered loss `name` (a Keras class name or alias such as
/// `"categorical_focal_crossentropy"`, a PyTorch name, or one added with `losskit::register`)
/// with its defaults.
pub fn get(name: &str) -> Result<BurnLoss> {
    losskit::get(name).map(|l| BurnLoss { loss: Arc::from(l) })
}

/// The loss a Keras-style config describes (`{"class_name": ..., "config": {...}}`).
pub fn from_config(config: &serde_json::Value) -> Result<BurnLoss> {
    losskit::from_config(config).map(|l| BurnLoss { loss: Arc::from(l) })
}

impl<L: Loss + 'static> From<L> for BurnLoss {
    fn from(loss: L) -> Self {
        BurnLoss { loss: Arc::new(loss) }
    }
}

/// A loss' targets (or sample weights): a burn tensor of any rank and dtype, float or integer.
pub struct Targets {
    data: TensorData,
    device: Device,
    tracked: bool,
}

impl<const D: usize> From<Tensor<D, Float>> for Targets {
    fn from(t: Tensor<D, Float>) -> Self {
        Targets { tracked: t.is_tracked(), device: t.device(), data: t.into_data() }
    }
}

impl<const D: usize> From<Tensor<D, Int>> for Targets {
    fn from(t: Tensor<D, Int>) -> Self {
        Targets { tracked: false, device: t.device(), data: t.into_data() }
    }
}

impl BurnLoss {
    /// Wraps a shared loss.
    pub fn from_arc(loss: Arc<dyn Loss>) -> Self {
        BurnLoss { loss }
    }

    /// The losskit loss.
    pub fn loss(&self) -> &dyn Loss {
        self.loss.as_ref()
    }

    /// The same loss with one of its config fields set (a Keras config key, e.g.
    /// `from_logits`, `label_smoothing`, `gamma`, `reduction`); an error naming an unknown key
    /// or a bad value.
    pub fn with(&self, key: &str, value: impl Into<serde_json::Value>) -> Result<BurnLoss> {
        let mut config = losskit::serialize(self.loss.as_ref());
        config["config"][key] = value.into();
        from_config(&config)
    }

    /// [`BurnLoss::with`]`("from_logits", on)`.
    pub fn from_logits(&self, on: bool) -> Result<BurnLoss> {
        self.with("from_logits", on)
    }

    /// The loss of `input` (the model's output, burn's first argument) against `target`,
    /// reduced as the loss says: `[1]`, or `[n]` per-sample values for `none`. Differentiable
    /// with respect to `input` when burn tracks it.
    pub fn forward<const D: usize>(&self, input: Tensor<D>, target: impl Into<Targets>) -> Result<Tensor<1>> {
        self.run(input, target.into(), None)
    }

    /// [`BurnLoss::forward`] with one weight per sample (or any shape Keras' `sample_weight`
    /// accepts for this loss).
    pub fn forward_weighted<const D: usize>(
        &self,
        input: Tensor<D>,
        target: impl Into<Targets>,
        sample_weight: impl Into<Targets>,
    ) -> Result<Tensor<1>> {
        self.run(input, target.into(), Some(sample_weight.into()))
    }

    /// Keras' argument order: `loss(y_true, y_pred, sample_weight)` ([`BurnLoss::forward`]'s
    /// result).
    pub fn call<const D: usize>(
        &self,
        y_true: impl Into<Targets>,
        y_pred: Tensor<D>,
        sample_weight: Option<Targets>,
    ) -> Result<Tensor<1>> {
        self.run(y_pred, y_true.into(), sample_weight)
    }

    fn run<const D: usize>(&self, input: Tensor<D>, target: Targets, weight: Option<Targets>) -> Result<Tensor<1>> {
        let name = self.loss.name().to_string();
        let tracked = input.is_tracked();
        if target.tracked && !tracked {
            return Err(Error::Config(format!(
                "{name}: the target is tracked by autodiff and the input is not: burn's order is forward(input, target), the model's output first (Keras' call(y_true, y_pred) is BurnLoss::call)"
            )));
        }
        let device = input.device();
        check_device(&name, &device)?;
        for t in std::iter::once(&target).chain(&weight) {
            if t.device != device {
                return Err(Error::Config(format!(
                    "{name}: the target or sample weight is on {:?}, the input on {device:?}",
                    t.device
                )));
            }
        }
        let dtype = host::compute_dtype(input.dtype(), "the input")?;
        let y_true = host::TrueValues::new(target.data, dtype);
        let sample_weight = weight.map(|w| host::constant(&w.data, dtype)).transpose()?;
        let call =
            LossCall { loss: self.loss.clone(), y_true, sample_weight, tracked, dtype, outcome: Default::default() };
        let output = <Dispatch as LossBackend>::losskit_loss(input.into_dispatch(), call.clone());
        if let Some(Outcome::Failed(e)) = call.take_outcome() {
            return Err(e);
        }
        Ok(Tensor::<1>::from_dispatch(output))
    }
}
