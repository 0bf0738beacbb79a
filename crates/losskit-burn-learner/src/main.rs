//! Trains a burn MLP on the embedded digits with a losskit loss through burn-train's
//! `Learner` (see the library): `cargo run --release -p losskit-burn-learner [-- LOSS [EPOCHS]]`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("sparse_categorical_crossentropy", String::as_str);
    let epochs: usize = args.get(2).and_then(|e| e.parse().ok()).unwrap_or(10);
    let (accuracy, n_valid) = losskit_burn_learner::train(name, epochs)?;
    println!("{name}: validation accuracy {accuracy:.4} on {n_valid} digits");
    Ok(())
}
