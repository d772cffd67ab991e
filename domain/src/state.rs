//! A domain's state, as libvirt reports it and `vmlet-driver` passes it on.

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
}
