//! Names, aliases and configs: `get("mse")`, `from_config(json)`, `register(...)`, `list()`.

use crate::classification::*;
use crate::hinge::*;
use crate::linear_ce::LinearCrossEntropy;
use crate::metric_learning::*;
use crate::regression::*;
use crate::segmentation::*;
use crate::sequence::*;
use crate::tfa::*;
use crate::torch::*;
use crate::{Error, Loss, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// The group a loss belongs to (used by `losskit list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// Cross-entropy losses: binary, categorical, sparse, focal, generalized.
    Probabilistic,
    /// Maximum-margin losses: hinge, squared hinge, categorical hinge.
    Hinge,
    /// Regression losses (MSE, MAE, Huber, ...), including KL divergence and cosine similarity.
    Regression,
    /// Overlap losses for segmentation: Dice, Tversky.
    Segmentation,
    /// Losses over pairs of embeddings in a batch: Circle.
    MetricLearning,
    /// Sequence losses: CTC.
    Sequence,
    /// Object detection: box IoU losses.
    Detection,
    /// PyTorch's losses (PyTorch names and reductions).
    PyTorch,
    /// Losses registered at run time with [`register`].
    Custom,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Probabilistic => "probabilistic",
            Family::Hinge => "hinge",
            Family::Regression => "regression",
            Family::Segmentation => "segmentation",
            Family::MetricLearning => "metric learning",
            Family::Sequence => "sequence",
            Family::Detection => "detection",
            Family::PyTorch => "pytorch",
            Family::Custom => "custom",
        })
    }
}

/// A description of one loss, as `losskit list` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct LossInfo {
    /// The class name (`"MeanSquaredError"`), itself accepted by [`get`].
    pub class_name: String,
    /// Other accepted names (Keras function names, short aliases, Keras 2 names).
    pub aliases: Vec<String>,
    /// The family.
    pub family: Family,
    /// One line on what it computes.
    pub description: String,
}

type Builder = fn(&Value) -> Result<Box<dyn Loss>>;

/// A factory for a registered custom loss: builds it from a config (`Value::Null` for defaults).
pub type Factory = dyn Fn(&Value) -> Result<Box<dyn Loss>> + Send + Sync;

struct Entry {
    class_name: &'static str,
    aliases: &'static [&'static str],
    family: Family,
    description: &'static str,
    build: Builder,
}

fn boxed<L: Loss + 'static>(r: Result<L>) -> Result<Box<dyn Loss>> {
    r.map(|l| Box::new(l) as Box<dyn Loss>)
}

