//! Fused linear + cross-entropy: the loss of `logits = hidden · Wᵀ + b` against integer labels
//! and its gradients with respect to `hidden`, `W` and `b`, without ever holding the `N × V`
//! logits (Cut Cross-Entropy's and Liger Kernel's idea, on the CPU).
//!
//! Tokens are taken in chunks of `R` rows (64 MiB of logits whatever `N`: `R·V` ≈ 16M values in
//! f32, 8M in f64): for each chunk the logits come from one parallel GEMM into the chunk buffer
//! (as `(W·hᵀ)ᵀ`, so `W` is packed once per chunk), a parallel row pass
//! turns each row into its loss and, in place, into `∂loss/∂logits` scaled by the token's weight,
//! and two more GEMMs add the chunk's share to the gradients: `∂h[chunk] = ∂z · W` and
//! `∂W += ∂zᵀ · h[chunk]` (chunks in order, so the sums do not depend on the thread count).
//! The three products are exactly the naive path's; the extra memory is the chunk buffer.
//!
//! Per token `i` with label `y` (not ignored), `z` the (soft-capped) logits, `lse = ln Σ_j e^{z_j}`,
//! class weights `w` (all 1 without), `W_Σ = Σ_j w_j`, smoothing `ε` over `V` classes, z-loss `λ`:
//!
//! `loss_i = (1-ε)·w_y·(lse - z_y) + ε/V·(W_Σ·lse - Σ_j w_j·z_j) + λ·lse²`
//!
//! (PyTorch's `cross_entropy(weight, label_smoothing)` per token, plus PaLM's z-loss), and
//! `∂loss_i/∂z_j = ((1-ε)·w_y + ε/V·W_Σ + 2λ·lse)·softmax(z)_j - (1-ε)·w_y·[j = y] - ε/V·w_j`.
//! With a soft-cap `c`, `z = c·tanh(z_raw/c)` and the gradient is multiplied by `1 - (z/c)²`.
//! Ignored tokens have loss 0 and no gradient. A NaN or infinite logit makes its token's loss
//! and gradient NaN (through `lse`), as the naive path does.

use crate::classification::log_sum_exp;
use crate::driver::isa_dispatch;
use crate::gemm::{gemm, gemm_transposed_out, MatRef};
use crate::sum::{lane_sum2_wide, lane_sum_wide};
use crate::{Float, KernelError, RowKernel};
use rayon::prelude::*;

/// Bytes in one chunk of logits (`R·V` values): 64 MiB, 16M values in f32. Every chunk packs
/// all of `W` twice (for the logits and for `∂h`) and reads and writes all of `∂W`, so fewer,
/// larger chunks move less memory: at N = 4096, D = 2048, V = 32000, chunks of 524 tokens took
/// 5–8% less time than chunks of 262 (32 MB) in three interleaved rounds, still under the
/// 100 MB the issue allows.
const CHUNK_BYTES: usize = 64 << 20;
/// Chunks never have fewer token rows than this (unless `N` is smaller).
const MIN_CHUNK_ROWS: usize = 16;
/// Columns per task when summing a chunk's columns into the bias gradient.
const BIAS_COLUMNS: usize = 4096;

/// The options of the fused linear cross-entropy (see the module docs for the formula).
///
/// It also runs as a [`RowKernel`] on precomputed logits (`y_true` one label per row, as
/// [`crate::SparseCategoricalCrossentropy`]; a negative label is ignored): the naive path, with
/// the same per-row arithmetic.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearCrossEntropy<'a> {
    /// Tokens with this label have loss 0 and no gradient (PyTorch's `ignore_index`).
    pub ignore_index: Option<i64>,
    /// Label smoothing `ε` in `[0, 1]`.
    pub label_smoothing: f64,
    /// Per-class weights `w` (length `V`), or all 1.
    pub class_weights: Option<&'a [f64]>,
    /// Soft-cap `c > 0`: logits become `c·tanh(z/c)`.
    pub softcap: Option<f64>,
    /// The z-loss coefficient `λ` (`λ·lse²` per token); 0 for none.
    pub z_loss: f64,
}

