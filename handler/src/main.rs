//! `vmlet-handler`: the node agent. Its roles: `node` (the VMs of one node: their status, the node's heartbeat),
//! and `crd`, which prints the CRD generated from the Rust types so the schema never drifts from the code.

mod node;
mod vm_status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use vmlet_api::VirtualMachine;

#[derive(Parser)]
#[command(name = "vmlet-handler", version, about = "Reconciles vmlet VirtualMachines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the VirtualMachine CustomResourceDefinition as YAML (what deploy/crd.yaml holds).
    Crd,
    /// Report the VMs running on this node: read each launcher's status, write the VMs' status, heartbeat.
    Node(node::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => match crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("vmlet-handler: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Node(args) => match node::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("vmlet-handler: {err:#}");
                ExitCode::FAILURE
            }
        },
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
