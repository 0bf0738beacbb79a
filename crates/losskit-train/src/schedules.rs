//! Keras' learning-rate schedules (`keras.optimizers.schedules`): the learning rate of the
//! update at optimizer step `t` (its iteration count before the update, from 0), computed in
//! float32 as Keras computes it.

use losskit::{Error, Result};
use serde_json::{json, Value};
use std::f32::consts::PI;

/// A learning rate that follows the optimizer's step `t` (Keras' `LearningRateSchedule`).
///
/// Formulas (`p = t / decay_steps`, floored when `staircase`):
/// - `ExponentialDecay`: `lr₀ · rate^p`;
/// - `InverseTimeDecay`: `lr₀ / (1 + rate · p)`;
/// - `PiecewiseConstantDecay`: `values[0]` for `t ≤ b₀`, `values[i]` for `bᵢ₋₁ < t ≤ bᵢ`, the last
///   value after the last boundary;
/// - `PolynomialDecay`: `(lr₀ - end)·(1 - t'/d)^power + end` with `t' = min(t, d)`, or with
///   `cycle` `d` raised to the next multiple of `decay_steps` (`t' = t`);
/// - `CosineDecay`: `lr₀ · ((1 - α)·½(1 + cos(π·min(t, d)/d)) + α)`; with a warmup target,
///   first a line from `lr₀` to the target over `warmup_steps`, then the decay from the target;
/// - `CosineDecayRestarts` (SGDR): the cosine decay restarted after `first_decay_steps`, each
///   period `t_mul` times longer and its peak `m_mul` times lower.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LearningRateSchedule {
    /// `lr₀ · decay_rate^(t / decay_steps)`.
    ExponentialDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// Steps per decay (> 0).
        decay_steps: f64,
        /// The factor per `decay_steps`.
        decay_rate: f64,
        /// Whether `t / decay_steps` is floored.
        staircase: bool,
    },
    /// `lr₀ / (1 + decay_rate · t / decay_steps)`.
    InverseTimeDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// Steps per decay (> 0).
        decay_steps: f64,
        /// The decay rate.
        decay_rate: f64,
        /// Whether `t / decay_steps` is floored.
        staircase: bool,
    },
    /// Constant pieces between step boundaries.
    PiecewiseConstantDecay {
        /// Increasing step boundaries.
        boundaries: Vec<f64>,
        /// One value more than boundaries.
        values: Vec<f64>,
    },
    /// A polynomial from `lr₀` to `end_learning_rate` over `decay_steps`.
    PolynomialDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// Steps of the decay (> 0).
        decay_steps: f64,
        /// The final rate.
        end_learning_rate: f64,
        /// The polynomial's power.
        power: f64,
        /// Whether the decay restarts after `decay_steps` (from a longer period).
        cycle: bool,
    },
    /// Cosine decay, with an optional linear warmup before it.
    CosineDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// Steps of the decay (> 0).
        decay_steps: f64,
        /// The floor, as a fraction of the peak.
        alpha: f64,
        /// The rate the warmup reaches, if any.
        warmup_target: Option<f64>,
        /// Steps of the warmup.
        warmup_steps: f64,
    },
    /// Cosine decay with warm restarts (SGDR).
    CosineDecayRestarts {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// Steps of the first period (> 0).
        first_decay_steps: f64,
        /// Each period's length over the one before.
        t_mul: f64,
        /// Each period's peak over the one before.
        m_mul: f64,
        /// The floor, as a fraction of the peak.
        alpha: f64,
    },
}

