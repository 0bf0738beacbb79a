//! The element updates of Keras' less common optimizers (Adagrad, Adamax, Lion, Adadelta), on
//! slices, in the order of Keras' own operations. Each gradient element is first clipped as
//! for the other optimizers ([`Clipping`]). Serial loops: these rules are rarer than SGD, Adam
//! and RMSprop, whose kernels in [`crate::optim`] are the tuned ones.

use crate::{maximum, sign, Float};

/// How a raw gradient element becomes the one applied: times `factor` (norm clipping), then
/// bounded by `±bound` (value clipping).
#[derive(Debug, Clone, Copy)]
pub struct Clipping<T> {
    /// The clipping factor (1 without norm clipping).
    pub factor: T,
    /// The bound of value clipping, if any.
    pub bound: Option<T>,
}

impl<T: Float> Clipping<T> {
    /// The tuned kernels' own clipping ([`crate::optim`]).
    #[inline(always)]
    fn apply(self, g: T) -> T {
        crate::optim::clipped::<T, true>(g, self.factor, self.bound)
    }
}

/// One Keras `Adagrad` step on a weight `w`, its gradient `g` and its accumulator `acc`
/// (started at `initial_accumulator_value`): `acc ← acc + g²`, `w ← w - (lr·g)/√(acc + ε)`.
pub fn adagrad_update<T: Float>(w: &mut [T], g: &[T], acc: &mut [T], lr: T, epsilon: T, c: Clipping<T>) {
    for ((w, &g), a) in w.iter_mut().zip(g).zip(acc.iter_mut()) {
        let g = c.apply(g);
        *a = *a + g * g;
        *w = *w - (lr * g) / (*a + epsilon).sqrt();
    }
}

/// One Keras `Adamax` step at step `t` (from 1) with its momentum `m` and infinity norm `u`:
/// `m ← m + (g - m)·(1 - β₁)`, `u ← max(β₂·u, |g|)`, `w ← w - (lr·m)/((1 - β₁ᵗ)·(u + ε))`.
/// `one_minus_beta_1` is `1 - β₁` as Keras computes it (in f64, then in `T`).
#[allow(clippy::too_many_arguments)]
pub fn adamax_update<T: Float>(
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    u: &mut [T],
    lr: T,
    (one_minus_beta_1, beta_1_power, beta_2): (T, T, T),
    epsilon: T,
    c: Clipping<T>,
) {
    let bias = T::one() - beta_1_power;
    for (((w, &g), m), u) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(u.iter_mut()) {
        let g = c.apply(g);
        *m = *m + (g - *m) * one_minus_beta_1;
        *u = maximum(beta_2 * *u, g.abs());
        *w = *w - (lr * *m) / (bias * (*u + epsilon));
    }
}

/// One Keras `Lamb` step at step `t` (from 1) with its momentum `m` and velocity `v`:
/// `m ← m + (g - m)·(1 - β₁)`, `v ← v + (g² - v)·(1 - β₂)`, the Adam direction
/// `u = (m/(1 - β₁ᵗ)) / (√(v/(1 - β₂ᵗ)) + ε)`, then `w ← w - r·lr·u` with the trust ratio
/// `r = ‖w‖/‖u‖` over the whole weight (1 when either norm is 0). Two passes: the moments and
/// both norms (summed in f64), then the update with `u` recomputed from the same `m`, `v`.
/// `one_minus` are `1 - β₁`, `1 - β₂` as Keras computes them (in f64, then in `T`); `powers`
/// are `β₁ᵗ`, `β₂ᵗ` in `T`.
#[allow(clippy::too_many_arguments)]
pub fn lamb_update<T: Float>(
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    lr: T,
    (one_minus_1, one_minus_2): (T, T),
    (beta_1_power, beta_2_power): (T, T),
    epsilon: T,
    c: Clipping<T>,
) {
    let (bias_1, bias_2) = (T::one() - beta_1_power, T::one() - beta_2_power);
    let direction = |m: T, v: T| (m / bias_1) / ((v / bias_2).sqrt() + epsilon);
    let (mut w_sq, mut u_sq) = (0.0f64, 0.0f64);
    for (((&wv, &g), m), v) in w.iter().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = c.apply(g);
        *m = *m + (g - *m) * one_minus_1;
        *v = *v + (g * g - *v) * one_minus_2;
        let u = direction(*m, *v).to_f64().unwrap_or(f64::NAN);
        let wv = wv.to_f64().unwrap_or(f64::NAN);
        w_sq += wv * wv;
        u_sq += u * u;
    }
    let (w_norm, u_norm) = (T::c(w_sq.sqrt()), T::c(u_sq.sqrt()));
    let ratio = if w_norm > T::zero() && u_norm > T::zero() { w_norm / u_norm } else { T::one() };
    let scale = ratio * lr;
    for ((w, &m), &v) in w.iter_mut().zip(m.iter()).zip(v.iter()) {
        *w = *w - scale * direction(m, v);
    }
}

