//! The part of a VirtualMachine's status that the VM's node owns, derived from what its launcher says.
//!
//! Pure: no Kubernetes I/O, so the node role (which applies it to the API server) and the standalone mode (which
//! writes it into a file) report a VM the same way. The controller owns the rest of the status (restart count,
//! the phases before the launcher pod reaches a node).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use vmlet_api::{Condition, ConditionType, InterfaceStatus, Phase, PrintableStatus, VirtualMachineStatus};
use vmlet_control::{Exit, Phase as LauncherPhase, Status};

/// What is known of a VM's launcher.
#[derive(Clone, Debug, PartialEq)]
pub enum LauncherState {
    /// The launcher has not started, or has not answered yet: its pod is starting, or it is setting the VM up.
    Starting,
    /// The launcher answered on its control socket.
    Answered(Status),
    /// The launcher answered before, or should have by now, and has not since `since`; not yet taken for lost.
    Unreachable { since: Timestamp },
    /// The launcher ended with this exit code (`docs/launcher.md`, "Exit codes").
    Exited { code: i32 },
    /// The launcher is gone and how it ended is unknown.
    Lost(Loss),
}

/// Why a launcher counts as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// It has not answered since `since`, for longer than the node allows.
    Unreachable { since: Timestamp },
    /// Its pod disappeared while the VM was running.
    PodGone,
}

/// The launcher's exit codes (`docs/launcher.md`).
const EXIT_STOPPED: i32 = 0;
const EXIT_NEVER_RAN: i32 = 1;
const EXIT_DESTROYED: i32 = 3;
const EXIT_CRASHED: i32 = 4;

/// The fields of [`VirtualMachineStatus`] the node owns. Serializes to exactly those fields, in the API's JSON
/// form, so that a server-side apply of it claims nothing else.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub phase: Phase,
    pub printable_status: PrintableStatus,
    /// Ready, Paused and Failure, in that order.
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    pub node_name: String,
    pub launcher_pod: String,
}

impl NodeStatus {
    /// Derives the node's fields from the launcher's state. `previous` is the VM's status as last written, so
    /// that a condition whose status did not change keeps its `lastTransitionTime`, and an unreachable launcher's
    /// VM keeps what was last known of it.
    pub fn derive(
        launcher: &LauncherState,
        previous: Option<&VirtualMachineStatus>,
        node: &str,
        pod: &str,
        now: Timestamp,
    ) -> NodeStatus {
        // The API keeps whole seconds; so does this, so that what was written compares equal to what is read back.
        let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
        let outline = outline(launcher, previous);
        let previous_conditions = previous.map_or(&[][..], |p| &p.conditions[..]);
        let conditions = outline
            .conditions
            .into_iter()
            .map(|c| {
                let last_transition_time = previous_conditions
                    .iter()
                    .find(|p| p.condition_type == c.condition_type && p.status == c.status)
                    .and_then(|p| p.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone());
                Condition {
                    condition_type: c.condition_type,
                    status: c.status,
                    reason: Some(c.reason),
                    message: c.message,
                    last_transition_time: Some(last_transition_time),
                }
            })
            .collect();
        NodeStatus {
            phase: outline.phase,
            printable_status: outline.printable,
            conditions,
            interfaces: outline.interfaces,
            node_name: node.to_owned(),
            launcher_pod: pod.to_owned(),
        }
    }

    /// Whether `status` already holds exactly these fields.
    pub fn is_reflected_in(&self, status: &VirtualMachineStatus) -> bool {
        status.phase == Some(self.phase)
            && status.printable_status == Some(self.printable_status)
            && status.conditions == self.conditions
            && status.interfaces == self.interfaces
            && status.node_name.as_deref() == Some(self.node_name.as_str())
            && status.launcher_pod.as_deref() == Some(self.launcher_pod.as_str())
    }

