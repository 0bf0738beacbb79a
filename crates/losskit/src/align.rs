//! Rank alignment: Keras' `squeeze_or_expand_to_same_rank`, the first step of every loss call.

use crate::{Result, Tensor};

/// Brings two tensors whose ranks differ by exactly one, with a trailing axis of size 1 on the
/// larger, to the same rank (Keras 3 `squeeze_or_expand_to_same_rank`, `expand_rank_1 = True`):
///
/// | case | action |
/// |---|---|
/// | same rank | nothing |
/// | `rank(a) = rank(b) + 1`, `a.shape[-1] = 1` | if `rank(b) = 1`: expand `b` to `(n, 1)`; else squeeze `a`'s last axis |
/// | `rank(b) = rank(a) + 1`, `b.shape[-1] = 1` | the mirror image |
/// | anything else | nothing (broadcasting decides later) |
pub fn squeeze_or_expand_to_same_rank(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let (ra, rb) = (a.rank(), b.rank());
    let (mut a, mut b) = (a.clone(), b.clone());
    if ra == rb + 1 && a.shape()[ra - 1] == 1 {
        if rb == 1 {
            b = b.expand_dims(-1)?;
        } else {
            a = a.squeeze(-1)?;
        }
    } else if rb == ra + 1 && b.shape()[rb - 1] == 1 {
        if ra == 1 {
            a = a.expand_dims(-1)?;
        } else {
            b = b.squeeze(-1)?;
        }
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn shapes(a: &[usize], b: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let (x, y) =
            squeeze_or_expand_to_same_rank(&Tensor::zeros(a, DType::F32), &Tensor::zeros(b, DType::F32)).unwrap();
        (x.shape().to_vec(), y.shape().to_vec())
    }

    #[test]
    fn follows_keras_table() {
        assert_eq!(shapes(&[4, 3], &[4, 3]), (vec![4, 3], vec![4, 3]));
        assert_eq!(shapes(&[4, 1], &[4]), (vec![4, 1], vec![4, 1]));
        assert_eq!(shapes(&[4], &[4, 1]), (vec![4, 1], vec![4, 1]));
        assert_eq!(shapes(&[4, 5, 1], &[4, 5]), (vec![4, 5], vec![4, 5]));
        assert_eq!(shapes(&[4, 5], &[4, 5, 1]), (vec![4, 5], vec![4, 5]));
        assert_eq!(shapes(&[4, 5, 2], &[4, 5]), (vec![4, 5, 2], vec![4, 5]));
        assert_eq!(shapes(&[4], &[4, 3, 1]), (vec![4], vec![4, 3, 1]));
    }
}
