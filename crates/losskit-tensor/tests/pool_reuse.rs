//! A training step's batch and dropout mask reuse the last step's buffers: gathering rows and
//! drawing an f32 mask take their output from the buffer pool, so the second of two same-sized
//! calls writes into the buffer the first one gave back. (One test in its own binary: the pool
//! is process-wide, and another test running beside it could take the buffer in between.)

use losskit_tensor::random::{mask, rng};
use losskit_tensor::{pool, DType, Storage, Tensor};

/// The address of an f32 tensor's first value.
fn address(t: &Tensor) -> usize {
    match t.storage() {
        Storage::F32(a) => a.as_ptr() as usize,
        Storage::F64(_) => panic!("expected f32"),
    }
}

#[test]
fn batches_and_dropout_masks_reuse_the_previous_steps_buffers() {
    pool::clear();
    // A dataset of 1000 rows of 784 features; batches of 128 rows (100 352 values, pooled).
    let data: Vec<f32> = (0..1000 * 784).map(|i| (i % 251) as f32).collect();
    let data = Tensor::from_vec(data, &[1000, 784]).unwrap();
    let first: Vec<usize> = (0..128).map(|i| (i * 7) % 1000).collect();
    let second: Vec<usize> = (0..128).map(|i| (i * 13 + 5) % 1000).collect();

    let batch = data.gather(0, &first).unwrap();
    let kept = address(&batch);
    assert_eq!(batch.to_vec::<f32>()[784..786], [(7 * 784 % 251) as f32, ((7 * 784 + 1) % 251) as f32]);
    drop(batch);
    let batch = data.gather(0, &second).unwrap();
    assert_eq!(address(&batch), kept, "the second batch is gathered into the first one's buffer");
    // Every value is rewritten: row 1 of the second batch is data row 18.
    assert_eq!(batch.to_vec::<f32>()[784..786], [(18 * 784 % 251) as f32, ((18 * 784 + 1) % 251) as f32]);
    drop(batch);

    let mut g = rng(3);
    let m = mask(&[128, 784], 0.8, 1.25, DType::F32, &mut g).unwrap();
    let kept = address(&m);
    drop(m);
    let m = mask(&[128, 784], 0.8, 1.25, DType::F32, &mut g).unwrap();
    assert_eq!(address(&m), kept, "the second mask is drawn into the first one's buffer");
    let kept_share = m.to_vec::<f32>().iter().filter(|&&v| v == 1.25).count() as f64 / (128.0 * 784.0);
    assert!((kept_share - 0.8).abs() < 0.01, "{kept_share}");
}
