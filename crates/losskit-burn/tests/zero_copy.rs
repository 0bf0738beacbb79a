//! The adapter reads burn's buffer of `y_pred` instead of copying it: a counting allocator sees
//! no allocation of `y_pred`'s size in an evaluation forward on NdArray or Flex (a built-in
//! loss reads the backend's buffer in place), and only the gradient's in a training step.
//! A loss without a row kernel (Dice, a `CustomLoss` of tensor ops) runs through losskit's tape
//! on the backend's buffers lent for the call: no more buffers of `y_pred`'s size than
//! losskit's own call on tensors built beforehand (no copy of `y_pred` nor of float targets).
//! One test in this binary (the two checks run in turn), so nothing else allocates meanwhile.

#![allow(deprecated)] // burn 0.22 deprecates NdArray (for Flex); both are tested.

use burn::tensor::{Device, Int, Tensor, TensorData};
#[path = "../../losskit/tests/adapters/big_allocations.rs"]
mod big_allocations;
use big_allocations::big_allocations;

#[test]
fn y_pred_and_y_true_are_read_in_place() {
    built_in_losses_read_y_pred_in_place();
    losses_on_the_tape_read_lent_buffers();
}

fn built_in_losses_read_y_pred_in_place() {
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

fn losses_on_the_tape_read_lent_buffers() {
    let (rows, cols) = (256, 1000);
    let p: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 110.0 + 0.02).collect();
    let y: Vec<f32> = (0..rows * cols).map(|i| if i % cols == (i / cols * 7) % cols { 1.0 } else { 0.0 }).collect();
    let own_t = losskit::Tensor::from_vec(y.clone(), &[rows, cols]).unwrap();
    let own_p = losskit::Tensor::from_vec(p.clone(), &[rows, cols]).unwrap();
    let custom = losskit::CustomLoss::new("custom_mse", |t: &losskit::Tensor, p: &losskit::Tensor| {
        p.sub(t)?.square().mean(&[-1], false)
    });
    let losses: Vec<std::sync::Arc<dyn losskit::Loss>> =
        vec![std::sync::Arc::new(losskit::Dice::new()), std::sync::Arc::new(custom)];
    for loss in losses {
        let name = loss.name().to_string();
        let through = losskit_burn::BurnLoss::from_arc(loss.clone());
        let mut want = 0.0f32;
        let own = big_allocations(|| want = loss.call(&own_t, &own_p, None).unwrap().to_scalar().unwrap() as f32);
        for device in [Device::ndarray(), Device::flex()] {
            // The batch's targets handed over (burn's `into_data` of a tensor the caller keeps
            // copies it: burn's own read), the model's output kept by the caller (read in place).
            let targets = Tensor::<2>::from_data(TensorData::new(y.clone(), [rows, cols]), &device);
            let kept = Tensor::<2>::from_data(TensorData::new(p.clone(), [rows, cols]), &device);
            let mut got = 0.0f32;
            let n = big_allocations(|| got = through.forward(kept.clone(), targets).unwrap().into_scalar::<f32>());
            assert_eq!(got, want, "{name} on {device:?}: the value");
            assert_eq!(n, own, "{name} on {device:?}: big allocations of an evaluation, through burn vs losskit's own");
        }
    }
}
