#![no_main]
//! Any bytes as a pipeline file: parsed and validated against the real registry, errors
//! reported, never a panic or a hang.
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    static REGISTRY: OnceLock<shapeflow_core::Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| shapeflow::default_registry().expect("registry"));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = common::scratch().join("p.yaml");
    if let Ok(pf) = shapeflow_core::PipelineFile::parse(&path, text, &|_| None) {
        let _ = shapeflow_core::resolve::resolve(&pf, registry, &[]);
    }
});
