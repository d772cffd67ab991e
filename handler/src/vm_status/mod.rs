//! Who writes which field of a VirtualMachine's status, and the node role's part of it.
//!
//! Two writers share the status by server-side apply, and no field is written by both:
//!
//! | field | writer (field manager) |
//! | --- | --- |
//! | `phase`, `printableStatus`, conditions `Ready` and `Failure`, `nodeName`, `launcherPod`, `restartCount`, `startFailure`, `phaseTransitionTimestamps` | the controller (`vmlet-controller`) |
//! | `interfaces`, `guestOSInfo`, condition `Paused`, `launcher` (the node's report on the launcher) | the node role (`vmlet-node`) |
//!
//! The node role reports what it alone observes (the control socket, a launcher gone silent, an exit code kept past
//! its Pod's deletion) and judges nothing; the controller derives the VM's phase from the launcher's Pod and that
//! report (`crate::lifecycle`). `conditions` is a list keyed by type, so each writer owns its own entries.
//!
//! Pure: no Kubernetes I/O, so the node role (which applies its part to the API server) and the standalone mode
//! (which merges it into a file) report a VM the same way.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use vmlet_api::{
    Condition, ConditionType, GuestExit, GuestOsInfo, InterfaceStatus, LauncherReport, ReportedState,
    VirtualMachineStatus,
};
use vmlet_control::{GuestInterface, Status};

/// The conditions the node role writes; the controller writes the others.
pub const NODE_CONDITIONS: [ConditionType; 1] = [ConditionType::Paused];

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

/// The fields of [`VirtualMachineStatus`] the node role owns. Serializes to exactly those fields, in the API's
/// JSON form, so that a server-side apply of it claims nothing else.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The Paused condition, and only it.
    pub conditions: Vec<Condition>,
    /// The guest's interfaces while its launcher is up; none once it has ended (the apply then drops them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    /// The guest's OS as its guest agent tells it, under the same rule as the interfaces. Boxed: most reports
    /// have none, and it would double their size.
    #[serde(rename = "guestOSInfo", skip_serializing_if = "Option::is_none")]
    pub guest_os_info: Option<Box<GuestOsInfo>>,
    pub launcher: LauncherReport,
}

impl NodeStatus {
    /// Derives the node's fields from the launcher's state. `previous` is the VM's status as last read, so that the
    /// Paused condition keeps its `lastTransitionTime` while its status holds, and what the launcher said of its
    /// guest (how it ended, and while it is unreachable, its addresses and pause) outlives the launcher.
    pub fn derive(
        launcher: &LauncherState,
        previous: Option<&VirtualMachineStatus>,
        node: &str,
        pod: &str,
        now: Timestamp,
    ) -> NodeStatus {
        // The API keeps whole seconds; so does this, so that what was written compares equal to what is read back.
        let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
        // This pod's last report; one on another pod says nothing about this one.
        let earlier = previous.and_then(|p| p.launcher.as_ref()).filter(|r| r.pod == pod);
        let previous_paused = previous
            .and_then(|p| p.conditions.iter().find(|c| c.condition_type == ConditionType::Paused))
            .filter(|_| earlier.is_some());
        let report = |state: ReportedState, message: Option<String>| LauncherReport {
            pod: pod.to_owned(),
            node: node.to_owned(),
            state,
            guest_exit: earlier.and_then(|r| r.guest_exit),
            exit_code: None,
            message,
        };
        let (report, paused, (interfaces, guest_os_info)) = match launcher {
            LauncherState::Starting => (report(ReportedState::Starting, None), false, GuestView::default()),
            LauncherState::Answered(status) => {
                let state = ReportedState::from(status.phase);
                // libvirt's own word on the domain, for people.
                let message = status
                    .domain_state
                    .as_ref()
                    .map(|state| format!("domain state {state}"));
                let mut report = report(state, message);
                report.guest_exit = status.exit.map(GuestExit::from).or(report.guest_exit);
                let up = matches!(
                    state,
                    ReportedState::Running | ReportedState::Paused | ReportedState::ShuttingDown
                );
                let guest = if up { guest_view(status) } else { GuestView::default() };
                (report, state == ReportedState::Paused, guest)
            }
            LauncherState::Unreachable { since } => match earlier {
                // A launcher that said its guest is over exits next: its silence is no news.
                Some(said) if matches!(said.state, ReportedState::Stopped | ReportedState::Failed) => {
                    (said.clone(), false, GuestView::default())
                }
                // What was last known of the guest stands; nobody can vouch for it any more.
                _ => (
                    report(
                        ReportedState::Unreachable,
                        Some(format!("the launcher has not answered since {since}")),
                    ),
                    previous_paused.is_some_and(|c| c.status == "True"),
                    previous
                        .filter(|_| earlier.is_some())
                        .map(|p| (p.interfaces.clone(), p.guest_os_info.clone().map(Box::new)))
                        .unwrap_or_default(),
                ),
            },
            LauncherState::Exited { code } => {
                let mut report = report(ReportedState::Exited, None);
                report.exit_code = Some(*code);
                (report, false, GuestView::default())
            }
            LauncherState::Lost(loss) => {
                let message = match loss {
                    Loss::Unreachable { since } => format!("the launcher has not answered since {since}"),
                    Loss::PodGone => "the launcher's pod is gone".to_owned(),
                };
                (report(ReportedState::Lost, Some(message)), false, GuestView::default())
            }
        };
        let status = if paused { "True" } else { "False" };
        let last_transition_time = previous_paused
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(now);
        NodeStatus {
            conditions: vec![Condition {
                last_transition_time: Some(last_transition_time),
                ..Condition::new(
                    ConditionType::Paused,
                    status,
                    if paused { "Paused" } else { "NotPaused" },
                    None,
                )
            }],
            interfaces,
            guest_os_info,
            launcher: report,
        }
    }

