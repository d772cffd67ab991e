//! `vmlet-handler`: reconciles vmlet `VirtualMachine`s. Its roles: `controller` (launcher Pods and their lifecycle,
//! cluster wide, leader-elected); `node` (the VMs of one node: their status, the node's heartbeat); `standalone`,
//! which runs VMs on this machine from manifest files with no cluster; `validate`, which checks manifests as vmlet
//! reads them; and `crd`, which prints the
//! CustomResourceDefinition generated from the Rust types so the schema never drifts from the code.

use std::process::ExitCode;

use clap::builder::FalseyValueParser;
use clap::{Parser, Subcommand};

mod cluster;
#[cfg(test)]
mod contract_tests;
mod controller;
mod lifecycle;
mod metrics;
mod node;
mod probe;
mod standalone;
mod validate;
mod vm_status;

#[derive(Parser)]
#[command(name = "vmlet-handler", version, about = "Reconciles vmlet VirtualMachines")]
struct Cli {
    /// Log as JSON lines instead of text.
    /// Read as every vmlet program reads it: any true or false value (`1`, `yes`, `0`, ...).
    #[arg(long, global = true, env = vmlet_log::JSON_ENV, value_parser = FalseyValueParser::new())]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what deploy/crd.yaml holds): VirtualMachine, instance types and
    /// preferences.
    Crd,
    /// Run the controller: a launcher Pod for every VM that should run, restarts, status, Events.
    Controller(controller::Args),
    /// Report the VMs running on this node: read each launcher's status, write the VMs' status, heartbeat.
    Node(node::Args),
    /// Run the VMs of a folder of manifests on this machine, each in a network namespace of its own, no cluster.
    Standalone(standalone::Args),
    /// Show the VMs that standalone mode runs from a folder of manifests.
    Status(standalone::StatusArgs),
    /// Check manifests as vmlet reads them: every refusal with its field path, exit status 1 on any; `-o yaml`
    /// prints each VM with its defaults applied.
    Validate(validate::Args),
    /// Run one launcher as a pod's runtime would (started by standalone mode).
    #[command(hide = true)]
    Shim(standalone::shim::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shim must stay single-threaded until it has entered the pod's namespaces, and logs nothing itself.
    let command = match cli.command {
        Command::Shim(args) => return finish(standalone::shim::run(args)),
        command => command,
    };
    if cli.log_json && !vmlet_log::json_from_env() {
        // SAFETY: no other thread exists yet (the roles start their runtimes below), so nothing reads the
        // environment while it changes. Launchers that a role starts inherit it and log JSON lines too.
        unsafe { std::env::set_var(vmlet_log::JSON_ENV, "1") };
    }
    // `crd` and `status` print on stdout and log nothing; every role logs the same way.
    if !matches!(command, Command::Crd | Command::Status(_) | Command::Validate(_)) {
        vmlet_log::init(cli.log_json);
    }
    let result = match command {
        Command::Crd => crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Controller(args) => controller::run(args).map_err(anyhow::Error::from),
        Command::Node(args) => node::main(args),
        Command::Standalone(args) => standalone::run(args),
        Command::Status(args) => standalone::print_status(&args),
        Command::Validate(args) => return finish(validate::run(args)),
        Command::Shim(_) => Ok(()),
    };
    finish(result.map(|()| ExitCode::SUCCESS))
}

/// The program's one line on failure.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|err| {
        eprintln!("vmlet-handler: {}", one_line(&err));
        ExitCode::FAILURE
    })
}

/// An error and its causes on one line, leaving out a cause whose text the error before it already holds (some
/// libraries' messages repeat their sources).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// The CRDs of vmlet's group: VirtualMachine, then the instance types and preferences.
fn crd_yaml() -> anyhow::Result<String> {
    let crds = vmlet_api::crds();
    let documents = crds.iter().map(serde_yaml::to_string).collect::<Result<Vec<_>, _>>()?;
    Ok(documents.join("---\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_not_repeated() {
        let err = anyhow::anyhow!("no such file")
            .context("cannot read x: no such file")
            .context("cannot start");
        assert_eq!(super::one_line(&err), "cannot start: cannot read x: no such file");
    }

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