/// The options in the element type, with the class weights converted once.
struct Typed<T> {
    ignore_index: Option<i64>,
    eps: T,
    weights: Option<Vec<T>>,
    cap: Option<T>,
    z_loss: T,
    /// `ε / V`.
    smooth: T,
    /// `W_Σ = Σ_j w_j` (`V` without class weights).
    w_total: T,
}

impl LinearCrossEntropy<'_> {
    fn typed<T: Float>(&self, vocab: usize) -> Typed<T> {
        let w_total = match self.class_weights {
            Some(w) => T::c(w.iter().sum()),
            None => T::c(vocab as f64),
        };
        Typed {
            ignore_index: self.ignore_index,
            eps: T::c(self.label_smoothing),
            weights: self.class_weights.map(|w| w.iter().map(|&x| T::c(x)).collect()),
            cap: self.softcap.map(T::c),
            z_loss: T::c(self.z_loss),
            smooth: T::c(self.label_smoothing / vocab.max(1) as f64),
            w_total,
        }
    }
}

/// How the projection is stored (row-major either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// `(V, D)`: one row per class (PyTorch's `nn.Linear(D, V).weight`, a tied embedding).
    #[default]
    ClassesByFeatures,
    /// `(D, V)`: one column per class (a Keras `Dense(V)` kernel). The weight's gradient has
    /// the same layout.
    FeaturesByClasses,
}

/// The inputs: `hidden` `(N, D)`, `weight` `(V, D)` or `(D, V)` (see [`WeightLayout`]),
/// `bias` `(V,)`, `labels` `(N,)`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct LinearInputs<'a, T> {
    /// `(N, D)` hidden states.
    pub hidden: &'a [T],
    /// The output projection, `(V, D)` or `(D, V)` as `layout` says.
    pub weight: &'a [T],
    /// How `weight` is stored.
    pub layout: WeightLayout,
    /// `(V,)` bias, if any.
    pub bias: Option<&'a [T]>,
    /// `(N,)` class indices in `[0, V)` or the ignore index.
    pub labels: &'a [i64],
    /// `N`.
    pub tokens: usize,
    /// `D`.
    pub dim: usize,
    /// `V`.
    pub vocab: usize,
}

/// The gradient buffers, overwritten: `hidden` `(N, D)`, `weight` (the weight's layout),
/// `bias` `(V,)`.
#[derive(Debug)]
pub struct LinearGrads<'a, T> {
    /// `∂/∂hidden`, `(N, D)`.
    pub hidden: &'a mut [T],
    /// `∂/∂weight`, `(V, D)`.
    pub weight: &'a mut [T],
    /// `∂/∂bias`, `(V,)` (only when the inputs have a bias).
    pub bias: Option<&'a mut [T]>,
}

const NAME: &str = "linear_cross_entropy";

fn length(what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length { kernel: NAME, what, got, expected })
    }
}

