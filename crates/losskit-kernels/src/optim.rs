//! Optimizer updates on slices: Adam's (and AdamW's), SGD's and RMSprop's whole step for one weight in one pass,
//! vectorised (AVX2 / AVX-512 chosen at run time) and split across threads for large weights.
//! Each element's update is independent of the others and uses the same operations in the same
//! order as the scalar formula, so the result does not depend on the ISA or the thread count.
//!
//! A weight's regularization can be folded in ([`Penalty`]): each element's gradient is then
//! `g + ∂penalty/∂w` at the weight's value before the update, made in registers as the update
//! reads `g` (the values of adding the penalty's gradient to `g` first).

use crate::driver::isa_dispatch;
use crate::Float;
use rayon::prelude::*;

/// A penalty on the weight whose gradient an update adds to each gradient element before
/// using it (Keras' kernel and bias regularizers; the terms as the tape's backward pass gives
/// them, coefficients already in `T`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Penalty<T> {
    /// `g + l1·sign(w)` (`sign(0) = 0`).
    L1(T),
    /// `g + l2·(w + w)`.
    L2(T),
    /// `g + (l2·(w + w) + l1·sign(w))`.
    L1L2 {
        /// The L1 term's coefficient.
        l1: T,
        /// The L2 term's coefficient.
        l2: T,
    },
}

/// How an element loop reads an element's gradient: as given, or with a [`Penalty`]'s gradient
/// added. One type per form, so the loops have no branch on it.
trait TotalGradient<T>: Copy {
    /// The gradient the update uses for an element of weight `w` with gradient `g`.
    fn of(self, w: T, g: T) -> T;
}

/// The gradient as given.
#[derive(Clone, Copy)]
struct AsGiven;

impl<T> TotalGradient<T> for AsGiven {
    #[inline(always)]
    fn of(self, _: T, g: T) -> T {
        g
    }
}

/// One penalty form (`K`: 1 for L1, 2 for L2, 3 for both) with its coefficients.
#[derive(Clone, Copy)]
struct Plus<T, const K: u8> {
    l1: T,
    l2: T,
}

impl<T: Float, const K: u8> TotalGradient<T> for Plus<T, K> {
    #[inline(always)]
    fn of(self, w: T, g: T) -> T {
        // `K` is known at compile time: the match folds away.
        match K {
            1 => g + self.l1 * crate::sign(w),
            2 => g + self.l2 * (w + w),
            _ => g + (self.l2 * (w + w) + self.l1 * crate::sign(w)),
        }
    }
}

/// Runs `$body` with `$tg` bound to the [`TotalGradient`] of `$penalty` (an
/// `Option<Penalty<T>>`): one instantiation of the body per form.
macro_rules! with_total_gradient {
    ($penalty:expr, $tg:ident => $body:expr) => {
        match $penalty {
            None => {
                let $tg = AsGiven;
                $body
            }
            Some(Penalty::L1(l1)) => {
                let $tg = Plus::<T, 1> { l1, l2: T::zero() };
                $body
            }
            Some(Penalty::L2(l2)) => {
                let $tg = Plus::<T, 2> { l1: T::zero(), l2 };
                $body
            }
            Some(Penalty::L1L2 { l1, l2 }) => {
                let $tg = Plus::<T, 3> { l1, l2 };
                $body
            }
        }
    };
}

impl<T: Float> Penalty<T> {
    /// The total gradient of an element of weight `w` with gradient `g`.
    #[inline(always)]
    pub fn total(self, w: T, g: T) -> T {
        with_total_gradient!(Some(self), tg => tg.of(w, g))
    }
}

