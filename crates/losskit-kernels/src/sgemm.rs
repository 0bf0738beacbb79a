//! The f32 product `C ← α·A·B + β·C` for AVX2 + FMA, with its packing buffers kept per thread:
//! after a thread's first product of a given size it allocates nothing.
//!
//! The blocking is the classic one (Goto's, as in BLIS): `n` in blocks of [`NC`] columns, `k` in
//! blocks of [`KC`], `m` in blocks of [`MC`] rows; each `KC × NC` block of `B` is packed into
//! panels of [`NR`] columns, each `MC × KC` block of `A` into panels of [`MR`] rows, and a
//! micro-kernel computes an `MR × NR` tile of `C` in twelve AVX registers over one `KC` block
//! (a last, shorter row panel with a kernel of its own height; the tile of `C` prefetched
//! first). Operands that must be transposed into the panels (`B` with contiguous columns,
//! row-major `A`) go through 8 × 8 register transposes.
//!
//! Every output element is the sum over `k` in blocks of 256 taken in order, each block
//! accumulated from zero by fused multiply-adds in `k` order, then `c ← α·s + β'·c` with
//! `β' = β` for the first block and 1 after: the arithmetic of `matrixmultiply`'s AVX2 kernel,
//! so for `α = 1` the result is the same bits as `matrixmultiply::sgemm` (tested).
//! Where the CPU has AVX-512 or lacks AVX2/FMA, or [`crate::gemm::set_f32_kernel`] asks for it,
//! `matrixmultiply` runs instead (also on other architectures, where this module is not built).

use std::arch::x86_64::*;
use std::cell::Cell;

/// Rows of the micro-kernel's tile.
const MR: usize = 6;
/// Columns of the micro-kernel's tile (two 8-lane registers).
const NR: usize = 16;
/// The `k` block: one packed panel of `B` (`KC × NR`, 16 KiB) stays in L1 while a panel of `A`
/// streams past it. Also the summation blocks of `matrixmultiply`, whose bits this keeps.
const KC: usize = 256;
/// Rows of `A` packed at once (`MC × KC`, 144 KiB, kept in L2).
const MC: usize = 144;
/// Columns of `B` packed at once (`KC × NC`, 2 MiB, in L3).
const NC: usize = 2048;

/// A 64-byte line of packed values: the buffers are vectors of these, so every panel starts
/// aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A thread's packing buffers for `A` and `B`.
#[derive(Default)]
struct Buffers {
    a: Vec<Line>,
    b: Vec<Line>,
}

thread_local! {
    /// The buffers of the last product this thread ran, taken out while a product runs (a
    /// product started meanwhile on the same thread, e.g. by rayon's work stealing, finds none
    /// and makes its own).
    static KEPT: Cell<Option<Box<Buffers>>> = const { Cell::new(None) };
}

/// Grows `v` to at least `values` f32 values (never shrinks, so a thread keeps its largest).
fn reserve(v: &mut Vec<Line>, values: usize) -> *mut f32 {
    let lines = values.div_ceil(16);
    if v.len() < lines {
        v.resize(lines, Line([0.0; 16]));
    }
    v.as_mut_ptr().cast()
}

/// `C ← α·A·B + β·C` for `A: m × k`, `B: k × n`, `C: m × n`, all through element strides;
/// `matrixmultiply::sgemm`'s contract (with `β = 0`, `C` is never read).
///
/// # Safety
/// Every element addressed through the pointers and strides must be valid, and `C` must not
/// alias `A` or `B` nor itself.
pub(crate) unsafe fn sgemm(p: Product) {
    if p.m > 0 && p.n > 0 && p.k > 0 && crate::gemm::f32_kernel() == crate::gemm::F32Kernel::Auto && has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the caller vouches for the operands.
        unsafe { p.oriented().run() };
        return;
    }
    let Product { m, k, n, alpha, beta, a, b, c } = p;
    // SAFETY: the caller's contract is matrixmultiply's.
    unsafe { matrixmultiply::sgemm(m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs) }
}

/// Whether this kernel runs: AVX2 and FMA, and no AVX-512 (where `matrixmultiply`'s 16-lane
/// kernel is the faster one).
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && !is_x86_feature_detected!("avx512f")
    })
}

/// A strided matrix: element `(i, j)` at `ptr + i·rs + j·cs` (in elements).
#[derive(Clone, Copy)]
pub(crate) struct Strided<P> {
    /// Element `(0, 0)`.
    pub ptr: P,
    /// Distance between rows.
    pub rs: isize,
    /// Distance between columns.
    pub cs: isize,
}

