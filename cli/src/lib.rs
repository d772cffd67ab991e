//! `vmlet`: the verbs people use on their VMs (start, stop, console, vnc, ssh, ...), one set for both of vmlet's
//! modes: a Kubernetes cluster (the current kubeconfig context) or a standalone machine (`--manifests DIR`).
//! See docs/cli.md.

pub mod args;
pub mod cluster;
pub mod control;
pub mod error;
pub mod manifest_edit;
pub mod rbac;
pub mod run_strategy;
pub mod standalone;
pub mod streams;
pub mod table;
pub mod verbs;

use tokio::io::{AsyncRead, AsyncWrite};

pub use error::{Error, Result};

/// What of a VM a connection reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The serial console.
    Console,
    /// The screen, as QEMU's VNC server.
    Vnc,
    /// The launcher's control socket (docs/control-protocol.md).
    Control,
    /// A TCP port of the guest.
    Port(u16),
}

impl Endpoint {
    /// The command that joins an exec's stdin and stdout to this endpoint inside the launcher Pod: one of its
    /// sockets, or a TCP port of the guest, which the launcher reaches under `bridge` as under `masquerade`.
    pub fn launcher_command(self) -> Vec<String> {
        let socket = match self {
            Endpoint::Console => "console",
            Endpoint::Vnc => "vnc",
            Endpoint::Control => "control",
            Endpoint::Port(port) => {
                return ["vmlet-launcher", "connect", "guest", "--port", &port.to_string()]
                    .map(String::from)
                    .to_vec();
            }
        };
        ["vmlet-launcher", "connect", socket].map(String::from).to_vec()
    }

    /// The launcher's socket for this endpoint in `run_dir`.
    pub fn socket_path(self, run_dir: &vmlet_control::RunDir) -> Option<std::path::PathBuf> {
        match self {
            Endpoint::Console => Some(run_dir.console_socket()),
            Endpoint::Vnc => Some(run_dir.vnc_socket()),
            Endpoint::Control => Some(run_dir.control_socket()),
            Endpoint::Port(_) => None,
        }
    }
}

/// A byte stream to a VM, whichever way it goes (a unix socket, a TCP connection or an exec).
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}
pub type Stream = Box<dyn Duplex>;

/// Where the VMs are.
pub enum Target {
    Standalone(standalone::Machine),
    Cluster(cluster::Cluster),
}