/// One Adam step's constants for one weight.
///
/// With `g' = clamp(g·grad_factor, ±grad_bound)` (clipping; no clamp when `grad_bound` is
/// `None`), the update of each element is:
/// `w ← w - (w·decay)·lr` (AdamW, when `decay` is set), `m ← m + (g' - m)(1 - β₁)`,
/// `v ← v + (g'² - v)(1 - β₂)`, `w ← w - (m·alpha)/(√v + ε)`, where
/// `alpha = lr·√(1 - β₂ᵗ)/(1 - β₁ᵗ)`. A moment (`m`, `v`) below the smallest normal value is
/// stored as 0 (flush-to-zero: see `flushed`); so are SGD's velocity and RMSprop's averages.
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
    /// A penalty whose gradient is added to each gradient element first, if any.
    pub penalty: Option<Penalty<T>>,
}

/// Weights with at least this many values are split across threads. Below it, waking a second
/// thread costs more than the pass (the digits model's 64 × 512 kernel, updated on both cores,
/// took `losskit fit` from 0.93 to 1.18 s and its CPU time from 0.84 to 1.57 s).
const PARALLEL_MIN: usize = 1 << 17;
/// Values per thread task (a multiple of every vector width).
const CHUNK: usize = 1 << 14;

/// Applies one [`AdamStep`] in place to a weight `w`, its gradient `g` and its moments `m`,
/// `v` (all the same length; an error names the lengths otherwise).
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
    with_total_gradient!(s.penalty, tg => match (s.decay, s.grad_bound) {
        (None, None) => adam_loop::<T, false, false>(w, g, m, v, s, tg),
        (Some(_), None) => adam_loop::<T, true, false>(w, g, m, v, s, tg),
        (None, Some(_)) => adam_loop::<T, false, true>(w, g, m, v, s, tg),
        (Some(_), Some(_)) => adam_loop::<T, true, true>(w, g, m, v, s, tg),
    })
}

/// The element loop, with the decay and the bound as compile-time switches (no branch inside).
#[inline(always)]
fn adam_loop<T: Float, const DECAY: bool, const BOUND: bool>(
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    s: AdamStep<T>,
    tg: impl TotalGradient<T>,
) {
    let one = T::one();
    let (a1, a2) = (one - s.beta_1, one - s.beta_2);
    let wd = s.decay.unwrap_or(T::zero());
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        // The penalty's gradient at the weight before this update (and before AdamW's decay).
        let g = tg.of(*w, g);
        if DECAY {
            *w = *w - *w * wd * s.lr;
        }
        let g = clipped::<T, BOUND>(g, s.grad_factor, s.grad_bound);
        *m = flushed(*m + (g - *m) * a1);
        *v = flushed(*v + (g * g - *v) * a2);
        *w = *w - (*m * s.alpha) / (v.sqrt() + s.epsilon);
    }
}

isa_dispatch!(adam_dispatch, adam_chunk, <T: Float>, (w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], s: AdamStep<T>));

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
    /// A penalty whose gradient is added to each gradient element first, if any.
    pub penalty: Option<Penalty<T>>,
}

/// Applies one [`SgdStep`] in place to a weight `w`, its gradient `g` and (with momentum) its
/// velocity `m` (all the same length, a velocity exactly when there is momentum; an error says
/// what does not fit otherwise).
pub fn sgd_update<T: Float>(w: &mut [T], g: &[T], m: Option<&mut [T]>, s: SgdStep<T>) -> Result<(), String> {
    let n = w.len();
    let m_len = m.as_ref().map(|m| m.len());
    if g.len() != n || m_len.is_some_and(|l| l != n) || m_len.is_some() != s.momentum.is_some() {
        return Err(format!(
            "sgd_update: lengths w {n}, g {}, velocity {m_len:?}, momentum {}",
            g.len(),
            s.momentum.is_some()
        ));
    }
    match m {
        None if n < PARALLEL_MIN => sgd_dispatch(w, g, &mut [], s),
        Some(m) if n < PARALLEL_MIN => sgd_dispatch(w, g, m, s),
        None => w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(w, g)| sgd_dispatch(w, g, &mut [], s)),
        Some(m) => w
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .for_each(|((w, g), m)| sgd_dispatch(w, g, m, s)),
    }
    Ok(())
}

