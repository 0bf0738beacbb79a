//! An [`Expr`] compiled into a straight-line program over chunk-sized registers, and the two
//! ways to run it: materialise every value, or sum rows of them.

use super::{Broadcast, Expr, Instr, Kind, Side, CHUNK, PIECE};
use crate::pointwise::{per_binary, per_unary};
use crate::storage::Element;
use crate::{pool, Storage};
use losskit_kernels::{accumulate_sum, clip, clip_passes};
use ndarray::IxDyn;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::RwLockReadGuard;

/// Where an instruction reads an operand.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// A register (one chunk of values).
    Reg(usize),
    /// A materialised full-shape array, read at the chunk's offset.
    Full(usize),
}

struct Step {
    instr: Instr,
    args: [Src; 3],
    dest: usize,
}

/// A broadcast leaf loaded into a register for each chunk.
struct Load<'a, T> {
    reg: usize,
    broadcast: Broadcast,
    values: &'a [T],
}

/// The compiled form of an expression: leaves, per-chunk loads and steps in dependency order.
/// Registers are numbered in that order, so a step only reads registers below its own.
struct Program<'a, T> {
    full: Vec<&'a [T]>,
    loads: Vec<Load<'a, T>>,
    steps: Vec<Step>,
    registers: usize,
    /// Where each expression's values end up (one per expression compiled; `roots[0]` is the
    /// one a materialisation writes out).
    roots: Vec<Src>,
    /// The loans of the lent leaves this program reads, kept from ending while it lives.
    _loans: Vec<RwLockReadGuard<'a, bool>>,
}

