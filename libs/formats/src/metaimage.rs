//! ITK MetaImage: `.mha` (header and data in one file) and `.mhd` (header beside a data file),
//! as ITK, SimpleITK and many challenges write them.
//!
//! Read: 3D scalar images, `BinaryData = True`, either byte order, zlib-compressed or not
//! (`CompressedData`), `HeaderSize` (including -1: data at the end), `ElementDataFile` LOCAL
//! or one file; `TransformMatrix` (the direction of each axis, three numbers per axis) and
//! `Offset` in ITK's LPS world, converted to RAS+ as NIfTI's. Written: `.mha` with zlib data,
//! `.mhd` with a `.zraw` beside it. Voxel types as [`crate::voxels`] says.

use crate::voxels::{self, RawType};
use shapeflow_volume::{Volume, VoxelData};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

/// Longest header read: a file whose header goes on longer is not a MetaImage.
const MAX_HEADER: u64 = 1 << 20;

fn element_type(s: &str) -> Option<RawType> {
    Some(match s {
        "MET_CHAR" => RawType::I8,
        "MET_UCHAR" => RawType::U8,
        "MET_SHORT" => RawType::I16,
        "MET_USHORT" => RawType::U16,
        "MET_INT" | "MET_LONG" => RawType::I32,
        "MET_UINT" | "MET_ULONG" => RawType::U32,
        "MET_LONG_LONG" => RawType::I64,
        "MET_ULONG_LONG" => RawType::U64,
        "MET_FLOAT" => RawType::F32,
        "MET_DOUBLE" => RawType::F64,
        _ => return None,
    })
}

