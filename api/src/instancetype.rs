//! Instance types and preferences (KubeVirt's `instancetype.kubevirt.io` kinds, in vmlet's group): an instance type
//! fixes a VM's size, a preference fills in what the VM leaves open. Both are resolved into the VM when it starts,
//! before the defaults, with KubeVirt's precedence: what the instance type sets, the VM may not set too (a
//! conflict, refused); what a preference prefers, the VM's own value overrides.

use std::collections::BTreeMap;

#[cfg(feature = "kubernetes")]
use kube::CustomResource;
#[cfg(feature = "kubernetes")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{InvalidSpec, Problem};
use crate::{
    Bootloader, Cpu, DiskTarget, Efi, FeatureState, Machine, Memory, VirtualMachine, VirtualMachineInstanceSpec,
};

/// The instance type a VM names: namespaced, or cluster-wide (the default kind, as in KubeVirt).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeMatcher {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 253)))]
    pub name: String,
    /// `VirtualMachineInstancetype` or `VirtualMachineClusterInstancetype` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The preference a VM names: namespaced, or cluster-wide (the default kind).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceMatcher {
    #[cfg_attr(feature = "kubernetes", schemars(length(min = 1, max = 253)))]
    pub name: String,
    /// `VirtualMachinePreference` or `VirtualMachineClusterPreference` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

pub const INSTANCETYPE: &str = "VirtualMachineInstancetype";
pub const CLUSTER_INSTANCETYPE: &str = "VirtualMachineClusterInstancetype";
pub const PREFERENCE: &str = "VirtualMachinePreference";
pub const CLUSTER_PREFERENCE: &str = "VirtualMachineClusterPreference";

impl InstancetypeMatcher {
    /// Whether the kind is the cluster-wide one; `None` for a kind that is neither.
    pub fn cluster_wide(&self) -> Option<bool> {
        match self.kind.as_deref() {
            None | Some(CLUSTER_INSTANCETYPE) => Some(true),
            Some(INSTANCETYPE) => Some(false),
            Some(_) => None,
        }
    }
}

impl PreferenceMatcher {
    /// Whether the kind is the cluster-wide one; `None` for a kind that is neither.
    pub fn cluster_wide(&self) -> Option<bool> {
        match self.kind.as_deref() {
            None | Some(CLUSTER_PREFERENCE) => Some(true),
            Some(PREFERENCE) => Some(false),
            Some(_) => None,
        }
    }
}

/// A VM's size: its vCPUs and memory, and where it may run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(CustomResource, JsonSchema))]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "vmlet.dev",
        version = "v1alpha1",
        kind = "VirtualMachineInstancetype",
        namespaced,
        shortname = "vmit",
        derive = "PartialEq",
        derive = "Default"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeSpec {
    pub cpu: CpuInstancetype,
    pub memory: MemoryInstancetype,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

#[cfg(not(feature = "kubernetes"))]
plain_resource!(
    /// A VM's size: its vCPUs and memory, and where it may run.
    VirtualMachineInstancetype,
    InstancetypeSpec
);

/// The cluster-wide form of [`VirtualMachineInstancetype`], with the same spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(CustomResource, JsonSchema))]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "vmlet.dev",
        version = "v1alpha1",
        kind = "VirtualMachineClusterInstancetype",
        shortname = "vmcit",
        derive = "PartialEq",
        derive = "Default"
    )
)]
#[serde(transparent)]
pub struct ClusterInstancetypeSpec(pub InstancetypeSpec);

#[cfg(not(feature = "kubernetes"))]
plain_resource!(
    /// The cluster-wide form of [`VirtualMachineInstancetype`], with the same spec.
    VirtualMachineClusterInstancetype,
    ClusterInstancetypeSpec
);

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuInstancetype {
    /// The guest's vCPUs, laid out as the preference's topology says (sockets by default).
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub guest: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryInstancetype {
    /// A Kubernetes quantity (`2Gi`).
    pub guest: String,
}

/// What a VM of some kind (an OS, a workload) works best with, used where the VM says nothing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(CustomResource, JsonSchema))]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "vmlet.dev",
        version = "v1alpha1",
        kind = "VirtualMachinePreference",
        namespaced,
        shortname = "vmpref",
        derive = "PartialEq",
        derive = "Default"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPreference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DevicePreferences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturePreferences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwarePreferences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachinePreferences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_termination_grace_period_seconds: Option<u32>,
}

#[cfg(not(feature = "kubernetes"))]
plain_resource!(
    /// What a VM of some kind (an OS, a workload) works best with, used where the VM says nothing.
    VirtualMachinePreference,
    PreferenceSpec
);

