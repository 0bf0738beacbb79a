//! Optimizer updates on slices: Adam's (and AdamW's) and plain SGD's whole step for one weight in one pass,
//! vectorised (AVX2 / AVX-512 chosen at run time) and split across threads for large weights.
//! Each element's update is independent of the others and uses the same operations in the same
//! order as the scalar formula, so the result does not depend on the ISA or the thread count.

use crate::driver::isa_dispatch;
use crate::Float;
use rayon::prelude::*;

/// One Adam step's constants for one weight.
///
/// With `g' = clamp(g·grad_factor, ±grad_bound)` (clipping; no clamp when `grad_bound` is
/// `None`), the update of each element is:
/// `w ← w - (w·decay)·lr` (AdamW, when `decay` is set), `m ← m + (g' - m)(1 - β₁)`,
/// `v ← v + (g'² - v)(1 - β₂)`, `w ← w - (m·alpha)/(√v + ε)`, where
/// `alpha = lr·√(1 - β₂ᵗ)/(1 - β₁ᵗ)`.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep<T> {
    /// The learning rate (used by the decay).
    pub lr: T,
    /// `lr·√(1 - β₂ᵗ)/(1 - β₁ᵗ)`.
    pub alpha: T,
    /// `β₁`.
    pub beta_1: T,
    /// `β₂`.
    pub beta_2: T,
    /// `ε`.
    pub epsilon: T,
    /// AdamW's weight decay, if any.
    pub decay: Option<T>,
    /// The clipping factor applied to every gradient value (1 without norm clipping).
    pub grad_factor: T,
    /// The bound of value clipping, if any.
    pub grad_bound: Option<T>,
}

/// Weights with at least this many values are split across threads.
const PARALLEL_MIN: usize = 1 << 15;
/// Values per thread task (a multiple of every vector width).
const CHUNK: usize = 1 << 14;

/// Applies one [`AdamStep`] to a weight `w`, its gradient `g` and its moments `m`, `v` (all the
/// same length; an error names the lengths otherwise).
pub fn adam_update<T: Float>(w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], s: AdamStep<T>) -> Result<(), String> {
    let n = w.len();
    if g.len() != n || m.len() != n || v.len() != n {
        return Err(format!("adam_update: lengths w {n}, g {}, m {}, v {}", g.len(), m.len(), v.len()));
    }
    if n < PARALLEL_MIN {
        adam_dispatch(w, g, m, v, s);
        return Ok(());
    }
    w.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((w, g), m), v)| adam_dispatch(w, g, m, v, s));
    Ok(())
}

#[inline(always)]
fn adam_chunk<T: Float>(w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], s: AdamStep<T>) {
    match (s.decay, s.grad_bound) {
        (None, None) => adam_loop::<T, false, false>(w, g, m, v, s),
        (Some(_), None) => adam_loop::<T, true, false>(w, g, m, v, s),
        (None, Some(_)) => adam_loop::<T, false, true>(w, g, m, v, s),
        (Some(_), Some(_)) => adam_loop::<T, true, true>(w, g, m, v, s),
    }
}

/// The element loop, with the decay and the bound as compile-time switches (no branch inside).
#[inline(always)]
fn adam_loop<T: Float, const DECAY: bool, const BOUND: bool>(
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    s: AdamStep<T>,
) {
    let one = T::one();
    let (a1, a2) = (one - s.beta_1, one - s.beta_2);
    let wd = s.decay.unwrap_or(T::zero());
    let c = s.grad_bound.unwrap_or(T::infinity());
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        if DECAY {
            *w = *w - *w * wd * s.lr;
        }
        let mut g = g * s.grad_factor;
        if BOUND {
            // NaN stays NaN (a `max`/`min` pair would turn it into `-c`).
            g = crate::clip(g, -c, c);
        }
        *m = *m + (g - *m) * a1;
        *v = *v + (g * g - *v) * a2;
        *w = *w - (*m * s.alpha) / (v.sqrt() + s.epsilon);
    }
}

isa_dispatch!(adam_dispatch, adam_chunk, <T: Float>, (w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], s: AdamStep<T>));

/// One plain SGD step's constants for one weight (Keras' `SGD` without momentum).
///
/// With `g' = clamp(g·grad_factor, ±grad_bound)` as for [`AdamStep`], each element becomes
/// `w ← w - g'·lr`.
#[derive(Debug, Clone, Copy)]
pub struct SgdStep<T> {
    /// The learning rate.
    pub lr: T,
    /// The clipping factor applied to every gradient value (1 without norm clipping).
    pub grad_factor: T,
    /// The bound of value clipping, if any.
    pub grad_bound: Option<T>,
}

/// Applies one [`SgdStep`] to a weight `w` and its gradient `g` (the same length; an error
/// names the lengths otherwise).
pub fn sgd_update<T: Float>(w: &mut [T], g: &[T], s: SgdStep<T>) -> Result<(), String> {
    if g.len() != w.len() {
        return Err(format!("sgd_update: lengths w {}, g {}", w.len(), g.len()));
    }
    if w.len() < PARALLEL_MIN {
        sgd_dispatch(w, g, s);
    } else {
        w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(w, g)| sgd_dispatch(w, g, s));
    }
    Ok(())
}