#[inline(always)]
fn sgd_chunk<T: Float>(w: &mut [T], g: &[T], m: &mut [T], s: SgdStep<T>) {
    with_total_gradient!(s.penalty, tg => match (s.momentum, s.grad_bound) {
        (None, None) => sgd_loop::<T, false>(w, g, s, tg),
        (None, Some(_)) => sgd_loop::<T, true>(w, g, s, tg),
        (Some((_, false)), None) => momentum_loop::<T, false, false>(w, g, m, s, tg),
        (Some((_, false)), Some(_)) => momentum_loop::<T, false, true>(w, g, m, s, tg),
        (Some((_, true)), None) => momentum_loop::<T, true, false>(w, g, m, s, tg),
        (Some((_, true)), Some(_)) => momentum_loop::<T, true, true>(w, g, m, s, tg),
    })
}

/// `g'` of one element: the clipping factor, then the bound (NaN stays NaN, where a
/// `max`/`min` pair would turn it into `-c`).
#[inline(always)]
pub(crate) fn clipped<T: Float, const BOUND: bool>(g: T, factor: T, bound: Option<T>) -> T {
    let g = g * factor;
    match bound {
        Some(c) if BOUND => crate::clip(g, -c, c),
        _ => g,
    }
}

/// A moment as stored: `x`, or 0 when `|x|` is below the smallest normal value (a subnormal).
///
/// A weight whose gradient stays 0 (an input pixel that is always 0, a dead unit) has its
/// moments decay geometrically (Adam's `m` by `β₁` per step) down through the subnormal range,
/// where every operation on them costs ~100× the usual time on Intel CPUs: on a 2-core Xeon the
/// Adam update of the seed model went from 0.2 ms per step in the first epoch to 1.0 ms in the
/// second and 1.5 ms in the third. Storing such a moment as 0 is what running with
/// flush-to-zero gives (as TensorFlow's CPU kernels do); its effect on a weight is below
/// `1e-38 · lr / ε`. NaN stays NaN.
#[inline(always)]
fn flushed<T: Float>(x: T) -> T {
    if x.abs() < T::min_positive_value() {
        T::zero()
    } else {
        x
    }
}

#[inline(always)]
fn sgd_loop<T: Float, const BOUND: bool>(w: &mut [T], g: &[T], s: SgdStep<T>, tg: impl TotalGradient<T>) {
    for (w, &g) in w.iter_mut().zip(g) {
        *w = *w - clipped::<T, BOUND>(tg.of(*w, g), s.grad_factor, s.grad_bound) * s.lr;
    }
}

#[inline(always)]
fn momentum_loop<T: Float, const NESTEROV: bool, const BOUND: bool>(
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    s: SgdStep<T>,
    tg: impl TotalGradient<T>,
) {
    let mu = s.momentum.map_or(T::zero(), |(mu, _)| mu);
    for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
        let g = clipped::<T, BOUND>(tg.of(*w, g), s.grad_factor, s.grad_bound);
        *m = flushed(-g * s.lr + *m * mu);
        *w = if NESTEROV { *w + (-g * s.lr + *m * mu) } else { *w + *m };
    }
}

isa_dispatch!(sgd_dispatch, sgd_chunk, <T: Float>, (w: &mut [T], g: &[T], m: &mut [T], s: SgdStep<T>));

