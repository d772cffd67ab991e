//! `vmlet-launcher`: the entrypoint of a VM pod.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dhcp_serve;
mod driver;
mod guest_addressing;
mod network;
mod run;
mod spec;
mod vm_domain;

#[derive(Parser)]
#[command(
    name = "vmlet-launcher",
    version,
    about = "Runs a VM in this pod, with the pod's network identity"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = vmlet_log::JSON_ENV)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pod's VM: rewire the pod network for the guest, serve it DHCP, start it, supervise it.
    Run(run::Args),
    /// Run only the DHCP server for one client on one interface.
    DhcpServe(dhcp_serve::Args),
}

fn main() -> ExitCode {
    // A pod's PID 1 must reap orphans, which the launcher cannot do beside libvirt: it first splits in two (see
    // `driver::init`), before any thread exists.
    if driver::init::is_pid1() {
        return match driver::init::run_self_as_child() {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
            Err(err) => {
                eprintln!("vmlet-launcher: cannot start the launcher under PID 1: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    if cli.log_json && !vmlet_log::json_from_env() {
        // SAFETY: no other thread exists yet (PID 1's split, above, runs this program anew), so nothing reads the
        // environment while it changes. vmlet-driver, a child, inherits it and logs JSON lines too.
        unsafe { std::env::set_var(vmlet_log::JSON_ENV, "1") };
    }
    vmlet_log::init(cli.log_json);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::DhcpServe(args) => dhcp_serve::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("vmlet-launcher: {err:#}");
        ExitCode::FAILURE
    })
}
