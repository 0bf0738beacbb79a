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
pub trait Element: losskit_kernels::Float + ndarray::LinalgScalar + ndarray::ScalarOperand {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps an array of this type into a [`Storage`].
    fn wrap(a: ArrayD<Self>) -> Storage;
    /// Borrows the array if `s` holds this type.
    fn view(s: &Storage) -> Option<&ArcArray<Self, IxDyn>>;
    /// Borrows the array mutably if `s` holds this type.
    fn view_mut(s: &mut Storage) -> Option<&mut ArcArray<Self, IxDyn>>;
    /// Wraps a shared array into a [`Storage`] (no copy).
    fn wrap_shared(a: ArcArray<Self, IxDyn>) -> Storage;
    /// Takes the array out of `s` if it holds this type (no copy).
    fn take(s: Storage) -> Option<ArcArray<Self, IxDyn>>;
    /// The pool of freed buffers of this type.
    #[doc(hidden)]
    fn buffers() -> &'static crate::pool::Buffers<Self>;
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
    fn view_mut(s: &mut Storage) -> Option<&mut ArcArray<f32, IxDyn>> {
        match s {
            Storage::F32(a) => Some(a),
            Storage::F64(_) => None,
        }
    }
    fn wrap_shared(a: ArcArray<f32, IxDyn>) -> Storage {
        Storage::F32(a)
    }
    fn take(mut s: Storage) -> Option<ArcArray<f32, IxDyn>> {
        match &mut s {
            Storage::F32(a) => Some(std::mem::replace(a, empty())),
            Storage::F64(_) => None,
        }
    }
    fn buffers() -> &'static crate::pool::Buffers<f32> {
        &crate::pool::F32_BUFFERS
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
    fn view_mut(s: &mut Storage) -> Option<&mut ArcArray<f64, IxDyn>> {
        match s {
            Storage::F64(a) => Some(a),
            Storage::F32(_) => None,
        }
    }
    fn wrap_shared(a: ArcArray<f64, IxDyn>) -> Storage {
        Storage::F64(a)
    }
    fn take(mut s: Storage) -> Option<ArcArray<f64, IxDyn>> {
        match &mut s {
            Storage::F64(a) => Some(std::mem::replace(a, empty())),
            Storage::F32(_) => None,
        }
    }
    fn buffers() -> &'static crate::pool::Buffers<f64> {
        &crate::pool::F64_BUFFERS
    }
}

/// Runs `$body` with `$a` bound to the typed array inside a storage, for either dtype.
/// `$body` may use `T` as the element type.
/// An empty array, left behind where a buffer was taken out: a handle on this thread's shared
/// one (no allocation), or a new one while the thread is being torn down.
fn empty<T: Element>() -> ArcArray<T, IxDyn> {
    fn new<T: Element>() -> ArcArray<T, IxDyn> {
        ArcArray::from_shape_vec(IxDyn(&[0]), Vec::new()).expect("empty shape")
    }
    thread_local! {
        static EMPTY: (ArcArray<f32, IxDyn>, ArcArray<f64, IxDyn>) = (new(), new());
    }
    let shared = EMPTY.try_with(|(a, b)| {
        let any: [&dyn std::any::Any; 2] = [a, b];
        any.iter().find_map(|a| a.downcast_ref::<ArcArray<T, IxDyn>>()).cloned()
    });
    shared.ok().flatten().unwrap_or_else(new)
}

/// Gives a uniquely owned buffer back to the [`crate::pool`] (if it is not too small to keep).
fn recycle<T: Element>(a: &mut ArcArray<T, IxDyn>) {
    // Checked first: the placeholder left behind costs an allocation of its own.
    if !crate::pool::poolable(a.len()) || !a.is_unique() {
        return;
    }
    if let Ok(owned) = std::mem::replace(a, empty()).try_into_owned_nocopy() {
        crate::pool::give(owned.into_raw_vec_and_offset().0);
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        match self {
            Storage::F32(a) => recycle(a),
            Storage::F64(a) => recycle(a),
        }
    }
}

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