impl<'a, T: Element> Program<'a, T> {
    fn compile(e: &'a Expr) -> Program<'a, T> {
        Program::compile_many(&[e])
    }

    /// One program for several expressions of one shape: the nodes they share run once.
    fn compile_many(es: &[&'a Expr]) -> Program<'a, T> {
        let mut p = Program {
            full: Vec::new(),
            loads: Vec::new(),
            steps: Vec::new(),
            registers: 0,
            roots: Vec::new(),
            _loans: Vec::new(),
        };
        let mut seen = HashMap::new();
        for e in es {
            let src = p.visit(e, &mut seen);
            p.roots.push(src);
        }
        p
    }

    /// The values of root `k` after [`Program::run_steps`] on the chunk at `s`.
    #[inline(always)]
    fn root_values<'r>(&'r self, regs: &'r [T], k: usize, s: usize, len: usize) -> &'r [T] {
        match self.roots[k] {
            Src::Reg(r) => &regs[r * CHUNK..r * CHUNK + len],
            Src::Full(l) => &self.full[l][s..s + len],
        }
    }

    fn visit(&mut self, e: &'a Expr, seen: &mut HashMap<*const Expr, Src>) -> Src {
        if let Some(&src) = seen.get(&(e as *const Expr)) {
            return src;
        }
        let full = match e.lent::<T>() {
            Some((loan, values)) => {
                self._loans.extend(loan);
                Some(values)
            }
            // A lent leaf whose loan ended without a copy has its own value.
            None => e.value.get().map(slice_of),
        };
        let src = if let Some(values) = full {
            // The same array under several leaves is read through one.
            match self.full.iter().position(|f| std::ptr::eq(*f, values)) {
                Some(l) => Src::Full(l),
                None => {
                    self.full.push(values);
                    Src::Full(self.full.len() - 1)
                }
            }
        } else {
            match &e.kind {
                Kind::Materialised => unreachable!("a materialised leaf has its value"),
                Kind::Foreign(_) => unreachable!("a lent leaf is read in place, from its copy or its value"),
                Kind::Broadcast(b, s) => {
                    let reg = self.register();
                    self.loads.push(Load { reg, broadcast: *b, values: slice_of(s) });
                    Src::Reg(reg)
                }
                Kind::Op(instr, args) => {
                    let mut srcs = [Src::Reg(0); 3];
                    for (k, a) in args.iter().enumerate() {
                        srcs[k] = self.visit(a, seen);
                    }
                    // Unused operand slots repeat the first (never read).
                    for k in args.len()..3 {
                        srcs[k] = srcs[0];
                    }
                    let dest = self.register();
                    self.steps.push(Step { instr: *instr, args: srcs, dest });
                    Src::Reg(dest)
                }
            }
        };
        seen.insert(e as *const Expr, src);
        src
    }

    fn register(&mut self) -> usize {
        self.registers += 1;
        self.registers - 1
    }

    /// A register file for one task, scalar leaves filled in once.
    fn register_file(&self) -> Registers<T> {
        let mut regs = pool::take(self.registers * CHUNK);
        regs.fill(T::zero());
        for load in &self.loads {
            if load.broadcast == Broadcast::Scalar {
                regs[load.reg * CHUNK..(load.reg + 1) * CHUNK].fill(load.values[0]);
            }
        }
        Registers(regs)
    }

    /// Runs the program over the values from flat index `s` and writes them into `out` (the
    /// last step writes there directly).
    #[inline(always)]
    fn run_into(&self, regs: &mut [T], s: usize, out: &mut [T]) {
        let len = out.len();
        if !self.run_steps(regs, s, len, Some(out)) {
            out.copy_from_slice(self.root_values(regs, 0, s, len));
        }
    }

    /// Loads the broadcast leaves and runs the steps; with `out`, the step that computes the
    /// root writes into it instead of its register (returns whether that happened).
    #[inline(always)]
    fn run_steps(&self, regs: &mut [T], s: usize, len: usize, mut out: Option<&mut [T]>) -> bool {
        for load in &self.loads {
            let r = &mut regs[load.reg * CHUNK..load.reg * CHUNK + len];
            match load.broadcast {
                Broadcast::Scalar => {}
                Broadcast::Rows { period } => fill_rows(r, load.values, s, period),
                Broadcast::Cols { period } => fill_cols(r, load.values, s, period),
            }
        }
        for step in &self.steps {
            let (lo, hi) = regs.split_at_mut(step.dest * CHUNK);
            let arg = |k: usize| -> &[T] {
                match step.args[k] {
                    Src::Reg(r) => &lo[r * CHUNK..r * CHUNK + len],
                    Src::Full(l) => &self.full[l][s..s + len],
                }
            };
            let dest = match (&mut out, self.roots[0]) {
                (Some(o), Src::Reg(r)) if r == step.dest => &mut **o,
                _ => &mut hi[..len],
            };
            exec(step.instr, arg(0), arg(1), arg(2), dest);
        }
        out.is_some() && matches!(self.roots[0], Src::Reg(r) if self.steps.last().is_some_and(|l| l.dest == r))
    }
}

fn slice_of<T: Element>(s: &Storage) -> &[T] {
    T::view(s).and_then(|a| a.as_slice()).expect("fusion leaves are of the expression's dtype, in standard layout")
}

/// `r[i] = v[(s + i) / period]`.
#[inline(always)]
fn fill_rows<T: Element>(r: &mut [T], v: &[T], s: usize, period: usize) {
    let (mut row, mut off) = (s / period, s % period);
    let mut i = 0;
    while i < r.len() {
        let n = (period - off).min(r.len() - i);
        r[i..i + n].fill(v[row]);
        i += n;
        off = 0;
        row += 1;
    }
}

/// `r[i] = v[(s + i) % period]`.
#[inline(always)]
fn fill_cols<T: Element>(r: &mut [T], v: &[T], s: usize, period: usize) {
    let mut off = s % period;
    let mut i = 0;
    while i < r.len() {
        let n = (period - off).min(r.len() - i);
        r[i..i + n].copy_from_slice(&v[off..off + n]);
        i += n;
        off = 0;
    }
}

/// One instruction over one chunk: the same per-element maths as the eager ops.
#[inline(always)]
fn exec<T: Element>(instr: Instr, a: &[T], b: &[T], c: &[T], out: &mut [T]) {
    match instr {
        Instr::Unary(u) => per_unary!(u, u => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = u.apply(x);
            }
        }),
        Instr::UnaryDeriv(u) => per_unary!(u, u => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = u.deriv(x, y);
            }
        }),
        Instr::Binary(op) => per_binary!(op, op => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = op.apply(x, y);
            }
        }),
        Instr::BinaryDeriv(op, side) => per_binary!(op, op => {
            for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
                let d = op.deriv(x, y, z);
                *o = if side == Side::Lhs { d.0 } else { d.1 };
            }
        }),
        Instr::Clip { lo, hi } => {
            let (l, h) = (T::c(lo), T::c(hi));
            for (o, &x) in out.iter_mut().zip(a) {
                *o = clip(x, l, h);
            }
        }
        Instr::ClipPass { lo, hi } => {
            let (l, h) = (T::c(lo), T::c(hi));
            for ((o, &x), &g) in out.iter_mut().zip(a).zip(b) {
                *o = if clip_passes(x, l, h) { g } else { T::zero() };
            }
        }
    }
}