/// Keras `Ftrl`'s constants in `T`: `-lr_power` (0.5 by default), the L1 strength, `2·l2`
/// with `l2 = l2_regularization_strength + β/(2·lr)`, and `2·l2_shrinkage`.
#[derive(Debug, Clone, Copy)]
pub struct Ftrl<T> {
    /// `-learning_rate_power`.
    pub neg_lr_power: T,
    /// `l1_regularization_strength`.
    pub l1: T,
    /// `2·(l2_regularization_strength + β/(2·lr))`.
    pub two_l2: T,
    /// `2·l2_shrinkage_regularization_strength`.
    pub two_shrinkage: T,
}

/// One Keras `Ftrl` step with its accumulator `a` (from `initial_accumulator_value`) and
/// linear term `z`: with `p = -lr_power`, `ĝ = g + 2·shrinkage·w`, `a' = a + g²`,
/// `z ← z + ĝ - ((a'ᵖ - aᵖ)/lr)·w`, `w ← (clip(z, ±l1) - z)/(a'ᵖ/lr + 2·l2)`, `a ← a'`.
pub fn ftrl_update<T: Float>(w: &mut [T], g: &[T], a: &mut [T], z: &mut [T], lr: T, f: Ftrl<T>, c: Clipping<T>) {
    for (((w, &g), a), z) in w.iter_mut().zip(g).zip(a.iter_mut()).zip(z.iter_mut()) {
        let g = c.apply(g);
        let g_hat = g + f.two_shrinkage * *w;
        let next = *a + g * g;
        let (p_next, p_now) = (next.powf(f.neg_lr_power), a.powf(f.neg_lr_power));
        *z = *z + (g_hat - ((p_next - p_now) / lr) * *w);
        let quadratic = p_next / lr + f.two_l2;
        let clipped = maximum(-f.l1, z.min(f.l1));
        *w = (clipped - *z) / quadratic;
        *a = next;
    }
}

/// One Keras `Lion` step with its momentum `m`: `w ← w - lr·sign(m·β₁ + g·(1 - β₁))`, then
/// `m ← m·β₂ + g·(1 - β₂)` (the betas and `1 - β` in `T`, as Keras casts them first).
pub fn lion_update<T: Float>(w: &mut [T], g: &[T], m: &mut [T], lr: T, beta_1: T, beta_2: T, c: Clipping<T>) {
    let (one_minus_1, one_minus_2) = (T::one() - beta_1, T::one() - beta_2);
    for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
        let g = c.apply(g);
        *w = *w - lr * sign(*m * beta_1 + g * one_minus_1);
        *m = *m * beta_2 + g * one_minus_2;
    }
}

