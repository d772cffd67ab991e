//! `vmlet-launcher`: the entrypoint of a VM pod.

use std::io::IsTerminal;
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
    #[arg(long, global = true, env = "VMLET_LOG_JSON")]
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
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::DhcpServe(args) => dhcp_serve::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("vmlet-launcher: {err:#}");
        ExitCode::FAILURE
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: `kubectl logs` and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
