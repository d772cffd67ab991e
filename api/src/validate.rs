//! The rules a VM spec must follow beyond its schema: names that refer to each other, one-of choices, values that
//! must parse. The launcher refuses a spec that breaks them before it touches anything; the handler reports them as
//! the VM's Failure condition.

use std::collections::BTreeSet;
use std::fmt;

use crate::{
    CloudInitSource, FeatureState, Interface, Timer, VirtualMachine, VirtualMachineInstanceSpec, Volume, parse_quantity,
};

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
            self.cloud_init_config_drive.is_some(),
        ]
        .into_iter()
        .filter(|&set| set)
        .count()
    }
}

/// KubeVirt's annotations that change the VM (sidecar hooks rewriting the domain, SMBIOS fields): refused rather
/// than ignored, since vmlet would run a different VM than the manifest asks for.
const UNSUPPORTED_ANNOTATIONS: [&str; 2] = ["hooks.kubevirt.io/", "smbios.vm.kubevirt.io/"];

/// Where the instance spec sits in a `VirtualMachine`, for messages that name a field of the whole manifest.
pub const TEMPLATE_SPEC_PATH: &str = "spec.template.spec";

impl VirtualMachine {
    /// Checks the whole VM; every problem's field is a path from the manifest's root.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut problems = Vec::new();
        if self.spec.running.is_some() && self.spec.run_strategy.is_some() {
            problems.push(Problem {
                field: "spec.running".into(),
                message: "running and runStrategy are mutually exclusive".into(),
            });
        }
        // Resolution drops them; one still named was not found.
        if let Some(m) = &self.spec.instancetype {
            problems.push(Problem {
                field: "spec.instancetype".into(),
                message: format!("the instance type {:?} is not resolved", m.name),
            });
        }
        if let Some(m) = &self.spec.preference {
            problems.push(Problem {
                field: "spec.preference".into(),
                message: format!("the preference {:?} is not resolved", m.name),
            });
        }
        let annotations = self.spec.template.metadata.iter().flat_map(|m| m.annotations.keys());
        for key in annotations.filter(|k| UNSUPPORTED_ANNOTATIONS.iter().any(|prefix| k.starts_with(prefix))) {
            problems.push(Problem {
                field: format!("spec.template.metadata.annotations[{key}]"),
                message: "not supported by vmlet".into(),
            });
        }
        if let Err(InvalidSpec(spec_problems)) = self.spec.template.spec.validate() {
            problems.extend(spec_problems.into_iter().map(|p| Problem {
                field: format!("{TEMPLATE_SPEC_PATH}.{}", p.field),
                message: p.message,
            }));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(problems))
        }
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
        self.check_access_credentials(&mut problem);
        self.check_devices_and_features(&mut problem);
        for (field, probe, liveness) in [
            ("readinessProbe", &self.readiness_probe, false),
            ("livenessProbe", &self.liveness_probe, true),
        ] {
            for (below, message) in probe.iter().flat_map(|p| p.problems(liveness)) {
                let field = if below.is_empty() {
                    field.to_owned()
                } else {
                    format!("{field}.{below}")
                };
                problem(field, message);
            }
        }
        for (field, value) in [("hostname", &self.hostname), ("subdomain", &self.subdomain)] {
            if let Some(value) = value
                && !is_dns_label(value)
            {
                problem(
                    field.into(),
                    format!("{value:?} is not a DNS label (lower-case letters, digits, '-')"),
                );
            }
        }
        if let Some(class) = self.priority_class_name.as_deref().filter(|c| c.is_empty()) {
            problem("priorityClassName".into(), format!("{class:?} names no priority class"));
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
            if let Some(model) = iface.model.as_deref().filter(|m| !NIC_MODELS.contains(m)) {
                problem(
                    format!("{field}.model"),
                    format!("{model:?} is not offered; only virtio, e1000 or e1000e"),
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
        let mut boot_orders = BTreeSet::new();
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
                .filter(|b| !DISK_BUSES.contains(b))
            {
                problem(
                    format!("{field}.disk.bus"),
                    format!("{bus:?} is not offered; only virtio, sata or scsi"),
                );
            }
            if let Some(bus) = disk
                .cdrom
                .as_ref()
                .and_then(|d| d.bus.as_deref())
                .filter(|b| !CDROM_BUSES.contains(b))
            {
                problem(
                    format!("{field}.cdrom.bus"),
                    format!("{bus:?} is not offered; only sata or scsi"),
                );
            }
            if let Some(cache) = disk.cache.as_deref().filter(|c| !CACHE_MODES.contains(c)) {
                problem(
                    format!("{field}.cache"),
                    format!("{cache:?} is not none, writethrough or writeback"),
                );
            }
            if let Some(serial) = disk.serial.as_deref()
                && (serial.len() > 20
                    || !serial
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            {
                problem(
                    format!("{field}.serial"),
                    format!("{serial:?} is not at most 20 letters, digits, '-' or '_'"),
                );
            }
            if let Some(order) = disk.boot_order
                && !boot_orders.insert(order)
            {
                problem(
                    format!("{field}.bootOrder"),
                    format!("{order} is the boot order of another disk too"),
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
                     persistentVolumeClaim, cloudInitNoCloud or cloudInitConfigDrive"
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
            if let Some(container) = &volume.container_disk {
                let field = format!("{field}.containerDisk");
                if container.image.trim().is_empty() {
                    problem(format!("{field}.image"), "an image is required".into());
                }
                if let Some(policy) = container
                    .image_pull_policy
                    .as_deref()
                    .filter(|p| !PULL_POLICIES.contains(p))
                {
                    problem(
                        format!("{field}.imagePullPolicy"),
                        format!("{policy:?} is not Always, IfNotPresent or Never"),
                    );
                }
                if let Some(path) = container.path.as_deref().filter(|p| !is_plain_absolute_path(p)) {
                    problem(
                        format!("{field}.path"),
                        format!("{path:?} is not an absolute path without '..'"),
                    );
                }
            }
            if let Some(claim) = &volume.persistent_volume_claim
                && claim.claim_name.is_empty()
            {
                problem(
                    format!("{field}.persistentVolumeClaim.claimName"),
                    "a claim name is required".into(),
                );
            }
            for (kind, source) in [
                ("cloudInitNoCloud", &volume.cloud_init_no_cloud),
                ("cloudInitConfigDrive", &volume.cloud_init_config_drive),
            ] {
                if let Some(source) = source {
                    check_cloud_init(source, &format!("{field}.{kind}"), problem);
                }
            }
        }
        for kind in [CloudInitKind::NoCloud, CloudInitKind::ConfigDrive] {
            let count = self.volumes.iter().filter(|v| v.cloud_init(kind).is_some()).count();
            if count > 1 {
                problem(
                    "volumes".into(),
                    format!("{count} {} volumes; a guest reads one", kind.field()),
                );
            }
        }
    }

    fn check_devices_and_features(&self, problem: &mut impl FnMut(String, String)) {
        let domain = &self.domain;
        if domain.devices.network_interface_multiqueue == Some(true) {
            problem(
                "domain.devices.networkInterfaceMultiqueue".into(),
                "not supported by vmlet: the launcher's taps have one queue".into(),
            );
        }
        if let Some(model) = domain.cpu.as_ref().and_then(|c| c.model.as_deref())
            && (model.is_empty() || !model.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            problem("domain.cpu.model".into(), format!("{model:?} is not a CPU model name"));
        }
        if let Some(serial) = domain.firmware.as_ref().and_then(|f| f.serial.as_deref())
            && (serial.is_empty() || serial.chars().any(|c| c.is_control()))
        {
            problem(
                "domain.firmware.serial".into(),
                format!("{serial:?} is not a printable serial number"),
            );
        }
        if let Some(spinlocks) = domain
            .features
            .as_ref()
            .and_then(|f| f.hyperv.as_ref())
            .and_then(|h| h.spinlocks.as_ref())
            .and_then(|s| s.spinlocks)
            .filter(|&n| n < 4095)
        {
            problem(
                "domain.features.hyperv.spinlocks.spinlocks".into(),
                format!("{spinlocks} is less than Hyper-V's minimum of 4095"),
            );
        }
        let efi_secure = domain
            .firmware
            .as_ref()
            .and_then(|f| f.bootloader.as_ref())
            .and_then(|b| b.efi.as_ref())
            .is_some_and(|efi| efi.secure_boot != Some(false));
        let smm = domain.features.as_ref().and_then(|f| f.smm.as_ref());
        if efi_secure && smm.is_some() && !FeatureState::on(smm) {
            problem(
                "domain.features.smm".into(),
                "Secure Boot needs SMM; enable it or set secureBoot: false".into(),
            );
        }
        if let Some(clock) = &domain.clock {
            if clock.utc.is_some() && clock.timezone.is_some() {
                problem("domain.clock".into(), "a clock is either utc or timezone".into());
            }
            if let Some(zone) = clock.timezone.as_deref()
                && (zone.is_empty()
                    || zone.starts_with('/')
                    || zone.split('/').any(|part| part == "..")
                    || !zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b)))
            {
                problem(
                    "domain.clock.timezone".into(),
                    format!("{zone:?} is not a time zone name"),
                );
            }
            if let Some(timers) = &clock.timer {
                let all = [
                    ("hpet", &timers.hpet, TIMER_POLICIES),
                    ("kvm", &timers.kvm, &[][..]),
                    ("pit", &timers.pit, TIMER_POLICIES),
                    ("rtc", &timers.rtc, TIMER_POLICIES),
                    ("hyperv", &timers.hyperv, &[][..]),
                ];
                for (name, timer, policies) in all {
                    if let Some(timer) = timer {
                        check_timer(name, timer, policies, problem);
                    }
                }
            }
        }
    }

    fn check_access_credentials(&self, problem: &mut impl FnMut(String, String)) {
        for (i, credential) in self.access_credentials.iter().enumerate() {
            let field = format!("accessCredentials[{i}].sshPublicKey");
            let key = &credential.ssh_public_key;
            if key.source.secret.secret_name.is_empty() {
                problem(
                    format!("{field}.source.secret.secretName"),
                    "a Secret name is required".into(),
                );
            }
            let method = &key.propagation_method;
            let kind = match (method.no_cloud.is_some(), method.config_drive.is_some()) {
                (true, false) => CloudInitKind::NoCloud,
                (false, true) => CloudInitKind::ConfigDrive,
                _ => {
                    problem(
                        format!("{field}.propagationMethod"),
                        "exactly one propagation method is required: noCloud or configDrive".into(),
                    );
                    continue;
                }
            };
            if !self.volumes.iter().any(|v| v.cloud_init(kind).is_some()) {
                problem(
                    format!("{field}.propagationMethod"),
                    format!("{} propagation needs a {} volume", kind.method(), kind.field()),
                );
            }
        }
    }
}

/// The two ways cloud-init data reaches a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudInitKind {
    NoCloud,
    ConfigDrive,
}

