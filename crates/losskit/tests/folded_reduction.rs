//! On large inputs the built-in kernel losses fold the reduction's per-row weights into the
//! kernel's gradient (`Loss::single_row_kernel`): the loss and its gradient must be those of the
//! plain path (`per_sample`, then `reduce_weighted_values`, differentiated through the tape), for
//! every reduction, with sample weights and masks, for upstream gradients other than 1, with NaN
//! rows, in f32 and f64.

use losskit::{reduce_weighted_values, Loss, Tensor};
use losskit_tensor::Element;
use serde_json::json;

/// 512 × 131 = 67 072 values: above the folding threshold (2¹⁶), rows not a power of two.
const ROWS: usize = 512;
const COLS: usize = 131;

fn loss(class_name: &str, config: serde_json::Value) -> Box<dyn Loss> {
    losskit::from_config(&json!({"class_name": class_name, "config": config})).expect("valid config")
}

/// Predictions in (0.02, 0.98), usable as probabilities and as logits.
fn predictions() -> Vec<f64> {
    (0..ROWS * COLS).map(|i| 0.02 + 0.96 * (((i * 7919) % 1009) as f64 / 1009.0)).collect()
}

fn dense_targets() -> Vec<f64> {
    (0..ROWS * COLS).map(|i| if (i * 31) % 7 < 2 { 1.0 } else { 0.0 }).collect()
}

fn labels() -> Vec<f64> {
    (0..ROWS).map(|r| ((r * 37) % COLS) as f64).collect()
}

fn class_weights() -> Vec<f64> {
    (0..COLS).map(|c| 0.5 + (c % 4) as f64 * 0.25).collect()
}

fn sample_weights() -> Tensor {
    Tensor::from_vec((0..ROWS).map(|r| (r % 5) as f64 * 0.5).collect::<Vec<_>>(), &[ROWS]).expect("shape")
}

/// One call's inputs: targets, tracked predictions, weights, mask, and the upstream gradient.
#[derive(Clone, Copy)]
struct Call<'a> {
    y_true: &'a Tensor,
    y_pred: &'a Tensor,
    w: Option<&'a Tensor>,
    m: Option<&'a Tensor>,
    scale: f64,
}

/// The loss and `∂(scale·loss)/∂y_pred` through `Loss::call_masked` (folded when it applies).
fn through_call(l: &dyn Loss, c: Call<'_>) -> (f64, Tensor) {
    value_and_grad(&l.call_masked(c.y_true, c.y_pred, c.w, c.m).expect("valid inputs"), c)
}

/// The loss' value and `∂(scale·out)/∂y_pred`.
fn value_and_grad(out: &Tensor, c: Call<'_>) -> (f64, Tensor) {
    let seeded = if c.scale == 1.0 { out.clone() } else { out.mul_scalar(c.scale).expect("scalar") };
    let grads = seeded.backward().expect("scalar loss");
    (out.to_scalar().expect("scalar"), grads.get(c.y_pred).expect("y_pred is tracked").clone())
}

/// The same through the plain path, spelled out: per-sample values on the tape, their own mask,
/// the input mask, the weights and the reduction, differentiated by autodiff.
fn through_tape(l: &dyn Loss, c: Call<'_>) -> (f64, Tensor) {
    let Call { y_true, y_pred, w, m, .. } = c;
    let y_true = y_true.to_dtype(y_pred.dtype());
    let (t, p) = losskit::squeeze_or_expand_to_same_rank(&y_true, y_pred).expect("aligned");
    let per = l.per_sample(&t, &p).expect("valid inputs");
    let mask = match (m, per.mask) {
        (Some(a), Some(b)) => Some(a.to_dtype(b.dtype()).mul(&b).expect("same shape")),
        (a, b) => a.cloned().or(b),
    };
    let out = reduce_weighted_values(l.name(), &per.values, w, mask.as_ref(), l.reduction()).expect("reduced");
    value_and_grad(&out, c)
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, rtol: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let (a, b) = (a.to_vec::<f64>(), b.to_vec::<f64>());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= rtol * y.abs().max(1e-30);
        assert!(same, "{what}: gradient [{i}] {x} vs {y}");
    }
}

