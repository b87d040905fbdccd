//! The IDX file format of MNIST: a big-endian header `[0, 0, type, ndims]`, `ndims` u32
//! dimension sizes, then the values. Only unsigned bytes (`type = 0x08`) are read, gzip or raw.
//!
//! Every inconsistency (wrong magic, unsupported type, truncated header or body, trailing
//! bytes, corrupt gzip stream) is a typed [`IdxError`], never a panic.

use std::io::Read;

use flate2::read::GzDecoder;
use thiserror::Error;

/// What can be wrong with an IDX file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdxError {
    /// The first two bytes are not zero.
    #[error("not an IDX file: magic bytes {0:02x} {1:02x}, expected 00 00")]
    BadMagic(u8, u8),
    /// The type byte is not `0x08` (unsigned byte).
    #[error("unsupported IDX element type 0x{0:02x} (only 0x08, unsigned byte, is read)")]
    UnsupportedType(u8),
    /// The number of dimensions is zero or larger than 4.
    #[error("unsupported IDX rank {0}")]
    UnsupportedRank(u8),
    /// The file ends before the header or the values do.
    #[error("truncated IDX file: {expected} bytes needed, {got} present")]
    Truncated {
        /// Bytes the header says the file has.
        expected: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The file has bytes after the values.
    #[error("IDX file has {0} trailing bytes after its values")]
    TrailingBytes(usize),
    /// The dimensions multiply to more than fits in memory.
    #[error("IDX dimensions {0:?} are too large")]
    TooLarge(Vec<u32>),
    /// The gzip stream is corrupt.
    #[error("corrupt gzip stream: {0}")]
    Gzip(String),
}

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimension sizes, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Decompresses `bytes` if they start with the gzip magic `1f 8b`, then parses them.
pub fn parse(bytes: &[u8]) -> Result<IdxArray, IdxError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut raw).map_err(|e| IdxError::Gzip(e.to_string()))?;
        parse_raw(&raw)
    } else {
        parse_raw(bytes)
    }
}

/// Parses an uncompressed IDX file of unsigned bytes.
pub fn parse_raw(bytes: &[u8]) -> Result<IdxArray, IdxError> {
    if bytes.len() < 4 {
        return Err(IdxError::Truncated { expected: 4, got: bytes.len() });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(IdxError::BadMagic(bytes[0], bytes[1]));
    }
    if bytes[2] != 0x08 {
        return Err(IdxError::UnsupportedType(bytes[2]));
    }
    let rank = bytes[3];
    if rank == 0 || rank > 4 {
        return Err(IdxError::UnsupportedRank(rank));
    }
    let header = 4 + 4 * rank as usize;
    if bytes.len() < header {
        return Err(IdxError::Truncated { expected: header, got: bytes.len() });
    }
    let raw_dims: Vec<u32> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let count = raw_dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .filter(|&n| n <= isize::MAX as usize - header)
        .ok_or_else(|| IdxError::TooLarge(raw_dims.clone()))?;
    let expected = header + count;
    match bytes.len() {
        n if n < expected => Err(IdxError::Truncated { expected, got: n }),
        n if n > expected => Err(IdxError::TrailingBytes(n - expected)),
        _ => Ok(IdxArray {
            dims: raw_dims.iter().map(|&d| d as usize).collect(),
            data: bytes[header..].to_vec(),
        }),
    }
}

/// Encodes an array as an uncompressed IDX file (for tests and tools).
pub fn encode(array: &IdxArray) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, array.dims.len() as u8];
    for &d in &array.dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&array.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn sample() -> IdxArray {
        IdxArray { dims: vec![2, 3, 2], data: (0..12).collect() }
    }

    #[test]
    fn round_trips_raw_and_gzip() {
        let raw = encode(&sample());
        assert_eq!(parse(&raw).unwrap(), sample());
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&raw).unwrap();
        assert_eq!(parse(&gz.finish().unwrap()).unwrap(), sample());
    }

    #[test]
    fn every_corruption_is_a_typed_error() {
        let raw = encode(&sample());
        assert_eq!(parse(&raw[..3]), Err(IdxError::Truncated { expected: 4, got: 3 }));
        assert_eq!(parse(&raw[..9]), Err(IdxError::Truncated { expected: 16, got: 9 }));
        assert_eq!(parse(&raw[..20]), Err(IdxError::Truncated { expected: 28, got: 20 }));
        let mut long = raw.clone();
        long.push(7);
        assert_eq!(parse(&long), Err(IdxError::TrailingBytes(1)));
        let mut bad = raw.clone();
        bad[1] = 3;
        assert_eq!(parse(&bad), Err(IdxError::BadMagic(0, 3)));
        bad = raw.clone();
        bad[2] = 0x0d;
        assert_eq!(parse(&bad), Err(IdxError::UnsupportedType(0x0d)));
        bad = raw.clone();
        bad[3] = 0;
        assert_eq!(parse(&bad), Err(IdxError::UnsupportedRank(0)));
        let huge = [
            0, 0, 8, 4, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            255,
        ];
        assert!(matches!(parse(&huge), Err(IdxError::TooLarge(_))));
        // A gzip stream cut in the middle.
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        assert!(matches!(parse(&gz[..gz.len() / 2]), Err(IdxError::Gzip(_))));
    }
}