impl CloudInitKind {
    fn field(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => "cloudInitNoCloud",
            CloudInitKind::ConfigDrive => "cloudInitConfigDrive",
        }
    }

    fn method(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => "noCloud",
            CloudInitKind::ConfigDrive => "configDrive",
        }
    }
}

impl Volume {
    /// The volume's cloud-init data of `kind`, if it is such a volume.
    pub fn cloud_init(&self, kind: CloudInitKind) -> Option<&CloudInitSource> {
        match kind {
            CloudInitKind::NoCloud => self.cloud_init_no_cloud.as_ref(),
            CloudInitKind::ConfigDrive => self.cloud_init_config_drive.as_ref(),
        }
    }
}

const NIC_MODELS: [&str; 3] = ["virtio", "e1000", "e1000e"];
const TIMER_POLICIES: &[&str] = &["delay", "catchup", "merge", "discard"];

fn check_timer(name: &str, timer: &Timer, policies: &[&str], problem: &mut impl FnMut(String, String)) {
    let field = format!("domain.clock.timer.{name}");
    if let Some(policy) = timer.tick_policy.as_deref().filter(|p| !policies.contains(p)) {
        let offered = if policies.is_empty() {
            "this timer takes none".to_owned()
        } else {
            format!("only {}", policies.join(", "))
        };
        problem(
            format!("{field}.tickPolicy"),
            format!("{policy:?} is not offered; {offered}"),
        );
    }
    match timer.track.as_deref() {
        None => {}
        Some("guest" | "wall") if name == "rtc" => {}
        Some(track) => problem(
            format!("{field}.track"),
            format!("{track:?} is not offered; only the rtc's guest or wall"),
        ),
    }
}

