use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(shapeflow::cli::main_with(
        shapeflow::default_registry(),
        std::env::args_os(),
    ))
}
