//! The f32 and f64 product `C ← α·A·B + β·C` for x86-64 CPUs with AVX2 + FMA, in AVX-512
//! registers where the CPU has AVX-512F, with its packing buffers kept per thread: after a
//! thread's first product of a given size it allocates nothing.
//!
//! The blocking is the classic one (Goto's, as in BLIS): `n` in blocks of [`NC`] columns, `k` in
//! blocks of [`KC`], `m` in blocks of [`MC`] rows; each `KC × NC` block of `B` is packed into
//! panels of `NR` columns, each `MC × KC` block of `A` into panels of [`MR`] rows, and a
//! micro-kernel computes an `MR × NR` tile of `C` in twelve registers over one `KC` block
//! (`NR` is two registers: 32 f32 or 16 f64 in AVX-512 registers, 16 or 8 in AVX2 ones; a last,
//! shorter row panel has a kernel of its own height; the tile of `C` is prefetched first).
//! Operands that must be transposed into the panels (`B` with contiguous columns, row-major
//! `A`) go through 8 × 8 register transposes in f32 (element by element in f64).
//! The loops are written once, generic over the register ([`Reg`]), and compiled into one
//! entry point per instruction set (`Product::blocks_avx2`, `Product::blocks_avx512`).
//!
//! Every output element is the sum over `k` in blocks of 256 taken in order, each block
//! accumulated from zero by fused multiply-adds in `k` order, then `c ← α·s + β'·c` with
//! `β' = β` for the first block and 1 after: the arithmetic of `matrixmultiply`'s AVX2 and
//! AVX-512 kernels, so for `α = 1` the result is the same bits as `matrixmultiply::sgemm` /
//! `dgemm` (tested), whichever register width runs. Where the CPU lacks AVX2/FMA, or
//! [`crate::gemm::set_kernel`] asks for it, `matrixmultiply` runs instead (also on other
//! architectures, where this module is not built).

use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Mul;

/// Rows of the micro-kernel's tile.
const MR: usize = 6;
/// The most columns a micro-kernel tile has (f32's two 16-lane AVX-512 registers).
const NR_MAX: usize = 32;
/// The `k` block: one packed panel of `B` (`KC × NR`: 16 KiB in AVX2 tiles, 32 KiB in
/// AVX-512 ones) stays in L1 while a panel of `A` streams past it. Also the summation blocks of `matrixmultiply`, whose bits this keeps.
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
    if p.m > 0 && p.n > 0 && p.k > 0 && crate::gemm::kernel() != crate::gemm::Kernel::Matrixmultiply && has_avx2_fma() {
        let p = p.oriented();
        // At most 16 columns fit one AVX2 tile: AVX-512 tiles would compute twice the columns.
        let wide = p.n > 16 && has_avx512();
        // SAFETY: the CPU has AVX2 and FMA (checked), AVX-512F where `has_avx512` says so; the
        // caller vouches for the operands.
        unsafe { p.run(wide) };
        return;
    }
    // SAFETY: the caller's contract is matrixmultiply's.
    unsafe { T::matrixmultiply(p) }
}

/// An element type of the kernel: its registers on each instruction set and the scalar
/// operations the kernel needs.
pub(crate) trait Lane: Copy + PartialEq + Mul<Output = Self> + 'static {
    /// One AVX register of these.
    type Avx2: Reg<Self>;
    /// One AVX-512 register of these.
    type Avx512: Reg<Self>;
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// `self·a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The product through `matrixmultiply`.
    unsafe fn matrixmultiply(p: Product<Self>);
    /// Packs the first rows of a full panel of `nr` columns of `B` whose columns are contiguous
    /// (`csb` apart) by register transposes, returning how many rows it packed (the rest go
    /// element by element).
    unsafe fn pack_b_columns(_b: *const Self, _csb: isize, _kc: usize, _nr: usize, _panel: *mut Self) -> usize {
        0
    }
    /// Packs the first columns of a full panel of `A` whose rows are contiguous (`rsa` apart)
    /// by register transposes, returning how many columns it packed; may write `2` values past
    /// the panel.
    unsafe fn pack_a_rows(_a: *const Self, _rsa: isize, _kc: usize, _panel: *mut Self) -> usize {
        0
    }
}