/// One Keras `Adadelta` step with its accumulated squared gradient `ag` and squared update `ad`:
/// `ag ← ρ·ag + (1 - ρ)·g²`, `Δ = -(√(ad + ε)·g)/√(ag + ε)`, `ad ← ρ·ad + (1 - ρ)·Δ²`,
/// `w ← w + lr·Δ` (`1 - ρ` as Keras computes it, in f64 then in `T`).
#[allow(clippy::too_many_arguments)]
pub fn adadelta_update<T: Float>(
    w: &mut [T],
    g: &[T],
    ag: &mut [T],
    ad: &mut [T],
    lr: T,
    (rho, one_minus_rho): (T, T),
    epsilon: T,
    c: Clipping<T>,
) {
    for (((w, &g), ag), ad) in w.iter_mut().zip(g).zip(ag.iter_mut()).zip(ad.iter_mut()) {
        let g = c.apply(g);
        *ag = rho * *ag + one_minus_rho * (g * g);
        let delta = -(((*ad + epsilon).sqrt() * g) / (*ag + epsilon).sqrt());
        *ad = rho * *ad + one_minus_rho * (delta * delta);
        *w = *w + lr * delta;
    }
}

/// One Keras `Adam` step with `amsgrad` at step `t` (from 1): as Adam (`m ← m + (g - m)(1 - β₁)`,
/// `v ← v + (g² - v)(1 - β₂)`), then `v̂ ← max(v̂, v)` and `w ← w - (m·α)/(√v̂ + ε)` with
/// `α = lr·√(1 - β₂ᵗ)/(1 - β₁ᵗ)` (AdamW's decay is the caller's, before). `(1 - β₁, 1 - β₂)` as
/// Keras computes them (in f64, then in `T`).
pub fn adam_amsgrad_update<T: Float>(
    w: &mut [T],
    g: &[T],
    (m, v, v_hat): (&mut [T], &mut [T], &mut [T]),
    alpha: T,
    (one_minus_beta_1, one_minus_beta_2): (T, T),
    epsilon: T,
    c: Clipping<T>,
) {
    for ((((w, &g), m), v), vh) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()).zip(v_hat.iter_mut()) {
        let g = c.apply(g);
        *m = *m + (g - *m) * one_minus_beta_1;
        *v = *v + (g * g - *v) * one_minus_beta_2;
        *vh = maximum(*vh, *v);
        *w = *w - (*m * alpha) / (vh.sqrt() + epsilon);
    }
}

/// One Keras `Nadam` step's constants (Keras' names): `u_t = β₁(1 - ½·0.96ᵗ)`, `u_{t+1}`, the
/// running products `Π_{k≤t} u_k` and `Π_{k≤t} u_k · u_{t+1}`, `1 - β₁`, `1 - β₂` and `β₂ᵗ`.
#[derive(Debug, Clone, Copy)]
pub struct NadamStep<T> {
    /// `u_t`.
    pub u_t: T,
    /// `u_{t+1}`.
    pub u_t_1: T,
    /// `Π_{k≤t} u_k`.
    pub u_product_t: T,
    /// `Π_{k≤t} u_k · u_{t+1}`.
    pub u_product_t_1: T,
    /// `1 - β₁` (in `T`).
    pub one_minus_beta_1: T,
    /// `1 - β₂` (in `T`).
    pub one_minus_beta_2: T,
    /// `β₂ᵗ`.
    pub beta_2_power: T,
    /// `ε`.
    pub epsilon: T,
}

/// One Keras `Nadam` step: `m ← m + (g - m)(1 - β₁)`, `v ← v + (g² - v)(1 - β₂)`,
/// `m̂ = u_{t+1}·m/(1 - Π·u_{t+1}) + (1 - u_t)·g/(1 - Π)`, `v̂ = v/(1 - β₂ᵗ)`,
/// `w ← w - (m̂·lr)/(√v̂ + ε)`.
pub fn nadam_update<T: Float>(w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], lr: T, s: NadamStep<T>, c: Clipping<T>) {
    let one = T::one();
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = c.apply(g);
        *m = *m + (g - *m) * s.one_minus_beta_1;
        *v = *v + (g * g - *v) * s.one_minus_beta_2;
        let m_hat = (s.u_t_1 * *m) / (one - s.u_product_t_1) + ((one - s.u_t) * g) / (one - s.u_product_t);
        let v_hat = *v / (one - s.beta_2_power);
        *w = *w - (m_hat * lr) / (v_hat.sqrt() + s.epsilon);
    }
}

