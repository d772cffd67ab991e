//! `vmlet-bench`: measures vmlet against the program it replaces, both in the same run on the same machine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bare;
mod boot;
mod client;
mod cloud_boot;
mod dhcp;
mod floor;
mod layout;
mod pidns;
mod pod;
mod procfs;
mod pull;
mod scale;
mod stats;
mod table;
mod throughput;
mod timeline;

#[derive(Parser)]
#[command(
    name = "vmlet-bench",
    about = "Measures vmlet against a real peer in the same run (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// DISCOVER→ACK latency and resident memory of `vmlet-launcher dhcp-serve` and dnsmasq, serving the same
    /// host on the same veth pair.
    Dhcp(dhcp::Args),
    /// Time from `vmlet-launcher run`'s start to the guest's DHCP lease, phase by phase, against a bare QEMU +
    /// dnsmasq boot of the same guest; resident memory of every process of the VM pod.
    Boot(boot::Args),
    /// The Debian cloud image as a containerDisk from the launcher's start to SSH answering, phase by phase,
    /// against a bare QEMU + dnsmasq boot of the same disk and seed; resident memory of every process of the VM pod.
    CloudBoot(cloud_boot::Args),
    /// TCP throughput between the test guest and the node end of its pod's veth pair, for the bridge, tap and
    /// masquerade bindings in both directions, against the same transfers over a plain veth pair.
    Throughput(throughput::Args),
    /// The standalone handler's cold pull of the Debian containerDisk from a registry on loopback against `skopeo
    /// copy`; with the image stored, a pull plus the qcow2 overlay against the overlay alone and a full copy.
    Pull(pull::Args),
    /// The handler's controller and one node role with many VMs against an in-process API server: CPU time and
    /// memory at a mass start and at steady state, API requests per VM state change, time to every launcher Pod.
    Scale(scale::Args),
    /// The floor the `dhcp` benchmark measures: a responder with canned replies, run by the benchmark.
    #[command(hide = true)]
    DhcpFloor(floor::Args),
    /// Writes launcher/dhcp-serve.ld, the launcher's code layout, from a run of `vmlet-launcher dhcp-serve` under
    /// Valgrind's callgrind.
    DhcpLayout(layout::Args),
}

/// Fails naming the first of `tools` that is not on the PATH.
fn require_tools(tools: &[&str]) -> anyhow::Result<()> {
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?;
        anyhow::ensure!(found.status.success(), "{tool} not found (run scripts/setup)");
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Dhcp(args) => dhcp::run(&args),
        Command::Boot(args) => boot::run(&args),
        Command::CloudBoot(args) => cloud_boot::run(&args),
        Command::Throughput(args) => throughput::run(&args),
        Command::Pull(args) => pull::run(&args),
        Command::Scale(args) => scale::run(&args),
        Command::DhcpFloor(args) => floor::serve(&args),
        Command::DhcpLayout(args) => layout::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vmlet-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