#[inline(always)]
fn sgd_chunk<T: Float>(w: &mut [T], g: &[T], s: SgdStep<T>) {
    match s.grad_bound {
        None => sgd_loop::<T, false>(w, g, s),
        Some(_) => sgd_loop::<T, true>(w, g, s),
    }
}

#[inline(always)]
fn sgd_loop<T: Float, const BOUND: bool>(w: &mut [T], g: &[T], s: SgdStep<T>) {
    let c = s.grad_bound.unwrap_or(T::infinity());
    for (w, &g) in w.iter_mut().zip(g) {
        let mut g = g * s.grad_factor;
        if BOUND {
            g = crate::clip(g, -c, c);
        }
        *w = *w - g * s.lr;
    }
}

isa_dispatch!(sgd_dispatch, sgd_chunk, <T: Float>, (w: &mut [T], g: &[T], s: SgdStep<T>));

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar formula, element by element.
    fn reference(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep<f32>) {
        for i in 0..w.len() {
            if let Some(wd) = s.decay {
                w[i] -= w[i] * wd * s.lr;
            }
            let mut gi = g[i] * s.grad_factor;
            if let Some(c) = s.grad_bound {
                gi = if gi.is_nan() { gi } else { gi.max(-c).min(c) };
            }
            m[i] += (gi - m[i]) * (1.0 - s.beta_1);
            v[i] += (gi * gi - v[i]) * (1.0 - s.beta_2);
            w[i] -= (m[i] * s.alpha) / (v[i].sqrt() + s.epsilon);
        }
    }

    #[test]
    fn sgd_equals_its_formula_bit_for_bit_at_any_size_and_thread_count_and_keeps_nan() {
        for n in [1, 7, PARALLEL_MIN + 13, 3 * CHUNK + 5] {
            let mut g: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            g[n / 2] = f32::NAN;
            let w0: Vec<f32> = (0..n).map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.1).collect();
            for bound in [None, Some(0.2f32)] {
                let s = SgdStep { lr: 0.01, grad_factor: 0.75, grad_bound: bound };
                let want: Vec<f32> = w0
                    .iter()
                    .zip(&g)
                    .map(|(&w, &g)| {
                        let g = g * 0.75;
                        let g = match bound {
                            Some(c) if !g.is_nan() => g.max(-c).min(c),
                            _ => g,
                        };
                        w - g * 0.01
                    })
                    .collect();
                for threads in [1, 3] {
                    let mut w = w0.clone();
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| sgd_update(&mut w, &g, s)).unwrap();
                    assert!(w[n / 2].is_nan(), "n {n} {bound:?}: NaN kept");
                    let bits = |x: &[f32]| x.iter().filter(|v| !v.is_nan()).map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&w), bits(&want), "n {n} {bound:?} threads {threads}");
                }
            }
        }
    }

    #[test]
    fn equals_the_scalar_formula_bit_for_bit_at_any_size_and_thread_count() {
        for n in [1, 7, 100, PARALLEL_MIN + 13, 3 * CHUNK + 5] {
            let g: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let w0: Vec<f32> = (0..n).map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.1).collect();
            let m0: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.01).collect();
            let v0: Vec<f32> = (0..n).map(|i| (i % 3) as f32 * 0.001).collect();
            for (decay, bound) in [(None, None), (Some(0.01), None), (None, Some(0.2)), (Some(0.004), Some(0.5))] {
                let s = AdamStep {
                    lr: 0.001,
                    alpha: 0.0013,
                    beta_1: 0.9,
                    beta_2: 0.999,
                    epsilon: 1e-7,
                    decay,
                    grad_factor: 0.75,
                    grad_bound: bound,
                };
                let (mut w1, mut m1, mut v1) = (w0.clone(), m0.clone(), v0.clone());
                reference(&mut w1, &g, &mut m1, &mut v1, s);
                for threads in [1, 3] {
                    let (mut w2, mut m2, mut v2) = (w0.clone(), m0.clone(), v0.clone());
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| adam_update(&mut w2, &g, &mut m2, &mut v2, s)).unwrap();
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&w2), bits(&w1), "n {n} {decay:?} {bound:?} threads {threads}");
                    assert_eq!(bits(&m2), bits(&m1));
                    assert_eq!(bits(&v2), bits(&v1));
                }
            }
        }
        let mut short = vec![0.0f32; 2];
        let s = AdamStep {
            lr: 0.1,
            alpha: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: 1e-7,
            decay: None,
            grad_factor: 1.0,
            grad_bound: None,
        };
        assert!(adam_update(&mut short.clone(), &[1.0], &mut short, &mut [0.0; 2], s).is_err());
        assert!(sgd_update(&mut short, &[1.0], SgdStep { lr: 0.1, grad_factor: 1.0, grad_bound: None }).is_err());
        // A NaN gradient stays NaN through the bound (clipvalue), as in Keras, at every size.
        for n in [3, PARALLEL_MIN + 1] {
            let mut g = vec![0.5f32; n];
            g[1] = f32::NAN;
            let (mut w, mut m, mut v) = (vec![1.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            adam_update(&mut w, &g, &mut m, &mut v, AdamStep { grad_bound: Some(0.1), ..s }).unwrap();
            assert!(w[1].is_nan() && m[1].is_nan() && v[1].is_nan(), "n {n}: {} {} {}", w[1], m[1], v[1]);
            assert!(w[0].is_finite() && w[n - 1].is_finite());
        }
    }
}
