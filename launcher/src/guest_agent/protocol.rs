//! The QEMU guest agent's wire protocol, without I/O: the requests' bytes, the replies cut out of the channel's byte
//! stream, and what they say turned into the control protocol's types.
//!
//! The agent speaks QMP-style JSON, one object per line. The channel outlives connections and guest agents: it may
//! hold replies meant for an earlier client, or requests written before the agent listened. So every exchange
//! starts with `guest-sync-delimited`: the agent answers it with a 0xFF byte and `{"return": ID}`, and everything
//! before the answer with our ID is someone else's.

use serde::Deserialize;
use serde_json::Value;
use vmlet_control::{GuestInterface, GuestOsInfo};

/// Starts the agent's answer to a sync, and resets its JSON parser when sent to it (0xFF is never valid UTF-8).
pub const DELIMITER: u8 = 0xFF;

/// A reply longer than this is no reply of the agent's: it is dropped, and the stream synced again.
pub const MAX_REPLY: usize = 1024 * 1024;

pub const OS_INFO: &str = "guest-get-osinfo";
pub const INTERFACES: &str = "guest-network-get-interfaces";
pub const HOST_NAME: &str = "guest-get-host-name";
pub const PING: &str = "guest-ping";
pub const EXEC: &str = "guest-exec";
pub const EXEC_STATUS: &str = "guest-exec-status";

/// What is kept of each output stream of a program the agent ran.
pub const MAX_EXEC_OUTPUT: usize = 4096;

/// The bytes of a sync request: the delimiter first, so that the agent drops any half request left in the channel.
pub fn sync_request(id: u64) -> Vec<u8> {
    let mut bytes = vec![DELIMITER];
    bytes.extend(command_request(
        "guest-sync-delimited",
        Some(serde_json::json!({ "id": id })),
    ));
    bytes
}

/// The bytes of a request for `command`.
pub fn command_request(command: &str, arguments: Option<Value>) -> Vec<u8> {
    let mut request = serde_json::json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut bytes = request.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// One reply of the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Return(Value),
    /// The agent refused or failed the command (`CommandNotFound` on an agent too old for it, say).
    Error {
        class: String,
        desc: String,
    },
}

/// A line that is no reply of the agent's.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a guest agent reply")]
pub struct Malformed;

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

pub fn parse_reply(line: &[u8]) -> Result<Reply, Malformed> {
    let value: Value = serde_json::from_slice(line).map_err(|_| Malformed)?;
    let Value::Object(mut object) = value else {
        return Err(Malformed);
    };
    if let Some(value) = object.remove("return") {
        return Ok(Reply::Return(value));
    }
    let error: ErrorBody = serde_json::from_value(object.remove("error").ok_or(Malformed)?).map_err(|_| Malformed)?;
    Ok(Reply::Error {
        class: error.class,
        desc: error.desc,
    })
}

/// The bytes read from the channel, not yet taken as replies.
#[derive(Debug, Default)]
pub struct ReplyStream {
    buf: Vec<u8>,
    /// Lines dropped because they were no reply, and replies too long to be the agent's.
    pub malformed: u64,
}

impl ReplyStream {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_REPLY {
            self.buf.clear();
            self.malformed += 1;
        }
    }

    /// Forgets what was read: a new connection starts afresh.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Skips everything up to and including the answer to the sync `id`: true once it has been read, false while
    /// more bytes are needed. Answers to other syncs, and whatever precedes a delimiter, are stale.
    pub fn take_sync(&mut self, id: u64) -> bool {
        loop {
            let Some(start) = self.buf.iter().position(|&b| b == DELIMITER) else {
                self.buf.clear();
                return false;
            };
            let Some(end) = self.buf[start..].iter().position(|&b| b == b'\n').map(|n| start + n) else {
                self.buf.drain(..start);
                return false;
            };
            // A delimiter inside the line means the line before it was cut short: the last one starts the answer.
            let from = self.buf[..end].iter().rposition(|&b| b == DELIMITER).unwrap_or(start);
            let line: Vec<u8> = self.buf.drain(..=end).skip(from + 1).collect();
            match parse_reply(&line[..line.len() - 1]) {
                Ok(Reply::Return(value)) if value.as_u64() == Some(id) => return true,
                Ok(_) => {}
                Err(Malformed) => self.malformed += 1,
            }
        }
    }

    /// The next whole reply, once the stream is in sync; `None` while more bytes are needed. A malformed line is
    /// counted and returned as such, so that the command it answered gets no answer.
    pub fn take_reply(&mut self) -> Option<Result<Reply, Malformed>> {
        loop {
            let end = self.buf.iter().position(|&b| b == b'\n')?;
            let line: Vec<u8> = self.buf.drain(..=end).filter(|&b| b != DELIMITER).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let reply = parse_reply(line);
            if reply.is_err() {
                self.malformed += 1;
            }
            return Some(reply);
        }
    }
}