    /// Writes these fields into `status`, leaving the others as they are.
    pub fn write_into(&self, status: &mut VirtualMachineStatus) {
        status.phase = Some(self.phase);
        status.printable_status = Some(self.printable_status);
        status.conditions.clone_from(&self.conditions);
        status.interfaces.clone_from(&self.interfaces);
        status.node_name = Some(self.node_name.clone());
        status.launcher_pod = Some(self.launcher_pod.clone());
    }

    /// Whether the VM has ended: nothing the launcher says later can change these fields.
    pub fn is_final(&self) -> bool {
        matches!(self.phase, Phase::Succeeded | Phase::Failed)
    }
}

/// A condition before its transition time is known.
struct ConditionOutline {
    condition_type: ConditionType,
    /// `True`, `False` or `Unknown`.
    status: String,
    reason: String,
    message: Option<String>,
}

fn condition(condition_type: ConditionType, status: &str, reason: &str, message: Option<String>) -> ConditionOutline {
    ConditionOutline {
        condition_type,
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
    }
}

/// Everything but the conditions' transition times.
struct Outline {
    phase: Phase,
    printable: PrintableStatus,
    conditions: Vec<ConditionOutline>,
    interfaces: Vec<InterfaceStatus>,
}

/// How a VM ended, as the conditions say it.
struct Ending {
    phase: Phase,
    reason: &'static str,
    message: String,
}

fn outline(launcher: &LauncherState, previous: Option<&VirtualMachineStatus>) -> Outline {
    match launcher {
        LauncherState::Starting => starting(),
        LauncherState::Answered(status) => answered(status),
        LauncherState::Unreachable { since } => unreachable(*since, previous),
        LauncherState::Exited { code } => ended(exited(*code)),
        LauncherState::Lost(loss) => ended(Ending {
            phase: Phase::Failed,
            reason: "LauncherLost",
            message: match loss {
                Loss::Unreachable { since } => format!("the launcher has not answered since {since}"),
                Loss::PodGone => "the launcher's pod is gone".to_owned(),
            },
        }),
    }
}

fn starting() -> Outline {
    alive(
        Phase::Scheduled,
        PrintableStatus::Starting,
        ("False", "Starting"),
        None,
        false,
        Vec::new(),
    )
}

fn answered(status: &Status) -> Outline {
    // libvirt's own word on the domain, for people.
    let domain = status
        .domain_state
        .as_ref()
        .map(|state| format!("domain state {state}"));
    let interfaces = status.interfaces.iter().map(interface).collect();
    match status.phase {
        LauncherPhase::Starting => starting(),
        LauncherPhase::Running => alive(
            Phase::Running,
            PrintableStatus::Running,
            ("True", "Running"),
            domain,
            false,
            interfaces,
        ),
        LauncherPhase::Paused => alive(
            Phase::Running,
            PrintableStatus::Paused,
            ("False", "Paused"),
            domain,
            true,
            interfaces,
        ),
        LauncherPhase::ShuttingDown => alive(
            Phase::Running,
            PrintableStatus::Stopping,
            ("False", "ShuttingDown"),
            domain,
            false,
            interfaces,
        ),
        LauncherPhase::Stopped => ended(match status.exit {
            Some(Exit::PoweredOff) => stopped("PoweredOff", "the guest powered off"),
            Some(Exit::ShutDown) => stopped("ShutDown", "the guest shut down"),
            Some(Exit::Destroyed) => stopped("Destroyed", "the guest was destroyed"),
            Some(Exit::Crashed) => crashed(),
            None => stopped("Stopped", "the guest stopped"),
        }),
        LauncherPhase::Failed => ended(never_ran()),
    }
}

fn exited(code: i32) -> Ending {
    match code {
        EXIT_STOPPED => stopped("Stopped", "the guest powered off or shut down"),
        EXIT_NEVER_RAN => never_ran(),
        EXIT_DESTROYED => stopped("Destroyed", "the guest was destroyed"),
        EXIT_CRASHED => crashed(),
        code => Ending {
            phase: Phase::Failed,
            reason: "LauncherExited",
            message: format!("the launcher exited with code {code}"),
        },
    }
}

