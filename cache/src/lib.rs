//! Content-addressed, crash-safe cache for pipeline items.
//!
//! Layout of a cache directory:
//!
//! ```text
//! <root>/index/          sled database: key -> EntryMeta (JSON), plus named run records
//! <root>/objects/ab/<key> one blob per entry: magic, header (EntryMeta), payload
//! <root>/tmp/            blobs being written; renamed into objects/ when complete
//! <root>/scratch/        stages' private working folders during a run
//! <root>/LOCK            held (flock) by the one process using the cache
//! <root>/LOCK.owner      who holds it: pid, command line, start time
//! ```
//!
//! Jobs of a cluster run (`pipeline run --executor slurm`) open the same directory with
//! [`Cache::open_shared`]: they read and write blobs, each written under a temporary name
//! in its own shard directory (`objects/ab/.tmp-...`), fsynced and renamed there, and never
//! touch the index or the lock, which stay the driver's. The driver adopts the blobs its
//! jobs wrote ([`Cache::contains`] checks the header of a blob the index does not know,
//! then indexes it; every read verifies the checksum). Two writers of one key write the same bytes: the last rename wins, harmlessly.
//!
//! Invariants:
//! - A blob appears under `objects/` only complete and fsynced (write to `tmp/`, fsync, rename).
//! - The index names a blob only after the blob is in place, so a crash leaves at worst an
//!   orphan blob (adopted by [`Cache::repair`]) and never an index entry for a partial blob.
//! - Every read verifies the blake3 checksum of the decompressed bytes; a bad or missing blob is
//!   dropped from the index and reported as [`CacheError::Corrupt`] / a miss, never returned.
//! - Whatever `tmp/` and `scratch/` hold when the cache is opened was left by a process that
//!   died (the lock is exclusive): [`Cache::open`] removes it and says how much in
//!   [`Cache::leftovers_removed`].
//! - Each blob's header repeats its metadata, so the index can be rebuilt from `objects/` alone.

mod key;
mod lock;

pub use key::CacheKey;
pub use lock::{LockOwner, WaitPolicy};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"SFC1";
/// Payloads smaller than this are stored raw: compressing them does not pay.
const COMPRESS_MIN_BYTES: usize = 4096;
const RECORD_TREE: &str = "records";

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cache index error in {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cache entry {key} is corrupt ({why}); it was dropped and will be recomputed")]
    Corrupt { key: String, why: String },
    #[error("{0}")]
    Locked(String),
}

impl CacheError {
    fn io(path: &Path, source: io::Error) -> Self {
        CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// How a payload is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// What the index knows about one entry (also written in the blob's header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub key: String,
    /// Stage id that produced the entry (for `stats`).
    pub stage: String,
    /// Case id, or `*` for whole-dataset items.
    pub case: String,
    /// Uncompressed size in bytes.
    pub raw_bytes: u64,
    /// Size of the blob file in bytes.
    pub stored_bytes: u64,
    /// blake3 of the uncompressed payload, hex.
    pub checksum: String,
    pub compression: Compression,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; updated on reads.
    #[serde(default)]
    pub last_used: u64,
}

/// Per-stage totals reported by [`Cache::stats`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct StageStats {
    pub entries: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// Outcome of [`Cache::verify`].
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: u64,
    /// Entries whose blob failed its checksum or header check: (key, why).
    pub corrupt: Vec<(String, String)>,
    /// Entries whose blob is missing.
    pub missing: Vec<String>,
    /// Blobs that no index entry names (harmless; `repair` adopts them).
    pub orphans: u64,
    /// Leftover temporary files from interrupted writes (harmless; `repair` removes them).
    pub temp_files: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

/// Outcome of [`Cache::repair`].
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub kept: u64,
    pub adopted: u64,
    pub dropped: u64,
    pub temp_removed: u64,
}

/// Outcome of [`Cache::gc`].
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed_entries: u64,
    pub removed_bytes: u64,
    pub remaining_bytes: u64,
}

