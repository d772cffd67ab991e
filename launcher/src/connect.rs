//! `vmlet-launcher connect console|vnc|control`: joins stdin and stdout to one of the run directory's sockets;
//! `connect guest --port PORT`, to a TCP port of the guest. It is how `vmlet` reaches a VM on Kubernetes with
//! nothing but `pods/exec` on its launcher Pod (docs/cli.md): the exec's streams become the socket's, byte for byte,
//! for as long as either side keeps them open.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::network::binding::GUEST_FROM_POD;

/// How long the guest may take to accept a connection.
const GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// Which socket: the serial console, the screen (VNC), the launcher's control socket, or a TCP port of the
    /// guest (`--port`), reached from the pod under `bridge` and `masquerade`.
    socket: Socket,
    /// The guest's TCP port, for `guest`.
    #[arg(long, required_if_eq("socket", "guest"))]
    port: Option<u16>,
    /// The pod's run directory, where the sockets are.
    #[arg(long, default_value = vmlet_control::run_dir::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Socket {
    Console,
    Vnc,
    Control,
    Guest,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {0}: is the VM running?")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("cannot connect to the guest's port {0}: is it listening, and is the VM's binding bridge or masquerade?")]
    Guest(u16, #[source] std::io::Error),
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
}

pub fn run(args: Args) -> Result<(), ConnectError> {
    let run_dir = vmlet_control::RunDir::new(args.run_dir);
    let path = match args.socket {
        Socket::Console => run_dir.console_socket(),
        Socket::Vnc => run_dir.vnc_socket(),
        Socket::Control => run_dir.control_socket(),
        Socket::Guest => {
            let port = args.port.unwrap_or_default();
            let guest = SocketAddr::from((GUEST_FROM_POD, port));
            let stream =
                TcpStream::connect_timeout(&guest, GUEST_CONNECT_TIMEOUT).map_err(|e| ConnectError::Guest(port, e))?;
            return join_stdio(stream.try_clone()?, stream.try_clone()?, move || {
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    };
    let socket = UnixStream::connect(&path).map_err(|e| ConnectError::Connect(path, e))?;
    join_stdio(socket.try_clone()?, socket.try_clone()?, move || {
        let _ = socket.shutdown(Shutdown::Write);
    })
}

/// Copies stdin to `to_socket` on a thread of its own, and `from_socket` to stdout until it ends. The end of stdin
/// only half-closes the connection (`half_close`), so answers still come back.
fn join_stdio(
    mut from_socket: impl Read,
    mut to_socket: impl Write + Send + 'static,
    half_close: impl FnOnce() + Send + 'static,
) -> Result<(), ConnectError> {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_socket);
        half_close();
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from_socket.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
}