/// One vector register of `T` and the instructions the micro-kernel needs. Every method is
/// `#[inline(always)]`, so it compiles into the caller's instruction set (the `avx2,fma` or
/// `avx512f` entry point of [`Product::blocks`]).
pub(crate) trait Reg<T>: Copy {
    /// Values per register.
    const LANES: usize;
    /// Columns of a micro-kernel tile: two registers.
    const NR: usize = 2 * Self::LANES;
    /// A register of zeros.
    unsafe fn zero() -> Self;
    /// Loads a register from an address aligned to the register's size.
    unsafe fn load(p: *const T) -> Self;
    /// Loads a register from any address.
    unsafe fn loadu(p: *const T) -> Self;
    /// Stores a register to any address.
    unsafe fn storeu(self, p: *mut T);
    /// A register of `x`.
    unsafe fn splat(x: T) -> Self;
    /// `self·b + c`, rounded once.
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    /// `self·b`.
    unsafe fn mul(self, b: Self) -> Self;
}

/// Whether this kernel runs: AVX2 and FMA (AVX-512 CPUs included). It allocates nothing per
/// product where `matrixmultiply` allocates its packing buffers every call; its rates against
/// `matrixmultiply` are in bench/README.md (`examples/gemm_rates`).
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Whether the kernel's tiles are AVX-512 registers wide (6 × 32 f32, 6 × 16 f64): where the
/// CPU has AVX-512F, unless [`crate::gemm::set_kernel`] asks for the AVX2 tiles (products of
/// at most 16 columns, such as a 10-class output layer's, run in AVX2 tiles anyway). On a 2-core
/// Intel Xeon (Emerald Rapids) they ran 1.3–1.9× the AVX2 tiles and 0.9–1.3× `matrixmultiply`'s
/// 16 × 16 AVX-512 kernel across the training and linear-CE shapes.
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    // The wide tiles' entry point also uses the AVX2/FMA paths (short panels, transposes).
    crate::gemm::kernel() != crate::gemm::Kernel::Avx2
        && *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && has_avx2_fma())
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

    /// Runs the blocked loops with this thread's kept buffers, in AVX-512 registers when
    /// `wide`, AVX2 registers otherwise.
    ///
    /// # Safety
    /// AVX2 and FMA are available, and AVX-512F when `wide`; the operands satisfy [`gemm`]'s
    /// contract.
    unsafe fn run(self, wide: bool) {
        let mut bufs = KEPT.with(Cell::take).unwrap_or_default();
        let nr = if wide { T::Avx512::NR } else { T::Avx2::NR };
        let kc_max = self.k.min(KC);
        // Two values of slack past the last panel: `pack_a` stores columns of 6 as 8 values.
        let ap = reserve::<T>(&mut bufs.a, self.m.min(MC).next_multiple_of(MR) * kc_max + 2);
        let bp = reserve::<T>(&mut bufs.b, self.n.min(NC).next_multiple_of(nr) * kc_max);
        // SAFETY: the buffers hold a packed block of each operand; AVX2/FMA as the caller
        // says, AVX-512 where checked.
        unsafe {
            if wide {
                self.blocks_avx512(ap, bp)
            } else {
                self.blocks_avx2(ap, bp)
            }
        };
        KEPT.with(|kept| kept.set(Some(bufs)));
    }

    /// [`Product::blocks`] in AVX2 registers.
    ///
    /// # Safety
    /// As [`Product::blocks`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocks_avx2(self, ap: *mut T, bp: *mut T) {
        // SAFETY: the caller's contract.
        unsafe { self.blocks::<T::Avx2>(ap, bp) }
    }

    /// [`Product::blocks`] in AVX-512 registers.
    ///
    /// # Safety
    /// As [`Product::blocks`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn blocks_avx512(self, ap: *mut T, bp: *mut T) {
        // SAFETY: the caller's contract.
        unsafe { self.blocks::<T::Avx512>(ap, bp) }
    }

    /// The three outer loops: `NC` columns, `KC` depth, `MC` rows, with tiles `V::NR` wide.
    /// Inlined into its callers, whose instruction set it then uses.
    ///
    /// # Safety
    /// As [`Product::run`], with `ap`/`bp` large enough for one packed block each and the
    /// instruction set of `V` enabled in the caller.
    #[inline(always)]
    unsafe fn blocks<V: Reg<T>>(self, ap: *mut T, bp: *mut T) {
        for jc in (0..self.n).step_by(NC) {
            let nc = NC.min(self.n - jc);
            for pc in (0..self.k).step_by(KC) {
                let kc = KC.min(self.k - pc);
                // SAFETY: rows pc..pc+kc, columns jc..jc+nc lie inside B.
                unsafe {
                    pack_b::<T, V>(Strided { ptr: self.b.ptr.offset(self.b.offset(pc, jc)), ..self.b }, kc, nc, bp)
                };
                let beta = if pc == 0 { self.beta } else { T::ONE };
                for ic in (0..self.m).step_by(MC) {
                    let mc = MC.min(self.m - ic);
                    // SAFETY: rows ic..ic+mc, columns pc..pc+kc lie inside A.
                    unsafe { pack_a(Strided { ptr: self.a.ptr.offset(self.a.offset(ic, pc)), ..self.a }, mc, kc, ap) };
                    // SAFETY: the tile loop stays inside rows ic..ic+mc, columns jc..jc+nc of C.
                    unsafe { self.tiles::<V>(ap, bp, kc, (ic, mc), (jc, nc), beta) };
                }
            }
        }
    }

    /// The micro-kernel over every `MR × V::NR` tile of one packed block pair (column panels
    /// outside, row panels inside, so a `B` panel stays in L1).
    ///
    /// # Safety
    /// As [`Product::blocks`]; `ap`/`bp` hold the packed blocks of rows `ic..ic+mc` and
    /// columns `jc..jc+nc`.
    #[inline(always)]
    unsafe fn tiles<V: Reg<T>>(
        self,
        ap: *const T,
        bp: *const T,
        kc: usize,
        (ic, mc): (usize, usize),
        (jc, nc): (usize, usize),
        beta: T,
    ) {
        for jr in (0..nc).step_by(V::NR) {
            let cols = V::NR.min(nc - jr);
            for ir in (0..mc).step_by(MR) {
                let rows = MR.min(mc - ir);
                // SAFETY: rows `ic + ir` and columns `jc + jr` lie inside C (the caller's blocks).
                let at = unsafe { self.c.ptr.offset(self.c.offset(ic + ir, jc + jr)) };
                let tile = Tile { c: Strided { ptr: at, ..self.c }, cols };
                // SAFETY: panel `ir / MR` of `ap` and `jr / NR` of `bp` hold `kc` steps each;
                // the tile lies inside C.
                unsafe {
                    let (a, b) = (ap.add(ir * kc), bp.add(jr * kc));
                    match rows {
                        6 => kernel::<T, V, 6>(kc, a, b, self.alpha, beta, tile),
                        5 => kernel::<T, V, 5>(kc, a, b, self.alpha, beta, tile),
                        4 => kernel::<T, V, 4>(kc, a, b, self.alpha, beta, tile),
                        3 => kernel::<T, V, 3>(kc, a, b, self.alpha, beta, tile),
                        2 => kernel::<T, V, 2>(kc, a, b, self.alpha, beta, tile),
                        _ => kernel::<T, V, 1>(kc, a, b, self.alpha, beta, tile),
                    }
                }
            }
        }
    }
}

