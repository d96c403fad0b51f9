//! DICOM-RT, the native format of radiotherapy data: an image series (a folder of CT or MR
//! slices) read into one [`Volume`], and an RTSTRUCT's contours rasterised onto that
//! series' grid. Reading only; through the `dicom-object` crate (dicom-rs).
//!
//! The series: slices sorted by their position along the slice normal (row x column
//! cosines), rescale slope and intercept applied (HU kept as exact integers when they are
//! integers), orientation and spacing from the headers. Refused, with the file and the
//! field named: compressed pixel data, slices that differ in size, orientation or pixel
//! spacing, irregular slice spacing, gantry tilt, several series in one folder.
//!
//! The structures: each ROI's `CLOSED_PLANAR` contours are polygons on the slices; a voxel
//! belongs to the ROI where its centre lies inside an odd number of the slice's polygons
//! (holes are contours inside contours) or on a polygon's edge (writers that trace mask
//! boundaries, as rt-utils and most planning systems do, put the edge through the centres
//! of the boundary voxels).

use crate::{file_err, FormatError};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::VR;
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use shapeflow_volume::{Grid, Volume, VoxelData};
use std::path::{Path, PathBuf};

/// Checks, before `dicom-rs` reads a file, that every length it will read fits in what holds
/// it (the file, its item or sequence): the crate sizes buffers from declared lengths before
/// reading, some with infallible allocations, so a 1 kB file declaring a 1.5 GB string
/// would abort the process. The walk follows the crate's own parse step by step (how it
/// finds the end of the meta group, which VRs have short headers, the dictionary's VR in
/// implicit VR, what it reads as a sequence) and refuses what it would read differently: a
/// numeric value whose length is not a multiple of its width (the crate reads whole values
/// and would go on from the middle of one, where any bytes make a length; found by the
/// `dicom` fuzz target), a delimiter where none is expected, a container without its end.
fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("no DICM preamble".into());
    }
    // The meta group (explicit VR little endian): its group length first, then elements
    // until that many bytes are read, as dicom-rs reads it.
    let (len, header, vr) = element_header(bytes, 132, true)?;
    if tag_at(bytes, 132) != (0x0002, 0x0000) || vr != VR::UL || len != 4 {
        return Err("the file meta group does not begin with its group length (0002,0000)".into());
    }
    let group = match bytes.get(140..144) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Err("the file ends inside its meta group".into()),
    };
    let mut pos = 132 + header + 4;
    let (mut read, mut ts) = (0usize, String::new());
    while read < group {
        let (len, header, _) = element_header(bytes, pos, true)?;
        if len == UNDEFINED {
            return Err("a file meta element of undefined length".into());
        }
        let end = fits(pos + header, len, bytes.len())?;
        if tag_at(bytes, pos) == (0x0002, 0x0010) {
            ts = String::from_utf8_lossy(&bytes[pos + header..end])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        read = read.saturating_add(header + len);
        pos = end;
    }
    let explicit = match ts.as_str() {
        "1.2.840.10008.1.2" => false,
        "1.2.840.10008.1.2.2" => {
            return Err(
                "a big-endian data set (transfer syntax 1.2.840.10008.1.2.2, retired) is not read"
                    .into(),
            )
        }
        "1.2.840.10008.1.2.1.99" => {
            return Err(
                "a deflated data set (transfer syntax 1.2.840.10008.1.2.1.99) is not read".into(),
            )
        }
        _ => true,
    };
    walk(bytes, pos, bytes.len(), explicit, Container::DataSet, 0).map(|_| ())
}

const UNDEFINED: usize = 0xFFFF_FFFF;

/// What holds the elements being walked.
#[derive(Clone, Copy, PartialEq)]
enum Container {
    /// The data set itself: a stray delimiter of length 0 is skipped (dicom-rs ignores it).
    DataSet,
    /// A sequence: only items, up to its end or its sequence delimiter.
    Sequence,
    /// Encapsulated pixel data: items whose content is raw fragments.
    Fragments,
    /// An item of a sequence: elements, up to its end or its item delimiter.
    Item,
}

fn tag_at(b: &[u8], pos: usize) -> (u16, u16) {
    (
        u16::from_le_bytes([b[pos], b[pos + 1]]),
        u16::from_le_bytes([b[pos + 2], b[pos + 3]]),
    )
}

/// `start + len`, when it is no further than `end`.
fn fits(start: usize, len: usize, end: usize) -> Result<usize, String> {
    start
        .checked_add(len)
        .filter(|&e| e <= end)
        .ok_or_else(|| "an element declares more bytes than its container holds".to_string())
}

