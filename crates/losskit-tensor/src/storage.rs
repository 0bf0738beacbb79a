//! Typed storage behind a tensor: an `ndarray` array of `f32` or `f64`, shared copy-on-write.

use ndarray::{ArcArray, ArrayD, IxDyn};
use std::fmt;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float (Keras' default `floatx`).
    F32,
    /// 64-bit IEEE float.
    F64,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
        })
    }
}

/// The values of a tensor: a dynamic-rank array shared by reference count (cloning is cheap).
#[derive(Debug, Clone)]
pub enum Storage {
    /// `f32` values.
    F32(ArcArray<f32, IxDyn>),
    /// `f64` values.
    F64(ArcArray<f64, IxDyn>),
}

/// A scalar type a tensor can hold: `f32` or `f64`.
pub trait Element: losskit_kernels::Float + ndarray::LinalgScalar + ndarray::ScalarOperand + crate::ops::Gemm {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps an array of this type into a [`Storage`].
    fn wrap(a: ArrayD<Self>) -> Storage;
    /// Borrows the array if `s` holds this type.
    fn view(s: &Storage) -> Option<&ArcArray<Self, IxDyn>>;
    /// Wraps a shared array into a [`Storage`] (no copy).
    fn wrap_shared(a: ArcArray<Self, IxDyn>) -> Storage;
    /// Takes the array out of `s` if it holds this type (no copy).
    fn take(s: Storage) -> Option<ArcArray<Self, IxDyn>>;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn wrap(a: ArrayD<f32>) -> Storage {
        Storage::F32(a.into_shared())
    }
    fn view(s: &Storage) -> Option<&ArcArray<f32, IxDyn>> {
        match s {
            Storage::F32(a) => Some(a),
            Storage::F64(_) => None,
        }
    }
    fn wrap_shared(a: ArcArray<f32, IxDyn>) -> Storage {
        Storage::F32(a)
    }
    fn take(s: Storage) -> Option<ArcArray<f32, IxDyn>> {
        match s {
            Storage::F32(a) => Some(a),
            Storage::F64(_) => None,
        }
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn wrap(a: ArrayD<f64>) -> Storage {
        Storage::F64(a.into_shared())
    }
    fn view(s: &Storage) -> Option<&ArcArray<f64, IxDyn>> {
        match s {
            Storage::F64(a) => Some(a),
            Storage::F32(_) => None,
        }
    }
    fn wrap_shared(a: ArcArray<f64, IxDyn>) -> Storage {
        Storage::F64(a)
    }
    fn take(s: Storage) -> Option<ArcArray<f64, IxDyn>> {
        match s {
            Storage::F64(a) => Some(a),
            Storage::F32(_) => None,
        }
    }
}

/// Runs `$body` with `$a` bound to the typed array inside a storage, for either dtype.
/// `$body` may use `T` as the element type.
macro_rules! with_storage {
    ($s:expr, $a:ident => $body:expr) => {
        match $s {
            $crate::storage::Storage::F32($a) => {
                #[allow(dead_code)]
                type T = f32;
                $body
            }
            $crate::storage::Storage::F64($a) => {
                #[allow(dead_code)]
                type T = f64;
                $body
            }
        }
    };
}
pub(crate) use with_storage;

impl Storage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        with_storage!(self, a => a.shape())
    }

    /// Converts to another dtype (a copy unless it already has it).
    pub fn to_dtype(&self, dtype: DType) -> Storage {
        match (self, dtype) {
            (Storage::F32(_), DType::F32) | (Storage::F64(_), DType::F64) => self.clone(),
            (Storage::F32(a), DType::F64) => Storage::F64(a.mapv(f64::from).into_shared()),
            (Storage::F64(a), DType::F32) => Storage::F32(a.mapv(|v| v as f32).into_shared()),
        }
    }
}
