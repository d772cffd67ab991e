//! `vmlet-launcher`: the entrypoint of a VM pod.

use std::process::ExitCode;

use clap::builder::FalseyValueParser;
use clap::{Parser, Subcommand};

use vmlet_launcher::{connect, dhcp_serve, driver, guest_exec, run};

#[derive(Parser)]
#[command(
    name = "vmlet-launcher",
    version,
    about = "Runs a VM in this pod, with the pod's network identity"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = vmlet_log::JSON_ENV, value_parser = FalseyValueParser::new())]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// `vmlet-launcher dhcp-serve` on its own, as [`Cli`] parses it: see [`parse`].
#[derive(Parser)]
#[command(name = "vmlet-launcher dhcp-serve", bin_name = "vmlet-launcher dhcp-serve")]
struct DhcpServeCli {
    /// Log as JSON lines instead of text.
    #[arg(long, env = vmlet_log::JSON_ENV, value_parser = FalseyValueParser::new())]
    log_json: bool,
    #[command(flatten)]
    args: dhcp_serve::Args,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pod's VM: rewire the pod network for the guest, serve it DHCP, start it, supervise it.
    Run(run::Args),
    /// Run only the DHCP server for one client on one interface.
    DhcpServe(dhcp_serve::Args),
    /// Join stdin and stdout to the VM's console, screen (VNC) or control socket: how `vmlet` reaches a VM through
    /// `kubectl exec`.
    Connect(connect::Args),
    /// Run a program in the guest through its QEMU guest agent; exits with the program's status.
    GuestExec(guest_exec::ExecArgs),
    /// Ask the guest's QEMU guest agent whether it answers; exits 0 if it does.
    GuestPing(guest_exec::PingArgs),
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
    let (log_json, command) = parse();
    if log_json && !vmlet_log::json_from_env() {
        // SAFETY: no other thread exists yet (PID 1's split, above, runs this program anew), so nothing reads the
        // environment while it changes. vmlet-driver, a child, inherits it and logs JSON lines too.
        unsafe { std::env::set_var(vmlet_log::JSON_ENV, "1") };
    }
    vmlet_log::init(log_json);
    let result = match command {
        Command::Run(args) => run::run(args),
        Command::DhcpServe(args) => dhcp_serve::run(args).map(|()| ExitCode::SUCCESS),
        Command::Connect(args) => connect::run(args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::GuestExec(args) => guest_exec::exec(args).map_err(anyhow::Error::from),
        Command::GuestPing(args) => guest_exec::ping(args).map_err(anyhow::Error::from),
    };
    result.unwrap_or_else(|err| {
        eprintln!("vmlet-launcher: {err:#}");
        ExitCode::from(vmlet_control::LauncherExit::Failed.code())
    })
}

/// The command line: whether to log JSON, and what to do. A command line that starts with `dhcp-serve` is parsed by
/// [`DhcpServeCli`] alone, which builds the options of `dhcp-serve` and of no other subcommand: the standalone DHCP
/// server then runs less code and allocates less (docs/benchmarks.md, its memory). Any other, including
/// `--log-json dhcp-serve ...`, is parsed whole.
fn parse() -> (bool, Command) {
    if std::env::args_os().nth(1).is_some_and(|first| first == "dhcp-serve") {
        let cli = DhcpServeCli::parse_from(std::env::args_os().skip(1));
        return (cli.log_json, Command::DhcpServe(cli.args));
    }
    let cli = Cli::parse();
    (cli.log_json, cli.command)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_lines_are_well_formed() {
        Cli::command().debug_assert();
        DhcpServeCli::command().debug_assert();
    }

    /// `dhcp-serve` takes the same options whichever way its command line is parsed.
    #[test]
    fn dhcp_serve_alone_has_the_options_of_the_whole() {
        let whole = Cli::command();
        let subcommand = whole.find_subcommand("dhcp-serve").unwrap();
        let names = |command: &clap::Command| {
            let mut names: Vec<String> = command
                .get_arguments()
                .map(|arg| format!("{:?} {:?}", arg.get_long(), arg.get_env()))
                .collect();
            names.sort();
            names
        };
        let mut alone = DhcpServeCli::command();
        // The whole command line's global options are its subcommands' too.
        let mut expected = names(subcommand);
        expected.extend(
            whole
                .get_arguments()
                .filter(|arg| arg.is_global_set())
                .map(|arg| format!("{:?} {:?}", arg.get_long(), arg.get_env())),
        );
        expected.sort();
        assert_eq!(names(&alone), expected);
        assert!(alone.render_usage().to_string().contains("vmlet-launcher dhcp-serve"));
    }
}
