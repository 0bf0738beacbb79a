//! Dataset readers: round trips, error paths (file and offset/line), and fuzzing (random and
//! mutated bytes never panic).

use losskit_train::datasets::{self, LabelColumn};
use ndarray_npy::NpzWriter;
use proptest::prelude::*;
use std::io::Write;

fn idx_bytes(type_code: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(body);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_round_trip_and_errors() {
    let body: Vec<u8> = (0..18).collect();
    let raw = idx_bytes(0x08, &[2, 3, 3], &body);
    for bytes in [raw.clone(), gzip(&raw)] {
        let t = datasets::parse_idx(&bytes, "imgs").unwrap();
        assert_eq!(t.shape(), &[2, 3, 3]);
        assert_eq!(t.to_vec::<f32>()[17], 17.0);
    }
    let f = idx_bytes(0x0D, &[2], &[0x3F, 0x80, 0, 0, 0x40, 0, 0, 0]);
    assert_eq!(datasets::parse_idx(&f, "f").unwrap().to_vec::<f32>(), vec![1.0, 2.0]);
    let err = |b: &[u8]| datasets::parse_idx(b, "bad.idx").unwrap_err().to_string();
    assert!(
        err(&raw[..20]).contains("bad.idx: at byte 20: dimensions [2, 3, 3] need 34 bytes, the file has 20"),
        "{}",
        err(&raw[..20])
    );
    assert!(err(&[1, 2, 3, 4]).contains("not an IDX file"));
    assert!(err(&idx_bytes(0x07, &[1], &[0])).contains("unknown IDX element type 0x07"));
    assert!(err(&[0, 0, 8]).contains("too short"));
    assert!(err(&[0, 0, 8, 3, 0, 0]).contains("ends inside the header"));
    assert!(
        err(&idx_bytes(0x08, &[u32::MAX, u32::MAX, u32::MAX], &[])).contains("overflow")
            || err(&idx_bytes(0x08, &[u32::MAX, u32::MAX, u32::MAX], &[])).contains("need")
    );
    assert!(err(&[0x1F, 0x8B, 1, 2]).contains("bad gzip data"));
}

#[test]
fn idx_folder_and_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte.gz"),
        gzip(&idx_bytes(8, &[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7])),
    )
    .unwrap();
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_bytes(8, &[2], &[3, 9])).unwrap();
    let split = datasets::read_idx_dir(dir.path()).unwrap();
    assert_eq!(split.train.x.shape(), &[2, 2, 2]);
    assert_eq!(split.train.y.to_vec::<f32>(), vec![3.0, 9.0]);
    assert!(split.test.is_none());
    let empty = tempfile::tempdir().unwrap();
    assert!(datasets::read_idx_dir(empty.path()).unwrap_err().to_string().contains("MNIST layout"));
    let err = datasets::fashion_mnist(Some(std::path::Path::new("/no/such/dir"))).unwrap_err().to_string();
    assert!(err.contains("apt-get install dataset-fashion-mnist"), "{err}");
    // The real thing, installed by .ci/run.
    if std::path::Path::new(datasets::FASHION_MNIST_DIR).exists() {
        let f = datasets::fashion_mnist(None).unwrap();
        assert_eq!(f.train.x.shape(), &[60_000, 28, 28]);
        assert_eq!(f.test.as_ref().unwrap().x.shape(), &[10_000, 28, 28]);
        assert!(f.train.y.to_vec::<f32>().iter().all(|&v| (0.0..=9.0).contains(&v)));
    }
}

