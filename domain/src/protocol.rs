//! What `vmlet-launcher` and its `vmlet-driver` child say to each other: JSON, one object a line, [`Request`]s on
//! the driver's stdin and [`Event`]s on its stdout (`docs/driver-protocol.md`).
//!
//! Both programs ship in one image, so there is no version number: a line the driver cannot read is a bug, and the
//! driver exits on it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{DomainSpec, DomainState};

/// The launcher asks; `id` is echoed in the events that answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Opens libvirt's QEMU driver with its files in `run_dir/libvirt` and QEMU's capabilities cached in
    /// `cache_dir`, then defines and starts the domain: answered by [`Event::Ready`], then [`Event::Started`] or
    /// [`Event::Error`]. A driver starts one domain in its life.
    Start {
        domain: Box<DomainSpec>,
        run_dir: PathBuf,
        cache_dir: PathBuf,
    },
    /// Presses the ACPI power button.
    Shutdown,
    /// Kills QEMU; a domain that has already stopped is left as it is.
    Destroy,
    Pause,
    Resume,
}

/// The driver answers, or reports a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// libvirt's QEMU driver answered its first call, which waits for QEMU's capability probe when the cache is cold.
    Ready {
        id: u64,
        qemu_version: String,
        elapsed_ms: u64,
    },
    /// The domain runs; [`Event::State`] follows its changes from now on.
    Started { id: u64, elapsed_ms: u64 },
    /// A shutdown, destroy, pause or resume was done.
    Done { id: u64 },
    /// The request failed.
    Error { id: u64, message: String },
    /// The domain's state changed.
    State { state: DomainState },
}

impl Event {
    /// The request this event answers, if it answers one.
    pub fn request_id(&self) -> Option<u64> {
        match *self {
            Event::Ready { id, .. } | Event::Started { id, .. } | Event::Done { id } | Event::Error { id, .. } => {
                Some(id)
            }
            Event::State { .. } => None,
        }
    }

    /// Whether this is the last event that answers its request.
    pub fn is_final(&self) -> bool {
        !matches!(self, Event::Ready { .. } | Event::State { .. })
    }
}

/// One message as a line: compact JSON, which escapes every newline in a value, and a `\n`.
pub fn to_line(message: &impl Serialize) -> serde_json::Result<String> {
    let mut line = serde_json::to_string(message)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {

    use serde_json::json;
    use uuid::Uuid;
    use vmlet_mac::MacAddr;

    use super::*;
    use crate::{Accel, Boot, ConsolePaths, DiskFormat, DiskMedia, DiskSource, DiskSpec, InterfaceSpec};
    use crate::{PausedReason, ShutOffReason};

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "default_vm1".to_owned(),
            uuid: Uuid::from_u128(0x5f2b_87a4_1d5e_4c3a_9a4e_3c1f_0b7e_2d11),
            vcpus: 2,
            memory_mib: 256,
            machine: "q35".to_owned(),
            accel: Accel::Tcg,
            firmware: crate::Firmware::Bios,
            boot: Boot::Kernel {
                kernel: "/guest/vmlinux".into(),
                initrd: None,
                cmdline: "console=ttyS0\nquiet".to_owned(),
            },
            disks: vec![DiskSpec {
                source: DiskSource::File {
                    path: "/disks/root.qcow2".into(),
                    format: DiskFormat::Qcow2,
                },
                media: DiskMedia::Disk,
                bus: crate::DiskBus::Virtio,
                readonly: false,
                boot_order: None,
                serial: None,
                cache: None,
            }],
            interfaces: vec![InterfaceSpec {
                tap: "tap0".to_owned(),
                mac: MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]),
                mtu: Some(1400),
                model: crate::NicModel::Virtio,
            }],
            console: Some(ConsolePaths {
                socket: "/run/vmlet/console.sock".into(),
                log: "/run/vmlet/console.log".into(),
            }),
            platform: crate::Platform::default(),
            vnc_socket: None,
            guest_agent_socket: Some("/run/vmlet/agent.sock".into()),
        }
    }

    fn round_trip<T>(message: &T) -> serde_json::Value
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let line = to_line(message).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(line.ends_with('\n'));
        assert_eq!(&serde_json::from_str::<T>(&line).unwrap(), message);
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn requests_are_flat_objects() {
        let shutdown = Request {
            id: 7,
            command: Command::Shutdown,
        };
        assert_eq!(round_trip(&shutdown), json!({"id": 7, "command": "shutdown"}));

        let start = Request {
            id: 1,
            command: Command::Start {
                domain: Box::new(spec()),
                run_dir: "/run/vmlet".into(),
                cache_dir: "/var/cache/vmlet/qemu".into(),
            },
        };
        let value = round_trip(&start);
        assert_eq!(value["command"], "start");
        assert_eq!(value["run_dir"], "/run/vmlet");
        assert_eq!(value["domain"]["uuid"], "5f2b87a4-1d5e-4c3a-9a4e-3c1f0b7e2d11");
        assert_eq!(value["domain"]["accel"], "tcg");
        assert_eq!(value["domain"]["boot"]["kernel"]["cmdline"], "console=ttyS0\nquiet");
        assert_eq!(value["domain"]["disks"][0]["source"]["file"]["format"], "qcow2");
    }

    #[test]
    fn events_name_their_request() {
        let cases = [
            (
                Event::Ready {
                    id: 1,
                    qemu_version: "7.2.0".to_owned(),
                    elapsed_ms: 52,
                },
                json!({"event": "ready", "id": 1, "qemu_version": "7.2.0", "elapsed_ms": 52}),
            ),
            (
                Event::Started { id: 1, elapsed_ms: 310 },
                json!({"event": "started", "id": 1, "elapsed_ms": 310}),
            ),
            (Event::Done { id: 2 }, json!({"event": "done", "id": 2})),
            (
                Event::Error {
                    id: 3,
                    message: "cannot pause domain vm1: no".to_owned(),
                },
                json!({"event": "error", "id": 3, "message": "cannot pause domain vm1: no"}),
            ),
            (
                Event::State {
                    state: DomainState::Running,
                },
                json!({"event": "state", "state": "running"}),
            ),
            (
                Event::State {
                    state: DomainState::Paused(PausedReason::IoError),
                },
                json!({"event": "state", "state": {"paused": "io_error"}}),
            ),
            (
                Event::State {
                    state: DomainState::ShutOff(ShutOffReason::Shutdown),
                },
                json!({"event": "state", "state": {"shut_off": "shutdown"}}),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(round_trip(&event), expected);
        }
    }

    #[test]
    fn only_replies_have_a_request_and_ready_is_not_the_last() {
        let ready = Event::Ready {
            id: 1,
            qemu_version: String::new(),
            elapsed_ms: 0,
        };
        assert_eq!((ready.request_id(), ready.is_final()), (Some(1), false));
        let error = Event::Error {
            id: 4,
            message: String::new(),
        };
        assert_eq!((error.request_id(), error.is_final()), (Some(4), true));
        assert_eq!(Event::Done { id: 5 }.request_id(), Some(5));
        let state = Event::State {
            state: DomainState::Crashed,
        };
        assert_eq!((state.request_id(), state.is_final()), (None, false));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for line in [
            "",
            "{}",
            r#"{"id": 1}"#,
            r#"{"id": 1, "command": "reboot"}"#,
            r#"{"id": -1, "command": "pause"}"#,
            r#"{"command": "pause"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(line).is_err(), "{line}");
        }
    }
}
