//! `vmlet-launcher guest-exec -- PROGRAM ARG...` and `vmlet-launcher guest-ping`: a program run in the guest, or a
//! ping of its agent, through the running launcher's control socket. They are the launcher Pod's exec probes for a
//! VM's `exec` and `guestAgentPing` probes: the exit status is the program's (0 for an answered ping), and 1 with
//! one line on stderr when the guest agent cannot be asked.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vmlet_control::{Client, ClientError, Command, GuestExec};

/// The launcher answers at once; only the guest's program takes time, and it has its own timeout.
const CONTROL_MARGIN: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct ExecArgs {
    /// How long the program may run.
    #[arg(long, default_value_t = 1)]
    timeout_secs: u32,
    /// The pod's run directory, where the control socket is.
    #[arg(long, default_value = "/var/run/vmlet")]
    run_dir: PathBuf,
    /// The program and its arguments, run without a shell.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
pub struct PingArgs {
    /// How long the agent may take to answer.
    #[arg(long, default_value_t = 1)]
    timeout_secs: u32,
    #[arg(long, default_value = "/var/run/vmlet")]
    run_dir: PathBuf,
}

pub fn exec(args: ExecArgs) -> Result<ExitCode, ClientError> {
    let exec = GuestExec {
        argv: args.command,
        timeout_secs: args.timeout_secs,
    };
    let timeout = Duration::from_secs(args.timeout_secs.into()) + CONTROL_MARGIN;
    let result = ask(&args.run_dir, timeout, |mut client| async move {
        client.guest_exec(exec).await
    })?;
    // The probe's output is for people reading the Pod's events; a closed stdout must not change the verdict.
    let _ = std::io::stdout().write_all(result.stdout.as_bytes());
    let _ = std::io::stderr().write_all(result.stderr.as_bytes());
    Ok(ExitCode::from(u8::try_from(result.exit_code).unwrap_or(1)))
}

pub fn ping(args: PingArgs) -> Result<ExitCode, ClientError> {
    let timeout = Duration::from_secs(args.timeout_secs.into()) + CONTROL_MARGIN;
    ask(&args.run_dir, timeout, |mut client| async move {
        client.send(Command::GuestPing).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn ask<T, F: Future<Output = Result<T, ClientError>>>(
    run_dir: &Path,
    timeout: Duration,
    request: impl FnOnce(Client) -> F,
) -> Result<T, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Io)?;
    runtime.block_on(async {
        let client = Client::connect(&vmlet_control::RunDir::new(run_dir).control_socket(), timeout).await?;
        request(client).await
    })
}
