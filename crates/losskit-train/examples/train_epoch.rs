//! One benchmark run for bench/compare_training.py: the seed's model on Fashion-MNIST,
//! `--epochs` epochs, printing one JSON line with each epoch's seconds and the test accuracy.
//!
//! `cargo run --release --example train_epoch -- sgd 32 3`

use losskit_train::{datasets, Compile, Dense, Dropout, Fit, Flatten, LambdaCallback, Optimizer, Sequential};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

fn main() -> Result<(), losskit::Error> {
    let args: Vec<String> = std::env::args().collect();
    let opt = args.get(1).map_or("sgd", String::as_str).to_string();
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let epochs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let data = datasets::fashion_mnist(None)?;
    let test = data.test.expect("Fashion-MNIST has a test set");
    let x = data.train.x.mul_scalar(1.0 / 255.0)?;
    let tx = test.x.mul_scalar(1.0 / 255.0)?;
    let mut model = Sequential::new()
        .add(Flatten::new())
        .add(Dense::new(512).activation("relu")?)
        .add(Dropout::new(0.2)?)
        .add(Dense::new(10).activation("softmax")?);
    model.compile(
        Compile::new()
            .optimizer(Optimizer::parse(&opt)?)
            .loss("sparse_categorical_crossentropy")
            .metrics(&["accuracy"]),
    )?;
    let times = Rc::new(RefCell::new(Vec::new()));
    let start = Rc::new(RefCell::new(Instant::now()));
    let (t1, s1, s2) = (times.clone(), start.clone(), start.clone());
    let mut timer = LambdaCallback::new()
        .on_epoch_begin(move |_, _| {
            *s1.borrow_mut() = Instant::now();
            Ok(())
        })
        .on_epoch_end(move |_, _| {
            t1.borrow_mut().push(s2.borrow().elapsed().as_secs_f64());
            Ok(())
        });
    model.fit(&x, &data.train.y, Fit::new().epochs(epochs).batch_size(batch).verbose(0).callback(&mut timer))?;
    let acc = model.evaluate(&tx, &test.y, 1024, None)?["accuracy"];
    println!("{{\"framework\": \"losskit\", \"epoch_seconds\": {:?}, \"test_accuracy\": {acc}}}", times.borrow());
    Ok(())
}
