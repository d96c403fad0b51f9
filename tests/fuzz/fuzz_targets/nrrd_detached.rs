#![no_main]
//! A detached NRRD header and its data file: the input's first part (up to a 0 byte) is the
//! header, the rest the data file it may name (`data.raw` or `data.raw.gz`).
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let rest = data.get(cut + 1..).unwrap_or(&[]);
    common::file("data.raw", rest);
    common::file("data.raw.gz", rest);
    let p = common::file("input.nhdr", &data[..cut]);
    let _ = shapeflow_formats::read(&p);
});