/// (value length, header length, VR) of the element at `pos` (at least 8 bytes there), as
/// dicom-rs decodes it: explicit VR from the bytes (an unknown VR is UN), implicit VR
/// from the standard dictionary (pixel and overlay data OW, unknown tags UN).
fn element_header(b: &[u8], pos: usize, explicit: bool) -> Result<(usize, usize, VR), String> {
    let short = || "an element header runs past the end of the file".to_string();
    let u32_at = |p: usize| -> Result<usize, String> {
        let s = b.get(p..p + 4).ok_or_else(short)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    if b.len() < pos.saturating_add(8) {
        return Err(short());
    }
    let (g, e) = tag_at(b, pos);
    if g == 0xFFFE {
        return Ok((u32_at(pos + 4)?, 8, VR::UN));
    }
    if !explicit {
        let vr = if (g, e) == (0x7FE0, 0x0010) || (g >> 8 == 0x60 && e == 0x3000) {
            VR::OW
        } else {
            StandardDataDictionary
                .by_tag(dicom_object::Tag(g, e))
                .map(|entry| entry.vr().relaxed())
                .unwrap_or(VR::UN)
        };
        return Ok((u32_at(pos + 4)?, 8, vr));
    }
    let vr = VR::from_binary([b[pos + 4], b[pos + 5]]).unwrap_or(VR::UN);
    use VR::*;
    match vr {
        AE | AS | AT | CS | DA | DS | DT | FL | FD | IS | LO | LT | PN | SH | SL | SS | ST | TM
        | UI | UL | US => Ok((u16::from_le_bytes([b[pos + 6], b[pos + 7]]) as usize, 8, vr)),
        _ => Ok((u32_at(pos + 8)?, 12, vr)),
    }
}

/// The size of one value of a VR that dicom-rs reads as whole numbers (it reads
/// `length / width` of them).
fn value_width(vr: VR) -> usize {
    use VR::*;
    match vr {
        US | SS | OW => 2,
        UL | SL | FL | OF | OL | AT => 4,
        FD | OD | SV | UV | OV => 8,
        _ => 1,
    }
}

/// Walks the elements of `container` from `pos` to `end` (for one of undefined length, to
/// its delimiter); returns where it ends.
fn walk(
    b: &[u8],
    mut pos: usize,
    end: usize,
    explicit: bool,
    container: Container,
    depth: usize,
) -> Result<usize, String> {
    if depth > 32 {
        return Err("sequences nested more than 32 deep".into());
    }
    let until_delimiter = end == usize::MAX;
    let end = end.min(b.len());
    while pos < end {
        if pos + 8 > end {
            return Err("an element header runs past the end of its container".into());
        }
        let (g, e) = tag_at(b, pos);
        let (len, header, vr) = element_header(b, pos, explicit)?;
        if g == 0xFFFE && (e == 0xE00D || e == 0xE0DD) {
            let expected = match container {
                Container::Item => 0xE00D,
                Container::Sequence | Container::Fragments => 0xE0DD,
                Container::DataSet if len == 0 => {
                    pos += 8;
                    continue;
                }
                Container::DataSet => return Err("a delimiter with a length".into()),
            };
            if e != expected || !until_delimiter {
                return Err(format!("an unexpected delimiter (FFFE,{e:04X})"));
            }
            return Ok(pos + 8);
        }
        let is_item = (g, e) == (0xFFFE, 0xE000);
        if matches!(container, Container::Sequence | Container::Fragments) && !is_item {
            return Err(format!(
                "({g:04X},{e:04X}) in a sequence, where items belong"
            ));
        }
        let start = pos + header;
        // What the element holds, as dicom-rs reads it.
        let inner = if container == Container::Fragments {
            None // a fragment: raw bytes
        } else if is_item {
            Some(Container::Item)
        } else if (g, e) == (0x7FE0, 0x0010) && len == UNDEFINED {
            Some(Container::Fragments)
        } else if vr == VR::SQ || len == UNDEFINED {
            Some(Container::Sequence)
        } else {
            None
        };
        pos = match (inner, len == UNDEFINED) {
            (Some(inner), true) => walk(b, start, usize::MAX, explicit, inner, depth + 1)?,
            (Some(inner), false) => {
                let stop = fits(start, len, end)?;
                if walk(b, start, stop, explicit, inner, depth + 1)? != stop {
                    return Err("an element declares more bytes than its container holds".into());
                }
                stop
            }
            (None, true) => return Err("a value of undefined length".into()),
            (None, false) => {
                if len % value_width(vr) != 0 {
                    return Err(format!(
                        "({g:04X},{e:04X}) of VR {vr:?} declares {len} bytes, not a multiple of {}",
                        value_width(vr)
                    ));
                }
                fits(start, len, end)?
            }
        };
    }
    if until_delimiter && container != Container::DataSet {
        return Err("a sequence or item without its delimiter".into());
    }
    Ok(pos)
}

/// Opens a DICOM file (read once), its element lengths checked first ([`check_lengths`])
/// and single allocations capped near its size while parsing (see [`crate::alloc`]).
fn open(path: &Path, until_pixels: bool) -> Result<dicom_object::DefaultDicomObject, FormatError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    check_lengths(&bytes).map_err(|m| file_err(path, format!("not a readable DICOM file: {m}")))?;
    let size = bytes.len();
    // Parsed from the bytes just checked (the file is read once), after its preamble.
    crate::alloc::with_cap(size.saturating_mul(2).saturating_add(16 << 20), || {
        let o = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
        let o = if until_pixels {
            o.read_until(tags::PIXEL_DATA)
        } else {
            o
        };
        o.from_reader(&bytes[128..])
    })
    .map_err(|e| file_err(path, format!("not a readable DICOM file: {e}")))
}

/// What a folder holds: image slices by series, and structure sets.
#[derive(Debug, Default)]
pub struct Folder {
    /// (SeriesInstanceUID, modality, files), sorted by UID.
    pub series: Vec<(String, String, Vec<PathBuf>)>,
    pub structure_sets: Vec<PathBuf>,
}

/// One ROI of a structure set: its name and closed contours (patient LPS mm).
#[derive(Debug, Clone)]
pub struct Roi {
    pub number: i64,
    pub name: String,
    pub contours: Vec<Vec<[f64; 3]>>,
    /// Contours that are not closed polygons (points, open lines), not rasterised.
    pub skipped: usize,
}

