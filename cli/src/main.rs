// `vmlet` (also `kubectl-vmlet`, for `kubectl vmlet ...`): see docs/cli.md.

use std::process::ExitCode;

use clap::Parser;
use vmlet_cli::args::Cli;
use vmlet_cli::error::one_line;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("vmlet: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vmlet_cli::verbs::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("vmlet: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}
