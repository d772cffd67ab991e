//! A VM's launcher Pod: made from the VM and its claims' volume modes (pure), and read back as the lifecycle's
//! [`Launcher`] and the image pulls it waits for.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStateTerminated, ContainerStatus, EnvVar, ExecAction, HTTPGetAction, Pod,
    PodSpec, Probe, ResourceRequirements, SecurityContext, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use vmlet_api::{VirtualMachine, VirtualMachineSpec};
use vmlet_control::run_dir::{CACHE_DIR_ENV, DEFAULT_CACHE_DIR as CACHE_DIR, DEFAULT_RUN_DIR as RUN_DIR};

use super::pod_volumes::{self, ClaimModes, ContainerDisks, LauncherImage, host_path, mount};
use crate::cluster::{
    CONTAINER, MANAGED_BY, MANAGED_BY_LABEL, RUN_DIRS_ON_HOST, SCHEDULABLE_LABEL, VM_NAME_LABEL, run_dir_name,
};
use crate::lifecycle::{Exit, ImagePull, Launcher};
use crate::probe::Readiness;

/// The label every launcher Pod carries, the VM's uid: how the controller finds a VM's launchers.
pub const VM_UID_LABEL: &str = "vmlet.dev/vm-uid";

/// Memory a VM pod takes besides the guest's RAM. Measured (docs/benchmarks.md, 256 MiB TCG guest): everything but
/// QEMU, 37.3 MiB resident; QEMU's own resident memory beyond the guest's pages, about 82 MiB (its 266.7 MB less the
/// 183 MB of anonymous memory the guest had touched, libraries and video memory included). Rounded up for page
/// tables, I/O buffers and KVM's structures.
pub const DEFAULT_MEMORY_OVERHEAD: u64 = 160 << 20;