    /// Whether `status` already holds exactly these fields.
    pub fn is_reflected_in(&self, status: &VirtualMachineStatus) -> bool {
        let mut written = status.clone();
        self.write_into(&mut written);
        written == *status
    }

    /// What a server-side apply of these fields makes of `status`: the node's fields replaced, the controller's
    /// left as they are.
    pub fn write_into(&self, status: &mut VirtualMachineStatus) {
        // In place: the API keeps a keyed list's order, and a reordered list would not compare equal.
        status.conditions.retain(|c| {
            !NODE_CONDITIONS.contains(&c.condition_type)
                || self.conditions.iter().any(|own| own.condition_type == c.condition_type)
        });
        for condition in &self.conditions {
            match status
                .conditions
                .iter_mut()
                .find(|c| c.condition_type == condition.condition_type)
            {
                Some(existing) => *existing = condition.clone(),
                None => status.conditions.push(condition.clone()),
            }
        }
        status.interfaces.clone_from(&self.interfaces);
        status.guest_os_info = self.guest_os_info.as_deref().cloned();
        status.launcher = Some(self.launcher.clone());
    }
}

/// The fields of `status` the controller owns: what it applies.
pub fn controller_part(status: &VirtualMachineStatus) -> VirtualMachineStatus {
    VirtualMachineStatus {
        phase: status.phase,
        printable_status: status.printable_status,
        conditions: status
            .conditions
            .iter()
            .filter(|c| !NODE_CONDITIONS.contains(&c.condition_type))
            .cloned()
            .collect(),
        interfaces: Vec::new(),
        node_name: status.node_name.clone(),
        launcher_pod: status.launcher_pod.clone(),
        restart_count: status.restart_count,
        start_failure: status.start_failure.clone(),
        phase_transition_timestamps: status.phase_transition_timestamps.clone(),
        launcher: None,
        guest_os_info: None,
    }
}

/// What a server-side apply of the controller's fields (`applied`, as [`controller_part`] gives them) makes of
/// `status`: the controller's fields replaced, the node's left as they are.
#[cfg(test)]
pub fn write_controller_part(status: &mut VirtualMachineStatus, applied: &VirtualMachineStatus) {
    let node_conditions: Vec<Condition> = status
        .conditions
        .iter()
        .filter(|c| NODE_CONDITIONS.contains(&c.condition_type))
        .cloned()
        .collect();
    let (interfaces, launcher) = (std::mem::take(&mut status.interfaces), status.launcher.take());
    let guest_os_info = status.guest_os_info.take();
    *status = controller_part(applied);
    status.conditions.extend(node_conditions);
    status.interfaces = interfaces;
    status.launcher = launcher;
    status.guest_os_info = guest_os_info;
}

