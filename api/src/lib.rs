//! The `VirtualMachine` custom resource (group `vmlet.dev`, version `v1alpha1`), shared by the handler, which
//! reconciles it, and the launcher, which runs the VM its template describes.
//!
//! The field layout is KubeVirt's `VirtualMachine`, so a KubeVirt manifest ports by changing its `apiVersion`.
//! Only what vmlet implements is declared, and every struct refuses unknown fields: a KubeVirt feature vmlet lacks
//! is rejected by name (by the API server's field validation, or by the manifest parser) instead of being ignored.
//!
//! The Kubernetes side of the types (kube's `CustomResource` and schemars' `JsonSchema` derives, the CEL rules, the
//! CRDs of `crd` and `crds`) comes with the `kubernetes` feature, for the programs that talk to the API server.
//! Without it the same types read and write the same YAML and JSON, and the launcher, which only reads a VM, links
//! neither kube nor schemars.

#[cfg(not(feature = "kubernetes"))]
#[macro_use]
mod resource;

pub mod defaults;
pub mod instancetype;
pub mod manifest;
mod probe;
mod quantity;
#[cfg(feature = "kubernetes")]
mod schema;
mod status;
mod validate;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
#[cfg(feature = "kubernetes")]
use kube::CustomResource;
#[cfg(feature = "kubernetes")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use probe::{ExecAction, HttpGetAction, Probe, ProbeCheck, ProbeTiming, TcpSocketAction};
pub use quantity::{ParseQuantityError, parse_quantity};
#[cfg(feature = "kubernetes")]
pub use schema::{crd, crds};
pub use status::{
    Condition, ConditionType, GuestExit, GuestOsInfo, InterfaceStatus, LauncherReport, Phase, PhaseTransition,
    PrintableStatus, ReportedState, StartFailure, VirtualMachineStatus,
};
pub use validate::{Binding, CloudInitKind, InvalidSpec, Problem, TEMPLATE_SPEC_PATH, decode_base64};

/// The annotation that starts or stops a VM whose run strategy is `Manual`: `start` or `stop`. It is a request, not
/// a state: the controller acts on it once and removes it (KubeVirt's start and stop subresources). Under any other
/// run strategy it is removed with a warning event, since `spec.runStrategy` decides.
pub const RUN_ANNOTATION: &str = "vmlet.dev/run";

/// A virtual machine that runs in a pod of its own and takes that pod's network identity.
// Each printer column repeats `type_`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(CustomResource, JsonSchema))]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "vmlet.dev",
        version = "v1alpha1",
        kind = "VirtualMachine",
        namespaced,
        shortname = "vm",
        status = "VirtualMachineStatus",
        derive = "PartialEq",
        derive = "Default",
        printcolumn(name = "Status", type_ = "string", json_path = ".status.printableStatus"),
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(name = "IP", type_ = "string", json_path = ".status.interfaces[0].ipAddress"),
        printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.running) && has(self.runStrategy))",
    "message": "running and runStrategy are mutually exclusive",
}])))]
pub struct VirtualMachineSpec {
    /// When the VM should run. Halted when neither this nor `running` is given, as in KubeVirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// KubeVirt's older form of the run strategy: `true` is `Always`, `false` is `Halted`. Not with `runStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// The instance type that sizes the VM; resolved into the template when the VM starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<instancetype::InstancetypeMatcher>,
    /// The preference that fills in what the template leaves open; resolved when the VM starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<instancetype::PreferenceMatcher>,
    pub template: VirtualMachineTemplate,
}

#[cfg(not(feature = "kubernetes"))]
plain_resource!(
    /// A virtual machine that runs in a pod of its own and takes that pod's network identity.
    VirtualMachine,
    VirtualMachineSpec,
    status = VirtualMachineStatus
);

impl VirtualMachineSpec {
    /// The run strategy in force: `runStrategy`, else the one `running` stands for, else Halted.
    pub fn run_strategy(&self) -> RunStrategy {
        match (self.run_strategy, self.running) {
            (Some(strategy), _) => strategy,
            (None, Some(true)) => RunStrategy::Always,
            (None, Some(false) | None) => RunStrategy::Halted,
        }
    }
}

/// What the handler does about a VM's lifetime (KubeVirt's semantics).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum RunStrategy {
    /// Keep it running: restart it whenever it stops, for whatever reason.
    Always,
    /// Restart it when it fails, not when the guest shuts down cleanly.
    RerunOnFailure,
    /// Run it to completion once, and never again.
    Once,
    /// Start and stop only on explicit request: the annotation `vmlet.dev/run: start` or `stop`, which the controller
    /// acts on once and removes.
    Manual,
    /// Keep it stopped.
    #[default]
    Halted,
}