#[test]
fn npz_with_keras_and_plain_names() {
    let dir = tempfile::tempdir().unwrap();
    let keras = dir.path().join("mnist.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&keras).unwrap());
    w.add_array("x_train", &ndarray::Array3::<u8>::from_elem((3, 2, 2), 7)).unwrap();
    w.add_array("y_train", &ndarray::arr1(&[1u8, 2, 3])).unwrap();
    w.add_array("x_test", &ndarray::Array3::<u8>::zeros((1, 2, 2))).unwrap();
    w.add_array("y_test", &ndarray::arr1(&[0u8])).unwrap();
    w.finish().unwrap();
    let s = datasets::read_npz(&keras).unwrap();
    assert_eq!(s.train.x.shape(), &[3, 2, 2]);
    assert_eq!(s.train.y.to_vec::<f32>(), vec![1.0, 2.0, 3.0]);
    assert_eq!(s.test.unwrap().y.shape(), &[1]);
    let plain = dir.path().join("data.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&plain).unwrap());
    w.add_array("x", &ndarray::Array2::<f64>::zeros((4, 3))).unwrap();
    w.add_array("y", &ndarray::arr1(&[0i64, 1, 0, 1])).unwrap();
    w.finish().unwrap();
    let s = datasets::read_npz(&plain).unwrap();
    assert_eq!((s.train.x.shape(), s.train.y.shape()), (&[4usize, 3][..], &[4usize][..]));
    let wrong = dir.path().join("wrong.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&wrong).unwrap());
    w.add_array("features", &ndarray::arr1(&[1.0f32])).unwrap();
    w.finish().unwrap();
    assert!(datasets::read_npz(&wrong)
        .unwrap_err()
        .to_string()
        .contains("expected arrays x/y or x_train/y_train, found [\"features\"]"));
    std::fs::write(dir.path().join("junk.npz"), b"not a zip").unwrap();
    assert!(datasets::read_npz(dir.path().join("junk.npz")).unwrap_err().to_string().contains("not a valid .npz"));
}

#[test]
fn csv_with_and_without_header() {
    let d = datasets::parse_csv("1,2,0\n3,4,1\n", &LabelColumn::Last, "a.csv").unwrap();
    assert_eq!(d.x.to_vec::<f32>(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(d.y.to_vec::<f32>(), vec![0.0, 1.0]);
    let d =
        datasets::parse_csv("label,f1,f2\n1,0.5,0.25\n0,1,2\n", &LabelColumn::Name("label".into()), "b.csv").unwrap();
    assert_eq!(d.y.to_vec::<f32>(), vec![1.0, 0.0]);
    assert_eq!(d.x.to_vec::<f32>(), vec![0.5, 0.25, 1.0, 2.0]);
    let d = datasets::parse_csv("5,1,2\n6,3,4\n", &LabelColumn::Index(0), "c.csv").unwrap();
    assert_eq!(d.y.to_vec::<f32>(), vec![5.0, 6.0]);
    let err = |t: &str, l: &LabelColumn| datasets::parse_csv(t, l, "bad.csv").unwrap_err().to_string();
    assert!(
        err("1,2,3\n4,five,6\n", &LabelColumn::Last).contains("bad.csv: line 2, column 2: \"five\" is not a number")
    );
    assert!(err("1,2,3\n4,5\n", &LabelColumn::Last).contains("line 2: 2 fields, expected 3"));
    assert!(err("a,b\n1,2\n", &LabelColumn::Name("c".into())).contains("no column named \"c\""));
    assert!(err("1,2\n", &LabelColumn::Index(5)).contains("out of range"));
    assert!(err("", &LabelColumn::Last).contains("no rows"));
    assert!(err("a,b\n", &LabelColumn::Last).contains("no data rows"));
}

/// A reader's result on bad bytes: a value, or an `Error::File` whose message starts with the
/// file's name (so the user knows which file is at fault). Never a panic, never another kind.
fn value_or_file_error<T>(r: losskit::Result<T>, name: &str) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(matches!(&e, losskit::Error::File { path, .. } if path == name), "not a file error: {e:?}");
        prop_assert!(e.to_string().starts_with(&format!("{name}: ")), "{e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        value_or_file_error(datasets::parse_idx(&bytes, "fuzz.idx"), "fuzz.idx")?;
        value_or_file_error(losskit_tensor::npy::read_npy_bytes(&bytes, "fuzz.npy"), "fuzz.npy")?;
        let text = String::from_utf8_lossy(&bytes);
        value_or_file_error(datasets::parse_csv(&text, &LabelColumn::Last, "fuzz.csv"), "fuzz.csv")?;
    }

    #[test]
    fn mutated_valid_files_never_panic(cut in 0usize..200, flips in prop::collection::vec((0usize..200, any::<u8>()), 0..4)) {
        let mut idx = idx_bytes(0x08, &[3, 4, 4], &[7u8; 48]);
        let mut npy = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&ndarray::Array2::<f32>::zeros((3, 4)), &mut npy).unwrap();
        for (pos, v) in &flips {
            if let Some(b) = idx.get_mut(*pos % 52) { *b = *v; }
            let l = npy.len();
            if let Some(b) = npy.get_mut(*pos % l) { *b = *v; }
        }
        idx.truncate(cut.min(idx.len()));
        value_or_file_error(datasets::parse_idx(&idx, "m.idx"), "m.idx")?;
        value_or_file_error(datasets::parse_idx(&gzip(&idx), "m.idx.gz"), "m.idx.gz")?;
        npy.truncate(cut.max(1).min(npy.len()));
        value_or_file_error(losskit_tensor::npy::read_npy_bytes(&npy, "m.npy"), "m.npy")?;
    }
}

/// A file that cannot be read is an `Error::File` naming it, with the operating system's
/// error as its `source()`.
#[test]
fn an_unreadable_file_keeps_the_os_error_as_its_source() {
    use std::error::Error as _;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.csv");
    let err = losskit_train::datasets::read_csv(&missing, &losskit_train::datasets::LabelColumn::Last).unwrap_err();
    assert!(matches!(&err, losskit::Error::File { path, .. } if path == &missing.display().to_string()), "{err:?}");
    let io = err.source().and_then(|s| s.downcast_ref::<losskit::IoSource>()).expect("an io source");
    assert_eq!(io.io().kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("cannot read: "), "{err}");
}
