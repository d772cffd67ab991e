//! The handler's side: one connection, requests answered in order, every wait bounded.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::{
    Command, Error, GuestExec, GuestExecResult, MAX_LINE, PROTOCOL_VERSION, Request, Response, ResponseBody, Status,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the launcher")]
    Connect(#[source] std::io::Error),
    #[error("the launcher did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the launcher failed")]
    Io(#[from] std::io::Error),
    #[error("the launcher closed the connection")]
    Closed,
    #[error("the launcher's answer does not parse")]
    BadResponse(#[source] serde_json::Error),
    #[error("the launcher answered request {got} instead of {expected}")]
    WrongId { expected: u64, got: u64 },
    #[error("the launcher refused: {0}")]
    Refused(Error),
    #[error("the launcher answered with something other than what was asked")]
    UnexpectedAnswer,
}

pub struct Client {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(ClientError::Connect)?;
        let (read, write) = stream.into_split();
        Ok(Client {
            read: BufReader::new(read),
            write,
            next_id: 1,
            timeout,
        })
    }

    pub async fn status(&mut self) -> Result<Status, ClientError> {
        self.send(Command::Status).await
    }

    /// Sends one command and waits, at most the client's timeout, for its answer.
    pub async fn send(&mut self, command: Command) -> Result<Status, ClientError> {
        match self.request(command).await? {
            ResponseBody::Status(status) => Ok(status),
            _ => Err(ClientError::UnexpectedAnswer),
        }
    }

    /// Runs a program in the guest; the client's timeout bounds the whole request, so it should exceed the
    /// program's own.
    pub async fn guest_exec(&mut self, exec: GuestExec) -> Result<GuestExecResult, ClientError> {
        match self.request(Command::GuestExec(exec)).await? {
            ResponseBody::GuestExec(result) => Ok(result),
            _ => Err(ClientError::UnexpectedAnswer),
        }
    }

    async fn request(&mut self, command: Command) -> Result<ResponseBody, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let timeout = self.timeout;
        tokio::time::timeout(
            timeout,
            self.exchange(Request {
                version: PROTOCOL_VERSION,
                id,
                command,
            }),
        )
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn exchange(&mut self, request: Request) -> Result<ResponseBody, ClientError> {
        let mut line = serde_json::to_vec(&request).map_err(ClientError::BadResponse)?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        let mut answer = Vec::new();
        let n = (&mut self.read)
            .take(MAX_LINE as u64 * 4)
            .read_until(b'\n', &mut answer)
            .await?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let response: Response = serde_json::from_slice(&answer).map_err(ClientError::BadResponse)?;
        if response.id != request.id {
            return Err(ClientError::WrongId {
                expected: request.id,
                got: response.id,
            });
        }
        match response.body {
            ResponseBody::Error(err) => Err(ClientError::Refused(err)),
            body => Ok(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::net::UnixListener;

    use super::*;
    use crate::{ErrorKind, Handler, Phase, serve};

    /// A VM that only knows whether it is paused.
    #[derive(Default)]
    struct FakeVm {
        phase: Mutex<Phase>,
    }

    impl FakeVm {
        fn snapshot(&self) -> Status {
            Status {
                phase: *self.phase.lock().unwrap(),
                launcher_pid: 42,
                ..Default::default()
            }
        }
    }

    impl Handler for FakeVm {
        async fn status(&self) -> Status {
            self.snapshot()
        }

        async fn act(&self, command: Command) -> Result<Status, Error> {
            let mut phase = self.phase.lock().unwrap();
            *phase = match (command, *phase) {
                (Command::Pause, Phase::Running) => Phase::Paused,
                (Command::Resume, Phase::Paused) => Phase::Running,
                (Command::Kill, _) => Phase::Stopped,
                (command, phase) => {
                    return Err(Error {
                        kind: ErrorKind::InvalidState,
                        message: format!("cannot {command:?} a VM that is {phase:?}"),
                    });
                }
            };
            drop(phase);
            Ok(self.snapshot())
        }

        /// `true` exits 0, anything else 1; the arguments are echoed.
        async fn guest_exec(&self, exec: GuestExec) -> Result<GuestExecResult, Error> {
            Ok(GuestExecResult {
                exit_code: i32::from(exec.argv.first().map(String::as_str) != Some("true")),
                stdout: exec.argv[1..].join(" "),
                stderr: String::new(),
            })
        }
    }

    async fn start() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let vm = Arc::new(FakeVm {
            phase: Mutex::new(Phase::Running),
        });
        tokio::spawn(serve(listener, vm));
        (dir, path)
    }

    #[tokio::test]
    async fn commands_are_answered_in_order_on_one_connection() {
        let (_dir, path) = start().await;
        let mut client = Client::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(client.status().await.unwrap().phase, Phase::Running);
        assert_eq!(client.send(Command::Pause).await.unwrap().phase, Phase::Paused);
        match client.send(Command::Pause).await {
            Err(ClientError::Refused(Error {
                kind: ErrorKind::InvalidState,
                ..
            })) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(client.send(Command::Resume).await.unwrap().phase, Phase::Running);
        assert_eq!(client.send(Command::Kill).await.unwrap().phase, Phase::Stopped);
    }

    #[tokio::test]
    async fn a_guest_exec_is_answered_with_how_the_program_ended() {
        let (_dir, path) = start().await;
        let mut client = Client::connect(&path, Duration::from_secs(5)).await.unwrap();
        let exec = |argv: &[&str]| GuestExec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout_secs: 1,
        };
        let ran = client.guest_exec(exec(&["true", "a", "b"])).await.unwrap();
        assert_eq!((ran.exit_code, ran.stdout.as_str()), (0, "a b"));
        assert_eq!(client.guest_exec(exec(&["false"])).await.unwrap().exit_code, 1);
        // The same connection still answers the other commands.
        assert_eq!(client.status().await.unwrap().phase, Phase::Running);
    }

    #[tokio::test]
    async fn a_launcher_without_a_guest_agent_refuses_guest_exec() {
        struct NoAgent;
        impl Handler for NoAgent {
            async fn status(&self) -> Status {
                Status::default()
            }
            async fn act(&self, _: Command) -> Result<Status, Error> {
                Ok(Status::default())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        tokio::spawn(serve(UnixListener::bind(&path).unwrap(), Arc::new(NoAgent)));
        let mut client = Client::connect(&path, Duration::from_secs(5)).await.unwrap();
        let refused = client
            .guest_exec(GuestExec {
                argv: vec!["true".into()],
                timeout_secs: 1,
            })
            .await;
        assert!(
            matches!(&refused, Err(ClientError::Refused(e)) if e.kind == ErrorKind::InvalidState),
            "{refused:?}"
        );
    }

    async fn raw(path: &Path, line: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(line).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn other_versions_and_garbage_get_errors_not_silence() {
        let (_dir, path) = start().await;
        let out = raw(&path, b"{\"version\":2,\"id\":9,\"command\":\"status\"}\n").await;
        assert!(
            out.starts_with(r#"{"version":1,"id":9,"error":{"kind":"unsupported_version""#),
            "{out}"
        );
        let out = raw(&path, b"{\"version\":1,\"id\":3,\"command\":\"reboot\"}\n").await;
        assert!(
            out.starts_with(r#"{"version":1,"id":3,"error":{"kind":"bad_request""#),
            "{out}"
        );
        let out = raw(&path, b"not json\n").await;
        assert!(
            out.starts_with(r#"{"version":1,"id":0,"error":{"kind":"bad_request""#),
            "{out}"
        );
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused_and_the_connection_closed() {
        let (_dir, path) = start().await;
        let mut line = vec![b'x'; MAX_LINE + 10];
        line.push(b'\n');
        let out = raw(&path, &line).await;
        assert_eq!(out.lines().count(), 1);
        assert!(out.contains("longer than"), "{out}");
    }
}
