//! The node role's decisions, apart from any I/O: what a launcher's state is, given what its socket and its pod
//! say, and whether a VM's status needs writing.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use vmlet_api::{Phase, VirtualMachineStatus};
use vmlet_control::Status;

use crate::vm_status::{LauncherState, Loss, NodeStatus};

/// The launcher pod's container, by the name the controller gives it; a pod without one is judged by its first
/// container.
pub const LAUNCHER_CONTAINER: &str = "launcher";

/// What the control socket gave this time.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Answered(Status),
    /// No socket file: the launcher has not bound it yet, or has ended.
    NoSocket,
    /// The socket is there but nothing answered in time.
    NoAnswer,
}

/// What the launcher's pod says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Waiting to start, or running.
    Alive,
    /// The launcher exited (a restarted container is alive again).
    Exited { code: i32 },
    /// The pod is deleted, or ended without saying how.
    Gone,
}

/// What the node remembers of one launcher between probes; lost when the handler restarts, which costs nothing
/// but a fresh unreachability clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracking {
    /// The launcher has answered at least once, so a missing socket means it is gone, not still starting.
    pub answered: bool,
    /// When the launcher stopped answering.
    pub silent_since: Option<Timestamp>,
    /// The exit code the pod last showed, kept for when the pod is then deleted.
    pub exit_code: Option<i32>,
}

/// Judges a launcher from this probe and its pod. A launcher silent for longer than `lost_after` is lost.
pub fn judge(
    probe: Probe,
    pod: PodState,
    tracking: Tracking,
    now: Timestamp,
    lost_after: Duration,
) -> (LauncherState, Tracking) {
    let exit_code = match pod {
        PodState::Exited { code } => Some(code),
        _ => tracking.exit_code,
    };
    match (probe, pod) {
        (Probe::Answered(status), PodState::Alive) => (
            LauncherState::Answered(status),
            Tracking {
                answered: true,
                silent_since: None,
                exit_code: None,
            },
        ),
        // Whatever answers on the socket now is not this pod's launcher: it may be the VM's next pod's.
        (_, PodState::Exited { code }) => (LauncherState::Exited { code }, Tracking { exit_code, ..tracking }),
        (_, PodState::Gone) => match tracking.exit_code {
            Some(code) => (LauncherState::Exited { code }, tracking),
            None => (LauncherState::Lost(Loss::PodGone), tracking),
        },
        (Probe::NoSocket, PodState::Alive) if !tracking.answered => (LauncherState::Starting, tracking),
        (_, PodState::Alive) => {
            let since = tracking.silent_since.unwrap_or(now);
            let silent = Duration::try_from(now.duration_since(since)).unwrap_or_default();
            let state = if silent >= lost_after {
                LauncherState::Lost(Loss::Unreachable { since })
            } else {
                LauncherState::Unreachable { since }
            };
            (
                state,
                Tracking {
                    silent_since: Some(since),
                    ..tracking
                },
            )
        }
    }
}

/// Reads a launcher pod's state; `deleted` when the watch reported it gone.
pub fn pod_state(pod: &Pod, deleted: bool) -> PodState {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let launcher = containers
        .iter()
        .find(|c| c.name == LAUNCHER_CONTAINER)
        .or(containers.first());
    let terminated = launcher.and_then(|c| c.state.as_ref()?.terminated.as_ref());
    if let Some(terminated) = terminated {
        return PodState::Exited {
            code: terminated.exit_code,
        };
    }
    let ended = matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    if deleted || ended {
        PodState::Gone
    } else {
        PodState::Alive
    }
}

