//! Datasets from files: IDX folders (MNIST layout), `.npz` archives, `.npy` pairs, CSV.

use super::idx::read_idx;
use super::Dataset;
use losskit::{Error, Result, Tensor};
use ndarray::{ArrayD, IxDyn, OwnedRepr};
use std::path::{Path, PathBuf};

/// A training set and, when the source has one, a test set.
#[derive(Debug, Clone)]
pub struct Split {
    /// Training samples.
    pub train: Dataset,
    /// Test samples, if the source provides them.
    pub test: Option<Dataset>,
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::file(path.display().to_string(), msg.into())
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].iter().map(|n| dir.join(n)).find(|p| p.exists())
}

fn pair(dir: &Path, images: &str, labels: &str) -> Result<Option<Dataset>> {
    match (find(dir, images), find(dir, labels)) {
        (Some(i), Some(l)) => {
            let (x, y) = (read_idx(&i)?, read_idx(&l)?);
            if x.shape().first() != y.shape().first() || y.rank() != 1 {
                return Err(file_err(
                    &l,
                    format!(
                        "labels of shape {:?} do not match images of shape {:?} ({})",
                        y.shape(),
                        x.shape(),
                        i.display()
                    ),
                ));
            }
            Ok(Some(Dataset { x, y }))
        }
        _ => Ok(None),
    }
}

/// Reads an MNIST-layout folder: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`
/// and, if present, the `t10k-*` test files. Pixels stay 0..255.
pub fn read_idx_dir(dir: impl AsRef<Path>) -> Result<Split> {
    let dir = dir.as_ref();
    let train = pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?.ok_or_else(|| {
        file_err(
            dir,
            "no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] pair (MNIST layout) in this folder",
        )
    })?;
    let test = pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    Ok(Split { train, test })
}

/// Where Debian's `dataset-fashion-mnist` package puts Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Where an MNIST folder is looked for by default.
pub const MNIST_DIR: &str = "/usr/share/datasets/mnist";

/// Fashion-MNIST (60,000 + 10,000 images of 28×28, 10 classes) from `dir` (default
/// [`FASHION_MNIST_DIR`]); when absent, the error says how to install it.
pub fn fashion_mnist(dir: Option<&Path>) -> Result<Split> {
    let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
    if !dir.exists() {
        return Err(file_err(dir, "Fashion-MNIST is not installed: run `apt-get install dataset-fashion-mnist` (Debian), or pass --data with a folder of its IDX files"));
    }
    read_idx_dir(dir)
}

/// MNIST from `dir` (default [`MNIST_DIR`]), in the same IDX layout.
pub fn mnist(dir: Option<&Path>) -> Result<Split> {
    let dir = dir.unwrap_or(Path::new(MNIST_DIR));
    if !dir.exists() {
        return Err(file_err(dir, "MNIST not found: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz (and t10k-*) there, or pass --data FOLDER"));
    }
    read_idx_dir(dir)
}

/// One array of an `.npz` archive as an f32 tensor (f32, f64, i32, i64 or u8 stored).
fn npz_array(npz: &mut ndarray_npy::NpzReader<std::fs::File>, name: &str, path: &Path) -> Result<Tensor> {
    macro_rules! attempt {
        ($t:ty) => {
            match npz.by_name::<OwnedRepr<$t>, IxDyn>(name) {
                Ok(a) => {
                    let a: ArrayD<$t> = a;
                    return Ok(Tensor::from_array(a.mapv(|v| v as f32)));
                }
                Err(ndarray_npy::ReadNpzError::Npy(ndarray_npy::ReadNpyError::WrongDescriptor(_))) => {}
                Err(e) => return Err(file_err(path, format!("array {name:?}: {e}"))),
            }
        };
    }
    attempt!(f32);
    attempt!(f64);
    attempt!(i32);
    attempt!(i64);
    attempt!(u8);
    Err(file_err(
        path,
        format!("array {name:?} has an unsupported dtype (expected float32, float64, int32, int64 or uint8)"),
    ))
}