const DISK_BUSES: [&str; 3] = ["virtio", "sata", "scsi"];
const CDROM_BUSES: [&str; 2] = ["sata", "scsi"];
const CACHE_MODES: [&str; 3] = ["none", "writethrough", "writeback"];
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];

fn check_cloud_init(source: &CloudInitSource, field: &str, problem: &mut impl FnMut(String, String)) {
    let user = [
        source.user_data.is_some(),
        source.user_data_base64.is_some(),
        source.secret_ref.is_some(),
    ];
    let network = [
        source.network_data.is_some(),
        source.network_data_base64.is_some(),
        source.network_data_secret_ref.is_some(),
    ];
    let count = |set: [bool; 3]| set.into_iter().filter(|&s| s).count();
    if count(user) > 1 {
        problem(
            field.into(),
            "give user data at most one way: userData, userDataBase64 or secretRef".into(),
        );
    }
    if count(network) > 1 {
        problem(
            field.into(),
            "give network data at most one way: networkData, networkDataBase64 or networkDataSecretRef".into(),
        );
    }
    if count(user) + count(network) == 0 {
        problem(field.into(), "user data or network data is required".into());
    }
    for (name, text) in [
        ("userDataBase64", &source.user_data_base64),
        ("networkDataBase64", &source.network_data_base64),
    ] {
        if let Some(text) = text
            && let Err(e) = decode_base64(text)
        {
            problem(format!("{field}.{name}"), format!("not valid base64: {e}"));
        }
    }
}

