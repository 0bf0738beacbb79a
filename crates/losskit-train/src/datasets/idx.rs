//! IDX files (MNIST, Fashion-MNIST), gzipped or not.

use losskit::{Error, Result, Tensor};
use std::io::Read;
use std::path::Path;

fn err(name: &str, offset: usize, msg: impl Into<String>) -> Error {
    Error::file(name, format!("at byte {offset}: {}", msg.into()))
}

/// Decodes the bytes of an IDX file (gunzipping them first when they start with the gzip
/// magic). Every IDX element type is accepted (`u8`, `i8`, `i16`, `i32`, `f32`, `f64`, big
/// endian); values come back as an f32 tensor of the file's shape. `name` is used in errors,
/// which give the byte offset of the problem.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<Tensor> {
    let owned;
    let data: &[u8] = if bytes.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| err(name, 0, format!("bad gzip data: {e}")))?;
        owned = out;
        &owned
    } else {
        bytes
    };
    if data.len() < 4 {
        return Err(err(name, data.len(), "file too short for the 4-byte IDX magic"));
    }
    if data[0] != 0 || data[1] != 0 {
        return Err(err(
            name,
            0,
            format!("not an IDX file: magic starts {:#04x} {:#04x}, expected 0x00 0x00", data[0], data[1]),
        ));
    }
    let (type_code, rank) = (data[2], data[3] as usize);
    let size = match type_code {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        other => return Err(err(name, 2, format!("unknown IDX element type {other:#04x}"))),
    };
    let header = 4 + 4 * rank;
    if data.len() < header {
        return Err(err(
            name,
            data.len(),
            format!("file ends inside the header ({rank} dimensions need {header} bytes)"),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(data[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err(name, 4, format!("dimensions {dims:?} overflow")))?;
    let need = count
        .checked_mul(size)
        .and_then(|b| b.checked_add(header))
        .ok_or_else(|| err(name, 4, format!("dimensions {dims:?} overflow")))?;
    if data.len() != need {
        return Err(err(
            name,
            data.len().min(need),
            format!("dimensions {dims:?} need {need} bytes, the file has {}", data.len()),
        ));
    }
    let body = &data[header..];
    let values: Vec<f32> = match type_code {
        0x08 => body.iter().map(|&b| f32::from(b)).collect(),
        0x09 => body.iter().map(|&b| f32::from(b as i8)).collect(),
        0x0B => body.chunks_exact(2).map(|c| f32::from(i16::from_be_bytes([c[0], c[1]]))).collect(),
        0x0C => body.chunks_exact(4).map(|c| i32::from_be_bytes(c.try_into().expect("4 bytes")) as f32).collect(),
        0x0D => body.chunks_exact(4).map(|c| f32::from_be_bytes(c.try_into().expect("4 bytes"))).collect(),
        _ => body.chunks_exact(8).map(|c| f64::from_be_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
    };
    Tensor::from_vec(values, &dims)
}

/// Reads an IDX file (`.gz` or not).
pub fn read_idx(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display().to_string(), "cannot read", e))?;
    parse_idx(&bytes, &path.display().to_string())
}
