//! The f32 and f64 product `C ← α·A·B + β·C` for AVX2 + FMA, with its packing buffers kept per
//! thread: after a thread's first product of a given size it allocates nothing.
//!
//! The blocking is the classic one (Goto's, as in BLIS): `n` in blocks of [`NC`] columns, `k` in
//! blocks of [`KC`], `m` in blocks of [`MC`] rows; each `KC × NC` block of `B` is packed into
//! panels of `NR` columns, each `MC × KC` block of `A` into panels of [`MR`] rows, and a
//! micro-kernel computes an `MR × NR` tile of `C` (`NR` = 16 f32 or 8 f64: two registers) in
//! twelve AVX registers over one `KC` block
//! (a last, shorter row panel with a kernel of its own height; the tile of `C` prefetched
//! first). Operands that must be transposed into the panels (`B` with contiguous columns,
//! row-major `A`) go through 8 × 8 register transposes in f32 (element by element in f64).
//!
//! Every output element is the sum over `k` in blocks of 256 taken in order, each block
//! accumulated from zero by fused multiply-adds in `k` order, then `c ← α·s + β'·c` with
//! `β' = β` for the first block and 1 after: the arithmetic of `matrixmultiply`'s AVX2 kernel,
//! so for `α = 1` the result is the same bits as `matrixmultiply::sgemm` / `dgemm` (tested).
//! Where the CPU has AVX-512 or lacks AVX2/FMA, or [`crate::gemm::set_kernel`] asks for it,
//! `matrixmultiply` runs instead (also on other architectures, where this module is not built).

use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Mul;

/// Rows of the micro-kernel's tile.
const MR: usize = 6;
/// The most columns a micro-kernel tile has (f32's two 8-lane registers).
const NR_MAX: usize = 16;
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

/// Grows `v` to at least `values` values of `T` (never shrinks, so a thread keeps its largest).
fn reserve<T>(v: &mut Vec<Line>, values: usize) -> *mut T {
    let lines = (values * std::mem::size_of::<T>()).div_ceil(std::mem::size_of::<Line>());
    if v.len() < lines {
        v.resize(lines, Line([0.0; 16]));
    }
    v.as_mut_ptr().cast()
}

/// `C ← α·A·B + β·C` for `A: m × k`, `B: k × n`, `C: m × n`, all through element strides;
/// `matrixmultiply::sgemm`'s / `dgemm`'s contract (with `β = 0`, `C` is never read).
///
/// # Safety
/// Every element addressed through the pointers and strides must be valid, and `C` must not
/// alias `A` or `B` nor itself.
pub(crate) unsafe fn gemm<T: Lane>(p: Product<T>) {
    if p.m > 0 && p.n > 0 && p.k > 0 && crate::gemm::kernel() == crate::gemm::Kernel::Auto && has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the caller vouches for the operands.
        unsafe { p.oriented().run() };
        return;
    }
    // SAFETY: the caller's contract is matrixmultiply's.
    unsafe { T::matrixmultiply(p) }
}

/// An element type of the kernel: its AVX register and the operations the kernel needs.
pub(crate) trait Lane: Copy + PartialEq + Mul<Output = Self> + 'static {
    /// One AVX register of these.
    type V: Copy;
    /// Values per register.
    const LANES: usize;
    /// Columns of a tile: two registers.
    const NR: usize = 2 * Self::LANES;
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// A register of zeros.
    unsafe fn zero() -> Self::V;
    /// Loads a register from a 32-byte aligned address.
    unsafe fn load(p: *const Self) -> Self::V;
    /// Loads a register from any address.
    unsafe fn loadu(p: *const Self) -> Self::V;
    /// Stores a register to any address.
    unsafe fn storeu(p: *mut Self, v: Self::V);
    /// A register of `x`.
    unsafe fn splat(x: Self) -> Self::V;
    /// A register of `*p`.
    unsafe fn broadcast(p: *const Self) -> Self::V;
    /// `a·b + c`, rounded once.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a·b`.
    unsafe fn mul_v(a: Self::V, b: Self::V) -> Self::V;
    /// `self·a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The product through `matrixmultiply`.
    unsafe fn matrixmultiply(p: Product<Self>);
    /// Packs the first rows of a full panel of `B` whose columns are contiguous (`csb` apart)
    /// by register transposes, returning how many rows it packed (the rest go element by
    /// element).
    unsafe fn pack_b_columns(_b: *const Self, _csb: isize, _kc: usize, _panel: *mut Self) -> usize {
        0
    }
    /// Packs the first columns of a full panel of `A` whose rows are contiguous (`rsa` apart)
    /// by register transposes, returning how many columns it packed; may write `2` values past
    /// the panel.
    unsafe fn pack_a_rows(_a: *const Self, _rsa: isize, _kc: usize, _panel: *mut Self) -> usize {
        0
    }
}

