use std::collections::BTreeSet;

use serde_json::{Value, json};
use vmlet_api::{Phase, PhaseTransition, PrintableStatus, StartFailure};
use vmlet_control::{Exit, Phase as LauncherPhase};

use super::*;

const NODE: &str = "node-a";
const POD: &str = "vmlet-launcher-web-abcde";

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

/// Debian's guest agent on the guest's NIC (its MAC in upper case, as a guest may write it), with the address
/// the launcher gave, an address of the guest's own making and a link-local one; and a bridge of its own.
fn agent() -> vmlet_control::GuestAgentStatus {
    vmlet_control::GuestAgentStatus {
        os: Some(vmlet_control::GuestOsInfo {
            name: Some("Debian GNU/Linux".into()),
            pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            kernel_release: Some("6.1.0-28-cloud-amd64".into()),
            machine: Some("x86_64".into()),
            ..Default::default()
        }),
        host_name: Some("web".into()),
        interfaces: vec![
            GuestInterface {
                name: "enp1s0".into(),
                mac: Some("02:42:0A:F4:01:07".into()),
                ip_addresses: vec![
                    "10.244.1.7/24".into(),
                    "fd00:0::7/64".into(),
                    "fd00::1234/64".into(),
                    "fe80::42:aff:fef4:107/64".into(),
                ],
            },
            GuestInterface {
                name: "docker0".into(),
                mac: Some("02:42:ac:11:00:01".into()),
                ip_addresses: vec!["172.17.0.1/16".into(), "169.254.3.3/16".into()],
            },
        ],
        answered_at: 1_004,
        malformed_replies: 0,
    }
}

/// `answered`, with the guest agent's word.
fn answered_with_agent(phase: LauncherPhase) -> LauncherState {
    let LauncherState::Answered(mut status) = answered(phase, None) else {
        unreachable!()
    };
    status.guest_agent = Some(Box::new(agent()));
    LauncherState::Answered(status)
}

