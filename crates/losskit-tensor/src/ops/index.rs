//! Indexing: gather along an axis, pick one entry per row, one-hot encoding.

use super::{norm_axis, op};
use crate::storage::{with_storage, Element};
use crate::{DType, Error, Result, Tensor};
use ndarray::{ArrayD, Axis, IxDyn};
use num_traits::Zero;

/// Reads a tensor of class indices: every value must be a whole number in `0..depth`.
fn class_indices(op: &str, labels: &Tensor, depth: usize) -> Result<Vec<usize>> {
    labels
        .to_vec::<f64>()
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as usize) < depth {
                Ok(v as usize)
            } else {
                Err(Error::value(op, format!("label {v} at flat position {i} is not a class index in 0..{depth}")))
            }
        })
        .collect()
}

/// `a.select(axis, indices)`; rows of a standard-layout array along axis 0 (a batch of
/// samples) are copied whole, one `memcpy` each.
fn select_rows<T: Element>(a: &ndarray::ArcArray<T, IxDyn>, axis: usize, indices: &[usize]) -> ArrayD<T> {
    match a.as_slice() {
        Some(s) if axis == 0 => {
            let row: usize = a.shape()[1..].iter().product();
            // A pooled buffer: a batch gathered every training step reuses the last one's.
            let mut out = crate::pool::take::<T>(indices.len() * row);
            for (dst, &i) in out.chunks_exact_mut(row.max(1)).zip(indices) {
                dst.copy_from_slice(&s[i * row..(i + 1) * row]);
            }
            let mut shape = a.shape().to_vec();
            shape[0] = indices.len();
            ArrayD::from_shape_vec(IxDyn(&shape), out).expect("one row per index")
        }
        _ => a.select(Axis(axis), indices),
    }
}

impl Tensor {
    /// Selects entries along `axis` by `indices` (like `tf.gather` with 1-D indices): the output
    /// has `indices.len()` entries on that axis. Repeated indices accumulate their gradients.
    pub fn gather(&self, axis: isize, indices: &[usize]) -> Result<Tensor> {
        let ax = norm_axis("gather", axis, self.rank())?;
        let dim = self.shape()[ax];
        if let Some((pos, &bad)) = indices.iter().enumerate().find(|(_, &i)| i >= dim) {
            return Err(Error::value(
                "gather",
                format!("index {bad} at position {pos} is out of range for axis {axis} of size {dim}"),
            ));
        }
        let storage = with_storage!(self.storage(), a => T::wrap(select_rows(a, ax, indices)));
        let idx = indices.to_vec();
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("gather", move |inputs, _out, g| {
                let shape = inputs[0].shape().to_vec();
                let grad = with_storage!(g.storage(), ga => {
                    let mut acc = ArrayD::<T>::zeros(IxDyn(&shape));
                    for (j, &i) in idx.iter().enumerate() {
                        let mut dst = acc.index_axis_mut(Axis(ax), i);
                        dst += &ga.index_axis(Axis(ax), j);
                    }
                    T::wrap(acc)
                });
                Ok(vec![Some(Tensor::from_storage(grad))])
            }),
        ))
    }

    /// For `self` of shape `(..., C)` and integer-valued `labels` of shape `(...)`, returns
    /// `self[..., labels]` of shape `(...)`: one entry per row. Errors on a label outside `0..C`.
    pub fn take_along_last(&self, labels: &Tensor) -> Result<Tensor> {
        let shape = self.shape();
        if shape.is_empty() || labels.shape() != &shape[..shape.len() - 1] {
            return Err(Error::shape(
                "take_along_last",
                format!("labels of shape {:?} do not index rows of {:?}", labels.shape(), shape),
            ));
        }
        let c = shape[shape.len() - 1];
        let idx = class_indices("take_along_last", labels, c)?;
        let storage = with_storage!(self.storage(), a => {
            let flat = a.as_standard_layout();
            let flat = flat.as_slice().expect("standard layout");
            let v: Vec<T> = idx.iter().enumerate().map(|(r, &k)| flat[r * c + k]).collect();
            T::wrap(ArrayD::from_shape_vec(IxDyn(labels.shape()), v).expect("row count"))
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("take_along_last", move |inputs, _out, g| {
                let shape = inputs[0].shape().to_vec();
                let grad = with_storage!(g.storage(), ga => {
                    let mut acc = vec![T::zero(); shape.iter().product()];
                    for ((r, &k), &gv) in idx.iter().enumerate().zip(ga.iter()) {
                        acc[r * c + k] = gv;
                    }
                    T::wrap(ArrayD::from_shape_vec(IxDyn(&shape), acc).expect("shape"))
                });
                Ok(vec![Some(Tensor::from_storage(grad))])
            }),
        ))
    }

    /// One-hot encoding: labels of shape `S` (whole numbers in `0..depth`) become a constant
    /// tensor of shape `S + (depth,)` and the given dtype.
    pub fn one_hot(labels: &Tensor, depth: usize, dtype: DType) -> Result<Tensor> {
        let idx = class_indices("one_hot", labels, depth)?;
        let mut shape = labels.shape().to_vec();
        shape.push(depth);
        let mut v = vec![0.0f64; idx.len() * depth];
        for (r, &k) in idx.iter().enumerate() {
            v[r * depth + k] = 1.0;
        }
        Ok(Tensor::from_vec(v, &shape)?.to_dtype(dtype))
    }
}
