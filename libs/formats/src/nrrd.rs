//! A small NRRD reader and writer (the MICCAI 2015 / PDDCA release is NRRD).
//!
//! Supported: NRRD0001-0005 magic, attached and detached (`data file:`) data, `raw` and
//! `gzip` encodings, both endiannesses, integer and float types, `space directions` /
//! `space origin` (or `spacings`), `byte skip` / `line skip`. Geometry is converted from the
//! file's space (LPS, RAS, LAS...) to RAS+, NIfTI's convention, so volumes from both formats
//! share one world frame.

use crate::voxels::{self, RawType};
use flate2::read::GzDecoder;
use shapeflow_volume::{Volume, VoxelData};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Longest header read: a file whose header goes on longer is not a NRRD file.
const MAX_HEADER: u64 = 1 << 20;

fn err(path: &Path, m: impl Into<String>) -> String {
    format!("{}: {}", path.display(), m.into())
}

/// NRRD's type names, as the shared voxel type.
fn parse_type(s: &str) -> Option<RawType> {
    Some(match s {
        "signed char" | "int8" | "int8_t" => RawType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => RawType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            RawType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => RawType::U16,
        "int" | "signed int" | "int32" | "int32_t" => RawType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => RawType::U32,
        "float" => RawType::F32,
        "double" => RawType::F64,
        _ => return None,
    })
}

fn parse_vector(s: &str) -> Option<[f64; 3]> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let v: Vec<f64> = inner
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

/// Signs that turn the file's space axes into RAS.
fn space_signs(space: &str) -> Option<[f64; 3]> {
    Some(match space.to_ascii_lowercase().as_str() {
        "left-posterior-superior" | "lps" => [-1.0, -1.0, 1.0],
        "right-anterior-superior" | "ras" => [1.0, 1.0, 1.0],
        "left-anterior-superior" | "las" => [-1.0, 1.0, 1.0],
        "scanner-xyz" | "3d-right-handed" => [1.0, 1.0, 1.0],
        _ => return None,
    })
}