/// The report's state, guest exit and exit code; the Paused condition's status; how many interfaces.
type Summary = (ReportedState, Option<GuestExit>, Option<i32>, &'static str, usize);

fn summary(status: &NodeStatus) -> Summary {
    let paused = match status.conditions[..] {
        [ref paused] if paused.condition_type == ConditionType::Paused => paused.status.clone(),
        ref other => panic!("not the Paused condition alone: {other:?}"),
    };
    (
        status.launcher.state,
        status.launcher.guest_exit,
        status.launcher.exit_code,
        if paused == "True" { "True" } else { "False" },
        status.interfaces.len(),
    )
}

#[test]
fn each_launcher_state_is_reported_as_it_is() {
    use LauncherPhase as L;
    use ReportedState as R;
    let cases: Vec<(LauncherState, Summary)> = vec![
        (LauncherState::Starting, (R::Starting, None, None, "False", 0)),
        (answered(L::Starting, None), (R::Starting, None, None, "False", 0)),
        (answered(L::Running, None), (R::Running, None, None, "False", 1)),
        (answered(L::Paused, None), (R::Paused, None, None, "True", 1)),
        (
            answered(L::ShuttingDown, None),
            (R::ShuttingDown, None, None, "False", 1),
        ),
        (
            answered(L::Stopped, Some(Exit::PoweredOff)),
            (R::Stopped, Some(GuestExit::PoweredOff), None, "False", 0),
        ),
        (
            answered(L::Stopped, Some(Exit::Crashed)),
            (R::Stopped, Some(GuestExit::Crashed), None, "False", 0),
        ),
        (answered(L::Failed, None), (R::Failed, None, None, "False", 0)),
        (
            LauncherState::Exited { code: 0 },
            (R::Exited, None, Some(0), "False", 0),
        ),
        (
            LauncherState::Exited { code: 4 },
            (R::Exited, None, Some(4), "False", 0),
        ),
        (
            LauncherState::Exited { code: 137 },
            (R::Exited, None, Some(137), "False", 0),
        ),
        (LauncherState::Lost(Loss::PodGone), (R::Lost, None, None, "False", 0)),
        (
            LauncherState::Lost(Loss::Unreachable { since: at(50) }),
            (R::Lost, None, None, "False", 0),
        ),
        (
            LauncherState::Unreachable { since: at(50) },
            (R::Unreachable, None, None, "False", 0),
        ),
    ];
    for (launcher, expected) in cases {
        let status = NodeStatus::derive(&launcher, None, NODE, POD, at(100));
        assert_eq!(summary(&status), expected, "{launcher:?}");
        assert_eq!(
            (status.launcher.pod.as_str(), status.launcher.node.as_str()),
            (POD, NODE)
        );
    }
}

#[test]
fn messages_say_what_libvirt_and_the_silence_say() {
    let running = NodeStatus::derive(&answered(LauncherPhase::Running, None), None, NODE, POD, at(100));
    assert_eq!(
        running.launcher.message.as_deref(),
        Some("domain state running (booted)")
    );
    let lost = NodeStatus::derive(&LauncherState::Lost(Loss::PodGone), None, NODE, POD, at(100));
    assert_eq!(lost.launcher.message.as_deref(), Some("the launcher's pod is gone"));
    let silent = NodeStatus::derive(
        &LauncherState::Lost(Loss::Unreachable { since: at(150) }),
        None,
        NODE,
        POD,
        at(200),
    );
    assert!(silent.launcher.message.unwrap().contains("1970-01-01T00:02:30Z"));
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
            interface_name: None,
            info_source: Some("domain".into()),
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

/// Each interface in short: name, address, addresses, MAC, name in the guest, source.
type Row<'a> = (
    &'a str,
    Option<&'a str>,
    Vec<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
);

fn rows(interfaces: &[InterfaceStatus]) -> Vec<Row<'_>> {
    interfaces
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.ip_address.as_deref(),
                i.ip_addresses.iter().map(String::as_str).collect(),
                i.mac.as_deref(),
                i.interface_name.as_deref(),
                i.info_source.as_deref().unwrap(),
            )
        })
        .collect()
}

#[test]
fn interfaces_merge_the_launchers_lease_with_the_guest_agents_view() {
    let nic = vmlet_control::InterfaceStatus {
        name: "default".into(),
        mac: "02:42:0a:f4:01:07".into(),
        ip_addresses: vec!["10.244.1.7".into(), "fd00::7".into()],
        binding: "bridge".into(),
    };
    let mac = Some("02:42:0a:f4:01:07");
    let everything = agent().interfaces;
    let only_its_nic = &everything[..1];
    let elsewhere = GuestInterface {
        mac: Some("02:00:00:00:00:99".into()),
        ..everything[0].clone()
    };
    type Case<'a> = (
        &'a str,
        Vec<vmlet_control::InterfaceStatus>,
        Vec<GuestInterface>,
        Vec<Row<'a>>,
    );
    let cases: Vec<Case> = vec![
        (
            "the lease only",
            vec![nic.clone()],
            Vec::new(),
            vec![(
                "default",
                Some("10.244.1.7"),
                vec!["10.244.1.7", "fd00::7"],
                mac,
                None,
                "domain",
            )],
        ),
        (
            "the agent only: its MAC is none of the launcher's",
            vec![nic.clone()],
            vec![elsewhere],
            vec![
                (
                    "default",
                    Some("10.244.1.7"),
                    vec!["10.244.1.7", "fd00::7"],
                    mac,
                    None,
                    "domain",
                ),
                (
                    "",
                    Some("10.244.1.7"),
                    vec!["10.244.1.7", "fd00::7", "fd00::1234"],
                    Some("02:00:00:00:00:99"),
                    Some("enp1s0"),
                    "guest-agent",
                ),
            ],
        ),
        (
            "both, agreeing on the MAC: the guest's own address added, link-local left out",
            vec![nic.clone()],
            only_its_nic.to_vec(),
            vec![(
                "default",
                Some("10.244.1.7"),
                vec!["10.244.1.7", "fd00::7", "fd00::1234"],
                mac,
                Some("enp1s0"),
                "domain, guest-agent",
            )],
        ),
        (
            "an agent with several interfaces",
            vec![nic.clone()],
            everything.clone(),
            vec![
                (
                    "default",
                    Some("10.244.1.7"),
                    vec!["10.244.1.7", "fd00::7", "fd00::1234"],
                    mac,
                    Some("enp1s0"),
                    "domain, guest-agent",
                ),
                (
                    "",
                    Some("172.17.0.1"),
                    vec!["172.17.0.1"],
                    Some("02:42:ac:11:00:01"),
                    Some("docker0"),
                    "guest-agent",
                ),
            ],
        ),
        (
            "a NIC without a MAC matches nothing",
            vec![vmlet_control::InterfaceStatus {
                mac: String::new(),
                ..nic.clone()
            }],
            only_its_nic.to_vec(),
            vec![
                (
                    "default",
                    Some("10.244.1.7"),
                    vec!["10.244.1.7", "fd00::7"],
                    None,
                    None,
                    "domain",
                ),
                (
                    "",
                    Some("10.244.1.7"),
                    vec!["10.244.1.7", "fd00::7", "fd00::1234"],
                    Some("02:42:0A:F4:01:07"),
                    Some("enp1s0"),
                    "guest-agent",
                ),
            ],
        ),
    ];
    for (what, domain, guest, expected) in cases {
        assert_eq!(rows(&interfaces(&domain, &guest)), expected, "{what}");
    }
}