fn numbers<const N: usize>(
    fields: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<[f64; N]>, String> {
    let Some(v) = fields.get(key) else {
        return Ok(None);
    };
    let parts: Vec<f64> = v
        .split_whitespace()
        .map(|x| x.parse::<f64>().ok().filter(|f| f.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("`{key} = {v}` must be {N} numbers"))?;
    <[f64; N]>::try_from(parts)
        .map(Some)
        .map_err(|_| format!("`{key} = {v}` must be {N} numbers"))
}

fn flag(fields: &BTreeMap<String, String>, key: &str) -> Result<Option<bool>, String> {
    match fields.get(key).map(|s| s.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v == "true" || v == "1" => Ok(Some(true)),
        Some(v) if v == "false" || v == "0" => Ok(Some(false)),
        Some(v) => Err(format!("`{key} = {v}` must be True or False")),
    }
}

/// Reads a 3D MetaImage (`.mha` or `.mhd`). Errors name the field at fault.
pub fn read(path: &Path) -> Result<Volume, String> {
    let file = std::fs::File::open(path).map_err(|e| voxels::io_words(&e, "file"))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut input = std::io::BufReader::new(file);
    // Header: `Key = Value` lines; `ElementDataFile` is the last.
    let mut fields = BTreeMap::new();
    let mut header_len = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let got = (&mut input)
            .take(MAX_HEADER - header_len + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| voxels::io_words(&e, "header"))?;
        header_len += got as u64;
        if header_len > MAX_HEADER {
            return Err("the header is longer than 1 MiB: not a MetaImage, or corrupt".into());
        }
        if got == 0 {
            return Err(
                "the header ends without `ElementDataFile`: not a MetaImage, or truncated".into(),
            );
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let (k, v) = text
            .split_once('=')
            .ok_or_else(|| format!("malformed header line {text:?} (expected `Key = Value`)"))?;
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        let last = k == "ElementDataFile";
        fields.insert(k, v);
        if last {
            break;
        }
    }
    if fields.is_empty() || (!fields.contains_key("NDims") && !fields.contains_key("DimSize")) {
        return Err("not a MetaImage (no NDims / DimSize)".into());
    }
    if let Some(t) = fields.get("ObjectType") {
        if t != "Image" {
            return Err(format!("`ObjectType = {t}`: only images are read"));
        }
    }
    let ndims: usize = fields
        .get("NDims")
        .map(|v| {
            v.parse()
                .map_err(|_| format!("`NDims = {v}` is not a number"))
        })
        .transpose()?
        .unwrap_or(3);
    if ndims != 3 {
        return Err(format!("`NDims = {ndims}`: only 3D images are read"));
    }
    let channels: usize = fields
        .get("ElementNumberOfChannels")
        .map(|v| v.parse().unwrap_or(0))
        .unwrap_or(1);
    if channels != 1 {
        return Err(format!(
            "`ElementNumberOfChannels = {}`: only one channel per file is read",
            fields["ElementNumberOfChannels"]
        ));
    }
    let size: [f64; 3] = numbers(&fields, "DimSize")?.ok_or("missing `DimSize`")?;
    if size
        .iter()
        .any(|&d| d < 1.0 || d.fract() != 0.0 || d > u32::MAX as f64)
    {
        return Err(format!(
            "`DimSize` {size:?} must be three positive whole numbers"
        ));
    }
    let dims = size.map(|d| d as usize);
    let n = voxels::check_voxels(dims)?;
    let ty_s = fields.get("ElementType").ok_or("missing `ElementType`")?;
    let ty =
        element_type(ty_s).ok_or_else(|| format!("`ElementType = {ty_s}` is not supported"))?;
    if flag(&fields, "BinaryData")? == Some(false) {
        return Err("`BinaryData = False` (ASCII voxels) is not supported".into());
    }
    let big_endian = flag(&fields, "BinaryDataByteOrderMSB")?
        .or(flag(&fields, "ElementByteOrderMSB")?)
        .unwrap_or(false);
    let compressed = flag(&fields, "CompressedData")?.unwrap_or(false);
    let spacing: [f64; 3] = numbers(&fields, "ElementSpacing")?
        .or(numbers(&fields, "ElementSize")?)
        .unwrap_or([1.0; 3]);
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(format!("`ElementSpacing` {spacing:?} must be positive"));
    }
    let direction: [f64; 9] = numbers(&fields, "TransformMatrix")?
        .or(numbers(&fields, "Rotation")?)
        .or(numbers(&fields, "Orientation")?)
        .unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let origin: [f64; 3] = numbers(&fields, "Offset")?
        .or(numbers(&fields, "Position")?)
        .or(numbers(&fields, "Origin")?)
        .unwrap_or([0.0; 3]);
    let header_size: i64 = fields
        .get("HeaderSize")
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|&h| h >= -1)
                .ok_or_else(|| format!("`HeaderSize = {v}` must be -1 or a count of bytes"))
        })
        .transpose()?
        .unwrap_or(0);

    // Data.
    let data_file = fields["ElementDataFile"].clone();
    let (src, src_len): (Box<dyn Read>, u64) = if data_file == "LOCAL" {
        (Box::new(input), file_len.saturating_sub(header_len))
    } else if data_file.starts_with("LIST") || data_file.contains('%') {
        return Err(format!(
            "`ElementDataFile = {data_file}`: multi-file data is not supported"
        ));
    } else {
        let p = path.parent().unwrap_or(Path::new(".")).join(&data_file);
        let f = std::fs::File::open(&p).map_err(|e| {
            format!(
                "data file {}: {}",
                p.display(),
                voxels::io_words(&e, "file")
            )
        })?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        (Box::new(std::io::BufReader::new(f)), len)
    };
    let want = n * ty.size();
    let bytes = if compressed {
        if header_size == -1 {
            return Err("`HeaderSize = -1` is only defined for uncompressed data".into());
        }
        let stored = match fields.get("CompressedDataSize") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("`CompressedDataSize = {v}` is not a count of bytes"))?,
            None => src_len.saturating_sub(header_size as u64),
        };
        if stored > src_len.saturating_sub(header_size as u64) {
            return Err(format!(
                "`CompressedDataSize = {stored}` but the file holds {} bytes of data (truncated)",
                src_len.saturating_sub(header_size as u64)
            ));
        }
        voxels::check_fits(want as u64, stored, true)?;
        let mut src = src;
        voxels::skip(&mut src, header_size as u64, "`HeaderSize`")?;
        let mut dec = flate2::read::ZlibDecoder::new(src.take(stored));
        let bytes = voxels::read_exact_bounded(&mut dec, want, "zlib data")?;
        let mut extra = [0u8; 1];
        if dec
            .read(&mut extra)
            .map_err(|e| voxels::io_words(&e, "zlib data"))?
            > 0
        {
            return Err(format!(
                "the compressed data holds more than the {want} bytes that `DimSize` and \
                 `ElementType` declare"
            ));
        }
        bytes
    } else {
        let skip = if header_size == -1 {
            src_len
                .checked_sub(want as u64)
                .ok_or_else(|| format!("{src_len} bytes of data, {want} needed (truncated)"))?
        } else {
            header_size as u64
        };
        if src_len != u64::MAX && src_len != skip + want as u64 {
            return Err(format!(
                "{src_len} bytes of data, but `HeaderSize`, `DimSize` and `ElementType` account \
                 for {} (truncated, or the header does not describe the data)",
                skip + want as u64
            ));
        }
        let mut src = src;
        voxels::skip(&mut src, skip, "`HeaderSize`")?;
        voxels::read_exact_bounded(src, want, "voxel data")?
    };
    let data = voxels::decode(&bytes, ty, big_endian, None)?;
    drop(bytes);
    let mut vol = Volume::new(dims, spacing, data).map_err(|e| e.to_string())?;
    // LPS world: x_lps = origin + sum_c direction_c * spacing_c * i_c; RAS negates x and y.
    let signs = [-1.0, -1.0, 1.0];
    for r in 0..3 {
        for c in 0..3 {
            vol.affine[r][c] = signs[r] * direction[c * 3 + r] * spacing[c];
        }
        vol.affine[r][3] = signs[r] * origin[r];
    }
    Ok(vol)
}

