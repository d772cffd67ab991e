//! What the controller and the node role must agree on, tested across both: the status fields each writes, and
//! how the two writes make one status; and the manifests in deploy/, which start each role with options it has
//! and mount the launchers' run directories where the controller puts them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Pod, PodSpec,
    PodSpec as Spec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use vmlet_api::{RunStrategy, VirtualMachineStatus};
use vmlet_control::{Exit as GuestEnd, Phase as LauncherPhase, Status};

use crate::cluster::{CONTAINER, RUN_DIRS_ON_HOST};
use crate::controller::launcher_pod;
use crate::lifecycle::{self, Launcher, LauncherAction, Observation};
use crate::node::judge::{ControlPoll, Tracking, Update, judge, pod_state, status_update};
use crate::vm_status::NodeStatus;
use crate::{Cli, Command};

const POD: &str = "vmlet-launcher-web-x7k2p";
const NODE: &str = "node-a";
const LOST_AFTER: Duration = Duration::from_secs(30);

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).unwrap()
}

/// The API server's side of server-side apply, for the status of one VM: each manager owns the fields it applied
/// last; an apply sets its fields and drops those it owned and no longer applies. A field applied by both writers
/// fails the test: that is what this contract rules out (forced applies of differing values would flap).
#[derive(Default)]
struct Server {
    status: Map<String, Value>,
    /// Field (a top-level key, or `conditions[Type]`) to the manager that owns it.
    owners: BTreeMap<String, &'static str>,
}

impl Server {
    fn apply(&mut self, manager: &'static str, status: &Value) {
        let fields = fields(status);
        for field in fields.keys() {
            if let Some(owner) = self.owners.get(field) {
                assert_eq!(*owner, manager, "{field} is written by {owner} and {manager}");
            }
        }
        let dropped: Vec<String> = self
            .owners
            .iter()
            .filter(|(field, owner)| **owner == manager && !fields.contains_key(*field))
            .map(|(field, _)| field.clone())
            .collect();
        for field in dropped {
            self.set(&field, None);
            self.owners.remove(&field);
        }
        for (field, value) in fields {
            self.set(&field, Some(value));
            self.owners.insert(field, manager);
        }
    }

    fn set(&mut self, field: &str, value: Option<Value>) {
        let Some(kind) = field.strip_prefix("conditions[").and_then(|f| f.strip_suffix(']')) else {
            match value {
                Some(value) => self.status.insert(field.to_owned(), value),
                None => self.status.remove(field),
            };
            return;
        };
        let conditions = self.status.entry("conditions").or_insert_with(|| json!([]));
        let list = conditions.as_array_mut().unwrap();
        let at = list.iter().position(|c| c["type"] == kind);
        match (at, value) {
            (Some(i), Some(value)) => list[i] = value,
            (None, Some(value)) => list.push(value),
            (Some(i), None) => {
                list.remove(i);
            }
            (None, None) => {}
        }
    }

    fn read(&self) -> VirtualMachineStatus {
        serde_json::from_value(Value::Object(self.status.clone())).unwrap()
    }
}

/// The fields an apply body's status sets, conditions by type.
fn fields(status: &Value) -> BTreeMap<String, Value> {
    let mut fields = BTreeMap::new();
    for (key, value) in status.as_object().unwrap() {
        if key == "conditions" {
            for condition in value.as_array().unwrap() {
                fields.insert(
                    format!("conditions[{}]", condition["type"].as_str().unwrap()),
                    condition.clone(),
                );
            }
        } else {
            fields.insert(key.clone(), value.clone());
        }
    }
    fields
}

/// The launcher pod as the API shows it: running, ended with an exit code, or deleted.
#[derive(Clone, Copy, Debug)]
enum PodIs {
    Running,
    Exited(i32),
    Deleted,
}

