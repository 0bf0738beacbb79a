//! The seed's Keras program, line by line, on the embedded digits set:
//!
//! ```python
//! model = keras.Sequential([
//!     keras.layers.Flatten(input_shape=(8, 8)),
//!     keras.layers.Dense(512, activation="relu"),
//!     keras.layers.Dropout(0.2),
//!     keras.layers.Dense(10, activation="softmax"),
//! ])
//! model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
//! x, y = sklearn.utils.shuffle(x, y, random_state=0)   # validation_split takes the LAST 20%
//! history = model.fit(x, y, epochs=50, validation_split=0.2)
//! print("val_accuracy:", history.history["val_accuracy"][-1])
//! ```
//!
//! Run: `cargo run --release --example keras_compile_fit`

use losskit_train::{datasets, Compile, Dense, Dropout, Fit, Flatten, Sequential};

fn main() -> Result<(), losskit::Error> {
    // The digits file ends with a harder group of writers, and Keras' validation_split holds
    // out the last 20% unshuffled (Keras itself gets ~87.5% there): shuffle once first.
    let digits = datasets::digits()?.shuffled(0)?;
    let (x, y) = (digits.x.mul_scalar(1.0 / 16.0)?, digits.y);

    let mut model = Sequential::new()
        .add(Flatten::new())
        .add(Dense::new(512).activation("relu")?)
        .add(Dropout::new(0.2)?)
        .add(Dense::new(10).activation("softmax")?);
    model.build(&[8, 8])?;
    print!("{}", model.summary());

    model.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]))?;
    let history = model.fit(&x, &y, Fit::new().epochs(50).validation_split(0.2).verbose(2))?;

    println!("val_accuracy: {:.4}", history.last("val_accuracy").unwrap_or(f64::NAN));
    Ok(())
}
