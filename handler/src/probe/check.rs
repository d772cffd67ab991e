//! One check of a probe, carried out for real: a TCP connection or an HTTP GET to the guest's address from the
//! handler's side of the pod network, or a ping or program through the launcher's guest agent.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use vmlet_api::ProbeCheck;
use vmlet_control::{Client, Command, GuestExec};

use super::Outcome;

/// The launcher answers at once; only the guest's program takes time.
const CONTROL_MARGIN: Duration = Duration::from_secs(2);

/// Carries out `check` against the guest whose pod has the address `guest` and whose launcher's control socket is
/// `control`, within `timeout`.
pub async fn run(check: &ProbeCheck, guest: IpAddr, control: &Path, timeout: Duration) -> Outcome {
    let bounded = tokio::time::timeout(timeout + margin(check), attempt(check, guest, control, timeout));
    match bounded.await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(why)) => Outcome::Failure(why),
        Err(_) => Outcome::Failure(format!("no answer within {}s", timeout.as_secs())),
    }
}

/// The agent's checks are bounded by the launcher too, which needs a moment beyond the guest's timeout to answer.
fn margin(check: &ProbeCheck) -> Duration {
    match check {
        ProbeCheck::Exec { .. } | ProbeCheck::GuestAgentPing => CONTROL_MARGIN,
        ProbeCheck::TcpSocket { .. } | ProbeCheck::HttpGet { .. } => Duration::ZERO,
    }
}

async fn attempt(check: &ProbeCheck, guest: IpAddr, control: &Path, timeout: Duration) -> Result<(), String> {
    match check {
        ProbeCheck::TcpSocket { host, port } => connect(host.as_deref(), guest, *port).await.map(drop),
        ProbeCheck::HttpGet { host, port, path } => {
            let stream = connect(host.as_deref(), guest, *port).await?;
            let authority = match host {
                Some(host) => format!("{host}:{port}"),
                None => std::net::SocketAddr::new(guest, *port).to_string(),
            };
            get(stream, &authority, path).await
        }
        ProbeCheck::Exec { command } => {
            let mut client = Client::connect(control, timeout + CONTROL_MARGIN)
                .await
                .map_err(|e| e.to_string())?;
            let exec = GuestExec {
                argv: command.clone(),
                timeout_secs: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
            };
            let ran = client.guest_exec(exec).await.map_err(|e| e.to_string())?;
            if ran.exit_code == 0 {
                return Ok(());
            }
            let said = [ran.stderr.trim(), ran.stdout.trim()]
                .into_iter()
                .find(|s| !s.is_empty())
                .map(|s| format!(": {}", s.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            Err(format!("{command:?} exited with {}{said}", ran.exit_code))
        }
        ProbeCheck::GuestAgentPing => {
            let mut client = Client::connect(control, timeout + CONTROL_MARGIN)
                .await
                .map_err(|e| e.to_string())?;
            client
                .send(Command::GuestPing)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

async fn connect(host: Option<&str>, guest: IpAddr, port: u16) -> Result<TcpStream, String> {
    let connected = match host {
        Some(host) => TcpStream::connect((host, port)).await,
        None => TcpStream::connect((guest, port)).await,
    };
    connected.map_err(|e| format!("cannot connect to port {port}: {e}"))
}

/// An HTTP/1.1 GET of `path`; a status from 200 to 399 passes, as the kubelet's.
async fn get(stream: TcpStream, authority: &str, path: &str) -> Result<(), String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "vmlet-probe")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"));
    connection.abort();
    let status = response?.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("HTTP GET {path} answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A server on loopback that answers every request with `status` and says what it was asked.
    async fn http_server(status: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, served)
    }

    fn no_control() -> &'static Path {
        Path::new("/nonexistent/control.sock")
    }

    #[tokio::test]
    async fn tcp_passes_while_the_port_listens() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = ProbeCheck::TcpSocket { host: None, port };
        assert_eq!(
            run(&check, LOOPBACK, no_control(), Duration::from_secs(1)).await,
            Outcome::Success
        );
        drop(listener);
        let Outcome::Failure(why) = run(&check, LOOPBACK, no_control(), Duration::from_secs(1)).await else {
            panic!("a closed port passed");
        };
        assert!(why.starts_with(&format!("cannot connect to port {port}")), "{why}");
    }

    #[tokio::test]
    async fn http_passes_on_a_success_or_redirect_and_fails_otherwise() {
        let (port, served) = http_server("302 Found").await;
        let check = ProbeCheck::HttpGet {
            host: None,
            port,
            path: "/healthz".into(),
        };
        assert_eq!(
            run(&check, LOOPBACK, no_control(), Duration::from_secs(1)).await,
            Outcome::Success
        );
        let request = served.await.unwrap();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("host: 127.0.0.1:{port}\r\n")), "{request}");

        let (port, _served) = http_server("503 Service Unavailable").await;
        let check = ProbeCheck::HttpGet {
            host: None,
            port,
            path: "/".into(),
        };
        assert_eq!(
            run(&check, LOOPBACK, no_control(), Duration::from_secs(1)).await,
            Outcome::Failure("HTTP GET / answered 503 Service Unavailable".into())
        );
    }

    /// A launcher whose guest agent runs `true` (exit 0) and anything else with exit 2, saying so on stderr.
    struct Launcher;

    impl vmlet_control::Handler for Launcher {
        async fn status(&self) -> vmlet_control::Status {
            vmlet_control::Status::default()
        }

        async fn act(&self, _: Command) -> Result<vmlet_control::Status, vmlet_control::Error> {
            Ok(vmlet_control::Status::default())
        }

        async fn guest_exec(&self, exec: GuestExec) -> Result<vmlet_control::GuestExecResult, vmlet_control::Error> {
            let ok = exec.argv == ["true"];
            Ok(vmlet_control::GuestExecResult {
                exit_code: if ok { 0 } else { 2 },
                stdout: String::new(),
                stderr: if ok { String::new() } else { "no such file\nmore".into() },
            })
        }
    }

    #[tokio::test]
    async fn exec_and_ping_go_through_the_launchers_control_socket() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.sock");
        let listener = tokio::net::UnixListener::bind(&control).unwrap();
        tokio::spawn(vmlet_control::serve(listener, std::sync::Arc::new(Launcher)));
        let exec = |argv: &[&str]| ProbeCheck::Exec {
            command: argv.iter().map(|a| a.to_string()).collect(),
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            run(&exec(&["true"]), LOOPBACK, &control, second).await,
            Outcome::Success
        );
        assert_eq!(
            run(&exec(&["cat", "/tmp/healthy"]), LOOPBACK, &control, second).await,
            Outcome::Failure("[\"cat\", \"/tmp/healthy\"] exited with 2: no such file".into())
        );
        assert_eq!(
            run(&ProbeCheck::GuestAgentPing, LOOPBACK, &control, second).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn a_guest_agent_check_without_a_launcher_fails() {
        let check = ProbeCheck::GuestAgentPing;
        let Outcome::Failure(why) = run(&check, LOOPBACK, no_control(), Duration::from_secs(1)).await else {
            panic!("a ping without a launcher passed");
        };
        assert_eq!(why, "cannot reach the launcher");
    }
}
