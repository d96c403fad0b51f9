use super::*;

fn open(dir: &Path) -> Cache {
    Cache::open(dir, WaitPolicy::NoWait, &|_| {}).expect("open cache")
}

#[test]
fn put_get_roundtrip_small_and_compressible() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let small = b"hello".to_vec();
    let big = vec![7u8; 1 << 20];
    let (k1, k2) = (CacheKey::of(b"a"), CacheKey::of(b"b"));
    let m1 = c.put(&k1, "s", "case1", &small).unwrap();
    let m2 = c.put(&k2, "s", "case2", &big).unwrap();
    assert_eq!(m1.compression, Compression::None);
    assert_eq!(m2.compression, Compression::Zstd);
    assert!(
        m2.stored_bytes < 10_000,
        "zstd should shrink a constant MiB"
    );
    assert_eq!(c.get(&k1).unwrap().unwrap(), small);
    assert_eq!(c.get(&k2).unwrap().unwrap(), big);
    assert!(c.get(&CacheKey::of(b"zz")).unwrap().is_none());
    let stats = c.stats().unwrap();
    assert_eq!(stats["s"].entries, 2);
    assert_eq!(stats["s"].raw_bytes, (small.len() + big.len()) as u64);
}

#[test]
fn corrupt_blob_is_detected_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let k = CacheKey::of(b"k");
    c.put(&k, "s", "c", &[1u8; 100]).unwrap();
    let path = c.object_path(&k.to_hex());
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let v = c.verify().unwrap();
    assert_eq!(v.corrupt.len(), 1);
    assert!(matches!(c.get(&k), Err(CacheError::Corrupt { .. })));
    // Dropped: now a plain miss, and the cache verifies clean.
    assert!(c.get(&k).unwrap().is_none());
    assert!(c.verify().unwrap().is_clean());
}

#[test]
fn missing_blob_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let k = CacheKey::of(b"k");
    c.put(&k, "s", "c", b"abc").unwrap();
    fs::remove_file(c.object_path(&k.to_hex())).unwrap();
    assert!(!c.contains(&k).unwrap());
    assert_eq!(c.verify().unwrap().missing.len(), 1);
    assert!(c.get(&k).unwrap().is_none());
}

#[test]
fn repair_rebuilds_index_from_objects() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<CacheKey> = (0..5u8).map(|i| CacheKey::of(&[i])).collect();
    {
        let c = open(dir.path());
        for (i, k) in keys.iter().enumerate() {
            c.put(k, "stage", &format!("c{i}"), &vec![i as u8; 5000])
                .unwrap();
        }
        fs::write(dir.path().join("tmp").join("leftover"), b"partial").unwrap();
    }
    // Lose the whole index.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let c = open(dir.path());
    // The dead process's temporary file is gone as soon as the cache is opened.
    assert_eq!(c.leftovers_removed(), 1);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert!(c.meta(&keys[0]).unwrap().is_none());
    let r = c.repair().unwrap();
    assert_eq!(r.adopted, 5);
    assert_eq!(r.temp_removed, 0);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.get(k).unwrap().unwrap(), vec![i as u8; 5000]);
    }
    let v = c.verify().unwrap();
    assert!(v.is_clean());
    assert_eq!((v.ok, v.orphans, v.temp_files), (5, 0, 0));
}

#[test]
fn gc_evicts_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let keys: Vec<CacheKey> = (0..4u8).map(|i| CacheKey::of(&[i])).collect();
    for (i, k) in keys.iter().enumerate() {
        let m = c.put(k, "s", "c", &[i as u8; 1000]).unwrap();
        // Pretend entry i was last used at time i.
        let mut m2 = m.clone();
        m2.last_used = i as u64;
        c.owned()
            .unwrap()
            .entries
            .insert(m.key.as_bytes(), serde_json::to_vec(&m2).unwrap())
            .unwrap();
    }
    let one = c.meta(&keys[0]).unwrap().unwrap().stored_bytes;
    let r = c.gc(one * 2).unwrap();
    assert_eq!(r.removed_entries, 2);
    assert!(!c.contains(&keys[0]).unwrap());
    assert!(!c.contains(&keys[1]).unwrap());
    assert!(c.contains(&keys[2]).unwrap());
    assert!(c.contains(&keys[3]).unwrap());
}

#[test]
fn second_opener_is_refused_with_the_holder_named() {
    let dir = tempfile::tempdir().unwrap();
    let _c = open(dir.path());
    let err = Cache::open(dir.path(), WaitPolicy::NoWait, &|_| {})
        .err()
        .expect("second open must fail");
    let msg = err.to_string();
    assert!(msg.contains("in use by process"), "{msg}");
    assert!(msg.contains(&std::process::id().to_string()), "{msg}");
}

#[test]
fn waiting_opener_proceeds_when_holder_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let told = std::sync::Mutex::new(None);
        let c2 = Cache::open(&path, WaitPolicy::Wait, &|m| {
            *told.lock().unwrap() = Some(m.to_string());
            tx.send(()).unwrap();
        })
        .unwrap();
        drop(c2);
        told.into_inner().unwrap()
    });
    rx.recv().unwrap();
    drop(c);
    let msg = h.join().unwrap().unwrap();
    assert!(msg.contains("waiting"), "{msg}");
}

#[test]
fn key_hex_roundtrip() {
    let k = CacheKey::of(b"xyz");
    assert_eq!(CacheKey::from_hex(&k.to_hex()), Some(k));
    assert_eq!(CacheKey::from_hex("zz"), None);
}