fn stopped(reason: &'static str, message: &str) -> Ending {
    Ending {
        phase: Phase::Succeeded,
        reason,
        message: message.to_owned(),
    }
}

fn crashed() -> Ending {
    Ending {
        phase: Phase::Failed,
        reason: "GuestCrashed",
        message: "the guest crashed or QEMU died".to_owned(),
    }
}

fn never_ran() -> Ending {
    Ending {
        phase: Phase::Failed,
        reason: "LauncherFailed",
        message: "the launcher could not start the VM".to_owned(),
    }
}

/// A VM whose launcher is up.
fn alive(
    phase: Phase,
    printable: PrintableStatus,
    (ready, ready_reason): (&str, &str),
    message: Option<String>,
    paused: bool,
    interfaces: Vec<InterfaceStatus>,
) -> Outline {
    let paused = if paused {
        condition(ConditionType::Paused, "True", "Paused", None)
    } else {
        not_paused()
    };
    Outline {
        phase,
        printable,
        conditions: vec![
            condition(ConditionType::Ready, ready, ready_reason, message),
            paused,
            no_failure(),
        ],
        interfaces,
    }
}

/// A VM that has ended: not ready, not paused, failed or not, and no longer on the network.
fn ended(ending: Ending) -> Outline {
    let failure = if ending.phase == Phase::Failed {
        condition(
            ConditionType::Failure,
            "True",
            ending.reason,
            Some(ending.message.clone()),
        )
    } else {
        no_failure()
    };
    Outline {
        phase: ending.phase,
        printable: PrintableStatus::Stopped,
        conditions: vec![
            condition(ConditionType::Ready, "False", ending.reason, Some(ending.message)),
            not_paused(),
            failure,
        ],
        interfaces: Vec::new(),
    }
}

/// A VM whose launcher does not answer: what was last known of it stands, except that nobody can vouch that it is
/// ready.
fn unreachable(since: Timestamp, previous: Option<&VirtualMachineStatus>) -> Outline {
    let kept = |condition_type: ConditionType, default: fn() -> ConditionOutline| {
        previous
            .and_then(|p| p.conditions.iter().find(|c| c.condition_type == condition_type))
            .map_or_else(default, |c| ConditionOutline {
                condition_type,
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone(),
            })
    };
    Outline {
        phase: previous.and_then(|p| p.phase).unwrap_or(Phase::Unknown),
        printable: previous
            .and_then(|p| p.printable_status)
            .unwrap_or(PrintableStatus::Unknown),
        conditions: vec![
            condition(
                ConditionType::Ready,
                "Unknown",
                "LauncherUnreachable",
                Some(format!("the launcher has not answered since {since}")),
            ),
            kept(ConditionType::Paused, not_paused),
            kept(ConditionType::Failure, no_failure),
        ],
        interfaces: previous.map(|p| p.interfaces.clone()).unwrap_or_default(),
    }
}

fn not_paused() -> ConditionOutline {
    condition(ConditionType::Paused, "False", "NotPaused", None)
}

fn no_failure() -> ConditionOutline {
    condition(ConditionType::Failure, "False", "NoFailure", None)
}

