//! Seeded random tensors (ChaCha8: the same seed gives the same numbers on every machine).

use crate::{DType, Error, Result, Tensor};
use rand::{Rng as _, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};

/// The random generator used across losskit: ChaCha8, seeded explicitly.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator from a seed.
pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

fn collect(shape: &[usize], dtype: DType, mut f: impl FnMut() -> f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_vec((0..n).map(|_| f()).collect::<Vec<f64>>(), shape)?.to_dtype(dtype))
}

/// Values drawn uniformly from `[lo, hi)`.
pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let dist =
        Uniform::new(lo, hi).map_err(|e| Error::Value { op: "uniform".into(), msg: format!("[{lo}, {hi}): {e}") })?;
    collect(shape, dtype, || dist.sample(rng))
}

/// Values from a normal distribution `N(mean, stddev²)`.
pub fn normal(shape: &[usize], mean: f64, stddev: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let dist = Normal::new(mean, stddev)
        .map_err(|e| Error::Value { op: "normal".into(), msg: format!("stddev {stddev}: {e}") })?;
    collect(shape, dtype, || dist.sample(rng))
}

/// A normal distribution truncated to `mean ± 2·stddev` (resampled outside), as Keras'
/// `TruncatedNormal`.
pub fn truncated_normal(shape: &[usize], mean: f64, stddev: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let dist = Normal::new(0.0, 1.0).expect("unit normal");
    if !(stddev.is_finite() && stddev >= 0.0) {
        return Err(Error::Value {
            op: "truncated_normal".into(),
            msg: format!("stddev {stddev} must be finite and >= 0"),
        });
    }
    collect(shape, dtype, || loop {
        let z: f64 = dist.sample(rng);
        if z.abs() <= 2.0 {
            break mean + stddev * z;
        }
    })
}

/// A 0/1 mask where each entry is 1 with probability `keep`.
pub fn bernoulli(shape: &[usize], keep: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    mask(shape, keep, 1.0, dtype, rng)
}

/// Generator words drawn per bulk fill when building an f32 mask.
const MASK_BLOCK: usize = 1024;
/// Values per parallel piece of an f32 mask (masks of at least two pieces are drawn in
/// parallel; a fixed size, so the pieces do not depend on the thread count).
const MASK_PIECE: usize = 1 << 14;

/// A mask whose entries are `value` with probability `keep`, else 0, built directly in `dtype`
/// (dropout's scaled mask in one pass).
pub fn mask(shape: &[usize], keep: f64, value: f64, dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    match dtype {
        DType::F32 => {
            // Written into a pooled buffer (a training step reuses the last one's).
            let mut values = crate::pool::take::<f32>(n);
            mask_into(&mut values, keep, value, rng);
            Tensor::from_vec(values, shape)
        }
        DType::F64 => {
            let mut values = vec![0.0f64; n];
            mask_into(&mut values, keep, value, rng);
            Tensor::from_vec(values, shape)
        }
    }
}

/// [`mask`] written into `out` (the same draws from `rng`, so the same mask for the same
/// stream): each entry is `value` with probability `keep`, else 0.
pub fn mask_into<T: crate::Element>(out: &mut [T], keep: f64, value: f64, rng: &mut Rng) {
    match T::DTYPE {
        DType::F32 => {
            let (k, v) = (keep as f32, T::c(f64::from(value as f32)));
            // Each piece draws its own stretch of the stream (ChaCha seeks to any word), so
            // the pieces run in parallel and the mask is the same on any thread count.
            if out.len() >= 2 * MASK_PIECE {
                use rayon::prelude::*;
                let start = rng.get_word_pos();
                out.par_chunks_mut(MASK_PIECE).enumerate().for_each(|(i, piece)| {
                    let mut own = rng.clone();
                    own.set_word_pos(start + (i * MASK_PIECE) as u128);
                    mask_piece(piece, k, v, &mut own);
                });
                rng.set_word_pos(start + out.len() as u128);
            } else {
                mask_piece(out, k, v, rng);
            }
        }
        DType::F64 => {
            let v = T::c(value);
            out.iter_mut().for_each(|o| *o = if rng.random::<f64>() < keep { v } else { T::zero() });
        }
    }
}

/// The f32 draws of [`mask_into`] for one stretch of the stream: the generator's words in
/// bulk fills of a block on the stack, then the same draw as `rng.random::<f32>()` (the top 24
/// bits scaled to [0, 1)) in a loop that vectorises: the masks are those of drawing one value
/// at a time, several times faster. Consumes one word per value.
fn mask_piece<T: crate::Element>(out: &mut [T], k: f32, v: T, rng: &mut Rng) {
    let mut words = [0u32; MASK_BLOCK];
    let scale = 1.0 / (1u32 << 24) as f32;
    for out in out.chunks_mut(MASK_BLOCK) {
        let words = &mut words[..out.len()];
        rng.fill(words);
        for (o, &u) in out.iter_mut().zip(words.iter()) {
            *o = if (u >> 8) as f32 * scale < k { v } else { T::zero() };
        }
    }
}

/// A random permutation of `0..n` (Fisher–Yates).
pub fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parallel_f32_mask_is_the_one_value_at_a_time_mask_on_any_thread_count() {
        let n = 3 * MASK_PIECE + 77;
        let mut b = rng(9);
        let slow: Vec<f32> = (0..n).map(|_| if b.random::<f32>() < 0.7 { 2.0 } else { 0.0 }).collect();
        let after = b.random::<u64>();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut a = rng(9);
            let mut fast = vec![0.0f32; n];
            pool.install(|| mask_into(&mut fast, 0.7, 2.0, &mut a));
            assert!(fast == slow, "{threads} threads");
            assert_eq!(a.random::<u64>(), after, "the generator ends where the stream does");
        }
    }

    #[test]
    fn f32_mask_draws_as_one_value_at_a_time() {
        let (mut a, mut b) = (rng(7), rng(7));
        // 2.5 blocks of generator words: the blocked fills continue one stream.
        let n = 2 * MASK_BLOCK + MASK_BLOCK / 2 + 1;
        let fast = mask(&[n], 0.8, 1.25, DType::F32, &mut a).unwrap().to_vec::<f32>();
        let slow: Vec<f32> = (0..n).map(|_| if b.random::<f32>() < 0.8 { 1.25 } else { 0.0 }).collect();
        assert_eq!(fast, slow);
        assert!(fast.contains(&0.0) && fast.contains(&1.25));
        // The generator is left where one-at-a-time drawing leaves it.
        assert_eq!(a.random::<u64>(), b.random::<u64>());
    }
}
