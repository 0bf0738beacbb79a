//! Reading and writing tensors as NumPy `.npy` files (via `ndarray-npy`), and atomic file writes.

use crate::{Error, Result, Storage, Tensor};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::io::Write;
use std::path::Path;

/// The element type an `.npy` file stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDType {
    /// `<f4`
    F32,
    /// `<f8`
    F64,
    /// `<i4`
    I32,
    /// `<i8`
    I64,
    /// `|u1`
    U8,
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::file(path.display().to_string(), msg.into())
}

/// Reads an `.npy` file of `f32`, `f64`, `i32`, `i64` or `u8` values (any rank, C or Fortran
/// order).
///
/// Floats keep their dtype; integers become `f64` tensors (exact for every `i32`, and for
/// `i64` up to 2⁵³), with the stored type returned beside. Any other dtype, a malformed
/// header or truncated data is an error naming the file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<(Tensor, NpyDType)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display().to_string(), "cannot read", e))?;
    read_npy_bytes(&bytes, &path.display().to_string())
}

/// As [`read_npy`], from the bytes of a file (`name` is used in errors).
pub fn read_npy_bytes(bytes: &[u8], name: &str) -> Result<(Tensor, NpyDType)> {
    let path = Path::new(name);
    let bad = |e: ReadNpyError| file_err(path, format!("not a valid .npy file: {e}"));
    if let Some(a) = try_read::<f32>(bytes).map_err(bad)? {
        return Ok((Tensor::from_array(a), NpyDType::F32));
    }
    if let Some(a) = try_read::<f64>(bytes).map_err(bad)? {
        return Ok((Tensor::from_array(a), NpyDType::F64));
    }
    if let Some(a) = try_read::<i32>(bytes).map_err(bad)? {
        return Ok((Tensor::from_array(a.mapv(f64::from)), NpyDType::I32));
    }
    if let Some(a) = try_read::<u8>(bytes).map_err(bad)? {
        return Ok((Tensor::from_array(a.mapv(f64::from)), NpyDType::U8));
    }
    match ArrayD::<i64>::read_npy(bytes) {
        Ok(a) => Ok((Tensor::from_array(a.mapv(|v| v as f64)), NpyDType::I64)),
        Err(ReadNpyError::WrongDescriptor(d)) => {
            Err(file_err(path, format!("unsupported dtype {d}; expected float32, float64, int32, int64 or uint8")))
        }
        Err(e) => Err(bad(e)),
    }
}

/// Reads the array if the file holds `T`; `Ok(None)` when it holds another element type.
fn try_read<T: ndarray_npy::ReadableElement>(bytes: &[u8]) -> std::result::Result<Option<ArrayD<T>>, ReadNpyError> {
    match ArrayD::<T>::read_npy(bytes) {
        Ok(a) => Ok(Some(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `path` all at once: the bytes go to a temporary file in the same folder, which is
/// synced to disk and then renamed over `path`, and the folder is synced, so a reader (or a
/// crash, even of the machine) never sees a half-written file, and after the call the new one
/// is on disk.
pub fn write_atomic(path: impl AsRef<Path>, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    write_replacing(path, true, write)
}

/// [`write_atomic`] with the sync to disk optional: without it a reader or a crash of the
/// process still never sees a half-written file (the rename replaces the old one whole), but
/// after a crash of the machine the file may hold its previous version. For files rewritten
/// after every epoch (logs, plots), where a sync (~0.7 ms here) costs more than a small
/// model's epoch.
pub fn write_replacing(
    path: impl AsRef<Path>,
    sync: bool,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| file_err(path, "not a file path"))?.to_string_lossy().to_string();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        abort_here_for_tests(&name);
        std::fs::rename(&tmp, path)?;
        if sync {
            // The rename itself reaches the disk with the folder's entry.
            sync_folder(&dir)?;
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path.display().to_string(), "cannot write", e)
    })
}

/// Syncs a folder's entries to disk (on Unix; elsewhere the rename is left to the system).
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A test hook for crash safety: with `LOSSKIT_TEST_ABORT_BEFORE_RENAME=NAME:N` in the
/// environment, the process aborts at the `N`-th write of a file named `NAME`, after its
/// temporary file is written and before the rename (what a crash there leaves behind). Off
/// (one environment lookup per write) otherwise.
fn abort_here_for_tests(name: &str) {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Ok(spec) = std::env::var("LOSSKIT_TEST_ABORT_BEFORE_RENAME") else { return };
    let Some((target, n)) = spec.split_once(':') else { return };
    if target == name {
        let seen = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n.parse::<usize>().is_ok_and(|n| n == seen) {
            std::process::abort();
        }
    }
}

/// Writes a tensor as an `.npy` file of its dtype, atomically (see [`write_atomic`]).
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    write_atomic(path, |w| {
        let r = match t.storage() {
            Storage::F32(a) => a.write_npy(w),
            Storage::F64(a) => a.write_npy(w),
        };
        r.map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("losskit-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let t = Tensor::from_vec(vec![1.5f32, -2.0, 3.25], &[3, 1]).unwrap();
        write_npy(&p, &t).unwrap();
        let (back, dtype) = read_npy(&p).unwrap();
        assert_eq!(dtype, NpyDType::F32);
        assert_eq!(back.shape(), &[3, 1]);
        assert_eq!(back.to_vec::<f32>(), vec![1.5, -2.0, 3.25]);

        let ints = dir.join("i.npy");
        ndarray::arr1(&[3i64, 0, 7]).into_dyn().write_npy(std::fs::File::create(&ints).unwrap()).unwrap();
        let (back, dtype) = read_npy(&ints).unwrap();
        assert_eq!((dtype, back.to_vec::<f64>()), (NpyDType::I64, vec![3.0, 0.0, 7.0]));

        let bytes = dir.join("u16.npy");
        ndarray::arr1(&[1u16, 2]).into_dyn().write_npy(std::fs::File::create(&bytes).unwrap()).unwrap();
        let err = read_npy(&bytes).unwrap_err().to_string();
        assert!(err.contains("unsupported dtype") && err.contains("u16.npy"), "{err}");

        let junk = dir.join("junk.npy");
        std::fs::write(&junk, b"not numpy at all").unwrap();
        assert!(read_npy(&junk).unwrap_err().to_string().contains("not a valid .npy file"));
        let truncated = dir.join("trunc.npy");
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&truncated, &full[..full.len() - 2]).unwrap();
        assert!(read_npy(&truncated).is_err());
        assert!(read_npy(dir.join("missing.npy")).unwrap_err().to_string().contains("cannot read"));
        // A write into a missing folder fails and leaves nothing behind.
        assert!(write_npy(dir.join("no/such/dir/x.npy"), &t).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