/// Decodes standard base64, with or without padding; line breaks and spaces (as `base64` wraps its output) are
/// allowed.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.trim_end_matches('='))
}

fn is_plain_absolute_path(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(|part| part == "..")
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

    fn with_volumes(disks: &str, volumes: &str, extra: &str) -> Vec<String> {
        let yaml = EXAMPLE
            .replace(
                "          disks:\n          - name: data\n            disk: {bus: virtio}\n",
                &format!("          disks: {disks}\n"),
            )
            .replace(
                "      volumes:\n      - name: data\n        emptyDisk: {capacity: 1Gi}\n",
                &format!("      volumes: {volumes}\n{extra}"),
            );
        let vm: VirtualMachine = serde_yaml::from_str(&yaml).unwrap();
        problems(&vm.spec.template.spec)
    }

    #[test]
    fn cloud_init_data_is_given_once_and_decodes() {
        let disks = "[{name: ci, disk: {}}, {name: cd, disk: {}}]";
        assert_eq!(
            with_volumes(
                disks,
                "[{name: ci, cloudInitNoCloud: {networkData: 'version: 2'}}, \
                 {name: cd, cloudInitConfigDrive: {secretRef: {name: s}}}]",
                ""
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            with_volumes(
                disks,
                "[{name: ci, cloudInitNoCloud: {userData: x, userDataBase64: eA==, networkDataBase64: '!!'}}, \
                 {name: cd, cloudInitConfigDrive: {}}]",
                ""
            ),
            [
                "volumes[0].cloudInitNoCloud: give user data at most one way: userData, userDataBase64 or secretRef",
                "volumes[0].cloudInitNoCloud.networkDataBase64: not valid base64: Invalid symbol 33, offset 0.",
                "volumes[1].cloudInitConfigDrive: user data or network data is required",
            ]
        );
        assert_eq!(decode_base64("I2Nsb3VkLWNvbmZp\nZwo=").unwrap(), b"#cloud-config\n");
    }

    #[test]
    fn container_disks_claims_and_disk_options_are_checked() {
        assert_eq!(
            with_volumes(
                "[{name: a, disk: {bus: ide}, cache: unsafe, bootOrder: 1, serial: 'has space'}, \
                 {name: b, cdrom: {bus: virtio}, bootOrder: 1}]",
                "[{name: a, containerDisk: {image: ' ', imagePullPolicy: Sometimes, path: /disk/../x}}, \
                 {name: b, persistentVolumeClaim: {claimName: ''}}]",
                ""
            ),
            [
                "domain.devices.disks[0].disk.bus: \"ide\" is not offered; only virtio, sata or scsi",
                "domain.devices.disks[0].cache: \"unsafe\" is not none, writethrough or writeback",
                "domain.devices.disks[0].serial: \"has space\" is not at most 20 letters, digits, '-' or '_'",
                "domain.devices.disks[1].cdrom.bus: \"virtio\" is not offered; only sata or scsi",
                "domain.devices.disks[1].bootOrder: 1 is the boot order of another disk too",
                "volumes[0].containerDisk.image: an image is required",
                "volumes[0].containerDisk.imagePullPolicy: \"Sometimes\" is not Always, IfNotPresent or Never",
                "volumes[0].containerDisk.path: \"/disk/../x\" is not an absolute path without '..'",
                "volumes[1].persistentVolumeClaim.claimName: a claim name is required",
            ]
        );
    }

    #[test]
    fn ssh_keys_need_the_cloud_init_volume_they_propagate_through() {
        let keys = concat!(
            "      accessCredentials:\n",
            "      - sshPublicKey: {source: {secret: {secretName: keys}}, propagationMethod: {configDrive: {}}}\n",
            "      - sshPublicKey: {source: {secret: {secretName: ''}}, propagationMethod: {}}\n",
        );
        assert_eq!(
            with_volumes(
                "[{name: ci, disk: {}}]",
                "[{name: ci, cloudInitNoCloud: {userData: x}}]",
                keys
            ),
            [
                "accessCredentials[0].sshPublicKey.propagationMethod: configDrive propagation needs a \
                 cloudInitConfigDrive volume",
                "accessCredentials[1].sshPublicKey.source.secret.secretName: a Secret name is required",
                "accessCredentials[1].sshPublicKey.propagationMethod: exactly one propagation method is required: \
                 noCloud or configDrive",
            ]
        );
    }

    fn with_probes(probes: &str) -> Result<Vec<String>, String> {
        let yaml = EXAMPLE.replace("      networks:\n", &format!("{probes}      networks:\n"));
        let vm = crate::manifest::parse_vm(serde_yaml::Deserializer::from_str(&yaml)).map_err(|e| e.0)?;
        Ok(problems(&vm.spec.template.spec))
    }

    #[test]
    fn probes_give_one_check_that_vmlet_can_carry_out() {
        let sound = concat!(
            "      readinessProbe: {tcpSocket: {port: 22}, initialDelaySeconds: 5, periodSeconds: 2}\n",
            "      livenessProbe: {exec: {command: [cat, /tmp/healthy]}, failureThreshold: 5}\n",
        );
        assert_eq!(with_probes(sound), Ok(Vec::new()));
        let vm = crate::manifest::parse_vm(serde_yaml::Deserializer::from_str(
            &EXAMPLE.replace("      networks:\n", &format!("{sound}      networks:\n")),
        ))
        .unwrap();
        let spec = vm.spec.template.spec;
        let readiness = spec.readiness_probe.unwrap();
        assert_eq!(
            readiness.check(),
            Some(crate::ProbeCheck::TcpSocket { host: None, port: 22 })
        );
        let timing = readiness.timing();
        assert_eq!(
            (
                timing.initial_delay.as_secs(),
                timing.period.as_secs(),
                timing.timeout.as_secs()
            ),
            (5, 2, 1)
        );
        assert_eq!((timing.success_threshold, timing.failure_threshold), (1, 3));
        assert_eq!(spec.liveness_probe.unwrap().timing().failure_threshold, 5);

        let broken = concat!(
            "      readinessProbe: {tcpSocket: {port: http}, guestAgentPing: {}, periodSeconds: 0}\n",
            "      livenessProbe:\n",
            "        httpGet: {port: 70000, path: healthz, scheme: HTTPS}\n",
            "        successThreshold: 2\n",
        );
        assert_eq!(
            with_probes(broken),
            Ok(vec![
                "readinessProbe: exactly one check is required: tcpSocket, httpGet, exec or guestAgentPing".into(),
                "readinessProbe.tcpSocket.port: \"http\" is not a port number".into(),
                "readinessProbe.periodSeconds: must be at least 1".into(),
                "livenessProbe.httpGet.port: 70000 is not a port number".into(),
                "livenessProbe.httpGet.scheme: \"HTTPS\" is not supported by vmlet: only HTTP".into(),
                "livenessProbe.httpGet.path: \"healthz\" does not start with '/'".into(),
                "livenessProbe.successThreshold: must be 1 for a liveness probe".into(),
            ])
        );
        assert_eq!(
            with_probes("      livenessProbe: {exec: {command: []}}\n"),
            Ok(vec!["livenessProbe.exec.command: a program to run is required".into()])
        );
    }

    #[test]
    fn a_grpc_probe_is_refused_by_its_field_path() {
        let grpc = "      readinessProbe: {grpc: {port: 9000}}\n";
        let err = with_probes(grpc).unwrap_err();
        assert!(
            err.starts_with("spec.template.spec.readinessProbe.grpc: not supported by vmlet (line "),
            "{err}"
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