fn interface(launcher: &vmlet_control::InterfaceStatus) -> InterfaceStatus {
    let first_v4 = launcher.ip_addresses.iter().find(|a| !a.contains(':'));
    InterfaceStatus {
        name: launcher.name.clone(),
        ip_address: first_v4.or(launcher.ip_addresses.first()).cloned(),
        ip_addresses: launcher.ip_addresses.clone(),
        mac: (!launcher.mac.is_empty()).then(|| launcher.mac.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";
    const POD: &str = "vm-web-abcde";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn answered(phase: LauncherPhase, exit: Option<Exit>) -> LauncherState {
        LauncherState::Answered(Status {
            phase,
            domain_state: Some("running (booted)".into()),
            interfaces: vec![vmlet_control::InterfaceStatus {
                name: "default".into(),
                mac: "02:42:0a:f4:01:07".into(),
                ip_addresses: vec!["fd00::7".into(), "10.244.1.7".into()],
                binding: "bridge".into(),
            }],
            launcher_pid: 1,
            started_at: 1_000,
            uptime_secs: 5,
            exit,
            ..Default::default()
        })
    }

    /// (Ready, Paused, Failure) as (status, reason).
    type Summary = (Phase, PrintableStatus, [(&'static str, &'static str); 3], usize);

    fn summary(status: &NodeStatus) -> (Phase, PrintableStatus, Vec<(String, String)>, usize) {
        (
            status.phase,
            status.printable_status,
            status
                .conditions
                .iter()
                .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
                .collect(),
            status.interfaces.len(),
        )
    }

    #[test]
    fn each_launcher_state_maps_to_phase_conditions_and_interfaces() {
        use LauncherPhase as L;
        use Phase::*;
        use PrintableStatus as P;
        let cases: Vec<(LauncherState, Summary)> = vec![
            (
                LauncherState::Starting,
                (
                    Scheduled,
                    P::Starting,
                    [("False", "Starting"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                answered(L::Starting, None),
                (
                    Scheduled,
                    P::Starting,
                    [("False", "Starting"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                answered(L::Running, None),
                (
                    Running,
                    P::Running,
                    [("True", "Running"), ("False", "NotPaused"), ("False", "NoFailure")],
                    1,
                ),
            ),
            (
                answered(L::Paused, None),
                (
                    Running,
                    P::Paused,
                    [("False", "Paused"), ("True", "Paused"), ("False", "NoFailure")],
                    1,
                ),
            ),
            (
                answered(L::ShuttingDown, None),
                (
                    Running,
                    P::Stopping,
                    [
                        ("False", "ShuttingDown"),
                        ("False", "NotPaused"),
                        ("False", "NoFailure"),
                    ],
                    1,
                ),
            ),
            (
                answered(L::Stopped, Some(Exit::PoweredOff)),
                (
                    Succeeded,
                    P::Stopped,
                    [("False", "PoweredOff"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                answered(L::Stopped, Some(Exit::ShutDown)),
                (
                    Succeeded,
                    P::Stopped,
                    [("False", "ShutDown"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                answered(L::Stopped, Some(Exit::Destroyed)),
                (
                    Succeeded,
                    P::Stopped,
                    [("False", "Destroyed"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                answered(L::Stopped, Some(Exit::Crashed)),
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "GuestCrashed"),
                        ("False", "NotPaused"),
                        ("True", "GuestCrashed"),
                    ],
                    0,
                ),
            ),
            (
                answered(L::Failed, None),
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "LauncherFailed"),
                        ("False", "NotPaused"),
                        ("True", "LauncherFailed"),
                    ],
                    0,
                ),
            ),
            (
                LauncherState::Exited { code: 0 },
                (
                    Succeeded,
                    P::Stopped,
                    [("False", "Stopped"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                LauncherState::Exited { code: 1 },
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "LauncherFailed"),
                        ("False", "NotPaused"),
                        ("True", "LauncherFailed"),
                    ],
                    0,
                ),
            ),
            (
                LauncherState::Exited { code: 3 },
                (
                    Succeeded,
                    P::Stopped,
                    [("False", "Destroyed"), ("False", "NotPaused"), ("False", "NoFailure")],
                    0,
                ),
            ),
            (
                LauncherState::Exited { code: 4 },
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "GuestCrashed"),
                        ("False", "NotPaused"),
                        ("True", "GuestCrashed"),
                    ],
                    0,
                ),
            ),
            (
                LauncherState::Exited { code: 137 },
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "LauncherExited"),
                        ("False", "NotPaused"),
                        ("True", "LauncherExited"),
                    ],
                    0,
                ),
            ),
            (
                LauncherState::Lost(Loss::PodGone),
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "LauncherLost"),
                        ("False", "NotPaused"),
                        ("True", "LauncherLost"),
                    ],
                    0,
                ),
            ),
            (
                LauncherState::Lost(Loss::Unreachable { since: at(50) }),
                (
                    Failed,
                    P::Stopped,
                    [
                        ("False", "LauncherLost"),
                        ("False", "NotPaused"),
                        ("True", "LauncherLost"),
                    ],
                    0,
                ),
            ),
            (
                LauncherState::Unreachable { since: at(50) },
                (
                    Unknown,
                    P::Unknown,
                    [
                        ("Unknown", "LauncherUnreachable"),
                        ("False", "NotPaused"),
                        ("False", "NoFailure"),
                    ],
                    0,
                ),
            ),
        ];
        for (launcher, (phase, printable, conditions, interfaces)) in cases {
            let status = NodeStatus::derive(&launcher, None, NODE, POD, at(100));
            let expected = (
                phase,
                printable,
                conditions
                    .iter()
                    .map(|(s, r)| ((*s).to_owned(), (*r).to_owned()))
                    .collect::<Vec<_>>(),
                interfaces,
            );
            assert_eq!(summary(&status), expected, "{launcher:?}");
            let types: Vec<_> = status.conditions.iter().map(|c| c.condition_type).collect();
            assert_eq!(
                types,
                [ConditionType::Ready, ConditionType::Paused, ConditionType::Failure]
            );
            assert_eq!(status.node_name, NODE);
            assert_eq!(status.launcher_pod, POD);
            assert_eq!(status.is_final(), matches!(phase, Succeeded | Failed), "{launcher:?}");
        }
    }

    #[test]
    fn interfaces_carry_the_mac_and_every_address_with_ipv4_first_as_the_address() {
        let status = NodeStatus::derive(&answered(LauncherPhase::Running, None), None, NODE, POD, at(100));
        assert_eq!(
            status.interfaces,
            [InterfaceStatus {
                name: "default".into(),
                ip_address: Some("10.244.1.7".into()),
                ip_addresses: vec!["fd00::7".into(), "10.244.1.7".into()],
                mac: Some("02:42:0a:f4:01:07".into()),
            }]
        );
        let v6_only = LauncherState::Answered(Status {
            phase: LauncherPhase::Running,
            interfaces: vec![vmlet_control::InterfaceStatus {
                name: "default".into(),
                mac: String::new(),
                ip_addresses: vec!["fd00::7".into()],
                binding: "bridge".into(),
            }],
            ..Default::default()
        });
        let status = NodeStatus::derive(&v6_only, None, NODE, POD, at(100));
        assert_eq!(status.interfaces[0].ip_address.as_deref(), Some("fd00::7"));
        assert_eq!(status.interfaces[0].mac, None);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let running = answered(LauncherPhase::Running, None);
        let paused = answered(LauncherPhase::Paused, None);
        let mut vm = VirtualMachineStatus::default();

        NodeStatus::derive(&running, Some(&vm), NODE, POD, at(100)).write_into(&mut vm);
        let times = |vm: &VirtualMachineStatus| -> Vec<i64> {
            vm.conditions
                .iter()
                .map(|c| c.last_transition_time.as_ref().unwrap().0.as_second())
                .collect()
        };
        assert_eq!(times(&vm), [100, 100, 100]);

        NodeStatus::derive(&running, Some(&vm), NODE, POD, at(200)).write_into(&mut vm);
        assert_eq!(times(&vm), [100, 100, 100], "nothing changed");

        NodeStatus::derive(&paused, Some(&vm), NODE, POD, at(300)).write_into(&mut vm);
        assert_eq!(times(&vm), [300, 300, 100], "Ready and Paused flipped");

        NodeStatus::derive(&running, Some(&vm), NODE, POD, at(400)).write_into(&mut vm);
        assert_eq!(times(&vm), [400, 400, 100]);
    }

    #[test]
    fn transition_times_are_whole_seconds_so_they_survive_the_round_trip() {
        let now = Timestamp::from_nanosecond(100_700_000_000).unwrap();
        let status = NodeStatus::derive(&LauncherState::Starting, None, NODE, POD, now);
        let time = status.conditions[0].last_transition_time.clone().unwrap();
        assert_eq!(time, Time(at(100)));
        let json = serde_json::to_value(&status).unwrap();
        let back: Time = serde_json::from_value(json["conditions"][0]["lastTransitionTime"].clone()).unwrap();
        assert_eq!(back, time);
    }

    #[test]
    fn an_unreachable_launcher_keeps_what_was_known_but_not_readiness() {
        let mut vm = VirtualMachineStatus::default();
        NodeStatus::derive(&answered(LauncherPhase::Paused, None), None, NODE, POD, at(100)).write_into(&mut vm);

        let status = NodeStatus::derive(
            &LauncherState::Unreachable { since: at(150) },
            Some(&vm),
            NODE,
            POD,
            at(160),
        );
        assert_eq!(status.phase, Phase::Running);
        assert_eq!(status.printable_status, PrintableStatus::Paused);
        assert_eq!(status.interfaces, vm.interfaces);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("Unknown", Some("LauncherUnreachable"))
        );
        assert_eq!(ready.last_transition_time, Some(Time(at(160))));
        assert!(ready.message.as_deref().unwrap().contains("1970-01-01T00:02:30Z"));
        assert_eq!(status.conditions[1], vm.conditions[1], "still paused, since 100");
        assert_eq!(status.conditions[2], vm.conditions[2]);
    }

    #[test]
    fn a_status_reflects_its_fields_only_when_all_of_them_match() {
        let derived = NodeStatus::derive(&answered(LauncherPhase::Running, None), None, NODE, POD, at(100));
        let mut vm = VirtualMachineStatus {
            restart_count: 3,
            ..Default::default()
        };
        assert!(!derived.is_reflected_in(&vm));
        derived.write_into(&mut vm);
        assert!(derived.is_reflected_in(&vm));
        assert_eq!(vm.restart_count, 3, "not the node's field");

        let elsewhere = NodeStatus::derive(
            &answered(LauncherPhase::Running, None),
            Some(&vm),
            "node-b",
            POD,
            at(200),
        );
        assert!(!elsewhere.is_reflected_in(&vm));
        let again = NodeStatus::derive(&answered(LauncherPhase::Running, None), Some(&vm), NODE, POD, at(200));
        assert!(again.is_reflected_in(&vm));
    }

    #[test]
    fn serializes_to_the_node_fields_only_in_the_api_form() {
        let status = NodeStatus::derive(&answered(LauncherPhase::Running, None), None, NODE, POD, at(100));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "phase": "Running",
                "printableStatus": "Running",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Running",
                     "message": "domain state running (booted)",
                     "lastTransitionTime": "1970-01-01T00:01:40Z"},
                    {"type": "Paused", "status": "False", "reason": "NotPaused",
                     "lastTransitionTime": "1970-01-01T00:01:40Z"},
                    {"type": "Failure", "status": "False", "reason": "NoFailure",
                     "lastTransitionTime": "1970-01-01T00:01:40Z"},
                ],
                "interfaces": [{"name": "default", "ipAddress": "10.244.1.7",
                                "ipAddresses": ["fd00::7", "10.244.1.7"], "mac": "02:42:0a:f4:01:07"}],
                "nodeName": NODE,
                "launcherPod": POD,
            })
        );
        let ended = NodeStatus::derive(&LauncherState::Exited { code: 0 }, None, NODE, POD, at(100));
        assert!(serde_json::to_value(&ended).unwrap().get("interfaces").is_none());
    }
}