impl<P> Strided<P> {
    /// The transpose (the strides swapped).
    fn t(self) -> Self {
        Strided { rs: self.cs, cs: self.rs, ..self }
    }

    /// The offset of element `(i, j)`.
    fn offset(&self, i: usize, j: usize) -> isize {
        i as isize * self.rs + j as isize * self.cs
    }
}

/// One product `C ← α·A·B + β·C`: `A` is `m × k`, `B` `k × n`, `C` `m × n`.
#[derive(Clone, Copy)]
pub(crate) struct Product {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// The product's factor.
    pub alpha: f32,
    /// `C`'s factor (0: `C` is not read).
    pub beta: f32,
    /// The left operand.
    pub a: Strided<*const f32>,
    /// The right operand.
    pub b: Strided<*const f32>,
    /// The output.
    pub c: Strided<*mut f32>,
}

impl Product {
    /// The same product with contiguous output rows where possible: a column-major `C` is
    /// computed as `Cᵀ = Bᵀ·Aᵀ` (each element is the same sum, so the same bits).
    fn oriented(self) -> Product {
        if self.c.cs == 1 || self.c.rs != 1 {
            return self;
        }
        Product { m: self.n, n: self.m, a: self.b.t(), b: self.a.t(), c: self.c.t(), ..self }
    }

    /// Runs the blocked loops with this thread's kept buffers.
    ///
    /// # Safety
    /// AVX2 and FMA are available; the operands satisfy [`sgemm`]'s contract.
    unsafe fn run(self) {
        let mut bufs = KEPT.with(Cell::take).unwrap_or_default();
        let kc_max = self.k.min(KC);
        // Two values of slack past the last panel: `pack_a` stores columns of 6 as 8 values.
        let ap = reserve(&mut bufs.a, self.m.min(MC).next_multiple_of(MR) * kc_max + 2);
        let bp = reserve(&mut bufs.b, self.n.min(NC).next_multiple_of(NR) * kc_max);
        // SAFETY: the buffers hold a packed block of each operand; AVX2/FMA as the caller says.
        unsafe { self.blocks(ap, bp) };
        KEPT.with(|kept| kept.set(Some(bufs)));
    }

    /// The three outer loops: `NC` columns, `KC` depth, `MC` rows.
    ///
    /// # Safety
    /// As [`Product::run`], with `ap`/`bp` large enough for one packed block each.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocks(self, ap: *mut f32, bp: *mut f32) {
        for jc in (0..self.n).step_by(NC) {
            let nc = NC.min(self.n - jc);
            for pc in (0..self.k).step_by(KC) {
                let kc = KC.min(self.k - pc);
                // SAFETY: rows pc..pc+kc, columns jc..jc+nc lie inside B.
                unsafe { pack_b(Strided { ptr: self.b.ptr.offset(self.b.offset(pc, jc)), ..self.b }, kc, nc, bp) };
                let beta = if pc == 0 { self.beta } else { 1.0 };
                for ic in (0..self.m).step_by(MC) {
                    let mc = MC.min(self.m - ic);
                    // SAFETY: rows ic..ic+mc, columns pc..pc+kc lie inside A.
                    unsafe { pack_a(Strided { ptr: self.a.ptr.offset(self.a.offset(ic, pc)), ..self.a }, mc, kc, ap) };
                    // SAFETY: the tile loop stays inside rows ic..ic+mc, columns jc..jc+nc of C.
                    unsafe { self.tiles(ap, bp, kc, (ic, mc), (jc, nc), beta) };
                }
            }
        }
    }

    /// The micro-kernel over every `MR × NR` tile of one packed block pair (column panels
    /// outside, row panels inside, so a `B` panel stays in L1).
    ///
    /// # Safety
    /// As [`Product::blocks`]; `ap`/`bp` hold the packed blocks of rows `ic..ic+mc` and
    /// columns `jc..jc+nc`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tiles(
        self,
        ap: *const f32,
        bp: *const f32,
        kc: usize,
        (ic, mc): (usize, usize),
        (jc, nc): (usize, usize),
        beta: f32,
    ) {
        for jr in (0..nc).step_by(NR) {
            let cols = NR.min(nc - jr);
            for ir in (0..mc).step_by(MR) {
                let rows = MR.min(mc - ir);
                let tile = Tile {
                    c: self.c.ptr.offset(self.c.offset(ic + ir, jc + jr)),
                    rsc: self.c.rs,
                    csc: self.c.cs,
                    rows,
                    cols,
                };
                // SAFETY: panel `ir / MR` of `ap` and `jr / NR` of `bp` hold `kc` steps each;
                // the tile lies inside C.
                unsafe {
                    let (a, b) = (ap.add(ir * kc), bp.add(jr * kc));
                    match rows {
                        6 => kernel::<6>(kc, a, b, self.alpha, beta, tile),
                        5 => kernel::<5>(kc, a, b, self.alpha, beta, tile),
                        4 => kernel::<4>(kc, a, b, self.alpha, beta, tile),
                        3 => kernel::<3>(kc, a, b, self.alpha, beta, tile),
                        2 => kernel::<2>(kc, a, b, self.alpha, beta, tile),
                        _ => kernel::<1>(kc, a, b, self.alpha, beta, tile),
                    }
                }
            }
        }
    }
}

