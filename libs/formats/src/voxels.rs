//! What every reader shares: the limit on a volume's size, bounded reads of voxel bytes, and
//! the one rule for how a file's voxel type is held in memory.
//!
//! | file type | held as | exact? |
//! |---|---|---|
//! | uint8 | u8 | yes |
//! | int8, int16 | i16 | yes |
//! | uint16 | f32 | yes |
//! | int32, uint32, int64, uint64 | f32 | yes: a value beyond ±2^24 (not exact as f32) is refused |
//! | float32 | f32 | yes |
//! | float64 | f32 | rounded to the nearest f32 (7 significant digits); beyond f32's range refused |
//! | scaled (NIfTI `scl_slope`) | f32 | computed in f64, rounded to f32 |
//!
//! NaN and infinite voxels are refused in every type.

use shapeflow_volume::VoxelData;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

/// Default limit on the voxels of one volume: 2^30 (4 GiB as f32), some 14 times a
/// 512 x 512 x 300 CT. Raise it with [`set_max_voxels`] (the CLI's `--max-voxels`, or
/// `SHAPEFLOW_MAX_VOXELS`).
pub const DEFAULT_MAX_VOXELS: u64 = 1 << 30;

/// The environment variable that sets [`max_voxels`] (read by the CLI).
pub const MAX_VOXELS_ENV: &str = "SHAPEFLOW_MAX_VOXELS";

static MAX_VOXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_VOXELS);

/// The largest volume (in voxels) a reader accepts; checked on the header, before any voxel
/// is read or allocated.
pub fn max_voxels() -> u64 {
    MAX_VOXELS.load(Ordering::Relaxed)
}

/// Sets [`max_voxels`] for the whole process.
pub fn set_max_voxels(n: u64) {
    MAX_VOXELS.store(n.max(1), Ordering::Relaxed);
}

/// Deflate cannot expand by more than about 1032:1; a compressed file smaller than its
/// declared data over this ratio cannot hold it.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The voxel count of `dims`, if within [`max_voxels`].
pub(crate) fn check_voxels(dims: [usize; 3]) -> Result<usize, String> {
    let n = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let limit = max_voxels();
    if n > limit {
        return Err(format!(
            "the header declares {} x {} x {} = {n} voxels, more than the limit of {limit} \
             (corrupt, or larger than this run allows: raise it with --max-voxels or {MAX_VOXELS_ENV})",
            dims[0], dims[1], dims[2]
        ));
    }
    Ok(n as usize)
}

/// Whether a stream of `available` bytes on disk (compressed if `gzip`) can hold `needed`
/// bytes of data; refuses at once what it cannot, before anything is inflated.
pub(crate) fn check_fits(needed: u64, available: u64, gzip: bool) -> Result<(), String> {
    if gzip {
        let most = available
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1 << 16);
        if needed > most {
            return Err(format!(
                "the header declares {needed} bytes of voxel data, which {available} bytes of \
                 gzip cannot hold (the file is truncated or its header is wrong)"
            ));
        }
    } else if needed > available {
        return Err(format!(
            "the header declares {needed} bytes of voxel data but the file holds {available} \
             (the file is truncated or its header is wrong)"
        ));
    }
    Ok(())
}

/// Reads exactly `n` bytes, never more, growing the buffer as data arrives (a header that
/// lies about the size costs no memory). Errors in plain words.
pub(crate) fn read_exact_bounded(r: impl Read, n: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(n.min(64 << 20));
    r.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| io_words(&e, what))?;
    if buf.len() < n {
        return Err(format!(
            "the file ends early: {} of the {n} bytes of {what} are there (truncated or corrupt)",
            buf.len()
        ));
    }
    Ok(buf)
}

/// Skips `n` bytes of a stream.
pub(crate) fn skip(r: &mut impl Read, n: u64, what: &str) -> Result<(), String> {
    let got =
        std::io::copy(&mut r.take(n), &mut std::io::sink()).map_err(|e| io_words(&e, what))?;
    if got < n {
        return Err(format!(
            "the file ends early: {what} needs {n} bytes, {got} are there"
        ));
    }
    Ok(())
}

/// An I/O error while reading `what`, in a user's words.
pub(crate) fn io_words(e: &std::io::Error, what: &str) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof => {
            format!("the file ends early, inside the {what} (truncated or corrupt)")
        }
        ErrorKind::InvalidInput | ErrorKind::InvalidData => {
            format!("the compressed {what} is corrupt ({e}); the file is damaged")
        }
        ErrorKind::NotFound => "no such file".to_string(),
        ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read the {what}: {e}"),
    }
}

/// A voxel type as files store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl RawType {
    pub(crate) fn size(self) -> usize {
        match self {
            RawType::I8 | RawType::U8 => 1,
            RawType::I16 | RawType::U16 => 2,
            RawType::I32 | RawType::U32 | RawType::F32 => 4,
            RawType::I64 | RawType::U64 | RawType::F64 => 8,
        }
    }
    fn name(self) -> &'static str {
        match self {
            RawType::I8 => "int8",
            RawType::U8 => "uint8",
            RawType::I16 => "int16",
            RawType::U16 => "uint16",
            RawType::I32 => "int32",
            RawType::U32 => "uint32",
            RawType::I64 => "int64",
            RawType::U64 => "uint64",
            RawType::F32 => "float32",
            RawType::F64 => "float64",
        }
    }
}

