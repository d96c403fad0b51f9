#![no_main]
//! Any bytes in place of a cache object: `get` returns the item only if it is intact,
//! otherwise a miss or an error, never a panic or an allocation past the file's size.
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    use shapeflow_cache::{Cache, CacheKey, WaitPolicy};
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        Cache::open(common::scratch().join("cache"), WaitPolicy::NoWait, &|_| {}).expect("cache")
    });
    let key = CacheKey::of(b"fuzz");
    let value = b"the intact value".repeat(8);
    cache.put(&key, "stage", "case", &value).expect("put");
    let hex = key.to_hex();
    let object = common::scratch()
        .join("cache/objects")
        .join(&hex[..2])
        .join(&hex);
    std::fs::write(&object, data).expect("overwrite");
    if let Ok(Some(bytes)) = cache.get(&key) {
        assert_eq!(bytes, value, "a damaged object was returned as valid");
        let _ = shapeflow_core::Item::decode(&bytes);
    }
});