/// Decides whether `derived` should be written over `current`, the VM's status as read. Returns what to write.
pub fn status_update(current: Option<&VirtualMachineStatus>, derived: NodeStatus) -> Option<NodeStatus> {
    let Some(current) = current else {
        return Some(derived);
    };
    if derived.is_reflected_in(current) {
        return None;
    }
    let same_pod = current
        .launcher_pod
        .as_deref()
        .is_none_or(|pod| pod == derived.launcher_pod);
    let current_final = matches!(current.phase, Some(Phase::Succeeded | Phase::Failed));
    if derived.is_final() {
        // An old launcher's ending must not cover the VM's next launcher.
        if !same_pod {
            return None;
        }
        // The first word on how a VM ended stands: a later, vaguer one (the pod's exit code after the launcher
        // said how the guest ended, a deleted pod after either) must not replace it.
        if current_final {
            return None;
        }
    }
    Some(derived)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use vmlet_control::{Exit, Phase as LauncherPhase};

    use super::*;

    const LOST_AFTER: Duration = Duration::from_secs(30);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn status(phase: LauncherPhase) -> Status {
        Status {
            phase,
            launcher_pid: 1,
            ..Default::default()
        }
    }

    fn fresh() -> Tracking {
        Tracking::default()
    }

    fn answered_before() -> Tracking {
        Tracking {
            answered: true,
            ..Default::default()
        }
    }

    fn silent_since(second: i64) -> Tracking {
        Tracking {
            answered: true,
            silent_since: Some(at(second)),
            exit_code: None,
        }
    }

    #[test]
    fn judging_a_launcher() {
        let running = status(LauncherPhase::Running);
        let cases: Vec<(&str, Probe, PodState, Tracking, LauncherState, Tracking)> = vec![
            (
                "a pod still starting, no socket yet",
                Probe::NoSocket,
                PodState::Alive,
                fresh(),
                LauncherState::Starting,
                fresh(),
            ),
            (
                "an answer",
                Probe::Answered(running.clone()),
                PodState::Alive,
                silent_since(90),
                LauncherState::Answered(running.clone()),
                answered_before(),
            ),
            (
                "an answer on the socket of a pod that exited (the next pod's launcher)",
                Probe::Answered(running.clone()),
                PodState::Exited { code: 4 },
                answered_before(),
                LauncherState::Exited { code: 4 },
                Tracking {
                    exit_code: Some(4),
                    ..answered_before()
                },
            ),
            (
                "the first silence starts the clock",
                Probe::NoAnswer,
                PodState::Alive,
                answered_before(),
                LauncherState::Unreachable { since: at(100) },
                silent_since(100),
            ),
            (
                "a socket gone after answering is silence, not a start",
                Probe::NoSocket,
                PodState::Alive,
                answered_before(),
                LauncherState::Unreachable { since: at(100) },
                silent_since(100),
            ),
            (
                "silent within the bound",
                Probe::NoAnswer,
                PodState::Alive,
                silent_since(71),
                LauncherState::Unreachable { since: at(71) },
                silent_since(71),
            ),
            (
                "silent for exactly the bound",
                Probe::NoAnswer,
                PodState::Alive,
                silent_since(70),
                LauncherState::Lost(Loss::Unreachable { since: at(70) }),
                silent_since(70),
            ),
            (
                "a socket that never answered is silence too",
                Probe::NoAnswer,
                PodState::Alive,
                fresh(),
                LauncherState::Unreachable { since: at(100) },
                Tracking {
                    silent_since: Some(at(100)),
                    ..fresh()
                },
            ),
            (
                "the pod shows the exit code",
                Probe::NoSocket,
                PodState::Exited { code: 3 },
                answered_before(),
                LauncherState::Exited { code: 3 },
                Tracking {
                    exit_code: Some(3),
                    ..answered_before()
                },
            ),
            (
                "a deleted pod whose exit was seen",
                Probe::NoSocket,
                PodState::Gone,
                Tracking {
                    exit_code: Some(0),
                    ..answered_before()
                },
                LauncherState::Exited { code: 0 },
                Tracking {
                    exit_code: Some(0),
                    ..answered_before()
                },
            ),
            (
                "a pod gone with no exit seen",
                Probe::NoSocket,
                PodState::Gone,
                answered_before(),
                LauncherState::Lost(Loss::PodGone),
                answered_before(),
            ),
            (
                "a pod gone while its launcher still answers (force-deleted)",
                Probe::Answered(running.clone()),
                PodState::Gone,
                answered_before(),
                LauncherState::Lost(Loss::PodGone),
                answered_before(),
            ),
        ];
        for (what, probe, pod, tracking, state, next) in cases {
            assert_eq!(
                judge(probe, pod, tracking, at(100), LOST_AFTER),
                (state, next),
                "{what}"
            );
        }
    }

    fn pod(phase: &str, containers: Vec<(&str, Option<i32>)>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(
                    containers
                        .into_iter()
                        .map(|(name, code)| ContainerStatus {
                            name: name.into(),
                            state: Some(ContainerState {
                                terminated: code.map(|exit_code| ContainerStateTerminated {
                                    exit_code,
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reading_a_pod() {
        let cases = [
            ("pending, no statuses", Pod::default(), false, PodState::Alive),
            (
                "running",
                pod("Running", vec![("launcher", None)]),
                false,
                PodState::Alive,
            ),
            (
                "launcher exited",
                pod("Failed", vec![("sidecar", None), ("launcher", Some(4))]),
                false,
                PodState::Exited { code: 4 },
            ),
            (
                "only container exited",
                pod("Succeeded", vec![("vm", Some(0))]),
                false,
                PodState::Exited { code: 0 },
            ),
            (
                "deleted after exiting",
                pod("Succeeded", vec![("launcher", Some(0))]),
                true,
                PodState::Exited { code: 0 },
            ),
            (
                "deleted while running",
                pod("Running", vec![("launcher", None)]),
                true,
                PodState::Gone,
            ),
            (
                "failed with no container status (evicted)",
                pod("Failed", vec![]),
                false,
                PodState::Gone,
            ),
        ];
        for (what, pod, deleted, expected) in cases {
            assert_eq!(pod_state(&pod, deleted), expected, "{what}");
        }
    }

    fn derived(launcher: LauncherState, pod: &str, previous: Option<&VirtualMachineStatus>) -> NodeStatus {
        NodeStatus::derive(&launcher, previous, "node-a", pod, at(100))
    }

    fn written(launcher: LauncherState, pod: &str) -> VirtualMachineStatus {
        let mut vm = VirtualMachineStatus::default();
        derived(launcher, pod, None).write_into(&mut vm);
        vm
    }

    #[test]
    fn deciding_what_to_write() {
        let running = || LauncherState::Answered(status(LauncherPhase::Running));
        let powered_off = || {
            LauncherState::Answered(Status {
                exit: Some(Exit::PoweredOff),
                ..status(LauncherPhase::Stopped)
            })
        };
        let controller_only = VirtualMachineStatus {
            phase: Some(Phase::Scheduling),
            launcher_pod: Some("pod-1".into()),
            ..Default::default()
        };
        // (what, current status, new launcher state, pod, written?)
        let cases: Vec<(&str, Option<VirtualMachineStatus>, LauncherState, &str, bool)> = vec![
            ("a VM not read", None, running(), "pod-1", true),
            (
                "a VM with no status",
                Some(VirtualMachineStatus::default()),
                running(),
                "pod-1",
                true,
            ),
            (
                "the controller's status only",
                Some(controller_only),
                running(),
                "pod-1",
                true,
            ),
            (
                "nothing new",
                Some(written(running(), "pod-1")),
                running(),
                "pod-1",
                false,
            ),
            (
                "paused",
                Some(written(running(), "pod-1")),
                LauncherState::Answered(status(LauncherPhase::Paused)),
                "pod-1",
                true,
            ),
            (
                "the guest ended",
                Some(written(running(), "pod-1")),
                powered_off(),
                "pod-1",
                true,
            ),
            (
                "the launcher is lost while the VM runs",
                Some(written(running(), "pod-1")),
                LauncherState::Lost(Loss::PodGone),
                "pod-1",
                true,
            ),
            (
                "the exit code after the launcher said how the guest ended",
                Some(written(powered_off(), "pod-1")),
                LauncherState::Exited { code: 0 },
                "pod-1",
                false,
            ),
            (
                "the pod deleted after the VM ended",
                Some(written(LauncherState::Exited { code: 4 }, "pod-1")),
                LauncherState::Lost(Loss::PodGone),
                "pod-1",
                false,
            ),
            (
                "an old pod's end after the next pod took over",
                Some(written(running(), "pod-2")),
                LauncherState::Lost(Loss::PodGone),
                "pod-1",
                false,
            ),
            (
                "the next pod after the old one ended",
                Some(written(LauncherState::Exited { code: 4 }, "pod-1")),
                LauncherState::Starting,
                "pod-2",
                true,
            ),
            (
                "an unreachable launcher",
                Some(written(running(), "pod-1")),
                LauncherState::Unreachable { since: at(90) },
                "pod-1",
                true,
            ),
        ];
        for (what, current, launcher, pod, write) in cases {
            let new = derived(launcher, pod, current.as_ref());
            let update = status_update(current.as_ref(), new.clone());
            assert_eq!(update, write.then_some(new), "{what}");
        }
    }
}
