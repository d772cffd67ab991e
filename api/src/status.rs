//! What the handler reports about a VM.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
#[cfg(feature = "kubernetes")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A one-word summary for people (`kubectl get vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<PrintableStatus>,
    /// Keyed by type, so that each writer (the controller: Ready and Failure; the node role: Paused) owns its own
    /// conditions under server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pod: Option<String>,
    /// Restarts the run strategy made on its own after a run ended (not the starts a person asked for). Left out
    /// when zero, so that a server-side apply that does not mean to set it does not claim it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_count: u32,
    /// Why and until when the next automatic start waits (crash-loop back-off); absent when the VM is not failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailure>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransition>,
    /// What the node role last learned of the VM's launcher. The node role alone writes it; the controller derives
    /// the phase, the printable status and the Ready and Failure conditions from it and from the launcher's Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<LauncherReport>,
    /// The guest's operating system, as its QEMU guest agent tells it (KubeVirt's `guestOSInfo`); absent when the
    /// guest runs no agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "guestOSInfo")]
    pub guest_os_info: Option<GuestOsInfo>,
}

/// What the guest agent says of the guest's operating system (KubeVirt's field names).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GuestOsInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The crash-loop back-off's memory (KubeVirt's `startFailure`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    /// Failed runs in a row; a run that lasts long enough starts the count afresh.
    pub consecutive_fail_count: u32,
    /// The launcher whose failure was counted last, so that seeing it again does not count it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_launcher: Option<String>,
    /// No automatic start before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_timestamp: Option<Time>,
}

/// Where the VM instance is in its life (KubeVirt's VMI phases).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum Phase {
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum PrintableStatus {
    Stopped,
    Provisioning,
    Starting,
    Running,
    Paused,
    Stopping,
    Terminating,
    CrashLoopBackOff,
    Unschedulable,
    ErrorUnschedulable,
    /// A containerDisk's image could not be pulled.
    ErrImagePull,
    /// A containerDisk's image could not be pulled, and the next try waits (back-off).
    ImagePullBackOff,
    /// A persistent volume claim the VM names does not exist.
    ErrorPvcNotFound,
    Unknown,
}

