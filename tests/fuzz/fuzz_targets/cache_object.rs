#![no_main]
//! Any bytes as a cache object file: read and checked as `Cache::get` reads it (header,
//! size, checksum): a payload only if intact, never a panic or an allocation past what the
//! file holds; an intact payload then decodes as an item or fails cleanly. A valid object
//! written by `Cache::put` is in the seed corpus.
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::file("object", data);
    if let Ok(bytes) = shapeflow_cache::read_object(&p) {
        let _ = shapeflow_core::Item::decode(&bytes);
    }
});
