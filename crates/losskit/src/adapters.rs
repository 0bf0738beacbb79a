//! What a framework adapter (losskit-candle, losskit-burn) needs to answer its framework's
//! backward pass through a losskit loss: the gradient of `Σ out · upstream`.

use crate::{Error, Result, Tensor};

/// The gradients of `Σ out · upstream` with respect to `leaves` (`upstream`: the framework's
/// incoming gradient, `out`'s values in row-major order; a single 1, the usual `backward()` of
/// a scalar loss, seeds `out` alone). The graph is dropped before the gradients are taken out,
/// so each gradient's buffer is unshared (a built-in loss' kernel buffer moves on without a
/// copy); a leaf `out` does not depend on gets zeros.
pub fn upstream_gradients(out: Tensor, leaves: &[Tensor], upstream: Vec<f64>) -> Result<Vec<Tensor>> {
    let seeded = match upstream.as_slice() {
        [u] if *u == 1.0 => out.sum_all(),
        _ => out.mul(&Tensor::from_vec(upstream, out.shape())?.to_dtype(out.dtype()))?.sum_all(),
    };
    let mut grads = seeded.backward()?;
    drop((seeded, out));
    Ok(leaves.iter().map(|leaf| grads.remove(leaf).unwrap_or_else(|| leaf.zeros_like())).collect())
}

/// A scalar loss' ready gradient `grad` times the framework's scalar `upstream` (`grad` itself
/// for 1); an error for an upstream of more than one value.
pub fn scaled_gradient(grad: Tensor, upstream: &[f64]) -> Result<Tensor> {
    match upstream {
        [u] if *u == 1.0 => Ok(grad),
        [u] => grad.mul_scalar(*u),
        _ => Err(Error::Config(format!("a scalar loss' gradient with an upstream of {} values", upstream.len()))),
    }
}
