//! Optimizers with Keras 3's update rules and defaults: SGD (momentum, Nesterov), Adam,
//! AdamW, RMSprop, Adagrad, Adamax, Lion, Lamb, Ftrl, Adadelta, Nadam, Adafactor; each with
//! `clipnorm`, `clipvalue` or `global_clipnorm`, `weight_decay` and `use_ema`.

use crate::layers::Param;
use crate::schedules::LearningRateSchedule;
use losskit::{Error, Result, Tensor};
use losskit_tensor::Element;
use ndarray::ArrayD;

mod apply;
mod fold;

pub(crate) use apply::Weights;

/// Which update rule, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Rule {
    /// `m ← μ·m - lr·g; w ← w + m` (Nesterov: `w ← w + μ·m - lr·g`); plain `w ← w - lr·g` when `μ = 0`.
    Sgd {
        /// `μ` (Keras default 0).
        momentum: f64,
        /// Nesterov momentum (default false).
        nesterov: bool,
    },
    /// Adam: `m ← m + (g - m)(1-β₁)`, `v ← v + (g² - v)(1-β₂)`,
    /// `w ← w - lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m/(√v + ε)`.
    Adam {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// AdamW: `w ← w - w·wd·lr` (decoupled weight decay), then Adam.
    AdamW {
        /// Weight decay (0.004).
        weight_decay: f64,
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// RMSprop: `v ← ρv + (1-ρ)g²`, `w ← w - lr·g/√(v + ε)` (centered: `v - ḡ² + ε`), optional momentum.
    RmsProp {
        /// `ρ` (0.9).
        rho: f64,
        /// Momentum (0).
        momentum: f64,
        /// `ε` (1e-7).
        epsilon: f64,
        /// Centered variant (false).
        centered: bool,
    },
    /// Adagrad: `a ← a + g²` (from `initial_accumulator_value`), `w ← w - lr·g/√(a + ε)`.
    Adagrad {
        /// The accumulators' start (0.1).
        initial_accumulator_value: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// Adamax: `m ← m + (g - m)(1-β₁)`, `u ← max(β₂u, |g|)`, `w ← w - lr·m/((1-β₁ᵗ)(u + ε))`.
    Adamax {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// Lamb (Adam's direction `u` scaled per weight by the trust ratio): `w ← w - (‖w‖/‖u‖)·lr·u`
    /// with `u = m̂/(√v̂ + ε)` (the ratio 1 when a norm is 0).
    Lamb {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// FTRL-proximal (Keras' `Ftrl`): an accumulator `a` and a linear term `z` per weight,
    /// `w ← (clip(z, ±l1) - z)/(a^(-lr_power)/lr + 2·l2)` (see `losskit_kernels::optim_rules`).
    Ftrl {
        /// `learning_rate_power` (-0.5).
        learning_rate_power: f64,
        /// The accumulators' start (0.1).
        initial_accumulator_value: f64,
        /// `l1_regularization_strength` (0).
        l1_regularization_strength: f64,
        /// `l2_regularization_strength` (0).
        l2_regularization_strength: f64,
        /// `l2_shrinkage_regularization_strength` (0).
        l2_shrinkage_regularization_strength: f64,
        /// `beta` (0).
        beta: f64,
    },
    /// Lion: `w ← w - lr·sign(β₁m + (1-β₁)g)`, `m ← β₂m + (1-β₂)g`.
    Lion {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.99).
        beta_2: f64,
    },
    /// Nadam (Adam with Nesterov momentum, Keras' form): `m`, `v` as Adam; with
    /// `u_t = β₁(1 - ½·0.96ᵗ)` and `Π_t = u_1⋯u_t`, `m̂ = u_{t+1}m/(1 - Π_t u_{t+1}) +
    /// (1 - u_t)g/(1 - Π_t)`, `w ← w - lr·m̂/(√(v/(1-β₂ᵗ)) + ε)`.
    Nadam {
        /// `β₁` (0.9).
        beta_1: f64,
        /// `β₂` (0.999).
        beta_2: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
    /// Adafactor (Keras' form): factored second moments `r` (rows), `c` (columns) of a weight's
    /// last two axes (`v = (r/mean r)·c`; a weight of rank < 2 keeps a full `v`),
    /// `w ← w - max(ε₂, rms(w))·min(lr, 1/√t) · u/max(1, rms(u)/d)` with `u = g/√v` (see
    /// `losskit_kernels::optim_rules::adafactor_update`).
    Adafactor {
        /// `beta_2_decay` (-0.8): `β₂ₜ = 1 - t^beta_2_decay`.
        beta_2_decay: f64,
        /// `epsilon_1` (1e-30), added to `g²`.
        epsilon_1: f64,
        /// `epsilon_2` (1e-3), the least weight RMS.
        epsilon_2: f64,
        /// `clip_threshold` `d` (1).
        clip_threshold: f64,
        /// `relative_step` (true): Keras caps the learning rate at `1/√t`, which its update
        /// does in any case; kept for the config.
        relative_step: bool,
    },
    /// Adadelta: `a ← ρa + (1-ρ)g²`, `Δ = -√(d + ε)·g/√(a + ε)`, `d ← ρd + (1-ρ)Δ²`, `w ← w + lr·Δ`.
    Adadelta {
        /// `ρ` (0.95).
        rho: f64,
        /// `ε` (1e-7).
        epsilon: f64,
    },
}

impl Rule {
    /// Keras' `Adafactor` defaults.
    pub const ADAFACTOR_DEFAULTS: Rule = Rule::Adafactor {
        beta_2_decay: -0.8,
        epsilon_1: 1e-30,
        epsilon_2: 1e-3,
        clip_threshold: 1.0,
        relative_step: true,
    };

    /// Keras' `Ftrl` defaults.
    pub const FTRL_DEFAULTS: Rule = Rule::Ftrl {
        learning_rate_power: -0.5,
        initial_accumulator_value: 0.1,
        l1_regularization_strength: 0.0,
        l2_regularization_strength: 0.0,
        l2_shrinkage_regularization_strength: 0.0,
        beta: 0.0,
    };
}

/// How gradients are clipped before the update (at most one, as Keras enforces).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clip {
    /// No clipping.
    None,
    /// Each gradient tensor rescaled to L2 norm `≤ c`.
    Norm(f64),
    /// All gradients rescaled together so their global L2 norm is `≤ c`.
    GlobalNorm(f64),
    /// Each element clipped to `[-c, c]`.
    Value(f64),
}

/// Keras' `use_ema`: an exponential moving average of every weight, kept by the optimizer
/// after each update (`a ← m·a + (1-m)·w`, `m` = 0 at the first update so that `a` starts at
/// the weight), copied into the weights every `overwrite_frequency` updates when set, and at
/// the end of `fit` ([`Optimizer::finalize_variable_values`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ema {
    /// `ema_momentum` `m` (Keras' default 0.99), in `[0, 1]`.
    pub momentum: f64,
    /// `ema_overwrite_frequency`: the weights take the average after every this many updates
    /// (Keras' default `None`: only at the end of training).
    pub overwrite_frequency: Option<u64>,
}

#[derive(Debug, Clone, Default)]
enum Slots {
    #[default]
    Empty,
    F32(Vec<Vec<ArrayD<f32>>>),
    F64(Vec<Vec<ArrayD<f64>>>),
}

/// An optimizer: an update rule, a learning rate, clipping, and its per-weight state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    rule: Rule,
    learning_rate: f64,
    /// A schedule the learning rate follows instead of `learning_rate`.
    schedule: Option<LearningRateSchedule>,
    /// Keras' decoupled `weight_decay` of the rules other than AdamW (which keeps its own).
    weight_decay: Option<f64>,
    /// Adam's and AdamW's `amsgrad`: a third slot, the running maximum of `v`.
    amsgrad: bool,
    /// Keras' `use_ema`: the average is each weight's last slot.
    ema: Option<Ema>,
    /// Nadam's running product `Π u` and the step it was taken at (a cache: it follows from
    /// the step alone).
    nadam_product: Option<(u64, f64)>,
    clip: Clip,
    iterations: u64,
    slots: Slots,
}

/// What [`Optimizer::apply_checked`] measured and did.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientCheck {
    /// `Σ g²` of each gradient (before clipping), in weight order: NaN or ±inf when the
    /// gradient holds a non-finite value (or its squares overflow).
    pub sum_squares: Vec<f64>,
    /// Whether every gradient value is finite.
    pub finite: bool,
    /// Whether the update was applied (always, unless finiteness was required and missing).
    pub applied: bool,
}

