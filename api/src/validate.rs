//! The rules a VM spec must follow beyond its schema: names that refer to each other, one-of choices, values that
//! must parse. The launcher refuses a spec that breaks them before it touches anything; the handler reports them as
//! the VM's Failure condition.

use std::collections::BTreeSet;
use std::fmt;

use crate::{Interface, VirtualMachineInstanceSpec, Volume, parse_quantity};

/// One broken rule: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path below the VM instance spec, e.g. `domain.devices.interfaces[0]`.
    pub field: String,
    pub message: String,
}

/// Every broken rule of a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec(pub Vec<Problem>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid VM spec: ")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

/// The guest's smallest useful memory; less is almost certainly a unit mistake (`256` instead of `256Mi`).
const MIN_GUEST_MEMORY: u64 = 16 << 20;
const MAX_VCPUS: u32 = 512;

/// How a guest NIC meets the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Bridge,
    Masquerade,
    Tap,
    ManagedTap,
}

impl Interface {
    /// The one binding set, or `None` when there is none or more than one.
    pub fn binding(&self) -> Option<Binding> {
        let set = [
            (self.bridge.is_some(), Binding::Bridge),
            (self.masquerade.is_some(), Binding::Masquerade),
            (self.tap.is_some(), Binding::Tap),
            (self.managed_tap.is_some(), Binding::ManagedTap),
        ];
        let mut chosen = set.iter().filter(|(on, _)| *on).map(|&(_, b)| b);
        match (chosen.next(), chosen.next()) {
            (Some(binding), None) => Some(binding),
            _ => None,
        }
    }
}

impl Volume {
    fn source_count(&self) -> usize {
        [
            self.container_disk.is_some(),
            self.empty_disk.is_some(),
            self.host_disk.is_some(),
            self.persistent_volume_claim.is_some(),
            self.cloud_init_no_cloud.is_some(),
        ]
        .into_iter()
        .filter(|&set| set)
        .count()
    }
}

impl VirtualMachineInstanceSpec {
    /// The number of vCPUs: sockets × cores × threads, each 1 when unset.
    pub fn vcpus(&self) -> u32 {
        let cpu = self.domain.cpu.clone().unwrap_or_default();
        [cpu.sockets, cpu.cores, cpu.threads]
            .into_iter()
            .map(|n| n.unwrap_or(1))
            .fold(1u32, u32::saturating_mul)
    }

    /// The guest's memory in bytes: `memory.guest`, else `resources.requests.memory`.
    pub fn guest_memory_bytes(&self) -> Option<u64> {
        let domain = &self.domain;
        let text = domain.memory.as_ref().and_then(|m| m.guest.as_deref()).or_else(|| {
            domain
                .resources
                .as_ref()
                .and_then(|r| r.requests.get("memory"))
                .map(String::as_str)
        })?;
        parse_quantity(text).ok()
    }

    /// Checks every rule, and reports all that are broken at once.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| problems.push(Problem { field, message });

