//! The CubeCL kernels: one cube (workgroup) of [`units`] units per row of `y_pred`, which
//! writes the row's loss value and, when asked, its gradient, in one launch. The formulas are
//! `losskit_kernels`' (the CPU kernels of the same names), in f32. Row sums are blocked: each
//! unit sums groups of [`GROUP`] of its strided values, adds the group sums, and the units'
//! sums are combined by a tree in shared memory, so that no addend meets a running sum of more
//! than `GROUP + cols/(units·GROUP) + log2(units)` terms (a compensated sum is no option: shader
//! compilers may reassociate it away, as lavapipe does).
//!
//! Only `cubecl::prelude` is imported here (burn's `Tensor` would shadow CubeCL's).

use cubecl::prelude::*;

/// The most units per cube (the shared memory each tree reduction uses).
const MAX_UNITS: usize = 256;

/// Units per cube for `rows` rows: one row is shared by this many units, each reading every
/// `units`-th value. Many rows fill the device with one 32-unit cube each (fewer barriers per
/// row: on lavapipe, (4096, 8000) loss + gradient took 133 ms with 32 units, 154 with 64, 183
/// with 128 and 215 with 256); a few rows get more units each.
pub fn units(rows: usize) -> u32 {
    match rows {
        512.. => 32,
        64.. => 128,
        _ => MAX_UNITS as u32,
    }
}

/// Values a unit sums before adding them to its running sum.
const GROUP: u32 = 16;

/// The row this cube computes (rows beyond 65535 run on a second grid axis).
#[cube]
fn row_index() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// A NaN, built from its bits (a NaN literal is not valid everywhere shaders are compiled).
#[cube]
fn nan() -> f32 {
    f32::from_bits(0x7fc0_0000u32)
}

/// Whether `x` is `-inf` (below the most negative finite f32; NaN compares false).
#[cube]
fn is_neg_inf(x: f32) -> bool {
    x < f32::new(-3.402_823_5e38)
}

