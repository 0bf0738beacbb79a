//! burn's `TensorData` and losskit's tensors, both ways.

use burn::tensor::{DType, TensorData};
use losskit::{Error, Result};

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

/// A copy of contiguous values in a buffer from losskit's pool (the previous call's buffer
/// comes back to it when dropped: no fresh pages to fault in).
#[cfg(feature = "flex")]
pub(crate) fn pooled<T: losskit_tensor::Element>(values: &[T], shape: &burn::tensor::Shape) -> losskit::Tensor {
    let mut v = losskit_tensor::pool::take::<T>(values.len());
    v.copy_from_slice(values);
    losskit::Tensor::from_vec(v, shape.as_slice()).expect("the tensor's own shape")
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