impl LinearCrossEntropy<'_> {
    /// The per-token losses (`losses`, length `N`; 0 for ignored tokens).
    pub fn forward<T: Float>(&self, x: &LinearInputs<'_, T>, losses: &mut [T]) -> Result<(), KernelError> {
        self.run(x, None, losses, None)
    }

    /// The per-token losses and the gradients of `Σ_i scale_i·loss_i` (`scale`, length `N`: the
    /// reduction's factor times the upstream gradient, per token).
    pub fn forward_backward<T: Float>(
        &self,
        x: &LinearInputs<'_, T>,
        scale: &[T],
        losses: &mut [T],
        grads: LinearGrads<'_, T>,
    ) -> Result<(), KernelError> {
        self.run(x, Some(scale), losses, Some(grads))
    }

    /// Token rows per chunk of logits in `T` for a vocabulary of `vocab`: 64 MiB of logits
    /// (`⌊2²⁶ / (V·size_of T)⌋` rows), at least 16 rows and at most `tokens`.
    pub fn chunk_rows<T>(tokens: usize, vocab: usize) -> usize {
        (CHUNK_BYTES / std::mem::size_of::<T>().max(1) / vocab.max(1)).max(MIN_CHUNK_ROWS).min(tokens.max(1))
    }

    fn check<T: Float>(
        &self,
        x: &LinearInputs<'_, T>,
        scale: Option<&[T]>,
        losses: &[T],
        grads: Option<&LinearGrads<'_, T>>,
    ) -> Result<(), KernelError> {
        let (n, d, v) = (x.tokens, x.dim, x.vocab);
        length("hidden", x.hidden.len(), n * d)?;
        length("weight", x.weight.len(), v * d)?;
        length("labels", x.labels.len(), n)?;
        length("losses", losses.len(), n)?;
        if let Some(b) = x.bias {
            length("bias", b.len(), v)?;
        }
        if let Some(w) = self.class_weights {
            length("class weights", w.len(), v)?;
        }
        if let Some(s) = scale {
            length("scale", s.len(), n)?;
        }
        if let Some(g) = grads {
            length("hidden gradient", g.hidden.len(), n * d)?;
            length("weight gradient", g.weight.len(), v * d)?;
            // A bias gradient exactly when there is a bias (length 0 stands for "none").
            length("bias gradient", g.bias.as_ref().map_or(0, |b| b.len()), x.bias.map_or(0, |_| v))?;
        }
        for (token, &label) in x.labels.iter().enumerate() {
            if Some(label) != self.ignore_index && !(0..v as i64).contains(&label) {
                return Err(KernelError::Label { kernel: NAME, index: token, label, classes: v });
            }
        }
        Ok(())
    }

    fn run<T: Float>(
        &self,
        x: &LinearInputs<'_, T>,
        scale: Option<&[T]>,
        losses: &mut [T],
        grads: Option<LinearGrads<'_, T>>,
    ) -> Result<(), KernelError> {
        self.run_chunked(x, scale, losses, grads, Self::chunk_rows::<T>(x.tokens, x.vocab))
    }

    /// [`Self::run`] with chunks of `rows` tokens.
    fn run_chunked<T: Float>(
        &self,
        x: &LinearInputs<'_, T>,
        scale: Option<&[T]>,
        losses: &mut [T],
        mut grads: Option<LinearGrads<'_, T>>,
        rows: usize,
    ) -> Result<(), KernelError> {
        self.check(x, scale, losses, grads.as_ref())?;
        let (n, d, v) = (x.tokens, x.dim, x.vocab);
        if n == 0 {
            if let Some(g) = grads.as_mut() {
                zero_gradients(g);
            }
            return Ok(());
        }
        let rows = rows.clamp(1, n);
        let mut buf = vec![T::zero(); rows * v];
        let typed = self.typed::<T>(v);
        for (c, r0) in (0..n).step_by(rows).enumerate() {
            let r1 = (r0 + rows).min(n);
            let z = &mut buf[..(r1 - r0) * v];
            let h = MatRef::row_major(&x.hidden[r0 * d..r1 * d], r1 - r0, d);
            // `w` is `(V, D)` whatever the storage.
            let w = match x.layout {
                WeightLayout::ClassesByFeatures => MatRef::row_major(x.weight, v, d),
                WeightLayout::FeaturesByClasses => MatRef::row_major(x.weight, d, v).t(),
            };
            // `z = h·Wᵀ` computed as `(W·hᵀ)ᵀ`: `W` is packed once as the left operand, where
            // `h·Wᵀ` would pack the chunk's `h` again for every block of `W`'s rows.
            gemm_transposed_out(T::one(), w, h.t(), T::zero(), z).expect("chunk shapes checked");
            let chunk_scale = scale.map(|s| &s[r0..r1]);
            typed.rows(z, x, r0, chunk_scale, &mut losses[r0..r1]);
            if let Some(g) = grads.as_mut() {
                let dz = MatRef::row_major(&*z, r1 - r0, v);
                gemm(T::one(), dz, w, T::zero(), &mut g.hidden[r0 * d..r1 * d]).expect("shapes checked");
                let beta = if c == 0 { T::zero() } else { T::one() };
                match x.layout {
                    WeightLayout::ClassesByFeatures => gemm(T::one(), dz.t(), h, beta, g.weight),
                    WeightLayout::FeaturesByClasses => gemm(T::one(), h.t(), dz, beta, g.weight),
                }
                .expect("shapes checked");
                if let Some(gb) = g.bias.as_deref_mut() {
                    add_column_sums(z, v, gb, c == 0);
                }
            }
        }
        Ok(())
    }
}

