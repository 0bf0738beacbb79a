//! Branch-free `exp`, `ln` and `tanh` for f32 that the compiler vectorises (no calls into libm),
//! within 2 ulp of the correctly rounded result (measured in the tests over the whole range).
//! f64 uses the standard library.

/// 1.5·2²³: adding it rounds an f32 to an integer (for |x| < 2²²) without a rounding instruction.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `eˣ` for f32: Cody–Waite reduction `x = n·ln2 + r`, a degree-6 polynomial for `eʳ`
/// (Cephes' coefficients), and `2ⁿ` built from the exponent bits. Inputs above 88.72 give
/// `inf`, below -87.34 give 0, NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_55, 88.722_83);
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = xc - n * C1 - n * C2;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1)
        * z
        + r
        + 1.0;
    // 2ⁿ for n in [-126, 128): split as 2^(n/2)·2^(n - n/2) so n = 128 does not overflow the exponent.
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let half = ni >> 1;
    let a = f32::from_bits(((half + 127) as u32) << 23);
    let b = f32::from_bits(((ni - half + 127) as u32) << 23);
    let y = p * a * b;
    let y = if x > 88.722_83 { f32::INFINITY } else { y };
    let y = if x < -87.336_55 { 0.0 } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `tanh x` for f32: for `|x| < 0.625` the odd polynomial `x + x³·P(x²)` (Cephes'
/// coefficients), above it `1 - 2/(e^{2|x|} + 1)` with [`exp_f32`] and the sign restored
/// (`±1` once `e^{2|x|}` overflows); both arms computed, then a select, so loops vectorise.
/// NaN stays NaN, `±0` keeps its sign.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let z = x * x;
    let p = (((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 3.333_328e-1;
    let small = p * z * x + x;
    let e = exp_f32(2.0 * x.abs());
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    let y = if x.abs() < 0.625 { small } else { large };
    // NaN, and ±0 with its sign (the polynomial's sum would give +0 for -0).
    if x.is_nan() || x == 0.0 {
        x
    } else {
        y
    }
}

/// `ln x` for f32: `x = m·2ᵉ` with `m ∈ [√½, √2)`, a degree-9 polynomial for `ln(1 + (m-1))`
/// (Cephes' coefficients). Subnormals are rescaled first; `ln 0 = -inf`, negative → NaN,
/// `ln inf = inf`.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let tiny = x < f32::MIN_POSITIVE;
    let xs = if tiny { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 126;
    if tiny {
        e -= 23;
    }
    let mut m = f32::from_bits((bits & 0x807F_FFFF) | 0x3F00_0000);
    let small = m < SQRT_HALF;
    e -= i32::from(small);
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let ef = e as f32;
    let z = m * m;
    let mut y = ((((((((7.037_683_6e-2 * m - 1.151_461e-1) * m + 1.167_699_9e-1) * m - 1.242_014_1e-1) * m
        + 1.424_932_3e-1)
        * m
        - 1.666_805_8e-1)
        * m
        + 2.000_071_5e-1)
        * m
        - 2.499_999_4e-1)
        * m
        + 3.333_333e-1)
        * m
        * z;
    y += -2.121_944_4e-4 * ef;
    y += -0.5 * z;
    let r = m + y + 0.693_359_4 * ef;
    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x == f32::INFINITY { f32::INFINITY } else { r };
    if x < 0.0 || x.is_nan() {
        f32::NAN
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two f32 (same sign assumed for finite values).
    fn ulps(a: f32, b: f32) -> u32 {
        if a == b || (a.is_nan() && b.is_nan()) {
            return 0;
        }
        let key = |v: f32| {
            let i = v.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn exp_within_two_ulp_over_the_whole_range() {
        let mut worst = (0, 0.0f32);
        // Every 61st f32 between -87.3 and 88.7 (36 million values).
        for sign in [0u32, 0x8000_0000] {
            let mut bits = 0u32;
            while bits < 0x42B1_0000 {
                let x = f32::from_bits(bits | sign);
                if (-87.336_55..=88.722_83).contains(&x) {
                    let exact = (x as f64).exp() as f32;
                    if exact.is_normal() {
                        let u = ulps(exp_f32(x), exact);
                        if u > worst.0 {
                            worst = (u, x);
                        }
                    }
                }
                bits += 61;
            }
        }
        assert!(worst.0 <= 2, "max error {} ulp at x = {}", worst.0, worst.1);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn tanh_within_two_ulp_over_the_whole_range() {
        let mut worst = (0, 0.0f32);
        // Every 31st positive f32 up to 12 (tanh is odd and rounds to 1 beyond 9.01).
        let mut bits = 1u32;
        while bits < 0x4140_0000 {
            let x = f32::from_bits(bits);
            let exact = (x as f64).tanh() as f32;
            let u = ulps(tanh_f32(x), exact);
            if u > worst.0 {
                worst = (u, x);
            }
            assert_eq!(tanh_f32(-x).to_bits(), (-tanh_f32(x)).to_bits(), "odd at {x}");
            bits += 31;
        }
        assert!(worst.0 <= 2, "max error {} ulp at x = {}", worst.0, worst.1);
        assert_eq!(tanh_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh_f32(20.0), 1.0);
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn ln_within_two_ulp_over_the_whole_range() {
        let mut worst = (0, 0.0f32);
        let mut bits = 1u32;
        while bits < 0x7F80_0000 {
            let x = f32::from_bits(bits);
            let exact = (x as f64).ln() as f32;
            let u = ulps(ln_f32(x), exact);
            if u > worst.0 {
                worst = (u, x);
            }
            bits += 61;
        }
        assert!(worst.0 <= 2, "max error {} ulp at x = {}", worst.0, worst.1);
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32(-1.0).is_nan());
    }
}
