//! Datasets: the embedded digits set, readers for IDX (MNIST, Fashion-MNIST), `.npy`/`.npz`
//! and CSV files, and a deterministic train/test split. Readers return errors naming the file
//! and the offset or line; they never panic (fuzzed in `tests/readers.rs`).

mod files;
mod idx;

pub use files::{
    fashion_mnist, load_path, load_path_named, mnist, parse_csv, read_csv, read_csv_lines, read_idx_dir, read_npy_pair,
    read_npz, LabelColumn, SampleNames, Split, FASHION_MNIST_DIR, MNIST_DIR,
};
pub use idx::{parse_idx, read_idx};

use losskit::{Error, Result, Tensor};
use losskit_tensor::random;
use std::io::Read;

/// The UCI optical digits (1,797 images of 8×8 pixels, values 0..16, labels 0..9; Alpaydin &
/// Kaynak 1998, CC BY 4.0), compiled into the binary.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Inputs and labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Inputs, `(N, ...)`.
    pub x: Tensor,
    /// Labels, `(N,)`.
    pub y: Tensor,
}

impl Dataset {
    /// The same samples in a deterministic random order (ChaCha8 seeded with `seed`).
    ///
    /// Keras' `validation_split` holds out the *last* rows; the digits file ends with a harder
    /// group of writers (Keras itself reaches only ~87.5% validation accuracy on the file order
    /// with the seed's model), so shuffle once before splitting.
    pub fn shuffled(&self, seed: u64) -> Result<Dataset> {
        let n = self.y.shape().first().copied().unwrap_or(0);
        let order = random::permutation(n, &mut random::rng(seed));
        Ok(Dataset { x: self.x.gather(0, &order)?, y: self.y.gather(0, &order)? })
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.y.shape().first().copied().unwrap_or(0)
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The embedded digits set: `x` `(1797, 8, 8)` f32 with raw pixel values 0..16 (divide by 16
/// to scale to [0, 1]) and `y` `(1797,)` labels 0..9 (as f32).
pub fn digits() -> Result<Dataset> {
    let ferr = |msg: String| Error::file("digits.csv.gz (embedded)", msg);
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ).read_to_string(&mut text).map_err(|e| ferr(e.to_string()))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| ferr(format!("line {}: {e}", line + 1)))?;
        if record.len() != 65 {
            return Err(ferr(format!("line {}: {} fields, expected 65", line + 1, record.len())));
        }
        for (i, field) in record.iter().enumerate() {
            let v: f32 =
                field.trim().parse().map_err(|_| ferr(format!("line {}: {field:?} is not a number", line + 1)))?;
            if i < 64 {
                x.push(v);
            } else {
                y.push(v);
            }
        }
    }
    let n = y.len();
    Ok(Dataset { x: Tensor::from_vec(x, &[n, 8, 8])?, y: Tensor::from_vec(y, &[n])? })
}

/// A deterministic shuffle-and-split: `test_fraction` of the samples (rounded down) go to the
/// test set. The same seed gives the same split everywhere.
pub fn train_test_split(data: &Dataset, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    if !(0.0..1.0).contains(&test_fraction) {
        return Err(Error::invalid_parameter("train_test_split", "test_fraction", test_fraction, "a number in [0, 1)"));
    }
    let n = data.y.shape().first().copied().unwrap_or(0);
    let order = random::permutation(n, &mut random::rng(seed));
    let n_test = (n as f64 * test_fraction).floor() as usize;
    let (test, train) = order.split_at(n_test);
    let take =
        |idx: &[usize]| -> Result<Dataset> { Ok(Dataset { x: data.x.gather(0, idx)?, y: data.y.gather(0, idx)? }) };
    Ok((take(train)?, take(test)?))
}
