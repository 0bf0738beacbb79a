//! Shape operations: reshape, transpose, squeeze, expand_dims.

use super::{norm_axis, op};
use crate::storage::{with_storage, Element};
use crate::{Error, Result, Tensor};
use ndarray::IxDyn;

impl Tensor {
    /// The same values in a new shape (row-major order). One entry may be `-1`: it is inferred.
    pub fn reshape(&self, shape: &[isize]) -> Result<Tensor> {
        let n = self.numel();
        let known: usize = shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
        let unknown = shape.iter().filter(|&&d| d < 0).count();
        let bad = || Error::shape("reshape", format!("cannot reshape {:?} ({n} values) to {shape:?}", self.shape()));
        if unknown > 1 || shape.iter().any(|&d| d < -1) {
            return Err(bad());
        }
        let dims: Vec<usize> = if unknown == 1 {
            if known == 0 || !n.is_multiple_of(known) {
                return Err(bad());
            }
            shape.iter().map(|&d| if d < 0 { n / known } else { d as usize }).collect()
        } else {
            if known != n {
                return Err(bad());
            }
            shape.iter().map(|&d| d as usize).collect()
        };
        Ok(self.reshape_exact(&dims))
    }

    /// Reshape to a shape known to hold the same number of elements.
    pub(crate) fn reshape_exact(&self, dims: &[usize]) -> Tensor {
        if self.shape() == dims {
            return self.clone();
        }
        let storage = with_storage!(self.storage(), a => {
            if a.is_standard_layout() {
                // Shares the buffer: no copy.
                T::wrap_shared(a.clone().into_shape_with_order(IxDyn(dims)).expect("element count checked"))
            } else {
                let std = a.as_standard_layout().into_owned();
                T::wrap(std.into_shape_with_order(IxDyn(dims)).expect("element count checked"))
            }
        });
        Tensor::from_op(
            storage,
            vec![self.clone()],
            op("reshape", |inputs, _out, g| Ok(vec![Some(g.reshape_exact(inputs[0].shape()))])),
        )
    }

    /// Permutes the axes: output axis `i` is input axis `perm[i]`. `None` reverses them.
    pub fn transpose(&self, perm: Option<&[usize]>) -> Result<Tensor> {
        let rank = self.rank();
        let perm: Vec<usize> = match perm {
            Some(p) => p.to_vec(),
            None => (0..rank).rev().collect(),
        };
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::shape(
                "transpose",
                format!("{perm:?} is not a permutation of the {rank} axes of {:?}", self.shape()),
            ));
        }
        let storage = with_storage!(self.storage(), a => {
            T::wrap(a.view().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned())
        });
        let mut inverse = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("transpose", move |_inputs, _out, g| Ok(vec![Some(g.transpose(Some(&inverse))?)])),
        ))
    }

    /// Removes `axis`, which must have size 1.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let ax = norm_axis("squeeze", axis, self.rank())?;
        if self.shape()[ax] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("axis {axis} of {:?} has size {}, not 1", self.shape(), self.shape()[ax]),
            ));
        }
        let mut dims = self.shape().to_vec();
        dims.remove(ax);
        Ok(self.reshape_exact(&dims))
    }

    /// Inserts an axis of size 1 at `axis` (`-1` appends one).
    pub fn expand_dims(&self, axis: isize) -> Result<Tensor> {
        let ax = norm_axis("expand_dims", axis, self.rank() + 1)?;
        let mut dims = self.shape().to_vec();
        dims.insert(ax, 1);
        Ok(self.reshape_exact(&dims))
    }
}
