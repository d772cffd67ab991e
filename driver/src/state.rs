//! A domain's state from libvirt's numbers, and a thread that watches it.
//!
//! virt 0.4 has no safe binding for libvirt's domain events, so the state is polled: every 200 ms, a few
//! microseconds of work in the embedded driver. A QEMU that dies is seen within one period.

use std::thread;
use std::time::Duration;

use virt::sys;
use vmlet_domain::{DomainState, PausedReason, ShutOffReason};

const POLL_PERIOD: Duration = Duration::from_millis(200);

/// From `virDomainGetState`'s state and reason.
pub fn from_libvirt(state: sys::virDomainState, reason: i32) -> DomainState {
    let reason = u32::try_from(reason).unwrap_or(u32::MAX);
    match state {
        // "Blocked on a resource" is a running guest waiting for I/O.
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused(match reason {
            sys::VIR_DOMAIN_PAUSED_USER => PausedReason::User,
            sys::VIR_DOMAIN_PAUSED_IOERROR => PausedReason::IoError,
            _ => PausedReason::Other,
        }),
        sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff(match reason {
            sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => ShutOffReason::Shutdown,
            sys::VIR_DOMAIN_SHUTOFF_DESTROYED => ShutOffReason::Destroyed,
            sys::VIR_DOMAIN_SHUTOFF_CRASHED => ShutOffReason::Crashed,
            sys::VIR_DOMAIN_SHUTOFF_FAILED => ShutOffReason::Failed,
            _ => ShutOffReason::Other,
        }),
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => DomainState::PmSuspended,
        _ => DomainState::NoState,
    }
}

/// Starts a thread that polls `domain`'s state, starting from `initial`, and calls `on_change` with every new one,
/// until `on_change` returns false.
pub fn watch(
    name: &str,
    domain: virt::domain::Domain,
    initial: DomainState,
    on_change: impl FnMut(DomainState) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let name = name.to_owned();
    thread::Builder::new()
        .name("domain-state".to_owned())
        .spawn(move || poll(&name, &domain, initial, on_change))
        .map(drop)
}

fn poll(
    name: &str,
    domain: &virt::domain::Domain,
    mut previous: DomainState,
    mut on_change: impl FnMut(DomainState) -> bool,
) {
    let mut failing = false;
    loop {
        thread::sleep(POLL_PERIOD);
        match domain.get_state() {
            Ok((state, reason)) => {
                failing = false;
                let state = from_libvirt(state, reason);
                if state != previous {
                    tracing::info!(domain = name, from = ?previous, to = ?state, "domain state changed");
                    previous = state;
                    if !on_change(state) {
                        return;
                    }
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(domain = name, error = %err, "cannot read the domain state");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_states_and_reasons_map() {
        let cases = [
            (sys::VIR_DOMAIN_NOSTATE, 0, DomainState::NoState),
            (sys::VIR_DOMAIN_RUNNING, 1, DomainState::Running),
            (sys::VIR_DOMAIN_BLOCKED, 0, DomainState::Running),
            (sys::VIR_DOMAIN_PAUSED, 1, DomainState::Paused(PausedReason::User)),
            (sys::VIR_DOMAIN_PAUSED, 5, DomainState::Paused(PausedReason::IoError)),
            (sys::VIR_DOMAIN_PAUSED, 2, DomainState::Paused(PausedReason::Other)),
            (sys::VIR_DOMAIN_SHUTDOWN, 1, DomainState::ShuttingDown),
            (
                sys::VIR_DOMAIN_SHUTOFF,
                1,
                DomainState::ShutOff(ShutOffReason::Shutdown),
            ),
            (
                sys::VIR_DOMAIN_SHUTOFF,
                2,
                DomainState::ShutOff(ShutOffReason::Destroyed),
            ),
            (sys::VIR_DOMAIN_SHUTOFF, 3, DomainState::ShutOff(ShutOffReason::Crashed)),
            (sys::VIR_DOMAIN_SHUTOFF, 6, DomainState::ShutOff(ShutOffReason::Failed)),
            (sys::VIR_DOMAIN_SHUTOFF, 0, DomainState::ShutOff(ShutOffReason::Other)),
            (sys::VIR_DOMAIN_SHUTOFF, -1, DomainState::ShutOff(ShutOffReason::Other)),
            (sys::VIR_DOMAIN_CRASHED, 1, DomainState::Crashed),
            (sys::VIR_DOMAIN_PMSUSPENDED, 0, DomainState::PmSuspended),
            (99, 0, DomainState::NoState),
        ];
        for (state, reason, expected) in cases {
            assert_eq!(from_libvirt(state, reason), expected, "state {state} reason {reason}");
        }
    }
}
