use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
use vmlet_api::Phase;
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
    let cases: Vec<(&str, ControlPoll, PodState, Tracking, LauncherState, Tracking)> = vec![
        (
            "a pod still starting, no socket yet",
            ControlPoll::NoSocket,
            PodState::Alive,
            fresh(),
            LauncherState::Starting,
            fresh(),
        ),
        (
            "an answer",
            ControlPoll::Answered(running.clone()),
            PodState::Alive,
            silent_since(90),
            LauncherState::Answered(running.clone()),
            answered_before(),
        ),
        (
            "an answer on the socket of a pod that exited (the next pod's launcher)",
            ControlPoll::Answered(running.clone()),
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
            ControlPoll::NoAnswer,
            PodState::Alive,
            answered_before(),
            LauncherState::Unreachable { since: at(100) },
            silent_since(100),
        ),
        (
            "a socket gone after answering is silence, not a start",
            ControlPoll::NoSocket,
            PodState::Alive,
            answered_before(),
            LauncherState::Unreachable { since: at(100) },
            silent_since(100),
        ),
        (
            "silent within the bound",
            ControlPoll::NoAnswer,
            PodState::Alive,
            silent_since(71),
            LauncherState::Unreachable { since: at(71) },
            silent_since(71),
        ),
        (
            "silent for exactly the bound",
            ControlPoll::NoAnswer,
            PodState::Alive,
            silent_since(70),
            LauncherState::Lost(Loss::Unreachable { since: at(70) }),
            silent_since(70),
        ),
        (
            "a socket that never answered is silence too",
            ControlPoll::NoAnswer,
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
            ControlPoll::NoSocket,
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
            ControlPoll::NoSocket,
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
            ControlPoll::NoSocket,
            PodState::Gone,
            answered_before(),
            LauncherState::Lost(Loss::PodGone),
            answered_before(),
        ),
        (
            "a pod gone while its launcher still answers (force-deleted)",
            ControlPoll::Answered(running.clone()),
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

/// A status as the node left it for `pod`, with the controller following `follows`.
fn written(launcher: LauncherState, pod: &str, follows: Option<&str>) -> VirtualMachineStatus {
    let mut vm = VirtualMachineStatus {
        launcher_pod: follows.map(Into::into),
        ..Default::default()
    };
    derived(launcher, pod, None).write_into(&mut vm);
    vm
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Write,
    Unchanged,
    OtherPod,
}

#[test]
fn deciding_what_to_write() {
    use Outcome::*;
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
    // (what, current status, new launcher state, pod, outcome)
    let cases: Vec<(&str, Option<VirtualMachineStatus>, LauncherState, &str, Outcome)> = vec![
        ("a VM not read", None, running(), "pod-1", Write),
        (
            "a VM with no status",
            Some(VirtualMachineStatus::default()),
            running(),
            "pod-1",
            Write,
        ),
        (
            "the controller's status only",
            Some(controller_only),
            running(),
            "pod-1",
            Write,
        ),
        (
            "nothing new",
            Some(written(running(), "pod-1", Some("pod-1"))),
            running(),
            "pod-1",
            Unchanged,
        ),
        (
            "paused",
            Some(written(running(), "pod-1", Some("pod-1"))),
            LauncherState::Answered(status(LauncherPhase::Paused)),
            "pod-1",
            Write,
        ),
        (
            "the guest ended",
            Some(written(running(), "pod-1", Some("pod-1"))),
            powered_off(),
            "pod-1",
            Write,
        ),
        (
            "the launcher is lost while the VM runs",
            Some(written(running(), "pod-1", Some("pod-1"))),
            LauncherState::Lost(Loss::PodGone),
            "pod-1",
            Write,
        ),
        (
            "the exit code after the launcher said how the guest ended",
            Some(written(powered_off(), "pod-1", Some("pod-1"))),
            LauncherState::Exited { code: 0 },
            "pod-1",
            Write,
        ),
        (
            "the exit code after the launcher was lost",
            Some(written(LauncherState::Lost(Loss::PodGone), "pod-1", Some("pod-1"))),
            LauncherState::Exited { code: 4 },
            "pod-1",
            Write,
        ),
        (
            "the pod deleted after its exit code was reported",
            Some(written(LauncherState::Exited { code: 4 }, "pod-1", Some("pod-1"))),
            LauncherState::Lost(Loss::PodGone),
            "pod-1",
            Unchanged,
        ),
        (
            "a second loss after the first",
            Some(written(
                LauncherState::Lost(Loss::Unreachable { since: at(10) }),
                "pod-1",
                Some("pod-1"),
            )),
            LauncherState::Lost(Loss::PodGone),
            "pod-1",
            Unchanged,
        ),
        (
            "the pod's end once the controller stopped following any pod",
            Some(written(running(), "pod-1", None)),
            LauncherState::Exited { code: 0 },
            "pod-1",
            Write,
        ),
        (
            "an old pod's end after the controller moved to the next pod",
            Some(written(running(), "pod-2", Some("pod-2"))),
            LauncherState::Lost(Loss::PodGone),
            "pod-1",
            OtherPod,
        ),
        (
            "a new pod the controller has not named yet",
            Some(written(LauncherState::Exited { code: 4 }, "pod-1", Some("pod-1"))),
            LauncherState::Starting,
            "pod-2",
            OtherPod,
        ),
        (
            "the next pod once the controller names it",
            Some(written(LauncherState::Exited { code: 4 }, "pod-1", Some("pod-2"))),
            LauncherState::Starting,
            "pod-2",
            Write,
        ),
        (
            "an unreachable launcher",
            Some(written(running(), "pod-1", Some("pod-1"))),
            LauncherState::Unreachable { since: at(90) },
            "pod-1",
            Write,
        ),
    ];
    for (what, current, launcher, pod, outcome) in cases {
        let new = derived(launcher, pod, current.as_ref());
        let expected = match outcome {
            Write => Update::Write(new.clone()),
            Unchanged => Update::Unchanged,
            OtherPod => Update::OtherPod,
        };
        assert_eq!(status_update(current.as_ref(), new), expected, "{what}");
    }
}

#[test]
fn run_directories_are_named_after_their_pods() {
    let key = PodKey::from_dir_name("default_vmlet-launcher-web-x7k2p").unwrap();
    assert_eq!(
        (key.namespace.as_str(), key.name.as_str()),
        ("default", "vmlet-launcher-web-x7k2p")
    );
    assert_eq!(
        crate::cluster::run_dir_name(&key.namespace, &key.name),
        "default_vmlet-launcher-web-x7k2p"
    );
    for other in ["lost+found", "_x", "x_", "a_b_c", "Default_x", ".tmp", ""] {
        assert_eq!(PodKey::from_dir_name(other), None, "{other}");
    }
}

#[test]
fn a_launcher_pod_names_its_vm_by_its_controller_reference() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let reference = |kind: &str, controller| OwnerReference {
        api_version: "vmlet.dev/v1alpha1".into(),
        kind: kind.into(),
        name: "web".into(),
        uid: "uid-1".into(),
        controller: Some(controller),
        ..Default::default()
    };
    let with = |references| {
        let mut pod = Pod::default();
        pod.metadata.owner_references = Some(references);
        pod
    };
    assert_eq!(
        owner_vm(&with(vec![
            reference("ReplicaSet", true),
            reference("VirtualMachine", true)
        ])),
        Some(("web".into(), "uid-1".into()))
    );
    assert_eq!(owner_vm(&with(vec![reference("VirtualMachine", false)])), None);
    assert_eq!(owner_vm(&Pod::default()), None);
}

fn key(name: &str) -> PodKey {
    PodKey {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn a_run_directory_is_an_orphan_only_after_the_grace_period_without_its_pod() {
    let grace = Duration::from_secs(300);
    let mut suspects = BTreeMap::new();
    let known: BTreeSet<PodKey> = [key("live")].into();
    let dirs = || vec![key("live"), key("gone"), key("late")];

    assert!(orphans(dirs(), &known, &mut suspects, at(0), grace).is_empty());
    assert_eq!(suspects.keys().cloned().collect::<Vec<_>>(), [key("gone"), key("late")]);
    assert!(orphans(dirs(), &known, &mut suspects, at(299), grace).is_empty());

    // `late`'s pod showed up meanwhile: no longer a suspect; `gone` has been one long enough.
    let known: BTreeSet<PodKey> = [key("live"), key("late")].into();
    assert_eq!(orphans(dirs(), &known, &mut suspects, at(300), grace), [key("gone")]);
    // `late` goes again: its clock starts over.
    let known: BTreeSet<PodKey> = [key("live")].into();
    assert_eq!(orphans(dirs(), &known, &mut suspects, at(400), grace), [key("gone")]);
    assert_eq!(suspects[&key("late")], at(400));
    // A directory that is gone is forgotten.
    orphans(vec![key("live")], &known, &mut suspects, at(500), grace);
    assert!(suspects.is_empty());
}
