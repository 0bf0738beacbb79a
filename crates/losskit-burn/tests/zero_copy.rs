//! The adapter reads burn's buffer of `y_pred` instead of copying it: a counting allocator sees
//! no allocation of `y_pred`'s size in an evaluation forward on NdArray or Flex (a built-in
//! loss reads the backend's buffer in place), and only the gradient's in a training step.
//! One test in this binary, so nothing else allocates meanwhile.

#![allow(deprecated)] // burn 0.22 deprecates NdArray (for Flex); both are tested.

use burn::tensor::{Device, Int, Tensor, TensorData};
#[path = "../../losskit/tests/adapters/big_allocations.rs"]
mod big_allocations;
use big_allocations::big_allocations;

#[test]
fn y_pred_is_read_in_place() {
    let (rows, cols) = (256, 1000);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
    let y: Vec<i64> = (0..rows as i64).map(|i| (i * 7) % cols as i64).collect();
    let ce = losskit_burn::get("sparse_categorical_crossentropy").unwrap().from_logits(true).unwrap();
    for device in [Device::ndarray(), Device::flex()] {
        let labels = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [rows]), &device);
        // Evaluation: the model's output handed over, no gradient.
        let logits = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), &device);
        let n = big_allocations(|| {
            std::hint::black_box(ce.forward(logits, labels.clone()).unwrap().into_scalar::<f32>());
        });
        assert_eq!(n, 0, "{device:?}: evaluation copied y_pred");
        // Evaluation on a tensor the caller keeps (shared): read in place all the same.
        let kept = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), &device);
        let n = big_allocations(|| {
            std::hint::black_box(ce.forward(kept.clone(), labels.clone()).unwrap().into_scalar::<f32>());
        });
        assert_eq!(n, 0, "{device:?}: evaluation of a shared tensor copied y_pred");
        // A training step: the gradient is the one buffer of y_pred's size.
        let ad = device.clone().autodiff();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [rows]), &ad);
        let leaf = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, cols]), &ad).require_grad();
        let n = big_allocations(|| {
            let l = ce.forward(leaf.clone(), labels.clone()).unwrap();
            std::hint::black_box(leaf.grad(&l.backward()).unwrap());
        });
        // The loss runs on the backend's buffer in place.
        assert_eq!(n, 1, "{device:?}: big allocations in a training step");
    }
}