/// The cluster-wide form of [`VirtualMachinePreference`], with the same spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(CustomResource, JsonSchema))]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "vmlet.dev",
        version = "v1alpha1",
        kind = "VirtualMachineClusterPreference",
        shortname = "vmcpref",
        derive = "PartialEq",
        derive = "Default"
    )
)]
#[serde(transparent)]
pub struct ClusterPreferenceSpec(pub PreferenceSpec);

#[cfg(not(feature = "kubernetes"))]
plain_resource!(
    /// The cluster-wide form of [`VirtualMachinePreference`], with the same spec.
    VirtualMachineClusterPreference,
    ClusterPreferenceSpec
);

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuPreference {
    /// How the instance type's vCPUs are laid out: `sockets` (the default), `cores`, `threads` or `any` (KubeVirt's
    /// older `preferSockets` … are read too).
    #[serde(default, rename = "preferredCPUTopology", skip_serializing_if = "Option::is_none")]
    pub preferred_cpu_topology: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevicePreferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_cdrom_bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_interface_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_graphics_device: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_serial_console: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeaturePreferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_acpi: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_apic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_smm: Option<FeatureState>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FirmwarePreferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_efi: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_secure_boot: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachinePreferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_machine_type: Option<String>,
}

/// The instance types and preferences a VM may name: namespaced ones by namespace and name, cluster-wide ones by
/// name. Standalone mode and `validate` fill it from manifests, the controller with the objects a VM names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub instancetypes: BTreeMap<(String, String), InstancetypeSpec>,
    pub cluster_instancetypes: BTreeMap<String, InstancetypeSpec>,
    pub preferences: BTreeMap<(String, String), PreferenceSpec>,
    pub cluster_preferences: BTreeMap<String, PreferenceSpec>,
}

/// The kinds a [`Catalog`] holds.
pub const KINDS: [&str; 4] = [INSTANCETYPE, CLUSTER_INSTANCETYPE, PREFERENCE, CLUSTER_PREFERENCE];

impl Catalog {
    /// Adds a manifest of one of [`KINDS`] (`kind`), in `namespace`; an error says why it cannot be used.
    pub fn insert(&mut self, kind: &str, namespace: &str, name: &str, spec: serde_json::Value) -> Result<(), String> {
        let key = (namespace.to_owned(), name.to_owned());
        let spec_error = |e: serde_json::Error| format!("spec: {e}");
        match kind {
            INSTANCETYPE => {
                self.instancetypes
                    .insert(key, serde_json::from_value(spec).map_err(spec_error)?);
            }
            CLUSTER_INSTANCETYPE => {
                self.cluster_instancetypes
                    .insert(name.to_owned(), serde_json::from_value(spec).map_err(spec_error)?);
            }
            PREFERENCE => {
                self.preferences
                    .insert(key, serde_json::from_value(spec).map_err(spec_error)?);
            }
            CLUSTER_PREFERENCE => {
                self.cluster_preferences
                    .insert(name.to_owned(), serde_json::from_value(spec).map_err(spec_error)?);
            }
            _ => return Err(format!("{kind} is not an instance type or preference")),
        }
        Ok(())
    }

    /// Resolves the instance type and preference `vm` names from the catalog; refuses those it does not hold.
    pub fn resolve(&self, vm: &mut VirtualMachine) -> Result<(), InvalidSpec> {
        let namespace = vm.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let mut problems = Vec::new();
        let instancetype = vm.spec.instancetype.as_ref().and_then(|m| {
            let found = match m.cluster_wide() {
                Some(true) => self.cluster_instancetypes.get(&m.name),
                Some(false) => self.instancetypes.get(&(namespace.clone(), m.name.clone())),
                None => {
                    problems.push(bad_kind(
                        "spec.instancetype.kind",
                        m.kind.as_deref(),
                        INSTANCETYPE,
                        CLUSTER_INSTANCETYPE,
                    ));
                    return None;
                }
            };
            if found.is_none() {
                problems.push(not_found(
                    "spec.instancetype",
                    m.kind.as_deref().unwrap_or(CLUSTER_INSTANCETYPE),
                    &namespace,
                    &m.name,
                ));
            }
            found
        });
        let preference = vm.spec.preference.as_ref().and_then(|m| {
            let found = match m.cluster_wide() {
                Some(true) => self.cluster_preferences.get(&m.name),
                Some(false) => self.preferences.get(&(namespace.clone(), m.name.clone())),
                None => {
                    problems.push(bad_kind(
                        "spec.preference.kind",
                        m.kind.as_deref(),
                        PREFERENCE,
                        CLUSTER_PREFERENCE,
                    ));
                    return None;
                }
            };
            if found.is_none() {
                problems.push(not_found(
                    "spec.preference",
                    m.kind.as_deref().unwrap_or(CLUSTER_PREFERENCE),
                    &namespace,
                    &m.name,
                ));
            }
            found
        });
        // What was found is resolved even when something is missing, so that every problem is listed at once.
        if let Err(InvalidSpec(more)) = resolve(vm, instancetype, preference) {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(problems))
        }
    }
}