/// Every folding loss, on its kind of targets (`true`: class indices).
fn cases() -> Vec<(Box<dyn Loss>, bool)> {
    vec![
        (loss("MeanSquaredError", json!({})), false),
        (loss("MeanAbsoluteError", json!({"reduction": "sum"})), false),
        (loss("Huber", json!({"delta": 0.3})), false),
        (loss("LogCosh", json!({})), false),
        (loss("CosineSimilarity", json!({"axis": -1})), false),
        (loss("BinaryCrossentropy", json!({"from_logits": true, "label_smoothing": 0.1})), false),
        (loss("BinaryCrossentropy", json!({})), false),
        (loss("BinaryFocalCrossentropy", json!({"gamma": 2.0, "apply_class_balancing": true})), false),
        (loss("CategoricalCrossentropy", json!({"from_logits": true, "label_smoothing": 0.2})), false),
        (loss("CategoricalFocalCrossentropy", json!({})), false),
        (loss("CategoricalHinge", json!({"reduction": "mean_with_sample_weight"})), false),
        (loss("SparseCategoricalCrossentropy", json!({"from_logits": true})), true),
        (loss("SparseCategoricalCrossentropy", json!({"reduction": "sum"})), true),
        (loss("SparseCategoricalCrossentropy", json!({"from_logits": true, "ignore_class": 3})), true),
        (
            loss("SparseCategoricalCrossentropy", json!({"ignore_class": 0, "reduction": "mean_with_sample_weight"})),
            true,
        ),
        // PyTorch's: class indices (its own mask and a per-row factor 1/w[y]), probabilities.
        (loss("CrossEntropyLoss", json!({})), true),
        (loss("CrossEntropyLoss", json!({"weight": class_weights(), "ignore_index": 5, "label_smoothing": 0.1})), true),
        (loss("CrossEntropyLoss", json!({"weight": class_weights(), "reduction": "sum"})), true),
        (loss("CrossEntropyLoss", json!({"label_smoothing": 0.05})), false),
        // Probabilities with class weights go through the tape: no kernel takes the offer.
        (loss("CrossEntropyLoss", json!({"weight": class_weights()})), false),
    ]
}

fn inputs<T: Element>(sparse: bool) -> (Tensor, Tensor) {
    let dtype = T::DTYPE;
    let y_pred = Tensor::from_vec(predictions(), &[ROWS, COLS]).expect("shape").to_dtype(dtype).requires_grad();
    let y_true = if sparse {
        Tensor::from_vec(labels(), &[ROWS]).expect("shape")
    } else {
        Tensor::from_vec(dense_targets(), &[ROWS, COLS]).expect("shape")
    };
    (y_true.to_dtype(dtype), y_pred)
}

fn check_all<T: Element>(rtol: f64) {
    let w = sample_weights();
    let mask = Tensor::from_vec((0..ROWS).map(|r| if r % 3 == 0 { 0.0 } else { 1.0 }).collect::<Vec<_>>(), &[ROWS])
        .expect("shape");
    for (l, sparse) in cases() {
        let (y_true, y_pred) = inputs::<T>(sparse);
        for (wname, w) in [("no weights", None), ("weights", Some(&w))] {
            for (mname, m) in [("no mask", None), ("mask", Some(&mask))] {
                for scale in [1.0, -2.5] {
                    let what = format!("{} ({:?}), {wname}, {mname}, upstream {scale}", l.name(), l.reduction());
                    let c = Call { y_true: &y_true, y_pred: &y_pred, w, m, scale };
                    let (v1, g1) = through_call(l.as_ref(), c);
                    let (v2, g2) = through_tape(l.as_ref(), c);
                    assert_eq!(v1.to_bits(), v2.to_bits(), "{what}: value {v1} vs {v2}");
                    assert_close(&what, &g1, &g2, rtol);
                }
            }
        }
    }
}

#[test]
fn folded_losses_equal_the_plain_path_in_f32() {
    check_all::<f32>(1e-6);
}

#[test]
fn folded_losses_equal_the_plain_path_in_f64() {
    check_all::<f64>(1e-14);
}

