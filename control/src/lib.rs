//! The launcher's control socket, through which the node handler asks a VM pod how its VM is and tells it what to
//! do. The protocol is described in `docs/control-protocol.md`: JSON lines over a Unix stream socket, one response
//! per request, each carrying the protocol version.

//!
//! It is the one home of what the launcher and the handler must agree on: the messages and their words, how a guest
//! ended and the launcher's exit code that says so, and the layout of a VM pod's run directory and volumes.

mod client;
pub mod pod_volumes;
pub mod run_dir;
mod server;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};
pub use pod_volumes::PodVolumes;
pub use run_dir::RunDir;
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

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
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
    /// Ask the guest's QEMU guest agent whether it answers; the VM's state if it does.
    GuestPing,
    /// Run a program in the guest through its QEMU guest agent and wait for it to end; answered with
    /// [`ResponseBody::GuestExec`].
    GuestExec(GuestExec),
}

/// A program for the guest agent to run, without a shell.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GuestExec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// How long the program may run; the request fails with [`ErrorKind::Failed`] after that.
    pub timeout_secs: u32,
}

/// How a program run by the guest agent ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestExecResult {
    pub exit_code: i32,
    /// The start of what it wrote, as text (lossily decoded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
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
    /// How the program of a `guest_exec` request ended.
    GuestExec(GuestExecResult),
    Error(Error),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
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
    /// Absent before the guest asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseState>,
    /// Packets by what became of them: `answered`, `ignored`, `malformed`, ...
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// Where the guest's DHCP lease stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Offered,
    Bound,
    Released,
    Declined,
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

/// How a launcher's process ended, by its exit code (`docs/launcher.md`, "Exit codes"): what a Pod's container
/// status, or standalone mode's shim, tells the handler once the launcher is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LauncherExit {
    /// 0: the guest powered off by itself, or shut down when asked.
    Clean,
    /// 1: the guest never ran: the spec was refused, or the launcher could not set up the network or the VM.
    Failed,
    /// 2: the command line was wrong.
    Usage,
    /// 3: the guest was destroyed.
    Destroyed,
    /// 4: the guest crashed, or QEMU died.
    Crashed,
}

impl LauncherExit {
    pub const fn code(self) -> u8 {
        match self {
            LauncherExit::Clean => 0,
            LauncherExit::Failed => 1,
            LauncherExit::Usage => 2,
            LauncherExit::Destroyed => 3,
            LauncherExit::Crashed => 4,
        }
    }

    /// The ending an exit code says; `None` for a code the launcher never exits with.
    pub fn from_code(code: i32) -> Option<LauncherExit> {
        [
            LauncherExit::Clean,
            LauncherExit::Failed,
            LauncherExit::Usage,
            LauncherExit::Destroyed,
            LauncherExit::Crashed,
        ]
        .into_iter()
        .find(|exit| i32::from(exit.code()) == code)
    }
}

impl From<Exit> for LauncherExit {
    fn from(exit: Exit) -> LauncherExit {
        match exit {
            Exit::PoweredOff | Exit::ShutDown => LauncherExit::Clean,
            Exit::Destroyed => LauncherExit::Destroyed,
            Exit::Crashed => LauncherExit::Crashed,
        }
    }
}

/// Writes a unit variant as the protocol's word for it: serde's, so that each word is spelt once.
fn write_word(value: &impl Serialize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => f.write_str(&word),
        _ => Err(fmt::Error),
    }
}

macro_rules! display_as_word {
    ($($word:ty),*) => {$(
        impl fmt::Display for $word {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_word(self, f)
            }
        }
    )*};
}