impl Folder {
    /// The slice files of the folder's one image series (None: no image series); several
    /// are an error naming them.
    pub fn one_series(&self, dir: &Path) -> Result<Option<&[PathBuf]>, FormatError> {
        match self.series.as_slice() {
            [] => Ok(None),
            [(_, _, files)] => Ok(Some(files)),
            many => Err(file_err(
                dir,
                format!(
                    "{} image series ({}); a case folder holds one",
                    many.len(),
                    many.iter()
                        .map(|(uid, m, files)| format!("{m} {uid}: {} files", files.len()))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )),
        }
    }
}

fn has_dicom_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

fn text(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<String> {
    obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| {
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string()
    })
}

fn floats(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    obj.get(tag).and_then(|e| e.to_multi_float64().ok())
}

/// Lists the DICOM files directly in `dir` (others are ignored): image series and
/// structure sets.
pub fn scan(dir: &Path) -> Result<Folder, FormatError> {
    let mut out = Folder::default();
    let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && has_dicom_magic(p))
        .collect();
    files.sort();
    for f in files {
        let obj = open(&f, true)?;
        let modality = text(&obj, tags::MODALITY).unwrap_or_default();
        if modality == "RTSTRUCT" {
            out.structure_sets.push(f);
            continue;
        }
        if obj.get(tags::IMAGE_POSITION_PATIENT).is_none() {
            continue; // not an image slice (a plan, a dose, a report)
        }
        let uid = text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        match out.series.iter_mut().find(|(u, _, _)| *u == uid) {
            Some((_, _, list)) => list.push(f),
            None => out.series.push((uid, modality, vec![f])),
        }
    }
    out.series.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

struct Slice {
    path: PathBuf,
    position: [f64; 3],
    along: f64,
}

fn need<T>(v: Option<T>, path: &Path, field: &str) -> Result<T, FormatError> {
    v.ok_or_else(|| file_err(path, format!("missing or unreadable `{field}`")))
}

/// A slice's ImagePositionPatient (3 values) and ImageOrientationPatient (6).
fn position_and_orientation(
    obj: &InMemDicomObject,
    f: &Path,
) -> Result<(Vec<f64>, Vec<f64>), FormatError> {
    let ipp = need(
        floats(obj, tags::IMAGE_POSITION_PATIENT),
        f,
        "ImagePositionPatient",
    )?;
    let iop = need(
        floats(obj, tags::IMAGE_ORIENTATION_PATIENT),
        f,
        "ImageOrientationPatient",
    )?;
    if ipp.len() != 3 || iop.len() != 6 {
        return Err(file_err(
            f,
            "ImagePositionPatient needs 3 values, ImageOrientationPatient 6",
        ));
    }
    Ok((ipp, iop))
}

/// Reads one image series (its slice files) as a volume on its own grid (RAS+ mm).
pub fn read_series(files: &[PathBuf]) -> Result<Volume, FormatError> {
    let first = files
        .first()
        .ok_or_else(|| file_err(Path::new("."), "an empty series"))?;
    // Geometry of every slice, from the headers (pixel data not read yet).
    let mut slices = Vec::with_capacity(files.len());
    let mut shape: Option<(Vec<f64>, Vec<f64>, u32, u32)> = None;
    let mut normal = [0.0; 3];
    for f in files {
        let obj = open(f, true)?;
        let (ipp, iop) = position_and_orientation(&obj, f)?;
        let ps = need(floats(&obj, tags::PIXEL_SPACING), f, "PixelSpacing")?;
        let rows: u32 = need(obj.get(tags::ROWS).and_then(|e| e.to_int().ok()), f, "Rows")?;
        let cols: u32 = need(
            obj.get(tags::COLUMNS).and_then(|e| e.to_int().ok()),
            f,
            "Columns",
        )?;
        if rows == 0 || cols == 0 {
            return Err(file_err(
                f,
                format!("{rows} x {cols} pixels: an empty image"),
            ));
        }
        if ps.len() != 2 {
            return Err(file_err(f, "PixelSpacing needs 2 values"));
        }
        match &shape {
            None => {
                let (r, c) = (&iop[0..3], &iop[3..6]);
                normal = [
                    r[1] * c[2] - r[2] * c[1],
                    r[2] * c[0] - r[0] * c[2],
                    r[0] * c[1] - r[1] * c[0],
                ];
                let norm = normal.iter().map(|x| x * x).sum::<f64>().sqrt();
                let dot: f64 = (0..3).map(|i| r[i] * c[i]).sum();
                if (norm - 1.0).abs() > 1e-3 || dot.abs() > 1e-3 {
                    return Err(file_err(
                        f,
                        "ImageOrientationPatient is not two orthogonal unit vectors",
                    ));
                }
                if ps.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(file_err(f, format!("PixelSpacing {ps:?} is not positive")));
                }
                shape = Some((iop.clone(), ps.clone(), rows, cols));
            }
            Some((o, s, r, c)) => {
                let differs = |a: &[f64], b: &[f64], tol: f64| {
                    a.iter().zip(b).any(|(x, y)| (x - y).abs() > tol)
                };
                if differs(o, &iop, 1e-4) {
                    return Err(file_err(
                        f,
                        format!("ImageOrientationPatient {iop:?} differs from the first slice's {o:?} ({})", first.display()),
                    ));
                }
                if differs(s, &ps, 1e-4) || *r != rows || *c != cols {
                    return Err(file_err(
                        f,
                        format!(
                            "{rows} x {cols} pixels of {ps:?} mm, the first slice ({}) {r} x {c} of {s:?}",
                            first.display()
                        ),
                    ));
                }
            }
        }
        let position = [ipp[0], ipp[1], ipp[2]];
        let along = (0..3).map(|i| position[i] * normal[i]).sum();
        slices.push(Slice {
            path: f.clone(),
            position,
            along,
        });
    }
    let (iop, ps, rows, cols) = shape.ok_or_else(|| file_err(first, "no slices"))?;
    slices.sort_by(|a, b| a.along.total_cmp(&b.along));
    // Spacing between slices: regular, no two at one place, no tilt.
    let dz = if slices.len() > 1 {
        (slices[slices.len() - 1].along - slices[0].along) / (slices.len() - 1) as f64
    } else {
        1.0 // one slice: any thickness; SliceThickness is not a spacing
    };
    for w in slices.windows(2) {
        let step = w[1].along - w[0].along;
        if step.abs() < 1e-3 {
            return Err(file_err(
                &w[1].path,
                format!("at the same position as {}", w[0].path.display()),
            ));
        }
        if (step - dz).abs() > 0.01 * dz.max(0.1) {
            return Err(file_err(
                &w[1].path,
                format!(
                    "irregular slice spacing: {step:.3} mm from the previous slice, {dz:.3} mm on \
                     average; resample the series to regular slices first"
                ),
            ));
        }
    }
    for s in &slices[1..] {
        let d: [f64; 3] = std::array::from_fn(|i| s.position[i] - slices[0].position[i]);
        let along = s.along - slices[0].along;
        let off: f64 = (0..3)
            .map(|i| (d[i] - along * normal[i]).powi(2))
            .sum::<f64>()
            .sqrt();
        if off > 0.01 {
            return Err(file_err(
                &s.path,
                format!(
                    "slice positions do not follow the slice normal ({off:.3} mm off; gantry \
                     tilt?): not supported"
                ),
            ));
        }
    }
    let (rows, cols) = (rows as usize, cols as usize);
    let n = (rows as u64) * (cols as u64) * slices.len() as u64;
    if n > crate::max_voxels() {
        return Err(file_err(
            first,
            format!(
                "{cols} x {rows} x {} voxels, more than the limit of {} (--max-voxels)",
                slices.len(),
                crate::max_voxels()
            ),
        ));
    }
    // Voxels, slice by slice.
    let mut raw: Vec<f64> = Vec::with_capacity(n as usize);
    let mut integral = true;
    for s in &slices {
        let obj = open(&s.path, false)?;
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        if ts != "1.2.840.10008.1.2" && ts != "1.2.840.10008.1.2.1" {
            return Err(file_err(
                &s.path,
                format!(
                    "pixel data in transfer syntax {ts} (compressed or big-endian): only \
                     uncompressed little-endian is read; decompress first, e.g. \
                     `gdcmconv --raw` or `dcmdjpeg`"
                ),
            ));
        }
        let bits: u16 = need(
            obj.get(tags::BITS_ALLOCATED).and_then(|e| e.to_int().ok()),
            &s.path,
            "BitsAllocated",
        )?;
        let signed: u16 = obj
            .get(tags::PIXEL_REPRESENTATION)
            .and_then(|e| e.to_int().ok())
            .unwrap_or(0);
        let samples: u16 = obj
            .get(tags::SAMPLES_PER_PIXEL)
            .and_then(|e| e.to_int().ok())
            .unwrap_or(1);
        if bits != 16 || samples != 1 {
            return Err(file_err(
                &s.path,
                format!("{bits} bits, {samples} samples per pixel: only 16-bit greyscale is read"),
            ));
        }
        let slope = floats(&obj, tags::RESCALE_SLOPE)
            .and_then(|v| v.first().copied())
            .unwrap_or(1.0);
        let intercept = floats(&obj, tags::RESCALE_INTERCEPT)
            .and_then(|v| v.first().copied())
            .unwrap_or(0.0);
        integral &= slope.fract() == 0.0 && intercept.fract() == 0.0;
        let bytes = need(
            obj.get(tags::PIXEL_DATA).and_then(|e| e.to_bytes().ok()),
            &s.path,
            "PixelData",
        )?;
        if bytes.len() < rows * cols * 2 {
            return Err(file_err(
                &s.path,
                format!(
                    "PixelData holds {} bytes, {rows} x {cols} 16-bit pixels need {}",
                    bytes.len(),
                    rows * cols * 2
                ),
            ));
        }
        raw.extend(bytes[..rows * cols * 2].chunks_exact(2).map(|b| {
            let v = if signed == 1 {
                i16::from_le_bytes([b[0], b[1]]) as f64
            } else {
                u16::from_le_bytes([b[0], b[1]]) as f64
            };
            v * slope + intercept
        }));
    }
    let fits_i16 = integral && raw.iter().all(|&v| (-32768.0..=32767.0).contains(&v));
    let data = if fits_i16 {
        VoxelData::I16(raw.iter().map(|&v| v as i16).collect())
    } else {
        VoxelData::F32(raw.iter().map(|&v| v as f32).collect())
    };
    // Voxel (x = column, y = row, z = slice) to LPS, then RAS (x and y negated).
    let (rc, cc) = (&iop[0..3], &iop[3..6]);
    let axes = [
        [rc[0] * ps[1], rc[1] * ps[1], rc[2] * ps[1]],
        [cc[0] * ps[0], cc[1] * ps[0], cc[2] * ps[0]],
        [normal[0] * dz, normal[1] * dz, normal[2] * dz],
    ];
    let origin = slices[0].position;
    let lps_to_ras = [-1.0, -1.0, 1.0];
    let mut affine = [[0.0; 4]; 4];
    for r in 0..3 {
        for (c, axis) in axes.iter().enumerate() {
            affine[r][c] = axis[r] * lps_to_ras[r];
        }
        affine[r][3] = origin[r] * lps_to_ras[r];
    }
    affine[3][3] = 1.0;
    Ok(Volume {
        dims: [cols, rows, slices.len()],
        spacing: [ps[1], ps[0], dz.abs()],
        affine,
        data,
    })
}

