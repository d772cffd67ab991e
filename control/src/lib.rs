//! The launcher's control socket, through which the node handler asks a VM pod how its VM is and tells it what to
//! do. The protocol is described in `docs/control-protocol.md`: JSON lines over a Unix stream socket, one response
//! per request, each carrying the protocol version.

mod client;
pub mod pod_volumes;
mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};
pub use pod_volumes::PodVolumes;
pub use server::{Handler, serve};

/// The protocol version this crate speaks. A peer speaking another one is answered with an
/// [`ErrorKind::UnsupportedVersion`] error, never guessed at.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line accepted; a longer one is answered with an error and the connection closed.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub version: u32,
    /// Chosen by the client and echoed in the response.
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Report the VM's state.
    Status,
    /// Press the guest's ACPI power button; the launcher destroys the guest once the grace period runs out.
    Shutdown,
    /// Destroy the guest at once.
    Kill,
    Pause,
    Resume,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Response {
    pub version: u32,
    pub id: u64,
    #[serde(flatten)]
    pub body: ResponseBody,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseBody {
    /// The VM's state after the command took effect.
    Status(Status),
    Error(Error),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request's version is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The line was not a request.
    BadRequest,
    /// The command does not apply in the VM's current state (pausing a stopped VM).
    InvalidState,
    /// The command applied but failed.
    Failed,
}

/// How a VM pod's VM is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub phase: Phase,
    /// libvirt's domain state and reason, for people (`running (booted)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_state: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpStatus>,
    /// The DHCPv6 server's, where the launcher serves the guest IPv6; its counters as DHCPv4's, `refused` for
    /// `naks`, with `dropped_frames` (frames neither DHCPv6 nor a solicitation could read) and `send_errors`. Boxed,
    /// as the next: an IPv4 guest has neither, and they would double a status's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcpv6: Option<Box<DhcpStatus>>,
    /// The router advertisements sent beside DHCPv6, counted as `solicited`, `unsolicited` and `ignored`
    /// (solicitations left unanswered); never a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_advertisements: Option<Box<DhcpStatus>>,
    /// The guest's QEMU as the kernel counts it; absent until QEMU runs, or where the launcher cannot read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<ProcessUsage>,
    pub launcher_pid: u32,
    /// When the launcher started, in seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_secs: u64,
    /// Why the VM stopped, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// What the guest's QEMU guest agent last said; absent while no agent has answered. Boxed: most statuses
    /// have none, and it would double their size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<Box<GuestAgentStatus>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Setting up the network and the VM driver.
    #[default]
    Starting,
    Running,
    Paused,
    /// The guest was asked to shut down and has not yet.
    ShuttingDown,
    /// The guest is gone; [`Status::exit`] says how.
    Stopped,
    /// The launcher could not start the VM.
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    pub binding: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DhcpStatus {
    /// `offered`, `bound`, `released` or `declined`; absent before the guest asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Packets by what became of them: `answered`, `ignored`, `malformed`, ...
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// A process's use of the machine since it started.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

/// What the guest's QEMU guest agent says of the guest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestAgentStatus {
    /// `guest-get-osinfo`; absent when the agent refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<GuestOsInfo>,
    /// `guest-get-host-name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// `guest-network-get-interfaces`, loopback left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<GuestInterface>,
    /// When the agent last answered, in seconds since the Unix epoch.
    pub answered_at: u64,
    /// Replies the launcher could not read and dropped, since it started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub malformed_replies: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The guest's operating system, in the agent's words (`/etc/os-release` and `uname` on Linux).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestOsInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// One of the guest's network interfaces, as the guest sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestInterface {
    /// Its name inside the guest (`enp1s0`).
    pub name: String,
    /// Lower case, colon separated; absent for interfaces without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Each address with its prefix length (`10.244.1.7/24`, `fe80::42:aff:fef4:107/64`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
}

/// How the guest ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// The guest powered off by itself.
    PoweredOff,
    /// The guest shut down after an ACPI request.
    ShutDown,
    /// The guest was destroyed: asked to (kill) or after the grace period ran out.
    Destroyed,
    /// QEMU died or the guest crashed.
    Crashed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let request: Request = serde_json::from_str(r#"{"version":1,"id":7,"command":"pause"}"#).unwrap();
        assert_eq!(
            request,
            Request {
                version: 1,
                id: 7,
                command: Command::Pause
            }
        );
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"version":1,"id":7,"command":"pause"}"#
        );
    }

    #[test]
    fn responses_read_as_documented() {
        let response = Response {
            version: 1,
            id: 7,
            body: ResponseBody::Error(Error {
                kind: ErrorKind::InvalidState,
                message: "the VM is stopped".into(),
            }),
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"version":1,"id":7,"error":{"kind":"invalid_state","message":"the VM is stopped"}}"#
        );
        let status = Status {
            phase: Phase::Running,
            launcher_pid: 1,
            started_at: 100,
            uptime_secs: 5,
            ..Default::default()
        };
        let json = serde_json::to_string(&Response {
            version: 1,
            id: 8,
            body: ResponseBody::Status(status),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"id":8,"status":{"phase":"running","launcher_pid":1,"started_at":100,"uptime_secs":5}}"#
        );
    }

    /// Every JSON example in docs/control-protocol.md is a request or a response, and reads back as written.
    #[test]
    fn the_documented_examples_round_trip() {
        let doc = include_str!("../../docs/control-protocol.md");
        let examples: Vec<&str> = doc
            .split("```json\n")
            .skip(1)
            .map(|block| block.split("```").next().unwrap())
            .collect();
        assert_eq!(examples.len(), 3, "a request, a status and an error");
        for example in examples {
            let written: serde_json::Value = serde_json::from_str(example).unwrap();
            let read_back = if written.get("command").is_some() {
                serde_json::to_value(serde_json::from_value::<Request>(written.clone()).unwrap())
            } else {
                serde_json::to_value(serde_json::from_value::<Response>(written.clone()).unwrap())
            };
            assert_eq!(read_back.unwrap(), written, "{example}");
        }
    }

    #[test]
    fn a_status_without_a_guest_agent_reads_as_before() {
        let status: Status =
            serde_json::from_str(r#"{"phase":"running","launcher_pid":1,"started_at":100,"uptime_secs":5}"#).unwrap();
        assert_eq!(status.guest_agent, None);
        let agent: GuestAgentStatus = serde_json::from_str(r#"{"answered_at":100}"#).unwrap();
        assert_eq!(
            (agent.os, agent.interfaces.len(), agent.malformed_replies),
            (None, 0, 0)
        );
    }
}
