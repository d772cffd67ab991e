//! The launcher's side: accept connections and answer each request line.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::{
    Command, Error, ErrorKind, GuestExec, GuestExecResult, MAX_LINE, PROTOCOL_VERSION, Request, Response, ResponseBody,
    Status,
};

/// What the launcher does for each command.
pub trait Handler: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Status> + Send;

    /// Carries out shutdown, kill, pause, resume or a guest ping, and returns the state that follows.
    fn act(&self, command: Command) -> impl Future<Output = Result<Status, Error>> + Send;

    /// Runs a program in the guest. A launcher without a guest agent refuses.
    fn guest_exec(&self, exec: GuestExec) -> impl Future<Output = Result<GuestExecResult, Error>> + Send {
        let _ = exec;
        std::future::ready(Err(Error {
            kind: ErrorKind::InvalidState,
            message: "this launcher has no guest agent".into(),
        }))
    }
}

/// Serves connections until the listener fails; each connection may send many requests.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            if let Err(err) = connection(stream, handler.as_ref()).await {
                tracing::debug!(%err, "control connection ended");
            }
        });
    }
}

async fn connection<H: Handler>(stream: UnixStream, handler: &H) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_LINE;
        let response = if too_long {
            error(
                0,
                ErrorKind::BadRequest,
                format!("request longer than {MAX_LINE} bytes"),
            )
        } else {
            answer(&line, handler).await
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

async fn answer<H: Handler>(line: &[u8], handler: &H) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(request) => request,
        Err(err) => {
            // Echo the id of a request with an unknown command, so the client can match the answer.
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            return error(id, ErrorKind::BadRequest, err.to_string());
        }
    };
    if request.version != PROTOCOL_VERSION {
        let message = format!(
            "version {} is not spoken here; this launcher speaks {PROTOCOL_VERSION}",
            request.version
        );
        return error(request.id, ErrorKind::UnsupportedVersion, message);
    }
    tracing::debug!(command = ?request.command, id = request.id, "control request");
    let body = match request.command {
        Command::Status => ResponseBody::Status(handler.status().await),
        Command::GuestExec(exec) => match handler.guest_exec(exec).await {
            Ok(result) => ResponseBody::GuestExec(result),
            Err(err) => ResponseBody::Error(err),
        },
        command => match handler.act(command).await {
            Ok(status) => ResponseBody::Status(status),
            Err(err) => ResponseBody::Error(err),
        },
    };
    Response {
        version: PROTOCOL_VERSION,
        id: request.id,
        body,
    }
}

fn error(id: u64, kind: ErrorKind, message: String) -> Response {
    Response {
        version: PROTOCOL_VERSION,
        id,
        body: ResponseBody::Error(Error { kind, message }),
    }
}