/// Packs `kc × nc` values of `B` into panels of
/// [`NR`] columns, each `kc` rows of `NR` contiguous values; a last, narrower panel is padded
/// with zeros.
///
/// # Safety
/// Every addressed element of `B` is valid; `out` holds `kc · nc.next_multiple_of(NR)` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(b: Strided<*const f32>, kc: usize, nc: usize, out: *mut f32) {
    let Strided { ptr: b, rs: rsb, cs: csb } = b;
    for jr in (0..nc).step_by(NR) {
        let cols = NR.min(nc - jr);
        // SAFETY: panel `jr / NR` starts `jr · kc` values in and holds `kc · NR`.
        let panel = unsafe { out.add(jr * kc) };
        let mut done = 0;
        if rsb == 1 && cols == NR {
            // Columns of B are contiguous: 8 × 8 blocks transposed in registers.
            done = kc - kc % 8;
            for p in (0..done).step_by(8) {
                for half in 0..2 {
                    // SAFETY: columns jr + 8·half.. + 8 and rows p..p + 8 of B are valid; the
                    // panel holds rows p..p + 8.
                    unsafe {
                        let src = b.offset(p as isize + (jr + 8 * half) as isize * csb);
                        transpose_8x8(src, csb, panel.add(p * NR + 8 * half), NR);
                    }
                }
            }
        }
        for p in done..kc {
            // SAFETY: row p, columns jr..jr+cols of B are valid; the panel row is NR values.
            unsafe {
                let src = b.offset(p as isize * rsb + jr as isize * csb);
                let dst = panel.add(p * NR);
                if csb == 1 && cols == NR {
                    _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
                    _mm256_storeu_ps(dst.add(8), _mm256_loadu_ps(src.add(8)));
                } else {
                    for j in 0..NR {
                        *dst.add(j) = if j < cols { *src.offset(j as isize * csb) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Writes the transpose of the 8 × 8 block whose rows start `src_stride` values apart at
/// `src` to rows `dst_stride` values apart at `dst`.
///
/// # Safety
/// The 8 rows of 8 values at `src` are valid to read and those at `dst` to write.
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_8x8(src: *const f32, src_stride: isize, dst: *mut f32, dst_stride: usize) {
    // SAFETY: the caller's contract.
    let rows = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.offset(i as isize * src_stride)) });
    for (i, row) in transpose(rows).into_iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe { _mm256_storeu_ps(dst.add(i * dst_stride), row) };
    }
}

/// The transpose of the 8 × 8 matrix whose rows are `r`: pairs of rows interleaved, then
/// pairs of pairs, then the two 128-bit halves exchanged.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(x, y)
        } else {
            _mm256_unpackhi_ps(x, y)
        }
    });
    let u: [__m256; 8] = std::array::from_fn(|i| {
        let quad = i / 4 * 4;
        let (x, y) = (t[quad + (i % 4) / 2], t[quad + 2 + (i % 4) / 2]);
        if i % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(x, y)
        } else {
            _mm256_shuffle_ps::<0xEE>(x, y)
        }
    });
    std::array::from_fn(|i| {
        if i < 4 {
            _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4])
        } else {
            _mm256_permute2f128_ps::<0x31>(u[i - 4], u[i])
        }
    })
}