fn invalid(param: &str, value: f64, expected: &str) -> Error {
    Error::InvalidParameter {
        loss: "Optimizer".into(),
        param: param.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

impl Optimizer {
    fn with_rule(rule: Rule, learning_rate: f64) -> Result<Optimizer> {
        if !(learning_rate.is_finite() && learning_rate >= 0.0) {
            return Err(invalid("learning_rate", learning_rate, "a finite number >= 0"));
        }
        Ok(Optimizer {
            rule,
            learning_rate,
            schedule: None,
            weight_decay: None,
            amsgrad: false,
            ema: None,
            nadam_product: None,
            clip: Clip::None,
            iterations: 0,
            slots: Slots::Empty,
        })
    }

    /// SGD with Keras' defaults (momentum 0).
    pub fn sgd(learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::Sgd { momentum: 0.0, nesterov: false }, learning_rate)
    }
    /// SGD with momentum `μ ∈ [0, 1]` and optionally Nesterov.
    pub fn sgd_momentum(learning_rate: f64, momentum: f64, nesterov: bool) -> Result<Optimizer> {
        if !(0.0..=1.0).contains(&momentum) {
            return Err(invalid("momentum", momentum, "a number in [0, 1]"));
        }
        Self::with_rule(Rule::Sgd { momentum, nesterov }, learning_rate)
    }
    /// Adam with Keras' defaults (β₁ 0.9, β₂ 0.999, ε 1e-7).
    pub fn adam(learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::Adam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, learning_rate)
    }
    /// AdamW with Keras' defaults (weight decay 0.004).
    pub fn adamw(learning_rate: f64, weight_decay: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::AdamW { weight_decay, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, learning_rate)
    }
    /// RMSprop with Keras' defaults (ρ 0.9, no momentum, ε 1e-7, not centered).
    pub fn rmsprop(learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(Rule::RmsProp { rho: 0.9, momentum: 0.0, epsilon: 1e-7, centered: false }, learning_rate)
    }
    /// Any rule.
    pub fn new(rule: Rule, learning_rate: f64) -> Result<Optimizer> {
        Self::with_rule(rule, learning_rate)
    }

    /// An optimizer from Keras' serialized form (`keras.optimizers.serialize`, as in a model
    /// file's `compile_config`): `{"class_name": "Adafactor", "config": {...}}` with its
    /// hyper-parameters, clipping, `weight_decay`, `amsgrad`, `use_ema` and a learning-rate
    /// schedule, or a name as [`Optimizer::parse`]. Keras' defaults fill what is missing.
    pub fn from_keras(config: &serde_json::Value) -> Result<Optimizer> {
        crate::keras_model::parse_optimizer(config).map_err(Error::Config)
    }

    /// An optimizer by Keras name with Keras' defaults: `"sgd"` (lr 0.01), `"adam"` (0.001),
    /// `"adamw"` (0.001), `"rmsprop"` (0.001). Case-insensitive.
    pub fn parse(name: &str) -> Result<Optimizer> {
        match name.to_lowercase().as_str() {
            "sgd" => Self::sgd(0.01),
            "adam" => Self::adam(0.001),
            "adamw" => Self::adamw(0.001, 0.004),
            "rmsprop" => Self::rmsprop(0.001),
            "adagrad" => Self::new(Rule::Adagrad { initial_accumulator_value: 0.1, epsilon: 1e-7 }, 0.001),
            "adamax" => Self::new(Rule::Adamax { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, 0.001),
            "lion" => Self::new(Rule::Lion { beta_1: 0.9, beta_2: 0.99 }, 0.001),
            "lamb" => Self::new(Rule::Lamb { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, 0.001),
            "adafactor" => Self::new(Rule::ADAFACTOR_DEFAULTS, 0.001),
            "ftrl" => Self::new(Rule::FTRL_DEFAULTS, 0.001),
            "adadelta" => Self::new(Rule::Adadelta { rho: 0.95, epsilon: 1e-7 }, 0.001),
            "nadam" => Self::new(Rule::Nadam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, 0.001),
            _ => Err(Error::UnknownName {
                kind: "optimizer".into(),
                name: name.into(),
                suggestions: "sgd, adam, adamw, rmsprop, adagrad, adamax, lion, lamb, ftrl, adadelta, nadam, adafactor"
                    .into(),
            }),
        }
    }

    /// Sets the gradient clipping.
    pub fn with_clip(mut self, clip: Clip) -> Result<Optimizer> {
        match clip {
            Clip::Norm(c) | Clip::GlobalNorm(c) | Clip::Value(c) if !(c.is_finite() && c > 0.0) => {
                return Err(invalid("clip", c, "a finite number > 0"))
            }
            _ => {}
        }
        self.clip = clip;
        Ok(self)
    }
    /// `clipnorm`: each gradient rescaled to norm `≤ c`.
    pub fn clipnorm(self, c: f64) -> Result<Optimizer> {
        self.with_clip(Clip::Norm(c))
    }
    /// `clipvalue`: each element clipped to `[-c, c]`.
    pub fn clipvalue(self, c: f64) -> Result<Optimizer> {
        self.with_clip(Clip::Value(c))
    }
    /// `global_clipnorm`: all gradients rescaled so their global norm is `≤ c`.
    pub fn global_clipnorm(self, c: f64) -> Result<Optimizer> {
        self.with_clip(Clip::GlobalNorm(c))
    }

    /// The current learning rate: the schedule's at the current step when there is one
    /// (Keras' `optimizer.learning_rate`).
    pub fn learning_rate(&self) -> f64 {
        match &self.schedule {
            Some(s) => s.at(self.iterations),
            None => self.learning_rate,
        }
    }
    /// Changes the learning rate (schedulers use this). An error when the rate follows a
    /// schedule (as in Keras).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if let Some(s) = &self.schedule {
            return Err(Error::Config(format!(
                "the learning rate follows a {} schedule: it cannot be set (ReduceLROnPlateau, --lr)",
                s.class_name()
            )));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(invalid("learning_rate", lr, "a finite number >= 0"));
        }
        self.learning_rate = lr;
        Ok(())
    }
    /// The learning rate follows `schedule` (Keras' `learning_rate=keras.optimizers.schedules.…`):
    /// the update at step `t` (from 0) uses `schedule.at(t)`.
    pub fn with_schedule(mut self, schedule: LearningRateSchedule) -> Optimizer {
        self.schedule = Some(schedule);
        self
    }
    /// Keras' `weight_decay` (decoupled, for every rule): before each update, every weight
    /// becomes `w - (w·wd)·lr`. AdamW's is its rule's; for the others this sets it. An error
    /// when `wd` is negative or not finite.
    pub fn with_weight_decay(mut self, wd: f64) -> Result<Optimizer> {
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(invalid("weight_decay", wd, "a finite number >= 0"));
        }
        match &mut self.rule {
            Rule::AdamW { weight_decay, .. } => *weight_decay = wd,
            _ => self.weight_decay = (wd != 0.0).then_some(wd),
        }
        Ok(self)
    }
    /// Keras' `amsgrad` for Adam and AdamW: the update divides by `√v̂ + ε` with `v̂` the running
    /// maximum of `v` (a third slot per weight). An error for the other rules.
    pub fn with_amsgrad(mut self, on: bool) -> Result<Optimizer> {
        if on && !matches!(self.rule, Rule::Adam { .. } | Rule::AdamW { .. }) {
            return Err(Error::Config(format!("amsgrad is an option of Adam and AdamW, not of {:?}", self.rule)));
        }
        self.amsgrad = on;
        Ok(self)
    }
    /// Keras' `use_ema=True` with `ema_momentum` and `ema_overwrite_frequency` (see [`Ema`]);
    /// `None` turns it off. An error when the momentum is outside `[0, 1]` or the frequency 0.
    pub fn with_ema(mut self, ema: Option<Ema>) -> Result<Optimizer> {
        if let Some(e) = ema {
            if !(0.0..=1.0).contains(&e.momentum) {
                return Err(invalid("ema_momentum", e.momentum, "a number in [0, 1]"));
            }
            if e.overwrite_frequency == Some(0) {
                return Err(invalid("ema_overwrite_frequency", 0.0, "an integer >= 1 or None"));
            }
        }
        self.ema = ema;
        Ok(self)
    }

    /// Keras' `use_ema` settings, when on.
    pub fn ema(&self) -> Option<Ema> {
        self.ema
    }

    /// Keras' `finalize_variable_values` at the end of `fit`: with `use_ema`, each weight takes
    /// its moving average (nothing before the first update, or without `use_ema`).
    pub fn finalize_variable_values(&self, params: &mut [&mut Param]) -> Result<()> {
        if self.ema.is_none() {
            return Ok(());
        }
        // Only the averages are copied out of the slots.
        let last = self.rule_slots();
        for (i, p) in params.iter_mut().enumerate() {
            let average = match &self.slots {
                Slots::Empty => None,
                Slots::F32(v) => v.get(i).and_then(|s| s.get(last)).map(|a| Tensor::from_array(a.clone())),
                Slots::F64(v) => v.get(i).and_then(|s| s.get(last)).map(|a| Tensor::from_array(a.clone())),
            };
            if let Some(average) = average {
                p.value = average.requires_grad();
            }
        }
        Ok(())
    }

    /// Whether Adam's `amsgrad` is on.
    pub fn amsgrad(&self) -> bool {
        self.amsgrad
    }
    /// The decoupled weight decay of a rule other than AdamW, if any.
    pub fn weight_decay(&self) -> Option<f64> {
        self.weight_decay
    }
    /// The schedule the learning rate follows, if any.
    pub fn schedule(&self) -> Option<&LearningRateSchedule> {
        self.schedule.as_ref()
    }
    /// The update rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }
    /// The clipping.
    pub fn clip(&self) -> Clip {
        self.clip
    }
    /// Updates applied so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The state that training changes: the update count, the learning rate (callbacks may
    /// have changed it) and the slots (per weight, in [`Model::params`](crate::Model::params)
    /// order: SGD's momentum `m`; Adam's `m`, `v`; RMSprop's `v`, then its momentum and mean
    /// gradient when used). Empty slots before the first update.
    pub fn state(&self) -> OptimizerState {
        let slots = match &self.slots {
            Slots::Empty => Vec::new(),
            Slots::F32(v) => v.iter().map(|s| s.iter().map(|a| Tensor::from_array(a.clone())).collect()).collect(),
            Slots::F64(v) => v.iter().map(|s| s.iter().map(|a| Tensor::from_array(a.clone())).collect()).collect(),
        };
        OptimizerState { iterations: self.iterations, learning_rate: self.learning_rate, slots }
    }

    /// Puts back a [`Optimizer::state`] (as [`BackupAndRestore`](crate::BackupAndRestore)
    /// does). Each weight must have as many slots as this rule keeps, all of one dtype.
    pub fn set_state(&mut self, state: OptimizerState) -> Result<()> {
        let needed = self.slots_needed();
        if let Some(bad) = state.slots.iter().find(|s| s.len() != needed) {
            return Err(Error::Config(format!(
                "optimizer state: {} slots per weight, but {:?} keeps {needed}",
                bad.len(),
                self.rule
            )));
        }
        let dtypes: Vec<losskit::DType> = state.slots.iter().flatten().map(Tensor::dtype).collect();
        self.slots = match dtypes.first() {
            None => Slots::Empty,
            Some(d) if dtypes.iter().any(|x| x != d) => {
                return Err(Error::Config("optimizer state: slots of mixed dtypes".into()))
            }
            Some(losskit::DType::F32) => Slots::F32(arrays(&state.slots)?),
            Some(losskit::DType::F64) => Slots::F64(arrays(&state.slots)?),
        };
        if self.schedule.is_none() {
            self.set_learning_rate(state.learning_rate)?;
        }
        self.iterations = state.iterations;
        Ok(())
    }

    /// Nadam's constants at `step`, the running product carried from the last step when it
    /// was the one before (else computed from the start, as after `set_state`).
    fn nadam_constants<T: Element>(
        &mut self,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        step: u64,
    ) -> losskit_kernels::optim_rules::NadamStep<T> {
        let previous = match self.nadam_product {
            Some((t, p)) if t + 1 == step => Some(T::c(p)),
            _ => None,
        };
        let s = nadam_step::<T>(beta_1, beta_2, epsilon, step, previous);
        self.nadam_product = s.u_product_t.to_f64().map(|p| (step, p));
        s
    }

    /// Slots per weight: the rule's, then the moving average with `use_ema`.
    pub(crate) fn slots_needed(&self) -> usize {
        self.rule_slots() + usize::from(self.ema.is_some())
    }

    /// Slots per weight for this rule (without `use_ema`'s average).
    pub(crate) fn rule_slots(&self) -> usize {
        match self.rule {
            Rule::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            Rule::Adam { .. } | Rule::AdamW { .. } => 2 + usize::from(self.amsgrad),
            Rule::RmsProp { momentum, centered, .. } => 1 + usize::from(momentum > 0.0) + usize::from(centered),
            Rule::Adagrad { .. } | Rule::Lion { .. } => 1,
            Rule::Adamax { .. }
            | Rule::Adadelta { .. }
            | Rule::Nadam { .. }
            | Rule::Lamb { .. }
            | Rule::Ftrl { .. } => 2,
            Rule::Adafactor { .. } => 3,
        }
    }

    /// The shape of slot `k` of a weight of shape `weight`: the weight's own, except
    /// Adafactor's factored moments `r` (`weight[..-1]`) and `c` (`weight[..-2] ++ [last]`),
    /// which are scalars for a weight of rank < 2 (as Keras keeps them).
    pub(crate) fn slot_shape(&self, k: usize, weight: &[usize]) -> Vec<usize> {
        slot_shape(self.rule, k, weight)
    }
}