/// Keras `Adafactor`'s constants at step `t` (from 1), in `T`: `ρ = min(lr, 1/√t)` (Keras'
/// `relative_step` takes the same minimum once more, which changes nothing),
/// `β₂ₜ = 1 - t^decay`, `ε₁`, `ε₂` and the update's clip threshold `d`.
#[derive(Debug, Clone, Copy)]
pub struct Adafactor<T> {
    /// `min(lr, 1/√t)`.
    pub rho: T,
    /// `1 - t^beta_2_decay`.
    pub beta_2_t: T,
    /// `epsilon_1`, added to every `g²`.
    pub epsilon_1: T,
    /// `epsilon_2`, the least scale of a weight's RMS.
    pub epsilon_2: T,
    /// `clip_threshold`.
    pub clip_threshold: T,
}

/// The mean of `f(k)` over `k` in `0..n`, summed in f64 and rounded to `T` before the division.
fn mean_of<T: Float>(n: usize, f: impl Fn(usize) -> T) -> T {
    let sum: f64 = (0..n).map(|k| f(k).widen()).sum();
    T::narrow(sum) / T::c(n as f64)
}

/// One Keras `Adafactor` step on a weight of `shape` (row-major `w`, `g`) with its slots:
/// for a weight of rank ≥ 2, seen as blocks of `(rows, cols)` (its last two axes), the factored
/// second moments `r` (`shape[..-1]`) and `c` (`shape[..-2] ++ [cols]`), and `v` (the weight's
/// shape); for rank < 2, `v` alone (`r`, `c` are Keras' scalar placeholders, untouched).
/// With `ĝ² = g² + ε₁`: `r ← β₂ₜr + (1-β₂ₜ)·mean_cols ĝ²`, `c ← β₂ₜc + (1-β₂ₜ)·mean_rows ĝ²`,
/// `v = (r/mean(r))·c` per block (rank < 2: `v ← β₂ₜv + (1-β₂ₜ)ĝ²`); `u = g/√v`,
/// `w ← w - max(ε₂, rms(w))·ρ · u/max(1, rms(u)/d)` (`rms(x) = √mean(x²)` over the weight).
#[allow(clippy::too_many_arguments)]
pub fn adafactor_update<T: Float>(
    w: &mut [T],
    g: &[T],
    shape: &[usize],
    (r, c, v): (&mut [T], &mut [T], &mut [T]),
    a: Adafactor<T>,
    clip: Clipping<T>,
) {
    let n = w.len();
    let g2 = |k: usize| {
        let g = clip.apply(g[k]);
        g * g + a.epsilon_1
    };
    let alpha = maximum(a.epsilon_2, mean_of(n, |k| w[k] * w[k]).sqrt()) * a.rho;
    let (keep, add) = (a.beta_2_t, T::one() - a.beta_2_t);
    if shape.len() >= 2 {
        let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        for b in 0..n / (rows * cols).max(1) {
            let block = b * rows * cols;
            for i in 0..rows {
                let row = block + i * cols;
                let r = &mut r[b * rows + i];
                *r = keep * *r + add * mean_of(cols, |j| g2(row + j));
            }
            for j in 0..cols {
                let c = &mut c[b * cols + j];
                *c = keep * *c + add * mean_of(rows, |i| g2(block + i * cols + j));
            }
            let (r, c) = (&r[b * rows..(b + 1) * rows], &c[b * cols..(b + 1) * cols]);
            let r_mean = mean_of(rows, |i| r[i]);
            for i in 0..rows {
                let factor = r[i] / r_mean;
                for j in 0..cols {
                    v[block + i * cols + j] = factor * c[j];
                }
            }
        }
    } else {
        for (k, v) in v.iter_mut().enumerate() {
            *v = keep * *v + add * g2(k);
        }
    }
    let u = |k: usize| clip.apply(g[k]) / v[k].sqrt();
    let u_rms = mean_of(n, |k| u(k) * u(k)).sqrt();
    // `α·(u/d)` in Keras' order: the division first.
    let d = maximum(T::one(), u_rms / a.clip_threshold);
    for (k, w) in w.iter_mut().enumerate() {
        *w = *w - alpha * (u(k) / d);
    }
}