/// The address of a gradient's buffer.
fn buffer(t: &Tensor) -> *const f32 {
    f32::view(t.storage()).expect("f32").as_ptr()
}

#[test]
fn a_folded_gradient_is_the_kernel_buffer_and_small_inputs_are_not_folded() {
    // Folded: backward seeded with 1 hands out the buffer the kernel wrote, the same on every
    // backward of the same loss value (the plain path scales into a new buffer each time), with
    // and without a mask of the loss' own (and PyTorch's per-row factor).
    let (y_true, y_pred) = inputs::<f32>(true);
    for (class, config) in [
        ("SparseCategoricalCrossentropy", json!({"from_logits": true})),
        ("SparseCategoricalCrossentropy", json!({"from_logits": true, "ignore_class": 3})),
        ("CrossEntropyLoss", json!({"weight": class_weights(), "ignore_index": 5})),
    ] {
        let folded = loss(class, config);
        let out = folded.call(&y_true, &y_pred, None).expect("valid");
        let (a, b) = (out.backward().expect("scalar"), out.backward().expect("scalar"));
        assert_eq!(buffer(a.get(&y_pred).expect("tracked")), buffer(b.get(&y_pred).expect("tracked")));
    }
    // Below 2¹⁶ values: the plain path, a new buffer per backward, the same numbers as spelled out.
    let small_pred = Tensor::from_vec(predictions()[..64 * COLS].to_vec(), &[64, COLS])
        .expect("shape")
        .to_dtype(losskit::DType::F32)
        .requires_grad();
    let small_true = Tensor::from_vec(labels()[..64].to_vec(), &[64]).expect("shape");
    let plain = loss("SparseCategoricalCrossentropy", json!({"ignore_class": 3}));
    let out = plain.call(&small_true, &small_pred, None).expect("valid");
    let (a, b) = (out.backward().expect("scalar"), out.backward().expect("scalar"));
    assert_ne!(buffer(a.get(&small_pred).expect("tracked")), buffer(b.get(&small_pred).expect("tracked")));
    let c = Call { y_true: &small_true, y_pred: &small_pred, w: None, m: None, scale: 1.0 };
    let (v1, g1) = through_call(plain.as_ref(), c);
    let (v2, g2) = through_tape(plain.as_ref(), c);
    assert_eq!(v1, v2);
    assert_close("small input", &g1, &g2, 1e-6);
}

#[test]
fn nan_rows_stay_nan_and_masked_rows_get_zero() {
    let mut p = predictions();
    p[5 * COLS + 7] = f64::NAN; // row 5
    p[6 * COLS + 2] = f64::NAN; // row 6: masked below
    let y_pred = Tensor::from_vec(p, &[ROWS, COLS]).expect("shape").to_dtype(losskit::DType::F32).requires_grad();
    let y_true = Tensor::from_vec(dense_targets(), &[ROWS, COLS]).expect("shape");
    let mut keep = vec![1.0; ROWS];
    keep[6] = 0.0;
    keep[9] = 0.0;
    let mask = Tensor::from_vec(keep, &[ROWS]).expect("shape");
    let l = loss("MeanSquaredError", json!({}));
    let c = Call { y_true: &y_true, y_pred: &y_pred, w: None, m: Some(&mask), scale: 1.0 };
    let (v, g) = through_call(l.as_ref(), c);
    let (v2, g2) = through_tape(l.as_ref(), c);
    assert!(v.is_nan() && v2.is_nan(), "a NaN prediction makes the mean NaN: {v}, {v2}");
    let g = g.to_vec::<f64>();
    assert!(g[5 * COLS + 7].is_nan(), "the NaN prediction's gradient is NaN");
    assert!(g[9 * COLS..10 * COLS].iter().all(|&x| x == 0.0), "a masked row has zero gradient");
    assert!(g[6 * COLS + 2].is_nan(), "NaN · 0 stays NaN, as in the plain path");
    assert_close("NaN rows", &Tensor::from_vec(g, &[ROWS, COLS]).expect("shape"), &g2, 1e-6);
}