/// An optimizer's training state ([`Optimizer::state`]): what a backup keeps so that a resumed
/// run continues with the same moments and bias corrections.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    /// Updates applied so far (Keras' `optimizer.iterations`).
    pub iterations: u64,
    /// The current learning rate.
    pub learning_rate: f64,
    /// Per weight, its slot tensors (same shape as the weight).
    pub slots: Vec<Vec<Tensor>>,
}

/// The slot tensors as arrays of one element type.
fn arrays<T: Element>(slots: &[Vec<Tensor>]) -> Result<Vec<Vec<ArrayD<T>>>> {
    slots
        .iter()
        .map(|s| {
            s.iter()
                .map(|t| {
                    ArrayD::from_shape_vec(t.shape().to_vec(), t.to_vec::<T>())
                        .map_err(|e| Error::Config(format!("optimizer state: {e}")))
                })
                .collect()
        })
        .collect()
}

/// Nadam's constants at step `t` (from 1), in `T` as Keras computes them; `Π_t` is the product
/// Keras keeps in a variable, from `previous` (`Π_{t-1}`) when given, else computed again from
/// the start (the same operations in the same order: `Π ← Π·β₁·(1 - ½·0.96ᵏ)`, `k = 1..t`).
pub(crate) fn nadam_step<T: Element>(
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    t: u64,
    previous: Option<T>,
) -> losskit_kernels::optim_rules::NadamStep<T> {
    let one = T::one();
    let (b1, b2, decay, half) = (T::c(beta_1), T::c(beta_2), T::c(0.96), T::c(0.5));
    let factor = |k: u64| one - half * decay.powf(T::c(k as f64));
    let u = |k: u64| b1 * factor(k);
    // `Π_{t-1}` carried over, or built from 1 (Keras' initial value) step by step.
    let product = match previous {
        Some(p) if t >= 1 => p * b1 * factor(t),
        _ => (1..=t).fold(one, |p, k| p * b1 * factor(k)),
    };
    let u_t_1 = u(t + 1);
    losskit_kernels::optim_rules::NadamStep {
        u_t: u(t),
        u_t_1,
        u_product_t: product,
        u_product_t_1: product * u_t_1,
        one_minus_beta_1: one - b1,
        one_minus_beta_2: one - b2,
        beta_2_power: b2.powf(T::c(t as f64)),
        epsilon: T::c(epsilon),
    }
}