const BUILTINS: &[Entry] = &[
    Entry {
        class_name: "BinaryCrossentropy",
        aliases: &["binary_crossentropy", "bce", "BCE"],
        family: Family::Probabilistic,
        description: "binary cross-entropy of probabilities or logits, mean over the last axis",
        build: |c| boxed(BinaryCrossentropy::from_config(c)),
    },
    Entry {
        class_name: "BinaryFocalCrossentropy",
        aliases: &["binary_focal_crossentropy"],
        family: Family::Probabilistic,
        description: "binary cross-entropy scaled by (1 - p_t)^gamma, optional alpha balancing",
        build: |c| boxed(BinaryFocalCrossentropy::from_config(c)),
    },
    Entry {
        class_name: "CategoricalCrossentropy",
        aliases: &["categorical_crossentropy"],
        family: Family::Probabilistic,
        description: "cross-entropy of one-hot or soft targets, probabilities or logits",
        build: |c| boxed(CategoricalCrossentropy::from_config(c)),
    },
    Entry {
        class_name: "CategoricalFocalCrossentropy",
        aliases: &["categorical_focal_crossentropy"],
        family: Family::Probabilistic,
        description: "categorical cross-entropy scaled by alpha * (1 - p)^gamma per class",
        build: |c| boxed(CategoricalFocalCrossentropy::from_config(c)),
    },
    Entry {
        class_name: "SparseCategoricalCrossentropy",
        aliases: &["sparse_categorical_crossentropy"],
        family: Family::Probabilistic,
        description: "cross-entropy of integer class labels, with ignore_class",
        build: |c| boxed(SparseCategoricalCrossentropy::from_config(c)),
    },
    Entry {
        class_name: "LinearCrossEntropy",
        aliases: &["linear_cross_entropy", "fused_linear_cross_entropy"],
        family: Family::Probabilistic,
        description: "cross-entropy of a linear head (hidden·Wᵀ + b), fused: the logits never exist",
        build: |c| boxed(LinearCrossEntropy::from_config(c)),
    },
    Entry {
        class_name: "CategoricalGeneralizedCrossEntropy",
        aliases: &["categorical_generalized_cross_entropy"],
        family: Family::Probabilistic,
        description: "(1 - p_true^q) / q, robust to noisy integer labels",
        build: |c| boxed(CategoricalGeneralizedCrossEntropy::from_config(c)),
    },
    Entry {
        class_name: "Hinge",
        aliases: &["hinge"],
        family: Family::Hinge,
        description: "mean of max(1 - y * p, 0), {0,1} labels mapped to {-1,1}",
        build: |c| boxed(Hinge::from_config(c)),
    },
    Entry {
        class_name: "SquaredHinge",
        aliases: &["squared_hinge"],
        family: Family::Hinge,
        description: "mean of max(1 - y * p, 0)^2",
        build: |c| boxed(SquaredHinge::from_config(c)),
    },
    Entry {
        class_name: "CategoricalHinge",
        aliases: &["categorical_hinge"],
        family: Family::Hinge,
        description: "max(best wrong score - true score + 1, 0)",
        build: |c| boxed(CategoricalHinge::from_config(c)),
    },
    Entry {
        class_name: "MeanSquaredError",
        aliases: &["mean_squared_error", "mse", "MSE"],
        family: Family::Regression,
        description: "mean over the last axis of (y_true - y_pred)^2",
        build: |c| boxed(MeanSquaredError::from_config(c)),
    },
    Entry {
        class_name: "MeanAbsoluteError",
        aliases: &["mean_absolute_error", "mae", "MAE"],
        family: Family::Regression,
        description: "mean over the last axis of |y_true - y_pred|",
        build: |c| boxed(MeanAbsoluteError::from_config(c)),
    },
    Entry {
        class_name: "MeanAbsolutePercentageError",
        aliases: &["mean_absolute_percentage_error", "mape", "MAPE"],
        family: Family::Regression,
        description: "100 * mean of |y_true - y_pred| / max(|y_true|, 1e-7)",
        build: |c| boxed(MeanAbsolutePercentageError::from_config(c)),
    },
    Entry {
        class_name: "MeanSquaredLogarithmicError",
        aliases: &["mean_squared_logarithmic_error", "msle", "MSLE"],
        family: Family::Regression,
        description: "mean of (ln(max(p,1e-7)+1) - ln(max(y,1e-7)+1))^2",
        build: |c| boxed(MeanSquaredLogarithmicError::from_config(c)),
    },
    Entry {
        class_name: "Huber",
        aliases: &["huber", "huber_loss"],
        family: Family::Regression,
        description: "quadratic for |error| <= delta, linear beyond (delta = 1)",
        build: |c| boxed(Huber::from_config(c)),
    },
    Entry {
        class_name: "LogCosh",
        aliases: &["log_cosh", "logcosh"],
        family: Family::Regression,
        description: "mean of ln cosh(y_pred - y_true), stable for large errors",
        build: |c| boxed(LogCosh::from_config(c)),
    },
    Entry {
        class_name: "Poisson",
        aliases: &["poisson"],
        family: Family::Regression,
        description: "mean of y_pred - y_true * ln(y_pred + 1e-7)",
        build: |c| boxed(Poisson::from_config(c)),
    },
    Entry {
        class_name: "KLDivergence",
        aliases: &["kl_divergence", "kld", "KLD", "kullback_leibler_divergence"],
        family: Family::Regression,
        description: "sum of t * ln(t / q) over the last axis, both clipped to [1e-7, 1]",
        build: |c| boxed(KLDivergence::from_config(c)),
    },
    Entry {
        class_name: "CosineSimilarity",
        aliases: &["cosine_similarity"],
        family: Family::Regression,
        description: "negative cosine of the angle between y_true and y_pred along an axis",
        build: |c| boxed(CosineSimilarity::from_config(c)),
    },
    Entry {
        class_name: "Dice",
        aliases: &["dice"],
        family: Family::Segmentation,
        description: "1 - 2 * sum(y * p) / (sum(y) + sum(p)), over all or chosen axes",
        build: |c| boxed(Dice::from_config(c)),
    },
    Entry {
        class_name: "Tversky",
        aliases: &["tversky"],
        family: Family::Segmentation,
        description: "1 - TP / (TP + alpha * FN + beta * FP) (Keras' weighting)",
        build: |c| boxed(Tversky::from_config(c)),
    },
    Entry {
        class_name: "Circle",
        aliases: &["circle"],
        family: Family::MetricLearning,
        description: "circle loss over the batch's positive and negative pairs",
        build: |c| boxed(Circle::from_config(c)),
    },
    Entry {
        class_name: "CTC",
        aliases: &["ctc"],
        family: Family::Sequence,
        description: "connectionist temporal classification of logit sequences",
        build: |c| boxed(Ctc::from_config(c)),
    },
    Entry {
        class_name: "SigmoidFocalCrossEntropy",
        aliases: &["sigmoid_focal_crossentropy"],
        family: Family::Probabilistic,
        description: "TFA focal loss: sum over the last axis of alpha * (1 - p_t)^gamma * BCE",
        build: |c| boxed(SigmoidFocalCrossEntropy::from_config(c)),
    },
    Entry {
        class_name: "SparsemaxLoss",
        aliases: &["sparsemax_loss"],
        family: Family::Probabilistic,
        description: "TFA sparsemax loss of logits against a target distribution",
        build: |c| boxed(SparsemaxLoss::from_config(c)),
    },
    Entry {
        class_name: "WeightedKappaLoss",
        aliases: &["weighted_kappa_loss", "cohen_kappa_loss"],
        family: Family::Probabilistic,
        description: "TFA ordinal loss: ln of the weighted-kappa disagreement ratio",
        build: |c| boxed(WeightedKappaLoss::from_config(c)),
    },
    Entry {
        class_name: "PinballLoss",
        aliases: &["pinball_loss"],
        family: Family::Regression,
        description: "TFA quantile loss: mean of max(tau * d, (tau - 1) * d), d = y - p",
        build: |c| boxed(PinballLoss::from_config(c)),
    },
    Entry {
        class_name: "GIoULoss",
        aliases: &["giou_loss"],
        family: Family::Detection,
        description: "TFA box loss 1 - GIoU (modes giou, iou, diou, ciou), boxes [ymin, xmin, ymax, xmax]",
        build: |c| boxed(GIoULoss::from_config(c)),
    },
    Entry {
        class_name: "TripletSemiHardLoss",
        aliases: &["triplet_semihard_loss"],
        family: Family::MetricLearning,
        description: "TFA triplet loss with semi-hard negative mining over the batch",
        build: |c| boxed(TripletSemiHardLoss::from_config(c)),
    },
    Entry {
        class_name: "TripletHardLoss",
        aliases: &["triplet_hard_loss"],
        family: Family::MetricLearning,
        description: "TFA triplet loss with batch-hard mining (hinge or soft)",
        build: |c| boxed(TripletHardLoss::from_config(c)),
    },
    Entry {
        class_name: "ContrastiveLoss",
        aliases: &["contrastive_loss"],
        family: Family::MetricLearning,
        description: "TFA contrastive loss on pair distances: y d^2 + (1 - y) max(margin - d, 0)^2",
        build: |c| boxed(ContrastiveLoss::from_config(c)),
    },
    Entry {
        class_name: "NpairsLoss",
        aliases: &["npairs_loss"],
        family: Family::MetricLearning,
        description: "TFA N-pairs loss: softmax cross-entropy over similarity logits",
        build: |c| boxed(NpairsLoss::from_config(c)),
    },
    Entry {
        class_name: "NpairsMultilabelLoss",
        aliases: &["npairs_multilabel_loss"],
        family: Family::MetricLearning,
        description: "TFA N-pairs loss with multilabel targets",
        build: |c| boxed(NpairsMultilabelLoss::from_config(c)),
    },
    Entry {
        class_name: "LiftedStructLoss",
        aliases: &["lifted_struct_loss"],
        family: Family::MetricLearning,
        description: "TFA lifted structured loss over the batch's positive pairs",
        build: |c| boxed(LiftedStructLoss::from_config(c)),
    },
    Entry {
        class_name: "NLLLoss",
        aliases: &["nll_loss"],
        family: Family::PyTorch,
        description: "negative log-likelihood of log-probabilities, weight and ignore_index",
        build: |c| boxed(NLLLoss::from_config(c)),
    },
    Entry {
        class_name: "CrossEntropyLoss",
        aliases: &["cross_entropy"],
        family: Family::PyTorch,
        description: "softmax cross-entropy of logits, index or probability targets, label smoothing",
        build: |c| boxed(CrossEntropyLoss::from_config(c)),
    },
    Entry {
        class_name: "SmoothL1Loss",
        aliases: &["smooth_l1_loss"],
        family: Family::PyTorch,
        description: "element-wise 0.5 d^2 / beta below beta, |d| - beta / 2 above",
        build: |c| boxed(SmoothL1Loss::from_config(c)),
    },
    Entry {
        class_name: "MarginRankingLoss",
        aliases: &["margin_ranking_loss"],
        family: Family::PyTorch,
        description: "max(0, -y (x1 - x2) + margin), y_pred = [x1, x2]",
        build: |c| boxed(MarginRankingLoss::from_config(c)),
    },
    Entry {
        class_name: "HingeEmbeddingLoss",
        aliases: &["hinge_embedding_loss"],
        family: Family::PyTorch,
        description: "x for y = 1, max(0, margin - x) for y = -1",
        build: |c| boxed(HingeEmbeddingLoss::from_config(c)),
    },
    Entry {
        class_name: "SoftMarginLoss",
        aliases: &["soft_margin_loss"],
        family: Family::PyTorch,
        description: "element-wise ln(1 + exp(-y x))",
        build: |c| boxed(SoftMarginLoss::from_config(c)),
    },
    Entry {
        class_name: "MultiLabelSoftMarginLoss",
        aliases: &["multilabel_soft_margin_loss"],
        family: Family::PyTorch,
        description: "per-sample mean of binary cross-entropy with logits",
        build: |c| boxed(MultiLabelSoftMarginLoss::from_config(c)),
    },
    Entry {
        class_name: "MultiLabelMarginLoss",
        aliases: &["multilabel_margin_loss"],
        family: Family::PyTorch,
        description: "hinge between each target class and each non-target class",
        build: |c| boxed(MultiLabelMarginLoss::from_config(c)),
    },
    Entry {
        class_name: "CosineEmbeddingLoss",
        aliases: &["cosine_embedding_loss"],
        family: Family::PyTorch,
        description: "1 - cos(x1, x2) for y = 1, max(0, cos - margin) for y = -1",
        build: |c| boxed(CosineEmbeddingLoss::from_config(c)),
    },
    Entry {
        class_name: "MultiMarginLoss",
        aliases: &["multi_margin_loss"],
        family: Family::PyTorch,
        description: "multi-class hinge over all wrong classes",
        build: |c| boxed(MultiMarginLoss::from_config(c)),
    },
    Entry {
        class_name: "TripletMarginLoss",
        aliases: &["triplet_margin_loss"],
        family: Family::PyTorch,
        description: "max(d(a, p) - d(a, n) + margin, 0) on given triplets",
        build: |c| boxed(TripletMarginLoss::from_config(c)),
    },
    Entry {
        class_name: "GaussianNLLLoss",
        aliases: &["gaussian_nll_loss"],
        family: Family::PyTorch,
        description: "Gaussian negative log-likelihood with predicted variance",
        build: |c| boxed(GaussianNLLLoss::from_config(c)),
    },
    Entry {
        class_name: "PoissonNLLLoss",
        aliases: &["poisson_nll_loss"],
        family: Family::PyTorch,
        description: "Poisson negative log-likelihood, log input or rate",
        build: |c| boxed(PoissonNLLLoss::from_config(c)),
    },
    Entry {
        class_name: "KLDivLoss",
        aliases: &["kl_div"],
        family: Family::PyTorch,
        description: "KL divergence of log-probabilities (batchmean for the true KL)",
        build: |c| boxed(KLDivLoss::from_config(c)),
    },
];

