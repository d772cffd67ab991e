//! `vmlet-launcher connect console|vnc|control`: joins stdin and stdout to one of the run directory's sockets. It is
//! how `vmlet` reaches a VM on Kubernetes with nothing but `pods/exec` on its launcher Pod (docs/cli.md): the exec's
//! streams become the socket's, byte for byte, for as long as either side keeps them open.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Which socket: the serial console, the screen (VNC) or the launcher's control socket.
    socket: Socket,
    /// The pod's run directory, where the sockets are.
    #[arg(long, default_value = vmlet_control::run_dir::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Socket {
    Console,
    Vnc,
    Control,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {0}: is the VM running?")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
}

pub fn run(args: Args) -> Result<(), ConnectError> {
    let run_dir = vmlet_control::RunDir::new(args.run_dir);
    let path = match args.socket {
        Socket::Console => run_dir.console_socket(),
        Socket::Vnc => run_dir.vnc_socket(),
        Socket::Control => run_dir.control_socket(),
    };
    let socket = UnixStream::connect(&path).map_err(|e| ConnectError::Connect(path, e))?;
    let mut from_socket = socket.try_clone()?;
    let to_socket = socket.try_clone()?;
    // stdin to the socket on a thread of its own; its end only half-closes the socket, so answers still come back.
    std::thread::spawn(move || {
        let mut to_socket = to_socket;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_socket);
        let _ = to_socket.shutdown(Shutdown::Write);
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