/// The VM instance's template: labels and annotations for its pod, and the VM itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    pub spec: VirtualMachineInstanceSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    /// Written as `null` by `kubectl get -o yaml`; accepted for that, and never set by vmlet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One VM: its virtual hardware, how its interfaces meet the pod network, and where its disks come from.
///
/// The API server checks the names that refer to each other (CEL rules); `validate` checks them again with the
/// rest, for manifests that never meet an API server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.domain.devices) || !has(self.domain.devices.interfaces) || self.domain.devices.interfaces.all(i, has(self.networks) && self.networks.exists(n, n.name == i.name))",
        "message": "every interface must name a network of spec.networks",
    },
    {
        "rule": "!has(self.networks) || self.networks.all(n, has(self.domain.devices) && has(self.domain.devices.interfaces) && self.domain.devices.interfaces.exists(i, i.name == n.name))",
        "message": "every network must have an interface of the same name",
    },
    {
        "rule": "!has(self.domain.devices) || !has(self.domain.devices.disks) || self.domain.devices.disks.all(d, has(self.volumes) && self.volumes.exists(v, v.name == d.name))",
        "message": "every disk must name a volume of spec.volumes",
    },
])))]
pub struct VirtualMachineInstanceSpec {
    pub domain: DomainSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    pub networks: Vec<Network>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Seconds the guest is given to shut down after an ACPI power-button press before it is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u32>,
    /// The guest's host name (handed out by the launcher's DHCP server); defaults to the VM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// With a headless Service of this name, the guest's name is `HOSTNAME.SUBDOMAIN.NAMESPACE.svc.DOMAIN`; the
    /// guest gets `SUBDOMAIN.NAMESPACE.svc.DOMAIN` as its first search domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// The launcher Pod's affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// The launcher Pod's priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// What an eviction of the launcher Pod means. vmlet does not migrate: under every strategy an evicted VM's
    /// guest is shut down within its grace period, and its run strategy decides whether it starts again elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    /// SSH public keys given to the guest through its cloud-init data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 16)))]
    pub access_credentials: Vec<AccessCredential>,
    /// Checked while the guest runs: the VM is Ready only while this passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Checked while the guest runs: when this fails, the VM's run ends as failed and its run strategy decides
    /// whether it starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
}

/// KubeVirt's eviction strategies; all are accepted, none migrates (see `evictionStrategy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum EvictionStrategy {
    None,
    LiveMigrate,
    LiveMigrateIfPossible,
    External,
}

/// A credential put into the guest (KubeVirt's `accessCredentials`); vmlet offers SSH public keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessCredential {
    pub ssh_public_key: SshPublicKeyAccessCredential,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPublicKeyAccessCredential {
    pub source: SshPublicKeySource,
    pub propagation_method: SshPublicKeyPropagation,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPublicKeySource {
    /// A Secret whose every value holds public keys, one per line. In standalone mode, a Secret manifest in the
    /// manifests folder.
    pub secret: SecretSource,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 253)))]
    pub secret_name: String,
}

/// How the keys reach the guest: merged into the user data of the VM's `cloudInitNoCloud` volume, or into the
/// metadata of its `cloudInitConfigDrive` volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.noCloud) != has(self.configDrive)",
    "message": "exactly one propagation method is required: noCloud or configDrive",
}])))]
pub struct SshPublicKeyPropagation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_cloud: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<Empty>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    #[serde(default)]
    pub devices: Devices,
}

/// Hypervisor features the guest sees. ACPI (which carries the power button a graceful shutdown presses) and the
/// APIC (which SMP guests need) are on unless `enabled: false`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Features {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic: Option<FeatureState>,
    /// System management mode; UEFI Secure Boot turns it on regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smm: Option<FeatureState>,
    /// Hyper-V enlightenments for Windows guests; given to the guest only under KVM (QEMU's emulator has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<HyperV>,
}

/// A feature named is on unless `enabled: false`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl FeatureState {
    pub fn on(state: Option<&FeatureState>) -> bool {
        state.is_some_and(|s| s.enabled != Some(false))
    }
}

/// The basic Hyper-V set KubeVirt offers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HyperV {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaxed: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<Spinlocks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpindex: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synictimer: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequencies: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenlightenment: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlbflush: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipi: Option<FeatureState>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spinlocks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retries before a spinlock is reported to the host; at least 4095 (Hyper-V's minimum), 8191 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 4095)))]
    pub spinlocks: Option<u32>,
}