/// Whether this kernel runs: AVX2 and FMA. Also on AVX-512 CPUs: on a 2-core AMD EPYC (Zen 4,
/// AVX-512) it ran at 0.95–1.3× `matrixmultiply`'s 16-lane kernel across the training and
/// linear-CE shapes (`examples/gemm_rates`), and it allocates nothing per product where
/// `matrixmultiply` allocates its packing buffers every call.
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
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
pub(crate) struct Product<T> {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// The product's factor.
    pub alpha: T,
    /// `C`'s factor (0: `C` is not read).
    pub beta: T,
    /// The left operand.
    pub a: Strided<*const T>,
    /// The right operand.
    pub b: Strided<*const T>,
    /// The output.
    pub c: Strided<*mut T>,
}

impl<T: Lane> Product<T> {
    /// The same product with contiguous output rows where possible: a column-major `C` is
    /// computed as `Cᵀ = Bᵀ·Aᵀ` (each element is the same sum, so the same bits).
    fn oriented(self) -> Product<T> {
        if self.c.cs == 1 || self.c.rs != 1 {
            return self;
        }
        Product { m: self.n, n: self.m, a: self.b.t(), b: self.a.t(), c: self.c.t(), ..self }
    }

    /// Runs the blocked loops with this thread's kept buffers.
    ///
    /// # Safety
    /// AVX2 and FMA are available; the operands satisfy [`gemm`]'s contract.
    unsafe fn run(self) {
        let mut bufs = KEPT.with(Cell::take).unwrap_or_default();
        let kc_max = self.k.min(KC);
        // Two values of slack past the last panel: `pack_a` stores columns of 6 as 8 values.
        let ap = reserve::<T>(&mut bufs.a, self.m.min(MC).next_multiple_of(MR) * kc_max + 2);
        let bp = reserve::<T>(&mut bufs.b, self.n.min(NC).next_multiple_of(T::NR) * kc_max);
        // SAFETY: the buffers hold a packed block of each operand; AVX2/FMA as the caller says.
        unsafe { self.blocks(ap, bp) };
        KEPT.with(|kept| kept.set(Some(bufs)));
    }