        self.check_compute(&mut problem);
        self.check_network(&mut problem);
        self.check_storage(&mut problem);
        if let Some(hostname) = &self.hostname
            && !is_dns_label(hostname)
        {
            problem(
                "hostname".into(),
                format!("{hostname:?} is not a DNS label (lower-case letters, digits, '-')"),
            );
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(problems))
        }
    }

    fn check_compute(&self, problem: &mut impl FnMut(String, String)) {
        let domain = &self.domain;
        if self.vcpus() > MAX_VCPUS {
            problem(
                "domain.cpu".into(),
                format!("{} vCPUs exceed the maximum of {MAX_VCPUS}", self.vcpus()),
            );
        }
        let guest = domain.memory.as_ref().and_then(|m| m.guest.as_deref());
        let requested = domain.resources.as_ref().and_then(|r| r.requests.get("memory"));
        let (field, text) = match (guest, requested) {
            (Some(text), _) => ("domain.memory.guest", text),
            (None, Some(text)) => ("domain.resources.requests.memory", text.as_str()),
            (None, None) => {
                problem("domain.memory.guest".into(), "the guest's memory is required".into());
                return self.check_boot(problem);
            }
        };
        match parse_quantity(text) {
            Ok(bytes) if bytes < MIN_GUEST_MEMORY => {
                problem(field.into(), format!("{text} is less than the minimum of 16Mi"));
            }
            Ok(_) => {}
            Err(e) => problem(field.into(), e.to_string()),
        }
        if let Some(resources) = &domain.resources {
            for (kind, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
                for (name, value) in map.iter().filter(|(name, _)| name.as_str() == "memory") {
                    if let Err(e) = parse_quantity(value) {
                        problem(format!("domain.resources.{kind}.{name}"), e.to_string());
                    }
                }
            }
        }
        if let Some(machine) = &domain.machine
            && !matches!(machine.machine_type.as_str(), "q35" | "pc")
            && !machine.machine_type.starts_with("pc-")
        {
            problem(
                "domain.machine.type".into(),
                format!("{:?} is not q35 or a pc machine", machine.machine_type),
            );
        }
        self.check_boot(problem);
    }

    fn check_boot(&self, problem: &mut impl FnMut(String, String)) {
        let kernel_boot = self.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref());
        match kernel_boot {
            Some(kb) => match (&kb.container, &kb.host_path) {
                (Some(_), Some(_)) => problem(
                    "domain.firmware.kernelBoot".into(),
                    "set either container or hostPath, not both".into(),
                ),
                (None, None) => problem(
                    "domain.firmware.kernelBoot".into(),
                    "a kernel source is required: container or hostPath".into(),
                ),
                _ => {}
            },
            None if self.domain.devices.disks.is_empty() => problem(
                "domain".into(),
                "nothing to boot: give firmware.kernelBoot or at least one disk".into(),
            ),
            None => {}
        }
    }

    fn check_network(&self, problem: &mut impl FnMut(String, String)) {
        let interfaces = &self.domain.devices.interfaces;
        if interfaces.len() > 1 {
            problem(
                "domain.devices.interfaces".into(),
                "only one interface is supported: the pod network's".into(),
            );
        }
        for (i, iface) in interfaces.iter().enumerate() {
            let field = format!("domain.devices.interfaces[{i}]");
            let Some(binding) = iface.binding() else {
                problem(
                    field,
                    "exactly one binding is required: bridge, masquerade, tap or managedTap".into(),
                );
                continue;
            };
            if !iface.ports.is_empty() && binding != Binding::Masquerade {
                problem(
                    format!("{field}.ports"),
                    "ports are forwarded only with the masquerade binding".into(),
                );
            }
            for (j, port) in iface.ports.iter().enumerate() {
                if !(1..=65535).contains(&port.port) {
                    problem(
                        format!("{field}.ports[{j}].port"),
                        format!("{} is not a port number", port.port),
                    );
                }
                if let Some(protocol) = port.protocol.as_deref().filter(|p| !matches!(*p, "TCP" | "UDP")) {
                    problem(
                        format!("{field}.ports[{j}].protocol"),
                        format!("{protocol:?} is not TCP or UDP"),
                    );
                }
            }
            if let Some(mac) = &iface.mac_address
                && !is_unicast_mac(mac)
            {
                problem(
                    format!("{field}.macAddress"),
                    format!("{mac:?} is not a unicast MAC address"),
                );
            }
            if let Some(model) = iface.model.as_deref().filter(|m| *m != "virtio") {
                problem(
                    format!("{field}.model"),
                    format!("{model:?} is not offered; only virtio"),
                );
            }
            if !self.networks.iter().any(|n| n.name == iface.name) {
                problem(format!("{field}.name"), format!("no network is named {:?}", iface.name));
            }
        }
        for (i, network) in self.networks.iter().enumerate() {
            let field = format!("networks[{i}]");
            if network.pod.is_none() {
                problem(
                    field.clone(),
                    "a source is required; vmlet offers only the pod network (pod: {})".into(),
                );
            }
            if !interfaces.iter().any(|iface| iface.name == network.name) {
                problem(
                    format!("{field}.name"),
                    format!("no interface is named {:?}", network.name),
                );
            }
        }
    }

    fn check_storage(&self, problem: &mut impl FnMut(String, String)) {
        let disks = &self.domain.devices.disks;
        let mut names = BTreeSet::new();
        for (i, disk) in disks.iter().enumerate() {
            let field = format!("domain.devices.disks[{i}]");
            if !names.insert(disk.name.as_str()) {
                problem(format!("{field}.name"), format!("{:?} names two disks", disk.name));
            }
            if disk.disk.is_some() && disk.cdrom.is_some() {
                problem(field.clone(), "set either disk or cdrom, not both".into());
            }
            if let Some(bus) = disk
                .disk
                .as_ref()
                .and_then(|d| d.bus.as_deref())
                .filter(|b| *b != "virtio")
            {
                problem(
                    format!("{field}.disk.bus"),
                    format!("{bus:?} is not offered; only virtio"),
                );
            }
            if let Some(bus) = disk
                .cdrom
                .as_ref()
                .and_then(|d| d.bus.as_deref())
                .filter(|b| !matches!(*b, "sata"))
            {
                problem(
                    format!("{field}.cdrom.bus"),
                    format!("{bus:?} is not offered; only sata"),
                );
            }
            if !self.volumes.iter().any(|v| v.name == disk.name) {
                problem(format!("{field}.name"), format!("no volume is named {:?}", disk.name));
            }
        }
        for (i, volume) in self.volumes.iter().enumerate() {
            let field = format!("volumes[{i}]");
            if volume.source_count() != 1 {
                problem(
                    field.clone(),
                    "exactly one source is required: containerDisk, emptyDisk, hostDisk, \
                     persistentVolumeClaim or cloudInitNoCloud"
                        .into(),
                );
            }
            if !disks.iter().any(|d| d.name == volume.name) {
                problem(format!("{field}.name"), format!("no disk is named {:?}", volume.name));
            }
            if let Some(empty) = &volume.empty_disk
                && let Err(e) = parse_quantity(&empty.capacity)
            {
                problem(format!("{field}.emptyDisk.capacity"), e.to_string());
            }
            if let Some(host) = &volume.host_disk {
                if !host.path.starts_with('/') {
                    problem(
                        format!("{field}.hostDisk.path"),
                        format!("{:?} is not an absolute path", host.path),
                    );
                }
                match (&host.capacity, host.disk_type) {
                    (Some(capacity), _) => {
                        if let Err(e) = parse_quantity(capacity) {
                            problem(format!("{field}.hostDisk.capacity"), e.to_string());
                        }
                    }
                    (None, crate::HostDiskType::DiskOrCreate) => problem(
                        format!("{field}.hostDisk.capacity"),
                        "DiskOrCreate needs the capacity of the disk to create".into(),
                    ),
                    (None, crate::HostDiskType::Disk) => {}
                }
            }
            if let Some(cloud_init) = &volume.cloud_init_no_cloud
                && cloud_init.user_data.is_some() == cloud_init.user_data_base64.is_some()
            {
                problem(
                    format!("{field}.cloudInitNoCloud"),
                    "exactly one of userData and userDataBase64 is required".into(),
                );
            }
        }
    }
}