/// Largest integer magnitude an f32 holds exactly.
const F32_EXACT: f64 = 16_777_216.0;

/// Decodes `bytes` (`n` elements of `ty`, big- or little-endian) by the table in the module's
/// doc; `scale` = (slope, intercept) turns every type into f32 values `v * slope + inter`.
pub(crate) fn decode(
    bytes: &[u8],
    ty: RawType,
    big_endian: bool,
    scale: Option<(f64, f64)>,
) -> Result<VoxelData, String> {
    let size = ty.size();
    let word = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        if big_endian {
            b[..size].reverse();
        }
        b
    };
    let value = |b: [u8; 8]| -> f64 {
        match ty {
            RawType::I8 => b[0] as i8 as f64,
            RawType::U8 => b[0] as f64,
            RawType::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            RawType::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            RawType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            RawType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            RawType::I64 => i64::from_le_bytes(b) as f64,
            RawType::U64 => u64::from_le_bytes(b) as f64,
            RawType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            RawType::F64 => f64::from_le_bytes(b),
        }
    };
    let chunks = bytes.chunks_exact(size);
    let data = match (ty, scale) {
        (RawType::U8, None) => VoxelData::U8(bytes.to_vec()),
        (RawType::I8, None) => VoxelData::I16(bytes.iter().map(|&b| b as i8 as i16).collect()),
        (RawType::I16, None) => VoxelData::I16(
            chunks
                .map(|c| {
                    let b = word(c);
                    i16::from_le_bytes([b[0], b[1]])
                })
                .collect(),
        ),
        (_, Some((slope, inter))) => {
            let mut out = Vec::with_capacity(bytes.len() / size);
            for (i, c) in chunks.enumerate() {
                let v = value(word(c)) * slope + inter;
                out.push(finite_f32(v, i)?);
            }
            VoxelData::F32(out)
        }
        (_, None) => {
            let integer = !matches!(ty, RawType::F32 | RawType::F64);
            let mut out = Vec::with_capacity(bytes.len() / size);
            for (i, c) in chunks.enumerate() {
                let v = value(word(c));
                if integer && v.abs() > F32_EXACT {
                    return Err(format!(
                        "{} voxel {i} is {v}: integers beyond ±2^24 (16,777,216) cannot be held \
                         exactly (voxels are held as 32-bit floats); store the image as int16 or \
                         float32, or rescale it",
                        ty.name()
                    ));
                }
                out.push(finite_f32(v, i)?);
            }
            VoxelData::F32(out)
        }
    };
    Ok(data)
}

fn finite_f32(v: f64, i: usize) -> Result<f32, String> {
    if v.is_nan() {
        return Err(format!(
            "voxel {i} is NaN: images with NaN voxels are refused (replace them first)"
        ));
    }
    let f = v as f32;
    if !f.is_finite() {
        return Err(format!(
            "voxel {i} is {v}: infinite values, or values beyond the 32-bit float range, are \
             refused"
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_decode_exactly_or_are_refused() {
        let le = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let be = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_be_bytes()).collect() };
        let ok = [-16_777_216, 0, 5, 16_777_216];
        for (bytes, big) in [(le(&ok), false), (be(&ok), true)] {
            let d = decode(&bytes, RawType::I32, big, None).unwrap();
            assert_eq!(d, VoxelData::F32(ok.iter().map(|&v| v as f32).collect()));
        }
        let e = decode(&le(&[1, 16_777_217]), RawType::I32, false, None).unwrap_err();
        assert!(e.contains("voxel 1") && e.contains("2^24"), "{e}");
        let e = decode(&f32::INFINITY.to_le_bytes(), RawType::F32, false, None).unwrap_err();
        assert!(e.contains("infinite"), "{e}");
        let e = decode(&f64::NAN.to_le_bytes(), RawType::F64, false, None).unwrap_err();
        assert!(e.contains("NaN"), "{e}");
        let e = decode(&1e300f64.to_le_bytes(), RawType::F64, false, None).unwrap_err();
        assert!(e.contains("beyond"), "{e}");
        assert_eq!(
            decode(&[0xff], RawType::I8, false, None).unwrap(),
            VoxelData::I16(vec![-1])
        );
        assert_eq!(
            decode(&[4], RawType::U8, false, Some((1.5, -1.0))).unwrap(),
            VoxelData::F32(vec![5.0])
        );
    }

    #[test]
    fn sizes_are_checked_before_reading() {
        assert!(check_voxels([2048, 2048, 2048])
            .unwrap_err()
            .contains("limit"));
        assert_eq!(check_voxels([10, 10, 10]).unwrap(), 1000);
        assert!(check_fits(1000, 999, false).is_err());
        assert!(check_fits(1000, 1000, false).is_ok());
        assert!(check_fits(8 << 30, 1 << 20, true).is_err());
        let e = read_exact_bounded(&[1u8, 2, 3][..], 5, "voxel data").unwrap_err();
        assert!(e.contains("3 of the 5"), "{e}");
    }
}
