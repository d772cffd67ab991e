//! `vmlet-driver`: libvirt's embedded QEMU driver in a process of its own, the child of `vmlet-launcher`, which
//! therefore links no libvirt. It serves the launcher on stdin and stdout (`vmlet_domain::protocol`), logs to
//! stderr, which it shares with the launcher, and exits when stdin closes, destroying its domain first.

use std::process::ExitCode;

use nix::sys::prctl;
use nix::sys::signal::Signal;

mod libvirt;
mod root;
mod serve;
mod state;

fn main() -> ExitCode {
    vmlet_log::init(vmlet_log::json_from_env());
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
