#![no_main]
//! Any bytes as a `.mha` file: the reader returns a volume or an error, never panics, hangs
//! or allocates past what the file can hold.
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::file("input.mha", data);
    let _ = shapeflow_formats::read(&p);
});
