//! The per-element functions of every element-wise op and their derivatives ([`Unary`],
//! [`Binary`]): one definition shared by the tape's eager ops (`ops`) and the fused programs
//! (`fusion`).

use losskit_kernels::{maximum, sigmoid, sign, softplus, Float};

/// Element-wise results of at least this many values are computed in parallel (rayon, through
/// ndarray's `par_map_collect`). Each element is computed on its own, so the values do not depend
/// on the number of threads.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// A one-operand element-wise function (shared by the eager ops and the fused programs).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unary {
    Neg,
    Exp,
    Log,
    Log1p,
    Expm1,
    Sqrt,
    Abs,
    Square,
    Tanh,
    Sigmoid,
    Softplus,
    Relu,
    Erf,
    Atan,
}

impl Unary {
    #[inline(always)]
    pub(crate) fn apply<T: Float>(self, x: T) -> T {
        match self {
            Unary::Neg => -x,
            Unary::Exp => x.exp_fast(),
            Unary::Log => x.ln_fast(),
            Unary::Log1p => x.ln_1p_fast(),
            Unary::Expm1 => x.exp_m1(),
            Unary::Sqrt => x.sqrt(),
            Unary::Abs => x.abs(),
            Unary::Square => x * x,
            Unary::Tanh => x.tanh_fast(),
            Unary::Sigmoid => sigmoid(x),
            Unary::Softplus => softplus(x),
            // max(x, 0) as jnp.maximum and tf.nn.relu compute it: a NaN stays NaN.
            Unary::Relu => maximum(x, T::zero()),
            Unary::Erf => T::c(libm::erf(x.to_f64().unwrap_or(f64::NAN))),
            Unary::Atan => x.atan(),
        }
    }

    /// Whether [`Unary::deriv`] reads the output `y` (else only `x`).
    pub(crate) fn uses_output(self) -> bool {
        matches!(self, Unary::Exp | Unary::Expm1 | Unary::Sqrt | Unary::Tanh | Unary::Sigmoid)
    }

    /// `dy/dx` from the input `x` and the output `y`.
    #[inline(always)]
    pub(crate) fn deriv<T: Float>(self, x: T, y: T) -> T {
        let one = T::one();
        match self {
            Unary::Neg => -one,
            Unary::Exp => y,
            Unary::Log => one / x,
            Unary::Log1p => one / (one + x),
            Unary::Expm1 => y + one,
            Unary::Sqrt => T::c(0.5) / y,
            Unary::Abs => sign(x),
            Unary::Square => x + x,
            Unary::Tanh => one - y * y,
            Unary::Sigmoid => y * (one - y),
            Unary::Softplus => sigmoid(x),
            Unary::Relu => {
                if x > T::zero() {
                    one
                } else {
                    T::zero()
                }
            }
            Unary::Erf => T::c(std::f64::consts::FRAC_2_SQRT_PI) * (-(x * x)).exp(),
            Unary::Atan => one / (one + x * x),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Log1p => "log1p",
            Unary::Expm1 => "expm1",
            Unary::Sqrt => "sqrt",
            Unary::Abs => "abs",
            Unary::Square => "square",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
            Unary::Softplus => "softplus",
            Unary::Relu => "relu",
            Unary::Erf => "erf",
            Unary::Atan => "atan",
        }
    }
}

/// A two-operand element-wise function (shared by the eager ops and the fused programs).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
}

