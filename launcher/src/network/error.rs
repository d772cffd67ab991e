//! Why a binding cannot hand the pod network to the guest: the spec or the pod cannot be served ([`PlanError`],
//! found before anything is touched), or the pod could not be changed ([`ApplyError`]).

use std::io;
use std::path::PathBuf;

use vmlet_netfilter::ToolError;

use super::pod_interface::DiscoveryError;
use super::resolv_conf::ResolvConfError;
use super::tap_device::TapError;

/// The spec or the pod asks for what the binding cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("interface name {0:?} leaves no room for the names derived from it (at most 11 bytes)")]
    InterfaceName(String),
    #[error("the guest subnet {0:?} is not valid: {1}")]
    GuestSubnet(String, &'static str),
    #[error("the interface names no single binding")]
    NoBinding,
    #[error("{0:?} is not a MAC address")]
    InvalidMac(String),
    #[error("cannot forward the port: {0}")]
    Port(String),
    #[error("the pod has no {0} address to masquerade behind")]
    NoPodAddress(&'static str),
    #[error("the network state file keeps no MAC address for the guest")]
    NoGuestMac,
}

/// The pod network could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot discover the pod interface")]
    Discovery(#[from] DiscoveryError),
    #[error("cannot read the pod's DNS settings")]
    Dns(#[from] ResolvConfError),
    #[error("cannot access the network state file {path}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the network state file {path} is not valid")]
    StateFileInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{pod_port:?} exists but {state_file} does not: the pod network was rewired and its record is lost")]
    RecordLost { pod_port: String, state_file: PathBuf },
    #[error("the recorded pod interface {name:?} (index {index}) no longer exists")]
    PodInterfaceGone { name: String, index: u32 },
    #[error("{name:?} exists and is not a {expected}")]
    UnexpectedLink { name: String, expected: &'static str },
    #[error("cannot {action}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot draw a MAC address")]
    RandomMac(#[source] io::Error),
    #[error("cannot create the tap")]
    Tap(#[from] TapError),
    #[error("cannot install the nftables rules")]
    Nft(#[source] ToolError),
    #[error("cannot install the tc redirects")]
    Tc(#[source] ToolError),
    #[error("cannot enable IPv6 forwarding in the pod ({path}); allow the sysctl net.ipv6.conf.all.forwarding")]
    Forwarding {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}
