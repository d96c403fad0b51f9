use std::process::ExitCode;

fn main() -> ExitCode {
    match shapeflow::default_registry() {
        Ok(registry) => ExitCode::from(shapeflow::cli::main_with(registry, std::env::args_os())),
        Err(e) => {
            eprintln!("error: this build of pipeline is broken: {e}");
            ExitCode::from(70)
        }
    }
}