struct Registered {
    factory: Arc<Factory>,
    description: String,
}

static CUSTOM: RwLock<BTreeMap<String, Registered>> = RwLock::new(BTreeMap::new());

fn builtin(name: &str) -> Option<&'static Entry> {
    BUILTINS.iter().find(|e| e.class_name == name || e.aliases.contains(&name))
}

fn all_names() -> Vec<String> {
    let mut names: Vec<String> = BUILTINS
        .iter()
        .flat_map(|e| std::iter::once(e.class_name).chain(e.aliases.iter().copied()))
        .map(String::from)
        .collect();
    if let Ok(custom) = CUSTOM.read() {
        names.extend(custom.keys().cloned());
    }
    names
}

fn unknown(name: &str) -> Error {
    let mut scored: Vec<(f64, String)> = all_names()
        .into_iter()
        .map(|n| (strsim::normalized_levenshtein(&name.to_lowercase(), &n.to_lowercase()), n))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let suggestions: Vec<String> = scored.into_iter().take(3).map(|(_, n)| n).collect();
    Error::UnknownName { kind: "loss".into(), name: name.into(), suggestions: suggestions.join(", ") }
}

/// Builds the loss called `name` (a Keras class name, function name or alias, exact and
/// case-sensitive as in Keras, or a name given to [`register`]) with its defaults.
///
/// Besides Keras 3's names, the Keras 2 names `logcosh`, `huber_loss` and
/// `kullback_leibler_divergence` are accepted. An unknown name is an error listing the three
/// closest known names.
pub fn get(name: &str) -> Result<Box<dyn Loss>> {
    build(name, &Value::Null)
}