/// Packs `kc × nc` values of `B` into panels of `V::NR` columns, each `kc` rows of `V::NR`
/// contiguous values; a last, narrower panel is padded with zeros.
///
/// # Safety
/// Every addressed element of `B` is valid; `out` holds `kc · nc.next_multiple_of(V::NR)`
/// values; the instruction set of `V` is enabled in the caller.
#[inline(always)]
unsafe fn pack_b<T: Lane, V: Reg<T>>(b: Strided<*const T>, kc: usize, nc: usize, out: *mut T) {
    let Strided { ptr: b, rs: rsb, cs: csb } = b;
    let nr = V::NR;
    for jr in (0..nc).step_by(nr) {
        let cols = nr.min(nc - jr);
        // SAFETY: panel `jr / NR` starts `jr · kc` values in and holds `kc · NR`; columns
        // jr..jr + cols and rows 0..kc of B are valid.
        unsafe {
            let panel = out.add(jr * kc);
            let done = if rsb == 1 && cols == nr {
                T::pack_b_columns(b.offset(jr as isize * csb), csb, kc, nr, panel)
            } else {
                0
            };
            for p in done..kc {
                let src = b.offset(p as isize * rsb + jr as isize * csb);
                let dst = panel.add(p * nr);
                if csb == 1 && cols == nr {
                    V::loadu(src).storeu(dst);
                    V::loadu(src.add(V::LANES)).storeu(dst.add(V::LANES));
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
            if rows == MR && rsa == 1 {
                // Each column's MR values are contiguous (a transposed operand, as xᵀ in ∂W = xᵀ·g).
                for p in done..kc {
                    std::ptr::copy_nonoverlapping(src.offset(p as isize * csa), panel.add(p * MR), MR);
                }
                continue;
            }
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
/// `a` holds `kc · MR` and `b` `kc · V::NR` packed values (`b` aligned to `V`'s size); the
/// tile's `R × cols` elements of `C` are valid; the instruction set of `V` is enabled in the
/// caller.
#[inline(always)]
unsafe fn kernel<T: Lane, V: Reg<T>, const R: usize>(
    kc: usize,
    a: *const T,
    b: *const T,
    alpha: T,
    beta: T,
    t: Tile<T>,
) {
    let nr = V::NR;
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
    // SAFETY: the registers' instruction set is available (the caller's contract).
    let mut acc = [[unsafe { V::zero() }; 2]; R];
    for p in 0..kc {
        // SAFETY: step p of the panels is inside them (the caller's contract).
        unsafe {
            let b0 = V::load(b.add(p * nr));
            let b1 = V::load(b.add(p * nr + V::LANES));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = V::splat(*ap.add(i));
                row[0] = ai.fmadd(b0, row[0]);
                row[1] = ai.fmadd(b1, row[1]);
            }
        }
    }
    if t.cols == nr && t.c.cs == 1 {
        // SAFETY: the tile's R full rows are inside C, each contiguous.
        unsafe { store_rows::<T, V, R>(&acc, alpha, beta, t) };
        return;
    }
    let mut s = [[T::ZERO; NR_MAX]; R];
    for (row, out) in acc.iter().zip(s.iter_mut()) {
        // SAFETY: each row of `s` holds NR_MAX ≥ NR values.
        unsafe {
            row[0].storeu(out.as_mut_ptr());
            row[1].storeu(out.as_mut_ptr().add(V::LANES));
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
/// All `R × V::NR` elements of the tile are valid and each row's values contiguous; the
/// instruction set of `V` is enabled in the caller.
#[inline(always)]
unsafe fn store_rows<T: Lane, V: Reg<T>, const R: usize>(acc: &[[V; 2]; R], alpha: T, beta: T, t: Tile<T>) {
    // SAFETY: the caller's contract; row i of the tile holds NR contiguous valid values.
    unsafe {
        let (av, bv) = (V::splat(alpha), V::splat(beta));
        for (i, row) in acc.iter().enumerate() {
            let c = t.c.ptr.offset(t.c.offset(i, 0));
            let c1 = c.add(V::LANES);
            if beta == T::ZERO {
                av.mul(row[0]).storeu(c);
                av.mul(row[1]).storeu(c1);
            } else {
                let (b0, b1) = (V::loadu(c).mul(bv), V::loadu(c1).mul(bv));
                av.fmadd(row[0], b0).storeu(c);
                av.fmadd(row[1], b1).storeu(c1);
            }
        }
    }
}

/// Implements [`Reg`] for one register type: each method is the one instruction its
/// intrinsic names, inlined into the kernel's entry point of that instruction set.
macro_rules! reg {
    ($v:ty, $t:ty, $lanes:expr, $zero:ident, $load:ident, $loadu:ident, $storeu:ident, $set1:ident, $fmadd:ident, $mul:ident) => {
        impl Reg<$t> for $v {
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: no memory access; the CPU has the instruction set (this impl is only reached from its `#[target_feature]` entry point).
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn load(p: *const $t) -> Self {
                // SAFETY: the caller gives an address of `LANES` readable values aligned to the register (see `Reg::load`).
                unsafe { $load(p) }
            }
            #[inline(always)]
            unsafe fn loadu(p: *const $t) -> Self {
                // SAFETY: the caller gives an address of `LANES` readable values (see `Reg::loadu`).
                unsafe { $loadu(p) }
            }
            #[inline(always)]
            unsafe fn storeu(self, p: *mut $t) {
                // SAFETY: the caller gives an address of `LANES` writable values (see `Reg::storeu`).
                unsafe { $storeu(p, self) }
            }
            #[inline(always)]
            unsafe fn splat(x: $t) -> Self {
                // SAFETY: no memory access; the CPU has the instruction set (see `zero`).
                unsafe { $set1(x) }
            }
            #[inline(always)]
            unsafe fn fmadd(self, b: Self, c: Self) -> Self {
                // SAFETY: no memory access; the CPU has FMA and the instruction set (see `zero`).
                unsafe { $fmadd(self, b, c) }
            }
            #[inline(always)]
            unsafe fn mul(self, b: Self) -> Self {
                // SAFETY: no memory access; the CPU has the instruction set (see `zero`).
                unsafe { $mul(self, b) }
            }
        }
    };
}

reg!(
    __m256,
    f32,
    8,
    _mm256_setzero_ps,
    _mm256_load_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_mul_ps
);
reg!(
    __m256d,
    f64,
    4,
    _mm256_setzero_pd,
    _mm256_load_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_mul_pd
);
reg!(
    __m512,
    f32,
    16,
    _mm512_setzero_ps,
    _mm512_load_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_mul_ps
);
reg!(
    __m512d,
    f64,
    8,
    _mm512_setzero_pd,
    _mm512_load_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd,
    _mm512_set1_pd,
    _mm512_fmadd_pd,
    _mm512_mul_pd
);

/// The items of [`Lane`] both types define alike: their registers, constants, fused
/// multiply-add and `matrixmultiply`'s product (`$gemm`).
macro_rules! lane_common {
    ($t:ty, $avx2:ty, $avx512:ty, $gemm:ident) => {
        type Avx2 = $avx2;
        type Avx512 = $avx512;
        const ZERO: $t = 0.0;
        const ONE: $t = 1.0;
        #[inline(always)]
        fn mul_add(self, a: $t, b: $t) -> $t {
            <$t>::mul_add(self, a, b)
        }
        unsafe fn matrixmultiply(p: Product<$t>) {
            let Product { m, k, n, alpha, beta, a, b, c } = p;
            // SAFETY: the caller's contract is matrixmultiply's.
            unsafe {
                matrixmultiply::$gemm(m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs)
            }
        }
    };
}

impl Lane for f32 {
    lane_common!(f32, __m256, __m512, sgemm);
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_b_columns(b: *const f32, csb: isize, kc: usize, nr: usize, panel: *mut f32) -> usize {
        let done = kc - kc % 8;
        for p in (0..done).step_by(8) {
            for block in 0..nr / 8 {
                // SAFETY: columns 8·block.. + 8 and rows p..p + 8 of the panel's B are valid;
                // the panel holds rows p..p + 8.
                unsafe {
                    transpose_8x8(
                        b.offset(p as isize + (8 * block) as isize * csb),
                        csb,
                        panel.add(p * nr + 8 * block),
                        nr,
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

/// As for f32; packing goes element by element.
impl Lane for f64 {
    lane_common!(f64, __m256d, __m512d, dgemm);
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
        // Where the kernel runs, each register width on its own (AVX-512 where the CPU has it).
        for wide in [false, true] {
            if has_avx2_fma() && (!wide || is_x86_feature_detected!("avx512f")) {
                let mut this = c0.to_vec();
                // SAFETY: as above; AVX2 and FMA checked, AVX-512F for the wide tiles.
                unsafe { product(&mut this).oriented().run(wide) };
                assert!(this == ours, "{:?} wide {wide}: the register widths disagree", (m, k, n));
            }
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
            (5, 70, 48),
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
