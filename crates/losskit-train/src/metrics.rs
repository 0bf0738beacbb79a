//! Metrics by Keras name: accuracy (resolved like Keras), the explicit accuracies, and any
//! loss name (`"mae"`, `"mse"`, ...), each averaged over every sample seen.

use losskit::{no_grad, Error, Loss, Reduction, Result, Tensor};
use losskit_tensor::Storage;
use std::sync::Arc;

/// A resolved metric: how one batch contributes `(sum, count)` to its running mean.
#[derive(Clone)]
pub enum Metric {
    /// `round(p > 0.5) == y`, averaged over the last axis per sample.
    BinaryAccuracy,
    /// `argmax(p) == argmax(y)`.
    CategoricalAccuracy,
    /// `argmax(p) == y` for integer labels.
    SparseCategoricalAccuracy,
    /// The per-sample values of a loss (e.g. `"mse"`), unweighted.
    Loss(Arc<dyn Loss>),
}

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metric::BinaryAccuracy => write!(f, "BinaryAccuracy"),
            Metric::CategoricalAccuracy => write!(f, "CategoricalAccuracy"),
            Metric::SparseCategoricalAccuracy => write!(f, "SparseCategoricalAccuracy"),
            Metric::Loss(l) => write!(f, "Loss({})", l.name()),
        }
    }
}

/// Checks a metric name without shapes (done at `compile`).
pub fn check_name(name: &str) -> Result<()> {
    match name {
        "accuracy" | "acc" | "binary_accuracy" | "categorical_accuracy" | "sparse_categorical_accuracy" => Ok(()),
        other => losskit::get(other).map(|_| ()).map_err(|_| Error::UnknownName {
            kind: "metric".into(),
            name: other.into(),
            suggestions: "accuracy, binary_accuracy, categorical_accuracy, sparse_categorical_accuracy, or a loss name (mae, mse, ...)".into(),
        }),
    }
}

/// Resolves a metric name for targets/predictions of these shapes. `"accuracy"` follows
/// Keras: binary when the prediction's last axis is 1; sparse when `y_true` has lower rank or
/// a last axis of 1 against several classes; categorical otherwise.
pub fn resolve(name: &str, y_true: &[usize], y_pred: &[usize]) -> Result<Metric> {
    Ok(match name {
        "accuracy" | "acc" => {
            let p_last = y_pred.last().copied().unwrap_or(1);
            let t_last = y_true.last().copied().unwrap_or(1);
            if p_last == 1 {
                Metric::BinaryAccuracy
            } else if y_true.len() < y_pred.len() || (t_last == 1 && p_last > 1) {
                Metric::SparseCategoricalAccuracy
            } else {
                Metric::CategoricalAccuracy
            }
        }
        "binary_accuracy" => Metric::BinaryAccuracy,
        "categorical_accuracy" => Metric::CategoricalAccuracy,
        "sparse_categorical_accuracy" => Metric::SparseCategoricalAccuracy,
        other => {
            let mut cfg = losskit::get(other)?.config();
            cfg["reduction"] = serde_json::json!(Reduction::None.keras_name());
            let class = losskit::get(other)?.class_name().to_string();
            Metric::Loss(Arc::from(losskit::build(&class, &cfg)?))
        }
    })
}

/// The index of each row's largest value (`cols` values per row; the first at a tie, 0 when
/// no value beats -inf, e.g. an all-NaN row).
fn argmax_rows<T: Copy + Into<f64>>(v: &[T], cols: usize) -> Vec<usize> {
    v.chunks(cols.max(1))
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    let x = x.into();
                    if x > bv {
                        (i, x)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        })
        .collect()
}

/// [`argmax_rows`] of a tensor's values, read in place when they are contiguous (a batch's
/// predictions are not copied every step).
fn argmax_of(t: &Tensor, cols: usize) -> Vec<usize> {
    let in_place = match t.storage() {
        Storage::F32(a) => a.as_slice().map(|s| argmax_rows(s, cols)),
        Storage::F64(a) => a.as_slice().map(|s| argmax_rows(s, cols)),
    };
    in_place.unwrap_or_else(|| argmax_rows(&t.to_vec::<f64>(), cols))
}

impl Metric {
    /// `(Σ per-sample values, number of values)` for one batch.
    pub fn batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<(f64, f64)> {
        let cols = y_pred.shape().last().copied().unwrap_or(1).max(1);
        match self {
            Metric::BinaryAccuracy => {
                let (t, p) = (y_true.to_vec::<f64>(), y_pred.to_vec::<f64>());
                if t.len() != p.len() {
                    return Err(Error::Shape {
                        op: "binary_accuracy".into(),
                        msg: format!("y_true {:?} vs y_pred {:?}", y_true.shape(), y_pred.shape()),
                    });
                }
                let hits: f64 =
                    t.iter().zip(&p).map(|(&t, &p)| f64::from(u8::from(f64::from(u8::from(p > 0.5)) == t))).sum();
                Ok((hits / cols as f64, (p.len() / cols) as f64))
            }
            Metric::CategoricalAccuracy => {
                let (a, b) = (argmax_of(y_true, cols), argmax_of(y_pred, cols));
                Ok((a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64, a.len() as f64))
            }
            Metric::SparseCategoricalAccuracy => {
                let t = y_true.to_vec::<f64>();
                let b = argmax_of(y_pred, cols);
                if t.len() != b.len() {
                    return Err(Error::Shape {
                        op: "sparse_categorical_accuracy".into(),
                        msg: format!("labels {:?} vs predictions {:?}", y_true.shape(), y_pred.shape()),
                    });
                }
                Ok((t.iter().zip(&b).filter(|(&t, &k)| t == k as f64).count() as f64, b.len() as f64))
            }
            Metric::Loss(loss) => {
                let v = no_grad(|| loss.call(y_true, &y_pred.detach(), None))?.to_vec::<f64>();
                Ok((v.iter().sum(), v.len() as f64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_reads_predictions_in_place_with_the_copys_result() {
        // Rows: a clear winner, a tie (the first wins), all NaN (0), -inf and a value.
        let p =
            [0.1, 0.7, 0.2, 0.4, 0.1, 0.4, f64::NAN, f64::NAN, f64::NAN, f64::NEG_INFINITY, -5.0, f64::NEG_INFINITY];
        let f64s = Tensor::from_vec(p.to_vec(), &[4, 3]).unwrap();
        let f32s = Tensor::from_vec(p.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[4, 3]).unwrap();
        assert_eq!(argmax_of(&f64s, 3), vec![1, 0, 0, 1]);
        assert_eq!(argmax_of(&f32s, 3), vec![1, 0, 0, 1]);
        // A transposed tensor (a view where it is not copied): the same answer as the copy.
        let t = Tensor::from_vec(p.to_vec(), &[3, 4]).unwrap().transpose(None).unwrap();
        assert_eq!(argmax_of(&t, 3), argmax_rows(&t.to_vec::<f64>(), 3));
        let labels = Tensor::from_vec(vec![1.0f32, 2.0, 0.0, 1.0], &[4]).unwrap();
        let (hits, n) = Metric::SparseCategoricalAccuracy.batch(&labels, &f32s).unwrap();
        assert_eq!((hits, n), (3.0, 4.0));
    }
}