/// Builds the loss called `name` from a config object of Keras constructor keys
/// (`{"delta": 0.5, "reduction": "sum"}`); `Value::Null` means all defaults.
pub fn build(name: &str, config: &Value) -> Result<Box<dyn Loss>> {
    if let Some(entry) = builtin(name) {
        return (entry.build)(config);
    }
    let factory = CUSTOM.read().ok().and_then(|m| m.get(name).map(|r| r.factory.clone()));
    match factory {
        Some(f) => f(config),
        None => Err(unknown(name)),
    }
}

/// Builds a loss from a serialized form: `{"class_name": "Huber", "config": {...}}` (what
/// [`serialize`] and Keras' `keras.losses.serialize` write), or a bare name string.
pub fn from_config(json: &Value) -> Result<Box<dyn Loss>> {
    match json {
        Value::String(name) => get(name),
        Value::Object(m) => {
            let class = m.get("class_name").and_then(Value::as_str).ok_or_else(|| {
                Error::Config(format!("expected {{\"class_name\": ..., \"config\": {{...}}}}, got {json}"))
            })?;
            build(class, m.get("config").unwrap_or(&Value::Null))
        }
        other => Err(Error::Config(format!("expected a loss name or {{\"class_name\", \"config\"}}, got {other}"))),
    }
}