/// Reads an `.npz` archive holding `x`/`y`, or Keras' `x_train`/`y_train` (and optionally
/// `x_test`/`y_test`).
pub fn read_npz(path: impl AsRef<Path>) -> Result<Split> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path.display().to_string(), "cannot read", e))?;
    let mut npz =
        ndarray_npy::NpzReader::new(file).map_err(|e| file_err(path, format!("not a valid .npz archive: {e}")))?;
    let names: Vec<String> = npz
        .names()
        .map_err(|e| file_err(path, format!("not a valid .npz archive: {e}")))?
        .into_iter()
        .map(|n| n.trim_end_matches(".npy").to_string())
        .collect();
    let has = |n: &str| names.iter().any(|m| m == n);
    let mut dataset = |xn: &str, yn: &str| -> Result<Dataset> {
        let (x, y) = (npz_array(&mut npz, xn, path)?, npz_array(&mut npz, yn, path)?);
        if x.shape().first() != y.shape().first() {
            return Err(file_err(path, format!("{xn} has shape {:?} but {yn} has {:?}", x.shape(), y.shape())));
        }
        Ok(Dataset { x, y })
    };
    if has("x_train") && has("y_train") {
        let train = dataset("x_train", "y_train")?;
        let test = if has("x_test") && has("y_test") { Some(dataset("x_test", "y_test")?) } else { None };
        Ok(Split { train, test })
    } else if has("x") && has("y") {
        Ok(Split { train: dataset("x", "y")?, test: None })
    } else {
        Err(file_err(path, format!("expected arrays x/y or x_train/y_train, found {names:?}")))
    }
}

/// Which CSV column holds the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column (default).
    Last,
    /// A column by 0-based index.
    Index(usize),
    /// A column by header name.
    Name(String),
}

/// Reads a CSV of numbers, one sample per row, with the label in `label` (a header row is
/// detected: a first row with a non-numeric field). Errors give the file and the line.
pub fn read_csv(path: impl AsRef<Path>, label: &LabelColumn) -> Result<Dataset> {
    read_csv_lines(path, label).map(|(d, _)| d)
}

/// As [`read_csv`], with the file's line number (1-based, the header counted) of each sample.
pub fn read_csv_lines(path: impl AsRef<Path>, label: &LabelColumn) -> Result<(Dataset, Vec<usize>)> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), "cannot read", e))?;
    parse_csv_lines(&text, label, &path.display().to_string())
}

/// As [`read_csv`], from the text of a file (`name` in errors).
pub fn parse_csv(text: &str, label: &LabelColumn, name: &str) -> Result<Dataset> {
    parse_csv_lines(text, label, name).map(|(d, _)| d)
}

/// As [`parse_csv`], with each sample's line number.
fn parse_csv_lines(text: &str, label: &LabelColumn, name: &str) -> Result<(Dataset, Vec<usize>)> {
    let path = Path::new(name);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| file_err(path, format!("line {}: {e}", i + 1)))?;
        rows.push((i + 1, record.iter().map(|s| s.trim().to_string()).collect()));
    }
    rows.retain(|(_, r)| !(r.len() == 1 && r[0].is_empty()));
    let Some((_, first)) = rows.first() else {
        return Err(file_err(path, "no rows"));
    };
    let header: Option<Vec<String>> =
        if first.iter().any(|f| f.parse::<f64>().is_err()) { Some(first.clone()) } else { None };
    let data = if header.is_some() { &rows[1..] } else { &rows[..] };
    let cols = first.len();
    if cols < 2 {
        return Err(file_err(path, format!("line 1: {cols} column(s); expected features and a label")));
    }
    let label_col = match label {
        LabelColumn::Last => cols - 1,
        LabelColumn::Index(i) if *i < cols => *i,
        LabelColumn::Index(i) => {
            return Err(file_err(path, format!("label column {i} is out of range ({cols} columns)")))
        }
        LabelColumn::Name(n) => header.as_ref().and_then(|h| h.iter().position(|c| c == n)).ok_or_else(|| {
            file_err(path, format!("no column named {n:?} in the header {:?}", header.clone().unwrap_or_default()))
        })?,
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let lines: Vec<usize> = data.iter().map(|(line, _)| *line).collect();
    for (line, row) in data {
        if row.len() != cols {
            return Err(file_err(path, format!("line {line}: {} fields, expected {cols}", row.len())));
        }
        for (j, field) in row.iter().enumerate() {
            let v: f32 = field
                .parse()
                .map_err(|_| file_err(path, format!("line {line}, column {}: {field:?} is not a number", j + 1)))?;
            if j == label_col {
                y.push(v);
            } else {
                x.push(v);
            }
        }
    }
    let n = y.len();
    if n == 0 {
        return Err(file_err(path, "no data rows"));
    }
    Ok((Dataset { x: Tensor::from_vec(x, &[n, cols - 1])?, y: Tensor::from_vec(y, &[n])? }, lines))
}