/// An RFC 1123 label, as Kubernetes requires of host names.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes.first().is_some_and(|b| *b != b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

fn is_unicast_mac(s: &str) -> bool {
    let octets: Vec<_> = s.split(':').collect();
    octets.len() == 6
        && octets.iter().all(|o| o.len() == 2 && u8::from_str_radix(o, 16).is_ok())
        && u8::from_str_radix(octets[0], 16).is_ok_and(|first| first & 1 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VirtualMachine, VirtualMachineTemplate};

    const EXAMPLE: &str = r#"
apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata:
  name: vm1
spec:
  runStrategy: Always
  template:
    metadata:
      labels: {app: demo}
    spec:
      terminationGracePeriodSeconds: 30
      domain:
        cpu: {cores: 2}
        memory: {guest: 256Mi}
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0
            hostPath: {kernelPath: /var/lib/vmlet/vmlinux, initrdPath: /var/lib/vmlet/initramfs.cpio.gz}
        devices:
          interfaces:
          - name: default
            bridge: {}
          disks:
          - name: data
            disk: {bus: virtio}
      networks:
      - name: default
        pod: {}
      volumes:
      - name: data
        emptyDisk: {capacity: 1Gi}
"#;

    fn example() -> VirtualMachineInstanceSpec {
        let vm: VirtualMachine = serde_yaml::from_str(EXAMPLE).unwrap();
        vm.spec.template.spec
    }

    fn problems(spec: &VirtualMachineInstanceSpec) -> Vec<String> {
        match spec.validate() {
            Ok(()) => Vec::new(),
            Err(InvalidSpec(problems)) => problems
                .into_iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect(),
        }
    }

    #[test]
    fn the_example_is_valid_and_resolves() {
        let spec = example();
        assert_eq!(problems(&spec), Vec::<String>::new());
        assert_eq!(spec.vcpus(), 2);
        assert_eq!(spec.guest_memory_bytes(), Some(256 << 20));
        assert_eq!(spec.domain.devices.interfaces[0].binding(), Some(Binding::Bridge));
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let with_gpu = EXAMPLE.replace("          interfaces:", "          gpus: []\n          interfaces:");
        let err = serde_yaml::from_str::<VirtualMachine>(&with_gpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `gpus`"), "{err}");
        let with_sriov = EXAMPLE.replace("bridge: {}", "sriov: {}");
        let err = serde_yaml::from_str::<VirtualMachine>(&with_sriov)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `sriov`"), "{err}");
    }

    #[test]
    fn memory_comes_from_requests_when_guest_is_absent() {
        let mut spec = example();
        spec.domain.memory = None;
        assert_eq!(problems(&spec), ["domain.memory.guest: the guest's memory is required"]);
        let mut resources = crate::ResourceRequirements::default();
        resources.requests.insert("memory".into(), "1Gi".into());
        spec.domain.resources = Some(resources);
        assert_eq!(spec.guest_memory_bytes(), Some(1 << 30));
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn bad_values_are_all_reported_at_once() {
        let mut spec = example();
        spec.domain.memory = Some(crate::Memory {
            guest: Some("256".into()),
        });
        spec.domain.devices.interfaces[0].masquerade = Some(crate::Empty {});
        spec.volumes[0].empty_disk = Some(crate::EmptyDisk {
            capacity: "lots".into(),
        });
        spec.hostname = Some("Not_A_Label".into());
        assert_eq!(
            problems(&spec),
            [
                "domain.memory.guest: 256 is less than the minimum of 16Mi",
                "domain.devices.interfaces[0]: exactly one binding is required: bridge, masquerade, tap or managedTap",
                "volumes[0].emptyDisk.capacity: \"lots\" is not a quantity of bytes like 256Mi or 2Gi",
                "hostname: \"Not_A_Label\" is not a DNS label (lower-case letters, digits, '-')",
            ]
        );
        let message = spec.validate().unwrap_err().to_string();
        assert!(
            message.starts_with("invalid VM spec: domain.memory.guest: 256 is less"),
            "{message}"
        );
    }

    #[test]
    fn names_must_refer_to_each_other() {
        let mut spec = example();
        spec.networks[0].name = "other".into();
        spec.volumes[0].name = "disk0".into();
        assert_eq!(
            problems(&spec),
            [
                "domain.devices.interfaces[0].name: no network is named \"default\"",
                "networks[0].name: no interface is named \"other\"",
                "domain.devices.disks[0].name: no volume is named \"data\"",
                "volumes[0].name: no disk is named \"disk0\"",
            ]
        );
    }

    #[test]
    fn ports_only_with_masquerade_and_valid_macs() {
        let mut spec = example();
        let iface = &mut spec.domain.devices.interfaces[0];
        iface.ports.push(crate::Port {
            name: None,
            protocol: Some("SCTP".into()),
            port: 80,
        });
        iface.mac_address = Some("03:00:00:00:00:01".into());
        assert_eq!(
            problems(&spec),
            [
                "domain.devices.interfaces[0].ports: ports are forwarded only with the masquerade binding",
                "domain.devices.interfaces[0].ports[0].protocol: \"SCTP\" is not TCP or UDP",
                "domain.devices.interfaces[0].macAddress: \"03:00:00:00:00:01\" is not a unicast MAC address",
            ]
        );
    }

    #[test]
    fn something_must_boot() {
        let spec = VirtualMachineInstanceSpec {
            domain: crate::DomainSpec {
                memory: Some(crate::Memory {
                    guest: Some("64Mi".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            problems(&spec),
            ["domain: nothing to boot: give firmware.kernelBoot or at least one disk"]
        );
    }

    #[test]
    fn template_round_trips_through_json() {
        let spec = example();
        let template = VirtualMachineTemplate { metadata: None, spec };
        let json = serde_json::to_string(&template).unwrap();
        assert_eq!(serde_json::from_str::<VirtualMachineTemplate>(&json).unwrap(), template);
    }
}
