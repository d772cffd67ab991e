//! A domain's state, as libvirt reports it and `vmlet-driver` passes it on.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    /// Defined, or between two states.
    NoState,
    Running,
    Paused(PausedReason),
    /// The guest is shutting down after a request.
    ShuttingDown,
    ShutOff(ShutOffReason),
    /// The guest crashed and QEMU was kept (never with vmlet's `on_crash=destroy`).
    Crashed,
    /// The guest suspended itself (ACPI S3).
    PmSuspended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PausedReason {
    /// Someone asked: a `pause` request.
    User,
    /// A disk failed, typically out of space on the host; the guest resumes once it is fixed.
    IoError,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutOffReason {
    /// The guest powered off.
    Shutdown,
    /// A `destroy` request.
    Destroyed,
    /// The guest crashed, or QEMU died.
    Crashed,
    /// QEMU could not start.
    Failed,
    Other,
}

impl DomainState {
    /// Whether QEMU has exited: the guest will not run again unless started anew.
    pub fn is_stopped(self) -> bool {
        matches!(self, DomainState::ShutOff(_) | DomainState::Crashed)
    }
}

/// For people, as `virsh domstate --reason` puts it: `running`, `paused (user)`, `shut off (destroyed)`.
impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainState::NoState => f.write_str("no state"),
            DomainState::Running => f.write_str("running"),
            DomainState::Paused(reason) => write!(f, "paused ({})", reason.word()),
            DomainState::ShuttingDown => f.write_str("in shutdown"),
            DomainState::ShutOff(reason) => write!(f, "shut off ({})", reason.word()),
            DomainState::Crashed => f.write_str("crashed"),
            DomainState::PmSuspended => f.write_str("pmsuspended"),
        }
    }
}

impl PausedReason {
    fn word(self) -> &'static str {
        match self {
            PausedReason::User => "user",
            PausedReason::IoError => "I/O error",
            PausedReason::Other => "unknown",
        }
    }
}

impl ShutOffReason {
    fn word(self) -> &'static str {
        match self {
            ShutOffReason::Shutdown => "shutdown",
            ShutOffReason::Destroyed => "destroyed",
            ShutOffReason::Crashed => "crashed",
            ShutOffReason::Failed => "failed",
            ShutOffReason::Other => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shut_off_and_crashed_are_stopped() {
        assert!(DomainState::ShutOff(ShutOffReason::Destroyed).is_stopped());
        assert!(DomainState::Crashed.is_stopped());
        for state in [
            DomainState::NoState,
            DomainState::Running,
            DomainState::Paused(PausedReason::User),
            DomainState::ShuttingDown,
            DomainState::PmSuspended,
        ] {
            assert!(!state.is_stopped(), "{state:?}");
        }
    }

    #[test]
    fn states_read_as_libvirt_words_them() {
        let shown = [
            DomainState::Running,
            DomainState::Paused(PausedReason::User),
            DomainState::Paused(PausedReason::IoError),
            DomainState::ShutOff(ShutOffReason::Destroyed),
            DomainState::ShuttingDown,
        ]
        .map(|state| state.to_string());
        assert_eq!(
            shown,
            [
                "running",
                "paused (user)",
                "paused (I/O error)",
                "shut off (destroyed)",
                "in shutdown"
            ]
        );
    }
}