/// The ROIs of an RTSTRUCT file.
pub fn read_rtstruct(path: &Path) -> Result<Vec<Roi>, FormatError> {
    let obj = open(path, false)?;
    if text(&obj, tags::MODALITY).as_deref() != Some("RTSTRUCT") {
        return Err(file_err(path, "not an RTSTRUCT (Modality)"));
    }
    let mut rois = Vec::new();
    let set = obj
        .get(tags::STRUCTURE_SET_ROI_SEQUENCE)
        .and_then(|e| e.items())
        .ok_or_else(|| file_err(path, "no StructureSetROISequence"))?;
    for item in set {
        let number: i64 = need(
            item.get(tags::ROI_NUMBER).and_then(|e| e.to_int().ok()),
            path,
            "ROINumber",
        )?;
        let name = text(item, tags::ROI_NAME).unwrap_or_else(|| format!("ROI {number}"));
        rois.push(Roi {
            number,
            name,
            contours: Vec::new(),
            skipped: 0,
        });
    }
    for item in obj
        .get(tags::ROI_CONTOUR_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[])
    {
        let number: i64 = need(
            item.get(tags::REFERENCED_ROI_NUMBER)
                .and_then(|e| e.to_int().ok()),
            path,
            "ReferencedROINumber",
        )?;
        let Some(roi) = rois.iter_mut().find(|r| r.number == number) else {
            return Err(file_err(
                path,
                format!(
                    "contours for ROI number {number}, which StructureSetROISequence does not list"
                ),
            ));
        };
        for c in item
            .get(tags::CONTOUR_SEQUENCE)
            .and_then(|e| e.items())
            .unwrap_or(&[])
        {
            if text(c, tags::CONTOUR_GEOMETRIC_TYPE).as_deref() != Some("CLOSED_PLANAR") {
                roi.skipped += 1;
                continue;
            }
            let data = need(floats(c, tags::CONTOUR_DATA), path, "ContourData")?;
            // One or two points are a contour too (a voxel, a line of voxels): writers
            // that trace masks produce them for thin structures.
            if data.len() % 3 != 0 || data.is_empty() {
                return Err(file_err(
                    path,
                    format!(
                        "ROI `{}`: ContourData with {} values (x, y, z per point)",
                        roi.name,
                        data.len()
                    ),
                ));
            }
            roi.contours
                .push(data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect());
        }
    }
    Ok(rois)
}