display_as_word!(Phase, Exit, ErrorKind, LeaseState);

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
        assert_eq!(
            examples.len(),
            5,
            "a request, a status, an error, a guest_exec request and its answer"
        );
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

    /// Every variant of each enum the wire carries as a word. The matches break the build when a variant is added,
    /// so that it is added here, and so checked against the doc.
    fn every_command() -> [Command; 7] {
        let all = [
            Command::Status,
            Command::Shutdown,
            Command::Kill,
            Command::Pause,
            Command::Resume,
            Command::GuestPing,
            Command::GuestExec(GuestExec {
                argv: vec!["true".into()],
                timeout_secs: 1,
            }),
        ];
        all.map(|c| match c {
            Command::Status
            | Command::Shutdown
            | Command::Kill
            | Command::Pause
            | Command::Resume
            | Command::GuestPing
            | Command::GuestExec(_) => c,
        })
    }

    fn every_phase() -> [Phase; 6] {
        use Phase::*;
        [Starting, Running, Paused, ShuttingDown, Stopped, Failed].map(|p| match p {
            Starting | Running | Paused | ShuttingDown | Stopped | Failed => p,
        })
    }

    fn every_exit() -> [Exit; 4] {
        use Exit::*;
        [PoweredOff, ShutDown, Destroyed, Crashed].map(|e| match e {
            PoweredOff | ShutDown | Destroyed | Crashed => e,
        })
    }

    fn every_error_kind() -> [ErrorKind; 4] {
        use ErrorKind::*;
        [UnsupportedVersion, BadRequest, InvalidState, Failed].map(|k| match k {
            UnsupportedVersion | BadRequest | InvalidState | Failed => k,
        })
    }

    fn every_lease_state() -> [LeaseState; 4] {
        use LeaseState::*;
        [Offered, Bound, Released, Declined].map(|l| match l {
            Offered | Bound | Released | Declined => l,
        })
    }

    fn every_launcher_exit() -> [LauncherExit; 5] {
        use LauncherExit::*;
        [Clean, Failed, Usage, Destroyed, Crashed].map(|e| match e {
            Clean | Failed | Usage | Destroyed | Crashed => e,
        })
    }

    fn read_doc(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The words docs/control-protocol.md lists after `lead`: each one in backquotes up to the end of the sentence
    /// or of the table cell, leaving out those in parentheses (which explain, and may name other fields).
    fn documented_words(lead: &str) -> Vec<String> {
        let doc = read_doc("control-protocol.md");
        let start = doc.find(lead).unwrap_or_else(|| panic!("the doc has no {lead:?}")) + lead.len();
        let mut chars = doc[start..].chars().peekable();
        let (mut words, mut depth, mut word) = (Vec::new(), 0, None::<String>);
        while let Some(c) = chars.next() {
            match (c, word.as_mut()) {
                ('`', Some(_)) => {
                    let done = word.take().unwrap_or_default();
                    if depth == 0 {
                        words.push(done);
                    }
                }
                ('`', None) => word = Some(String::new()),
                (c, Some(w)) => w.push(c),
                ('(', None) => depth += 1,
                (')', None) => depth -= 1,
                ('|', None) if depth == 0 => break,
                ('.', None) if depth == 0 && chars.peek().is_none_or(|n| n.is_whitespace()) => break,
                _ => {}
            }
        }
        words
    }

    fn words<T: Serialize>(values: &[T]) -> Vec<String> {
        values
            .iter()
            .map(|v| match serde_json::to_value(v).unwrap() {
                serde_json::Value::String(word) => word,
                tagged => tagged["command"].as_str().unwrap().to_owned(),
            })
            .collect()
    }

    /// Each value is shown as its wire word, which reads back as the value.
    fn shown_as_written<T>(values: &[T])
    where
        T: fmt::Display + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        for value in values {
            let word = serde_json::Value::String(value.to_string());
            assert_eq!(&serde_json::from_value::<T>(word).unwrap(), value);
        }
    }

    /// The words the doc promises are the words the wire carries, each read back as what it names, and shown
    /// (in messages and logs) as it is written.
    #[test]
    fn the_wire_carries_the_documented_words() {
        assert_eq!(words(&every_command()), documented_words("| `command` |"));
        assert_eq!(words(&every_phase()), documented_words("`phase` is one of"));
        assert_eq!(
            words(&every_exit()),
            documented_words("`exit` says how the guest ended:")
        );
        assert_eq!(words(&every_error_kind()), documented_words("Error kinds:"));
        assert_eq!(words(&every_lease_state()), documented_words("`lease` is one of"));
        shown_as_written(&every_phase());
        shown_as_written(&every_exit());
        shown_as_written(&every_error_kind());
        shown_as_written(&every_lease_state());
    }

    /// docs/launcher.md's table of exit codes, as (code, what it says of the guest).
    fn documented_exit_codes() -> Vec<(i32, String)> {
        let doc = read_doc("launcher.md");
        let table = doc
            .split("## Exit codes")
            .nth(1)
            .expect("launcher.md has its exit codes");
        table
            .lines()
            .skip_while(|line| !line.starts_with("| 0 |"))
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (cells[1].parse().unwrap(), cells[2].to_owned())
            })
            .collect()
    }

    #[test]
    fn exit_codes_are_the_documented_ones_and_say_how_the_guest_ended() {
        let documented = documented_exit_codes();
        let codes: Vec<i32> = every_launcher_exit().map(|e| e.code().into()).to_vec();
        assert_eq!(documented.iter().map(|(code, _)| *code).collect::<Vec<_>>(), codes);
        for exit in every_launcher_exit() {
            assert_eq!(LauncherExit::from_code(exit.code().into()), Some(exit));
        }
        assert_eq!(LauncherExit::from_code(137), None);
        // Each way a guest ends is told by the code whose row names it ("powered off", "destroyed", ...).
        for exit in every_exit() {
            let code = i32::from(LauncherExit::from(exit).code());
            let row = &documented.iter().find(|(c, _)| *c == code).unwrap().1;
            assert!(
                row.contains(&exit.to_string().replace('_', " ")),
                "{exit} is not told by code {code}: {row}"
            );
        }
    }

    #[test]
    fn an_error_reads_as_its_kind_and_message() {
        let error = Error {
            kind: ErrorKind::InvalidState,
            message: "the VM is stopped".into(),
        };
        assert_eq!(error.to_string(), "invalid_state: the VM is stopped");
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