    /// The three outer loops: `NC` columns, `KC` depth, `MC` rows.
    ///
    /// # Safety
    /// As [`Product::run`], with `ap`/`bp` large enough for one packed block each.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocks(self, ap: *mut T, bp: *mut T) {
        for jc in (0..self.n).step_by(NC) {
            let nc = NC.min(self.n - jc);
            for pc in (0..self.k).step_by(KC) {
                let kc = KC.min(self.k - pc);
                // SAFETY: rows pc..pc+kc, columns jc..jc+nc lie inside B.
                unsafe { pack_b(Strided { ptr: self.b.ptr.offset(self.b.offset(pc, jc)), ..self.b }, kc, nc, bp) };
                let beta = if pc == 0 { self.beta } else { T::ONE };
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
        ap: *const T,
        bp: *const T,
        kc: usize,
        (ic, mc): (usize, usize),
        (jc, nc): (usize, usize),
        beta: T,
    ) {
        for jr in (0..nc).step_by(T::NR) {
            let cols = T::NR.min(nc - jr);
            for ir in (0..mc).step_by(MR) {
                let rows = MR.min(mc - ir);
                let tile =
                    Tile { c: Strided { ptr: self.c.ptr.offset(self.c.offset(ic + ir, jc + jr)), ..self.c }, cols };
                // SAFETY: panel `ir / MR` of `ap` and `jr / NR` of `bp` hold `kc` steps each;
                // the tile lies inside C.
                unsafe {
                    let (a, b) = (ap.add(ir * kc), bp.add(jr * kc));
                    match rows {
                        6 => kernel::<T, 6>(kc, a, b, self.alpha, beta, tile),
                        5 => kernel::<T, 5>(kc, a, b, self.alpha, beta, tile),
                        4 => kernel::<T, 4>(kc, a, b, self.alpha, beta, tile),
                        3 => kernel::<T, 3>(kc, a, b, self.alpha, beta, tile),
                        2 => kernel::<T, 2>(kc, a, b, self.alpha, beta, tile),
                        _ => kernel::<T, 1>(kc, a, b, self.alpha, beta, tile),
                    }
                }
            }
        }
    }
}

/// Packs `kc × nc` values of `B` into panels of `T::NR` columns, each `kc` rows of `T::NR`
/// contiguous values; a last, narrower panel is padded with zeros.
///
/// # Safety
/// Every addressed element of `B` is valid; `out` holds `kc · nc.next_multiple_of(T::NR)`
/// values.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b<T: Lane>(b: Strided<*const T>, kc: usize, nc: usize, out: *mut T) {
    let Strided { ptr: b, rs: rsb, cs: csb } = b;
    let nr = T::NR;
    for jr in (0..nc).step_by(nr) {
        let cols = nr.min(nc - jr);
        // SAFETY: panel `jr / NR` starts `jr · kc` values in and holds `kc · NR`; columns
        // jr..jr + cols and rows 0..kc of B are valid.
        unsafe {
            let panel = out.add(jr * kc);
            let done =
                if rsb == 1 && cols == nr { T::pack_b_columns(b.offset(jr as isize * csb), csb, kc, panel) } else { 0 };
            for p in done..kc {
                let src = b.offset(p as isize * rsb + jr as isize * csb);
                let dst = panel.add(p * nr);
                if csb == 1 && cols == nr {
                    T::storeu(dst, T::loadu(src));
                    T::storeu(dst.add(T::LANES), T::loadu(src.add(T::LANES)));
                } else {
                    for j in 0..nr {
                        *dst.add(j) = if j < cols { *src.offset(j as isize * csb) } else { T::ZERO };
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
unsafe fn pack_a<T: Lane>(a: Strided<*const T>, mc: usize, kc: usize, out: *mut T) {
    let Strided { ptr: a, rs: rsa, cs: csa } = a;
    for ir in (0..mc).step_by(MR) {
        let rows = MR.min(mc - ir);
        // SAFETY: panel `ir / MR` starts `ir · kc` values in and holds `kc · MR` (+ 2 of slack
        // after the last); rows ir..ir + rows, columns 0..kc of A are valid.
        unsafe {
            let panel = out.add(ir * kc);
            let src = a.offset(ir as isize * rsa);
            let done = if rows == MR && csa == 1 { T::pack_a_rows(src, rsa, kc, panel) } else { 0 };
            for p in done..kc {
                let col = src.offset(p as isize * csa);
                for i in 0..MR {
                    *panel.add(p * MR + i) = if i < rows { *col.offset(i as isize * rsa) } else { T::ZERO };
                }
            }
        }
    }
}

/// Where one micro-kernel tile goes: `C` from the tile's first element, and how many of the
/// tile's `NR` columns lie inside it (its rows are the kernel's `R`).
#[derive(Clone, Copy)]
struct Tile<T> {
    c: Strided<*mut T>,
    cols: usize,
}

/// One tile of `R` rows (a last, shorter row panel computes only its own rows):
/// `s = Σ_p a_p ⊗ b_p` over `kc` packed steps by fused multiply-adds from zero, then
/// `c ← α·s + β·c` (`c ← α·s` without reading `c` when `β = 0`).
///
/// # Safety
/// `a` holds `kc · MR` and `b` `kc · T::NR` packed values (`b` 32-byte aligned); the tile's
/// `R × cols` elements of `C` are valid.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<T: Lane, const R: usize>(kc: usize, a: *const T, b: *const T, alpha: T, beta: T, t: Tile<T>) {
    let nr = T::NR;
    if beta != T::ZERO {
        for i in 0..R {
            // SAFETY: a prefetch of a valid element's line has no effect on memory.
            unsafe {
                let c = t.c.ptr.offset(t.c.offset(i, 0));
                _mm_prefetch::<_MM_HINT_T0>(c.cast());
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_offset(t.c.offset(0, nr - 1)).cast());
            }
        }
    }
    // SAFETY: AVX is available (the caller's contract).
    let mut acc = [[unsafe { T::zero() }; 2]; R];
    for p in 0..kc {
        // SAFETY: step p of the panels is inside them (the caller's contract).
        unsafe {
            let b0 = T::load(b.add(p * nr));
            let b1 = T::load(b.add(p * nr + T::LANES));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = T::broadcast(ap.add(i));
                row[0] = T::fmadd(ai, b0, row[0]);
                row[1] = T::fmadd(ai, b1, row[1]);
            }
        }
    }
    if t.cols == nr && t.c.cs == 1 {
        // SAFETY: the tile's R full rows are inside C, each contiguous.
        unsafe { store_rows(&acc, alpha, beta, t) };
        return;
    }
    let mut s = [[T::ZERO; NR_MAX]; R];
    for (row, out) in acc.iter().zip(s.iter_mut()) {
        // SAFETY: each row of `s` holds NR_MAX ≥ NR values.
        unsafe {
            T::storeu(out.as_mut_ptr(), row[0]);
            T::storeu(out.as_mut_ptr().add(T::LANES), row[1]);
        }
    }
    for (i, row) in s.iter().enumerate() {
        for (j, &v) in row.iter().enumerate().take(t.cols) {
            // SAFETY: (i, j) is inside the tile's valid part.
            unsafe {
                let c = t.c.ptr.offset(t.c.offset(i, j));
                *c = if beta == T::ZERO { alpha * v } else { alpha.mul_add(v, *c * beta) };
            }
        }
    }
}

/// Stores `R` full rows of a tile, each contiguous: `c ← α·s + β·c` as one fused multiply-add
/// per value (`c ← α·s` when `β = 0`).
///
/// # Safety
/// All `R × T::NR` elements of the tile are valid and each row's values contiguous.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_rows<T: Lane, const R: usize>(acc: &[[T::V; 2]; R], alpha: T, beta: T, t: Tile<T>) {
    // SAFETY: AVX is available (the caller's contract); row i of the tile holds NR contiguous
    // valid values.
    unsafe {
        let (av, bv) = (T::splat(alpha), T::splat(beta));
        for (i, row) in acc.iter().enumerate() {
            let c = t.c.ptr.offset(t.c.offset(i, 0));
            let c1 = c.add(T::LANES);
            if beta == T::ZERO {
                T::storeu(c, T::mul_v(av, row[0]));
                T::storeu(c1, T::mul_v(av, row[1]));
            } else {
                let (b0, b1) = (T::mul_v(T::loadu(c), bv), T::mul_v(T::loadu(c1), bv));
                T::storeu(c, T::fmadd(av, row[0], b0));
                T::storeu(c1, T::fmadd(av, row[1], b1));
            }
        }
    }
}

/// Each method is the one AVX2 instruction its name says, inlined into the kernel's
/// `avx2,fma` functions.
impl Lane for f32 {
    type V = __m256;
    const LANES: usize = 8;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_load_ps(p) }
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> __m256 {
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul_v(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32) -> f32 {
        f32::mul_add(self, a, b)
    }
    unsafe fn matrixmultiply(p: Product<f32>) {
        let Product { m, k, n, alpha, beta, a, b, c } = p;
        // SAFETY: the caller's contract is matrixmultiply's.
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_b_columns(b: *const f32, csb: isize, kc: usize, panel: *mut f32) -> usize {
        let done = kc - kc % 8;
        for p in (0..done).step_by(8) {
            for half in 0..2 {
                // SAFETY: columns 8·half.. + 8 and rows p..p + 8 of the panel's B are valid;
                // the panel holds rows p..p + 8.
                unsafe {
                    transpose_8x8(
                        b.offset(p as isize + (8 * half) as isize * csb),
                        csb,
                        panel.add(p * 16 + 8 * half),
                        16,
                    )
                };
            }
        }
        done
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_a_rows(a: *const f32, rsa: isize, kc: usize, panel: *mut f32) -> usize {
        // Blocks of 8 columns transposed in registers (two zero rows make the block 8 × 8);
        // each column of 6 is stored as 8 values, the last 2 overwritten by the next column
        // (the buffer has room past its end).
        let done = kc - kc % 8;
        for p in (0..done).step_by(8) {
            // SAFETY: rows 0..6, columns p..p + 8 of the panel's A are valid; the panel (and
            // its slack) holds columns p..p + 8 stored as 8 values each.
            unsafe {
                let r = std::array::from_fn(|i| {
                    if i < MR {
                        _mm256_loadu_ps(a.offset(i as isize * rsa + p as isize))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for (q, col) in transpose(r).into_iter().enumerate() {
                    _mm256_storeu_ps(panel.add((p + q) * MR), col);
                }
            }
        }
        done
    }
}

/// As for f32, with 4-lane registers; packing goes element by element.
impl Lane for f64 {
    type V = __m256d;
    const LANES: usize = 4;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    #[inline(always)]
    unsafe fn zero() -> __m256d {
        unsafe { _mm256_setzero_pd() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> __m256d {
        unsafe { _mm256_load_pd(p) }
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f64) -> __m256d {
        unsafe { _mm256_loadu_pd(p) }
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f64, v: __m256d) {
        unsafe { _mm256_storeu_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> __m256d {
        unsafe { _mm256_set1_pd(x) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f64) -> __m256d {
        unsafe { _mm256_broadcast_sd(&*p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        unsafe { _mm256_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul_v(a: __m256d, b: __m256d) -> __m256d {
        unsafe { _mm256_mul_pd(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: f64, b: f64) -> f64 {
        f64::mul_add(self, a, b)
    }
    unsafe fn matrixmultiply(p: Product<f64>) {
        let Product { m, k, n, alpha, beta, a, b, c } = p;
        // SAFETY: the caller's contract is matrixmultiply's.
        unsafe { matrixmultiply::dgemm(m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix of `len` values in [-1, 1), as `T`.
    fn values<T: Lane + From<f32>>(len: usize, seed: u32) -> Vec<T> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                T::from((s >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
            })
            .collect()
    }

    /// Runs both kernels on the same operands: `A` (`m × k`) and `B` (`k × n`) stored
    /// transposed when asked, `C` row- or column-major, starting from `c0`.
    fn both<T: Lane + From<f32>>(
        (m, k, n): (usize, usize, usize),
        (ta, tb, tc): (bool, bool, bool),
        alpha: T,
        beta: T,
        c0: &[T],
    ) -> (Vec<T>, Vec<T>) {
        let (a, b) = (values::<T>(m * k, 1), values::<T>(k * n, 2));
        let a = Strided { ptr: a.as_ptr(), rs: if ta { 1 } else { k as isize }, cs: if ta { m as isize } else { 1 } };
        let b = Strided { ptr: b.as_ptr(), rs: if tb { 1 } else { n as isize }, cs: if tb { k as isize } else { 1 } };
        let (rs, cs) = if tc { (1, m as isize) } else { (n as isize, 1) };
        let (mut ours, mut theirs) = (c0.to_vec(), c0.to_vec());
        let product =
            |c: &mut Vec<T>| Product { m, k, n, alpha, beta, a, b, c: Strided { ptr: c.as_mut_ptr(), rs, cs } };
        // SAFETY: every operand holds its m × k, k × n, m × n values at these strides.
        unsafe {
            gemm(product(&mut ours));
            T::matrixmultiply(product(&mut theirs));
        }
        (ours, theirs)
    }

    /// Asserts the same bits as matrixmultiply for `T` on every layout, at shapes with partial
    /// tiles of every height (m mod 6) and width, k over several KC blocks, m over MC, n over NC.
    fn same_bits_for<T: Lane + From<f32> + std::fmt::Debug>() {
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
        for &shape in &shapes {
            for layout in 0..8u8 {
                let t = (layout & 1 != 0, layout & 2 != 0, layout & 4 != 0);
                for beta in [0.0, 1.0, 0.5] {
                    let c0 = values::<T>(shape.0 * shape.2, 3);
                    let (ours, theirs) = both(shape, t, T::ONE, T::from(beta), &c0);
                    assert!(ours == theirs, "{shape:?} layout {t:?} beta {beta}");
                }
            }
        }
    }

    #[test]
    fn the_same_bits_as_matrixmultiply_at_alpha_one_for_every_layout() {
        same_bits_for::<f32>();
        same_bits_for::<f64>();
    }

    #[test]
    fn other_alphas_agree_to_rounding_and_beta_zero_never_reads_c() {
        let (m, k, n) = (20, 70, 40);
        let (ours, theirs) = both((m, k, n), (false, true, false), -0.75f32, 0.0, &vec![f32::NAN; m * n]);
        assert!(ours.iter().all(|v| v.is_finite()));
        for (x, y) in ours.iter().zip(&theirs) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
        }
        // The naive sum, as a check on both.
        let (a, b) = (values::<f32>(m * k, 1), values::<f32>(k * n, 2));
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
        let _ = both((m, k, n), (false, false, false), 1.0f32, 0.0, &vec![0.0; m * n]);
        let first = kept_b().expect("the product left its buffers");
        assert_eq!(first.1, n * KC / 16, "one packed KC × n block of B");
        // A smaller f64 product and the same one again: the same buffer, not a new one.
        let _ = both((7, 300, 40), (true, true, false), 1.0f64, 1.0, &vec![0.0; 7 * 40]);
        let _ = both((m, k, n), (false, false, false), 1.0f32, 1.0, &vec![0.0; m * n]);
        assert_eq!(kept_b(), Some(first));
    }
}