fn bad_kind(field: &str, kind: Option<&str>, namespaced: &str, cluster: &str) -> Problem {
    Problem {
        field: field.into(),
        message: format!("{kind:?} is not {namespaced} or {cluster}"),
    }
}

fn not_found(field: &str, kind: &str, namespace: &str, name: &str) -> Problem {
    let name = if kind.contains("Cluster") {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    };
    Problem {
        field: field.into(),
        message: format!("{kind} {name} not found"),
    }
}

/// Resolves `instancetype` and `preference` (those the VM names, found by the caller) into the VM's template, and
/// drops the VM's references to them. Refuses fields the VM sets that the instance type sets too.
pub fn resolve(
    vm: &mut VirtualMachine,
    instancetype: Option<&InstancetypeSpec>,
    preference: Option<&PreferenceSpec>,
) -> Result<(), InvalidSpec> {
    let spec = &mut vm.spec.template.spec;
    let mut problems = Vec::new();
    if let Some(preference) = preference {
        prefer(spec, preference);
    }
    if let Some(instancetype) = instancetype {
        size(spec, instancetype, preference, &mut problems);
    }
    if !problems.is_empty() {
        return Err(InvalidSpec(problems));
    }
    vm.spec.instancetype = None;
    vm.spec.preference = None;
    Ok(())
}

fn conflict(field: &str) -> Problem {
    Problem {
        field: format!("{}.{field}", crate::TEMPLATE_SPEC_PATH),
        message: "conflicts with the VM's instance type, which sets it".into(),
    }
}

fn size(
    spec: &mut VirtualMachineInstanceSpec,
    instancetype: &InstancetypeSpec,
    preference: Option<&PreferenceSpec>,
    problems: &mut Vec<Problem>,
) {
    let domain = &mut spec.domain;
    let cpu = domain.cpu.get_or_insert_with(Cpu::default);
    if cpu.sockets.is_some() || cpu.cores.is_some() || cpu.threads.is_some() {
        problems.push(conflict("domain.cpu"));
    }
    if instancetype.cpu.model.is_some() && cpu.model.is_some() {
        problems.push(conflict("domain.cpu.model"));
    }
    let vcpus = Some(instancetype.cpu.guest);
    let topology = preference
        .and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.preferred_cpu_topology.as_deref());
    match topology {
        None | Some("sockets" | "preferSockets" | "any" | "preferAny") => cpu.sockets = vcpus,
        Some("cores" | "preferCores") => cpu.cores = vcpus,
        Some("threads" | "preferThreads") => cpu.threads = vcpus,
        Some(other) => problems.push(Problem {
            field: "preference.cpu.preferredCPUTopology".into(),
            message: format!("{other:?} is not supported by vmlet: only sockets, cores, threads or any"),
        }),
    }
    if instancetype.cpu.model.is_some() {
        cpu.model.clone_from(&instancetype.cpu.model);
    }
    if domain.memory.as_ref().is_some_and(|m| m.guest.is_some()) {
        problems.push(conflict("domain.memory.guest"));
    }
    domain.memory = Some(Memory {
        guest: Some(instancetype.memory.guest.clone()),
    });
    if !instancetype.node_selector.is_empty() {
        if !spec.node_selector.is_empty() {
            problems.push(conflict("nodeSelector"));
        }
        spec.node_selector.clone_from(&instancetype.node_selector);
    }
}

