//! NIfTI-1 (`.nii`, `.nii.gz`) reading and writing through the `nifti` crate.
//!
//! Geometry: sform, else qform, else pixdim; RAS+ world millimetres, as [`Volume`] holds it.

use crate::{file_err, FormatError};
use shapeflow_volume::{Volume, VoxelData};
use std::path::Path;

/// NIfTI reading and writing as methods of [`Volume`].
pub trait NiftiIo: Sized {
    /// Reads a 3D NIfTI-1 file; voxel types are held as [`crate::voxels`] says. Geometry
    /// from sform, else qform, else pixdim.
    fn read_nifti(path: &Path) -> Result<Self, FormatError>;
    /// Writes the volume as NIfTI-1 (`.nii` or `.nii.gz`), geometry in sform and pixdim.
    fn write_nifti(&self, path: &Path) -> Result<(), FormatError>;
    /// [`NiftiIo::write_nifti`] through a temporary file and a rename: the file appears
    /// whole or not at all.
    fn write_nifti_atomic(&self, path: &Path) -> Result<(), FormatError>;
}

impl NiftiIo for Volume {
    /// Writes the volume as NIfTI-1 (`.nii` or `.nii.gz`), geometry in sform and pixdim.
    fn write_nifti(&self, path: &Path) -> Result<(), FormatError> {
        use nifti::writer::WriterOptions;
        let header = nifti::NiftiHeader {
            pixdim: [
                1.0,
                self.spacing[0] as f32,
                self.spacing[1] as f32,
                self.spacing[2] as f32,
                1.0,
                1.0,
                1.0,
                1.0,
            ],
            sform_code: 2,
            qform_code: 0,
            srow_x: self.affine[0].map(|v| v as f32),
            srow_y: self.affine[1].map(|v| v as f32),
            srow_z: self.affine[2].map(|v| v as f32),
            xyzt_units: 2, // millimetres
            ..Default::default()
        };
        let shape = (self.dims[0], self.dims[1], self.dims[2]);
        let opts = WriterOptions::new(path).reference_header(&header);
        let res = match &self.data {
            VoxelData::U8(v) => {
                ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f(shape), v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|a| opts.write_nifti(&a).map_err(|e| e.to_string()))
            }
            VoxelData::I16(v) => {
                ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f(shape), v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|a| opts.write_nifti(&a).map_err(|e| e.to_string()))
            }
            VoxelData::F32(v) => {
                ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f(shape), v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|a| opts.write_nifti(&a).map_err(|e| e.to_string()))
            }
        };
        res.map_err(|m| file_err(path, format!("cannot write NIfTI: {m}")))
    }

    /// [`Volume::write_nifti`] through a temporary file and a rename: the file appears whole
    /// or not at all.
    fn write_nifti_atomic(&self, path: &Path) -> Result<(), FormatError> {
        crate::atomic::write_with(
            path,
            |tmp| self.write_nifti(tmp),
            |e| file_err(path, format!("cannot write NIfTI: {e}")),
        )
    }

    /// Reads a 3D NIfTI-1 file (`.nii`, gzip-compressed or not, whatever its name says).
    /// Voxel types are held as [`crate::voxels`] says; geometry from sform, else qform,
    /// else pixdim. The header is checked (size limit, file size) before any voxel is read.
    fn read_nifti(path: &Path) -> Result<Volume, FormatError> {
        let mut v = read_nifti_file(path, false).map_err(|m| file_err(path, m))?;
        v.pop()
            .ok_or_else(|| file_err(path, "no volume in the file"))
    }
}

/// Reads a NIfTI-1 file whose fourth dimension holds channels (the Medical Segmentation
/// Decathlon's multi-modal images: `dim = [4, x, y, z, C]`), one [`Volume`] per channel,
/// all on the header's grid. A 3D file gives one channel.
pub fn read_channels(path: &Path) -> Result<Vec<Volume>, FormatError> {
    read_nifti_file(path, true).map_err(|m| file_err(path, m))
}