/// What an RTSTRUCT written for a series refers to: its patient, study, series and frame of
/// reference, and each slice's SOP class and instance, in the order of [`read_series`]'s
/// volume (along the slice normal).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesRef {
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician: String,
    pub series_uid: String,
    pub frame_of_reference_uid: String,
    /// (SOPClassUID, SOPInstanceUID) per slice.
    pub slices: Vec<(String, String)>,
}

/// The references of an image series (headers only), for [`write_rtstruct`].
pub fn read_series_ref(files: &[PathBuf]) -> Result<SeriesRef, FormatError> {
    let first = files
        .first()
        .ok_or_else(|| file_err(Path::new("."), "an empty series"))?;
    let mut slices = Vec::with_capacity(files.len());
    let mut r = SeriesRef::default();
    for (i, f) in files.iter().enumerate() {
        let obj = open(f, true)?;
        let (ipp, iop) = position_and_orientation(&obj, f)?;
        let n = [
            iop[1] * iop[5] - iop[2] * iop[4],
            iop[2] * iop[3] - iop[0] * iop[5],
            iop[0] * iop[4] - iop[1] * iop[3],
        ];
        let along: f64 = (0..3).map(|a| ipp[a] * n[a]).sum();
        let uid = |tag, field| need(text(&obj, tag).filter(|s| !s.is_empty()), f, field);
        let sop = (
            uid(tags::SOP_CLASS_UID, "SOPClassUID")?,
            uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        );
        if i == 0 {
            let t = |tag| text(&obj, tag).unwrap_or_default();
            r = SeriesRef {
                patient_name: t(tags::PATIENT_NAME),
                patient_id: t(tags::PATIENT_ID),
                patient_birth_date: t(tags::PATIENT_BIRTH_DATE),
                patient_sex: t(tags::PATIENT_SEX),
                study_uid: uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
                study_date: t(tags::STUDY_DATE),
                study_time: t(tags::STUDY_TIME),
                study_id: t(tags::STUDY_ID),
                accession_number: t(tags::ACCESSION_NUMBER),
                referring_physician: t(tags::REFERRING_PHYSICIAN_NAME),
                series_uid: uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
                frame_of_reference_uid: uid(tags::FRAME_OF_REFERENCE_UID, "FrameOfReferenceUID")?,
                slices: Vec::new(),
            };
        }
        slices.push((along, sop));
    }
    slices.sort_by(|a, b| a.0.total_cmp(&b.0));
    r.slices = slices.into_iter().map(|(_, s)| s).collect();
    if r.study_uid.is_empty() {
        return Err(file_err(first, "missing `StudyInstanceUID`"));
    }
    Ok(r)
}

/// A new UID under the 2.25 root (a random 128-bit number, as PS3.5 B.2 allows).
fn new_uid() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("2.25.{}", (u128::from(word(1)) << 64) | u128::from(word(2)))
}

