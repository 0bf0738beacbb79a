//! A loss without a row kernel (Dice, a `CustomLoss` of tensor ops) runs through losskit's
//! tape on candle's buffers lent for the call: a counting allocator sees no more buffers of
//! `y_pred`'s size than losskit's own call on tensors built beforehand — no copy of `y_pred`
//! or of `y_true` — in an evaluation forward and in a training forward (which computes the
//! gradient while the buffers are lent). One test in this binary, so nothing else allocates
//! meanwhile.

use candle_core::{Device, Tensor, Var};
use losskit::Loss;
#[path = "../../losskit/tests/adapters/big_allocations.rs"]
mod big_allocations;
use big_allocations::big_allocations;

#[test]
fn losses_on_the_tape_read_candles_buffers_in_place() {
    let (rows, cols) = (256, 1000);
    let p: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 110.0 + 0.02).collect();
    let y: Vec<f32> = (0..rows * cols).map(|i| if i % cols == (i / cols * 7) % cols { 1.0 } else { 0.0 }).collect();
    let dev = Device::Cpu;
    let (y_true, y_pred) = (
        Tensor::from_vec(y.clone(), (rows, cols), &dev).unwrap(),
        Tensor::from_vec(p.clone(), (rows, cols), &dev).unwrap(),
    );
    let var = Var::from_tensor(&y_pred).unwrap();
    let own_t = losskit::Tensor::from_vec(y, &[rows, cols]).unwrap();
    let own_p = losskit::Tensor::from_vec(p, &[rows, cols]).unwrap();
    let custom = losskit::CustomLoss::new("custom_mse", |t: &losskit::Tensor, p: &losskit::Tensor| {
        p.sub(t)?.square().mean(&[-1], false)
    });
    let losses: Vec<std::sync::Arc<dyn Loss>> =
        vec![std::sync::Arc::new(losskit::Dice::new()), std::sync::Arc::new(custom)];
    for loss in losses {
        let name = loss.name().to_string();
        let through = losskit_candle::CandleLoss::from_arc(loss.clone());
        // Evaluation: the value alone.
        let mut want = 0.0;
        let own = big_allocations(|| want = loss.call(&own_t, &own_p, None).unwrap().to_scalar().unwrap());
        let mut got = 0.0;
        let candle = big_allocations(|| {
            got = through.forward(&y_true, &y_pred, None).unwrap().to_scalar::<f32>().unwrap().into();
        });
        assert_eq!(got, want, "{name}: the value");
        assert_eq!(candle, own, "{name}: big allocations of an evaluation forward, through candle vs losskit's own");
        // Training forward: the gradient is computed with the value.
        let own = big_allocations(|| {
            let q = own_p.clone().requires_grad();
            let l = loss.call(&own_t, &q, None).unwrap();
            std::hint::black_box(l.backward().unwrap().get(&q).cloned());
        });
        let candle = big_allocations(|| {
            let out = through.forward(&y_true, var.as_tensor(), None).unwrap();
            assert!(out.track_op());
        });
        assert_eq!(candle, own, "{name}: big allocations of a training forward, through candle vs losskit's own");
    }
}
