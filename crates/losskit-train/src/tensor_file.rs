//! Named tensors in a safetensors file, with its string metadata: written through a temporary
//! file and a rename (never half-written), read back with errors that name the file.

use losskit::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn file_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::file(path.display().to_string(), msg.into())
}

/// The little-endian bytes and safetensors dtype of a tensor.
fn raw(t: &Tensor) -> (safetensors::Dtype, Vec<u8>) {
    match t.dtype() {
        DType::F32 => (safetensors::Dtype::F32, t.to_vec::<f32>().iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F64 => (safetensors::Dtype::F64, t.to_vec::<f64>().iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

/// Writes `tensors` (f32 or f64, any shape) and `metadata` to `path` atomically.
pub(crate) fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let buffers: Vec<(&str, &[usize], safetensors::Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = raw(t);
            (name.as_str(), t.shape(), dtype, bytes)
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(name, shape, dtype, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.to_vec(), data).map(|v| (name.to_string(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e.to_string()))?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| file_error(path, e.to_string()))?;
    losskit_tensor::npy::write_atomic(path, |w| w.write_all(&bytes))
}

/// A file read by [`read`]: its tensors by name and its metadata.
pub(crate) struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads every tensor of a safetensors file (f32 and f64 only) and its metadata.
pub(crate) fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display().to_string(), "cannot read", e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(path, format!("not a safetensors file (truncated or damaged?): {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| file_error(path, format!("not a safetensors file (truncated or damaged?): {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => Tensor::from_vec(
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>(),
                view.shape(),
            )?,
            safetensors::Dtype::F64 => Tensor::from_vec(
                data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect::<Vec<f64>>(),
                view.shape(),
            )?,
            other => return Err(file_error(path, format!("{name} has unsupported dtype {other:?}"))),
        };
        tensors.insert(name, t);
    }
    Ok(TensorFile { tensors, metadata: header.metadata().clone().unwrap_or_default() })
}