/// One RMSprop step's constants for one weight (Keras' `RMSprop`).
///
/// With `g'` as for [`AdamStep`], each element becomes `v ← ρ·v + ((1 - ρ)·g')·g'`; centered:
/// `a ← ρ·a + (1 - ρ)·g'` and `d = v - a·a + ε`, otherwise `d = v + ε`; the increment is
/// `i = (lr·g')/√d`; with momentum `μ`: `m ← μ·m + i`, `w ← w - m`, otherwise `w ← w - i`.
#[derive(Debug, Clone, Copy)]
pub struct RmsPropStep<T> {
    /// The learning rate.
    pub lr: T,
    /// The decay `ρ` of the moving averages.
    pub rho: T,
    /// `ε`.
    pub epsilon: T,
    /// The momentum `μ`, if any.
    pub momentum: Option<T>,
    /// Whether the mean square is centered by the moving average of the gradient.
    pub centered: bool,
    /// The clipping factor applied to every gradient value (1 without norm clipping).
    pub grad_factor: T,
    /// The bound of value clipping, if any.
    pub grad_bound: Option<T>,
    /// A penalty whose gradient is added to each gradient element first, if any.
    pub penalty: Option<Penalty<T>>,
}

/// Applies one [`RmsPropStep`] in place to a weight `w`, its gradient `g`, its mean square `v`,
/// its momentum `m` (exactly when the step has momentum) and its average gradient `a` (exactly
/// when centered), all the same length; an error says what does not fit otherwise.
pub fn rmsprop_update<T: Float>(
    w: &mut [T],
    g: &[T],
    v: &mut [T],
    m: Option<&mut [T]>,
    a: Option<&mut [T]>,
    s: RmsPropStep<T>,
) -> Result<(), String> {
    let n = w.len();
    let (m_len, a_len) = (m.as_ref().map(|m| m.len()), a.as_ref().map(|a| a.len()));
    let fits = |len: Option<usize>, wanted: bool| len.map_or(!wanted, |l| wanted && l == n);
    if g.len() != n || v.len() != n || !fits(m_len, s.momentum.is_some()) || !fits(a_len, s.centered) {
        return Err(format!(
            "rmsprop_update: lengths w {n}, g {}, v {}, momentum {m_len:?} (wanted: {}), average {a_len:?} (wanted: {})",
            g.len(),
            v.len(),
            s.momentum.is_some(),
            s.centered
        ));
    }
    if n < PARALLEL_MIN {
        rmsprop_dispatch(w, g, v, m.unwrap_or(&mut []), a.unwrap_or(&mut []), s);
        return Ok(());
    }
    let chunks = w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(v.par_chunks_mut(CHUNK));
    match (m, a) {
        (None, None) => chunks.for_each(|((w, g), v)| rmsprop_dispatch(w, g, v, &mut [], &mut [], s)),
        (Some(m), None) => {
            chunks.zip(m.par_chunks_mut(CHUNK)).for_each(|(((w, g), v), m)| rmsprop_dispatch(w, g, v, m, &mut [], s))
        }
        (None, Some(a)) => {
            chunks.zip(a.par_chunks_mut(CHUNK)).for_each(|(((w, g), v), a)| rmsprop_dispatch(w, g, v, &mut [], a, s))
        }
        (Some(m), Some(a)) => chunks
            .zip(m.par_chunks_mut(CHUNK))
            .zip(a.par_chunks_mut(CHUNK))
            .for_each(|((((w, g), v), m), a)| rmsprop_dispatch(w, g, v, m, a, s)),
    }
    Ok(())
}

#[inline(always)]
fn rmsprop_chunk<T: Float>(w: &mut [T], g: &[T], v: &mut [T], m: &mut [T], a: &mut [T], s: RmsPropStep<T>) {
    with_total_gradient!(s.penalty, tg => match (s.centered, s.momentum.is_some(), s.grad_bound.is_some()) {
        (false, false, false) => rmsprop_loop::<T, false, false, false>(w, g, v, m, a, s, tg),
        (false, false, true) => rmsprop_loop::<T, false, false, true>(w, g, v, m, a, s, tg),
        (false, true, false) => rmsprop_loop::<T, false, true, false>(w, g, v, m, a, s, tg),
        (false, true, true) => rmsprop_loop::<T, false, true, true>(w, g, v, m, a, s, tg),
        (true, false, false) => rmsprop_loop::<T, true, false, false>(w, g, v, m, a, s, tg),
        (true, false, true) => rmsprop_loop::<T, true, false, true>(w, g, v, m, a, s, tg),
        (true, true, false) => rmsprop_loop::<T, true, true, false>(w, g, v, m, a, s, tg),
        (true, true, true) => rmsprop_loop::<T, true, true, true>(w, g, v, m, a, s, tg),
    })
}