/// Reads a 3D NRRD file. Integer labels (uchar) stay u8, int8/int16 become i16,
/// everything else f32. Errors name the file and what is wrong.
pub fn read(path: &Path) -> Result<Volume, String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| err(path, voxels::io_words(&e, "file")))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut input = std::io::BufReader::new(file);
    // The header ends at the first empty line (or, for a detached header, at the end).
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut header_len = 0u64;
    let mut first = true;
    let mut line_buf = Vec::new();
    loop {
        line_buf.clear();
        let got = (&mut input)
            .take(MAX_HEADER - header_len + 1)
            .read_until(b'\n', &mut line_buf)
            .map_err(|e| err(path, voxels::io_words(&e, "header")))?;
        header_len += got as u64;
        if header_len > MAX_HEADER {
            return Err(err(
                path,
                "the header is longer than 1 MiB: not a NRRD file, or corrupt",
            ));
        }
        if first {
            if !line_buf.starts_with(b"NRRD000") {
                return Err(err(path, "not a NRRD file (no NRRD000x magic)"));
            }
            first = false;
            continue;
        }
        if got == 0 {
            break; // detached header without a trailing blank line
        }
        let line = String::from_utf8_lossy(&line_buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if line.is_empty() {
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(": ") {
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        } else if line.contains(":=") {
            continue; // key/value pairs: ignored
        } else {
            return Err(err(path, format!("malformed header line {line:?}")));
        }
    }
    let get = |k: &str| fields.get(k).map(String::as_str);
    let ty_s = get("type").ok_or_else(|| err(path, "missing `type`"))?;
    let ty = parse_type(ty_s).ok_or_else(|| err(path, format!("unsupported type `{ty_s}`")))?;
    let dim: usize = get("dimension")
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| err(path, "missing or bad `dimension`"))?;
    if dim != 3 {
        return Err(err(
            path,
            format!("expected a 3D volume, dimension is {dim}"),
        ));
    }
    let sizes: Vec<usize> = get("sizes")
        .ok_or_else(|| err(path, "missing `sizes`"))?
        .split_whitespace()
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()
        .ok_or_else(|| err(path, "bad `sizes`"))?;
    if sizes.len() != 3 || sizes.contains(&0) {
        return Err(err(
            path,
            format!("`sizes` must be three positive numbers, got {sizes:?}"),
        ));
    }
    let dims = [sizes[0], sizes[1], sizes[2]];
    let n = voxels::check_voxels(dims).map_err(|m| err(path, m))?;
    let encoding = get("encoding").ok_or_else(|| err(path, "missing `encoding`"))?;
    let big_endian = match get("endian") {
        Some("big") => true,
        Some("little") | None => false,
        Some(e) => return Err(err(path, format!("bad endian `{e}`"))),
    };
    if ty.size() > 1 && get("endian").is_none() {
        return Err(err(path, "missing `endian` for a multi-byte type"));
    }

    // Geometry.
    let signs = match get("space") {
        Some(s) => space_signs(s).ok_or_else(|| err(path, format!("unsupported space `{s}`")))?,
        None => [1.0, 1.0, 1.0],
    };
    let mut affine = [[0.0f64; 4]; 4];
    affine[3][3] = 1.0;
    if let Some(sd) = get("space directions") {
        // Vectors may contain spaces after commas: split on ')' instead of whitespace.
        let joined = sd.replace(' ', "");
        let parts: Vec<String> = joined
            .split(')')
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p})"))
            .collect();
        if parts.len() != 3 {
            return Err(err(
                path,
                format!("`space directions` needs 3 vectors, got {sd:?}"),
            ));
        }
        for (c, p) in parts.iter().enumerate() {
            let v =
                parse_vector(p).ok_or_else(|| err(path, format!("bad space direction {p:?}")))?;
            for r in 0..3 {
                affine[r][c] = v[r] * signs[r];
            }
        }
    } else {
        let sp: Vec<f64> = match get("spacings") {
            Some(s) => s
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()
                .ok_or_else(|| err(path, "bad `spacings`"))?,
            None => vec![1.0; 3],
        };
        if sp.len() != 3 {
            return Err(err(path, "`spacings` needs 3 numbers"));
        }
        for c in 0..3 {
            affine[c][c] = sp[c] * signs[c];
        }
    }
    if let Some(o) = get("space origin") {
        let v = parse_vector(&o.replace(' ', ""))
            .ok_or_else(|| err(path, format!("bad `space origin` {o:?}")))?;
        for r in 0..3 {
            affine[r][3] = v[r] * signs[r];
        }
    }
    let spacing: [f64; 3] =
        std::array::from_fn(|c| (0..3).map(|r| affine[r][c].powi(2)).sum::<f64>().sqrt());
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(err(
            path,
            format!("spacing {spacing:?} must be positive and finite"),
        ));
    }

    // Data: read exactly, or refuse.
    let line_skip: u64 = match get("line skip").or(get("lineskip")) {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| err(path, format!("`line skip: {v}` is not a count of lines")))?,
    };
    let byte_skip: i64 = match get("byte skip").or(get("byteskip")) {
        None => 0,
        Some(v) => v.parse().ok().filter(|&b: &i64| b >= -1).ok_or_else(|| {
            err(
                path,
                format!("`byte skip: {v}` must be -1 or a count of bytes"),
            )
        })?,
    };
    let gzip = match encoding {
        "raw" => false,
        "gzip" | "gz" => true,
        e => {
            return Err(err(
                path,
                format!("unsupported encoding `{e}` (raw and gzip are)"),
            ))
        }
    };
    if byte_skip == -1 && gzip {
        return Err(err(
            path,
            "`byte skip: -1` (data at the end of the file) is only defined for raw encoding",
        ));
    }
    let (mut src, src_name, src_len): (Box<dyn BufRead>, PathBuf, u64) =
        match get("data file").or(get("datafile")) {
            Some(f) if f.starts_with("LIST") || f.contains('%') => {
                return Err(err(
                    path,
                    "multi-file data (`data file: LIST` or a pattern) is not supported",
                ))
            }
            Some(f) => {
                let p = path.parent().unwrap_or(Path::new(".")).join(f);
                let file = std::fs::File::open(&p).map_err(|e| {
                    err(
                        path,
                        format!(
                            "data file {}: {}",
                            p.display(),
                            voxels::io_words(&e, "file")
                        ),
                    )
                })?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                (Box::new(std::io::BufReader::new(file)), p, len)
            }
            None => (
                Box::new(input),
                path.to_path_buf(),
                file_len.saturating_sub(header_len),
            ),
        };
    let mut consumed = 0u64;
    for _ in 0..line_skip {
        line_buf.clear();
        let got = (&mut src)
            .take(MAX_HEADER + 1)
            .read_until(b'\n', &mut line_buf)
            .map_err(|e| err(&src_name, voxels::io_words(&e, "data")))?;
        if got == 0 || got as u64 > MAX_HEADER {
            return Err(err(&src_name, "`line skip` goes past the end of the data"));
        }
        consumed += got as u64;
    }
    let want = n * ty.size();
    let remaining = src_len.saturating_sub(consumed);
    let bytes = if gzip {
        voxels::check_fits(want as u64, remaining, true).map_err(|m| err(&src_name, m))?;
        let mut dec = GzDecoder::new(src);
        voxels::skip(&mut dec, byte_skip as u64, "`byte skip`").map_err(|m| err(&src_name, m))?;
        let bytes = voxels::read_exact_bounded(&mut dec, want, "gzip data")
            .map_err(|m| err(&src_name, m))?;
        let mut extra = [0u8; 1];
        if dec
            .read(&mut extra)
            .map_err(|e| err(&src_name, voxels::io_words(&e, "gzip data")))?
            > 0
        {
            return Err(err(
                &src_name,
                format!(
                    "the gzip data holds more than the {want} bytes that `sizes` and `type` \
                     declare (after `byte skip: {byte_skip}`): the header does not describe it"
                ),
            ));
        }
        bytes
    } else {
        let skip = if byte_skip == -1 {
            remaining.checked_sub(want as u64).ok_or_else(|| {
                err(
                    &src_name,
                    format!("{remaining} bytes of data, {want} needed (truncated)"),
                )
            })?
        } else {
            byte_skip as u64
        };
        if remaining != skip + want as u64 && src_len != u64::MAX {
            return Err(err(
                &src_name,
                format!(
                    "{remaining} bytes of data, but `byte skip: {byte_skip}`, `sizes` and `type` \
                     account for {} (truncated, or the header does not describe the data)",
                    skip + want as u64
                ),
            ));
        }
        voxels::skip(&mut src, skip, "`byte skip`").map_err(|m| err(&src_name, m))?;
        voxels::read_exact_bounded(src, want, "voxel data").map_err(|m| err(&src_name, m))?
    };
    let data = voxels::decode(&bytes, ty, big_endian, None).map_err(|m| err(&src_name, m))?;
    drop(bytes);
    let mut vol = Volume::new(dims, spacing, data).map_err(|e| err(path, e.to_string()))?;
    vol.affine = affine;
    Ok(vol)
}