/// `guest-get-osinfo`'s answer (qga/qapi-schema.json, `GuestOSInfo`; every member optional).
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct OsInfo {
    name: Option<String>,
    id: Option<String>,
    pretty_name: Option<String>,
    version: Option<String>,
    version_id: Option<String>,
    kernel_release: Option<String>,
    kernel_version: Option<String>,
    machine: Option<String>,
}

pub fn os_info(value: Value) -> Result<GuestOsInfo, Malformed> {
    let info: OsInfo = serde_json::from_value(value).map_err(|_| Malformed)?;
    Ok(GuestOsInfo {
        name: info.name,
        id: info.id,
        pretty_name: info.pretty_name,
        version: info.version,
        version_id: info.version_id,
        kernel_release: info.kernel_release,
        kernel_version: info.kernel_version,
        machine: info.machine,
    })
}

/// `guest-network-get-interfaces`' answer (`GuestNetworkInterface`); statistics are not read.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct NetworkInterface {
    name: String,
    hardware_address: Option<String>,
    #[serde(default)]
    ip_addresses: Vec<IpAddress>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct IpAddress {
    ip_address: String,
    prefix: u8,
}

/// The guest's interfaces, loopback left out: it says nothing about how the guest is reached.
pub fn interfaces(value: Value) -> Result<Vec<GuestInterface>, Malformed> {
    let interfaces: Vec<NetworkInterface> = serde_json::from_value(value).map_err(|_| Malformed)?;
    Ok(interfaces
        .into_iter()
        .map(|interface| GuestInterface {
            name: interface.name,
            mac: interface.hardware_address.map(|mac| mac.to_ascii_lowercase()),
            ip_addresses: interface
                .ip_addresses
                .iter()
                .map(|a| format!("{}/{}", a.ip_address, a.prefix))
                .collect(),
        })
        .filter(|interface| interface.name != "lo" && interface.mac.as_deref() != Some("00:00:00:00:00:00"))
        .collect())
}

/// `guest-get-host-name`'s answer (`GuestHostName`).
pub fn host_name(value: Value) -> Result<String, Malformed> {
    #[derive(Deserialize)]
    struct HostName {
        #[serde(rename = "host-name")]
        host_name: String,
    }
    serde_json::from_value::<HostName>(value)
        .map(|h| h.host_name)
        .map_err(|_| Malformed)
}

/// `guest-exec`'s arguments: the program, its arguments, and its output captured.
pub fn exec_arguments(argv: &[String]) -> Value {
    let (path, args) = argv.split_first().map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    serde_json::json!({ "path": path, "arg": args, "capture-output": true })
}

/// `guest-exec`'s answer (`GuestExec`): the program's process id in the guest.
pub fn exec_pid(value: Value) -> Result<i64, Malformed> {
    #[derive(Deserialize)]
    struct Started {
        pid: i64,
    }
    serde_json::from_value::<Started>(value)
        .map(|s| s.pid)
        .map_err(|_| Malformed)
}

/// `guest-exec-status`'s answer (`GuestExecStatus`): `None` while the program runs, else how it ended. A program
/// killed by a signal reads as exit code 128 + the signal, as a shell says it.
pub fn exec_status(value: Value) -> Result<Option<vmlet_control::GuestExecResult>, Malformed> {
    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct ExecStatus {
        exited: bool,
        exitcode: Option<i32>,
        signal: Option<i32>,
        out_data: Option<String>,
        err_data: Option<String>,
    }
    let status: ExecStatus = serde_json::from_value(value).map_err(|_| Malformed)?;
    if !status.exited {
        return Ok(None);
    }
    let text = |data: Option<String>| -> Result<String, Malformed> {
        let bytes = match data {
            Some(data) => vmlet_api::decode_base64(&data).map_err(|_| Malformed)?,
            None => Vec::new(),
        };
        let kept = &bytes[..bytes.len().min(MAX_EXEC_OUTPUT)];
        Ok(String::from_utf8_lossy(kept).into_owned())
    };
    let exit_code = match (status.exitcode, status.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => return Err(Malformed),
    };
    Ok(Some(vmlet_control::GuestExecResult {
        exit_code,
        stdout: text(status.out_data)?,
        stderr: text(status.err_data)?,
    }))
}