impl PrintableStatus {
    /// The status as the API spells it (`kubectl get`'s STATUS column).
    pub fn as_str(self) -> &'static str {
        match self {
            PrintableStatus::Stopped => "Stopped",
            PrintableStatus::Provisioning => "Provisioning",
            PrintableStatus::Starting => "Starting",
            PrintableStatus::Running => "Running",
            PrintableStatus::Paused => "Paused",
            PrintableStatus::Stopping => "Stopping",
            PrintableStatus::Terminating => "Terminating",
            PrintableStatus::CrashLoopBackOff => "CrashLoopBackOff",
            PrintableStatus::Unschedulable => "Unschedulable",
            PrintableStatus::ErrorUnschedulable => "ErrorUnschedulable",
            PrintableStatus::ErrImagePull => "ErrImagePull",
            PrintableStatus::ImagePullBackOff => "ImagePullBackOff",
            PrintableStatus::ErrorPvcNotFound => "ErrorPvcNotFound",
            PrintableStatus::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for PrintableStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub condition_type: ConditionType,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl Condition {
    /// A condition with this status (`True`, `False` or `Unknown`), reason and message, and no transition time yet:
    /// whoever writes it keeps the last one or sets its own.
    pub fn new(
        condition_type: ConditionType,
        status: &str,
        reason: &str,
        message: impl Into<Option<String>>,
    ) -> Condition {
        Condition {
            condition_type,
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: message.into(),
            last_transition_time: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum ConditionType {
    Ready,
    Failure,
    Paused,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    pub name: String,
    /// The first address, IPv4 when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The interface's name inside the guest, from its guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// Where the addresses come from: `domain` (the launcher's DHCP lease), `guest-agent`, or both
    /// (`domain, guest-agent`), as KubeVirt writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_source: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    pub phase: Phase,
    pub phase_transition_timestamp: Time,
}

/// The node role's report on one launcher: facts it alone can observe (the control socket, the launcher going
/// silent), and the launcher's exit code kept beyond its Pod's deletion. No judgement on the VM's phase: that is
/// the controller's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LauncherReport {
    /// The launcher Pod this report is about; a report on another Pod than `launcherPod` is an old one.
    pub pod: String,
    /// The node the Pod runs on, whose node role wrote this.
    pub node: String,
    pub state: ReportedState,
    /// How the guest ended, in the launcher's words, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_exit: Option<GuestExit>,
    /// The launcher container's exit code, once it has exited (docs/launcher.md, "Exit codes").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// For people: libvirt's state of the domain, or why the launcher counts as unreachable or lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The launcher as its node sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum ReportedState {
    /// Its Pod is starting, or it is setting the VM up.
    Starting,
    Running,
    Paused,
    /// The guest was asked to shut down and has not yet.
    ShuttingDown,
    /// The guest is gone (`guestExit` says how); the launcher is about to exit.
    Stopped,
    /// The launcher could not start the VM; it is about to exit.
    Failed,
    /// The launcher's container exited (`exitCode`).
    Exited,
    /// It answered before, or should have by now, and does not; not yet taken for lost.
    Unreachable,
    /// Silent for too long, or its Pod gone while it ran, with no exit code seen.
    Lost,
}

/// How a guest ended (the launcher's `exit`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum GuestExit {
    PoweredOff,
    ShutDown,
    Destroyed,
    Crashed,
}

/// The launcher's words, from its control socket, in the API's: what the node role writes of what a launcher said.
/// Each spells the same states in its own protocol's style; these are the only places that translate them.
impl From<vmlet_control::Phase> for ReportedState {
    fn from(phase: vmlet_control::Phase) -> ReportedState {
        use vmlet_control::Phase;
        match phase {
            Phase::Starting => ReportedState::Starting,
            Phase::Running => ReportedState::Running,
            Phase::Paused => ReportedState::Paused,
            Phase::ShuttingDown => ReportedState::ShuttingDown,
            Phase::Stopped => ReportedState::Stopped,
            Phase::Failed => ReportedState::Failed,
        }
    }
}

impl From<vmlet_control::Exit> for GuestExit {
    fn from(exit: vmlet_control::Exit) -> GuestExit {
        use vmlet_control::Exit;
        match exit {
            Exit::PoweredOff => GuestExit::PoweredOff,
            Exit::ShutDown => GuestExit::ShutDown,
            Exit::Destroyed => GuestExit::Destroyed,
            Exit::Crashed => GuestExit::Crashed,
        }
    }
}

/// Back to the launcher's words, whose exit code ([`vmlet_control::LauncherExit`]) says the same.
impl From<GuestExit> for vmlet_control::Exit {
    fn from(exit: GuestExit) -> vmlet_control::Exit {
        use vmlet_control::Exit;
        match exit {
            GuestExit::PoweredOff => Exit::PoweredOff,
            GuestExit::ShutDown => Exit::ShutDown,
            GuestExit::Destroyed => Exit::Destroyed,
            GuestExit::Crashed => Exit::Crashed,
        }
    }
}

impl From<&vmlet_control::GuestOsInfo> for GuestOsInfo {
    fn from(os: &vmlet_control::GuestOsInfo) -> GuestOsInfo {
        GuestOsInfo {
            name: os.name.clone(),
            id: os.id.clone(),
            pretty_name: os.pretty_name.clone(),
            version: os.version.clone(),
            version_id: os.version_id.clone(),
            kernel_release: os.kernel_release.clone(),
            kernel_version: os.kernel_version.clone(),
            machine: os.machine.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A printable status reads in logs and Events as the API spells it.
    #[test]
    fn printable_statuses_are_spelt_as_in_the_api() {
        use PrintableStatus::*;
        let all = [
            Stopped,
            Provisioning,
            Starting,
            Running,
            Paused,
            Stopping,
            Terminating,
            CrashLoopBackOff,
            Unschedulable,
            ErrorUnschedulable,
            ErrImagePull,
            ImagePullBackOff,
            ErrorPvcNotFound,
            Unknown,
        ];
        for status in all {
            assert_eq!(json!(status), json!(status.to_string()));
        }
    }

    /// Each of the launcher's words becomes the API's word of the same name, and a guest's end goes back unchanged.
    #[test]
    fn the_launchers_words_read_the_same_in_the_api() {
        use vmlet_control::{Exit, Phase};
        let phases = [
            Phase::Starting,
            Phase::Running,
            Phase::Paused,
            Phase::ShuttingDown,
            Phase::Stopped,
            Phase::Failed,
        ];
        for phase in phases {
            let api = serde_json::to_value(ReportedState::from(phase)).unwrap();
            assert_eq!(api.as_str().unwrap().to_lowercase(), phase.to_string().replace('_', ""));
        }
        for exit in [Exit::PoweredOff, Exit::ShutDown, Exit::Destroyed, Exit::Crashed] {
            let api = GuestExit::from(exit);
            let word = serde_json::to_value(api).unwrap();
            assert_eq!(word.as_str().unwrap().to_lowercase(), exit.to_string().replace('_', ""));
            assert_eq!(Exit::from(api), exit);
        }
        let os: vmlet_control::GuestOsInfo = serde_json::from_value(json!({
            "name": "Debian GNU/Linux", "id": "debian", "pretty_name": "Debian GNU/Linux 12 (bookworm)",
            "version": "12 (bookworm)", "version_id": "12", "kernel_release": "6.1.0-28-cloud-amd64",
            "kernel_version": "#1 SMP", "machine": "x86_64"
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(GuestOsInfo::from(&os)).unwrap(),
            json!({
                "name": "Debian GNU/Linux", "id": "debian", "prettyName": "Debian GNU/Linux 12 (bookworm)",
                "version": "12 (bookworm)", "versionId": "12", "kernelRelease": "6.1.0-28-cloud-amd64",
                "kernelVersion": "#1 SMP", "machine": "x86_64"
            })
        );
    }
}