/// How launcher Pods are made, the same for every VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodConfig {
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// Added to the guest's memory in the Pod's memory request (and limit, when the VM sets one).
    pub memory_overhead: u64,
    /// An extended resource that gives the Pod `/dev/kvm` (a device plugin's, e.g. `devices.kubevirt.io/kvm`).
    /// Without one, `/dev/kvm` is mounted from the node; an unprivileged container's device cgroup then refuses
    /// to open it, and the launcher falls back to emulation (TCG).
    pub kvm_resource: Option<String>,
    /// Seconds the Pod gets beyond the guest's grace period to tear down after it.
    pub grace_margin: u32,
    pub log_json: bool,
    /// How containerDisks and `kernelBoot.container` images reach the launcher.
    pub container_disks: ContainerDisks,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the VM has no {0}")]
    Missing(&'static str),
    #[error("the guest's memory is not given, or is not a quantity of bytes")]
    NoMemory,
    #[error("the VM cannot be written as JSON")]
    Serialize(#[from] serde_json::Error),
    #[error(transparent)]
    Volume(#[from] pod_volumes::VolumeError),
}

/// A name for a new launcher Pod of `vm`: `vmlet-launcher-<vm>-<5 characters>`, at most 63 characters so that it is
/// also a valid host name. Every run gets a new name, and so a fresh run directory on the node.
pub fn new_pod_name(vm_name: &str) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(vm_name.as_bytes());
    hasher.write_u128(Timestamp::now().as_nanosecond().unsigned_abs());
    let mut n = hasher.finish();
    let suffix: String = (0..5)
        .map(|_| {
            let digit = (n % 36) as u8;
            n /= 36;
            char::from(if digit < 10 { b'0' + digit } else { b'a' + digit - 10 })
        })
        .collect();
    let prefix = "vmlet-launcher-";
    let room = 63 - prefix.len() - 1 - suffix.len();
    let vm: &str = &vm_name[..vm_name.len().min(room)];
    format!("{prefix}{}-{suffix}", vm.trim_end_matches(['-', '.']))
}

/// The node directory a launcher Pod's run directory is.
pub fn run_dir_on_host(namespace: &str, pod: &str) -> String {
    format!("{RUN_DIRS_ON_HOST}/{}", run_dir_name(namespace, pod))
}

/// The template's node selector, and a node whose node role runs: one that can report on the VM.
fn node_selector(instance: &vmlet_api::VirtualMachineInstanceSpec) -> std::collections::BTreeMap<String, String> {
    let mut selector = instance.node_selector.clone();
    selector.insert(SCHEDULABLE_LABEL.into(), "true".into());
    selector
}

/// The launcher Pod `name` for `vm`, whose claims have the volume modes `claims`.
pub fn build(vm: &VirtualMachine, name: &str, config: &PodConfig, claims: &ClaimModes) -> Result<Pod, BuildError> {
    let vm_name = vm.metadata.name.as_deref().ok_or(BuildError::Missing("name"))?;
    let namespace = vm
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::Missing("namespace"))?;
    let uid = vm.metadata.uid.as_deref().ok_or(BuildError::Missing("uid"))?;
    let mut owner = vm.controller_owner_ref(&()).ok_or(BuildError::Missing("uid"))?;
    // A foreground deletion of the VM waits for its launcher Pod, as KubeVirt's VMs wait for their launchers.
    owner.block_owner_deletion = Some(true);
    let template = &vm.spec.template;
    let instance = &template.spec;

    let mut labels = template.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(VM_NAME_LABEL.into(), vm_name.into());
    labels.insert(VM_UID_LABEL.into(), uid.into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/name".into(), "vmlet-launcher".into());
    let annotations = template
        .metadata
        .as_ref()
        .map(|m| m.annotations.clone())
        .unwrap_or_default();

    // What the launcher needs of the VM: its identity and spec, not its status or the API server's bookkeeping.
    let for_launcher = VirtualMachine {
        metadata: ObjectMeta {
            name: Some(vm_name.into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        spec: VirtualMachineSpec {
            run_strategy: vm.spec.run_strategy,
            running: vm.spec.running,
            instancetype: None,
            preference: None,
            template: template.clone(),
        },
        status: None,
    };
    let mut env = vec![
        env_var("VMLET_VM_SPEC", serde_json::to_string(&for_launcher)?),
        env_var(CACHE_DIR_ENV, CACHE_DIR.into()),
    ];
    if config.log_json {
        env.push(env_var(vmlet_log::JSON_ENV, "1".into()));
    }

    let grace = instance.grace_period_seconds();
    let mut volumes = vec![
        host_path("run", &run_dir_on_host(namespace, name), "DirectoryOrCreate"),
        host_path("qemu-cache", CACHE_DIR, "DirectoryOrCreate"),
        host_path("tun", "/dev/net/tun", "CharDevice"),
    ];
    let mut mounts = vec![
        mount("run", RUN_DIR, false),
        mount("qemu-cache", CACHE_DIR, false),
        mount("tun", "/dev/net/tun", false),
    ];
    if config.kvm_resource.is_none() {
        volumes.push(host_path("kvm", "/dev/kvm", "CharDevice"));
        mounts.push(mount("kvm", "/dev/kvm", false));
    }
    let served = pod_volumes::launcher_volumes(
        instance,
        config.container_disks,
        LauncherImage {
            image: &config.image,
            pull_policy: config.image_pull_policy.as_deref(),
        },
        claims,
    )?;
    volumes.extend(served.volumes);
    mounts.extend(served.mounts);

    let container = Container {
        name: CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec!["vmlet-launcher".into(), "run".into()]),
        env: Some(env),
        resources: Some(resources(vm, config)?),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                // NET_ADMIN: rewire the pod interface, make the tap, install nftables rules. NET_RAW: the DHCP
                // server's packet sockets.
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        volume_devices: (!served.devices.is_empty()).then_some(served.devices),
        readiness_probe: instance.readiness_probe.as_ref().map(|p| pod_probe(p, false)),
        liveness_probe: instance.liveness_probe.as_ref().map(|p| pod_probe(p, true)),
        // The launcher writes its last error to the termination log; a launcher that dies before it can, gives
        // its log's tail instead. Either is read back into the VM's condition: the failed Pod goes soon after.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: (!served.init_containers.is_empty()).then_some(served.init_containers),
            containers: vec![container],
            volumes: Some(volumes),
            image_pull_secrets: (!served.image_pull_secrets.is_empty()).then_some(served.image_pull_secrets),
            share_process_namespace: served.share_process_namespace.then_some(true),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(i64::from(grace) + i64::from(config.grace_margin)),
            node_selector: Some(node_selector(instance)),
            tolerations: (!instance.tolerations.is_empty()).then(|| instance.tolerations.clone()),
            affinity: instance.affinity.clone(),
            priority_class_name: instance.priority_class_name.clone(),
            // The Pod's DNS name is the guest's: HOSTNAME.SUBDOMAIN.NAMESPACE.svc under a headless Service.
            hostname: instance
                .hostname
                .clone()
                .or_else(|| instance.subdomain.as_ref().map(|_| vm_name.to_owned())),
            subdomain: instance.subdomain.clone(),
            // The launcher talks to no API server, and a VM pod's environment is the guest's business.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The kubelet's form of a VM's probe, on the launcher's container: a TCP or HTTP check goes to the Pod's address,
/// which is the guest's (bridge) or forwarded to it (masquerade); a guest agent check is the launcher's
/// `guest-exec` or `guest-ping` run in the container, which asks the launcher over its control socket.
fn pod_probe(probe: &vmlet_api::Probe, liveness: bool) -> Probe {
    let number = |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let timing = probe.timing();
    let exec = |mut command: Vec<String>| {
        command.splice(0..0, ["vmlet-launcher".to_owned()]);
        Some(ExecAction { command: Some(command) })
    };
    Probe {
        tcp_socket: probe.tcp_socket.as_ref().map(|tcp| TCPSocketAction {
            port: tcp.port.clone(),
            host: tcp.host.clone(),
        }),
        http_get: probe.http_get.as_ref().map(|http| HTTPGetAction {
            port: http.port.clone(),
            path: http.path.clone(),
            host: http.host.clone(),
            scheme: http.scheme.clone(),
            http_headers: None,
        }),
        exec: match (&probe.exec, &probe.guest_agent_ping) {
            (Some(action), _) => {
                let mut command = vec![
                    "guest-exec".to_owned(),
                    format!("--timeout-secs={}", timing.timeout.as_secs()),
                    "--".to_owned(),
                ];
                command.extend(action.command.iter().cloned());
                exec(command)
            }
            (None, Some(_)) => exec(vec!["guest-ping".to_owned()]),
            (None, None) => None,
        },
        initial_delay_seconds: number(probe.initial_delay_seconds),
        period_seconds: number(probe.period_seconds),
        timeout_seconds: number(probe.timeout_seconds),
        success_threshold: number(probe.success_threshold),
        failure_threshold: number(probe.failure_threshold),
        // A failed liveness probe ends the run as a failure, as in KubeVirt: the launcher is killed rather than
        // given the guest's grace period, in which a clean ACPI shutdown would read as a run that succeeded.
        termination_grace_period_seconds: liveness.then_some(1),
        ..Probe::default()
    }
}

/// What the launcher Pod's Ready condition says of a VM with a readiness probe: the kubelet runs the probe
/// against the launcher's container.
pub fn readiness(pod: &Pod, instance: &vmlet_api::VirtualMachineInstanceSpec) -> Readiness {
    if instance.readiness_probe.is_none() {
        return Readiness::Unprobed;
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => Readiness::Ready,
        Some(c) => Readiness::NotReady(match c.message.as_deref().filter(|m| !m.is_empty()) {
            Some(message) => format!("the launcher Pod is not ready: {message}"),
            None => "the readiness probe has not passed yet".into(),
        }),
        None => Readiness::NotReady("the readiness probe has not passed yet".into()),
    }
}

/// The VM's resources with the launcher's overhead added to its memory.
fn resources(vm: &VirtualMachine, config: &PodConfig) -> Result<ResourceRequirements, BuildError> {
    let instance = &vm.spec.template.spec;
    let guest = instance.guest_memory_bytes().ok_or(BuildError::NoMemory)?;
    let given = instance.domain.resources.clone().unwrap_or_default();
    let quantities = |map: BTreeMap<String, String>| -> BTreeMap<String, Quantity> {
        map.into_iter().map(|(k, v)| (k, Quantity(v))).collect()
    };
    let mut requests = quantities(given.requests);
    let mut limits = quantities(given.limits.clone());
    let memory = guest.saturating_add(config.memory_overhead);
    requests.insert("memory".into(), Quantity(memory.to_string()));
    if let Some(limit) = given.limits.get("memory") {
        let limit = vmlet_api::parse_quantity(limit).map_err(|_| BuildError::NoMemory)?;
        limits.insert(
            "memory".into(),
            Quantity(limit.max(guest).saturating_add(config.memory_overhead).to_string()),
        );
    }
    if let Some(kvm) = &config.kvm_resource {
        requests.insert(kvm.clone(), Quantity("1".into()));
        limits.insert(kvm.clone(), Quantity("1".into()));
    }
    Ok(ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    })
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

/// Whether `pod` is a launcher of `vm` (controlled by it).
pub fn belongs_to(pod: &Pod, vm: &VirtualMachine) -> bool {
    let uid = vm.meta().uid.as_deref();
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// A failed launcher's end as the lifecycle sees it: killed by a signal (a container runtime reports exit code
/// 128 + the signal), or exited with its code and its last words (the termination message).
fn failed_exit(terminated: &ContainerStateTerminated, pod_reason: Option<&str>) -> Exit {
    let said = terminated
        .message
        .as_deref()
        .and_then(|message| message.lines().rev().map(str::trim).find(|line| !line.is_empty()))
        .map(str::to_owned);
    let runtime_reason = terminated.reason.as_deref().or(pod_reason);
    match terminated.exit_code {
        code if code > 128 && code <= 128 + 64 => {
            let signal = code - 128;
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| format!(", {}", s.as_str()))
                .unwrap_or_default();
            let how = match runtime_reason {
                Some("OOMKilled") => format!("out of memory: signal {signal}{name}"),
                _ => format!("signal {signal}{name}"),
            };
            Exit::Failed {
                code: None,
                reason: Some(how),
            }
        }
        code => Exit::Failed {
            code: (code >= 0).then_some(code),
            reason: said.or(runtime_reason.map(str::to_owned)),
        },
    }
}

/// The launcher as the lifecycle sees it. `now` stands in for an end time the Pod does not report.
pub fn observe(pod: &Pod, now: Timestamp) -> Launcher {
    let id = pod.metadata.uid.clone().unwrap_or_default();
    let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if pod.metadata.deletion_timestamp.is_some() {
        return Launcher::Terminating { id, node: spec_node };
    }
    let status = pod.status.clone().unwrap_or_default();
    let launcher_state = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
        .and_then(|c| c.state.clone())
        .unwrap_or_default();
    let pod_started = status.start_time.as_ref().map(|t| t.0);
    let phase = status.phase.as_deref();
    // The launcher's own end ends the run, whatever the Pod's phase: holder sidecars outlive it a moment, until
    // the kubelet stops them, and the Pod is still Running meanwhile.
    if matches!(phase, Some("Succeeded" | "Failed")) || launcher_state.terminated.is_some() {
        let terminated = launcher_state.terminated.unwrap_or_else(|| ContainerStateTerminated {
            // A Pod that failed before its container ran (evicted, rejected by the node) has no exit code.
            exit_code: -1,
            ..ContainerStateTerminated::default()
        });
        let succeeded = match phase {
            Some("Succeeded") => true,
            Some("Failed") => false,
            _ => terminated.exit_code == 0,
        };
        let exit = if succeeded {
            Exit::Succeeded
        } else {
            failed_exit(&terminated, status.reason.as_deref())
        };
        return Launcher::Ended {
            id,
            node: spec_node,
            started: terminated.started_at.map(|t| t.0).or(pod_started),
            finished: terminated.finished_at.map(|t| t.0).unwrap_or(now),
            exit,
        };
    }
    match phase {
        Some("Running") | Some("Unknown") => Launcher::Running {
            id,
            node: spec_node,
            since: launcher_state
                .running
                .and_then(|r| r.started_at)
                .map(|t| t.0)
                .or(pod_started)
                .unwrap_or(now),
        },
        _ => {
            let unschedulable = status
                .conditions
                .iter()
                .flatten()
                .find(|c| {
                    c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
                })
                .map(|c| c.message.clone().unwrap_or_else(|| "no node fits the VM".into()));
            Launcher::Pending {
                id,
                node: spec_node,
                unschedulable,
            }
        }
    }
}

/// An image the Pod cannot pull, as its first container that waits for one says: a holder, or the launcher
/// (its own image, or an image volume it mounts).
pub fn image_pull(pod: &Pod) -> Option<ImagePull> {
    let status = pod.status.as_ref()?;
    let containers = status.init_container_statuses.iter().chain(&status.container_statuses);
    containers
        .flatten()
        .filter_map(|c: &ContainerStatus| c.state.as_ref()?.waiting.as_ref())
        .find_map(|waiting| {
            let backing_off = match waiting.reason.as_deref() {
                Some("ErrImagePull") => false,
                Some("ImagePullBackOff") => true,
                _ => return None,
            };
            Some(ImagePull {
                backing_off,
                message: waiting.message.clone().unwrap_or_default(),
            })
        })
}

/// Of a VM's launcher Pods, the one its lifecycle follows: the newest. Older ones are left from a run that a
/// second controller raced (they are stopped).
pub fn newest(mut pods: Vec<Pod>) -> (Option<Pod>, Vec<Pod>) {
    pods.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let newest = pods.pop();
    (newest, pods)
}