/// The index of a cache opened by its owner.
struct Index {
    db: sled::Db,
    entries: sled::Tree,
    records: sled::Tree,
}

/// An open cache directory: held exclusively by this process ([`Cache::open`]), or a job's
/// shared view of blobs only ([`Cache::open_shared`]).
pub struct Cache {
    root: PathBuf,
    index: Option<Index>,
    tmp_counter: AtomicU64,
    leftovers_removed: u64,
    _lock: Option<lock::CacheLock>,
}

/// Temporary blobs of shared writers start with this, inside their shard directory.
const SHARED_TMP_PREFIX: &str = ".tmp-";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long [`open_index`] waits for sled's own lock on the index.
const INDEX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the sled index. We hold the cache's lock, so sled's lock on its files can only be
/// held by a handle of this process being dropped (sled's flusher thread lets go of the
/// files a moment after its `Db` is dropped: a run that reopens the cache at once, as tests
/// and `pipeline` commands in one process do, can find them still locked). Waits for it up
/// to [`INDEX_LOCK_WAIT`], then gives sled's error.
fn open_index(path: &Path) -> std::result::Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(path)
            .flush_every_ms(Some(1000))
            .open()
        {
            // sled words it "could not acquire lock on ..." (an `Other` error wrapping the
            // OS's WouldBlock).
            Err(sled::Error::Io(e))
                if (e.kind() == io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && started.elapsed() < INDEX_LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`, taking its lock.
    ///
    /// With [`WaitPolicy::Wait`] a second process blocks until the first is done, calling
    /// `on_wait` once with a message naming the holder; with [`WaitPolicy::NoWait`] it fails
    /// at once with [`CacheError::Locked`] and that message.
    pub fn open(root: impl AsRef<Path>, wait: WaitPolicy, on_wait: &dyn Fn(&str)) -> Result<Cache> {
        let root = root.as_ref().to_path_buf();
        for dir in [root.clone(), root.join("objects"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        }
        let lock = lock::CacheLock::acquire(&root, wait, on_wait)?;
        // We hold the lock: what tmp/ and scratch/ hold was left by a process that died.
        let mut leftovers_removed = 0;
        for dir in [root.join("tmp"), root.join("scratch")] {
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                // Cluster jobs' scratch may belong to jobs still running: their driver
                // removes it when the job ends.
                if p == root.join("scratch").join(JOBS_SCRATCH) {
                    continue;
                }
                let gone = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if gone.is_ok() {
                    leftovers_removed += 1;
                }
            }
        }
        let index_path = root.join("index");
        let db = open_index(&index_path).map_err(|source| CacheError::Index {
            path: index_path.clone(),
            source,
        })?;
        let entries = db
            .open_tree("entries")
            .map_err(|source| CacheError::Index {
                path: index_path.clone(),
                source,
            })?;
        let records = db
            .open_tree(RECORD_TREE)
            .map_err(|source| CacheError::Index {
                path: index_path.clone(),
                source,
            })?;
        Ok(Cache {
            root,
            index: Some(Index {
                db,
                entries,
                records,
            }),
            tmp_counter: AtomicU64::new(0),
            leftovers_removed,
            _lock: Some(lock),
        })
    }

    /// A job's view of the cache at `root`, beside the process that holds it: blobs are read
    /// (verified) and written (atomically, in their shard directory) without the index or
    /// the lock. Index-wide operations (entries, gc, verify, repair) are the owner's.
    pub fn open_shared(root: impl AsRef<Path>) -> Result<Cache> {
        let root = root.as_ref().to_path_buf();
        let objects = root.join("objects");
        if !objects.is_dir() {
            return Err(CacheError::io(
                &objects,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no cache here (a job's cache is the one its driver opened)",
                ),
            ));
        }
        Ok(Cache {
            root,
            index: None,
            tmp_counter: AtomicU64::new(0),
            leftovers_removed: 0,
            _lock: None,
        })
    }

    /// Whether this is a job's shared view ([`Cache::open_shared`]).
    pub fn is_shared(&self) -> bool {
        self.index.is_none()
    }

    fn owned(&self) -> Result<&Index> {
        self.index.as_ref().ok_or_else(|| {
            CacheError::Locked(format!(
                "cache {}: this process shares it with its owner and cannot use its index",
                self.root.display()
            ))
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many temporary files and scratch folders of an interrupted run [`Cache::open`]
    /// removed.
    pub fn leftovers_removed(&self) -> u64 {
        self.leftovers_removed
    }

    /// A new, empty scratch folder under `<root>/scratch/`, for one run's working files;
    /// the caller removes it when done, and the next [`Cache::open`] removes it if not. A
    /// shared view's is under [`Cache::job_scratch_dir`] of `SLURM_JOB_ID` (or its pid).
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = if self.is_shared() {
            let job = std::env::var("SLURM_JOB_ID")
                .ok()
                .filter(|j| !j.is_empty() && j.chars().all(|c| c.is_ascii_alphanumeric()))
                .unwrap_or_else(|| format!("pid{}", std::process::id()));
            self.job_scratch_dir(&job)
                .join(self.tmp_counter.fetch_add(1, Ordering::Relaxed).to_string())
        } else {
            self.root.join("scratch").join(format!(
                "{}-{}",
                std::process::id(),
                self.tmp_counter.fetch_add(1, Ordering::Relaxed)
            ))
        };
        fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        Ok(dir)
    }

    /// Where cluster job `job` keeps its scratch: `<root>/scratch/jobs/<job>`, left alone by
    /// [`Cache::open`] (the job may still run); the driver removes it when the job ends.
    pub fn job_scratch_dir(&self, job: &str) -> PathBuf {
        self.root.join("scratch").join(JOBS_SCRATCH).join(job)
    }

    fn index_err(&self, source: sled::Error) -> CacheError {
        CacheError::Index {
            path: self.root.join("index"),
            source,
        }
    }

    fn object_path(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("00");
        self.root.join("objects").join(shard).join(key)
    }

    /// Index metadata for `key`, if present.
    pub fn meta(&self, key: &CacheKey) -> Result<Option<EntryMeta>> {
        let hex = key.to_hex();
        let Some(ix) = &self.index else {
            return Ok(None);
        };
        match ix
            .entries
            .get(hex.as_bytes())
            .map_err(|e| self.index_err(e))?
        {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// True when `key` has a blob. The checksum is checked on [`Cache::get`], not here. A
    /// blob the index does not know yet (a cluster job's, or one written just before a
    /// crash lost the index update) is adopted when its header names its key.
    pub fn contains(&self, key: &CacheKey) -> Result<bool> {
        let hex = key.to_hex();
        let path = self.object_path(&hex);
        let Some(ix) = &self.index else {
            return Ok(path.is_file());
        };
        if ix
            .entries
            .contains_key(hex.as_bytes())
            .map_err(|e| self.index_err(e))?
        {
            return Ok(path.is_file());
        }
        if !path.is_file() {
            return Ok(false);
        }
        // Blobs appear only complete (written aside, fsynced, renamed), and every `get`
        // verifies the checksum: adopting on the header alone is as safe and does not read
        // each blob a job wrote a second time (measured: docs/scaling.md).
        match read_header(&path) {
            Ok(mut meta) if meta.key == hex => {
                meta.stored_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                meta.last_used = now_secs();
                let v = serde_json::to_vec(&meta).unwrap_or_default();
                ix.entries
                    .insert(hex.as_bytes(), v)
                    .map_err(|e| self.index_err(e))?;
                Ok(true)
            }
            _ => {
                let _ = fs::remove_file(&path);
                Ok(false)
            }
        }
    }

    /// Stores `bytes` under `key`, atomically. Returns the entry's metadata.
    pub fn put(&self, key: &CacheKey, stage: &str, case: &str, bytes: &[u8]) -> Result<EntryMeta> {
        let hex = key.to_hex();
        let (payload, compression) = compress(bytes);
        let payload: &[u8] = payload.as_deref().unwrap_or(bytes);
        let mut meta = EntryMeta {
            key: hex.clone(),
            stage: stage.to_string(),
            case: case.to_string(),
            raw_bytes: bytes.len() as u64,
            stored_bytes: 0,
            checksum: checksum(bytes),
            compression,
            created: now_secs(),
            last_used: now_secs(),
        };
        let header = serde_json::to_vec(&meta).unwrap_or_default();
        // The index records the blob file's full size; the header cannot know its own length.
        meta.stored_bytes = (MAGIC.len() + 4 + header.len() + payload.len()) as u64;

        let final_path = self.object_path(&hex);
        let shard_dir = final_path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&shard_dir).map_err(|e| CacheError::io(&shard_dir, e))?;
        // Unique within the process (several views may write at once), then by host and pid.
        static TMP_NAMES: AtomicU64 = AtomicU64::new(0);
        let n = TMP_NAMES.fetch_add(1, Ordering::Relaxed);
        let tmp_path = if self.is_shared() {
            // Beside its final name, so the rename stays within one directory (atomic on
            // shared filesystems too); host and pid keep concurrent writers apart.
            shard_dir.join(format!(
                "{SHARED_TMP_PREFIX}{hex}.{}.{}.{n}",
                host_name(),
                std::process::id()
            ))
        } else {
            self.root
                .join("tmp")
                .join(format!("{hex}.{}.{n}", std::process::id()))
        };
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp_path)?;
            f.write_all(MAGIC)?;
            f.write_all(&(header.len() as u32).to_le_bytes())?;
            f.write_all(&header)?;
            f.write_all(payload)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp_path, &final_path)?;
            // Make the rename itself durable.
            File::open(&shard_dir)?.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp_path);
            return Err(CacheError::io(&final_path, e));
        }
        if let Some(ix) = &self.index {
            let value = serde_json::to_vec(&meta).unwrap_or_default();
            ix.entries
                .insert(hex.as_bytes(), value)
                .map_err(|e| self.index_err(e))?;
        }
        Ok(meta)
    }

    /// Reads the entry for `key`. `Ok(None)` when absent (or its blob vanished);
    /// `Err(Corrupt)` when the blob fails its checks, after dropping it from the cache.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>> {
        let hex = key.to_hex();
        if !self.contains(key)? {
            return Ok(None);
        }
        let raw_meta = match &self.index {
            Some(ix) => match ix
                .entries
                .get(hex.as_bytes())
                .map_err(|e| self.index_err(e))?
            {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            None => None,
        };
        let path = self.object_path(&hex);
        let read = match read_blob(&path) {
            Ok(r) => r,
            Err(BlobError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(key = %hex, "cache blob is missing; recomputing");
                self.drop_entry(&hex)?;
                return Ok(None);
            }
            Err(BlobError::Io(e)) => return Err(CacheError::io(&path, e)),
            Err(BlobError::Bad(why)) => {
                self.drop_entry(&hex)?;
                return Err(CacheError::Corrupt { key: hex, why });
            }
        };
        let (meta, bytes) = read;
        if meta.key != hex {
            self.drop_entry(&hex)?;
            return Err(CacheError::Corrupt {
                key: hex,
                why: format!("blob header names key {}", meta.key),
            });
        }
        // Touch last-used, without forcing a flush.
        if let (Some(ix), Some(raw)) = (&self.index, raw_meta) {
            if let Ok(mut m) = serde_json::from_slice::<EntryMeta>(&raw) {
                let now = now_secs();
                if now > m.last_used + 60 {
                    m.last_used = now;
                    if let Ok(v) = serde_json::to_vec(&m) {
                        let _ = ix.entries.insert(hex.as_bytes(), v);
                    }
                }
            }
        }
        Ok(Some(bytes))
    }

    fn drop_entry(&self, hex: &str) -> Result<()> {
        if let Some(ix) = &self.index {
            ix.entries
                .remove(hex.as_bytes())
                .map_err(|e| self.index_err(e))?;
        }
        let _ = fs::remove_file(self.object_path(hex));
        Ok(())
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&self, key: &CacheKey) -> Result<()> {
        self.drop_entry(&key.to_hex())
    }

    /// All index entries.
    pub fn entries(&self) -> Result<Vec<EntryMeta>> {
        let mut out = Vec::new();
        for kv in self.owned()?.entries.iter() {
            let (_, v) = kv.map_err(|e| self.index_err(e))?;
            if let Ok(m) = serde_json::from_slice::<EntryMeta>(&v) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Entries and bytes grouped by stage.
    pub fn stats(&self) -> Result<BTreeMap<String, StageStats>> {
        let mut by_stage: BTreeMap<String, StageStats> = BTreeMap::new();
        for m in self.entries()? {
            let s = by_stage.entry(m.stage.clone()).or_default();
            s.entries += 1;
            s.raw_bytes += m.raw_bytes;
            s.stored_bytes += m.stored_bytes;
        }
        Ok(by_stage)
    }

    /// Evicts least-recently-used entries until the stored bytes are at most `max_bytes`.
    pub fn gc(&self, max_bytes: u64) -> Result<GcReport> {
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|m| m.stored_bytes).sum();
        entries.sort_by_key(|m| (m.last_used, m.created));
        let mut report = GcReport::default();
        for m in entries {
            if total <= max_bytes {
                break;
            }
            self.drop_entry(&m.key)?;
            total = total.saturating_sub(m.stored_bytes);
            report.removed_entries += 1;
            report.removed_bytes += m.stored_bytes;
        }
        report.remaining_bytes = total;
        self.flush()?;
        Ok(report)
    }

    fn object_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(self.root.join("objects")) else {
            return out;
        };
        for shard in shards.flatten() {
            if let Ok(files) = fs::read_dir(shard.path()) {
                out.extend(
                    files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| !is_shared_tmp(p)),
                );
            }
        }
        out
    }

    /// Temporary blobs: the owner's in `tmp/`, and shared writers' in the shard
    /// directories (a writer still running has one there for a moment).
    fn temp_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(self.root.join("tmp"))
            .map(|d| d.flatten().map(|f| f.path()).collect())
            .unwrap_or_default();
        if let Ok(shards) = fs::read_dir(self.root.join("objects")) {
            for shard in shards.flatten() {
                if let Ok(files) = fs::read_dir(shard.path()) {
                    out.extend(
                        files
                            .flatten()
                            .map(|f| f.path())
                            .filter(|p| is_shared_tmp(p)),
                    );
                }
            }
        }
        out
    }

    /// Checks every entry's blob (header and checksum) without changing anything.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let entries = self.entries()?;
        let known: std::collections::HashSet<String> =
            entries.iter().map(|m| m.key.clone()).collect();
        for m in &entries {
            match read_blob(&self.object_path(&m.key)) {
                Ok((h, _)) if h.key == m.key => report.ok += 1,
                Ok((h, _)) => report
                    .corrupt
                    .push((m.key.clone(), format!("header names key {}", h.key))),
                Err(BlobError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    report.missing.push(m.key.clone())
                }
                Err(BlobError::Io(e)) => report.corrupt.push((m.key.clone(), e.to_string())),
                Err(BlobError::Bad(why)) => report.corrupt.push((m.key.clone(), why)),
            }
        }
        report.orphans = self
            .object_files()
            .iter()
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !known.contains(name)
            })
            .count() as u64;
        report.temp_files = self.temp_files().len() as u64;
        Ok(report)
    }

    /// Rebuilds the index from the blobs: drops entries whose blob is missing or corrupt,
    /// adopts valid orphan blobs, deletes corrupt blobs and leftover temporary files.
    pub fn repair(&self) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        let mut valid = std::collections::HashSet::new();
        for path in self.object_files() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            match read_blob(&path) {
                Ok((mut meta, _)) if meta.key == name => {
                    meta.stored_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let ix = self.owned()?;
                    let known = ix
                        .entries
                        .get(name.as_bytes())
                        .map_err(|e| self.index_err(e))?;
                    if let Some(prev) =
                        known.and_then(|v| serde_json::from_slice::<EntryMeta>(&v).ok())
                    {
                        meta.last_used = prev.last_used;
                        report.kept += 1;
                    } else {
                        meta.last_used = meta.created;
                        report.adopted += 1;
                    }
                    let v = serde_json::to_vec(&meta).unwrap_or_default();
                    ix.entries
                        .insert(name.as_bytes(), v)
                        .map_err(|e| self.index_err(e))?;
                    valid.insert(name);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for m in self.entries()? {
            if !valid.contains(&m.key) {
                self.owned()?
                    .entries
                    .remove(m.key.as_bytes())
                    .map_err(|e| self.index_err(e))?;
                report.dropped += 1;
            }
        }
        for t in self.temp_files() {
            // A shared writer's temporary blob may belong to a job still writing it: only
            // those an hour old are leftovers.
            let stale = !is_shared_tmp(&t)
                || fs::metadata(&t)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
            if stale && fs::remove_file(&t).is_ok() {
                report.temp_removed += 1;
            }
        }
        self.flush()?;
        Ok(report)
    }

    /// Reads a named record (small metadata kept beside the entries, e.g. the last key
    /// computed for a stage and case, used to explain why an item is recomputed).
    pub fn record_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(ix) = &self.index else {
            return Ok(None);
        };
        Ok(ix
            .records
            .get(name.as_bytes())
            .map_err(|e| self.index_err(e))?
            .map(|v| v.to_vec()))
    }

    /// Writes a named record (a shared view has none: its owner records).
    pub fn record_put(&self, name: &str, value: &[u8]) -> Result<()> {
        let Some(ix) = &self.index else {
            return Ok(());
        };
        ix.records
            .insert(name.as_bytes(), value)
            .map_err(|e| self.index_err(e))?;
        Ok(())
    }

    /// Makes the index durable.
    pub fn flush(&self) -> Result<()> {
        if let Some(ix) = &self.index {
            ix.db.flush().map_err(|e| self.index_err(e))?;
        }
        Ok(())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(ix) = &self.index {
            let _ = ix.db.flush();
        }
    }
}

/// The scratch folder of cluster jobs, under `<root>/scratch/`.
const JOBS_SCRATCH: &str = "jobs";

fn is_shared_tmp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(SHARED_TMP_PREFIX))
}

/// This machine's name, for temporary file names (`HOSTNAME`, `/etc/hostname`, or `host`).
fn host_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

/// zstd level 3; payloads over 8 MiB are compressed on all cores (zstd's own workers).
fn compress_all(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    if bytes.len() < 8 << 20 {
        return zstd::bulk::compress(bytes, 3);
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u32;
    let mut c = zstd::bulk::Compressor::new(3)?;
    c.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers))?;
    c.compress(bytes)
}

/// Size of the sample compressed first to decide whether compressing the whole payload pays.
const PROBE_BYTES: usize = 256 << 10;

fn compress(bytes: &[u8]) -> (Option<Vec<u8>>, Compression) {
    if bytes.len() < COMPRESS_MIN_BYTES {
        return (None, Compression::None);
    }
    if bytes.len() > 4 * PROBE_BYTES {
        // Probe eight slices spread over the payload; skip compression if they do not shrink.
        let step = bytes.len() / 8;
        let slice = PROBE_BYTES / 8;
        let sample: Vec<u8> = (0..8)
            .flat_map(|i| &bytes[i * step..i * step + slice])
            .copied()
            .collect();
        match zstd::bulk::compress(&sample, 3) {
            Ok(c) if (c.len() as f64) < sample.len() as f64 * 0.9 => {}
            _ => return (None, Compression::None),
        }
    }
    match compress_all(bytes) {
        // Keep the compressed form only when it saves at least a tenth.
        Ok(c) if (c.len() as f64) < bytes.len() as f64 * 0.9 => (Some(c), Compression::Zstd),
        _ => (None, Compression::None),
    }
}

/// blake3 of `bytes`, hex; large payloads are hashed on all cores.
fn checksum(bytes: &[u8]) -> String {
    if bytes.len() >= 1 << 20 {
        let mut h = blake3::Hasher::new();
        h.update_rayon(bytes);
        h.finalize().to_hex().to_string()
    } else {
        blake3::hash(bytes).to_hex().to_string()
    }
}

enum BlobError {
    Io(io::Error),
    Bad(String),
}

/// Reads and checks one object file as [`Cache::get`] does (header, size, checksum): its
/// payload, or why it is damaged. For fuzzing and tools; never returns a damaged payload.
pub fn read_object(path: &Path) -> std::result::Result<Vec<u8>, String> {
    read_blob(path).map(|(_, b)| b).map_err(|e| match e {
        BlobError::Io(e) => e.to_string(),
        BlobError::Bad(m) => m,
    })
}

/// A blob's header (its metadata) without its payload.
fn read_header(path: &Path) -> std::result::Result<EntryMeta, BlobError> {
    let mut f = File::open(path).map_err(BlobError::Io)?;
    open_blob(&mut f).map(|(meta, _)| meta)
}

/// Reads and checks the magic and the header of the blob open in `f`, leaving `f` at the
/// payload; returns the metadata and the payload's length.
fn open_blob(f: &mut File) -> std::result::Result<(EntryMeta, usize), BlobError> {
    let file_len = f.metadata().map_err(BlobError::Io)?.len() as usize;
    let mut head = [0u8; 8];
    f.read_exact(&mut head)
        .map_err(|_| BlobError::Bad("truncated".into()))?;
    if &head[..4] != MAGIC {
        return Err(BlobError::Bad("bad magic".into()));
    }
    let hlen = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if 8 + hlen > file_len {
        return Err(BlobError::Bad("truncated header".into()));
    }
    let mut header = vec![0u8; hlen];
    f.read_exact(&mut header)
        .map_err(|_| BlobError::Bad("truncated header".into()))?;
    let meta = serde_json::from_slice(&header)
        .map_err(|e| BlobError::Bad(format!("unreadable header: {e}")))?;
    Ok((meta, file_len - 8 - hlen))
}

fn read_blob(path: &Path) -> std::result::Result<(EntryMeta, Vec<u8>), BlobError> {
    let mut f = File::open(path).map_err(BlobError::Io)?;
    let (meta, payload_len) = open_blob(&mut f)?;
    // Read the payload straight into its own buffer: no copy for raw payloads.
    let mut payload = Vec::with_capacity(payload_len);
    f.read_to_end(&mut payload).map_err(BlobError::Io)?;
    let bytes = match meta.compression {
        Compression::None => payload,
        // Streamed, and never past the recorded size: a damaged header cannot make the
        // reader allocate what the blob does not hold.
        Compression::Zstd => {
            let mut out =
                Vec::with_capacity((meta.raw_bytes as usize).min(payload.len().saturating_mul(64)));
            zstd::stream::read::Decoder::new(&payload[..])
                .map_err(|e| BlobError::Bad(format!("zstd: {e}")))?
                .take(meta.raw_bytes.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| BlobError::Bad(format!("zstd: {e}")))?;
            out
        }
    };
    if bytes.len() as u64 != meta.raw_bytes {
        return Err(BlobError::Bad(format!(
            "size {} differs from recorded {}",
            bytes.len(),
            meta.raw_bytes
        )));
    }
    let sum = checksum(&bytes);
    if sum != meta.checksum {
        return Err(BlobError::Bad("checksum mismatch".into()));
    }
    Ok((meta, bytes))
}

#[cfg(test)]
mod tests;