/// Colours given to ROIs in turn (RGB).
const ROI_COLOURS: [[u16; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Writes `rois` (name, mask on `grid`: 0/1, x fastest, the volume [`read_series`] read
/// from the series `series` refers to) as an RTSTRUCT at `path`, atomically. Each slice's
/// mask becomes closed planar contours through its boundary voxels' centres (outer borders
/// and holes, [`crate::contours::trace`]), which [`rasterise`] and OpenCV's `fillPoly` (as
/// rt-utils reads) fill back to the mask. Implicit VR little endian: a long contour does
/// not fit explicit VR's 64 kB limit for a DS value.
pub fn write_rtstruct(
    path: &Path,
    series: &SeriesRef,
    grid: &Grid,
    rois: &[(&str, &[u8])],
    label: &str,
) -> Result<(), FormatError> {
    use dicom_core::value::DataSetSequence;
    use dicom_object::mem::InMemElement;
    let d = grid.dims;
    if series.slices.len() != d[2] {
        return Err(file_err(
            path,
            format!(
                "{} slices in the series, the grid has {}",
                series.slices.len(),
                d[2]
            ),
        ));
    }
    if let Some((name, m)) = rois.iter().find(|(_, m)| m.len() != d[0] * d[1] * d[2]) {
        return Err(file_err(
            path,
            format!("ROI `{name}`: {} voxels, the grid {:?}", m.len(), d),
        ));
    }
    let el = |tag, vr, v: &str| InMemElement::new(tag, vr, dicom_core::PrimitiveValue::from(v));
    let seq = |tag, items: Vec<InMemDicomObject>| {
        InMemElement::new(tag, VR::SQ, DataSetSequence::from(items))
    };
    let image_ref = |k: usize| {
        InMemDicomObject::from_element_iter([
            el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &series.slices[k].0),
            el(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &series.slices[k].1,
            ),
        ])
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs())
        .unwrap_or(0);
    let (date, time) = dicom_date_time(now);
    let sop_uid = new_uid();
    let mut obj = InMemDicomObject::from_element_iter([
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.481.3"),
        el(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        el(tags::STUDY_DATE, VR::DA, &series.study_date),
        el(tags::STUDY_TIME, VR::TM, &series.study_time),
        el(tags::ACCESSION_NUMBER, VR::SH, &series.accession_number),
        el(tags::MODALITY, VR::CS, "RTSTRUCT"),
        el(tags::MANUFACTURER, VR::LO, "shapeflow"),
        el(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            &series.referring_physician,
        ),
        el(tags::SERIES_DESCRIPTION, VR::LO, label),
        el(tags::PATIENT_NAME, VR::PN, &series.patient_name),
        el(tags::PATIENT_ID, VR::LO, &series.patient_id),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, &series.patient_birth_date),
        el(tags::PATIENT_SEX, VR::CS, &series.patient_sex),
        el(tags::STUDY_INSTANCE_UID, VR::UI, &series.study_uid),
        el(tags::SERIES_INSTANCE_UID, VR::UI, &new_uid()),
        el(tags::STUDY_ID, VR::SH, &series.study_id),
        el(tags::SERIES_NUMBER, VR::IS, "1"),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &series.frame_of_reference_uid,
        ),
        el(
            tags::STRUCTURE_SET_LABEL,
            VR::SH,
            &label.chars().take(16).collect::<String>(),
        ),
        el(tags::STRUCTURE_SET_DATE, VR::DA, &date),
        el(tags::STRUCTURE_SET_TIME, VR::TM, &time),
    ]);
    let study = InMemDicomObject::from_element_iter([
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.3.1.2.3.1",
        ),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &series.study_uid),
        seq(
            tags::RT_REFERENCED_SERIES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::SERIES_INSTANCE_UID, VR::UI, &series.series_uid),
                seq(
                    tags::CONTOUR_IMAGE_SEQUENCE,
                    (0..d[2]).map(image_ref).collect(),
                ),
            ])],
        ),
    ]);
    obj.put(seq(
        tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(
                tags::FRAME_OF_REFERENCE_UID,
                VR::UI,
                &series.frame_of_reference_uid,
            ),
            seq(tags::RT_REFERENCED_STUDY_SEQUENCE, vec![study]),
        ])],
    ));
    let (mut set, mut contours, mut observations) = (Vec::new(), Vec::new(), Vec::new());
    let plane = d[0] * d[1];
    for (i, (name, mask)) in rois.iter().enumerate() {
        let number = (i + 1).to_string();
        set.push(InMemDicomObject::from_element_iter([
            el(tags::ROI_NUMBER, VR::IS, &number),
            el(
                tags::REFERENCED_FRAME_OF_REFERENCE_UID,
                VR::UI,
                &series.frame_of_reference_uid,
            ),
            el(tags::ROI_NAME, VR::LO, name),
            el(tags::ROI_GENERATION_ALGORITHM, VR::CS, "AUTOMATIC"),
        ]));
        let mut items = Vec::new();
        for k in 0..d[2] {
            let slice = &mask[k * plane..(k + 1) * plane];
            if slice.iter().all(|&v| v == 0) {
                continue;
            }
            for poly in crate::contours::trace(slice, d[0], d[1]) {
                let mut data = Vec::with_capacity(poly.len() * 3);
                for p in &poly {
                    let v = [p[0] as f64, p[1] as f64, k as f64];
                    for (r, sign) in [(0, -1.0), (1, -1.0), (2, 1.0)] {
                        let a = &grid.affine[r];
                        let ras = a[0] * v[0] + a[1] * v[1] + a[2] * v[2] + a[3];
                        data.push(format!("{:.6}", sign * ras));
                    }
                }
                items.push(InMemDicomObject::from_element_iter([
                    seq(tags::CONTOUR_IMAGE_SEQUENCE, vec![image_ref(k)]),
                    el(tags::CONTOUR_GEOMETRIC_TYPE, VR::CS, "CLOSED_PLANAR"),
                    el(
                        tags::NUMBER_OF_CONTOUR_POINTS,
                        VR::IS,
                        &poly.len().to_string(),
                    ),
                    el(tags::CONTOUR_DATA, VR::DS, &data.join("\\")),
                ]));
            }
        }
        let c = ROI_COLOURS[i % ROI_COLOURS.len()];
        contours.push(InMemDicomObject::from_element_iter([
            el(
                tags::ROI_DISPLAY_COLOR,
                VR::IS,
                &format!("{}\\{}\\{}", c[0], c[1], c[2]),
            ),
            seq(tags::CONTOUR_SEQUENCE, items),
            el(tags::REFERENCED_ROI_NUMBER, VR::IS, &number),
        ]));
        observations.push(InMemDicomObject::from_element_iter([
            el(tags::OBSERVATION_NUMBER, VR::IS, &number),
            el(tags::REFERENCED_ROI_NUMBER, VR::IS, &number),
            el(tags::RTROI_INTERPRETED_TYPE, VR::CS, "ORGAN"),
            el(tags::ROI_INTERPRETER, VR::PN, ""),
        ]));
    }
    obj.put(seq(tags::STRUCTURE_SET_ROI_SEQUENCE, set));
    obj.put(seq(tags::ROI_CONTOUR_SEQUENCE, contours));
    obj.put(seq(tags::RTROI_OBSERVATIONS_SEQUENCE, observations));
    let file = obj
        .with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2")
                .implementation_class_uid("2.25.300473394046302036634346591185224592541"),
        )
        .map_err(|e| file_err(path, format!("RTSTRUCT: {e}")))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| file_err(path, format!("RTSTRUCT: {e}")))?;
    crate::atomic::write(path, &bytes).map_err(|e| file_err(path, e.to_string()))
}

/// (YYYYMMDD, HHMMSS) in UTC of `secs` since 1970 (civil from days, Howard Hinnant's).
fn dicom_date_time(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", s / 3600, (s / 60) % 60, s % 60),
    )
}

