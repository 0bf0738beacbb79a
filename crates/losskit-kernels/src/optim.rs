//! Optimizer updates on slices: Adam's (and AdamW's) and SGD's whole step for one weight in one pass,
//! vectorised (AVX2 / AVX-512 chosen at run time) and split across threads for large weights.
//! Each element's update is independent of the others and uses the same operations in the same
//! order as the scalar formula, so the result does not depend on the ISA or the thread count.

use crate::driver::isa_dispatch;
use crate::sum::lane_sum_wide;
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

/// Weights with at least this many values are split across threads. Below it, waking a second
/// thread costs more than the pass (the digits model's 64 × 512 kernel, updated on both cores,
/// took `losskit fit` from 0.93 to 1.18 s and its CPU time from 0.84 to 1.57 s).
const PARALLEL_MIN: usize = 1 << 17;
/// Values per thread task (a multiple of every vector width).
const CHUNK: usize = 1 << 14;

/// A weight's values and its Adam moments: the current ones (read) or the next ones (written).
#[derive(Debug)]
pub struct AdamState<W, S> {
    /// The weight.
    pub w: W,
    /// The first moment `m`.
    pub m: S,
    /// The second moment `v`.
    pub v: S,
}

/// Applies one [`AdamStep`] out of place: reads the weight `now`, the gradient `g`, and writes
/// the updated weight and moments to `next` (all the same length; an error names the lengths
/// otherwise). Returns `Σ g²` of the raw gradient (before clipping), in `f64` (`T` lanes per
/// block of values): the NaN guard's norm, in the same pass. Nothing of `now` changes, so a
/// step can be thrown away after the fact (a non-finite gradient).
pub fn adam_step<T: Float>(
    now: AdamState<&[T], &[T]>,
    g: &[T],
    next: AdamState<&mut [T], &mut [T]>,
    s: AdamStep<T>,
) -> Result<f64, String> {
    let n = now.w.len();
    let lens = [g.len(), now.m.len(), now.v.len(), next.w.len(), next.m.len(), next.v.len()];
    if lens.iter().any(|&l| l != n) {
        return Err(format!("adam_step: lengths w {n}, then g, m, v, w', m', v' {lens:?}"));
    }
    if n < PARALLEL_MIN {
        return Ok(adam_dispatch(now, g, next, s));
    }
    let (AdamState { w, m, v }, AdamState { w: wo, m: mo, v: vo }) = (now, next);
    let sums: Vec<f64> = (w.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
        .zip(wo.par_chunks_mut(CHUNK).zip(mo.par_chunks_mut(CHUNK).zip(vo.par_chunks_mut(CHUNK))))
        .map(|(((w, g), (m, v)), (wo, (mo, vo)))| {
            adam_dispatch(AdamState { w, m, v }, g, AdamState { w: wo, m: mo, v: vo }, s)
        })
        .collect();
    Ok(sums.iter().sum())
}

#[inline(always)]
fn adam_chunk<T: Float>(
    now: AdamState<&[T], &[T]>,
    g: &[T],
    next: AdamState<&mut [T], &mut [T]>,
    s: AdamStep<T>,
) -> f64 {
    let sum_squares = lane_sum_wide(g, |v| v * v);
    match (s.decay, s.grad_bound) {
        (None, None) => adam_loop::<T, false, false>(now, g, next, s),
        (Some(_), None) => adam_loop::<T, true, false>(now, g, next, s),
        (None, Some(_)) => adam_loop::<T, false, true>(now, g, next, s),
        (Some(_), Some(_)) => adam_loop::<T, true, true>(now, g, next, s),
    }
    sum_squares
}

/// The element loop, with the decay and the bound as compile-time switches (no branch inside).
#[inline(always)]
fn adam_loop<T: Float, const DECAY: bool, const BOUND: bool>(
    now: AdamState<&[T], &[T]>,
    g: &[T],
    next: AdamState<&mut [T], &mut [T]>,
    s: AdamStep<T>,
) {
    let one = T::one();
    let (a1, a2) = (one - s.beta_1, one - s.beta_2);
    let wd = s.decay.unwrap_or(T::zero());
    let c = s.grad_bound.unwrap_or(T::infinity());
    let current = now.w.iter().zip(g).zip(now.m.iter().zip(now.v));
    let updated = next.w.iter_mut().zip(next.m.iter_mut().zip(next.v.iter_mut()));
    for (((&w, &g), (&m, &v)), (wo, (mo, vo))) in current.zip(updated) {
        let w = if DECAY { w - w * wd * s.lr } else { w };
        let mut g = g * s.grad_factor;
        if BOUND {
            // NaN stays NaN (a `max`/`min` pair would turn it into `-c`).
            g = crate::clip(g, -c, c);
        }
        let m = m + (g - m) * a1;
        let v = v + (g * g - v) * a2;
        *mo = m;
        *vo = v;
        *wo = w - (m * s.alpha) / (v.sqrt() + s.epsilon);
    }
}

isa_dispatch!(adam_dispatch, adam_chunk, <T: Float>, (now: AdamState<&[T], &[T]>, g: &[T], next: AdamState<&mut [T], &mut [T]>, s: AdamStep<T>) -> f64);

/// One SGD step's constants for one weight (Keras' `SGD`).
///
/// With `g' = clamp(g·grad_factor, ±grad_bound)` as for [`AdamStep`], each element becomes
/// `w ← w - g'·lr` without momentum; with momentum `μ`: `m ← -g'·lr + m·μ`, then
/// `w ← w + m`, or `w ← w + (-g'·lr + m·μ)` (Nesterov, with the new `m`).
#[derive(Debug, Clone, Copy)]
pub struct SgdStep<T> {
    /// The learning rate.
    pub lr: T,
    /// The momentum `μ` and whether it is Nesterov's, if any.
    pub momentum: Option<(T, bool)>,
    /// The clipping factor applied to every gradient value (1 without norm clipping).
    pub grad_factor: T,
    /// The bound of value clipping, if any.
    pub grad_bound: Option<T>,
}

/// Applies one [`SgdStep`] out of place: reads the weight `w`, its gradient `g` and (with
/// momentum) the velocity `m.0`; writes the updated weight to `w_next` and velocity to `m.1`
/// (all the same length; an error names the lengths otherwise). Returns `Σ g²` as
/// [`adam_step`] does.
pub fn sgd_step<T: Float>(
    w: &[T],
    g: &[T],
    m: Option<(&[T], &mut [T])>,
    w_next: &mut [T],
    s: SgdStep<T>,
) -> Result<f64, String> {
    let n = w.len();
    let slot_lens = m.as_ref().map(|(m, mo)| (m.len(), mo.len()));
    if g.len() != n
        || w_next.len() != n
        || slot_lens.is_some_and(|(a, b)| a != n || b != n)
        || slot_lens.is_some() != s.momentum.is_some()
    {
        return Err(format!(
            "sgd_step: lengths w {n}, g {}, w' {}, velocity (now, next) {slot_lens:?}, momentum {}",
            g.len(),
            w_next.len(),
            s.momentum.is_some()
        ));
    }
    match m {
        None if n < PARALLEL_MIN => Ok(sgd_dispatch(w, g, &[], w_next, &mut [], s)),
        Some((m, mo)) if n < PARALLEL_MIN => Ok(sgd_dispatch(w, g, m, w_next, mo, s)),
        None => {
            let sums: Vec<f64> = (w.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .zip(w_next.par_chunks_mut(CHUNK))
                .map(|((w, g), wo)| sgd_dispatch(w, g, &[], wo, &mut [], s))
                .collect();
            Ok(sums.iter().sum())
        }
        Some((m, mo)) => {
            let sums: Vec<f64> = (w.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .zip(m.par_chunks(CHUNK).zip(w_next.par_chunks_mut(CHUNK).zip(mo.par_chunks_mut(CHUNK))))
                .map(|((w, g), (m, (wo, mo)))| sgd_dispatch(w, g, m, wo, mo, s))
                .collect();
            Ok(sums.iter().sum())
        }
    }
}

#[inline(always)]
fn sgd_chunk<T: Float>(w: &[T], g: &[T], m: &[T], w_next: &mut [T], m_next: &mut [T], s: SgdStep<T>) -> f64 {
    let sum_squares = lane_sum_wide(g, |v| v * v);
    match (s.momentum, s.grad_bound) {
        (None, None) => sgd_loop::<T, false>(w, g, w_next, s),
        (None, Some(_)) => sgd_loop::<T, true>(w, g, w_next, s),
        (Some((_, false)), None) => momentum_loop::<T, false, false>(w, g, m, w_next, m_next, s),
        (Some((_, false)), Some(_)) => momentum_loop::<T, false, true>(w, g, m, w_next, m_next, s),
        (Some((_, true)), None) => momentum_loop::<T, true, false>(w, g, m, w_next, m_next, s),
        (Some((_, true)), Some(_)) => momentum_loop::<T, true, true>(w, g, m, w_next, m_next, s),
    }
    sum_squares
}

/// `g'` of one element: the clipping factor, then the bound (NaN kept).
#[inline(always)]
fn clipped<T: Float, const BOUND: bool>(g: T, s: &SgdStep<T>) -> T {
    let g = g * s.grad_factor;
    match s.grad_bound {
        Some(c) if BOUND => crate::clip(g, -c, c),
        _ => g,
    }
}

#[inline(always)]
fn sgd_loop<T: Float, const BOUND: bool>(w: &[T], g: &[T], w_next: &mut [T], s: SgdStep<T>) {
    for ((&w, &g), wo) in w.iter().zip(g).zip(w_next.iter_mut()) {
        *wo = w - clipped::<T, BOUND>(g, &s) * s.lr;
    }
}

#[inline(always)]
fn momentum_loop<T: Float, const NESTEROV: bool, const BOUND: bool>(
    w: &[T],
    g: &[T],
    m: &[T],
    w_next: &mut [T],
    m_next: &mut [T],
    s: SgdStep<T>,
) {
    let mu = s.momentum.map_or(T::zero(), |(mu, _)| mu);
    for (((&w, &g), &m), (wo, mo)) in w.iter().zip(g).zip(m).zip(w_next.iter_mut().zip(m_next.iter_mut())) {
        let g = clipped::<T, BOUND>(g, &s);
        let m = -g * s.lr + m * mu;
        *mo = m;
        *wo = if NESTEROV { w + (-g * s.lr + m * mu) } else { w + m };
    }
}

isa_dispatch!(sgd_dispatch, sgd_chunk, <T: Float>, (w: &[T], g: &[T], m: &[T], w_next: &mut [T], m_next: &mut [T], s: SgdStep<T>) -> f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam's scalar formula, element by element, in place.
    fn adam_reference(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep<f32>) {
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

    /// SGD's scalar formula (Keras' `SGD`), element by element, in place.
    fn sgd_reference(w: &mut [f32], g: &[f32], m: &mut [f32], s: SgdStep<f32>) {
        for i in 0..w.len() {
            let mut gi = g[i] * s.grad_factor;
            if let Some(c) = s.grad_bound {
                gi = if gi.is_nan() { gi } else { gi.max(-c).min(c) };
            }
            match s.momentum {
                None => w[i] -= gi * s.lr,
                Some((mu, nesterov)) => {
                    m[i] = -gi * s.lr + m[i] * mu;
                    w[i] = if nesterov { w[i] + (-gi * s.lr + m[i] * mu) } else { w[i] + m[i] };
                }
            }
        }
    }

    fn inputs(n: usize) -> [Vec<f32>; 4] {
        let mut g: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        g[n / 2] = f32::NAN;
        let w: Vec<f32> = (0..n).map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.1).collect();
        let m: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.01).collect();
        let v: Vec<f32> = (0..n).map(|i| (i % 3) as f32 * 0.001).collect();
        [g, w, m, v]
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() }).collect()
    }

    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }

    /// `Σ g²` in f64 (NaN when a value is).
    fn squares(g: &[f32]) -> f64 {
        g.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
    }

    #[test]
    fn adam_step_equals_the_scalar_formula_bit_for_bit_at_any_size_and_thread_count() {
        for n in [1, 7, 100, PARALLEL_MIN + 13, 3 * CHUNK + 5] {
            let [g, w0, m0, v0] = inputs(n);
            let finite_g: Vec<f32> = g.iter().map(|v| if v.is_nan() { 0.5 } else { *v }).collect();
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
                for grad in [&g, &finite_g] {
                    let (mut w1, mut m1, mut v1) = (w0.clone(), m0.clone(), v0.clone());
                    adam_reference(&mut w1, grad, &mut m1, &mut v1, s);
                    let mut sums = Vec::new();
                    for threads in [1, 3] {
                        let (mut w2, mut m2, mut v2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                        let now = AdamState { w: &w0[..], m: &m0[..], v: &v0[..] };
                        let next = AdamState { w: &mut w2[..], m: &mut m2[..], v: &mut v2[..] };
                        sums.push(in_pool(threads, || adam_step(now, grad, next, s)).unwrap().to_bits());
                        let what = format!("n {n} {decay:?} {bound:?} threads {threads}");
                        assert_eq!(bits(&w2), bits(&w1), "{what}");
                        assert_eq!(bits(&m2), bits(&m1), "{what}");
                        assert_eq!(bits(&v2), bits(&v1), "{what}");
                        // A NaN gradient stays NaN through the bound (Keras' clip keeps it).
                        assert_eq!(w2[n / 2].is_nan(), grad[n / 2].is_nan(), "{what}");
                    }
                    assert_eq!(sums[0], sums[1], "n {n}: Σg² does not depend on the threads");
                    let (got, want) = (f64::from_bits(sums[0]), squares(grad));
                    assert!(
                        got.is_nan() == want.is_nan() && (got.is_nan() || (got - want).abs() <= 1e-5 * want),
                        "n {n}: Σg² {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn sgd_step_equals_the_scalar_formula_with_and_without_momentum() {
        for n in [1, 7, PARALLEL_MIN + 13, 3 * CHUNK + 5] {
            let [g, w0, m0, _] = inputs(n);
            for momentum in [None, Some((0.9, false)), Some((0.8, true))] {
                for bound in [None, Some(0.2f32)] {
                    let s = SgdStep { lr: 0.01, momentum, grad_factor: 0.75, grad_bound: bound };
                    let (mut w1, mut m1) = (w0.clone(), m0.clone());
                    sgd_reference(&mut w1, &g, &mut m1, s);
                    for threads in [1, 3] {
                        let (mut w2, mut m2) = (vec![0.0; n], vec![0.0; n]);
                        let slot = momentum.map(|_| (&m0[..], &mut m2[..]));
                        let sum = in_pool(threads, || sgd_step(&w0, &g, slot, &mut w2, s)).unwrap();
                        let what = format!("n {n} {momentum:?} {bound:?} threads {threads}");
                        assert_eq!(bits(&w2), bits(&w1), "{what}");
                        if momentum.is_some() {
                            assert_eq!(bits(&m2), bits(&m1), "{what}");
                        }
                        assert!(w2[n / 2].is_nan() && sum.is_nan(), "{what}: the NaN gradient is kept and seen");
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let (w, mut out) = (vec![0.0f32; 2], vec![0.0f32; 2]);
        let s = SgdStep { lr: 0.1, momentum: None, grad_factor: 1.0, grad_bound: None };
        assert!(sgd_step(&w, &[1.0], None, &mut out, s).is_err());
        let mut m_next = [0.0f32; 2];
        assert!(
            sgd_step(&w, &[1.0, 2.0], Some((&w[..], &mut m_next[..])), &mut out, s).is_err(),
            "a velocity without momentum"
        );
        let a = AdamStep {
            lr: 0.1,
            alpha: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: 1e-7,
            decay: None,
            grad_factor: 1.0,
            grad_bound: None,
        };
        let (mut m2, mut v2) = (vec![0.0f32; 2], vec![0.0f32; 1]);
        let now = AdamState { w: &w[..], m: &w[..], v: &w[..] };
        let err =
            adam_step(now, &[1.0, 2.0], AdamState { w: &mut out[..], m: &mut m2[..], v: &mut v2[..] }, a).unwrap_err();
        assert!(err.contains("adam_step"), "{err}");
    }
}
