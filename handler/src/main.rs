//! `vmlet-handler`: reconciles VirtualMachines. Roles: `controller` (launcher Pods and their lifecycle, cluster
//! wide, leader-elected) and `crd` (the CustomResourceDefinition, generated from the Rust types so the schema never
//! drifts from the code).

mod controller;
mod lifecycle;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use vmlet_api::VirtualMachine;

#[derive(Parser)]
#[command(name = "vmlet-handler", version, about = "Reconciles vmlet VirtualMachines")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = vmlet_log::JSON_ENV)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the VirtualMachine CustomResourceDefinition as YAML (what deploy/crd.yaml holds).
    Crd,
    /// Run the controller: a launcher Pod for every VM that should run, restarts, status, Events.
    Controller(controller::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Controller(args) => {
            vmlet_log::init(cli.log_json);
            controller::run(args).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vmlet-handler: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn crd_yaml() -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&VirtualMachine::crd())?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_crd_matches_the_types() {
        let checked_in = include_str!("../../deploy/crd.yaml");
        let generated = super::crd_yaml().unwrap();
        assert!(
            checked_in == generated,
            "deploy/crd.yaml differs from the types: run `cargo run -p vmlet-handler -- crd > deploy/crd.yaml`"
        );
    }
}