fn pod(is: PodIs) -> Pod {
    let state = match is {
        PodIs::Running | PodIs::Deleted => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(at(0))),
            }),
            ..ContainerState::default()
        },
        PodIs::Exited(code) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                started_at: Some(Time(at(0))),
                finished_at: Some(Time(at(50))),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        },
    };
    let phase = match is {
        PodIs::Running | PodIs::Deleted => "Running",
        PodIs::Exited(0) => "Succeeded",
        PodIs::Exited(_) => "Failed",
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(POD.into()),
            namespace: Some("default".into()),
            uid: Some("pod-uid".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "vmlet.dev/v1alpha1".into(),
                kind: "VirtualMachine".into(),
                name: "web".into(),
                uid: "vm-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            ..Spec::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            start_time: Some(Time(at(0))),
            container_statuses: Some(vec![ContainerStatus {
                name: CONTAINER.into(),
                state: Some(state),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn guest(phase: LauncherPhase, exit: Option<GuestEnd>) -> ControlPoll {
    ControlPoll::Answered(Status {
        phase,
        domain_state: Some(phase.to_string()),
        interfaces: vec![vmlet_control::InterfaceStatus {
            name: "default".into(),
            mac: "02:42:0a:f4:01:07".into(),
            ip_addresses: vec!["10.244.1.7".into()],
            binding: "bridge".into(),
        }],
        launcher_pid: 1,
        exit,
        guest_agent: Some(Box::new(vmlet_control::GuestAgentStatus {
            os: Some(vmlet_control::GuestOsInfo {
                id: Some("debian".into()),
                ..Default::default()
            }),
            interfaces: vec![vmlet_control::GuestInterface {
                name: "enp1s0".into(),
                mac: Some("02:42:0a:f4:01:07".into()),
                ip_addresses: vec!["10.244.1.7/24".into()],
            }],
            ..Default::default()
        })),
        ..Status::default()
    })
}

/// One round: what the pod and the launcher's socket say, whether the node role is alive to hear it and the
/// controller looks, and when.
struct Round {
    pod: PodIs,
    probe: ControlPoll,
    node_alive: bool,
    controller_looks: bool,
    second: i64,
}

fn round(second: i64, pod: PodIs, probe: ControlPoll) -> Round {
    Round {
        pod,
        probe,
        node_alive: true,
        controller_looks: true,
        second,
    }
}

/// Both writers through a VM's life: the node role (while alive) judges its launcher and applies its fields, then
/// the controller plans from the pod and the status as the API server holds it, and applies its own.
struct Cluster {
    server: Server,
    tracking: Tracking,
    strategy: RunStrategy,
    last_beat: i64,
}

impl Cluster {
    fn new(strategy: RunStrategy) -> Cluster {
        Cluster {
            server: Server::default(),
            tracking: Tracking::default(),
            strategy,
            last_beat: 0,
        }
    }

    fn round(&mut self, round: &Round) -> Option<lifecycle::Plan> {
        let now = at(round.second);
        let pod = pod(round.pod);
        if round.node_alive {
            self.last_beat = round.second;
            let deleted = matches!(round.pod, PodIs::Deleted);
            let (state, tracking) = judge(
                round.probe.clone(),
                pod_state(&pod, deleted),
                self.tracking,
                now,
                LOST_AFTER,
            );
            self.tracking = tracking;
            let current = self.server.read();
            let derived = NodeStatus::derive(&state, Some(&current), NODE, POD, now);
            if let Update::Write(update) = status_update(Some(&current), derived) {
                self.server.apply("vmlet-node", &serde_json::to_value(&update).unwrap());
            }
        }
        if !round.controller_looks {
            return None;
        }
        let current = self.server.read();
        let launcher = match round.pod {
            PodIs::Deleted => Launcher::Absent,
            _ => launcher_pod::observe(&pod, now),
        };
        let plan = lifecycle::plan(&Observation {
            run_strategy: self.strategy,
            request: None,
            deleting: false,
            spec_error: None,
            status: &current,
            launcher,
            readiness: crate::probe::Readiness::Unprobed,
            node: lifecycle::node_health(Some(at(self.last_beat)), Duration::from_secs(40), now),
            now,
        });
        // As the reconciler does: the launcher pod it follows, when there is one.
        let mut status = plan.status.clone();
        status.launcher_pod = (!matches!(round.pod, PodIs::Deleted)).then(|| POD.to_owned());
        self.server
            .apply("vmlet-controller", &serde_json::to_value(&status).unwrap());
        Some(plan)
    }
}

/// The final status in short: phase, printable status, Ready (status, reason), Failure's reason, Paused's status,
/// the first IP address, the node's report's state.
type Summary = (
    String,
    String,
    (String, String),
    Option<String>,
    String,
    Option<String>,
    String,
);

fn summary(status: &Map<String, Value>) -> Summary {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let condition = |kind: &str| {
        status
            .get("conditions")
            .and_then(|c| c.as_array().unwrap().iter().find(|c| c["type"] == kind).cloned())
    };
    let ready = condition("Ready").unwrap();
    (
        text(&status["phase"]),
        text(&status["printableStatus"]),
        (text(&ready["status"]), text(&ready["reason"])),
        condition("Failure")
            .filter(|c| c["status"] == "True")
            .map(|c| text(&c["reason"])),
        text(&condition("Paused").unwrap()["status"]),
        status.get("interfaces").map(|i| text(&i[0]["ipAddress"])),
        text(&status["launcher"]["state"]),
    )
}

fn expect(
    phase: &str,
    printable: &str,
    ready: (&str, &str),
    failure: Option<&str>,
    paused: &str,
    ip: Option<&str>,
    report: &str,
) -> Summary {
    (
        phase.into(),
        printable.into(),
        (ready.0.into(), ready.1.into()),
        failure.map(Into::into),
        paused.into(),
        ip.map(Into::into),
        report.into(),
    )
}

#[test]
fn both_writers_make_one_status_in_each_scenario() {
    use LauncherPhase as L;
    use RunStrategy::{Always, Once};
    let up = || round(10, PodIs::Running, guest(L::Running, None));
    let ip = Some("10.244.1.7");
    let silent = |second| round(second, PodIs::Running, ControlPoll::NoAnswer);
    // (scenario, strategy, rounds after the guest came up, the final status)
    let scenarios: Vec<(&str, RunStrategy, Vec<Round>, Summary)> = vec![
        (
            "running",
            Always,
            vec![round(13, PodIs::Running, guest(L::Running, None))],
            expect("Running", "Running", ("True", "Running"), None, "False", ip, "Running"),
        ),
        (
            "paused",
            Always,
            vec![round(13, PodIs::Running, guest(L::Paused, None))],
            expect("Running", "Paused", ("False", "Paused"), None, "True", ip, "Paused"),
        ),
        (
            "guest shut down",
            Once,
            vec![
                round(13, PodIs::Running, guest(L::Stopped, Some(GuestEnd::ShutDown))),
                round(16, PodIs::Exited(0), ControlPoll::NoSocket),
            ],
            expect(
                "Succeeded",
                "Stopped",
                ("False", "Succeeded"),
                None,
                "False",
                None,
                "Exited",
            ),
        ),
        (
            "launcher crashed, exit code 4",
            Always,
            vec![round(13, PodIs::Exited(4), ControlPoll::NoSocket)],
            expect(
                "Failed",
                "CrashLoopBackOff",
                ("False", "GuestCrashed"),
                Some("GuestCrashed"),
                "False",
                None,
                "Exited",
            ),
        ),
        (
            "launcher lost: silent for longer than the node allows",
            Always,
            vec![silent(13), silent(43)],
            expect(
                "Failed",
                "CrashLoopBackOff",
                ("False", "LauncherLost"),
                Some("LauncherLost"),
                "False",
                None,
                "Lost",
            ),
        ),
        (
            "launcher pod deleted after its exit code 4 was reported",
            Once,
            vec![
                round(13, PodIs::Exited(4), ControlPoll::NoSocket),
                round(16, PodIs::Deleted, ControlPoll::NoSocket),
            ],
            expect(
                "Failed",
                "Stopped",
                ("False", "Stopped"),
                Some("GuestCrashed"),
                "False",
                None,
                "Exited",
            ),
        ),
        (
            "node lost: its last word stands beside the controller's verdict",
            Always,
            vec![Round {
                node_alive: false,
                ..round(60, PodIs::Running, ControlPoll::NoAnswer)
            }],
            expect(
                "Failed",
                "Unknown",
                ("False", "NodeUnresponsive"),
                Some("NodeUnresponsive"),
                "False",
                ip,
                "Running",
            ),
        ),
    ];
    for (what, strategy, rounds, expected) in scenarios {
        let mut cluster = Cluster::new(strategy);
        cluster.round(&round(5, PodIs::Running, ControlPoll::NoSocket));
        assert_eq!(
            summary(&cluster.server.status).0,
            "Scheduled",
            "{what}: the launcher runs, its guest not yet"
        );
        cluster.round(&up());
        for round in &rounds {
            cluster.round(round);
        }
        assert_eq!(summary(&cluster.server.status), expected, "{what}");
        // The guest's OS follows the same rule as its addresses: reported while it runs, kept while nobody knows.
        let status = &cluster.server.status;
        assert_eq!(
            status.contains_key("guestOSInfo"),
            status.contains_key("interfaces"),
            "{what}"
        );
        if let Some(interfaces) = status.get("interfaces") {
            assert_eq!(interfaces[0]["interfaceName"], "enp1s0", "{what}");
            assert_eq!(interfaces[0]["infoSource"], "domain, guest-agent", "{what}");
        }
        // Each field has one writer, by the fields' names.
        for (field, owner) in &cluster.server.owners {
            let node_field = matches!(
                field.as_str(),
                "interfaces" | "guestOSInfo" | "launcher" | "conditions[Paused]"
            );
            assert_eq!(*owner == "vmlet-node", node_field, "{what}: {field} written by {owner}");
        }
    }
}

#[test]
fn the_launcher_a_node_reports_lost_is_replaced_and_its_exit_code_reaches_the_plan() {
    let up = || round(10, PodIs::Running, guest(LauncherPhase::Running, None));
    let mut cluster = Cluster::new(RunStrategy::Always);
    cluster.round(&up());
    cluster.round(&round(13, PodIs::Running, ControlPoll::NoAnswer));
    let plan = cluster
        .round(&round(43, PodIs::Running, ControlPoll::NoAnswer))
        .unwrap();
    assert_eq!(
        plan.action,
        LauncherAction::Delete,
        "a lost launcher makes way for the next"
    );
    assert_eq!(plan.events[0].reason, "LauncherLost");

    // The pod ended with code 3 and was deleted by someone before the controller looked: the node's word on the
    // exit code names the failure, not the pod's disappearance.
    let mut cluster = Cluster::new(RunStrategy::Once);
    cluster.round(&up());
    cluster.round(&Round {
        controller_looks: false,
        ..round(13, PodIs::Exited(3), ControlPoll::NoSocket)
    });
    let plan = cluster
        .round(&round(16, PodIs::Deleted, ControlPoll::NoSocket))
        .unwrap();
    let reasons: Vec<&str> = plan.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["GuestDestroyed"]);
    assert_eq!(summary(&cluster.server.status).3.as_deref(), Some("GuestDestroyed"));
}

/// The deploy/ manifest `file`'s handler container.
fn handler_container(file: &str) -> Container {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document).unwrap();
        let spec = match value["kind"].as_str() {
            Some("Deployment") => {
                serde_yaml::from_value::<Deployment>(value)
                    .unwrap()
                    .spec
                    .unwrap()
                    .template
                    .spec
            }
            Some("DaemonSet") => {
                serde_yaml::from_value::<DaemonSet>(value)
                    .unwrap()
                    .spec
                    .unwrap()
                    .template
                    .spec
            }
            _ => continue,
        };
        return spec.unwrap().containers.remove(0);
    }
    panic!("{file} runs no handler");
}

/// What the downward API gives the environment variables, in the manifests' namespace.
fn downward(field_path: &str) -> &'static str {
    match field_path {
        "spec.nodeName" => NODE,
        "metadata.namespace" => "vmlet-system",
        "metadata.name" => "vmlet-controller-5d9f7-abcde",
        other => panic!("no value for the field {other}"),
    }
}

/// The container's command line as the handler sees it: its command and arguments, and each environment variable
/// as the option that reads it. A variable that no option of the role reads fails the test.
fn command_line(container: &Container) -> Vec<String> {
    let mut line: Vec<String> = container
        .command
        .iter()
        .chain(container.args.iter())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(line[0], "vmlet-handler");
    let cli = Cli::command();
    let role = cli.find_subcommand(&line[1]).unwrap();
    for var in container.env.iter().flatten() {
        if var.name == vmlet_log::FILTER_ENV {
            continue;
        }
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => downward(&from.field_ref.as_ref().unwrap().field_path).to_owned(),
            (None, None) => String::new(),
        };
        let option = role
            .get_arguments()
            .chain(cli.get_arguments())
            .find(|arg| arg.get_env() == Some(OsStr::new(&var.name)))
            .unwrap_or_else(|| panic!("no option of `vmlet-handler {}` reads {}", line[1], var.name));
        let long = format!("--{}", option.get_long().unwrap());
        if option.get_action().takes_values() {
            line.extend([long, value]);
        } else if !value.is_empty() && value != "0" && value != "false" {
            line.push(long);
        }
    }
    line
}