impl LearningRateSchedule {
    /// The learning rate of the update at optimizer step `t` (0 for the first update), in
    /// float32 as Keras computes it (returned as `f64`).
    pub fn at(&self, t: u64) -> f64 {
        let step = t as f32;
        let f = |v: f64| v as f32;
        let value = match *self {
            LearningRateSchedule::ExponentialDecay { initial_learning_rate, decay_steps, decay_rate, staircase } => {
                let p = step / f(decay_steps);
                let p = if staircase { p.floor() } else { p };
                f(initial_learning_rate) * f(decay_rate).powf(p)
            }
            LearningRateSchedule::InverseTimeDecay { initial_learning_rate, decay_steps, decay_rate, staircase } => {
                let p = step / f(decay_steps);
                let p = if staircase { p.floor() } else { p };
                f(initial_learning_rate) / (1.0 + f(decay_rate) * p)
            }
            LearningRateSchedule::PiecewiseConstantDecay { ref boundaries, ref values } => {
                let i = boundaries.iter().position(|&b| f64::from(step) <= b).unwrap_or(boundaries.len());
                f(values[i])
            }
            LearningRateSchedule::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                cycle,
            } => {
                let (mut s, mut d) = (step, f(decay_steps));
                if cycle {
                    let multiplier = if s == 0.0 { 1.0 } else { (s / d).ceil() };
                    d *= multiplier;
                } else {
                    s = s.min(d);
                }
                let p = s / d;
                (f(initial_learning_rate) - f(end_learning_rate)) * (1.0 - p).powf(f(power)) + f(end_learning_rate)
            }
            LearningRateSchedule::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                let d = f(decay_steps);
                let decay = |s: f32, from: f32| {
                    let cosine = 0.5 * (1.0 + (PI * (s / d)).cos());
                    from * ((1.0 - f(alpha)) * cosine + f(alpha))
                };
                match warmup_target {
                    None => decay(step.min(d), f(initial_learning_rate)),
                    Some(target) => {
                        let w = f(warmup_steps);
                        let s = step.min(d + w);
                        if s < w {
                            (f(target) - f(initial_learning_rate)) * (s / w) + f(initial_learning_rate)
                        } else {
                            decay(s - w, f(target))
                        }
                    }
                }
            }
            LearningRateSchedule::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
            } => {
                let (t_mul, m_mul) = (f(t_mul), f(m_mul));
                let mut completed = step / f(first_decay_steps);
                let restart = if t_mul == 1.0 {
                    let i = completed.floor();
                    completed -= i;
                    i
                } else {
                    let i = ((1.0 - completed * (1.0 - t_mul)).ln() / t_mul.ln()).floor();
                    let sum_r = (1.0 - t_mul.powf(i)) / (1.0 - t_mul);
                    completed = (completed - sum_r) / t_mul.powf(i);
                    i
                };
                let cosine = 0.5 * m_mul.powf(restart) * (1.0 + (PI * completed).cos());
                f(initial_learning_rate) * ((1.0 - f(alpha)) * cosine + f(alpha))
            }
        };
        f64::from(value)
    }

    /// Keras' class name (`"ExponentialDecay"`).
    pub fn class_name(&self) -> &'static str {
        match self {
            LearningRateSchedule::ExponentialDecay { .. } => "ExponentialDecay",
            LearningRateSchedule::InverseTimeDecay { .. } => "InverseTimeDecay",
            LearningRateSchedule::PiecewiseConstantDecay { .. } => "PiecewiseConstantDecay",
            LearningRateSchedule::PolynomialDecay { .. } => "PolynomialDecay",
            LearningRateSchedule::CosineDecay { .. } => "CosineDecay",
            LearningRateSchedule::CosineDecayRestarts { .. } => "CosineDecayRestarts",
        }
    }

    /// Reads Keras' serialized schedule: `{"class_name": "ExponentialDecay", "config": {...}}`
    /// (with or without `module`), Keras' defaults for missing keys. Errors name the schedule and
    /// the key at fault.
    pub fn from_keras(v: &Value) -> Result<LearningRateSchedule> {
        let class = v["class_name"].as_str().unwrap_or("(no class_name)");
        let c = &v["config"];
        let bad = |key: &str, want: &str| {
            Error::Config(format!("learning-rate schedule {class}: {key} {} is not {want}", c[key]))
        };
        let num = |key: &str, default: Option<f64>| match (&c[key], default) {
            (Value::Null, Some(d)) => Ok(d),
            (v, _) => v.as_f64().ok_or_else(|| bad(key, "a number")),
        };
        let flag = |key: &str| match &c[key] {
            Value::Null => Ok(false),
            v => v.as_bool().ok_or_else(|| bad(key, "true or false")),
        };
        let list = |key: &str| -> Result<Vec<f64>> {
            c[key]
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| bad(key, "a list of numbers"))
        };
        let schedule = match class {
            "ExponentialDecay" => LearningRateSchedule::ExponentialDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                decay_rate: num("decay_rate", None)?,
                staircase: flag("staircase")?,
            },
            "InverseTimeDecay" => LearningRateSchedule::InverseTimeDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                decay_rate: num("decay_rate", None)?,
                staircase: flag("staircase")?,
            },
            "PiecewiseConstantDecay" => {
                let (boundaries, values) = (list("boundaries")?, list("values")?);
                if values.len() != boundaries.len() + 1 {
                    return Err(bad("values", "one value more than the boundaries"));
                }
                LearningRateSchedule::PiecewiseConstantDecay { boundaries, values }
            }
            "PolynomialDecay" => LearningRateSchedule::PolynomialDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                end_learning_rate: num("end_learning_rate", Some(0.0001))?,
                power: num("power", Some(1.0))?,
                cycle: flag("cycle")?,
            },
            "CosineDecay" => LearningRateSchedule::CosineDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                alpha: num("alpha", Some(0.0))?,
                warmup_target: match &c["warmup_target"] {
                    Value::Null => None,
                    v => Some(v.as_f64().ok_or_else(|| bad("warmup_target", "a number or null"))?),
                },
                warmup_steps: num("warmup_steps", Some(0.0))?,
            },
            "CosineDecayRestarts" => LearningRateSchedule::CosineDecayRestarts {
                initial_learning_rate: num("initial_learning_rate", None)?,
                first_decay_steps: num("first_decay_steps", None)?,
                t_mul: num("t_mul", Some(2.0))?,
                m_mul: num("m_mul", Some(1.0))?,
                alpha: num("alpha", Some(0.0))?,
            },
            other => {
                return Err(Error::Config(format!(
                    "the learning-rate schedule {other:?} is not supported; supported: ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay, CosineDecay, CosineDecayRestarts"
                )))
            }
        };
        schedule.check()?;
        Ok(schedule)
    }

    /// Errors on a decay period that is not positive (Keras refuses it too).
    fn check(&self) -> Result<()> {
        let steps = match *self {
            LearningRateSchedule::ExponentialDecay { decay_steps, .. }
            | LearningRateSchedule::InverseTimeDecay { decay_steps, .. }
            | LearningRateSchedule::PolynomialDecay { decay_steps, .. }
            | LearningRateSchedule::CosineDecay { decay_steps, .. } => decay_steps,
            LearningRateSchedule::CosineDecayRestarts { first_decay_steps, .. } => first_decay_steps,
            LearningRateSchedule::PiecewiseConstantDecay { .. } => 1.0,
        };
        if !(steps.is_finite() && steps > 0.0) {
            return Err(Error::Config(format!(
                "learning-rate schedule {}: decay steps {steps} must be > 0",
                self.class_name()
            )));
        }
        Ok(())
    }

    /// Keras' serialized form (`keras.optimizers.schedules.serialize`).
    pub fn to_keras(&self) -> Value {
        let config = match self {
            LearningRateSchedule::ExponentialDecay { initial_learning_rate, decay_steps, decay_rate, staircase }
            | LearningRateSchedule::InverseTimeDecay { initial_learning_rate, decay_steps, decay_rate, staircase } => {
                json!({"initial_learning_rate": initial_learning_rate, "decay_steps": decay_steps,
                       "decay_rate": decay_rate, "staircase": staircase})
            }
            LearningRateSchedule::PiecewiseConstantDecay { boundaries, values } => {
                json!({"boundaries": boundaries, "values": values})
            }
            LearningRateSchedule::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                cycle,
            } => {
                json!({"initial_learning_rate": initial_learning_rate, "decay_steps": decay_steps,
                       "end_learning_rate": end_learning_rate, "power": power, "cycle": cycle})
            }
            LearningRateSchedule::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                json!({"initial_learning_rate": initial_learning_rate, "decay_steps": decay_steps, "alpha": alpha,
                       "warmup_target": warmup_target, "warmup_steps": warmup_steps})
            }
            LearningRateSchedule::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
            } => {
                json!({"initial_learning_rate": initial_learning_rate, "first_decay_steps": first_decay_steps,
                       "t_mul": t_mul, "m_mul": m_mul, "alpha": alpha})
            }
        };
        json!({"module": "keras.optimizers.schedules", "class_name": self.class_name(), "config": config, "registered_name": null})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each schedule reads back from its Keras form, and Keras' defaults fill missing keys.
    #[test]
    fn schedules_round_trip_through_keras_json() {
        let all = [
            json!({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5, "staircase": true, "name": "ExponentialDecay"}}),
            json!({"class_name": "InverseTimeDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5}}),
            json!({"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [3, 7], "values": [0.05, 0.02, 0.005]}}),
            json!({"class_name": "PolynomialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 5, "cycle": true}}),
            json!({"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.0, "decay_steps": 6, "warmup_target": 0.1, "warmup_steps": 4}}),
            json!({"class_name": "CosineDecayRestarts", "config": {"initial_learning_rate": 0.01, "first_decay_steps": 3}}),
        ];
        for v in all {
            let s = LearningRateSchedule::from_keras(&v).unwrap();
            assert_eq!(LearningRateSchedule::from_keras(&s.to_keras()).unwrap(), s, "{v}");
        }
        let poly = LearningRateSchedule::from_keras(
            &json!({"class_name": "PolynomialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 5}}),
        )
        .unwrap();
        assert!(
            matches!(poly, LearningRateSchedule::PolynomialDecay { end_learning_rate, power, cycle: false, .. } if end_learning_rate == 0.0001 && power == 1.0)
        );
        let e = LearningRateSchedule::from_keras(&json!({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5}})).unwrap_err();
        assert!(e.to_string().contains("decay steps 0 must be > 0"), "{e}");
        let e = LearningRateSchedule::from_keras(&json!({"class_name": "OneCycle", "config": {}})).unwrap_err();
        assert!(e.to_string().contains("\"OneCycle\" is not supported"), "{e}");
    }
}