/// [`Optimizer::slot_shape`] of `rule`.
fn slot_shape(rule: Rule, k: usize, weight: &[usize]) -> Vec<usize> {
    let (head, tail) = slot_dims(rule, k, weight);
    [head, tail].concat()
}

/// Whether `shape` is [`slot_shape`]`(rule, k, weight)` (checked every step: no allocation).
fn slot_fits(rule: Rule, k: usize, weight: &[usize], shape: &[usize]) -> bool {
    let (head, tail) = slot_dims(rule, k, weight);
    shape.len() == head.len() + tail.len() && shape[..head.len()] == *head && shape[head.len()..] == *tail
}

/// Slot `k`'s shape for a weight of shape `weight`, as two pieces of it to join: the weight's
/// own, except Adafactor's `r` (`weight[..-1]`) and `c` (`weight[..-2] ++ [last]`), scalars for
/// a weight of rank < 2.
fn slot_dims(rule: Rule, k: usize, weight: &[usize]) -> (&[usize], &[usize]) {
    let rank = weight.len();
    match (rule, k) {
        (Rule::Adafactor { .. }, 0 | 1) if rank < 2 => (&[], &[]),
        (Rule::Adafactor { .. }, 0) => (&weight[..rank - 1], &[]),
        (Rule::Adafactor { .. }, 1) => (&weight[..rank - 2], &weight[rank - 1..]),
        _ => (weight, &[]),
    }
}
