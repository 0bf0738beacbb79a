//! burn's `TensorData` and losskit's tensors, both ways.

use burn::tensor::{DType, TensorData};
use losskit::{Error, Result};
use std::sync::{Arc, OnceLock};

/// The targets of a call: burn's data as it came, read in place when it holds the values in
/// the computation's dtype, and as a losskit tensor converted on first need (other dtypes,
/// the device path).
#[derive(Clone)]
pub(crate) struct TrueValues {
    data: Arc<TensorData>,
    dtype: losskit::DType,
    converted: Arc<OnceLock<losskit::Tensor>>,
}

impl TrueValues {
    /// Targets `data` for a computation in `dtype`.
    pub(crate) fn new(data: TensorData, dtype: losskit::DType) -> TrueValues {
        TrueValues { data: Arc::new(data), dtype, converted: Arc::default() }
    }

    /// The shape.
    pub(crate) fn shape(&self) -> &[usize] {
        self.data.shape().as_slice()
    }

    /// The values as `T` in place, when `T` is both the data's type and the computation's.
    pub(crate) fn slice<T: losskit_tensor::Element + burn::tensor::Element>(&self) -> Option<&[T]> {
        if T::DTYPE != self.dtype || self.data.dtype() != <T as burn::tensor::Element>::dtype() {
            return None;
        }
        self.data.as_slice::<T>().ok()
    }

    /// The targets as a losskit tensor of the computation's dtype (converted once).
    pub(crate) fn tensor(&self) -> &losskit::Tensor {
        self.converted.get_or_init(|| constant(&self.data, self.dtype).expect("data of its own shape"))
    }

    /// The targets lent to `lender` when they are in place ([`TrueValues::slice`]), else the
    /// converted tensor.
    pub(crate) fn lent<'a>(&'a self, lender: &losskit_tensor::Lender<'a>) -> losskit::Tensor {
        let lent = match self.dtype {
            losskit::DType::F32 => self.slice::<f32>().map(|v| lender.tensor(v, self.shape())),
            losskit::DType::F64 => self.slice::<f64>().map(|v| lender.tensor(v, self.shape())),
        };
        match lent {
            Some(t) => t.expect("data of its own shape"),
            None => self.tensor().clone(),
        }
    }
}

/// The float dtype losskit computes a `y_pred` of `dtype` in: its own for f32 and f64, f32 for
/// f16 and bf16 (the gradient goes back in the input's dtype); an error for the others.
pub(crate) fn compute_dtype(dtype: DType, what: &str) -> Result<losskit::DType> {
    match dtype {
        DType::F64 => Ok(losskit::DType::F64),
        DType::F32 | DType::F16 | DType::BF16 | DType::Flex32 => Ok(losskit::DType::F32),
        other => Err(Error::Config(format!("{what} is {other:?}: losskit computes in f32 or f64"))),
    }
}

/// Values of another dtype (f16, bf16, or a storage the backend keeps otherwise) as a losskit
/// tensor of `to`, converted in one pass.
pub(crate) fn converted(data: TensorData, to: losskit::DType) -> losskit::Tensor {
    constant(&data, to).expect("data of its own shape")
}

/// f32 or f64 data as a losskit tensor, its buffer moved (a copy only when its bytes are not
/// aligned for the type).
#[cfg(feature = "flex")]
pub(crate) fn owned(data: TensorData) -> losskit::Tensor {
    let shape = data.shape().to_vec();
    let t = match data.dtype() {
        DType::F64 => losskit::Tensor::from_vec(into_vec::<f64>(data), &shape),
        _ => losskit::Tensor::from_vec(into_vec::<f32>(data), &shape),
    };
    t.expect("the data's own shape")
}

/// The values as `E`: moved out when `E` is the data's dtype, converted otherwise.
#[cfg(feature = "flex")]
fn into_vec<E: burn::tensor::Element>(data: TensorData) -> Vec<E> {
    match data.dtype() == E::dtype() {
        true => data.try_into_vec::<E>().unwrap_or_else(|d| unreachable!("checked dtype: {d:?}")),
        false => data.iter::<E>().collect(),
    }
}

/// A constant (targets, sample weights) as a losskit tensor of `dtype`: any burn dtype,
/// integer labels included, converted in one pass.
pub(crate) fn constant(data: &TensorData, dtype: losskit::DType) -> Result<losskit::Tensor> {
    let shape = data.shape().to_vec();
    match dtype {
        losskit::DType::F64 => losskit::Tensor::from_vec(data.iter::<f64>().collect::<Vec<_>>(), &shape),
        losskit::DType::F32 => losskit::Tensor::from_vec(data.iter::<f32>().collect::<Vec<_>>(), &shape),
    }
}

/// A loss' values flattened, as burn data of their dtype (`[1]` for a scalar).
pub(crate) fn values(out: &losskit::Tensor) -> TensorData {
    let n = out.numel();
    match out.dtype() {
        losskit::DType::F32 => TensorData::new(out.to_vec::<f32>(), [n]),
        losskit::DType::F64 => TensorData::new(out.to_vec::<f64>(), [n]),
    }
}

/// A losskit tensor's values as burn data of its dtype (moved out when unshared).
pub(crate) fn to_data(t: losskit::Tensor) -> TensorData {
    let shape = t.shape().to_vec();
    match t.dtype() {
        losskit::DType::F32 => TensorData::new(t.into_vec::<f32>().expect("an f32 tensor"), shape),
        losskit::DType::F64 => TensorData::new(t.into_vec::<f64>().expect("an f64 tensor"), shape),
    }
}