/// The sum over the cube of every unit's `v`, in a tree over `shared` (a slot per unit); every
/// unit gets it.
#[cube]
fn cube_sum(shared: &mut Shared<[f32]>, v: f32) -> f32 {
    let u = UNIT_POS_X as usize;
    shared[u] = v;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if u < stride {
            let other = shared[u + stride];
            shared[u] += other;
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// [`cube_sum`] of two values at once (`v` over `first`, `w` over `second`): one tree, half
/// the barriers of two.
#[cube]
fn cube_sum2(first: &mut Shared<[f32]>, second: &mut Shared<[f32]>, v: f32, w: f32) -> (f32, f32) {
    let u = UNIT_POS_X as usize;
    first[u] = v;
    second[u] = w;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if u < stride {
            let a = first[u + stride];
            let b = second[u + stride];
            first[u] += a;
            second[u] += b;
        }
        sync_cube();
        stride /= 2;
    }
    let totals = (first[0], second[0]);
    sync_cube();
    totals
}

/// The largest of every unit's `v` (a NaN is skipped, as the CPU kernels' row maximum skips
/// it: it still reaches the loss through `e^{x - max}`).
#[cube]
fn cube_max(shared: &mut Shared<[f32]>, v: f32) -> f32 {
    let u = UNIT_POS_X as usize;
    shared[u] = v;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if u < stride {
            let other = shared[u + stride];
            let mine = shared[u];
            if other > mine {
                shared[u] = other;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The row's largest value (NaN skipped; the most negative finite f32 when there is none, so
/// that `x - max` is `-inf` at a `-inf` and NaN only where the CPU kernels have NaN).
#[cube]
fn row_max(x: &Tensor<f32>, base: usize, cols: usize, shared: &mut Shared<[f32]>) -> f32 {
    let mut m = f32::new(-3.402_823_5e38);
    let mut j = UNIT_POS_X as usize;
    while j < cols {
        let v = x[base + j];
        if v > m {
            m = v;
        }
        j += CUBE_DIM_X as usize;
    }
    cube_max(shared, m)
}

/// Cross-entropy from logits over one row per cube: sparse (`targets[row]` a class index,
/// negative for an ignored row; class weights `w`; PyTorch's smoothing `ε` = `smoothing`) or
/// dense (`targets` a distribution per row, smoothed as `t = y·keep + add`). `values[row]` is
/// the loss times `row_scale[row]`, and `grad` (when `with_grad`) its gradient times
/// `row_scale[row]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy(
    logits: &Tensor<f32>,
    targets: &Tensor<f32>,
    class_weights: &Tensor<f32>,
    row_scale: &Tensor<f32>,
    values: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    smoothing: f32,
    keep: f32,
    add: f32,
    #[comptime] sparse: bool,
    #[comptime] weighted: bool,
    #[comptime] with_grad: bool,
) {
    let row = row_index();
    if row >= rows as usize {
        terminate!();
    }
    let cols = cols as usize;
    let base = row * cols;
    let u = UNIT_POS_X as usize;
    let rs = row_scale[row];
    let mut shared = Shared::<[f32]>::new_slice(MAX_UNITS);

    // The label (sparse): an ignored row writes zeros.
    let mut k = 0usize;
    let mut wk = f32::new(1.0);
    if sparse {
        let label = targets[row];
        if label < f32::new(0.0) {
            fill_row(values, grad, row, base, cols, f32::new(0.0), with_grad);
            terminate!();
        }
        k = u32::cast_from(label) as usize;
        if weighted {
            wk = class_weights[k];
        }
    }

    let m = row_max(logits, base, cols, &mut shared);

    // Σ e^{x-m}, and per kind: Σt and Σt(x-m) (dense), Σw and Σw(x-m) (smoothed sparse),
    // the count of -inf logits (sparse); in groups.
    let mut s = f32::new(0.0);
    let mut a = f32::new(0.0);
    let mut b_local = f32::new(0.0);
    let mut j = u;
    while j < cols {
        let mut gs = f32::new(0.0);
        let mut ga = f32::new(0.0);
        let mut gb = f32::new(0.0);
        let mut i = 0u32;
        while i < GROUP && j < cols {
            let x = logits[base + j];
            let shifted = x - m;
            gs += shifted.exp();
            if sparse {
                if smoothing != f32::new(0.0) {
                    let mut wj = f32::new(1.0);
                    if weighted {
                        wj = class_weights[j];
                    }
                    ga += wj;
                    gb += wj * shifted;
                } else if is_neg_inf(x) {
                    ga += f32::new(1.0);
                }
            } else {
                let y = targets[base + j];
                let t = y * keep + add;
                ga += t;
                gb += t * shifted;
            }
            j += CUBE_DIM_X as usize;
            i += 1;
        }
        s += gs;
        a += ga;
        b_local += gb;
    }
    // Two sums per tree (half the barriers); Σw(x-m) and Σt(x-m) only where they are used.
    let mut second = Shared::<[f32]>::new_slice(MAX_UNITS);
    let (s, a) = cube_sum2(&mut shared, &mut second, s, a);
    let mut b = f32::new(0.0);
    if !sparse || smoothing != f32::new(0.0) {
        b = cube_sum(&mut shared, b_local);
    }
    let ln_s = ln(s);

    // The value.
    let mut value = ln_s * a - b;
    if sparse {
        let xk_raw = logits[base + k];
        let xk = xk_raw - m;
        if smoothing != f32::new(0.0) {
            let c = f32::cast_from(cols as u32);
            let picked = wk * (ln_s - xk);
            value = (f32::new(1.0) - smoothing) * picked + smoothing / c * (a * ln_s - b);
        } else {
            value = -wk * (xk - ln_s);
            // Keras multiplies every log-probability by its one-hot target: 0·(-inf) is NaN.
            let mut besides = a;
            if is_neg_inf(xk_raw) {
                besides -= f32::new(1.0);
            }
            if besides > f32::new(0.0) && !value.is_nan() && !value.is_inf() {
                value = nan();
            }
        }
    }
    if u == 0 {
        values[row] = value * rs;
    }

    // The gradient.
    if with_grad {
        let c = f32::cast_from(cols as u32);
        let share = smoothing / c;
        let pick = (f32::new(1.0) - smoothing) * wk;
        let mut soft = rs * a / s;
        if sparse {
            if smoothing != f32::new(0.0) {
                soft = (pick + share * a) * rs / s;
            } else {
                soft = wk * rs / s;
            }
        }
        let mut j = u;
        while j < cols {
            let x = logits[base + j];
            let mut g = (x - m).exp() * soft;
            if sparse {
                if smoothing != f32::new(0.0) {
                    let mut wj = f32::new(1.0);
                    if weighted {
                        wj = class_weights[j];
                    }
                    g -= rs * share * wj;
                    if j == k {
                        g -= rs * pick;
                    }
                } else if j == k {
                    g -= wk * rs;
                }
            } else {
                let t = targets[base + j];
                g -= rs * (t * keep + add);
            }
            grad[base + j] = g;
            j += CUBE_DIM_X as usize;
        }
    }
}

/// `ln(1 + d)`, accurate to a few ulp also for small `d` (a shader's `log` loses the low bits
/// near 1, and `log1p` may be `log(1 + d)`): `2·atanh(d / (2 + d))` as its odd series for
/// `|d| < 0.125`, the plain logarithm elsewhere.
#[cube]
fn ln_1p(d: f32) -> f32 {
    let mut r = (f32::new(1.0) + d).ln();
    if d.abs() < f32::new(0.125) {
        let z = d / (f32::new(2.0) + d);
        let z2 = z * z;
        let series = f32::new(1.0)
            + z2 * (f32::new(1.0 / 3.0)
                + z2 * (f32::new(1.0 / 5.0)
                    + z2 * (f32::new(1.0 / 7.0) + z2 * (f32::new(1.0 / 9.0) + z2 * f32::new(1.0 / 11.0)))));
        r = f32::new(2.0) * z * series;
    }
    r
}

/// `ln x`, accurate near 1 too (through [`ln_1p`]; `x - 1` is exact there).
#[cube]
fn ln(x: f32) -> f32 {
    ln_1p(x - f32::new(1.0))
}

/// Keras divides probabilities by their row sum: a sum that is zero or not finite makes the
/// whole row NaN (value and gradient).
#[cube]
fn renormalisation_fails(total: f32) -> bool {
    total.is_nan() || total.is_inf() || total == f32::new(0.0)
}

/// A row whose value and gradient (when `with_grad`) are all `v` (an ignored row's 0, a
/// failed renormalisation's NaN).
#[cube]
fn fill_row(
    values: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    row: usize,
    base: usize,
    cols: usize,
    v: f32,
    #[comptime] with_grad: bool,
) {
    if UNIT_POS_X == 0 {
        values[row] = v;
    }
    if with_grad {
        let mut j = UNIT_POS_X as usize;
        while j < cols {
            grad[base + j] = v;
            j += CUBE_DIM_X as usize;
        }
    }
}

/// `x` clipped to `[lo, hi]`, a NaN kept (as the CPU kernels' `clip`).
#[cube]
fn clip(x: f32, lo: f32, hi: f32) -> f32 {
    let mut c = x;
    if c < lo {
        c = lo;
    }
    if c > hi {
        c = hi;
    }
    c
}

/// Whether the clip lets `x` through (the closed range, and NaN): where its gradient flows.
#[cube]
fn clip_passes(x: f32, lo: f32, hi: f32) -> bool {
    (x >= lo && x <= hi) || x.is_nan()
}

/// `b^e` with IEEE's (Rust's `powf`) answers where a shader's `pow` (`exp2(e·log2 b)`) has
/// none: at `b = 0` (`1` for `e = 0`, `0` for `e > 0`, `+inf` for `e < 0`) and for `b < 0`
/// (`±|b|^e` for an integer `e`, NaN otherwise).
#[cube]
fn pow(b: f32, e: f32) -> f32 {
    let mut r = b.abs().powf(e);
    if b < f32::new(0.0) {
        if e.floor() != e {
            r = nan();
        } else if (e * f32::new(0.5)).floor() != e * f32::new(0.5) {
            r = -r;
        }
    }
    if b == f32::new(0.0) {
        r = f32::new(0.0);
        if e == f32::new(0.0) {
            r = f32::new(1.0);
        } else if e < f32::new(0.0) {
            r = f32::from_bits(0x7f80_0000u32);
        }
    }
    r
}

/// Cross-entropy from probabilities over one row per cube: renormalised by the row's sum (a
/// sum that is zero or not finite makes the row NaN), clipped to `[eps, hi]`; sparse (a class
/// index per row, class weights) or dense (`t = y·keep + add`). `values[row]` and `grad` are
/// times `row_scale[row]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn probability_cross_entropy(
    probs: &Tensor<f32>,
    targets: &Tensor<f32>,
    class_weights: &Tensor<f32>,
    row_scale: &Tensor<f32>,
    values: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    keep: f32,
    add: f32,
    eps: f32,
    hi: f32,
    #[comptime] sparse: bool,
    #[comptime] weighted: bool,
    #[comptime] with_grad: bool,
) {
    let row = row_index();
    if row >= rows as usize {
        terminate!();
    }
    let cols = cols as usize;
    let base = row * cols;
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let rs = row_scale[row];
    let mut shared = Shared::<[f32]>::new_slice(MAX_UNITS);

    let mut s = f32::new(0.0);
    let mut j = u;
    while j < cols {
        let mut part = f32::new(0.0);
        let mut i = 0u32;
        while i < GROUP && j < cols {
            part += probs[base + j];
            j += step;
            i += 1;
        }
        s += part;
    }
    let total = cube_sum(&mut shared, s);
    if renormalisation_fails(total) {
        fill_row(values, grad, row, base, cols, nan(), with_grad);
        terminate!();
    }

    if sparse {
        let k = u32::cast_from(targets[row]) as usize;
        let mut wk = f32::new(1.0);
        if weighted {
            wk = class_weights[k];
        }
        let pk = probs[base + k];
        let o = pk / total;
        if u == 0 {
            values[row] = -wk * ln(clip(o, eps, hi)) * rs;
        }
        if with_grad {
            let inside = clip_passes(o, eps, hi);
            let ws = wk * rs;
            let mut j = u;
            while j < cols {
                let mut g = f32::new(0.0);
                if inside {
                    g = ws / total;
                    if j == k {
                        g = ws * (f32::new(1.0) / total - f32::new(1.0) / pk);
                    }
                }
                grad[base + j] = g;
                j += step;
            }
        }
    } else {
        let mut value = f32::new(0.0);
        let mut mass = f32::new(0.0);
        let mut j = u;
        while j < cols {
            let mut gv = f32::new(0.0);
            let mut gm = f32::new(0.0);
            let mut i = 0u32;
            while i < GROUP && j < cols {
                let y = targets[base + j];
                let t = y * keep + add;
                let o = probs[base + j] / total;
                gv += t * ln(clip(o, eps, hi));
                if clip_passes(o, eps, hi) {
                    gm += t;
                }
                j += step;
                i += 1;
            }
            value += gv;
            mass += gm;
        }
        let value = cube_sum(&mut shared, value);
        let mass = cube_sum(&mut shared, mass);
        if u == 0 {
            values[row] = -value * rs;
        }
        if with_grad {
            let shared_part = mass / total;
            let mut j = u;
            while j < cols {
                let y = targets[base + j];
                let t = y * keep + add;
                let o = probs[base + j] / total;
                let mut own = f32::new(0.0);
                if clip_passes(o, eps, hi) {
                    own = t / (o * total);
                }
                grad[base + j] = rs * (shared_part - own);
                j += step;
            }
        }
    }
}

/// Binary cross-entropy (from logits or probabilities) or Keras' binary focal loss, the mean
/// over one row per cube of `w_j·term(t_j, x_j)`, `t = y·keep + add`, `w` the class weights
/// (1 without). `kind`: 0 BCE from logits, 1 BCE from probabilities, 2 focal (`focal_logits`:
/// through the sigmoid; `balanced`: times `t·α + (1-t)(1-α)`). `values[row]` and `grad` are
/// times `row_scale[row]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments, unused_assignments)]
pub fn binary_cross_entropy(
    x: &Tensor<f32>,
    targets: &Tensor<f32>,
    class_weights: &Tensor<f32>,
    row_scale: &Tensor<f32>,
    values: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    keep: f32,
    add: f32,
    eps: f32,
    hi: f32,
    gamma: f32,
    alpha: f32,
    #[comptime] kind: u32,
    #[comptime] focal_logits: bool,
    #[comptime] balanced: bool,
    #[comptime] weighted: bool,
    #[comptime] with_grad: bool,
) {
    let row = row_index();
    if row >= rows as usize {
        terminate!();
    }
    let cols = cols as usize;
    let base = row * cols;
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let n = f32::cast_from(cols as u32);
    let k = row_scale[row] / n;
    let one = f32::new(1.0);
    let zero = f32::new(0.0);
    let mut shared = Shared::<[f32]>::new_slice(MAX_UNITS);

    let mut sum = f32::new(0.0);
    let mut j = u;
    while j < cols {
        let mut part = f32::new(0.0);
        let mut i = 0u32;
        while i < GROUP && j < cols {
            let p = x[base + j];
            let y = targets[base + j];
            let t = y * keep + add;
            let mut v = zero;
            let mut d = zero;
            if kind == 0 {
                // One exponential gives softplus(-p), softplus(p) and σ(p).
                let e = (-p.abs()).exp();
                let l1p = ln_1p(e);
                let sp_neg = (-p).max(zero) + l1p;
                let sp_pos = p.max(zero) + l1p;
                let mut sig = e / (one + e);
                if p >= zero {
                    sig = one / (one + e);
                }
                v = t * sp_neg + (one - t) * sp_pos;
                d = sig - t;
            } else if kind == 1 {
                let q = clip(p, eps, hi);
                v = -(t * ln(q) + (one - t) * ln(one - q));
                if clip_passes(p, eps, hi) {
                    d = (one - t) / (one - q) - t / q;
                }
            } else {
                let mut s = p;
                if focal_logits {
                    s = one / (one + (-p).exp());
                }
                let q = clip(s, eps, hi);
                let bce = -(t * ln(q) + (one - t) * ln(one - q));
                let pt = t * s + (one - t) * (one - s);
                let b = one - pt;
                let focal = pow(b, gamma);
                let mut bal = one;
                if balanced {
                    bal = t * alpha + (one - t) * (one - alpha);
                }
                let mut dbce = zero;
                if clip_passes(s, eps, hi) {
                    dbce = (one - t) / (one - q) - t / q;
                }
                let mut dfocal = zero;
                if gamma != zero {
                    dfocal = gamma * pow(b, gamma - one) * (one - t - t);
                }
                d = bal * (dfocal * bce + focal * dbce);
                if focal_logits {
                    d = d * s * (one - s);
                }
                v = bal * (focal * bce);
            }
            let mut w = one;
            if weighted {
                w = class_weights[j];
            }
            if with_grad {
                grad[base + j] = w * d * k;
            }
            part += w * v;
            j += step;
            i += 1;
        }
        sum += part;
    }
    let total = cube_sum(&mut shared, sum);
    if u == 0 {
        values[row] = total / n * row_scale[row];
    }
}

/// Keras' categorical focal loss over one row per cube: `s = softmax(x)` from logits (else
/// `p`), `o = clip(s/Σs, eps, hi)`, `Σ_c α_c (1 - o_c)^γ · (-t_c ln o_c)` (`α` one value, or one
/// per class with `per_class`); a row whose `Σs` is zero or not finite is NaN. The gradient
/// goes through the renormalisation and (from logits) the softmax; `grad` holds each
/// element's `∂term/∂o` between passes. `values[row]` and `grad` are times `row_scale[row]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn categorical_focal(
    x: &Tensor<f32>,
    targets: &Tensor<f32>,
    alpha: &Tensor<f32>,
    row_scale: &Tensor<f32>,
    values: &mut Tensor<f32>,
    grad: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    eps: f32,
    hi: f32,
    gamma: f32,
    #[comptime] from_logits: bool,
    #[comptime] per_class: bool,
    #[comptime] with_grad: bool,
) {
    let row = row_index();
    if row >= rows as usize {
        terminate!();
    }
    let cols = cols as usize;
    let base = row * cols;
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let rs = row_scale[row];
    let one = f32::new(1.0);
    let zero = f32::new(0.0);
    let mut shared = Shared::<[f32]>::new_slice(MAX_UNITS);

    // The softmax' shift and log-sum (from logits).
    let mut m = zero;
    let mut ln_s = zero;
    if from_logits {
        m = row_max(x, base, cols, &mut shared);
        let mut s = zero;
        let mut j = u;
        while j < cols {
            let mut part = zero;
            let mut i = 0u32;
            while i < GROUP && j < cols {
                let v = x[base + j];
                part += (v - m).exp();
                j += step;
                i += 1;
            }
            s += part;
        }
        ln_s = ln(cube_sum(&mut shared, s));
    }

    // Σ prob(x).
    let mut total = zero;
    let mut j = u;
    while j < cols {
        let mut part = zero;
        let mut i = 0u32;
        while i < GROUP && j < cols {
            let mut p = x[base + j];
            if from_logits {
                p = ((p - m) - ln_s).exp();
            }
            part += p;
            j += step;
            i += 1;
        }
        total += part;
    }
    let total = cube_sum(&mut shared, total);
    if renormalisation_fails(total) {
        fill_row(values, grad, row, base, cols, nan(), with_grad);
        terminate!();
    }

    // The value, ∂term/∂o (kept in `grad`) and Σ a·s.
    let mut value = zero;
    let mut a_dot_s = zero;
    let mut j = u;
    while j < cols {
        let mut gv = zero;
        let mut ga = zero;
        let mut i = 0u32;
        while i < GROUP && j < cols {
            let mut s = x[base + j];
            if from_logits {
                s = ((s - m) - ln_s).exp();
            }
            let t = targets[base + j];
            let mut alpha_c = alpha[0];
            if per_class {
                alpha_c = alpha[j];
            }
            let o = clip(s / total, eps, hi);
            let ln_o = ln(o);
            let modulating = pow(one - o, gamma);
            gv += modulating * alpha_c * (-t * ln_o);
            if with_grad {
                let mut dmod = zero;
                if gamma != zero {
                    dmod = gamma * pow(one - o, gamma - one) * t * ln_o;
                }
                let mut a = zero;
                if clip_passes(s / total, eps, hi) {
                    a = alpha_c * (dmod - modulating * t / o);
                }
                grad[base + j] = a;
                ga += a * s;
            }
            j += step;
            i += 1;
        }
        value += gv;
        a_dot_s += ga;
    }
    let value = cube_sum(&mut shared, value);
    if u == 0 {
        values[row] = value * rs;
    }
    if with_grad {
        let a_dot_s = cube_sum(&mut shared, a_dot_s);
        // Through the renormalisation o = s/Σs, then (from logits) through the softmax.
        let mut gp_dot_s = zero;
        let mut j = u;
        while j < cols {
            let mut part = zero;
            let mut i = 0u32;
            while i < GROUP && j < cols {
                let a = grad[base + j];
                let g = a / total - a_dot_s / (total * total);
                grad[base + j] = g;
                if from_logits {
                    let v = x[base + j];
                    part += g * ((v - m) - ln_s).exp();
                }
                j += step;
                i += 1;
            }
            gp_dot_s += part;
        }
        let gp_dot_s = cube_sum(&mut shared, gp_dot_s);
        let mut j = u;
        while j < cols {
            let g = grad[base + j];
            let mut out = rs * g;
            if from_logits {
                let v = x[base + j];
                out = rs * ((v - m) - ln_s).exp() * (g - gp_dot_s);
            }
            grad[base + j] = out;
            j += step;
        }
    }
}