/// The mask (0/1, x fastest) of `roi` on `grid`. Errors name the ROI: a contour that is not
/// on a slice of the grid, or outside it.
pub fn rasterise(roi: &Roi, grid: &Grid) -> Result<Vec<u8>, String> {
    let d = grid.dims;
    if d.contains(&0) {
        return Err(format!("ROI `{}`: the image grid {d:?} is empty", roi.name));
    }
    let inv = grid
        .inverse()
        .ok_or_else(|| "the image grid is singular".to_string())?;
    let to_voxel = |p: [f64; 3]| -> [f64; 3] {
        let ras = [-p[0], -p[1], p[2]];
        std::array::from_fn(|r| {
            inv[r][0] * ras[0] + inv[r][1] * ras[1] + inv[r][2] * ras[2] + inv[r][3]
        })
    };
    // Polygons per slice, in voxel coordinates (x, y).
    let mut per_slice: Vec<Vec<Vec<[f64; 2]>>> = vec![Vec::new(); d[2]];
    for c in &roi.contours {
        if c.iter().flatten().any(|x| !x.is_finite()) {
            return Err(format!(
                "ROI `{}`: a contour point is not a finite number",
                roi.name
            ));
        }
        let v: Vec<[f64; 3]> = c.iter().map(|&p| to_voxel(p)).collect();
        let z = v.iter().map(|p| p[2]).sum::<f64>() / v.len() as f64;
        let k = z.round();
        if v.iter().any(|p| (p[2] - k).abs() > 0.25) {
            return Err(format!(
                "ROI `{}`: a contour at slice coordinate {z:.2} is not on a slice of the image",
                roi.name
            ));
        }
        if k < 0.0 || k as usize >= d[2] {
            return Err(format!(
                "ROI `{}`: a contour lies outside the image (slice {k})",
                roi.name
            ));
        }
        per_slice[k as usize].push(v.iter().map(|p| [p[0], p[1]]).collect());
    }
    let mut mask = vec![0u8; d[0] * d[1] * d[2]];
    let plane = d[0] * d[1];
    for (k, polys) in per_slice.iter().enumerate() {
        if polys.is_empty() {
            continue;
        }
        let m = &mut mask[k * plane..(k + 1) * plane];
        // Interior: even-odd over every polygon of the slice (holes cancel).
        for j in 0..d[1] {
            let y = j as f64;
            let mut xs: Vec<f64> = Vec::new();
            for poly in polys {
                for e in 0..poly.len() {
                    let (p, q) = (poly[e], poly[(e + 1) % poly.len()]);
                    if (p[1] <= y) != (q[1] <= y) {
                        xs.push(p[0] + (y - p[1]) * (q[0] - p[0]) / (q[1] - p[1]));
                    }
                }
            }
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                let lo = pair[0].ceil().max(0.0) as usize;
                let hi = pair[1].floor();
                if hi < 0.0 {
                    continue;
                }
                for i in lo..=(hi as usize).min(d[0] - 1) {
                    if (i as f64) < pair[1] || (i as f64 - pair[1]).abs() < 1e-9 {
                        m[j * d[0] + i] ^= 1;
                    }
                }
            }
        }
        // Edges: voxel centres on a polygon's edge are inside.
        for poly in polys {
            for e in 0..poly.len() {
                let (p, q) = (poly[e], poly[(e + 1) % poly.len()]);
                // The part of the edge over the slice (a contour may leave the image).
                let Some((t0, t1)) = clip(p, q, [d[0] as f64, d[1] as f64]) else {
                    continue;
                };
                let len = (t1 - t0) * (q[0] - p[0]).abs().max((q[1] - p[1]).abs());
                let steps = len.ceil() as usize * 4 + 1;
                for s in 0..=steps {
                    let t = t0 + (t1 - t0) * s as f64 / steps as f64;
                    let x = p[0] + t * (q[0] - p[0]);
                    let y = p[1] + t * (q[1] - p[1]);
                    let (xi, yi) = (x.round(), y.round());
                    let on_edge = {
                        // Distance from the centre (xi, yi) to the segment.
                        let (dx, dy) = (q[0] - p[0], q[1] - p[1]);
                        let len2 = dx * dx + dy * dy;
                        let u = if len2 > 0.0 {
                            (((xi - p[0]) * dx + (yi - p[1]) * dy) / len2).clamp(0.0, 1.0)
                        } else {
                            0.0
                        };
                        let (cx, cy) = (p[0] + u * dx, p[1] + u * dy);
                        ((xi - cx).powi(2) + (yi - cy).powi(2)).sqrt() < 1e-3
                    };
                    if on_edge
                        && xi >= 0.0
                        && yi >= 0.0
                        && (xi as usize) < d[0]
                        && (yi as usize) < d[1]
                    {
                        m[yi as usize * d[0] + xi as usize] = 1;
                    }
                }
            }
        }
    }
    Ok(mask)
}

