//! One request to a launcher's control socket over any stream: the socket itself in standalone mode, an exec of
//! `vmlet-launcher connect control` on Kubernetes. The protocol is docs/control-protocol.md.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vmlet_control::{Command, PROTOCOL_VERSION, Request, Response, ResponseBody, Status};

use crate::{Error, Result, Stream};

/// The launcher answers in milliseconds; an exec through the API server adds a round trip or two.
const ANSWER: Duration = Duration::from_secs(30);

pub async fn send(stream: Stream, command: Command) -> Result<Status> {
    tokio::time::timeout(ANSWER, exchange(stream, command))
        .await
        .map_err(|_| Error::Timeout {
            what: "the launcher's answer".into(),
            secs: ANSWER.as_secs(),
        })?
}

async fn exchange(stream: Stream, command: Command) -> Result<Status> {
    let (read, mut write) = tokio::io::split(stream);
    let request = Request {
        version: PROTOCOL_VERSION,
        id: 1,
        command,
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| Error::Launcher(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(Error::Launcher("it closed the connection without an answer".into()));
    }
    let response: Response =
        serde_json::from_str(&answer).map_err(|e| Error::Launcher(format!("its answer does not parse: {e}")))?;
    match response.body {
        ResponseBody::Status(status) => Ok(status),
        ResponseBody::Error(error) => Err(Error::Launcher(error.message)),
        ResponseBody::GuestExec(_) => Err(Error::Launcher(
            "it answered with a program's end, not the VM's state".into(),
        )),
    }
}
