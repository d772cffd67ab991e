//! `vmlet-launcher`: the entrypoint of a VM pod.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dhcp_serve;
mod domain;
mod driver;
// The `run` command will use it; until then only the tests do.
#[cfg_attr(not(test), allow(dead_code))]
mod guest_addressing;
#[cfg_attr(not(test), allow(dead_code))]
mod network;
#[cfg_attr(not(test), allow(dead_code))]
mod spec;

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
    /// Run only the DHCP server for one client on one interface.
    DhcpServe(dhcp_serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::DhcpServe(args) => dhcp_serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vmlet-launcher: {err:#}");
            ExitCode::FAILURE
        }
    }
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