/// NIfTI-1's header size, and NIfTI-2's.
const NIFTI1_HEADER: usize = 348;
const NIFTI2_HEADER: i32 = 540;

/// Reads the file as 3D, or with `channels` the fourth dimension as channels.
fn read_nifti_file(path: &Path, channels: bool) -> Result<Vec<Volume>, String> {
    use crate::voxels::{self, RawType};
    use nifti::{Endianness, NiftiType};
    use std::io::{BufReader, Read};
    let file = std::fs::File::open(path).map_err(|e| voxels::io_words(&e, "file"))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut file = BufReader::new(file);
    let gzip = std::io::BufRead::fill_buf(&mut file)
        .map_err(|e| voxels::io_words(&e, "file"))?
        .starts_with(&[0x1f, 0x8b]);
    let mut input: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut raw = [0u8; NIFTI1_HEADER];
    input.read_exact(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "the file is shorter than a NIfTI-1 header (348 bytes): not a NIfTI file, or truncated"
                .to_string()
        }
        _ => voxels::io_words(&e, "header"),
    })?;
    let sizeof_hdr = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if sizeof_hdr == NIFTI2_HEADER || sizeof_hdr.swap_bytes() == NIFTI2_HEADER {
        return Err(
            "a NIfTI-2 file: only NIfTI-1 is supported; convert it, e.g. with nibabel \
                    `nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz')`"
                .to_string(),
        );
    }
    if sizeof_hdr != NIFTI1_HEADER as i32 && sizeof_hdr.swap_bytes() != NIFTI1_HEADER as i32 {
        return Err(format!(
            "not a NIfTI-1 file (its first four bytes say a header of {sizeof_hdr} bytes, \
             NIfTI-1 has 348)"
        ));
    }
    match &raw[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(
                "a NIfTI header of a .hdr/.img pair: only single-file .nii / .nii.gz is \
                 supported; convert it to .nii.gz"
                    .to_string(),
            )
        }
        m => {
            return Err(format!(
                "not a NIfTI-1 file (magic {:?}, expected \"n+1\")",
                String::from_utf8_lossy(m)
            ))
        }
    }
    let h = nifti::NiftiHeader::from_reader(&raw[..])
        .map_err(|e| format!("malformed NIfTI-1 header: {e}"))?;
    let ndim = h.dim[0] as usize;
    let first_extra = if channels { 5 } else { 4 };
    if !(1..=7).contains(&ndim)
        || h.dim[first_extra..=ndim.max(first_extra - 1)]
            .iter()
            .any(|&d| d > 1)
    {
        return Err(format!(
            "expected a 3D volume{}, got {ndim} dimensions ({:?})",
            if channels {
                " or channels along the fourth dimension"
            } else {
                ""
            },
            &h.dim[1..=ndim.clamp(1, 7)]
        ));
    }
    let nchannels = if channels && ndim >= 4 {
        usize::from(h.dim[4].max(1))
    } else {
        1
    };
    let mut dims = [1usize; 3];
    for (a, d) in dims.iter_mut().enumerate().take(ndim.min(3)) {
        *d = h.dim[a + 1] as usize;
        if *d == 0 {
            return Err(format!("dimension {} is 0 in the header", a + 1));
        }
    }
    let spacing: [f64; 3] = std::array::from_fn(|a| h.pixdim[a + 1] as f64);
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(format!("spacing {spacing:?} (pixdim) must be positive"));
    }
    let ty = match h.data_type() {
        Ok(NiftiType::Int8) => RawType::I8,
        Ok(NiftiType::Uint8) => RawType::U8,
        Ok(NiftiType::Int16) => RawType::I16,
        Ok(NiftiType::Uint16) => RawType::U16,
        Ok(NiftiType::Int32) => RawType::I32,
        Ok(NiftiType::Uint32) => RawType::U32,
        Ok(NiftiType::Int64) => RawType::I64,
        Ok(NiftiType::Uint64) => RawType::U64,
        Ok(NiftiType::Float32) => RawType::F32,
        Ok(NiftiType::Float64) => RawType::F64,
        Ok(t) => {
            return Err(format!(
                "voxel type {t:?} is not supported (integer and float types are)"
            ))
        }
        Err(_) => {
            return Err(format!(
                "unknown voxel type code {} in the header",
                h.datatype
            ))
        }
    };
    // The limit bounds all channels together: what is read is what is held.
    voxels::check_voxels([dims[0], dims[1], dims[2].saturating_mul(nchannels)])?;
    let n = dims[0] * dims[1] * dims[2];
    let nbytes = n * nchannels * ty.size();
    let offset = h.vox_offset;
    if !(offset.is_finite() && offset >= NIFTI1_HEADER as f32 && offset <= (1u64 << 32) as f32) {
        return Err(format!("vox_offset {offset} in the header is invalid"));
    }
    let offset = offset as u64;
    voxels::check_fits(offset + nbytes as u64, file_len, gzip)?;
    voxels::skip(
        &mut input,
        offset - NIFTI1_HEADER as u64,
        "header extensions",
    )?;
    let bytes = voxels::read_exact_bounded(input, nbytes, "voxel data")?;
    let slope = h.scl_slope as f64;
    let inter = h.scl_inter as f64;
    if !(slope.is_finite() && inter.is_finite()) {
        return Err(format!(
            "scl_slope {slope} / scl_inter {inter} must be finite"
        ));
    }
    let scale = (slope != 0.0 && (slope != 1.0 || inter != 0.0)).then_some((slope, inter));
    let big_endian = h.endianness == Endianness::Big;
    let affine = if h.sform_code > 0 {
        Some([
            h.srow_x.map(|v| v as f64),
            h.srow_y.map(|v| v as f64),
            h.srow_z.map(|v| v as f64),
            [0.0, 0.0, 0.0, 1.0],
        ])
    } else if h.qform_code > 0 {
        Some(qform_affine(&h, spacing)?)
    } else {
        None
    };
    if affine.iter().flatten().flatten().any(|v| !v.is_finite()) {
        return Err("the header's sform/qform holds non-finite numbers".to_string());
    }
    bytes
        .chunks_exact(n * ty.size())
        .map(|channel| {
            let data = voxels::decode(channel, ty, big_endian, scale)?;
            let mut volume = Volume::new(dims, spacing, data).map_err(|e| e.to_string())?;
            if let Some(a) = affine {
                volume.affine = a;
            }
            Ok(volume)
        })
        .collect()
}

