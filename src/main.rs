use std::process::ExitCode;

/// Lets readers cap single allocations while parsing (`shapeflow_formats::alloc`).
#[global_allocator]
static ALLOC: shapeflow_formats::alloc::Capped = shapeflow_formats::alloc::Capped;

fn main() -> ExitCode {
    match shapeflow::default_registry() {
        Ok(registry) => ExitCode::from(shapeflow::cli::main_with(registry, std::env::args_os())),
        Err(e) => {
            eprintln!("error: this build of pipeline is broken: {e}");
            ExitCode::from(70)
        }
    }
}