impl Binary {
    #[inline(always)]
    pub(crate) fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
            // NaN on either side gives NaN (jnp.maximum, tf.maximum), not the other operand.
            Binary::Maximum => maximum(a, b),
            Binary::Minimum => {
                if a.is_nan() || b.is_nan() {
                    a + b
                } else if a <= b {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// `(∂y/∂a, ∂y/∂b)`.
    #[inline(always)]
    pub(crate) fn deriv<T: Float>(self, a: T, b: T, y: T) -> (T, T) {
        let (one, zero) = (T::one(), T::zero());
        match self {
            Binary::Add => (one, one),
            Binary::Sub => (one, -one),
            Binary::Mul => (b, a),
            Binary::Div => (one / b, -a / (b * b)),
            Binary::Pow => {
                let da = if b == zero { zero } else { b * a.powf(b - one) };
                let db = if a > zero { y * a.ln() } else { zero };
                (da, db)
            }
            Binary::Maximum => {
                if a >= b {
                    (one, zero)
                } else {
                    (zero, one)
                }
            }
            Binary::Minimum => {
                if a <= b {
                    (one, zero)
                } else {
                    (zero, one)
                }
            }
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Pow => "pow",
            Binary::Maximum => "maximum",
            Binary::Minimum => "minimum",
        }
    }
}

/// Expands `$body` once per `Unary` variant with `$u` bound to that constant, so each loop is
/// compiled for one operation (the per-element `match` folds away and the loop vectorises).
macro_rules! per_unary {
    ($op:expr, $u:ident => $body:expr) => {
        match $op {
            $crate::pointwise::Unary::Neg => {
                let $u = $crate::pointwise::Unary::Neg;
                $body
            }
            $crate::pointwise::Unary::Exp => {
                let $u = $crate::pointwise::Unary::Exp;
                $body
            }
            $crate::pointwise::Unary::Log => {
                let $u = $crate::pointwise::Unary::Log;
                $body
            }
            $crate::pointwise::Unary::Log1p => {
                let $u = $crate::pointwise::Unary::Log1p;
                $body
            }
            $crate::pointwise::Unary::Expm1 => {
                let $u = $crate::pointwise::Unary::Expm1;
                $body
            }
            $crate::pointwise::Unary::Sqrt => {
                let $u = $crate::pointwise::Unary::Sqrt;
                $body
            }
            $crate::pointwise::Unary::Abs => {
                let $u = $crate::pointwise::Unary::Abs;
                $body
            }
            $crate::pointwise::Unary::Square => {
                let $u = $crate::pointwise::Unary::Square;
                $body
            }
            $crate::pointwise::Unary::Tanh => {
                let $u = $crate::pointwise::Unary::Tanh;
                $body
            }
            $crate::pointwise::Unary::Sigmoid => {
                let $u = $crate::pointwise::Unary::Sigmoid;
                $body
            }
            $crate::pointwise::Unary::Softplus => {
                let $u = $crate::pointwise::Unary::Softplus;
                $body
            }
            $crate::pointwise::Unary::Relu => {
                let $u = $crate::pointwise::Unary::Relu;
                $body
            }
            $crate::pointwise::Unary::Erf => {
                let $u = $crate::pointwise::Unary::Erf;
                $body
            }
            $crate::pointwise::Unary::Atan => {
                let $u = $crate::pointwise::Unary::Atan;
                $body
            }
        }
    };
}

pub(crate) use per_unary;

/// As `per_unary!`, for `Binary`.
macro_rules! per_binary {
    ($op:expr, $b:ident => $body:expr) => {
        match $op {
            $crate::pointwise::Binary::Add => {
                let $b = $crate::pointwise::Binary::Add;
                $body
            }
            $crate::pointwise::Binary::Sub => {
                let $b = $crate::pointwise::Binary::Sub;
                $body
            }
            $crate::pointwise::Binary::Mul => {
                let $b = $crate::pointwise::Binary::Mul;
                $body
            }
            $crate::pointwise::Binary::Div => {
                let $b = $crate::pointwise::Binary::Div;
                $body
            }
            $crate::pointwise::Binary::Pow => {
                let $b = $crate::pointwise::Binary::Pow;
                $body
            }
            $crate::pointwise::Binary::Maximum => {
                let $b = $crate::pointwise::Binary::Maximum;
                $body
            }
            $crate::pointwise::Binary::Minimum => {
                let $b = $crate::pointwise::Binary::Minimum;
                $body
            }
        }
    };
}

pub(crate) use per_binary;