/// The qform affine, as the NIfTI-1 standard defines it (quaternion b, c, d; a from them;
/// qfac from pixdim[0]; offsets). Ours, because the `nifti` crate panics on a quaternion
/// whose b^2 + c^2 + d^2 exceeds 1 (found by fuzzing): here that is an error.
fn qform_affine(h: &nifti::NiftiHeader, spacing: [f64; 3]) -> Result<[[f64; 4]; 4], String> {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let n = b * b + c * c + d * d;
    if !n.is_finite() || n > 1.0 + 1e-6 {
        return Err(format!(
            "the qform quaternion (b, c, d) = ({b}, {c}, {d}) is not a rotation (b^2 + c^2 + d^2 \
             = {n} > 1): the header is corrupt"
        ));
    }
    let a = (1.0 - n).max(0.0).sqrt();
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let scale = [spacing[0], spacing[1], spacing[2] * qfac];
    let offset = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
    let mut m = [[0.0; 4]; 4];
    for row in 0..3 {
        for col in 0..3 {
            m[row][col] = r[row][col] * scale[col];
        }
        m[row][3] = offset[row];
    }
    m[3][3] = 1.0;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4D file (x, y, z, channel), as the Decathlon's multi-modal images are: one volume
    /// per channel on the header's grid; the 3D reader refuses it and names the dimensions.
    #[test]
    fn the_fourth_dimension_is_read_as_channels() {
        use nifti::writer::WriterOptions;
        let dir = tempfile::tempdir().unwrap();
        let header = nifti::NiftiHeader {
            pixdim: [1.0, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0],
            sform_code: 1,
            srow_x: [-0.5, 0.0, 0.0, 10.0],
            srow_y: [0.0, 0.75, 0.0, -4.0],
            srow_z: [0.0, 0.0, 2.0, 3.0],
            ..Default::default()
        };
        let vals: Vec<i16> = (0..3 * 2 * 2 * 2).map(|i| i as i16 - 5).collect();
        let p = dir.path().join("two.nii.gz");
        let a =
            ndarray::Array4::from_shape_vec(ndarray::ShapeBuilder::f((3, 2, 2, 2)), vals.clone())
                .unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let c = read_channels(&p).unwrap();
        assert_eq!(c.len(), 2);
        for (k, v) in c.iter().enumerate() {
            assert_eq!(v.dims, [3, 2, 2]);
            assert_eq!(v.data, VoxelData::I16(vals[k * 12..(k + 1) * 12].to_vec()));
            assert_eq!(v.affine[0], [-0.5, 0.0, 0.0, 10.0]);
            assert_eq!(v.affine[2], [0.0, 0.0, 2.0, 3.0]);
        }
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(
            e.contains("two.nii.gz") && e.contains("4 dimensions"),
            "{e}"
        );
        // A 3D file is one channel.
        let p3 = dir.path().join("one.nii");
        c[1].write_nifti(&p3).unwrap();
        assert_eq!(read_channels(&p3).unwrap(), vec![c[1].clone()]);
    }

    #[test]
    fn nifti_types_and_scaling_are_read() {
        use nifti::writer::WriterOptions;
        let dir = tempfile::tempdir().unwrap();
        let shape = ndarray::ShapeBuilder::f((3, 2, 2));
        let header = nifti::NiftiHeader {
            pixdim: [1.0, 0.5, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0],
            ..Default::default()
        };
        // u16, i32, f64 are read as f32 values.
        let vals: Vec<f64> = (0..12).map(|i| i as f64 * 3.0).collect();
        let p = dir.path().join("u16.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vals.iter().map(|&v| v as u16).collect())
            .unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        assert_eq!(
            Volume::read_nifti(&p).unwrap().to_f32(),
            vals.iter().map(|&v| v as f32).collect::<Vec<_>>()
        );
        let p = dir.path().join("i32.nii.gz");
        let a =
            ndarray::Array3::from_shape_vec(shape, vals.iter().map(|&v| v as i32 - 20).collect())
                .unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        assert_eq!(Volume::read_nifti(&p).unwrap().data.get_f32(0), -20.0);
        let p = dir.path().join("f64.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vals.clone()).unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let v = Volume::read_nifti(&p).unwrap();
        assert_eq!(v.data.get_f32(11), 33.0);
        assert_eq!(v.spacing, [0.5, 0.5, 2.0]);
        // scl_slope / scl_inter: stored u8 4 with slope 1.5, intercept -1 reads as 5.0. (The
        // nifti writer always stores slope 1, so set the two header fields, bytes 112..120.)
        let p = dir.path().join("scaled.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vec![4u8; 12]).unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b[112..116].copy_from_slice(&1.5f32.to_le_bytes());
        b[116..120].copy_from_slice(&(-1.0f32).to_le_bytes());
        std::fs::write(&p, b).unwrap();
        let v = Volume::read_nifti(&p).unwrap();
        assert_eq!(v.data.dtype(), "f32");
        assert_eq!(v.data.get_f32(5), 5.0);
        // Non-positive spacing and NaN voxels are errors naming the file.
        let bad = nifti::NiftiHeader {
            pixdim: [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            ..header.clone()
        };
        let p = dir.path().join("zero_spacing.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vec![1u8; 12]).unwrap();
        WriterOptions::new(&p)
            .reference_header(&bad)
            .write_nifti(&a)
            .unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(
            e.contains("zero_spacing.nii") && e.contains("spacing"),
            "{e}"
        );
        let p = dir.path().join("nan.nii");
        let a = ndarray::Array3::from_shape_vec(shape, vec![f32::NAN; 12]).unwrap();
        WriterOptions::new(&p)
            .reference_header(&header)
            .write_nifti(&a)
            .unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("nan.nii") && e.contains("NaN"), "{e}");
        // A truncated file is an error, not a panic.
        let full = std::fs::read(dir.path().join("f64.nii")).unwrap();
        let p = dir.path().join("truncated.nii");
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("truncated.nii"), "{e}");
    }

    #[test]
    fn nifti_roundtrip_keeps_data_and_affine() {
        let dir = tempfile::tempdir().unwrap();
        let dims = [5, 4, 3];
        let n = 60;
        for data in [
            VoxelData::U8((0..n).map(|i| i as u8).collect()),
            VoxelData::I16((0..n).map(|i| i as i16 * 37 - 900).collect()),
            VoxelData::F32((0..n).map(|i| i as f32 * 0.25 - 3.0).collect()),
        ] {
            let mut v = Volume::new(dims, [0.5, 0.75, 2.5], data).unwrap();
            v.affine[0][3] = -12.5;
            v.affine[1][3] = 30.25;
            v.affine[2][3] = 7.0;
            let p = dir.path().join(format!("v_{}.nii.gz", v.data.dtype()));
            v.write_nifti(&p).unwrap();
            let back = Volume::read_nifti(&p).unwrap();
            assert_eq!(back, v);
            // x fastest: voxel (1,0,0) is element 1, voxel (0,1,0) is element 5.
            assert_eq!(back.data.get_f32(back.index(1, 0, 0)), v.data.get_f32(1));
            assert_eq!(back.data.get_f32(back.index(0, 1, 0)), v.data.get_f32(5));
        }
    }

    /// A NIfTI-1 header for `dims` of `datatype` (bitpix `bits`), data following at 352.
    fn header_bytes(dims: [u16; 3], datatype: i16, bits: i16) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        h[0..4].copy_from_slice(&348i32.to_le_bytes());
        h[40..42].copy_from_slice(&3i16.to_le_bytes());
        for (a, d) in dims.iter().enumerate() {
            h[42 + 2 * a..44 + 2 * a].copy_from_slice(&d.to_le_bytes());
        }
        h[70..72].copy_from_slice(&datatype.to_le_bytes());
        h[72..74].copy_from_slice(&bits.to_le_bytes());
        for a in 0..4 {
            h[76 + 4 * a..80 + 4 * a].copy_from_slice(&1f32.to_le_bytes());
        }
        h[108..112].copy_from_slice(&352f32.to_le_bytes());
        h[344..348].copy_from_slice(b"n+1\0");
        h
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// An 8 MB `.nii.gz` of zeros whose header claims 2048^3 voxels is refused from its
    /// header, under the default limit, at once: nothing is inflated.
    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = header_bytes([2048, 2048, 2048], 2, 8);
        raw.resize(352 + (8 << 20), 0);
        let p = dir.path().join("bomb.nii.gz");
        std::fs::write(&p, gz(&raw)).unwrap();
        let t = std::time::Instant::now();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        assert!(e.contains("bomb.nii.gz") && e.contains("limit"), "{e}");
        // Under a limit it passes, the file is still refused before it is inflated in full:
        // 512 MiB declared cannot come from a few hundred bytes of gzip.
        let mut small = header_bytes([2048, 1024, 256], 2, 8);
        small.resize(352 + 1000, 0);
        std::fs::write(&p, gz(&small)).unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("cannot hold"), "{e}");
        // A plain file shorter than its header says: refused before reading.
        let p = dir.path().join("short.nii");
        let mut plain = header_bytes([64, 64, 64], 16, 32);
        plain.resize(352 + 100, 0);
        std::fs::write(&p, &plain).unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("holds 452"), "{e}");
    }

    /// int32 beyond 2^24 was rounded to f32; Inf was accepted; NIfTI-2 and truncated gzip
    /// gave the library's words. Each is now refused in plain words.
    #[test]
    fn values_that_cannot_be_held_exactly_and_foreign_files_are_refused_in_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mut h: Vec<u8>, data: &[u8], zip: bool| {
            h.extend_from_slice(data);
            let p = dir.path().join(name);
            std::fs::write(&p, if zip { gz(&h) } else { h }).unwrap();
            Volume::read_nifti(&p)
        };
        let big: Vec<u8> = [16_777_217i32, 2]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = file("int32.nii.gz", header_bytes([2, 1, 1], 8, 32), &big, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("int32") && e.contains("2^24"), "{e}");
        let ok: Vec<u8> = [16_777_216i32, -3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let v = file("int32ok.nii", header_bytes([2, 1, 1], 8, 32), &ok, false).unwrap();
        assert_eq!(v.to_f32(), vec![16_777_216.0, -3.0]);
        let inf: Vec<u8> = [1.0f32, f32::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = file("inf.nii", header_bytes([2, 1, 1], 16, 32), &inf, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inf.nii") && e.contains("infinite"), "{e}");
        let mut n2 = header_bytes([2, 1, 1], 2, 8);
        n2[0..4].copy_from_slice(&540i32.to_le_bytes());
        let e = file("two.nii", n2, &[1, 2], false).unwrap_err().to_string();
        assert!(e.contains("NIfTI-2") && e.contains("convert"), "{e}");
        let whole = gz(&[header_bytes([64, 64, 64], 2, 8), vec![7u8; 1 << 18]].concat());
        let p = dir.path().join("cut.nii.gz");
        std::fs::write(&p, &whole[..whole.len() / 2]).unwrap();
        let e = Volume::read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("cut.nii.gz") && e.contains("ends early"), "{e}");
        assert!(!e.contains("Io(") && !e.contains("Kind("), "{e}");
    }

    /// Found by fuzzing: a qform quaternion with b^2 + c^2 + d^2 > 1 made the `nifti`
    /// crate panic; it is a named error. A valid one gives the standard's affine (checked
    /// against a 90 degree rotation about z by hand).
    #[test]
    fn a_corrupt_qform_quaternion_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let with_q = |b: f32, c: f32, d: f32, name: &str| {
            let mut h = header_bytes([2, 1, 1], 2, 8);
            h[252..254].copy_from_slice(&1i16.to_le_bytes()); // qform_code
            for (at, v) in [
                (256, b),
                (260, c),
                (264, d),
                (268, 5.0),
                (272, 6.0),
                (276, 7.0),
            ] {
                h[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            h.extend_from_slice(&[1, 2]);
            let p = dir.path().join(name);
            std::fs::write(&p, &h).unwrap();
            Volume::read_nifti(&p)
        };
        let e = with_q(1e10, 0.0, 0.0, "q.nii").unwrap_err().to_string();
        assert!(e.contains("q.nii") && e.contains("not a rotation"), "{e}");
        // 90 degrees about z: a = d = sqrt(1/2): x -> y, y -> -x.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let v = with_q(0.0, 0.0, s, "rot.nii").unwrap();
        let want = [
            [0.0, -1.0, 0.0, 5.0],
            [1.0, 0.0, 0.0, 6.0],
            [0.0, 0.0, 1.0, 7.0],
        ];
        for (got, want) in v.affine.iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{:?}", v.affine);
            }
        }
        // The fuzzer's input itself.
        let crash = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../../tests/fuzz/regressions/nifti/crash-dee3e851723abdabe38e59e00708ecfd178e3006",
        );
        let p = dir.path().join("crash.nii");
        std::fs::copy(&crash, &p).unwrap();
        assert!(Volume::read_nifti(&p).is_err());
    }
}