/// Keras' `keras.losses.serialize`: `{"module", "class_name", "config", "registered_name"}`.
/// `from_config(&serialize(loss))` rebuilds an equal loss.
pub fn serialize(loss: &dyn Loss) -> Value {
    json!({
        "module": "keras.losses",
        "class_name": loss.class_name(),
        "config": loss.config(),
        "registered_name": Value::Null,
    })
}

/// Registers a custom loss under `name`, so [`get`], [`build`] and [`from_config`] find it.
/// Errors if `name` is already a built-in name.
pub fn register(
    name: &str,
    description: &str,
    factory: impl Fn(&Value) -> Result<Box<dyn Loss>> + Send + Sync + 'static,
) -> Result<()> {
    if builtin(name).is_some() {
        return Err(Error::InvalidParameter {
            loss: "register".into(),
            param: "name".into(),
            value: format!("{name:?}"),
            expected: "a name that is not a built-in loss".into(),
        });
    }
    let mut map = CUSTOM.write().map_err(|_| Error::Config("loss registry lock poisoned".into()))?;
    map.insert(name.to_string(), Registered { factory: Arc::new(factory), description: description.into() });
    Ok(())
}

/// Every known loss: the built-ins in family order, then registered custom losses.
pub fn list() -> Vec<LossInfo> {
    let mut out: Vec<LossInfo> = BUILTINS
        .iter()
        .map(|e| LossInfo {
            class_name: e.class_name.into(),
            aliases: e.aliases.iter().map(|s| s.to_string()).collect(),
            family: e.family,
            description: e.description.into(),
        })
        .collect();
    if let Ok(custom) = CUSTOM.read() {
        out.extend(custom.iter().map(|(name, r)| LossInfo {
            class_name: name.clone(),
            aliases: vec![],
            family: Family::Custom,
            description: r.description.clone(),
        }));
    }
    out.sort_by_key(|i| i.family);
    out
}