/// Reads `x.npy` and `y.npy` from a folder.
pub fn read_npy_pair(dir: &Path) -> Result<Dataset> {
    let (x, _) = losskit_tensor::npy::read_npy(dir.join("x.npy"))?;
    let (y, _) = losskit_tensor::npy::read_npy(dir.join("y.npy"))?;
    if x.shape().first() != y.shape().first() {
        return Err(file_err(dir, format!("x.npy has shape {:?} but y.npy has {:?}", x.shape(), y.shape())));
    }
    Ok(Dataset { x: x.to_dtype(losskit::DType::F32), y: y.to_dtype(losskit::DType::F32) })
}

/// How a file names its samples, for messages in the user's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleNames {
    /// A CSV: sample `i` is on line `lines[i]` (1-based, the header counted).
    CsvLines(Vec<usize>),
    /// IDX, NPY, NPZ: samples by their 0-based index in the file.
    Indices,
}

impl SampleNames {
    /// `"line 138 (data row 137)"` for a CSV (data rows counted from 1, as a spreadsheet
    /// does), `"sample 136"` (the 0-based index, as NumPy) otherwise.
    pub fn describe(&self, sample: usize) -> String {
        match self {
            SampleNames::CsvLines(lines) => match lines.get(sample) {
                Some(line) => format!("line {line} (data row {})", sample + 1),
                None => format!("sample {sample}"),
            },
            SampleNames::Indices => format!("sample {sample}"),
        }
    }
}

/// As [`load_path`], with how the file names the training samples.
pub fn load_path_named(path: &Path, label: &LabelColumn) -> Result<(Split, SampleNames)> {
    let is_csv =
        !path.is_dir() && path.extension().and_then(|e| e.to_str()).map(str::to_lowercase).as_deref() == Some("csv");
    if is_csv {
        let (train, lines) = read_csv_lines(path, label)?;
        return Ok((Split { train, test: None }, SampleNames::CsvLines(lines)));
    }
    load_path(path, label).map(|s| (s, SampleNames::Indices))
}

/// Loads `--data PATH`: a folder of IDX files (or `x.npy`/`y.npy`), an `.npz`, or a `.csv`.
pub fn load_path(path: &Path, label: &LabelColumn) -> Result<Split> {
    if path.is_dir() {
        if path.join("x.npy").exists() {
            return Ok(Split { train: read_npy_pair(path)?, test: None });
        }
        return read_idx_dir(path);
    }
    match path.extension().and_then(|e| e.to_str()).map(str::to_lowercase).as_deref() {
        Some("npz") => read_npz(path),
        Some("csv") => Ok(Split { train: read_csv(path, label)?, test: None }),
        _ if !path.exists() => Err(file_err(path, "does not exist")),
        _ => Err(file_err(path, "expected a folder of IDX files, an .npz archive or a .csv file")),
    }
}
