//! Running the `nft` and `tc` tools, which take a whole ruleset on their standard input and apply it at once.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Either tool loads a few rules in milliseconds; anything near this means it hangs.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The tool could not apply its input.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToolError {
    #[error("cannot run {0}")]
    Spawn(&'static str, #[source] io::Error),
    #[error("{program} refused the rules ({status}): {stderr}")]
    Refused {
        program: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{0} did not finish within {TIMEOUT:?}")]
    TimedOut(&'static str),
}

/// Runs `program args` in the current network namespace with `input` on its standard input.
pub(crate) async fn feed(program: &'static str, args: &[&str], input: &str) -> Result<(), ToolError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| ToolError::Spawn(program, err))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).await?;
        }
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| ToolError::TimedOut(program))?
        .map_err(|err| ToolError::Spawn(program, err))?;
    if !output.status.success() {
        return Err(ToolError::Refused {
            program,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_owned(),
        });
    }
    Ok(())
}

/// Loads an nftables ruleset (`nft -f -`): the whole input is one transaction.
pub(crate) async fn nft(ruleset: &str) -> Result<(), ToolError> {
    feed("nft", &["-f", "-"], ruleset).await
}

/// Runs a batch of tc commands (`tc -batch -`), stopping at the first that fails.
pub(crate) async fn tc(batch: &str) -> Result<(), ToolError> {
    feed("tc", &["-batch", "-"], batch).await
}