#[test]
fn the_guest_os_is_reported_while_the_guest_runs() {
    for (phase, expected) in [
        (LauncherPhase::Starting, false),
        (LauncherPhase::Running, true),
        (LauncherPhase::Paused, true),
        (LauncherPhase::ShuttingDown, true),
        (LauncherPhase::Stopped, false),
    ] {
        let status = NodeStatus::derive(&answered_with_agent(phase), None, NODE, POD, at(100));
        assert_eq!(status.guest_os_info.is_some(), expected, "{phase:?}");
    }
    let status = NodeStatus::derive(&answered_with_agent(LauncherPhase::Running), None, NODE, POD, at(100));
    assert_eq!(
        status.guest_os_info.unwrap().pretty_name.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
}

fn paused_since(vm: &VirtualMachineStatus) -> (String, i64) {
    let paused = vm
        .conditions
        .iter()
        .find(|c| c.condition_type == ConditionType::Paused)
        .unwrap();
    (
        paused.status.clone(),
        paused.last_transition_time.as_ref().unwrap().0.as_second(),
    )
}

#[test]
fn the_paused_condition_keeps_its_transition_time_until_its_status_changes() {
    let running = answered(LauncherPhase::Running, None);
    let paused = answered(LauncherPhase::Paused, None);
    let mut vm = VirtualMachineStatus::default();
    for (launcher, second, expected) in [
        (&running, 100, ("False", 100)),
        (&running, 200, ("False", 100)),
        (&paused, 300, ("True", 300)),
        (&paused, 350, ("True", 300)),
        (&running, 400, ("False", 400)),
    ] {
        NodeStatus::derive(launcher, Some(&vm), NODE, POD, at(second)).write_into(&mut vm);
        assert_eq!(paused_since(&vm), (expected.0.to_owned(), expected.1), "at {second}");
    }
    // The next pod's report starts afresh.
    let next = NodeStatus::derive(&running, Some(&vm), NODE, "vmlet-launcher-web-fghij", at(500));
    next.write_into(&mut vm);
    assert_eq!(paused_since(&vm), ("False".to_owned(), 500));
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
fn an_unreachable_launcher_keeps_what_was_known_of_its_guest() {
    let mut vm = VirtualMachineStatus::default();
    NodeStatus::derive(&answered_with_agent(LauncherPhase::Paused), None, NODE, POD, at(100)).write_into(&mut vm);
    assert!(vm.guest_os_info.is_some());

    let silent = LauncherState::Unreachable { since: at(150) };
    let status = NodeStatus::derive(&silent, Some(&vm), NODE, POD, at(160));
    assert_eq!(status.launcher.state, ReportedState::Unreachable);
    assert_eq!(status.interfaces, vm.interfaces);
    assert_eq!(status.guest_os_info.as_deref(), vm.guest_os_info.as_ref());
    assert_eq!(status.conditions[0], vm.conditions[0], "still paused, since 100");

    // Another pod's addresses are not this one's.
    let other = NodeStatus::derive(&silent, Some(&vm), NODE, "vmlet-launcher-web-fghij", at(160));
    assert!(other.interfaces.is_empty());
    assert_eq!(other.guest_os_info, None);
    // An ended guest runs no OS.
    let exited = NodeStatus::derive(&LauncherState::Exited { code: 0 }, Some(&vm), NODE, POD, at(170));
    assert_eq!(exited.guest_os_info, None);
    assert_eq!(other.conditions[0].status, "False");
}

#[test]
fn a_launcher_silent_after_its_guest_ended_is_still_reported_as_ended() {
    let mut vm = VirtualMachineStatus::default();
    let stopped = answered(LauncherPhase::Stopped, Some(Exit::ShutDown));
    NodeStatus::derive(&stopped, None, NODE, POD, at(100)).write_into(&mut vm);
    let silent = NodeStatus::derive(
        &LauncherState::Unreachable { since: at(101) },
        Some(&vm),
        NODE,
        POD,
        at(102),
    );
    assert!(silent.is_reflected_in(&vm), "{silent:?}");
}

#[test]
fn how_the_guest_ended_outlives_its_launcher() {
    let mut vm = VirtualMachineStatus::default();
    NodeStatus::derive(
        &answered(LauncherPhase::Stopped, Some(Exit::Crashed)),
        None,
        NODE,
        POD,
        at(100),
    )
    .write_into(&mut vm);
    let exited = NodeStatus::derive(&LauncherState::Exited { code: 4 }, Some(&vm), NODE, POD, at(101));
    assert_eq!(
        (
            exited.launcher.state,
            exited.launcher.guest_exit,
            exited.launcher.exit_code
        ),
        (ReportedState::Exited, Some(GuestExit::Crashed), Some(4))
    );
    let next = NodeStatus::derive(
        &LauncherState::Starting,
        Some(&vm),
        NODE,
        "vmlet-launcher-web-fghij",
        at(102),
    );
    assert_eq!(next.launcher.guest_exit, None, "the next pod's guest has not ended");
}

#[test]
fn a_status_reflects_the_node_fields_only_when_all_of_them_match() {
    let derived = NodeStatus::derive(&answered(LauncherPhase::Running, None), None, NODE, POD, at(100));
    let mut vm = VirtualMachineStatus {
        restart_count: 3,
        phase: Some(Phase::Running),
        ..Default::default()
    };
    assert!(!derived.is_reflected_in(&vm));
    derived.write_into(&mut vm);
    assert!(derived.is_reflected_in(&vm));
    assert_eq!(
        (vm.restart_count, vm.phase),
        (3, Some(Phase::Running)),
        "not the node's fields"
    );

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

/// Every field of the status set, so that each writer's part is seen whole.
fn full_status() -> VirtualMachineStatus {
    let time = Time(at(100));
    let condition = |condition_type, status: &str| Condition {
        condition_type,
        status: status.into(),
        reason: Some("R".into()),
        message: None,
        last_transition_time: Some(time.clone()),
    };
    let mut status = VirtualMachineStatus {
        phase: Some(Phase::Running),
        printable_status: Some(PrintableStatus::Running),
        conditions: vec![
            condition(ConditionType::Ready, "True"),
            condition(ConditionType::Failure, "False"),
        ],
        node_name: Some(NODE.into()),
        launcher_pod: Some(POD.into()),
        restart_count: 2,
        start_failure: Some(StartFailure {
            consecutive_fail_count: 1,
            last_failed_launcher: None,
            retry_after_timestamp: Some(time.clone()),
        }),
        phase_transition_timestamps: vec![PhaseTransition {
            phase: Phase::Running,
            phase_transition_timestamp: time,
        }],
        ..Default::default()
    };
    NodeStatus::derive(&answered_with_agent(LauncherPhase::Running), None, NODE, POD, at(100)).write_into(&mut status);
    status
}

/// The status fields a JSON body sets, conditions by type.
fn fields(status: &Value) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for (key, value) in status.as_object().unwrap() {
        if key == "conditions" {
            for condition in value.as_array().unwrap() {
                fields.insert(format!("conditions[{}]", condition["type"].as_str().unwrap()));
            }
        } else {
            fields.insert(key.clone());
        }
    }
    fields
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_two_writers_parts_are_disjoint_and_make_the_whole_status() {
    let full = full_status();
    let node = NodeStatus::derive(
        &answered_with_agent(LauncherPhase::Running),
        Some(&full),
        NODE,
        POD,
        at(100),
    );
    let node_fields = fields(&serde_json::to_value(&node).unwrap());
    let controller_fields = fields(&serde_json::to_value(controller_part(&full)).unwrap());
    assert_eq!(
        node_fields,
        set(&["conditions[Paused]", "interfaces", "guestOSInfo", "launcher"])
    );
    assert_eq!(
        controller_fields,
        set(&[
            "phase",
            "printableStatus",
            "conditions[Ready]",
            "conditions[Failure]",
            "nodeName",
            "launcherPod",
            "restartCount",
            "startFailure",
            "phaseTransitionTimestamps",
        ])
    );
    let all = fields(&serde_json::to_value(&full).unwrap());
    assert_eq!(&node_fields | &controller_fields, all);

    // Each writer's apply leaves the other's fields as they are.
    let mut status = full.clone();
    write_controller_part(&mut status, &VirtualMachineStatus::default());
    assert_eq!(fields(&serde_json::to_value(&status).unwrap()), node_fields);
    let mut status = VirtualMachineStatus::default();
    node.write_into(&mut status);
    write_controller_part(&mut status, &full);
    assert_eq!(status, full);
}

#[test]
fn serializes_to_the_node_fields_only_in_the_api_form() {
    let status = NodeStatus::derive(&answered(LauncherPhase::Running, None), None, NODE, POD, at(100));
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({
            "conditions": [
                {"type": "Paused", "status": "False", "reason": "NotPaused",
                 "lastTransitionTime": "1970-01-01T00:01:40Z"},
            ],
            "interfaces": [{"name": "default", "ipAddress": "10.244.1.7",
                            "ipAddresses": ["fd00::7", "10.244.1.7"], "mac": "02:42:0a:f4:01:07",
                            "infoSource": "domain"}],
            "launcher": {"pod": POD, "node": NODE, "state": "Running",
                         "message": "domain state running (booted)"},
        })
    );
    let with_agent = NodeStatus::derive(&answered_with_agent(LauncherPhase::Running), None, NODE, POD, at(100));
    assert_eq!(
        serde_json::to_value(&with_agent).unwrap()["guestOSInfo"],
        json!({"name": "Debian GNU/Linux", "prettyName": "Debian GNU/Linux 12 (bookworm)",
               "kernelRelease": "6.1.0-28-cloud-amd64", "machine": "x86_64"})
    );
    let ended = NodeStatus::derive(&LauncherState::Exited { code: 0 }, None, NODE, POD, at(100));
    assert!(serde_json::to_value(&ended).unwrap().get("interfaces").is_none());
}
