//! burn's idiom for losses: a config struct with `with_*` setters and `init()`, e.g.
//! `CategoricalFocalCrossentropyConfig::new().with_gamma(2.0).with_from_logits(true).init()?`.
//! Each is the Keras loss of the same name: a field left unset keeps Keras' default. Any other
//! loss: [`LossConfig`] by name, or [`crate::get`].

use crate::BurnLoss;
use losskit::Result;
use serde_json::{Map, Value};

/// Any registered loss by name with Keras config fields, burn-style:
/// `LossConfig::new("tversky").with("alpha", 0.3).init()?`.
#[derive(Debug, Clone)]
pub struct LossConfig {
    name: String,
    fields: Map<String, Value>,
}

impl LossConfig {
    /// The loss `name` (a Keras class name or alias, a PyTorch name, a registered one).
    pub fn new(name: &str) -> Self {
        LossConfig { name: name.into(), fields: Map::new() }
    }
    /// Sets a Keras config field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }
    /// The loss; an error naming an unknown loss, field or bad value.
    pub fn init(&self) -> Result<BurnLoss> {
        let loss = losskit::build(&self.name, &Value::Object(self.fields.clone()))?;
        Ok(BurnLoss::from_arc(loss.into()))
    }
}

/// A typed config struct for one Keras loss: `Option` fields, `with_*` setters, `init()`.
macro_rules! loss_config {
    ($(#[$doc:meta])* $config:ident => $class:literal { $($(#[$fdoc:meta])* $field:ident: $ty:ty => $setter:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default)]
        pub struct $config {
            $($(#[$fdoc])* pub $field: Option<$ty>,)*
        }

        impl $config {
            /// Keras' defaults.
            pub fn new() -> Self {
                Self::default()
            }
            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                pub fn $setter(mut self, value: $ty) -> Self {
                    self.$field = Some(value);
                    self
                }
            )*
            /// The loss; an error naming a bad value.
            pub fn init(&self) -> Result<BurnLoss> {
                let mut config = LossConfig::new($class);
                $(if let Some(v) = &self.$field {
                    config = config.with(stringify!($field), v.clone());
                })*
                config.init()
            }
        }
    };
}

loss_config!(
    /// Keras' `SparseCategoricalCrossentropy`: class indices against probabilities or logits.
    SparseCategoricalCrossentropyConfig => "SparseCategoricalCrossentropy" {
        /// `y_pred` holds logits.
        from_logits: bool => with_from_logits,
        /// A class index whose samples count nothing.
        ignore_class: i64 => with_ignore_class,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `CategoricalCrossentropy`: one-hot (or soft) targets.
    CategoricalCrossentropyConfig => "CategoricalCrossentropy" {
        /// `y_pred` holds logits.
        from_logits: bool => with_from_logits,
        /// Label smoothing in [0, 1].
        label_smoothing: f64 => with_label_smoothing,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `CategoricalFocalCrossentropy`: `-α (1 - p)^γ log p` on one-hot targets.
    CategoricalFocalCrossentropyConfig => "CategoricalFocalCrossentropy" {
        /// α (0.25 by default).
        alpha: f64 => with_alpha,
        /// γ (2 by default).
        gamma: f64 => with_gamma,
        /// `y_pred` holds logits.
        from_logits: bool => with_from_logits,
        /// Label smoothing in [0, 1].
        label_smoothing: f64 => with_label_smoothing,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `BinaryCrossentropy`.
    BinaryCrossentropyConfig => "BinaryCrossentropy" {
        /// `y_pred` holds logits.
        from_logits: bool => with_from_logits,
        /// Label smoothing in [0, 1] (towards 0.5).
        label_smoothing: f64 => with_label_smoothing,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `BinaryFocalCrossentropy`.
    BinaryFocalCrossentropyConfig => "BinaryFocalCrossentropy" {
        /// Weigh the classes by `alpha` (off by default).
        apply_class_balancing: bool => with_apply_class_balancing,
        /// α (0.25 by default).
        alpha: f64 => with_alpha,
        /// γ (2 by default).
        gamma: f64 => with_gamma,
        /// `y_pred` holds logits.
        from_logits: bool => with_from_logits,
        /// Label smoothing in [0, 1].
        label_smoothing: f64 => with_label_smoothing,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `Huber`: quadratic within `delta`, linear beyond.
    HuberConfig => "Huber" {
        /// The threshold (1 by default).
        delta: f64 => with_delta,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `Dice`: `1 - 2|y ∩ p| / (|y| + |p|)`.
    DiceConfig => "Dice" {
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);

loss_config!(
    /// Keras' `Tversky`: Dice with weights `alpha` on false positives and `beta` on false
    /// negatives.
    TverskyConfig => "Tversky" {
        /// The false positives' weight (0.5 by default).
        alpha: f64 => with_alpha,
        /// The false negatives' weight (0.5 by default).
        beta: f64 => with_beta,
        /// `sum_over_batch_size` (default), `sum`, `mean_with_sample_weight` or `none`.
        reduction: String => with_reduction,
    }
);