/// A program's register file: a buffer from [`pool::take`], given back to the pool when dropped
/// (a materialisation's register files then cost no allocation once warm).
struct Registers<T: Element>(Vec<T>);

impl<T: Element> std::ops::Deref for Registers<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Element> std::ops::DerefMut for Registers<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T: Element> Drop for Registers<T> {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.0));
    }
}

/// Writes the values from flat index `start` into `out`, a chunk at a time.
#[inline(always)]
fn fill_piece_body<T: Element>(p: &Program<'_, T>, regs: &mut [T], start: usize, out: &mut [T]) {
    for (j, chunk) in out.chunks_mut(CHUNK).enumerate() {
        p.run_into(regs, start + j * CHUNK, chunk);
    }
}
with_avx2!(fill_piece => fill_piece_body, (p: &Program<'_, T>, regs: &mut [T], start: usize, out: &mut [T]));

/// Adds the values from flat index `start` to `target`, a chunk at a time.
#[inline(always)]
fn add_piece_body<T: Element>(p: &Program<'_, T>, regs: &mut [T], start: usize, target: &mut [T]) {
    for (j, chunk) in target.chunks_mut(CHUNK).enumerate() {
        let (s, len) = (start + j * CHUNK, chunk.len());
        p.run_steps(regs, s, len, None);
        for (t, &v) in chunk.iter_mut().zip(p.root_values(regs, 0, s, len)) {
            *t = *t + v;
        }
    }
}
with_avx2!(add_piece => add_piece_body, (p: &Program<'_, T>, regs: &mut [T], start: usize, target: &mut [T]));

/// Adds `Σ` of each root's values in `[s, e)` to `totals[k]`, chunk by chunk, blocks added in
/// order (see `accumulate_sum`): the same as one `accumulate_sum` over the range.
#[inline(always)]
fn sum_range_body<T: Element>(p: &Program<'_, T>, regs: &mut [T], s: usize, e: usize, totals: &mut [f64]) {
    let mut i = s;
    while i < e {
        let len = CHUNK.min(e - i);
        p.run_steps(regs, i, len, None);
        for (k, total) in totals.iter_mut().enumerate() {
            accumulate_sum(total, p.root_values(regs, k, i, len));
        }
        i += len;
    }
}
with_avx2!(sum_range => sum_range_body, (p: &Program<'_, T>, regs: &mut [T], s: usize, e: usize, totals: &mut [f64]));

/// Sums of whole rows of `period` (< [`PIECE`]) values for each root, rows `first..`: `sums`
/// holds one entry per root for each row, row by row. Rows shorter than a chunk are evaluated
/// several to a chunk.
#[inline(always)]
fn sum_short_rows_body<T: Element>(p: &Program<'_, T>, regs: &mut [T], first: usize, period: usize, sums: &mut [f64]) {
    let roots = p.roots.len();
    if period > CHUNK {
        for (r, totals) in sums.chunks_mut(roots).enumerate() {
            let start = (first + r) * period;
            sum_range_body(p, regs, start, start + period, totals);
        }
        return;
    }
    let per_chunk = CHUNK / period;
    for (j, group) in sums.chunks_mut(per_chunk * roots).enumerate() {
        let start = (first + j * per_chunk) * period;
        let len = group.len() / roots * period;
        p.run_steps(regs, start, len, None);
        for k in 0..roots {
            let v = p.root_values(regs, k, start, len);
            for (r, totals) in group.chunks_mut(roots).enumerate() {
                let mut total = 0.0;
                accumulate_sum(&mut total, &v[r * period..(r + 1) * period]);
                totals[k] = total;
            }
        }
    }
}
with_avx2!(sum_short_rows => sum_short_rows_body, (p: &Program<'_, T>, regs: &mut [T], first: usize, period: usize, sums: &mut [f64]));

/// Evaluates every value of `e` (in parallel over pieces of [`PIECE`] values).
pub(super) fn materialise(e: &Expr) -> Storage {
    match e.dtype {
        crate::DType::F32 => f32::wrap(materialise_as::<f32>(e)),
        crate::DType::F64 => f64::wrap(materialise_as::<f64>(e)),
    }
}

/// `target[i] ← target[i] + e[i]` over every value of `e` (`target` holds `e`'s shape in
/// row-major order): the same bits as materialising `target + e`, without a new buffer.
pub(super) fn add_into<T: Element>(target: &mut [T], e: &Expr) {
    by_pieces(&Program::<T>::compile(e), target, add_piece::<T>);
}

fn materialise_as<T: Element>(e: &Expr) -> ndarray::ArrayD<T> {
    let mut out = pool::array::<T>(IxDyn(&e.shape));
    let values = out.as_slice_mut().expect("a fresh array is contiguous");
    by_pieces(&Program::<T>::compile(e), values, fill_piece::<T>);
    out
}

/// A piece's work: program, register file, flat index of the piece's first value, its values.
type PieceFn<T> = fn(&Program<'_, T>, &mut [T], usize, &mut [T]);

/// Runs `piece` over `values` in pieces of [`PIECE`], in parallel (one register file per task)
/// when there is more than one piece.
fn by_pieces<T: Element>(p: &Program<'_, T>, values: &mut [T], piece: PieceFn<T>) {
    if values.len() <= PIECE {
        piece(p, &mut p.register_file(), 0, values);
        return;
    }
    values
        .par_chunks_mut(PIECE)
        .enumerate()
        .for_each_init(|| p.register_file(), |regs, (i, chunk)| piece(p, regs, i * PIECE, chunk));
}

/// `Σ` over each of `rows` consecutive runs of `period` values of each expression in `es` (all
/// of one shape), in `f64`, in one pass: `result[k][r]` is the sum of row `r` of `es[k]`.
///
/// The order of additions is fixed by the shape alone: blocks of 256 values from the start of a
/// row, and rows longer than [`PIECE`] cut into pieces of [`PIECE`] whose sums are added in
/// order. A materialised expression is summed straight from its values, in the same order.
pub(super) fn row_sums<T: Element>(es: &[&Expr], rows: usize, period: usize) -> Vec<Vec<f64>> {
    let roots = es.len();
    if period == 0 || rows == 0 {
        return vec![vec![0.0; rows]; roots];
    }
    let p = Program::<T>::compile_many(es);
    // Row by row, one entry per root.
    let sums: Vec<f64> = if period >= PIECE {
        let per_row = period.div_ceil(PIECE);
        let partial: Vec<Vec<f64>> = (0..rows * per_row)
            .into_par_iter()
            .map_init(
                || p.register_file(),
                |regs, u| {
                    let (r, k) = (u / per_row, u % per_row);
                    let s = r * period + k * PIECE;
                    let mut totals = vec![0.0; roots];
                    sum_range(&p, regs, s, (s + PIECE).min((r + 1) * period), &mut totals);
                    totals
                },
            )
            .collect();
        partial
            .chunks(per_row)
            .flat_map(|pieces| (0..roots).map(move |k| pieces.iter().fold(0.0, |a, t| a + t[k])))
            .collect()
    } else {
        let mut sums = vec![0.0; rows * roots];
        if rows * period < crate::pointwise::PARALLEL_MIN {
            let mut regs = p.register_file();
            sum_short_rows(&p, &mut regs, 0, period, &mut sums);
        } else {
            let rows_per_task = (PIECE / period).max(1);
            sums.par_chunks_mut(rows_per_task * roots).enumerate().for_each_init(
                || p.register_file(),
                |regs, (i, group)| sum_short_rows(&p, regs, i * rows_per_task, period, group),
            );
        }
        sums
    };
    (0..roots).map(|k| sums.iter().skip(k).step_by(roots).copied().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_cols_fill_across_row_ends() {
        let v = [1.0f32, 2.0, 3.0];
        let mut r = [0.0f32; 7];
        fill_rows(&mut r, &v, 2, 3);
        assert_eq!(r, [1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0]);
        fill_cols(&mut r, &v, 2, 3);
        assert_eq!(r, [3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn chunked_sum_equals_one_pass() {
        let v: Vec<f32> = (0..5000).map(|i| ((i * 37) % 101) as f32 * 0.013).collect();
        let e = Expr::materialised(f32::wrap(ndarray::ArrayD::from_shape_vec(IxDyn(&[5000]), v.clone()).unwrap()));
        let mut one = 0.0;
        accumulate_sum(&mut one, &v);
        assert_eq!(row_sums::<f32>(&[&e], 1, 5000)[0][0].to_bits(), one.to_bits());
    }
}
