//! A training step's batch, dropout mask and products reuse the last step's buffers: gathering
//! rows, drawing an f32 mask and a product take their output from the buffer pools (large and
//! small), so the second of two same-sized calls writes into the buffer the first one gave back.
//! (One test in its own binary: the pool is process-wide, and another test running beside it
//! could take the buffer in between.)

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
    drop(m);

    // A batch-32 step's buffers are small (32 × 784 = 25 088 values, below `MIN_POOLED`): they
    // come back through the small pool.
    let small: Vec<usize> = first[..32].to_vec();
    let batch = data.gather(0, &small).unwrap();
    let kept = address(&batch);
    drop(batch);
    assert_eq!(pool::pooled_small().0, 1, "the dropped batch's buffer is kept");
    let batch = data.gather(0, &second[..32]).unwrap();
    assert_eq!(address(&batch), kept, "the second small batch is gathered into the first one's buffer");
    assert_eq!(batch.to_vec::<f32>()[784..786], [(18 * 784 % 251) as f32, ((18 * 784 + 1) % 251) as f32]);
    assert_eq!(pool::pooled_small().0, 0);
    drop(batch);
    // A product's output (32 × 512) likewise, and its values are those of a fresh buffer.
    let x = Tensor::from_vec((0..32 * 64).map(|i| (i % 7) as f32).collect::<Vec<f32>>(), &[32, 64]).unwrap();
    let w = Tensor::from_vec((0..64 * 512).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<f32>>(), &[64, 512]).unwrap();
    let y = x.matmul(&w).unwrap();
    let (kept, first_values) = (address(&y), y.to_vec::<f32>());
    drop(y);
    let y = x.matmul(&w).unwrap();
    assert_eq!(address(&y), kept, "the second product is written into the first one's buffer");
    assert_eq!(y.to_vec::<f32>(), first_values);
    drop(y);

    // Tiny buffers are left to the allocator; the small pool keeps at most `MAX_SMALL_BUFFERS`.
    pool::clear();
    drop(Tensor::from_vec(vec![1.0f32; pool::MIN_SMALL - 1], &[pool::MIN_SMALL - 1]).unwrap());
    assert_eq!(pool::pooled_small(), (0, 0));
    let many: Vec<Tensor> = (0..pool::MAX_SMALL_BUFFERS + 5)
        .map(|i| Tensor::from_vec(vec![i as f64; pool::MIN_SMALL], &[pool::MIN_SMALL]).unwrap())
        .collect();
    drop(many);
    assert_eq!(pool::pooled_small(), (0, pool::MAX_SMALL_BUFFERS));
    pool::clear();
    assert_eq!(pool::pooled_small(), (0, 0));
}