/// Writes `vol` as MetaImage: `.mha` (zlib data in the file) or `.mhd` with `<stem>.zraw`.
pub fn write(vol: &Volume, path: &Path) -> Result<(), String> {
    let (ty, raw): (&str, Vec<u8>) = match &vol.data {
        VoxelData::U8(v) => ("MET_UCHAR", v.clone()),
        VoxelData::I16(v) => (
            "MET_SHORT",
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        VoxelData::F32(v) => (
            "MET_FLOAT",
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).map_err(|e| e.to_string())?;
    let data = enc.finish().map_err(|e| e.to_string())?;
    drop(raw);
    let signs = [-1.0, -1.0, 1.0];
    let mut direction = [0.0f64; 9];
    for c in 0..3 {
        for r in 0..3 {
            direction[c * 3 + r] = signs[r] * vol.affine[r][c] / vol.spacing[c];
        }
    }
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let detached = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mhd"));
    let data_path: Option<PathBuf> =
        detached.then(|| crate::atomic::final_path(path).with_extension("zraw"));
    let header = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
         CompressedData = True\nCompressedDataSize = {}\nTransformMatrix = {}\nOffset = {}\n\
         CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = {}\n\
         DimSize = {} {} {}\nElementType = {ty}\nElementDataFile = {}\n",
        data.len(),
        join(&direction),
        join(&[-vol.affine[0][3], -vol.affine[1][3], vol.affine[2][3]]),
        join(&vol.spacing),
        vol.dims[0],
        vol.dims[1],
        vol.dims[2],
        match &data_path {
            Some(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            None => "LOCAL".to_string(),
        }
    );
    let io = |e: std::io::Error| e.to_string();
    match data_path {
        Some(p) => {
            crate::atomic::write(&p, &data).map_err(io)?;
            std::fs::write(path, header).map_err(io)
        }
        None => {
            let mut f = std::fs::File::create(path).map_err(io)?;
            f.write_all(header.as_bytes()).map_err(io)?;
            f.write_all(&data).map_err(io)?;
            f.sync_all().map_err(io)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data: VoxelData) -> Volume {
        let mut v = Volume::new([3, 4, 5], [0.8, 0.9, 2.5], data).unwrap();
        v.affine[0][3] = 100.0;
        v.affine[1][3] = -50.0;
        v.affine[2][3] = 20.0;
        v
    }

    #[test]
    fn roundtrip_mha_and_mhd() {
        let d = tempfile::tempdir().unwrap();
        for data in [
            VoxelData::U8((0..60).map(|i| i as u8).collect()),
            VoxelData::I16((0..60).map(|i| i as i16 * 37 - 900).collect()),
            VoxelData::F32((0..60).map(|i| i as f32 * 0.25 - 3.0).collect()),
        ] {
            let v = sample(data);
            for ext in ["mha", "mhd"] {
                let p = d.path().join(format!("v_{}.{ext}", v.data.dtype()));
                write(&v, &p).unwrap();
                let back = read(&p).unwrap();
                assert_eq!(back, v, "{ext}");
            }
        }
    }

    #[test]
    fn uncompressed_big_endian_and_header_skip_are_read_exactly_or_refused() {
        let d = tempfile::tempdir().unwrap();
        let vals: Vec<i32> = (0..60).map(|i| i * 1000 - 7).collect();
        let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
        let header = |extra: &str, file: &str| {
            format!(
                "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n\
                 {extra}ElementSpacing = 0.8 0.9 2.5\nDimSize = 3 4 5\nElementType = MET_INT\n\
                 ElementDataFile = {file}\n"
            )
        };
        let p = d.path().join("be.mha");
        let mut b = header("", "LOCAL").into_bytes();
        b.extend_from_slice(&be);
        std::fs::write(&p, &b).unwrap();
        let v = read(&p).unwrap();
        assert_eq!(
            v.to_f32(),
            vals.iter().map(|&x| x as f32).collect::<Vec<_>>()
        );
        // Data at the end of a detached file, after 16 bytes of something else.
        std::fs::write(d.path().join("d.raw"), [vec![9u8; 16], be.clone()].concat()).unwrap();
        let p = d.path().join("end.mhd");
        std::fs::write(&p, header("HeaderSize = -1\n", "d.raw")).unwrap();
        assert_eq!(read(&p).unwrap().to_f32(), v.to_f32());
        // Without the skip the sizes do not match: refused, not read from the wrong place.
        let p = d.path().join("noskip.mhd");
        std::fs::write(&p, header("", "d.raw")).unwrap();
        assert!(read(&p).unwrap_err().contains("account for"));
        // Truncated, wrong type, 2D, huge: named.
        for (name, text, needle) in [
            (
                "short.mha",
                [header("", "LOCAL").into_bytes(), be[..100].to_vec()].concat(),
                "truncated",
            ),
            (
                "type.mha",
                header("", "LOCAL")
                    .replace("MET_INT", "MET_FLOAT_MATRIX")
                    .into_bytes(),
                "ElementType",
            ),
            (
                "two.mha",
                header("", "LOCAL")
                    .replace("NDims = 3", "NDims = 2")
                    .into_bytes(),
                "3D",
            ),
            (
                "huge.mha",
                header("", "LOCAL")
                    .replace("DimSize = 3 4 5", "DimSize = 4096 4096 4096")
                    .into_bytes(),
                "limit",
            ),
            ("none.mha", b"hello\n".to_vec(), "Key = Value"),
        ] {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            let e = read(&p).unwrap_err();
            assert!(e.contains(needle), "{name}: {e}");
        }
    }
}