/// Fills in what the VM leaves open; a preference never conflicts.
fn prefer(spec: &mut VirtualMachineInstanceSpec, preference: &PreferenceSpec) {
    let domain = &mut spec.domain;
    if let Some(devices) = &preference.devices {
        for disk in &mut domain.devices.disks {
            if disk.disk.is_none() && disk.cdrom.is_none() {
                disk.disk = Some(DiskTarget::default());
            }
            for (target, bus) in [
                (&mut disk.disk, &devices.preferred_disk_bus),
                (&mut disk.cdrom, &devices.preferred_cdrom_bus),
            ] {
                if let (Some(target), Some(bus)) = (target.as_mut(), bus) {
                    target.bus.get_or_insert_with(|| bus.clone());
                }
            }
        }
        if let Some(model) = &devices.preferred_interface_model {
            for interface in &mut domain.devices.interfaces {
                interface.model.get_or_insert_with(|| model.clone());
            }
        }
        let attach = &mut domain.devices;
        if attach.autoattach_graphics_device.is_none() {
            attach.autoattach_graphics_device = devices.preferred_autoattach_graphics_device;
        }
        if attach.autoattach_serial_console.is_none() {
            attach.autoattach_serial_console = devices.preferred_autoattach_serial_console;
        }
    }
    if let Some(features) = &preference.features {
        let given = domain.features.get_or_insert_with(Default::default);
        for (field, preferred) in [
            (&mut given.acpi, &features.preferred_acpi),
            (&mut given.apic, &features.preferred_apic),
            (&mut given.smm, &features.preferred_smm),
        ] {
            if field.is_none() {
                field.clone_from(preferred);
            }
        }
    }
    if let Some(firmware) = &preference.firmware
        && firmware.preferred_use_efi == Some(true)
    {
        let given = domain.firmware.get_or_insert_with(Default::default);
        if given.bootloader.is_none() && given.kernel_boot.is_none() {
            given.bootloader = Some(Bootloader {
                bios: None,
                efi: Some(Efi {
                    secure_boot: firmware.preferred_use_secure_boot,
                    persistent: None,
                }),
            });
        }
    }
    if let Some(machine) = preference
        .machine
        .as_ref()
        .and_then(|m| m.preferred_machine_type.as_ref())
    {
        let given = domain.machine.get_or_insert_with(Machine::default);
        if given.machine_type.is_empty() {
            given.machine_type.clone_from(machine);
        }
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = preference.preferred_termination_grace_period_seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = r#"
apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: sized}
spec:
  runStrategy: Always
  instancetype: {name: c2}
  preference: {name: linux, kind: VirtualMachinePreference}
  template:
    spec:
      domain:
        devices:
          disks: [{name: root, disk: {}}, {name: iso, cdrom: {}}]
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
      volumes:
      - {name: root, containerDisk: {image: example.org/disk:1}}
      - {name: iso, containerDisk: {image: example.org/iso:1}}
"#;

    fn instancetype() -> InstancetypeSpec {
        serde_json::from_value(serde_json::json!({"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}})).unwrap()
    }

    fn preference() -> PreferenceSpec {
        serde_json::from_value(serde_json::json!({
            "cpu": {"preferredCPUTopology": "cores"},
            "devices": {"preferredDiskBus": "sata", "preferredInterfaceModel": "e1000e"},
            "firmware": {"preferredUseEfi": true, "preferredUseSecureBoot": false},
            "machine": {"preferredMachineType": "pc-q35-7.2"},
            "preferredTerminationGracePeriodSeconds": 60,
        }))
        .unwrap()
    }

    #[test]
    fn the_instance_type_sizes_and_the_preference_fills_in() {
        let mut vm: VirtualMachine = serde_yaml::from_str(VM).unwrap();
        resolve(&mut vm, Some(&instancetype()), Some(&preference())).unwrap();
        assert_eq!(
            (vm.spec.instancetype.as_ref(), vm.spec.preference.as_ref()),
            (None, None)
        );
        let spec = &vm.spec.template.spec;
        let cpu = spec.domain.cpu.as_ref().unwrap();
        assert_eq!((cpu.sockets, cpu.cores), (None, Some(2)));
        assert_eq!(spec.guest_memory_bytes(), Some(1 << 30));
        let disks = &spec.domain.devices.disks;
        assert_eq!(disks[0].disk.as_ref().unwrap().bus.as_deref(), Some("sata"));
        assert_eq!(disks[1].cdrom.as_ref().unwrap().bus, None, "no cdrom preference");
        assert_eq!(spec.domain.devices.interfaces[0].model.as_deref(), Some("e1000e"));
        let efi = spec
            .domain
            .firmware
            .as_ref()
            .unwrap()
            .bootloader
            .as_ref()
            .unwrap()
            .efi
            .as_ref();
        assert_eq!(efi.unwrap().secure_boot, Some(false));
        assert_eq!(spec.domain.machine.as_ref().unwrap().machine_type, "pc-q35-7.2");
        assert_eq!(spec.termination_grace_period_seconds, Some(60));
        assert_eq!(vm.validate(), Ok(()));
    }

    #[test]
    fn what_the_instance_type_sets_the_vm_may_not() {
        let mut vm: VirtualMachine = serde_yaml::from_str(&VM.replace(
            "      domain:\n",
            "      domain:\n        cpu: {cores: 4}\n        memory: {guest: 128Mi}\n",
        ))
        .unwrap();
        let problems = resolve(&mut vm, Some(&instancetype()), None).unwrap_err().0;
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.template.spec.domain.cpu",
                "spec.template.spec.domain.memory.guest"
            ]
        );
    }

    #[test]
    fn the_vms_own_values_win_over_the_preference() {
        let mut vm: VirtualMachine =
            serde_yaml::from_str(&VM.replace("{name: root, disk: {}}", "{name: root, disk: {bus: virtio}}")).unwrap();
        resolve(&mut vm, None, Some(&preference())).unwrap();
        let disk = &vm.spec.template.spec.domain.devices.disks[0];
        assert_eq!(disk.disk.as_ref().unwrap().bus.as_deref(), Some("virtio"));
    }
}