/// What the node reports of a running guest: its interfaces, and its OS.
type GuestView = (Vec<InterfaceStatus>, Option<Box<GuestOsInfo>>);

fn guest_view(status: &Status) -> GuestView {
    let agent = status.guest_agent.as_deref();
    let os = agent
        .and_then(|a| a.os.as_ref())
        .map(|os| Box::new(GuestOsInfo::from(os)));
    let guest_interfaces = agent.map(|a| a.interfaces.as_slice()).unwrap_or_default();
    (interfaces(&status.interfaces, guest_interfaces), os)
}

/// Where an interface's addresses come from, in KubeVirt's words.
const FROM_DOMAIN: &str = "domain";
const FROM_GUEST_AGENT: &str = "guest-agent";
const FROM_BOTH: &str = "domain, guest-agent";

/// The VM's interfaces as the launcher knows them (the NIC it gave the guest, the addresses it serves), merged with
/// the guest's own view where the MACs agree: the guest's name for it, and the addresses the guest has beside those
/// the launcher gave (a static address, an IPv6 address of its own making). Interfaces the guest has and the
/// launcher did not make (a bridge, a VPN) come after, named only in the guest. Link-local addresses are left out,
/// unlike KubeVirt: every interface has one, nothing outside the guest reaches it, and it would otherwise become
/// `ipAddress` on an IPv6-only guest whose agent lists it first.
fn interfaces(domain: &[vmlet_control::InterfaceStatus], guest: &[GuestInterface]) -> Vec<InterfaceStatus> {
    let same_mac = |nic: &vmlet_control::InterfaceStatus, g: &GuestInterface| {
        !nic.mac.is_empty() && g.mac.as_deref().is_some_and(|mac| mac.eq_ignore_ascii_case(&nic.mac))
    };
    let mut merged: Vec<InterfaceStatus> = domain
        .iter()
        .map(|nic| {
            let seen = guest.iter().find(|g| same_mac(nic, g));
            let mut addresses = nic.ip_addresses.clone();
            for address in seen.map(reachable_addresses).unwrap_or_default() {
                if !addresses.iter().any(|a| same_address(a, &address)) {
                    addresses.push(address);
                }
            }
            InterfaceStatus {
                name: nic.name.clone(),
                mac: (!nic.mac.is_empty()).then(|| nic.mac.clone()),
                interface_name: seen.map(|g| g.name.clone()),
                info_source: Some(if seen.is_some() { FROM_BOTH } else { FROM_DOMAIN }.to_owned()),
                ..with_addresses(addresses)
            }
        })
        .collect();
    merged.extend(
        guest
            .iter()
            .filter(|g| !domain.iter().any(|nic| same_mac(nic, g)))
            .map(|g| InterfaceStatus {
                mac: g.mac.clone(),
                interface_name: Some(g.name.clone()),
                info_source: Some(FROM_GUEST_AGENT.to_owned()),
                ..with_addresses(reachable_addresses(g))
            }),
    );
    merged
}

/// An interface with these addresses, the first IPv4 one (else the first) as its address.
fn with_addresses(ip_addresses: Vec<String>) -> InterfaceStatus {
    let first_v4 = ip_addresses.iter().find(|a| !a.contains(':'));
    InterfaceStatus {
        ip_address: first_v4.or(ip_addresses.first()).cloned(),
        ip_addresses,
        ..Default::default()
    }
}

/// The guest's addresses on an interface without their prefix lengths, link-local ones left out.
fn reachable_addresses(interface: &GuestInterface) -> Vec<String> {
    interface
        .ip_addresses
        .iter()
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_loopback(),
        })
        .map(|ip| ip.to_string())
        .collect()
}

/// Whether two addresses are one, however written (`fd00::7`, `fd00:0::7`).
fn same_address(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