/// The element loop, with centering, momentum and the bound as compile-time switches; the
/// slots a variant does not use may be empty.
#[inline(always)]
fn rmsprop_loop<T: Float, const CENTERED: bool, const MOMENTUM: bool, const BOUND: bool>(
    w: &mut [T],
    g: &[T],
    v: &mut [T],
    m: &mut [T],
    a: &mut [T],
    s: RmsPropStep<T>,
    tg: impl TotalGradient<T>,
) {
    let n = w.len();
    // Every slice cut to the weight's length up front, so the loop has no bounds checks.
    let (g, v) = (&g[..n], &mut v[..n]);
    let m = if MOMENTUM { &mut m[..n] } else { &mut m[..0] };
    let a = if CENTERED { &mut a[..n] } else { &mut a[..0] };
    let (rho, keep) = (s.rho, T::one() - s.rho);
    let mu = s.momentum.unwrap_or(T::zero());
    for i in 0..n {
        let gi = clipped::<T, BOUND>(tg.of(w[i], g[i]), s.grad_factor, s.grad_bound);
        v[i] = flushed(rho * v[i] + keep * gi * gi);
        let denominator = if CENTERED {
            a[i] = flushed(rho * a[i] + keep * gi);
            v[i] - a[i] * a[i] + s.epsilon
        } else {
            v[i] + s.epsilon
        };
        let increment = s.lr * gi / denominator.sqrt();
        if MOMENTUM {
            m[i] = flushed(mu * m[i] + increment);
            w[i] = w[i] - m[i];
        } else {
            w[i] = w[i] - increment;
        }
    }
}

isa_dispatch!(rmsprop_dispatch, rmsprop_chunk, <T: Float>, (w: &mut [T], g: &[T], v: &mut [T], m: &mut [T], a: &mut [T], s: RmsPropStep<T>));

#[cfg(test)]
mod tests {
    use super::*;