/// Packs `mc × kc` values of `A` into panels of [`MR`] rows, each `kc` columns of `MR`
/// contiguous values; a last, shorter panel is padded with zeros.
///
/// # Safety
/// Every addressed element of `A` is valid; `out` holds `kc · mc.next_multiple_of(MR) + 2` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(a: Strided<*const f32>, mc: usize, kc: usize, out: *mut f32) {
    let Strided { ptr: a, rs: rsa, cs: csa } = a;
    for ir in (0..mc).step_by(MR) {
        let rows = MR.min(mc - ir);
        // SAFETY: panel `ir / MR` starts `ir · kc` values in and holds `kc · MR`.
        let panel = unsafe { out.add(ir * kc) };
        // SAFETY: rows ir..ir+rows, columns 0..kc of A are valid; the panel holds kc · MR.
        unsafe {
            let src = a.offset(ir as isize * rsa);
            let mut done = 0;
            if rows == MR && csa == 1 {
                // Rows of A are contiguous: blocks of 8 columns transposed in registers (two
                // zero rows make the block 8 × 8); each column of 6 is stored as 8 values, the
                // last 2 overwritten by the next column (the buffer has room past its end).
                done = kc - kc % 8;
                for p in (0..done).step_by(8) {
                    let r = std::array::from_fn(|i| {
                        if i < MR {
                            _mm256_loadu_ps(src.offset(i as isize * rsa + p as isize))
                        } else {
                            _mm256_setzero_ps()
                        }
                    });
                    for (q, col) in transpose(r).into_iter().enumerate() {
                        _mm256_storeu_ps(panel.add((p + q) * MR), col);
                    }
                }
            }
            if rows == MR {
                for p in done..kc {
                    let col = src.offset(p as isize * csa);
                    for i in 0..MR {
                        *panel.add(p * MR + i) = *col.offset(i as isize * rsa);
                    }
                }
            } else {
                for p in 0..kc {
                    let col = src.offset(p as isize * csa);
                    for i in 0..MR {
                        *panel.add(p * MR + i) = if i < rows { *col.offset(i as isize * rsa) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Where one micro-kernel tile goes: its first element, strides, and how much of the
/// `MR × NR` tile lies inside `C`.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    rsc: isize,
    csc: isize,
    rows: usize,
    cols: usize,
}

/// One tile of `R = t.rows` rows (a last, shorter row panel computes only its own rows):
/// `s = Σ_p a_p ⊗ b_p` over `kc` packed steps by fused multiply-adds from zero, then
/// `c ← α·s + β·c` (`c ← α·s` without reading `c` when `β = 0`).
///
/// # Safety
/// `a` holds `kc · MR` and `b` `kc · NR` packed values; the tile's `R × cols` elements of
/// `C` are valid.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize>(kc: usize, a: *const f32, b: *const f32, alpha: f32, beta: f32, t: Tile) {
    if beta != 0.0 {
        for i in 0..t.rows {
            // SAFETY: a prefetch of a valid element's line has no effect on memory.
            unsafe {
                let c = t.c.offset(i as isize * t.rsc);
                _mm_prefetch::<_MM_HINT_T0>(c.cast());
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_offset(15 * t.csc).cast());
            }
        }
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..kc {
        // SAFETY: step p of the panels is inside them (the caller's contract).
        unsafe {
            let b0 = _mm256_load_ps(b.add(p * NR));
            let b1 = _mm256_load_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    let av = _mm256_set1_ps(alpha);
    if t.cols == NR && t.csc == 1 {
        // SAFETY: the tile's R full rows are inside C, each contiguous.
        unsafe { store_rows(&acc, av, beta, t) };
        return;
    }
    let mut s = [[0f32; NR]; R];
    for (row, out) in acc.iter().zip(s.iter_mut()) {
        // SAFETY: each row of `s` holds 16 values.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), row[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), row[1]);
        }
    }
    for (i, row) in s.iter().enumerate() {
        for (j, &v) in row.iter().enumerate().take(t.cols) {
            // SAFETY: (i, j) is inside the tile's valid part.
            unsafe {
                let c = t.c.offset(i as isize * t.rsc + j as isize * t.csc);
                *c = if beta == 0.0 { alpha * v } else { alpha.mul_add(v, *c * beta) };
            }
        }
    }
}

/// Stores `R` full rows of a tile, each contiguous: `c ← α·s + β·c` as one fused multiply-add
/// per value (`c ← α·s` when `β = 0`).
///
/// # Safety
/// All `R × NR` elements of the tile are valid and each row's `NR` values contiguous.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_rows<const R: usize>(acc: &[[__m256; 2]; R], av: __m256, beta: f32, t: Tile) {
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row i of the tile holds NR contiguous valid values.
        unsafe {
            let c = t.c.offset(i as isize * t.rsc);
            if beta == 0.0 {
                _mm256_storeu_ps(c, _mm256_mul_ps(av, row[0]));
                _mm256_storeu_ps(c.add(8), _mm256_mul_ps(av, row[1]));
            } else {
                let bv = _mm256_set1_ps(beta);
                let c0 = _mm256_mul_ps(_mm256_loadu_ps(c), bv);
                let c1 = _mm256_mul_ps(_mm256_loadu_ps(c.add(8)), bv);
                _mm256_storeu_ps(c, _mm256_fmadd_ps(av, row[0], c0));
                _mm256_storeu_ps(c.add(8), _mm256_fmadd_ps(av, row[1], c1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix of `len` values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Runs both `sgemm`s on the same operands: `A` (`m × k`) and `B` (`k × n`) stored
    /// transposed when asked, `C` row- or column-major, starting from `c0`.
    #[allow(clippy::too_many_arguments)]
    fn both(
        m: usize,
        k: usize,
        n: usize,
        (ta, tb, tc): (bool, bool, bool),
        alpha: f32,
        beta: f32,
        c0: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let (rsc, csc) = if tc { (1, m as isize) } else { (n as isize, 1) };
        let (mut ours, mut theirs) = (c0.to_vec(), c0.to_vec());
        // SAFETY: every operand holds its m × k, k × n, m × n values at these strides.
        unsafe {
            sgemm(Product {
                m,
                k,
                n,
                alpha,
                beta,
                a: Strided { ptr: a.as_ptr(), rs: rsa, cs: csa },
                b: Strided { ptr: b.as_ptr(), rs: rsb, cs: csb },
                c: Strided { ptr: ours.as_mut_ptr(), rs: rsc, cs: csc },
            });
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                theirs.as_mut_ptr(),
                rsc,
                csc,
            );
        }
        (ours, theirs)
    }

    #[test]
    fn the_same_bits_as_matrixmultiply_at_alpha_one_for_every_layout() {
        // Shapes with partial tiles of every height (m mod 6) and width, k over several KC
        // blocks, m over MC, n over NC.
        let shapes = [
            (1, 1, 1),
            (7, 3, 17),
            (9, 40, 20),
            (11, 9, 31),
            (32, 784, 512),
            (150, 300, 33),
            (13, 513, 4100),
            (784, 32, 512),
            (6, 256, 16),
        ];
        for &(m, k, n) in &shapes {
            for layout in 0..8u8 {
                let t = (layout & 1 != 0, layout & 2 != 0, layout & 4 != 0);
                for beta in [0.0, 1.0, 0.5] {
                    let c0 = values(m * n, 3);
                    let (ours, theirs) = both(m, k, n, t, 1.0, beta, &c0);
                    let same = ours.iter().zip(&theirs).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "m {m} k {k} n {n} layout {t:?} beta {beta}");
                }
            }
        }
    }

    #[test]
    fn other_alphas_agree_to_rounding_and_beta_zero_never_reads_c() {
        let (m, k, n) = (20, 70, 40);
        let (ours, theirs) = both(m, k, n, (false, true, false), -0.75, 0.0, &vec![f32::NAN; m * n]);
        assert!(ours.iter().all(|v| v.is_finite()));
        for (x, y) in ours.iter().zip(&theirs) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
        }
        // The naive sum, as a check on both.
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        for (i, j) in [(0, 0), (19, 39), (7, 16)] {
            let s: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[j * k + p] as f64).sum();
            assert!((ours[i * n + j] as f64 - (-0.75 * s)).abs() < 1e-4, "({i}, {j})");
        }
    }

    /// The address of this thread's kept `B` buffer and its capacity in lines, if it has one.
    fn kept_b() -> Option<(usize, usize)> {
        KEPT.with(|kept| {
            let bufs = kept.take();
            let seen = bufs.as_ref().map(|b| (b.b.as_ptr() as usize, b.b.capacity()));
            kept.set(bufs);
            seen
        })
    }

    #[test]
    fn a_thread_keeps_its_buffers_between_products() {
        if !has_avx2_fma() {
            return;
        }
        let (m, k, n) = (32, 784, 512);
        let _ = both(m, k, n, (false, false, false), 1.0, 0.0, &vec![0.0; m * n]);
        let first = kept_b().expect("the product left its buffers");
        assert_eq!(first.1, n * KC / 16, "one packed KC × n block of B");
        // A smaller product and the same one again: the same buffer, not a new one.
        let _ = both(7, 300, 40, (true, true, false), 1.0, 1.0, &vec![0.0; 7 * 40]);
        let _ = both(m, k, n, (false, false, false), 1.0, 1.0, &vec![0.0; m * n]);
        assert_eq!(kept_b(), Some(first));
    }
}