/// Options for [`write`] (used by tests and by users exporting to NRRD).
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    pub gzip: bool,
    pub big_endian: bool,
    /// Write the data to `<stem>.raw` (or `.raw.gz`) beside a `.nhdr` header.
    pub detached: bool,
}

/// Writes `vol` as NRRD in LPS space (the PDDCA convention).
pub fn write(vol: &Volume, path: &Path, opts: WriteOptions) -> Result<(), String> {
    use std::io::Write;
    let (ty, mut data): (&str, Vec<u8>) = match &vol.data {
        VoxelData::U8(v) => ("uint8", v.clone()),
        VoxelData::I16(v) => (
            "int16",
            v.iter()
                .flat_map(|x| {
                    if opts.big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect(),
        ),
        VoxelData::F32(v) => (
            "float",
            v.iter()
                .flat_map(|x| {
                    if opts.big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect(),
        ),
    };
    if opts.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).map_err(|e| err(path, e.to_string()))?;
        data = enc.finish().map_err(|e| err(path, e.to_string()))?;
    }
    let lps = [-1.0, -1.0, 1.0];
    let a = &vol.affine;
    let dirs: Vec<String> = (0..3)
        .map(|c| {
            format!(
                "({},{},{})",
                a[0][c] * lps[0],
                a[1][c] * lps[1],
                a[2][c] * lps[2]
            )
        })
        .collect();
    let mut header = format!(
        "NRRD0004\n# written by shapeflow\ntype: {ty}\ndimension: 3\nspace: left-posterior-superior\nsizes: {} {} {}\nspace directions: {}\nkinds: domain domain domain\nendian: {}\nencoding: {}\nspace origin: ({},{},{})\n",
        vol.dims[0],
        vol.dims[1],
        vol.dims[2],
        dirs.join(" "),
        if opts.big_endian { "big" } else { "little" },
        if opts.gzip { "gzip" } else { "raw" },
        a[0][3] * lps[0],
        a[1][3] * lps[1],
        a[2][3] * lps[2]
    );
    if opts.detached {
        let name = format!(
            "{}.{}",
            crate::atomic::final_path(path)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            if opts.gzip { "raw.gz" } else { "raw" }
        );
        header.push_str(&format!("data file: {name}\n"));
        std::fs::write(path.with_file_name(&name), &data).map_err(|e| err(path, e.to_string()))?;
        std::fs::write(path, header).map_err(|e| err(path, e.to_string()))
    } else {
        header.push('\n');
        let mut out = header.into_bytes();
        out.extend_from_slice(&data);
        std::fs::write(path, out).map_err(|e| err(path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data: VoxelData) -> Volume {
        let mut v = Volume::new([3, 4, 5], [0.8, 0.9, 2.5], data).unwrap();
        // LPS origin (-100, 50, 20) is RAS (100, -50, 20).
        v.affine[0][3] = 100.0;
        v.affine[1][3] = -50.0;
        v.affine[2][3] = 20.0;
        v
    }

    #[test]
    fn roundtrip_every_encoding_and_endianness() {
        let d = tempfile::tempdir().unwrap();
        let vols = [
            sample(VoxelData::U8((0..60).map(|i| (i * 3) as u8).collect())),
            sample(VoxelData::I16(
                (0..60).map(|i| i as i16 * 71 - 1024).collect(),
            )),
            sample(VoxelData::F32(
                (0..60).map(|i| i as f32 * 0.5 - 7.25).collect(),
            )),
        ];
        for v in &vols {
            for gzip in [false, true] {
                for big_endian in [false, true] {
                    for detached in [false, true] {
                        let name = format!(
                            "v{}{gzip}{big_endian}{detached}.{}",
                            v.data.dtype(),
                            if detached { "nhdr" } else { "nrrd" }
                        );
                        let p = d.path().join(name);
                        write(
                            v,
                            &p,
                            WriteOptions {
                                gzip,
                                big_endian,
                                detached,
                            },
                        )
                        .unwrap();
                        let back = read(&p).unwrap();
                        assert_eq!(&back, v, "{}", p.display());
                    }
                }
            }
        }
    }

    #[test]
    fn lps_geometry_becomes_ras() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.nrrd");
        let mut f = b"NRRD0004\ntype: unsigned char\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 1 1\nspace directions: (0.5,0,0) (0,0.75,0) (0,0,2.5)\nendian: little\nencoding: raw\nspace origin: (-10,20,30)\n\n".to_vec();
        f.extend_from_slice(&[7, 9]);
        std::fs::write(&p, f).unwrap();
        let v = read(&p).unwrap();
        assert_eq!(v.spacing, [0.5, 0.75, 2.5]);
        assert_eq!(v.affine[0], [-0.5, 0.0, 0.0, 10.0]);
        assert_eq!(v.affine[1], [0.0, -0.75, 0.0, -20.0]);
        assert_eq!(v.affine[2], [0.0, 0.0, 2.5, 30.0]);
        assert_eq!(v.data, VoxelData::U8(vec![7, 9]));
    }

    #[test]
    fn bad_files_are_named_errors() {
        let d = tempfile::tempdir().unwrap();
        let v = sample(VoxelData::I16(vec![5; 60]));
        let p = d.path().join("ok.nrrd");
        write(
            &v,
            &p,
            WriteOptions {
                gzip: true,
                big_endian: false,
                detached: false,
            },
        )
        .unwrap();
        let full = std::fs::read(&p).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("trunc.nrrd", full[..full.len() - 10].to_vec(), "ends early"),
            ("magic.nrrd", b"P5\n".to_vec(), "not a NRRD"),
            ("type.nrrd", {
                let end = full.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
                let mut b = String::from_utf8_lossy(&full[..end]).replace("int16", "block").into_bytes();
                b.extend_from_slice(&full[end..]);
                b
            }, "unsupported type"),
            ("neg.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nspace directions: (0,0,0) (0,1,0) (0,0,1)\nencoding: raw\n\n\x01".to_vec(), "spacing"),
            ("huge.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n\n\x01".to_vec(), "limit"),
            ("short.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n\x01".to_vec(), "truncated"),
            ("nan.nrrd", {
                let mut b = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1 1 1\nendian: little\nencoding: raw\n\n".to_vec();
                b.extend_from_slice(&f32::NAN.to_le_bytes());
                b
            }, "NaN"),
            ("dim.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 1 1\nencoding: raw\n\n\x01".to_vec(), "3D"),
            // What cannot be read exactly is refused, never guessed.
            ("skipword.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nbyte skip: two\nencoding: raw\n\n\x01".to_vec(), "byte skip"),
            ("skipneg.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nbyte skip: -2\nencoding: raw\n\n\x01".to_vec(), "byte skip"),
            ("linesword.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nline skip: x\nencoding: raw\n\n\x01".to_vec(), "line skip"),
            ("trailing.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nencoding: raw\n\n\x01\x02".to_vec(), "account for"),
            ("inf.nrrd", {
                let mut b = b"NRRD0004\ntype: double\ndimension: 3\nsizes: 1 1 1\nendian: little\nencoding: raw\n\n".to_vec();
                b.extend_from_slice(&f64::NEG_INFINITY.to_le_bytes());
                b
            }, "infinite"),
            ("bigint.nrrd", {
                let mut b = b"NRRD0004\ntype: int\ndimension: 3\nsizes: 1 1 1\nendian: little\nencoding: raw\n\n".to_vec();
                b.extend_from_slice(&33_554_433i32.to_le_bytes());
                b
            }, "2^24"),
        ];
        for (name, bytes, needle) in cases {
            let p = d.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = read(&p).unwrap_err();
            assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
        }
    }

    /// A detached header whose data file is gzip but says `byte skip: -1` (defined only for
    /// raw data) was read from the wrong offset; gzip data longer than declared, or a raw
    /// `.nii.gz` behind a header, was read silently. Each is refused.
    #[test]
    fn detached_data_that_cannot_be_read_exactly_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let v = sample(VoxelData::I16((0..60).map(|i| i * 3).collect()));
        let nii = d.path().join("img.nii.gz");
        crate::NiftiIo::write_nifti(&v, &nii).unwrap();
        let header = |encoding: &str, skip: &str| {
            format!(
                "NRRD0004\ntype: short\ndimension: 3\nsizes: 3 4 5\nendian: little\n\
                 encoding: {encoding}\nbyte skip: {skip}\ndata file: img.nii.gz\n"
            )
        };
        for (name, enc, skip, needle) in [
            ("gz_end.nhdr", "gzip", "-1", "only defined for raw"),
            ("gz_zero.nhdr", "gzip", "0", "more than"),
            ("raw_zero.nhdr", "raw", "0", "account for"),
        ] {
            let p = d.path().join(name);
            std::fs::write(&p, header(enc, skip)).unwrap();
            let e = read(&p).unwrap_err();
            assert!(e.contains(needle), "{name}: {e}");
        }
        // The exact skip (the NIfTI header and its 4 extension bytes) reads the data exactly.
        let p = d.path().join("exact.nhdr");
        std::fs::write(&p, header("gzip", "352")).unwrap();
        assert_eq!(read(&p).unwrap().data, v.data);
    }
}
