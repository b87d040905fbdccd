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

/// The most values an IDX file may hold (1 GiB; MNIST's largest file holds 47 MB): a larger
/// header is [`IdxError::TooLarge`], so a corrupt or hostile header cannot make the reader
/// decompress or allocate without bound.
pub const MAX_VALUES: usize = 1 << 30;

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decompresses `bytes` if they start with the gzip magic `1f 8b`, then parses them.
///
/// The gzip stream is decoded as it is parsed, so a stream that decompresses to more than its
/// header announces is stopped there ([`IdxError::TrailingBytes`]) rather than held in memory.
pub fn parse(bytes: &[u8]) -> Result<IdxArray, IdxError> {
    if bytes.starts_with(&GZIP_MAGIC) { read(GzDecoder::new(bytes)) } else { parse_raw(bytes) }
}

/// Parses an uncompressed IDX file of unsigned bytes.
pub fn parse_raw(bytes: &[u8]) -> Result<IdxArray, IdxError> {
    read(bytes)
}

/// Parses an uncompressed IDX stream of unsigned bytes from `reader`; a read error (for a
/// [`GzDecoder`], a corrupt stream) is [`IdxError::Gzip`].
pub fn read<R: Read>(mut reader: R) -> Result<IdxArray, IdxError> {
    let mut magic = [0u8; 4];
    let got = fill(&mut reader, &mut magic)?;
    if got < 4 {
        return Err(IdxError::Truncated { expected: 4, got });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(IdxError::BadMagic(magic[0], magic[1]));
    }
    if magic[2] != 0x08 {
        return Err(IdxError::UnsupportedType(magic[2]));
    }
    let rank = magic[3];
    if rank == 0 || rank > 4 {
        return Err(IdxError::UnsupportedRank(rank));
    }
    let header = 4 + 4 * rank as usize;
    let mut dims = vec![0u8; header - 4];
    let got = 4 + fill(&mut reader, &mut dims)?;
    if got < header {
        return Err(IdxError::Truncated { expected: header, got });
    }
    let raw_dims: Vec<u32> =
        dims.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let count = raw_dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| IdxError::TooLarge(raw_dims.clone()))?;
    let expected = header + count;
    // Grows with the bytes that actually arrive, not with what the header claims.
    let mut data = Vec::new();
    (&mut reader)
        .take(count as u64)
        .read_to_end(&mut data)
        .map_err(|e| IdxError::Gzip(e.to_string()))?;
    if data.len() < count {
        return Err(IdxError::Truncated { expected, got: header + data.len() });
    }
    let trailing = std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| IdxError::Gzip(e.to_string()))?;
    if trailing > 0 {
        return Err(IdxError::TrailingBytes(trailing as usize));
    }
    Ok(IdxArray { dims: raw_dims.iter().map(|&d| d as usize).collect(), data })
}

/// Reads into `buf` until it is full or the stream ends; the number of bytes read.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, IdxError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IdxError::Gzip(e.to_string())),
        }
    }
    Ok(filled)
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
        // A header just above the cap.
        let over = [0, 0, 8, 2, 0, 0, 0x80, 0, 0, 0, 0x80, 1];
        assert!(matches!(parse(&over), Err(IdxError::TooLarge(_))));
    }

    #[test]
    fn a_gzip_stream_longer_than_its_header_is_stopped() {
        // 3 values announced, a megabyte of zeros delivered: TrailingBytes, counted exactly.
        let mut raw = encode(&IdxArray { dims: vec![3], data: vec![1, 2, 3] });
        raw.extend(std::iter::repeat_n(0u8, 1 << 20));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 10_000);
        assert_eq!(parse(&gz), Err(IdxError::TrailingBytes(1 << 20)));
    }
}
