//! `use_calling_thread`: with the test's thread as worker 0 of rayon's global pool, training
//! (with the other worker kept awake by `fit`) gives the same bits as on a one-thread pool, and
//! a second call is refused. One test in its own binary, because the global pool is built once
//! per process.

use losskit::Tensor;
use losskit_train::{Compile, Dense, Dropout, Fit, Flatten, Sequential};

/// One epoch of the seed's model at batch 128 on 784 synthetic features: its products
/// (128 × 784 × 512 multiply-adds) are large enough to run in parallel.
fn trained_weights() -> Vec<Vec<u32>> {
    let (n, d) = (512, 784);
    let x: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin() * 0.5 + 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| (i * 7 % 10) as f32).collect();
    let x = Tensor::from_vec(x, &[n, d]).unwrap();
    let y = Tensor::from_vec(y, &[n]).unwrap();
    let mut m = Sequential::new()
        .add(Flatten::new())
        .add(Dense::new(512).activation("relu").unwrap())
        .add(Dropout::new(0.2).unwrap())
        .add(Dense::new(10).activation("softmax").unwrap())
        .seed(5);
    m.compile(Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy")).unwrap();
    m.fit(&x, &y, Fit::new().batch_size(128).verbose(0).seed(3)).unwrap();
    m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn the_calling_thread_as_worker_zero_trains_to_the_same_bits() {
    assert_eq!(losskit_train::use_calling_thread(Some(2)).unwrap(), 2);
    assert_eq!(rayon::current_thread_index(), Some(0), "this thread is the pool's worker 0");
    assert_eq!(rayon::current_num_threads(), 2);
    let again = losskit_train::use_calling_thread(Some(2)).unwrap_err().to_string();
    assert!(again.contains("once per process"), "{again}");
    let here = trained_weights();
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    assert_eq!(here, one_thread.install(trained_weights));
    // `fit` keeps the other worker awake while it trains and lets it go afterwards: a job
    // another thread hands to the pool runs on that worker (this thread is outside rayon
    // meanwhile), with the guard and after it, and a second fit gives the same bits again.
    let from_outside =
        || std::thread::spawn(|| rayon::join(rayon::current_thread_index, rayon::current_thread_index)).join().unwrap();
    assert_eq!(from_outside(), (Some(1), Some(1)));
    assert_eq!(here, trained_weights());
    {
        let _awake = losskit_train::keep_pool_awake();
        assert_eq!(from_outside(), (Some(1), Some(1)));
        let (a, _) = rayon::join(rayon::current_thread_index, rayon::current_thread_index);
        assert_eq!(a, Some(0), "this thread starts its own region");
    }
    assert_eq!(from_outside(), (Some(1), Some(1)));
}