impl<T: Float> Typed<T> {
    /// The row pass over one chunk: bias and soft-cap, then each row's loss and (with `scale`)
    /// its gradient in place.
    fn rows(&self, z: &mut [T], x: &LinearInputs<'_, T>, r0: usize, scale: Option<&[T]>, losses: &mut [T]) {
        let v = x.vocab;
        z.par_chunks_mut(v).zip(losses.par_iter_mut()).enumerate().for_each(|(r, (row, loss))| {
            let label = x.labels[r0 + r];
            if Some(label) == self.ignore_index {
                *loss = T::zero();
                row.iter_mut().for_each(|g| *g = T::zero());
                return;
            }
            token_row_dispatch(self, row, x.bias, label as usize, scale.map(|s| s[r]), loss);
        });
    }

    /// Adds the bias and applies the soft-cap, in place.
    #[inline(always)]
    fn prepare(&self, row: &mut [T], bias: Option<&[T]>) {
        if let Some(b) = bias {
            for (z, &b) in row.iter_mut().zip(b) {
                *z = *z + b;
            }
        }
        if let Some(c) = self.cap {
            for z in row.iter_mut() {
                *z = c * (*z / c).tanh_fast();
            }
        }
    }

    /// One token's loss; with `scale`, the row becomes `scale·∂loss/∂z_raw`.
    #[inline(always)]
    fn row(&self, row: &mut [T], label: usize, scale: Option<T>) -> T {
        let one = T::one();
        let eps = self.eps;
        let w = |j: usize| self.weights.as_ref().map_or(one, |w| w[j]);
        let lse = log_sum_exp(row);
        let z_y = row[label];
        let w_y = w(label);
        let mut loss = (one - eps) * w_y * (lse - z_y) + self.z_loss * lse * lse;
        if eps != T::zero() {
            let weighted = match &self.weights {
                Some(cw) => lane_sum2_wide(row, cw, |z, w| z * w),
                None => lane_sum_wide(row, |z| z),
            };
            loss = loss + self.smooth * T::narrow(self.w_total.widen() * lse.widen() - weighted);
        }
        let Some(s) = scale else { return loss };
        let a = s * ((one - eps) * w_y + self.smooth * self.w_total + T::c(2.0) * self.z_loss * lse);
        let b = s * self.smooth;
        let cap = self.cap;
        // The soft-cap's derivative at a capped logit: 1 - (z/c)².
        let capped = |zj: T| cap.map_or(one, |c| one - (zj / c) * (zj / c));
        let grad = |zj: T, wj: T| (a * (zj - lse).exp_fast() - b * wj) * capped(zj);
        match &self.weights {
            Some(cw) => row.iter_mut().zip(cw).for_each(|(z, &wj)| *z = grad(*z, wj)),
            None => row.iter_mut().for_each(|z| *z = grad(*z, one)),
        }
        row[label] = row[label] - s * (one - eps) * w_y * capped(z_y);
        loss
    }
}

/// One token's row: bias and soft-cap, then its loss into `loss` and (with `scale`) its gradient
/// in place ([`Typed::prepare`], [`Typed::row`]).
#[inline(always)]
fn token_row<T: Float>(
    typed: &Typed<T>,
    row: &mut [T],
    bias: Option<&[T]>,
    label: usize,
    scale: Option<T>,
    loss: &mut T,
) {
    typed.prepare(row, bias);
    *loss = typed.row(row, label, scale);
}

// The row pass compiled for AVX2 + FMA or AVX-512 (the exponentials vectorise 8 or 16 wide), as
// the loss kernels' driver does: in the baseline build the row pass took ~3.4% of the fused
// head's CPU samples, here ~1.5%.
isa_dispatch!(token_row_dispatch, token_row, <T: Float>, (typed: &Typed<T>, row: &mut [T], bias: Option<&[T]>, label: usize, scale: Option<T>, loss: &mut T));