/// The guest's real-time clock: UTC (the default) or a time zone's local time, and its timers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.utc) && has(self.timezone))",
    "message": "a clock is either utc or timezone",
}])))]
pub struct Clock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc: Option<ClockOffsetUtc>,
    /// An IANA time zone (`Europe/Paris`), for guests that keep local time (Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timers>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClockOffsetUtc {
    /// Seconds added to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpet: Option<Timer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<Timer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<Timer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<Timer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<Timer>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// `delay`, `catchup`, `merge` or `discard` (libvirt's tick policies; not every timer takes every one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<String>,
    /// The rtc's time source: `guest` or `wall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
}

/// The guest's vCPU topology; vCPUs = sockets × cores × threads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub threads: Option<u32>,
    /// The CPU model under KVM: `host-passthrough` (the default), `host-model` or a QEMU model name. QEMU's
    /// emulator always runs its baseline model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Memory {
    /// The memory the guest sees, as a Kubernetes quantity (`256Mi`, `2Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
}

/// Pod resources. The guest's memory defaults to `requests.memory` when `memory.guest` is not given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// QEMU's machine type; `q35` by default.
    #[serde(rename = "type")]
    pub machine_type: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Firmware {
    /// The SMBIOS UUID; derived from the VM's uid when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The SMBIOS system serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// BIOS (the default) or UEFI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.bios) && has(self.efi))",
    "message": "a bootloader is either bios or efi",
}])))]
pub struct Bootloader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<Bios>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi: Option<Efi>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bios {
    /// SeaBIOS's own messages on the serial console (they always are with vmlet; accepted for KubeVirt's manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_serial: Option<bool>,
}

/// UEFI firmware (OVMF). Secure Boot is on unless `secureBoot: false`, as in KubeVirt; it needs SMM, which vmlet
/// turns on for it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Efi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Keep the EFI variables across restarts of the VM (in standalone mode; a pod's variables go with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// Direct kernel boot: QEMU loads a kernel and initrd instead of booting from a disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBoot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// The kernel and initrd inside a container image (KubeVirt's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
    /// The kernel and initrd as files on the node (vmlet's addition, for machines without a container runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<KernelBootHostPath>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBootContainer {
    pub image: String,
    pub kernel_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBootHostPath {
    pub kernel_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    pub interfaces: Vec<Interface>,
    /// A virtio RNG. vmlet gives every guest one (guests can block early in boot waiting for entropy without
    /// it); accepted for KubeVirt's manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Empty>,
    /// A VGA card and a VNC server; on unless `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
    /// The serial console (and its log); on unless `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    /// Multi-queue virtio NICs. Only `false`: the launcher's taps have one queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_multiqueue: Option<bool>,
}

/// A disk the guest sees, backed by the volume of the same name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.disk) && has(self.cdrom))",
    "message": "a disk is either a disk or a cdrom",
}])))]
pub struct Disk {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 63)))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<DiskTarget>,
    /// The disks the firmware tries, lowest first; disks without one are not booted from when any disk has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub boot_order: Option<u32>,
    /// The serial number the guest sees (`/dev/disk/by-id/virtio-SERIAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 20)))]
    pub serial: Option<String>,
    /// The host's cache mode: `none` (direct I/O), `writethrough` or `writeback`; QEMU's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskTarget {
    /// `virtio` (a disk's default), `sata` (a cdrom's default) or `scsi` (virtio-scsi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

/// A guest NIC. Exactly one binding says how it meets the pod network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.bridge), has(self.masquerade), has(self.tap), has(self.managedTap)].filter(b, b).size() == 1",
    "message": "exactly one binding is required: bridge, masquerade, tap or managedTap",
}])))]
pub struct Interface {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 63)))]
    pub name: String,
    /// The guest takes the pod's IP and MAC; the pod interface is bridged to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Empty>,
    /// The guest sits on a private subnet behind NAT in the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Empty>,
    /// Like `bridge`, but the pod interface and the guest's tap are joined by tc redirects, with no bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<Empty>,
    /// The plumbing of `bridge` with no DHCP from vmlet: the CNI's own DHCP reaches the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_tap: Option<Empty>,
    /// Ports forwarded to the guest under `masquerade`; all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The guest NIC's MAC; by default the pod's (bridge, tap) or a generated one (masquerade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// `virtio` (the default), or `e1000` or `e1000e` for guests without virtio drivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// An empty object, the value of a binding field (`bridge: {}`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A plain object: schemars would say `additionalProperties: false`, which a structural schema may not, and kube's
/// rewriter drops it only beside properties. The API server's field validation still rejects unknown fields.
#[cfg(feature = "kubernetes")]
impl JsonSchema for Empty {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Empty".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "object" })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (the default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1, max = 65535)))]
    pub port: u32,
}

