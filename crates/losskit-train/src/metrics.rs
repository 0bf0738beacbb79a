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

/// A tensor's values as `f64`, read in place when they are contiguous (a batch's targets and
/// predictions are not copied every step), else copied once.
enum Values<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    Copied(Vec<f64>),
}

impl Values<'_> {
    fn of(t: &Tensor) -> Values<'_> {
        let in_place = match t.storage() {
            Storage::F32(a) => a.as_slice().map(Values::F32),
            Storage::F64(a) => a.as_slice().map(Values::F64),
        };
        in_place.unwrap_or_else(|| Values::Copied(t.to_vec::<f64>()))
    }

    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::Copied(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> f64 {
        match self {
            Values::F32(v) => f64::from(v[i]),
            Values::F64(v) => v[i],
            Values::Copied(v) => v[i],
        }
    }

    /// The index of the largest value in row `r` of `cols` values (the first at a tie, 0 when
    /// no value beats -inf, e.g. an all-NaN row).
    fn argmax(&self, r: usize, cols: usize) -> usize {
        let end = ((r + 1) * cols).min(self.len());
        (r * cols..end)
            .fold((0, f64::NEG_INFINITY), |(bi, bv), i| {
                let x = self.get(i);
                if x > bv {
                    (i - r * cols, x)
                } else {
                    (bi, bv)
                }
            })
            .0
    }

    /// Rows of `cols` values.
    fn rows(&self, cols: usize) -> usize {
        self.len().div_ceil(cols.max(1))
    }
}

impl Metric {
    /// `(Σ per-sample values, number of values)` for one batch.
    pub fn batch(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<(f64, f64)> {
        let cols = y_pred.shape().last().copied().unwrap_or(1).max(1);
        match self {
            Metric::BinaryAccuracy => {
                let (t, p) = (Values::of(y_true), Values::of(y_pred));
                if t.len() != p.len() {
                    return Err(Error::Shape {
                        op: "binary_accuracy".into(),
                        msg: format!("y_true {:?} vs y_pred {:?}", y_true.shape(), y_pred.shape()),
                    });
                }
                let hits = (0..p.len()).filter(|&i| f64::from(u8::from(p.get(i) > 0.5)) == t.get(i)).count();
                Ok((hits as f64 / cols as f64, (p.len() / cols) as f64))
            }
            Metric::CategoricalAccuracy => {
                let (t, p) = (Values::of(y_true), Values::of(y_pred));
                let rows = t.rows(cols).min(p.rows(cols));
                let hits = (0..rows).filter(|&r| t.argmax(r, cols) == p.argmax(r, cols)).count();
                Ok((hits as f64, t.rows(cols) as f64))
            }
            Metric::SparseCategoricalAccuracy => {
                let (t, p) = (Values::of(y_true), Values::of(y_pred));
                if t.len() != p.rows(cols) {
                    return Err(Error::Shape {
                        op: "sparse_categorical_accuracy".into(),
                        msg: format!("labels {:?} vs predictions {:?}", y_true.shape(), y_pred.shape()),
                    });
                }
                let hits = (0..t.len()).filter(|&r| t.get(r) == p.argmax(r, cols) as f64).count();
                Ok((hits as f64, t.len() as f64))
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
        let argmax = |t: &Tensor| (0..4).map(|r| Values::of(t).argmax(r, 3)).collect::<Vec<_>>();
        assert_eq!(argmax(&f64s), vec![1, 0, 0, 1]);
        assert_eq!(argmax(&f32s), vec![1, 0, 0, 1]);
        // A transposed tensor: the same answer as its copy.
        let t = Tensor::from_vec(p.to_vec(), &[3, 4]).unwrap().transpose(None).unwrap();
        let rows: Vec<usize> = (0..4).map(|r| Values::of(&t).argmax(r, 3)).collect();
        let copy = t.to_vec::<f64>();
        let want: Vec<usize> = copy
            .chunks(3)
            .map(|r| r.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0)
            .collect();
        assert_eq!(rows, want);
        let labels = Tensor::from_vec(vec![1.0f32, 2.0, 0.0, 1.0], &[4]).unwrap();
        assert_eq!(Metric::SparseCategoricalAccuracy.batch(&labels, &f32s).unwrap(), (3.0, 4.0));
        let one_hot =
            Tensor::from_vec(vec![0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[4, 3]).unwrap();
        assert_eq!(Metric::CategoricalAccuracy.batch(&one_hot, &f32s).unwrap(), (3.0, 4.0));
        let bt = Tensor::from_vec(vec![1.0f32, 0.0, 1.0], &[3, 1]).unwrap();
        let bp = Tensor::from_vec(vec![0.7f64, 0.2, 0.5], &[3, 1]).unwrap();
        assert_eq!(Metric::BinaryAccuracy.batch(&bt, &bp).unwrap(), (2.0, 3.0));
    }
}
