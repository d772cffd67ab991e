//! The command line: one set of verbs for both modes. Shell completions are generated from these same definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::table::Output;

#[derive(Parser, Debug)]
#[command(
    name = "vmlet",
    version,
    about = "Start, stop and reach vmlet's VMs: on the cluster of the current kubeconfig context, or with --manifests \
             on a standalone machine"
)]
pub struct Cli {
    /// Standalone mode: the manifest folder that `vmlet-handler standalone` runs.
    #[arg(long, global = true, env = "VMLET_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Standalone mode: the handler's state folder (by default the running handler's, else its default).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The VM's namespace (default: the kubeconfig context's; `default` in standalone mode).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use instead of the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Start a VM: a Halted VM becomes Always; a Manual VM is asked to start once.
    Start { vm: String },
    /// Stop a VM: Always, RerunOnFailure and Once become Halted; a Manual VM is asked to stop once.
    Stop {
        vm: String,
        /// Seconds the guest gets to shut down (ACPI) before it is destroyed, instead of its own grace period.
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u64>,
        /// Destroy the guest at once, without a shutdown.
        #[arg(long)]
        force: bool,
    },
    /// End the VM's run and start the next: Always and RerunOnFailure by themselves, Manual by a stop and a start.
    Restart { vm: String },
    /// Pause the guest's CPUs.
    Pause { vm: String },
    /// Resume a paused guest.
    Unpause { vm: String },
    /// Attach to the VM's serial console (Ctrl-] leaves; reattaches by itself when the VM restarts).
    Console { vm: String },
    /// Serve the VM's screen on a local port for any VNC viewer; each connection is a fresh one.
    Vnc {
        vm: String,
        /// Only serve the port and print it as JSON (`{"port": N}`); start no viewer.
        #[arg(long)]
        proxy_only: bool,
        /// The local port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// SSH to the VM with the system's OpenSSH client.
    Ssh(SshArgs),
    /// Copy files to or from the VM with the system's scp: name the VM as `[USER@]VM:PATH`.
    Scp(ScpArgs),
    /// Forward local ports to the VM's: `LOCAL:REMOTE`, or `PORT` for the same on both sides.
    PortForward {
        vm: String,
        #[arg(required = true, value_name = "[LOCAL:]REMOTE")]
        ports: Vec<String>,
        /// Join stdin and stdout to the one port instead of listening (for ssh's ProxyCommand).
        #[arg(long)]
        stdio: bool,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// List the VMs, with the columns of `kubectl get vm`.
    #[command(alias = "ls")]
    List {
        #[arg(short, long)]
        output: Option<Output>,
        /// Every namespace's VMs.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one VM.
    Status {
        vm: String,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Print the VM launcher's log.
    Logs {
        vm: String,
        /// Keep printing what it logs next.
        #[arg(short, long)]
        follow: bool,
    },
    /// Check manifests as vmlet does before it runs a VM: every refusal with its field path, exit status 1 on any
    /// (the check of `vmlet-handler validate`, which this runs).
    Validate {
        /// Manifest files (YAML or JSON, several documents each); `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print each valid VM with its defaults applied: `yaml` or `json`.
        #[arg(short = 'o', long, value_name = "FORMAT", value_parser = ["yaml", "json"])]
        output: Option<String>,
        /// The binding given to a VM that names no network, as the cluster's or machine's option: `bridge` or
        /// `masquerade`.
        #[arg(long, value_name = "BINDING", value_parser = ["bridge", "masquerade"])]
        default_network_binding: Option<String>,
    },
    /// Print a shell completion script: `source <(vmlet completion bash)`.
    Completion { shell: Shell },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
}

#[derive(clap::Args, Debug)]
pub struct SshOptions {
    /// The private key to authenticate with.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// An OpenSSH option (`-o Name=value`), passed on; repeatable.
    #[arg(short = 'o', long = "ssh-option", value_name = "OPTION")]
    pub options: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct SshArgs {
    #[command(flatten)]
    pub ssh: SshOptions,
    /// `[USER@]VM`
    pub destination: String,
    /// The command to run instead of a shell.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ScpArgs {
    #[command(flatten)]
    pub ssh: SshOptions,
    /// Copy folders recursively.
    #[arg(short = 'r')]
    pub recursive: bool,
    /// Sources and the target; the VM's side as `[USER@]VM:PATH`.
    #[arg(required = true, num_args = 2..)]
    pub paths: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ssh_takes_its_own_options_and_a_command() {
        let cli = Cli::parse_from([
            "vmlet", "-n", "lab", "ssh", "-i", "key", "-o", "Port=22", "root@web", "uname", "-a",
        ]);
        let Verb::Ssh(args) = cli.verb else { panic!("not ssh") };
        assert_eq!(args.destination, "root@web");
        assert_eq!(args.command, ["uname", "-a"]);
        assert_eq!(args.ssh.options, ["Port=22"]);
        assert_eq!(cli.namespace.as_deref(), Some("lab"));
    }
}
