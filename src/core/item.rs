//! Items: what stages exchange and the cache stores, with a compact binary encoding.

use shapeflow_volume::{Volume, VoxelData};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One output of a stage for one case (or for the whole dataset).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Structured data: metrics, case metadata, reports.
    Json(serde_json::Value),
    /// Opaque bytes: model weights, archives.
    Bytes(Vec<u8>),
    /// A 3D volume with geometry: image, label map, one SDM. Shared: stages that read it
    /// copy no voxels; one that changes it makes its own.
    Volume(Arc<Volume>),
    /// Named parts, e.g. `image` + `labels` + `organs`.
    Bundle(BTreeMap<String, Item>),
}

/// A stored item could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode item: {0}")]
pub struct DecodeError(pub String);

const TAG_JSON: u8 = 1;
const TAG_BYTES: u8 = 2;
const TAG_VOLUME: u8 = 3;
const TAG_BUNDLE: u8 = 4;

impl Item {
    /// The part `name` of a bundle.
    pub fn part(&self, name: &str) -> Option<&Item> {
        match self {
            Item::Bundle(m) => m.get(name),
            _ => None,
        }
    }

    /// Several items of one kind for a stage that combines them (e.g. an ensemble of models
    /// for `pipeline predict -m A -m B`): a bundle `ensemble/0`, `ensemble/1`, ...
    pub fn ensemble(items: Vec<Item>) -> Item {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "ensemble".to_string(),
            Item::Json(serde_json::json!(items.len())),
        );
        for (i, it) in items.into_iter().enumerate() {
            m.insert(format!("ensemble/{i}"), it);
        }
        Item::Bundle(m)
    }

    /// The members of an [`Item::ensemble`], in order; `None` for any other item.
    pub fn ensemble_members(&self) -> Option<Vec<&Item>> {
        let n = self.part("ensemble")?.as_json()?.as_u64()? as usize;
        (0..n)
            .map(|i| self.part(&format!("ensemble/{i}")))
            .collect()
    }

    pub fn as_volume(&self) -> Option<&Volume> {
        match self {
            Item::Volume(v) => Some(v),
            _ => None,
        }
    }

    /// The volume, shared (no voxel is copied).
    pub fn as_shared_volume(&self) -> Option<Arc<Volume>> {
        match self {
            Item::Volume(v) => Some(Arc::clone(v)),
            _ => None,
        }
    }

    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match self {
            Item::Json(v) => Some(v),
            _ => None,
        }
    }

    /// Kind name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Json(_) => "json",
            Item::Bytes(_) => "bytes",
            Item::Volume(_) => "volume",
            Item::Bundle(_) => "bundle",
        }
    }

    /// Serialises the item (little-endian, self-describing).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        self.encode_into(&mut out);
        out
    }

    fn size_hint(&self) -> usize {
        match self {
            Item::Json(_) => 256,
            Item::Bytes(b) => b.len() + 16,
            Item::Volume(v) => v.len() * 4 + 256,
            Item::Bundle(m) => m.values().map(Item::size_hint).sum::<usize>() + 64,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Item::Json(v) => {
                out.push(TAG_JSON);
                let s = serde_json::to_vec(v).unwrap_or_default();
                put_bytes(out, &s);
            }
            Item::Bytes(b) => {
                out.push(TAG_BYTES);
                put_bytes(out, b);
            }
            Item::Volume(v) => {
                out.push(TAG_VOLUME);
                for d in v.dims {
                    out.extend_from_slice(&(d as u64).to_le_bytes());
                }
                for s in v.spacing {
                    out.extend_from_slice(&s.to_le_bytes());
                }
                for row in v.affine {
                    for x in row {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
                match &v.data {
                    VoxelData::U8(d) => {
                        out.push(1);
                        out.extend_from_slice(d);
                    }
                    VoxelData::I16(d) => {
                        out.push(2);
                        out.reserve(d.len() * 2);
                        for x in d {
                            out.extend_from_slice(&x.to_le_bytes());
                        }
                    }
                    VoxelData::F32(d) => {
                        out.push(3);
                        out.reserve(d.len() * 4);
                        for x in d {
                            out.extend_from_slice(&x.to_le_bytes());
                        }
                    }
                }
            }
            Item::Bundle(m) => {
                out.push(TAG_BUNDLE);
                out.extend_from_slice(&(m.len() as u64).to_le_bytes());
                for (k, v) in m {
                    put_bytes(out, k.as_bytes());
                    let start = out.len();
                    out.extend_from_slice(&0u64.to_le_bytes());
                    v.encode_into(out);
                    let len = (out.len() - start - 8) as u64;
                    out[start..start + 8].copy_from_slice(&len.to_le_bytes());
                }
            }
        }
    }

    /// Inverse of [`Item::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Item, DecodeError> {
        let mut r = Reader { b: bytes, at: 0 };
        let item = r.item()?;
        if r.at != bytes.len() {
            return Err(DecodeError(format!(
                "{} trailing bytes",
                bytes.len() - r.at
            )));
        }
        Ok(item)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| DecodeError("truncated".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(
            s.try_into().map_err(|_| DecodeError("u64".into()))?,
        ))
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn len(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.u64()?).map_err(|_| DecodeError("length overflow".into()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }
    fn item(&mut self) -> Result<Item, DecodeError> {
        match self.u8()? {
            TAG_JSON => serde_json::from_slice(self.bytes()?)
                .map(Item::Json)
                .map_err(|e| DecodeError(e.to_string())),
            TAG_BYTES => Ok(Item::Bytes(self.bytes()?.to_vec())),
            TAG_VOLUME => {
                let dims = [self.len()?, self.len()?, self.len()?];
                let spacing = [self.f64()?, self.f64()?, self.f64()?];
                let mut affine = [[0.0; 4]; 4];
                for row in affine.iter_mut() {
                    for x in row.iter_mut() {
                        *x = self.f64()?;
                    }
                }
                let n = dims
                    .iter()
                    .try_fold(1usize, |a, d| a.checked_mul(*d))
                    .ok_or_else(|| DecodeError("dims overflow".into()))?;
                let data = match self.u8()? {
                    1 => VoxelData::U8(self.take(n)?.to_vec()),
                    2 => VoxelData::I16(
                        self.take(n.checked_mul(2).ok_or_else(|| DecodeError("size".into()))?)?
                            .chunks_exact(2)
                            .map(|c| i16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                    ),
                    3 => VoxelData::F32(
                        self.take(n.checked_mul(4).ok_or_else(|| DecodeError("size".into()))?)?
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                    t => return Err(DecodeError(format!("unknown voxel type {t}"))),
                };
                Ok(Item::Volume(Arc::new(Volume {
                    dims,
                    spacing,
                    affine,
                    data,
                })))
            }
            TAG_BUNDLE => {
                let n = self.len()?;
                let mut m = BTreeMap::new();
                for _ in 0..n {
                    let k = String::from_utf8(self.bytes()?.to_vec())
                        .map_err(|e| DecodeError(e.to_string()))?;
                    let len = self.len()?;
                    let start = self.at;
                    let v = self.item()?;
                    if self.at - start != len {
                        return Err(DecodeError("bundle part length mismatch".into()));
                    }
                    m.insert(k, v);
                }
                Ok(Item::Bundle(m))
            }
            t => Err(DecodeError(format!("unknown item tag {t}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_roundtrip() {
        let vol = Volume::new(
            [2, 3, 4],
            [1.0, 2.0, 3.0],
            VoxelData::F32((0..24).map(|i| i as f32).collect()),
        )
        .unwrap();
        let lab = Volume::new([2, 3, 4], [1.0, 2.0, 3.0], VoxelData::U8(vec![1; 24])).unwrap();
        let hu = Volume::new(
            [1, 1, 2],
            [1.0, 1.0, 1.0],
            VoxelData::I16(vec![-1000, 1200]),
        )
        .unwrap();
        let mut m = BTreeMap::new();
        m.insert("image".to_string(), Item::Volume(Arc::new(vol)));
        m.insert("labels".to_string(), Item::Volume(Arc::new(lab)));
        m.insert("hu".to_string(), Item::Volume(Arc::new(hu)));
        m.insert(
            "meta".to_string(),
            Item::Json(serde_json::json!({"organs": ["a", "b"]})),
        );
        m.insert("raw".to_string(), Item::Bytes(vec![9, 8, 7]));
        let item = Item::Bundle(m);
        let bytes = item.encode();
        assert_eq!(Item::decode(&bytes).unwrap(), item);
        // Truncation anywhere is an error, never a panic.
        for cut in [0, 1, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(Item::decode(&bytes[..cut]).is_err());
        }
    }
}
