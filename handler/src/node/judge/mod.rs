//! The node role's decisions, apart from any I/O: what a launcher's state is, given what its socket and its pod
//! say; whether a VM's status needs writing; which run directories are left from pods that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use vmlet_api::{ReportedState, VirtualMachine, VirtualMachineStatus};
use vmlet_control::Status;

use crate::cluster::CONTAINER;
use crate::vm_status::{LauncherState, Loss, NodeStatus};

/// A launcher pod, by namespace and name; also the name of its run directory on the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn of(pod: &Pod) -> Option<PodKey> {
        Some(PodKey {
            namespace: pod.namespace()?,
            name: pod.metadata.name.clone()?,
        })
    }

    /// The pod a run directory belongs to, from the directory's name, `<namespace>_<pod>` (neither name can hold
    /// a `_`); `None` for any other name.
    pub fn from_dir_name(name: &str) -> Option<PodKey> {
        let (namespace, pod) = name.split_once('_')?;
        let dns = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (dns(namespace) && dns(pod)).then(|| PodKey {
            namespace: namespace.to_owned(),
            name: pod.to_owned(),
        })
    }
}

/// The VM a launcher pod runs, by its controller reference: its name and uid.
pub fn owner_vm(pod: &Pod) -> Option<(String, String)> {
    pod.owner_references()
        .iter()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == VirtualMachine::kind(&())
                && o.api_version == VirtualMachine::api_version(&())
        })
        .map(|o| (o.name.clone(), o.uid.clone()))
}

/// What one poll of the launcher's control socket got (not a readiness or liveness probe: those are `crate::probe`).
#[derive(Clone, Debug, PartialEq)]
pub enum ControlPoll {
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
    probe: ControlPoll,
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
        (ControlPoll::Answered(status), PodState::Alive) => (
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
        (ControlPoll::NoSocket, PodState::Alive) if !tracking.answered => (LauncherState::Starting, tracking),
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
    let launcher = containers.iter().find(|c| c.name == CONTAINER).or(containers.first());
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

/// What to do with the node's fields as derived, given the VM's status as read.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Apply them.
    Write(NodeStatus),
    /// The status holds them already, or holds a word that stands over them.
    Unchanged,
    /// The status follows another launcher pod: this one's word would cover that one's. Read the VM again next
    /// time, as it may be the controller that has not named this pod yet.
    OtherPod,
}

/// Decides whether `derived` should be written over `current`, the VM's status as read.
pub fn status_update(current: Option<&VirtualMachineStatus>, derived: NodeStatus) -> Update {
    let Some(current) = current else {
        return Update::Write(derived);
    };
    if derived.is_reflected_in(current) {
        return Update::Unchanged;
    }
    if current
        .launcher_pod
        .as_deref()
        .is_some_and(|pod| pod != derived.launcher.pod)
    {
        return Update::OtherPod;
    }
    // The first word on how a launcher ended stands: once its exit code is reported nothing follows, and after its
    // loss only an exit code is news.
    let earlier = current.launcher.as_ref().filter(|r| r.pod == derived.launcher.pod);
    match (earlier.map(|r| r.state), derived.launcher.state) {
        (Some(ReportedState::Exited), _) => Update::Unchanged,
        (Some(ReportedState::Lost), state) if state != ReportedState::Exited => Update::Unchanged,
        _ => Update::Write(derived),
    }
}

/// Of the run directories on the node (by the pod each is named after), those to remove: the pods neither watched
/// nor waiting for their last report, found so in every sweep for `grace`. `suspects` remembers since when each
/// has been; the caller still checks that no launcher answers there and that the API has no such pod.
pub fn orphans(
    dirs: impl IntoIterator<Item = PodKey>,
    known: &BTreeSet<PodKey>,
    suspects: &mut BTreeMap<PodKey, Timestamp>,
    now: Timestamp,
    grace: Duration,
) -> Vec<PodKey> {
    let unknown: BTreeSet<PodKey> = dirs.into_iter().filter(|key| !known.contains(key)).collect();
    suspects.retain(|key, _| unknown.contains(key));
    unknown
        .into_iter()
        .filter(|key| {
            let since = *suspects.entry(key.clone()).or_insert(now);
            Duration::try_from(now.duration_since(since)).unwrap_or_default() >= grace
        })
        .collect()
}

#[cfg(test)]
mod tests;