/// A network the VM attaches to; vmlet offers the pod network only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 63)))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodNetwork {
    /// The guest's private IPv4 subnet under `masquerade` (default `10.0.2.0/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "vmNetworkCIDR")]
    pub vm_network_cidr: Option<String>,
    /// The guest's private IPv6 subnet under `masquerade` (default `fd10:0:2::/120`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "vmIPv6NetworkCIDR")]
    pub vm_ipv6_network_cidr: Option<String>,
}

/// Where a disk's data comes from. Exactly one source is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.containerDisk), has(self.emptyDisk), has(self.hostDisk), has(self.persistentVolumeClaim), has(self.cloudInitNoCloud), has(self.cloudInitConfigDrive)].filter(s, s).size() == 1",
    "message": "exactly one source is required: containerDisk, emptyDisk, hostDisk, persistentVolumeClaim, cloudInitNoCloud or cloudInitConfigDrive",
}])))]
pub struct Volume {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 63)))]
    pub name: String,
    /// A disk image inside a container image, used through a copy-on-write overlay that dies with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDisk>,
    /// A blank disk of the given capacity that lives as long as the VM's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDisk>,
    /// A raw or qcow2 image file, or a block device, on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    /// A persistent volume claim holding `disk.img`, or a block volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaim>,
    /// cloud-init NoCloud data, given to the guest as a small read-only disk labelled `cidata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    /// cloud-init data in OpenStack's config drive layout, on a small read-only disk labelled `config-2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_config_drive: Option<CloudInitSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDisk {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1)))]
    pub image: String,
    /// The image file's path inside the container image; by default the one file under `/disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`; by default `Always` for a `:latest` or untagged image, `IfNotPresent`
    /// otherwise, as Kubernetes does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// A Secret of type `kubernetes.io/dockerconfigjson` with the registry's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDisk {
    /// A Kubernetes quantity (`1Gi`).
    pub capacity: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDisk {
    pub path: String,
    /// `Disk`: the file or device must exist. `DiskOrCreate`: a sparse raw file of `capacity` is made if missing.
    #[serde(rename = "type")]
    pub disk_type: HostDiskType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
pub enum HostDiskType {
    #[default]
    Disk,
    DiskOrCreate,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaim {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// cloud-init's user data and network data, each given at most one way: inline, inline in base64, or from a Secret
/// (key `userdata` or `userData`, `networkdata` or `networkData`; in standalone mode a Secret manifest in the manifests
/// folder). Network data alone is allowed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.userData), has(self.userDataBase64), has(self.secretRef)].filter(s, s).size() <= 1",
        "message": "give user data at most one way: userData, userDataBase64 or secretRef",
    },
    {
        "rule": "[has(self.networkData), has(self.networkDataBase64), has(self.networkDataSecretRef)].filter(s, s).size() <= 1",
        "message": "give network data at most one way: networkData, networkDataBase64 or networkDataSecretRef",
    },
])))]
pub struct CloudInitSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
}

/// An object of the VM's namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 253)))]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instancetype::VirtualMachineClusterInstancetype;

    /// The objects read and write the same JSON with the `kubernetes` feature and without it, as the launcher
    /// builds them: `apiVersion` and `kind` first, `status` only when there is one.
    #[test]
    fn objects_write_their_api_version_and_kind() {
        let yaml = "apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: vm1, namespace: ns}\n\
                    spec: {running: true, template: {spec: {domain: {}}}}\n";
        let mut vm: VirtualMachine = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(vm.metadata.name.as_deref(), Some("vm1"));
        let head = r#"{"apiVersion":"vmlet.dev/v1alpha1","kind":"VirtualMachine","metadata":{"name":"vm1","namespace":"ns"},"spec":{"running":true,"template":{"spec":{"domain":{"devices":{}}}}}"#;
        assert_eq!(serde_json::to_string(&vm).unwrap(), format!("{head}}}"));
        vm.status = Some(VirtualMachineStatus::default());
        let written = serde_json::to_string(&vm).unwrap();
        assert_eq!(written, format!(r#"{head},"status":{{}}}}"#));
        assert_eq!(serde_json::from_str::<VirtualMachine>(&written).unwrap(), vm);

        let yaml = "apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachineClusterInstancetype\nmetadata: {name: small}\n\
                    spec: {cpu: {guest: 1}, memory: {guest: 1Gi}}\n";
        let instancetype: VirtualMachineClusterInstancetype = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            serde_json::to_string(&instancetype).unwrap(),
            r#"{"apiVersion":"vmlet.dev/v1alpha1","kind":"VirtualMachineClusterInstancetype","metadata":{"name":"small"},"spec":{"cpu":{"guest":1},"memory":{"guest":"1Gi"}}}"#
        );
    }
}