/// The parameter range [t0, t1] of the segment p + t (q - p), t in [0, 1], that lies in
/// [-1, w] x [-1, h] (Liang-Barsky); `None` when it misses.
fn clip(p: [f64; 2], q: [f64; 2], size: [f64; 2]) -> Option<(f64, f64)> {
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for a in 0..2 {
        let delta = q[a] - p[a];
        for (num, den) in [(p[a] + 1.0, -delta), (size[a] - p[a], delta)] {
            // Inside where den * t <= num.
            if den == 0.0 {
                if num < 0.0 {
                    return None;
                }
            } else {
                let t = num / den;
                if den > 0.0 {
                    t1 = t1.min(t);
                } else {
                    t0 = t0.max(t);
                }
            }
        }
    }
    (t0 <= t1).then_some((t0, t1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(d: [usize; 3]) -> Grid {
        // LPS-aligned voxels of 1 mm: x to patient left (RAS -x), y posterior, z superior.
        let mut a = [[0.0; 4]; 4];
        a[0][0] = -1.0;
        a[1][1] = -1.0;
        a[2][2] = 1.0;
        a[3][3] = 1.0;
        Grid { dims: d, affine: a }
    }

    /// A square with a square hole, the contour through boundary voxel centres: the ring
    /// exactly; a contour between slices is refused.
    #[test]
    fn contours_fill_with_holes_and_edges() {
        let g = grid([10, 10, 2]);
        let square = |a: f64, b: f64, z: f64| vec![[a, a, z], [b, a, z], [b, b, z], [a, b, z]];
        let roi = Roi {
            number: 1,
            name: "ring".into(),
            contours: vec![square(1.0, 8.0, 1.0), square(3.0, 6.0, 1.0)],
            skipped: 0,
        };
        let m = rasterise(&roi, &g).unwrap();
        let at = |x: usize, y: usize, z: usize| m[x + 10 * (y + 10 * z)];
        for y in 0..10 {
            for x in 0..10 {
                let outer = (1..=8).contains(&x) && (1..=8).contains(&y);
                let hole = (4..=5).contains(&x) && (4..=5).contains(&y);
                assert_eq!(at(x, y, 1), u8::from(outer && !hole), "({x}, {y})");
                assert_eq!(at(x, y, 0), 0);
            }
        }
        let off = Roi {
            contours: vec![square(1.0, 8.0, 0.5)],
            ..roi.clone()
        };
        assert!(rasterise(&off, &g).unwrap_err().contains("not on a slice"));
        // A contour far beyond the image is clipped (no time spent outside it); one that
        // covers the slice fills it; a non-finite point is refused.
        let huge = Roi {
            contours: vec![square(-1e12, 1e12, 0.0)],
            ..roi.clone()
        };
        let m = rasterise(&huge, &g).unwrap();
        assert!(m[..100].iter().all(|&v| v == 1) && m[100..].iter().all(|&v| v == 0));
        let bad = Roi {
            contours: vec![vec![[f64::INFINITY, 0.0, 0.0], [1.0, 1.0, 0.0]]],
            ..roi
        };
        assert!(rasterise(&bad, &g).unwrap_err().contains("finite"));
    }

    /// A file of `data_set` (implicit VR little endian) after a valid meta group.
    fn implicit_file(data_set: &[u8]) -> Vec<u8> {
        let ts = b"1.2.840.10008.1.2\0";
        let mut meta = vec![0x02, 0, 0x10, 0, b'U', b'I'];
        meta.extend((ts.len() as u16).to_le_bytes());
        meta.extend(ts);
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        f.extend([0x02, 0, 0, 0, b'U', b'L', 4, 0]);
        f.extend((meta.len() as u32).to_le_bytes());
        f.extend(meta);
        f.extend(data_set);
        f
    }

    fn implicit(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend(elem.to_le_bytes());
        v.extend((value.len() as u32).to_le_bytes());
        v.extend(value);
        v
    }

    /// The length walk agrees with how dicom-rs reads: a 14-byte UL (it reads three values
    /// and would take the next two bytes as the start of a tag, then a 4 GB length from the
    /// bytes after: the fuzz target's finding) is refused, as are stray delimiters with a
    /// length and sequences without their end; a well-formed file passes.
    #[test]
    fn lengths_are_walked_as_dicom_rs_reads_them() {
        let ok = [
            implicit(0x0008, 0x0060, b"CT"),
            implicit(0x0028, 0x0010, &[4, 0]),
            implicit(0x0008, 0x0000, &[0; 12]),
        ]
        .concat();
        assert_eq!(check_lengths(&implicit_file(&ok)), Ok(()));
        // A file that ends inside the group length's value (a fuzz finding: indexed past
        // the end).
        let whole = implicit_file(&ok);
        for cut in 132..150 {
            assert!(check_lengths(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let odd_ul = implicit(0x0008, 0x0000, b"Test^Pat\0\0\0\0sh");
        let e = check_lengths(&implicit_file(&odd_ul)).unwrap_err();
        assert!(e.contains("not a multiple of 4"), "{e}");
        let odd_us = implicit(0x0028, 0x0010, &[4, 0, 0]);
        assert!(check_lengths(&implicit_file(&odd_us)).is_err());
        // A delimiter of length 0 between elements is skipped (dicom-rs ignores it); one
        // with a length is refused.
        let stray = [implicit(0xFFFE, 0xE00D, &[]), ok.clone()].concat();
        assert_eq!(check_lengths(&implicit_file(&stray)), Ok(()));
        let long = [implicit(0xFFFE, 0xE00D, &[1, 2]), ok.clone()].concat();
        assert!(check_lengths(&implicit_file(&long)).is_err());
        // A sequence (the dictionary's VR) of undefined length needs its delimiter.
        let mut seq = vec![0x06, 0x30, 0x20, 0x00, 0xFF, 0xFF, 0xFF, 0xFF];
        seq.extend(implicit(0xFFFE, 0xE000, &implicit(0x3006, 0x0022, b"1 ")));
        assert!(check_lengths(&implicit_file(&seq))
            .unwrap_err()
            .contains("delimiter"));
        seq.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(check_lengths(&implicit_file(&seq)), Ok(()));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(dicom_date_time(0), ("19700101".into(), "000000".into()));
        // 2026-12-02 16:19:00 UTC
        assert_eq!(
            dicom_date_time(1_796_228_340),
            ("20261202".into(), "161900".into())
        );
        assert_eq!(
            dicom_date_time(951_782_400),
            ("20000229".into(), "000000".into())
        );
        let (a, b) = (new_uid(), new_uid());
        assert!(a != b && a.starts_with("2.25.") && a.len() <= 64, "{a} {b}");
    }

    /// An image with no columns (found by the `dicom` fuzz target: a 0-column slice that is
    /// also a structure set indexed past an empty mask) is an error, not a panic.
    #[test]
    fn an_empty_grid_is_an_error() {
        let roi = Roi {
            number: 1,
            name: "r".into(),
            contours: vec![vec![[-5.0, -5.0, 0.0], [5.0, -5.0, 0.0], [5.0, 5.0, 0.0]]],
            skipped: 0,
        };
        for d in [[0, 10, 1], [10, 0, 1], [10, 10, 0]] {
            let e = rasterise(&roi, &grid(d)).unwrap_err();
            assert!(e.contains("empty") || e.contains("outside"), "{d:?}: {e}");
        }
    }
}