#[test]
fn blob_without_index_entry_is_adopted_on_its_header_and_checked_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let k = CacheKey::of(b"k");
    let bad = CacheKey::of(b"bad");
    {
        let c = open(dir.path());
        c.put(&k, "s", "c", &[3u8; 5000]).unwrap();
        c.put(&bad, "s", "c", &[4u8; 50]).unwrap();
        let p = c.object_path(&bad.to_hex());
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        fs::write(&p, b).unwrap();
    }
    // As after a kill -9 that lost the index's last updates.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let c = open(dir.path());
    assert!(c.contains(&k).unwrap());
    assert_eq!(c.get(&k).unwrap().unwrap(), vec![3u8; 5000]);
    // Adopted on its header; its damaged payload is caught by the read, which drops it.
    assert!(c.contains(&bad).unwrap());
    assert!(matches!(c.get(&bad), Err(CacheError::Corrupt { .. })));
    assert!(!c.contains(&bad).unwrap(), "dropped once found damaged");
    assert!(c.verify().unwrap().is_clean());
    // A blob whose header is damaged is never adopted.
    drop(c);
    let hk = CacheKey::of(b"header");
    {
        let c = open(dir.path());
        c.put(&hk, "s", "c", &[5u8; 50]).unwrap();
        let p = c.object_path(&hk.to_hex());
        let mut b = fs::read(&p).unwrap();
        b[12] ^= 0x55;
        fs::write(&p, b).unwrap();
    }
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let c = open(dir.path());
    assert!(
        !c.contains(&hk).unwrap(),
        "a damaged header is never adopted"
    );
}

/// Jobs of a cluster run write blobs through shared views while the driver holds the
/// cache: many writers at once (some of the same keys), no index touched, then the owner
/// adopts every blob and `verify` is clean.
#[test]
fn shared_writers_at_once_then_the_owner_adopts_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let owner = open(dir.path());
    let writers = 8;
    std::thread::scope(|s| {
        for w in 0..writers {
            let root = dir.path().to_path_buf();
            s.spawn(move || {
                let c = Cache::open_shared(&root).unwrap();
                assert!(c.is_shared());
                for i in 0..40u32 {
                    // Keys 0..20 are written by every writer; 20..40 by this one alone.
                    let id = if i < 20 { i } else { 1000 * (w + 1) + i };
                    let k = CacheKey::of(&id.to_le_bytes());
                    let bytes: Vec<u8> = (0..5000u32).map(|j| (j * 7 + id) as u8).collect();
                    c.put(&k, "stage", &format!("case{id}"), &bytes).unwrap();
                    // A shared view reads what any writer stored, verified.
                    assert_eq!(c.get(&k).unwrap().unwrap(), bytes);
                }
                // Records and the index are the owner's: a shared view neither keeps nor
                // lists them.
                c.record_put("r", b"x").unwrap();
                assert!(c.record_get("r").unwrap().is_none());
                assert!(c.entries().is_err());
            });
        }
    });
    assert_eq!(
        owner.entries().unwrap().len(),
        0,
        "jobs never touch the index"
    );
    for id in (0..20u32).chain((1..=writers).flat_map(|w| (20..40).map(move |i| 1000 * w + i))) {
        let k = CacheKey::of(&id.to_le_bytes());
        assert!(owner.contains(&k).unwrap(), "blob {id} adopted");
        let bytes: Vec<u8> = (0..5000u32).map(|j| (j * 7 + id) as u8).collect();
        assert_eq!(owner.get(&k).unwrap().unwrap(), bytes);
    }
    assert_eq!(owner.entries().unwrap().len(), 20 + 20 * writers as usize);
    let v = owner.verify().unwrap();
    assert!(v.is_clean(), "{v:?}");
    assert_eq!(v.temp_files, 0);
}

/// A shared writer that died mid-write leaves `.tmp-` files in a shard: never read as
/// blobs, reported by verify, and removed by repair once stale (not while young: the job
/// may still be writing it).
#[test]
fn a_dead_shared_writers_temporary_blob_is_never_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let owner = open(dir.path());
    let shard = dir.path().join("objects").join("ab");
    fs::create_dir_all(&shard).unwrap();
    let tmp = shard.join(format!("{SHARED_TMP_PREFIX}ab00.host.1.0"));
    fs::write(&tmp, b"half a blob").unwrap();
    let v = owner.verify().unwrap();
    assert_eq!((v.orphans, v.temp_files), (0, 1), "{v:?}");
    assert_eq!(
        owner.repair().unwrap().temp_removed,
        0,
        "young: maybe still written"
    );
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(owner.repair().unwrap().temp_removed, 1);
    assert!(owner.verify().unwrap().is_clean());
    // The owner leaves running jobs' scratch alone when it opens the cache.
    drop(owner);
    let job = dir.path().join("scratch").join("jobs").join("42");
    fs::create_dir_all(&job).unwrap();
    let stale = dir.path().join("scratch").join("123-0");
    fs::create_dir_all(&stale).unwrap();
    let again = open(dir.path());
    assert!(job.is_dir() && !stale.exists());
    assert_eq!(again.leftovers_removed(), 1);
    assert_eq!(again.job_scratch_dir("42"), job);
}

#[test]
fn a_shared_view_needs_an_existing_cache() {
    let dir = tempfile::tempdir().unwrap();
    let e = Cache::open_shared(dir.path().join("nothing"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("no cache here"), "{e}");
}

/// The index's files still locked by a handle being dropped (sled lets go a moment after
/// its `Db` is dropped): opening waits for them instead of failing.
#[test]
fn opening_waits_for_an_index_handle_being_dropped() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let held = sled::Config::new()
        .path(dir.path().join("index"))
        .open()
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let c = open(dir.path());
    release.join().unwrap();
    let k = CacheKey::of(b"k");
    c.put(&k, "s", "case", b"v").unwrap();
    assert!(c.get(&k).unwrap().is_some());
}
