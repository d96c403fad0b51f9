#![no_main]
//! Any bytes as a `.nii` file: the reader returns a volume (or, read as channels, one per
//! entry of the fourth dimension) or an error, never panics, hangs or allocates past what
//! the file can hold.
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::file("input.nii", data);
    let _ = shapeflow_formats::read(&p);
    let _ = shapeflow_formats::read_channels(&p);
});
