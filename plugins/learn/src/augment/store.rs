//! Where the training cases' voxels live while a model trains: one flat store of every
//! case's image (f32), labels (u8) and SDMs (16-bit, see [`quantise`]), either in memory
//! (small sets, tests) or in an unnamed file in the cache's scratch folder that is
//! memory-mapped. Mapped, the voxels are page cache the kernel can drop and read again, not
//! the process's own memory: training holds a few cases of anonymous memory whatever the
//! dataset's size (as nnU-Net's memory-mapped preprocessed arrays do). The file has no name
//! (`O_TMPFILE`), so a killed run leaves nothing behind.

use std::io::Write;
use std::ops::Range;
use std::path::Path;

/// The bytes of a finished store.
enum Bytes {
    /// u64 words so that every 4-byte-aligned offset is aligned in memory too.
    Owned(Vec<u64>),
    Mapped(memmap2::Mmap),
}

/// Every training case's voxels, read-only once built.
pub struct TrainStore {
    bytes: Bytes,
}

impl TrainStore {
    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Owned(w) => bytemuck::cast_slice(w),
            Bytes::Mapped(m) => m,
        }
    }

    /// Whether the voxels are in a mapped file (else in memory).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// The store's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn f32s(&self, r: &Range<usize>) -> &[f32] {
        bytemuck::cast_slice(&self.bytes()[r.clone()])
    }

    pub fn i16s(&self, r: &Range<usize>) -> &[i16] {
        bytemuck::cast_slice(&self.bytes()[r.clone()])
    }

    pub fn u8s(&self, r: &Range<usize>) -> &[u8] {
        &self.bytes()[r.clone()]
    }
}

enum Sink {
    Memory(Vec<u8>),
    File(std::io::BufWriter<std::fs::File>),
}

/// Appends arrays, each at a 4-byte-aligned offset, and returns where each went.
pub struct StoreWriter {
    sink: Sink,
    len: usize,
}

impl StoreWriter {
    pub fn in_memory() -> StoreWriter {
        StoreWriter {
            sink: Sink::Memory(Vec::new()),
            len: 0,
        }
    }

    /// A store in an unnamed file under `dir` (created if missing).
    pub fn in_file(dir: &Path) -> std::io::Result<StoreWriter> {
        std::fs::create_dir_all(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        Ok(StoreWriter {
            sink: Sink::File(std::io::BufWriter::with_capacity(1 << 20, file)),
            len: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<Range<usize>> {
        let pad = (4 - self.len % 4) % 4;
        let zeros = [0u8; 4];
        match &mut self.sink {
            Sink::Memory(v) => {
                v.extend_from_slice(&zeros[..pad]);
                v.extend_from_slice(bytes);
            }
            Sink::File(f) => {
                f.write_all(&zeros[..pad])?;
                f.write_all(bytes)?;
            }
        }
        let start = self.len + pad;
        self.len = start + bytes.len();
        Ok(start..self.len)
    }

    pub fn f32s(&mut self, v: &[f32]) -> std::io::Result<Range<usize>> {
        self.put(bytemuck::cast_slice(v))
    }

    pub fn i16s(&mut self, v: &[i16]) -> std::io::Result<Range<usize>> {
        self.put(bytemuck::cast_slice(v))
    }

    pub fn u8s(&mut self, v: &[u8]) -> std::io::Result<Range<usize>> {
        self.put(v)
    }

    pub fn finish(self) -> std::io::Result<TrainStore> {
        let bytes = match self.sink {
            Sink::Memory(v) => {
                let mut words = vec![0u64; v.len().div_ceil(8)];
                bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..v.len()].copy_from_slice(&v);
                Bytes::Owned(words)
            }
            Sink::File(f) => {
                let file = f.into_inner().map_err(|e| e.into_error())?;
                if self.len == 0 {
                    Bytes::Owned(Vec::new())
                } else {
                    // SAFETY: the file has no name and only this process holds it, so
                    // nothing else can change or truncate it while it is mapped.
                    Bytes::Mapped(unsafe { memmap2::Mmap::map(&file)? })
                }
            }
        };
        Ok(TrainStore { bytes })
    }
}

/// A map as 16-bit integers: value ~= q * scale, scale = the largest magnitude / 32767, so
/// the error is at most scale / 2 (1.5e-5 for a normalised map in [-1, 1]) and the
/// largest magnitudes come back exactly as `q * scale` with q = +-32767.
pub fn quantise(v: &[f32]) -> (Vec<i16>, f32) {
    let max = v
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 32767.0 } else { 1.0 };
    let q = v
        .iter()
        .map(|&x| (x / scale).round().clamp(-32767.0, 32767.0) as i16)
        .collect();
    (q, scale)
}

/// One quantised map, read in place.
#[derive(Clone, Copy)]
pub struct MapView<'a> {
    pub q: &'a [i16],
    pub scale: f32,
}

impl MapView<'_> {
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        self.q[i] as f32 * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sinks give back what was written, each array aligned; quantisation is within
    /// half a step and keeps the extremes.
    #[test]
    fn stores_round_trip_in_memory_and_mapped() {
        let dir = tempfile::tempdir().unwrap();
        for mut w in [
            StoreWriter::in_memory(),
            StoreWriter::in_file(dir.path()).unwrap(),
        ] {
            let a = w.u8s(&[1, 2, 3]).unwrap();
            let b = w.f32s(&[1.5, -2.0]).unwrap();
            let c = w.i16s(&[-7, 9, 11]).unwrap();
            assert_eq!(b.start % 4, 0);
            let s = w.finish().unwrap();
            assert_eq!(s.u8s(&a), [1, 2, 3]);
            assert_eq!(s.f32s(&b), [1.5, -2.0]);
            assert_eq!(s.i16s(&c), [-7, 9, 11]);
        }
        // The unnamed file leaves nothing in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let v: Vec<f32> = (0..1000).map(|i| (i as f32 / 499.5 - 1.0).tanh()).collect();
        let (q, scale) = quantise(&v);
        let view = MapView { q: &q, scale };
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (i, x) in v.iter().enumerate() {
            assert!((view.get(i) - x).abs() <= scale * 0.5 + 1e-7, "{i}");
        }
        assert!((view.get(999) - max).abs() < 1e-6);
        assert_eq!(quantise(&[0.0, 0.0]).0, [0, 0]);
    }
}
