//! `vmlet-handler`: the node agent. Its roles (controller, node, standalone) are not written yet, so it says so and
//! exits non-zero rather than pretending to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("vmlet-handler: no role is implemented yet (controller, node and standalone are planned)");
    ExitCode::FAILURE
}