#[test]
fn the_node_daemonset_runs_the_node_role_with_options_it_has_on_the_controllers_run_directories() {
    let container = handler_container("node.yaml");
    let line = command_line(&container);
    let cli = Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert!(cli.log_json);
    let Command::Node(args) = cli.command else {
        panic!("{line:?} is not the node role");
    };
    assert_eq!(args.node_name, NODE);
    assert_eq!(
        args.namespace, "vmlet-system",
        "the Leases' namespace, where the controller reads them"
    );
    // The pods directory is the node's, where the controller's launcher pods have their run directories.
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| args.pods_dir.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{} is not mounted", args.pods_dir.display()));
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.yaml");
    let text = std::fs::read_to_string(deploy).unwrap();
    let daemon_set: DaemonSet = serde_yaml::from_str(&text).unwrap();
    let volumes = daemon_set.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
    let on_host = Path::new(&volume.host_path.as_ref().unwrap().path)
        .join(args.pods_dir.strip_prefix(&mount.mount_path).unwrap());
    assert_eq!(on_host, Path::new(RUN_DIRS_ON_HOST));
    assert_eq!(
        crate::node::socket_path(&args.pods_dir, "default", POD),
        Path::new(&launcher_pod::run_dir_on_host("default", POD)).join("control.sock"),
    );
}

#[test]
fn the_controller_deployment_runs_the_controller_with_options_it_has() {
    let container = handler_container("controller.yaml");
    let line = command_line(&container);
    let cli = Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let Command::Controller(args) = cli.command else {
        panic!("{line:?} is not the controller");
    };
    assert_eq!(args.namespace, "vmlet-system", "where the nodes' Leases are");
    assert_eq!(args.identity.as_deref(), Some("vmlet-controller-5d9f7-abcde"));
    assert!(!args.launcher_image.is_empty());
    assert_eq!(args.container_disks, crate::controller::ContainerDisks::ImageVolume);
}

#[test]
fn an_option_the_manifests_do_not_know_fails_the_check() {
    let mut container = handler_container("node.yaml");
    container.args = Some(vec!["--pod-dir".into(), "/var/run/vmlet/pods".into()]);
    assert!(Cli::try_parse_from(command_line(&container)).is_err());
    let mut container = handler_container("node.yaml");
    container.env.as_mut().unwrap()[1].name = "POD_NAMESPACE".into();
    assert!(std::panic::catch_unwind(|| command_line(&container)).is_err());
}
