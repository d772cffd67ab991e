//! `vmlet-driver`: libvirt's embedded QEMU driver in a process of its own, the child of `vmlet-launcher`, which
//! therefore links no libvirt. It serves the launcher on stdin and stdout (`vmlet_domain::protocol`), logs to
//! stderr, which it shares with the launcher, and exits when stdin closes, destroying its domain first.

use std::io::IsTerminal;
use std::process::ExitCode;

use nix::sys::prctl;
use nix::sys::signal::Signal;

mod libvirt;
mod root;
mod serve;
mod state;

fn main() -> ExitCode {
    init_logging();
    // The launcher may die without closing stdin in an orderly way, even by SIGKILL: never outlive it. A launcher
    // that died before this call has closed stdin already, which ends `serve` at once.
    if let Err(error) = prctl::set_pdeathsig(Signal::SIGKILL) {
        tracing::error!(%error, "cannot ask to die with the launcher");
        return ExitCode::FAILURE;
    }
    let mut server = serve::Server::default();
    let result = server.serve(std::io::stdin().lock());
    drop(server);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %serve::chain(&error), "the driver stops");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // As the launcher's `--log-json`, whose environment variable this process inherits.
    let json = std::env::var("VMLET_LOG_JSON").is_ok_and(|value| {
        !matches!(
            value.to_ascii_lowercase().as_str(),
            "" | "0" | "n" | "no" | "f" | "false" | "off"
        )
    });
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