/// `gb[j] (+)= Σ_r z[r, j]` over the rows of a chunk, in row order, in parallel over column
/// blocks (each column is summed by one task: the same bits on any thread count).
fn add_column_sums<T: Float>(z: &[T], v: usize, gb: &mut [T], first: bool) {
    gb.par_chunks_mut(BIAS_COLUMNS).enumerate().for_each(|(b, out)| {
        let (c0, len) = (b * BIAS_COLUMNS, out.len());
        if first {
            out.iter_mut().for_each(|o| *o = T::zero());
        }
        for row in z.chunks(v) {
            for (o, &g) in out.iter_mut().zip(&row[c0..c0 + len]) {
                *o = *o + g;
            }
        }
    });
}

fn zero_gradients<T: Float>(g: &mut LinearGrads<'_, T>) {
    g.hidden.iter_mut().for_each(|x| *x = T::zero());
    g.weight.iter_mut().for_each(|x| *x = T::zero());
    if let Some(b) = g.bias.as_deref_mut() {
        b.iter_mut().for_each(|x| *x = T::zero());
    }
}

impl<T: Float> RowKernel<T> for LinearCrossEntropy<'_> {
    const NAME: &'static str = NAME;
    fn true_cols(&self, _cols: usize) -> usize {
        1
    }
    /// One row of precomputed logits (no bias: add it to the logits); a negative label is an
    /// ignored token (loss 0, gradient 0), one at or beyond the row's length gives NaN.
    fn row(&self, y_true: &[T], y_pred: &[T], scale: T, grad: Option<&mut [T]>) -> T {
        let label = y_true[0];
        let k = label.to_usize().filter(|&k| k < y_pred.len());
        let Some(k) = k.filter(|_| label >= T::zero()) else {
            if let Some(g) = grad {
                g.iter_mut().for_each(|v| *v = T::zero());
            }
            return if label < T::zero() { T::zero() } else { T::nan() };
        };
        let typed = self.typed::<T>(y_pred.len());
        match grad {
            Some(g) => {
                g.copy_from_slice(y_pred);
                typed.prepare(g, None);
                typed.row(g, k, Some(scale))
            }
            None => {
                let mut row = y_pred.to_vec();
                typed.prepare(&mut row, None);
                typed.row(&mut row, k, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic problem: `n` tokens, `d` features, `v` classes.
    struct Problem {
        h: Vec<f64>,
        w: Vec<f64>,
        b: Vec<f64>,
        labels: Vec<i64>,
        n: usize,
        d: usize,
        v: usize,
    }

    fn problem(n: usize, d: usize, v: usize) -> Problem {
        let h = (0..n * d).map(|i| ((i * 7 + 3) as f64 * 0.61).sin()).collect();
        let w = (0..v * d).map(|i| ((i * 5 + 1) as f64 * 0.37).cos() * 0.8).collect();
        let b = (0..v).map(|i| (i as f64 * 0.3).sin() * 0.2).collect();
        let labels = (0..n).map(|i| if i % 7 == 3 { -100 } else { ((i * 11) % v) as i64 }).collect();
        Problem { h, w, b, labels, n, d, v }
    }

    fn opts(weights: &[f64]) -> LinearCrossEntropy<'_> {
        LinearCrossEntropy {
            ignore_index: Some(-100),
            label_smoothing: 0.1,
            class_weights: Some(weights),
            softcap: Some(3.0),
            z_loss: 1e-2,
        }
    }

    /// The naive path: logits, the row kernel on them, then the three products by loops.
    fn naive(k: &LinearCrossEntropy<'_>, p: &Problem) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, d, v) = (p.n, p.d, p.v);
        let mut losses = vec![0.0; n];
        let mut dz = vec![0.0; n * v];
        for i in 0..n {
            let z: Vec<f64> =
                (0..v).map(|j| (0..d).map(|t| p.h[i * d + t] * p.w[j * d + t]).sum::<f64>() + p.b[j]).collect();
            let label = if Some(p.labels[i]) == k.ignore_index { -1.0 } else { p.labels[i] as f64 };
            losses[i] = k.row(&[label], &z, 1.0, Some(&mut dz[i * v..(i + 1) * v]));
        }
        let dh = (0..n * d).map(|e| (0..v).map(|j| dz[(e / d) * v + j] * p.w[j * d + e % d]).sum()).collect();
        let dw = (0..v * d).map(|e| (0..n).map(|i| dz[i * v + e / d] * p.h[i * d + e % d]).sum()).collect();
        let db = (0..v).map(|j| (0..n).map(|i| dz[i * v + j]).sum()).collect();
        (losses, dh, dw, db)
    }

    fn fused(k: &LinearCrossEntropy<'_>, p: &Problem, rows: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let x = LinearInputs {
            hidden: &p.h,
            weight: &p.w,
            layout: WeightLayout::ClassesByFeatures,
            bias: Some(&p.b),
            labels: &p.labels,
            tokens: p.n,
            dim: p.d,
            vocab: p.v,
        };
        let (mut losses, mut dh, mut dw, mut db) =
            (vec![0.0; p.n], vec![f64::NAN; p.n * p.d], vec![f64::NAN; p.v * p.d], vec![f64::NAN; p.v]);
        let grads = LinearGrads { hidden: &mut dh, weight: &mut dw, bias: Some(&mut db) };
        k.run_chunked(&x, Some(&vec![1.0; p.n]), &mut losses, Some(grads), rows).unwrap();
        (losses, dh, dw, db)
    }

    fn close(a: &[f64], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-10 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn fused_chunks_equal_the_naive_path() {
        let p = problem(37, 5, 23);
        let weights: Vec<f64> = (0..23).map(|j| 0.5 + (j % 4) as f64 * 0.25).collect();
        for k in [opts(&weights), LinearCrossEntropy { ignore_index: Some(-100), ..Default::default() }] {
            let want = naive(&k, &p);
            for rows in [1, 16, 37] {
                let got = fused(&k, &p, rows);
                close(&got.0, &want.0, "loss");
                close(&got.1, &want.1, "dh");
                close(&got.2, &want.2, "dW");
                close(&got.3, &want.3, "db");
                assert_eq!(got.0[3], 0.0, "an ignored token has loss 0");
            }
        }
    }

    #[test]
    fn a_features_by_classes_weight_gives_the_same_loss_and_transposed_gradient() {
        let p = problem(21, 4, 9);
        let weights: Vec<f64> = (0..9).map(|j| 1.0 + j as f64 * 0.1).collect();
        let k = opts(&weights);
        let want = fused(&k, &p, 8);
        let wt: Vec<f64> = (0..4 * 9).map(|e| p.w[(e % 9) * 4 + e / 9]).collect();
        let x = LinearInputs {
            hidden: &p.h,
            weight: &wt,
            layout: WeightLayout::FeaturesByClasses,
            bias: Some(&p.b),
            labels: &p.labels,
            tokens: p.n,
            dim: p.d,
            vocab: p.v,
        };
        let (mut losses, mut dh, mut dw, mut db) = (vec![0.0; 21], vec![0.0; 84], vec![0.0; 36], vec![0.0; 9]);
        let grads = LinearGrads { hidden: &mut dh, weight: &mut dw, bias: Some(&mut db) };
        k.run_chunked(&x, Some(&[1.0; 21]), &mut losses, Some(grads), 8).unwrap();
        close(&losses, &want.0, "loss");
        close(&dh, &want.1, "dh");
        let dw_t: Vec<f64> = (0..36).map(|e| dw[(e % 4) * 9 + e / 4]).collect();
        close(&dw_t, &want.2, "dW");
        close(&db, &want.3, "db");
    }

    #[test]
    fn the_row_gradient_is_the_derivative_of_the_loss() {
        let weights = [0.5, 1.0, 2.0, 1.5];
        let k = opts(&weights);
        let z = [0.3f64, -1.2, 2.5, 0.7];
        let mut g = [0.0f64; 4];
        k.row(&[2.0], &z, 1.0, Some(&mut g));
        for j in 0..4 {
            let (mut up, mut down) = (z, z);
            up[j] += 1e-6;
            down[j] -= 1e-6;
            let numeric: f64 = (k.row(&[2.0], &up, 1.0, None) - k.row(&[2.0], &down, 1.0, None)) / 2e-6;
            assert!((g[j] - numeric).abs() < 1e-7, "dz[{j}]: {} vs {numeric}", g[j]);
        }
    }

    #[test]
    fn the_loss_is_pytorch_cross_entropy_plus_the_z_loss() {
        // Without cap or weights: (1-ε)(lse - z_y) + ε/V·Σ_j (lse - z_j) + λ·lse².
        let k = LinearCrossEntropy { label_smoothing: 0.2, z_loss: 0.1, ..Default::default() };
        let z = [1.0, 2.0, 0.5];
        let lse = z.iter().map(|v: &f64| v.exp()).sum::<f64>().ln();
        let want = 0.8 * (lse - 2.0) + 0.2 / 3.0 * z.iter().map(|v| lse - v).sum::<f64>() + 0.1 * lse * lse;
        let got: f64 = k.row(&[1.0], &z, 1.0, None);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn bad_labels_and_lengths_are_errors() {
        let p = problem(4, 2, 3);
        let k = LinearCrossEntropy::default();
        let mut losses = vec![0.0; 4];
        let x = LinearInputs {
            hidden: &p.h,
            weight: &p.w,
            layout: WeightLayout::default(),
            bias: None,
            labels: &[0, 1, 3, 2],
            tokens: 4,
            dim: 2,
            vocab: 3,
        };
        let err = k.forward(&x, &mut losses).unwrap_err();
        assert_eq!(err, KernelError::Label { kernel: NAME, index: 2, label: 3, classes: 3 });
        let x = LinearInputs { labels: &[0, 1], ..x };
        assert!(matches!(k.forward(&x, &mut losses), Err(KernelError::Length { what: "labels", .. })));
    }

    #[test]
    fn a_nan_hidden_value_makes_its_token_nan() {
        let mut p = problem(3, 2, 4);
        p.h[2] = f64::NAN; // token 1
        let k = LinearCrossEntropy::default();
        let labels = [0, 1, 2];
        let x = LinearInputs {
            hidden: &p.h,
            weight: &p.w,
            layout: WeightLayout::default(),
            bias: None,
            labels: &labels,
            tokens: 3,
            dim: 2,
            vocab: 4,
        };
        let mut losses = vec![0.0; 3];
        k.forward(&x, &mut losses).unwrap();
        assert!(losses[0].is_finite() && losses[1].is_nan() && losses[2].is_finite(), "{losses:?}");
    }

    #[test]
    fn a_chunk_holds_64_mib_of_logits_in_either_type() {
        assert_eq!(LinearCrossEntropy::chunk_rows::<f32>(4096, 32000), 524);
        assert_eq!(LinearCrossEntropy::chunk_rows::<f64>(4096, 32000), 262);
        assert_eq!(LinearCrossEntropy::chunk_rows::<f32>(100, 32000), 100, "at most the tokens");
        assert_eq!(LinearCrossEntropy::chunk_rows::<f32>(4096, 10_000_000), 16, "at least 16 rows");
        assert_eq!(LinearCrossEntropy::chunk_rows::<f32>(0, 0), 1);
    }

    #[test]
    fn the_vector_build_of_the_row_pass_gives_the_baseline_builds_bits() {
        // A row long enough for every vector loop and its remainder, with every option on.
        let v = 1003;
        let weights: Vec<f64> = (0..v).map(|j| 0.5 + (j % 7) as f64 / 7.0).collect();
        let bias: Vec<f32> = (0..v).map(|j| ((j * 13) % 17) as f32 * 0.05 - 0.4).collect();
        let row: Vec<f32> = (0..v).map(|j| ((j * 37) % 101) as f32 * 0.09 - 4.5).collect();
        let typed = opts(&weights).typed::<f32>(v);
        for scale in [None, Some(0.25f32)] {
            let (mut plain, mut vector) = (row.clone(), row.clone());
            let (mut plain_loss, mut vector_loss) = (0.0f32, 0.0f32);
            token_row(&typed, &mut plain, Some(&bias), 17, scale, &mut plain_loss);
            token_row_dispatch(&typed, &mut vector, Some(&bias), 17, scale, &mut vector_loss);
            assert!(plain_loss.is_finite() && plain_loss > 0.0, "{plain_loss}");
            assert_eq!(vector_loss.to_bits(), plain_loss.to_bits(), "loss, scale {scale:?}");
            let bits = |r: &[f32]| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&vector), bits(&plain), "row, scale {scale:?}");
        }
    }
}
