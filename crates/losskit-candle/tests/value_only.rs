//! A forward on a `y_pred` that candle does not track runs the loss' value-only path on
//! candle's own buffer: a counting allocator sees no buffer of `y_pred`'s size, where a tracked
//! forward allocates one, the gradient the fused kernel writes with the value (`y_pred` itself
//! is read in place either way). One test in this binary, so nothing
//! else allocates meanwhile.

use candle_core::{Device, Tensor, Var};
#[path = "../../losskit/tests/adapters/big_allocations.rs"]
mod big_allocations;
use big_allocations::big_allocations;

#[test]
fn an_untracked_forward_computes_no_gradient() {
    let (rows, cols) = (256, 1000);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
    let labels: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % cols as u32).collect();
    let dev = Device::Cpu;
    let logits = Tensor::from_vec(x, (rows, cols), &dev).unwrap();
    let labels = Tensor::from_vec(labels, rows, &dev).unwrap();
    let var = Var::from_tensor(&logits).unwrap();
    // A built-in loss' value on candle's own buffer: no copy, no gradient.
    let untracked = big_allocations(|| {
        let out = losskit_candle::nn::cross_entropy(&logits, &labels).unwrap();
        assert!(!out.track_op());
        std::hint::black_box(out.to_scalar::<f32>().unwrap());
    });
    assert_eq!(untracked, 0, "an evaluation forward");
    // The gradient the kernel writes with the value, on candle's buffer too: no copy.
    let tracked = big_allocations(|| {
        let out = losskit_candle::nn::cross_entropy(var.as_tensor(), &labels).unwrap();
        assert!(out.track_op());
        std::hint::black_box(out.to_scalar::<f32>().unwrap());
    });
    assert_eq!(tracked, 1, "a training forward");
}