    /// A penalty folded into Adam (with AdamW's decay and value clipping), SGD with Nesterov
    /// momentum and RMSprop centered with momentum gives the bits of the same update on the
    /// gradient with the penalty's gradient added first (at the weight before the update), for
    /// each penalty form, in parallel chunks and a short tail; zeros of both signs in the
    /// weight and the gradient keep their signs' effects.
    #[test]
    fn a_folded_penalty_is_the_update_of_the_total_gradient() {
        let n = PARALLEL_MIN + 1000 + 3;
        let w0: Vec<f32> =
            (0..n).map(|i| if i % 97 == 0 { 0.0 } else { ((i * 37 % 101) as f32 - 50.0) * 0.013 }).collect();
        let g: Vec<f32> =
            (0..n).map(|i| if i % 89 == 0 { -0.0 } else { ((i * 53 % 91) as f32 - 45.0) * 0.021 }).collect();
        let penalties = [Penalty::L1(3e-3f32), Penalty::L2(2e-2), Penalty::L1L2 { l1: 1e-3, l2: 5e-2 }];
        for p in penalties {
            let total: Vec<f32> = w0.iter().zip(&g).map(|(&w, &g)| p.total(w, g)).collect();
            let expected_l2 = |w: f32, g: f32| g + 2e-2 * (w + w);
            if let Penalty::L2(_) = p {
                assert!(w0.iter().zip(&g).all(|(&w, &g)| p.total(w, g).to_bits() == expected_l2(w, g).to_bits()));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let slots = || (vec![0.1f32; n], vec![0.2f32; n], vec![0.05f32; n]);
            // Adam(W).
            let a = AdamStep {
                lr: 0.01,
                alpha: 0.003,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                decay: Some(0.004),
                grad_factor: 0.8,
                grad_bound: Some(0.5),
                penalty: None,
            };
            let (mut w1, mut w2, (mut m1, mut v1, _), (mut m2, mut v2, _)) = (w0.clone(), w0.clone(), slots(), slots());
            adam_update(&mut w1, &total, &mut m1, &mut v1, a).unwrap();
            adam_update(&mut w2, &g, &mut m2, &mut v2, AdamStep { penalty: Some(p), ..a }).unwrap();
            assert_eq!((bits(&w2), bits(&m2), bits(&v2)), (bits(&w1), bits(&m1), bits(&v1)), "adam {p:?}");
            // SGD, Nesterov.
            let sg =
                SgdStep { lr: 0.05, momentum: Some((0.9, true)), grad_factor: 1.0, grad_bound: None, penalty: None };
            let (mut w1, mut w2, (mut m1, ..), (mut m2, ..)) = (w0.clone(), w0.clone(), slots(), slots());
            sgd_update(&mut w1, &total, Some(&mut m1), sg).unwrap();
            sgd_update(&mut w2, &g, Some(&mut m2), SgdStep { penalty: Some(p), ..sg }).unwrap();
            assert_eq!((bits(&w2), bits(&m2)), (bits(&w1), bits(&m1)), "sgd {p:?}");
            // RMSprop, centered, with momentum.
            let r = RmsPropStep {
                lr: 0.001,
                rho: 0.9,
                epsilon: 1e-7,
                momentum: Some(0.5),
                centered: true,
                grad_factor: 1.0,
                grad_bound: None,
                penalty: None,
            };
            let (mut w1, mut w2, (mut v1, mut m1, mut a1), (mut v2, mut m2, mut a2)) =
                (w0.clone(), w0.clone(), slots(), slots());
            rmsprop_update(&mut w1, &total, &mut v1, Some(&mut m1), Some(&mut a1), r).unwrap();
            rmsprop_update(&mut w2, &g, &mut v2, Some(&mut m2), Some(&mut a2), RmsPropStep { penalty: Some(p), ..r })
                .unwrap();
            assert_eq!(
                (bits(&w2), bits(&v2), bits(&m2), bits(&a2)),
                (bits(&w1), bits(&v1), bits(&m1), bits(&a1)),
                "rmsprop {p:?}"
            );
        }
    }

    /// `x`, or 0 for a subnormal.
    fn flush(x: f32) -> f32 {
        if x.is_subnormal() {
            0.0
        } else {
            x
        }
    }

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
            m[i] = flush(m[i] + (gi - m[i]) * (1.0 - s.beta_1));
            v[i] = flush(v[i] + (gi * gi - v[i]) * (1.0 - s.beta_2));
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
                    m[i] = flush(-gi * s.lr + m[i] * mu);
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

    #[test]
    fn adam_update_equals_the_scalar_formula_bit_for_bit_at_any_size_and_thread_count() {
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
                    penalty: None,
                };
                for grad in [&g, &finite_g] {
                    let (mut w1, mut m1, mut v1) = (w0.clone(), m0.clone(), v0.clone());
                    adam_reference(&mut w1, grad, &mut m1, &mut v1, s);
                    for threads in [1, 3] {
                        let (mut w2, mut m2, mut v2) = (w0.clone(), m0.clone(), v0.clone());
                        in_pool(threads, || adam_update(&mut w2, grad, &mut m2, &mut v2, s)).unwrap();
                        let what = format!("n {n} {decay:?} {bound:?} threads {threads}");
                        assert_eq!(bits(&w2), bits(&w1), "{what}");
                        assert_eq!(bits(&m2), bits(&m1), "{what}");
                        assert_eq!(bits(&v2), bits(&v1), "{what}");
                        // A NaN gradient stays NaN through the bound (Keras' clip keeps it).
                        assert_eq!(w2[n / 2].is_nan(), grad[n / 2].is_nan(), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn sgd_update_equals_the_scalar_formula_with_and_without_momentum() {
        for n in [1, 7, PARALLEL_MIN + 13, 3 * CHUNK + 5] {
            let [g, w0, m0, _] = inputs(n);
            for momentum in [None, Some((0.9, false)), Some((0.8, true))] {
                for bound in [None, Some(0.2f32)] {
                    let s = SgdStep { lr: 0.01, momentum, grad_factor: 0.75, grad_bound: bound, penalty: None };
                    let (mut w1, mut m1) = (w0.clone(), m0.clone());
                    sgd_reference(&mut w1, &g, &mut m1, s);
                    for threads in [1, 3] {
                        let (mut w2, mut m2) = (w0.clone(), m0.clone());
                        let slot = momentum.map(|_| &mut m2[..]);
                        in_pool(threads, || sgd_update(&mut w2, &g, slot, s)).unwrap();
                        let what = format!("n {n} {momentum:?} {bound:?} threads {threads}");
                        assert_eq!(bits(&w2), bits(&w1), "{what}");
                        assert_eq!(bits(&m2), bits(&m1), "{what}");
                        assert!(w2[n / 2].is_nan(), "{what}: the NaN gradient is kept");
                    }
                }
            }
        }
    }

    /// RMSprop's scalar formula (Keras' `RMSprop`), element by element, in place.
    fn rmsprop_reference(w: &mut [f32], g: &[f32], v: &mut [f32], m: &mut [f32], a: &mut [f32], s: RmsPropStep<f32>) {
        for i in 0..w.len() {
            let mut gi = g[i] * s.grad_factor;
            if let Some(c) = s.grad_bound {
                gi = if gi.is_nan() { gi } else { gi.max(-c).min(c) };
            }
            v[i] = flush(s.rho * v[i] + (1.0 - s.rho) * gi * gi);
            let d = if s.centered {
                a[i] = flush(s.rho * a[i] + (1.0 - s.rho) * gi);
                v[i] - a[i] * a[i] + s.epsilon
            } else {
                v[i] + s.epsilon
            };
            let inc = s.lr * gi / d.sqrt();
            match s.momentum {
                Some(mu) => {
                    m[i] = flush(mu * m[i] + inc);
                    w[i] -= m[i];
                }
                None => w[i] -= inc,
            }
        }
    }

    #[test]
    fn moments_falling_below_the_normal_range_are_stored_as_zero() {
        // Gradients of 0 (and one NaN): moments just above the smallest normal f32 decay
        // below it in one step and are stored as 0; NaN stays NaN; larger ones decay as usual.
        let n = PARALLEL_MIN + 13;
        let tiny = f32::MIN_POSITIVE * 1.05;
        let mut g = vec![0.0f32; n];
        g[5] = f32::NAN;
        let (mut w, mut m, mut v) = (vec![0.5f32; n], vec![tiny; n], vec![tiny; n]);
        m[7] = 1e-3;
        let s = AdamStep {
            lr: 1e-3,
            alpha: 1e-3,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            decay: None,
            grad_factor: 1.0,
            grad_bound: None,
            penalty: None,
        };
        adam_update(&mut w, &g, &mut m, &mut v, s).unwrap();
        assert_eq!((m[0], m[n - 1]), (0.0, 0.0), "0.9 · 1.05 · MIN_POSITIVE is subnormal");
        assert_eq!(v[0], tiny + (0.0 - tiny) * (1.0 - 0.999f32), "0.999 · 1.05 · MIN_POSITIVE is still normal");
        assert_eq!(w[0], 0.5);
        assert!(m[5].is_nan() && v[5].is_nan() && w[5].is_nan());
        assert_eq!(m[7], 1e-3 + (0.0 - 1e-3) * (1.0 - 0.9f32));
        assert!(m.iter().chain(&v).all(|x| !x.is_subnormal()));

        let mut vel = vec![tiny; n];
        let sgd = SgdStep { lr: 0.1, momentum: Some((0.5, false)), grad_factor: 1.0, grad_bound: None, penalty: None };
        sgd_update(&mut w, &g, Some(&mut vel), sgd).unwrap();
        assert_eq!(vel[0], 0.0);
        let (mut v2, mut m2, mut a2) = (vec![tiny; n], vec![tiny; n], vec![tiny; n]);
        let rms = RmsPropStep {
            lr: 0.1,
            rho: 0.5,
            epsilon: 1e-7,
            momentum: Some(0.5),
            centered: true,
            grad_factor: 1.0,
            grad_bound: None,
            penalty: None,
        };
        rmsprop_update(&mut w, &g, &mut v2, Some(&mut m2), Some(&mut a2), rms).unwrap();
        assert_eq!((v2[0], m2[0], a2[0]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn rmsprop_update_equals_the_scalar_formula_in_every_variant() {
        for n in [1, 7, PARALLEL_MIN + 13, 3 * CHUNK + 5] {
            let [g, w0, m0, v0] = inputs(n);
            let a0: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.002 - 0.006).collect();
            for (momentum, centered, bound) in [
                (None, false, None),
                (Some(0.9), false, None),
                (None, true, Some(0.2)),
                (Some(0.5), true, None),
                (Some(0.9), false, Some(0.3)),
            ] {
                let s = RmsPropStep {
                    lr: 0.001,
                    rho: 0.9,
                    epsilon: 1e-7,
                    momentum,
                    centered,
                    grad_factor: 0.75,
                    grad_bound: bound,
                    penalty: None,
                };
                let (mut w1, mut v1, mut m1, mut a1) = (w0.clone(), v0.clone(), m0.clone(), a0.clone());
                rmsprop_reference(&mut w1, &g, &mut v1, &mut m1, &mut a1, s);
                for threads in [1, 3] {
                    let (mut w2, mut v2, mut m2, mut a2) = (w0.clone(), v0.clone(), m0.clone(), a0.clone());
                    let (ms, avg) = (momentum.map(|_| &mut m2[..]), centered.then_some(&mut a2[..]));
                    in_pool(threads, || rmsprop_update(&mut w2, &g, &mut v2, ms, avg, s)).unwrap();
                    let what = format!("n {n} {momentum:?} centered {centered} {bound:?} threads {threads}");
                    for (got, want) in [(&w2, &w1), (&v2, &v1), (&m2, &m1), (&a2, &a1)] {
                        assert_eq!(bits(got), bits(want), "{what}");
                    }
                    assert!(w2[n / 2].is_nan(), "{what}: the NaN gradient is kept");
                }
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let (mut w, mut m) = ([0.0f32; 2], [0.0f32; 2]);
        let s = SgdStep { lr: 0.1, momentum: None, grad_factor: 1.0, grad_bound: None, penalty: None };
        assert!(sgd_update(&mut w, &[1.0], None, s).is_err());
        assert!(sgd_update(&mut w, &[1.0, 2.0], Some(&mut m[..]), s).is_err(), "a velocity without momentum");
        let a = AdamStep {
            lr: 0.1,
            alpha: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: 1e-7,
            decay: None,
            grad_factor: 1.0,
            grad_bound: None,
            penalty: None,
        };
        let err = adam_update(&mut w, &[1.0, 2.0], &mut m, &mut [0.0; 1], a).unwrap_err();
        assert!(err.contains("adam_update"), "{err}");
        let r = RmsPropStep {
            lr: 0.1,
            rho: 0.9,
            epsilon: 1e-7,
            momentum: None,
            centered: true,
            grad_factor: 1.0,
            grad_bound: None,
            penalty: None,
        };
        let err = rmsprop_update(&mut w, &[1.0, 2.0], &mut m, None, None, r).unwrap_err();
        assert!(err.contains("average None (wanted: true)"), "{err}");
    }
}
