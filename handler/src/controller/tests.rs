//! The controller's conversations with the API server, scripted: a mock server expects each request in turn,
//! checks it, and answers it; a request the script does not expect fails the test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::client::Body;
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use vmlet_api::{
    Condition, ConditionType, InterfaceStatus, LauncherReport, Phase, PrintableStatus, ReportedState, VirtualMachine,
    VirtualMachineStatus,
};

use super::leader::{Decision, LeaderElector, decide};
use super::pod_volumes::{ClaimMode, ClaimModes};
use super::reconcile::{FIELD_MANAGER, FINALIZER, next_look, reconcile};
use super::{ContainerDisks, Context, Error, PodConfig, launcher_pod};
use crate::lifecycle::{Exit, Launcher};

const UID: &str = "0d4c8f2e-8e2b-4c7e-9d3c-3a1f1e2b7c11";
const VMS: &str = "/apis/vmlet.dev/v1alpha1/namespaces/ns/virtualmachines";

fn vm(yaml_spec: &str) -> VirtualMachine {
    let spec = serde_yaml::from_str(yaml_spec).unwrap();
    let mut vm = VirtualMachine::new("vm1", spec);
    vm.metadata.namespace = Some("ns".into());
    vm.metadata.uid = Some(UID.into());
    vm.metadata.resource_version = Some("7".into());
    vm.metadata.finalizers = Some(vec![FINALIZER.into()]);
    vm
}

const ALWAYS: &str = r#"
runStrategy: Always
template:
  spec:
    domain:
      memory: {guest: 256Mi}
      firmware:
        kernelBoot: {hostPath: {kernelPath: /var/lib/vmlet/guest/vmlinux}}
      devices:
        interfaces: [{name: default, bridge: {}}]
    networks: [{name: default, pod: {}}]
    nodeSelector: {kubernetes.io/arch: amd64}
    terminationGracePeriodSeconds: 20
"#;

fn config() -> PodConfig {
    PodConfig {
        image: "registry.example/vmlet-launcher:1".into(),
        image_pull_policy: None,
        memory_overhead: 160 << 20,
        kvm_resource: None,
        grace_margin: 15,
        log_json: false,
        container_disks: ContainerDisks::ImageVolume,
    }
}

/// One expected request: its method, path, the query parameters it must carry, and the answer.
struct Expect {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    status: StatusCode,
    answer: Value,
}

fn expect(method: Method, path: &str, answer: Value) -> Expect {
    Expect {
        method,
        path: path.into(),
        query: Vec::new(),
        status: StatusCode::OK,
        answer,
    }
}

impl Expect {
    fn query(mut self, key: &'static str, value: &str) -> Self {
        self.query.push((key, value.into()));
        self
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

/// A request as the mock saw it.
struct Seen {
    content_type: Option<String>,
    body: Value,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers the script in order, and returns what each request carried.
async fn serve(mut handle: Handle, script: Vec<Expect>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (i, step) in script.into_iter().enumerate() {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("request {i} never came"));
        assert_eq!(request.method(), step.method, "request {i}: {}", request.uri());
        assert_eq!(request.uri().path(), step.path, "request {i}");
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        for (key, value) in &step.query {
            assert_eq!(query.get(*key), Some(value), "request {i} {}: {key}", request.uri());
        }
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        seen.push(Seen { content_type, body });
        send.send_response(
            Response::builder()
                .status(step.status)
                .body(Body::from(serde_json::to_vec(&step.answer).unwrap()))
                .unwrap(),
        );
    }
    // Nothing more may come: no second launcher, no second status write.
    let extra = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    if let Ok(Some((request, _))) = extra {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    seen
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn defaulted(mut vm: VirtualMachine) -> VirtualMachine {
    vmlet_api::defaults::apply(&mut vm, &vmlet_api::defaults::ClusterDefaults::default());
    vm
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context {
        client: client.clone(),
        events: super::events::Publisher::new(client.clone(), FIELD_MANAGER, "test"),
        leases: Api::namespaced(client, "vmlet-system"),
        pod_config: config(),
        node_timeout: Duration::from_secs(40),
        metrics: Arc::default(),
        defaults: vmlet_api::defaults::ClusterDefaults::default(),
    })
}

/// Runs `reconcile` against the script; returns its result and what the requests carried.
async fn run(vm: VirtualMachine, script: Vec<Expect>) -> (Result<kube::runtime::controller::Action, Error>, Vec<Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, script));
    let ctx = context(Client::new(service, "default"));
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(super::CachedVm::from(&vm)), ctx),
    )
    .await
    .expect("reconcile hung");
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    (result, seen)
}

fn pod_list(pods: &[Value]) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}, "items": pods})
}

fn launcher(name: &str, phase: &str, node: Option<&str>) -> Pod {
    let owner = vm(ALWAYS).controller_owner_ref(&()).unwrap();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            owner_references: Some(vec![owner]),
            creation_timestamp: Some(Time(Timestamp::now())),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(Into::into),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: (phase == "Running").then(|| {
                vec![ContainerStatus {
                    name: crate::cluster::CONTAINER.into(),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(Timestamp::now())),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]
            }),
            ..PodStatus::default()
        }),
    }
}

fn list_pods() -> Expect {
    expect(Method::GET, "/api/v1/namespaces/ns/pods", pod_list(&[]))
        .query("labelSelector", &format!("vmlet.dev/vm-uid={UID}"))
}

fn list_of(pods: &[&Pod]) -> Expect {
    let items: Vec<Value> = pods.iter().map(|p| serde_json::to_value(p).unwrap()).collect();
    expect(Method::GET, "/api/v1/namespaces/ns/pods", pod_list(&items))
}

fn apply_status() -> Expect {
    expect(
        Method::PATCH,
        &format!("{VMS}/vm1/status"),
        serde_json::to_value(vm(ALWAYS)).unwrap(),
    )
    .query("fieldManager", FIELD_MANAGER)
    .query("force", "true")
}

fn post_event() -> Expect {
    expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", json!({}))
}

fn node_lease(renewed: Timestamp) -> Expect {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("vmlet-node-n1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("n1".into()),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    };
    expect(
        Method::GET,
        "/apis/coordination.k8s.io/v1/namespaces/vmlet-system/leases/vmlet-node-n1",
        serde_json::to_value(lease).unwrap(),
    )
}

fn assert_apply(seen: &Seen) -> &Value {
    assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(seen.body["apiVersion"], "vmlet.dev/v1alpha1");
    assert_eq!(seen.body["kind"], "VirtualMachine");
    &seen.body["status"]
}

#[tokio::test]
async fn the_finalizer_comes_first() {
    let mut fresh = vm(ALWAYS);
    fresh.metadata.finalizers = None;
    let (result, seen) = run(
        fresh,
        vec![
            expect(
                Method::PATCH,
                &format!("{VMS}/vm1"),
                serde_json::to_value(vm(ALWAYS)).unwrap(),
            )
            .query("fieldManager", FIELD_MANAGER),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json-patch+json"));
    assert_eq!(
        seen[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
}

#[tokio::test]
async fn a_vm_to_run_gets_one_launcher_its_status_and_an_event() {
    let created = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "ns"}});
    let (result, seen) = run(
        vm(ALWAYS),
        vec![
            list_pods(),
            expect(Method::POST, "/api/v1/namespaces/ns/pods", created).status(StatusCode::CREATED),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    result.unwrap();

    // The Event names the launcher it is about: Events of one reason about different launchers stay apart.
    assert_eq!(
        (&seen[3].body["related"]["kind"], &seen[3].body["related"]["name"]),
        (&json!("Pod"), &json!("x"))
    );
    let pod: Pod = serde_json::from_value(seen[1].body.clone()).unwrap();
    let name = pod.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("vmlet-launcher-vm1-") && name.len() == "vmlet-launcher-vm1-".len() + 5,
        "{name}"
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("VirtualMachine", UID, Some(true))
    );
    assert_eq!(pod.metadata.labels.as_ref().unwrap()["vmlet.dev/vm-uid"], UID);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.termination_grace_period_seconds, Some(35));
    let selector = spec.node_selector.unwrap();
    assert_eq!(selector["kubernetes.io/arch"], "amd64");
    assert_eq!(
        selector["vmlet.dev/schedulable"], "true",
        "only nodes whose node role runs"
    );
    let container = &spec.containers[0];
    let env: BTreeMap<_, _> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
        .collect();
    let for_launcher: VirtualMachine = serde_json::from_str(&env["VMLET_VM_SPEC"]).unwrap();
    assert_eq!(for_launcher.metadata.uid.as_deref(), Some(UID));
    assert_eq!(
        for_launcher.spec,
        defaulted(vm(ALWAYS)).spec,
        "the VM with its defaults"
    );
    let memory = &container.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"];
    assert_eq!(memory.0, ((256u64 + 160) << 20).to_string());
    let run_dir = spec.volumes.unwrap().into_iter().find(|v| v.name == "run").unwrap();
    assert_eq!(
        run_dir.host_path.unwrap().path,
        format!("/var/run/vmlet/pods/ns_{name}")
    );

    let status = assert_apply(&seen[2]);
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["printableStatus"], "Starting");
    assert_eq!(status["launcherPod"], name.as_str());
    assert_eq!(seen[3].body["reason"], "Starting");
    assert_eq!(seen[3].body["type"], "Normal");
    assert_eq!(seen[3].body["regarding"]["name"], "vm1");
    assert_eq!(seen[3].body["reportingController"], FIELD_MANAGER);

    // The next round finds the launcher waiting for a node: no second Pod, only the new phase.
    let mut again = vm(ALWAYS);
    again.status = Some(serde_json::from_value(status.clone()).unwrap());
    let pending = launcher(&name, "Pending", None);
    let (result, seen) = run(again.clone(), vec![list_of(&[&pending]), apply_status()]).await;
    result.unwrap();
    let status = assert_apply(&seen[1]);
    assert_eq!(status["phase"], "Scheduling");

    // And once that is written, a round with nothing new writes nothing.
    again.status = Some(serde_json::from_value(status.clone()).unwrap());
    let (result, _) = run(again, vec![list_of(&[&pending])]).await;
    result.unwrap();
}

/// `spec`'s VM, whose launcher Pod `l` the node role reports running its guest.
fn running_vm(spec: &str) -> VirtualMachine {
    let mut running = vm(spec);
    running.status = Some(VirtualMachineStatus {
        phase: Some(Phase::Scheduled),
        printable_status: Some(PrintableStatus::Starting),
        launcher_pod: Some("l".into()),
        // The node role's fields: its report that the guest runs, the guest's address.
        conditions: vec![Condition {
            condition_type: ConditionType::Paused,
            status: "False".into(),
            reason: Some("NotPaused".into()),
            message: None,
            last_transition_time: Some(Time(Timestamp::now())),
        }],
        interfaces: vec![InterfaceStatus {
            name: "default".into(),
            ip_address: Some("10.244.1.7".into()),
            ..InterfaceStatus::default()
        }],
        launcher: Some(LauncherReport {
            pod: "l".into(),
            node: "n1".into(),
            state: ReportedState::Running,
            guest_exit: None,
            exit_code: None,
            message: Some("domain state running (booted)".into()),
        }),
        ..VirtualMachineStatus::default()
    });
    running
}

#[tokio::test]
async fn a_running_launcher_on_a_live_node_makes_the_vm_ready() {
    let running = running_vm(ALWAYS);
    let pod = launcher("l", "Running", Some("n1"));
    let (result, seen) = run(
        running,
        vec![
            list_of(&[&pod]),
            node_lease(Timestamp::now()),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    result.unwrap();
    let status = assert_apply(&seen[2]);
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["nodeName"], "n1");
    assert_eq!(status["launcherPod"], "l");
    // The controller's fields, and only those: the Ready condition, from the node's report.
    let fields: Vec<&str> = status.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "conditions",
            "launcherPod",
            "nodeName",
            "phase",
            "phaseTransitionTimestamps",
            "printableStatus"
        ]
    );
    let conditions = status["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["type"], "Ready");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["message"], "domain state running (booted)");
    assert_eq!(seen[3].body["reason"], "Started");
}

#[test]
fn a_vm_is_looked_at_again_when_its_plan_says_and_at_the_resync_whatever_its_node() {
    assert_eq!(next_look(None), Duration::from_secs(300));
    assert_eq!(next_look(Some(Duration::from_secs(5))), Duration::from_secs(5));
    assert_eq!(next_look(Some(Duration::from_secs(900))), Duration::from_secs(300));
}

#[tokio::test]
async fn a_vm_on_a_silent_node_is_marked_failed() {
    let mut running = vm(ALWAYS);
    running.status = Some(VirtualMachineStatus {
        phase: Some(Phase::Running),
        printable_status: Some(PrintableStatus::Running),
        launcher_pod: Some("l".into()),
        node_name: Some("n1".into()),
        ..VirtualMachineStatus::default()
    });
    let pod = launcher("l", "Running", Some("n1"));
    let stale = Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let (result, seen) = run(
        running,
        vec![list_of(&[&pod]), node_lease(stale), apply_status(), post_event()],
    )
    .await;
    result.unwrap();
    let status = assert_apply(&seen[2]);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["printableStatus"], "Unknown");
    assert_eq!(seen[3].body["reason"], "NodeUnresponsive");
    assert_eq!(seen[3].body["type"], "Warning");
}

#[tokio::test]
async fn deleting_a_vm_stops_its_launcher_then_lets_it_go() {
    let mut deleted = vm(ALWAYS);
    deleted.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    deleted.status = Some(VirtualMachineStatus {
        phase: Some(Phase::Running),
        printable_status: Some(PrintableStatus::Running),
        launcher_pod: Some("l".into()),
        ..VirtualMachineStatus::default()
    });
    let pod = launcher("l", "Running", None);
    let (result, seen) = run(
        deleted.clone(),
        vec![
            list_of(&[&pod]),
            expect(
                Method::DELETE,
                "/api/v1/namespaces/ns/pods/l",
                serde_json::to_value(&pod).unwrap(),
            ),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    assert!(result.unwrap_err().still_stopping());
    assert_eq!(seen[1].body["preconditions"]["uid"], "uid-l");
    assert_eq!(assert_apply(&seen[2])["printableStatus"], "Terminating");
    assert_eq!(seen[3].body["reason"], "Stopping");

    // The launcher is gone: the finalizer goes, and only it (the test operation guards its index).
    deleted.status = Some(serde_json::from_value(seen[2].body["status"].clone()).unwrap());
    let (result, seen) = run(
        deleted.clone(),
        vec![
            list_pods(),
            apply_status(),
            expect(
                Method::PATCH,
                &format!("{VMS}/vm1"),
                serde_json::to_value(&deleted).unwrap(),
            )
            .query("fieldManager", FIELD_MANAGER),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(
        seen[2].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );

    // A VM already gone when its finalizer goes (an earlier round removed it) is no failure.
    let (result, _) = run(
        deleted,
        vec![
            list_pods(),
            apply_status(),
            expect(Method::PATCH, &format!("{VMS}/vm1"), not_found()).status(StatusCode::NOT_FOUND),
        ],
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_manual_start_request_is_acted_on_and_removed() {
    let mut manual = vm(&ALWAYS.replace("Always", "Manual"));
    manual.metadata.annotations = Some([("vmlet.dev/run".to_owned(), "start".to_owned())].into());
    let created = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "x"}});
    let (result, seen) = run(
        manual.clone(),
        vec![
            list_pods(),
            expect(Method::POST, "/api/v1/namespaces/ns/pods", created).status(StatusCode::CREATED),
            expect(
                Method::PATCH,
                &format!("{VMS}/vm1"),
                serde_json::to_value(&manual).unwrap(),
            )
            .query("fieldManager", FIELD_MANAGER),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(
        seen[2].body,
        json!([
            {"op": "test", "path": "/metadata/annotations/vmlet.dev~1run", "value": "start"},
            {"op": "remove", "path": "/metadata/annotations/vmlet.dev~1run"},
        ])
    );
}

#[test]
fn launcher_pods_read_back_as_the_lifecycle_sees_them() {
    let now = Timestamp::now();
    assert!(matches!(
        launcher_pod::observe(&launcher("l", "Pending", None), now),
        Launcher::Pending {
            node: None,
            unschedulable: None,
            ..
        }
    ));
    assert!(matches!(
        launcher_pod::observe(&launcher("l", "Running", Some("n1")), now),
        Launcher::Running { node: Some(_), .. }
    ));
    let mut failed = launcher("l", "Failed", Some("n1"));
    failed.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: crate::cluster::CONTAINER.into(),
        state: Some(ContainerState {
            terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                exit_code: 4,
                reason: Some("Error".into()),
                finished_at: Some(Time(now)),
                ..Default::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }]);
    assert!(matches!(
        launcher_pod::observe(&failed, now),
        Launcher::Ended {
            exit: Exit::Failed { code: Some(4), .. },
            ..
        }
    ));
    let mut evicted = launcher("l", "Failed", Some("n1"));
    evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
    assert_eq!(
        match launcher_pod::observe(&evicted, now) {
            Launcher::Ended { exit, .. } => exit,
            other => panic!("{other:?}"),
        },
        Exit::Failed {
            code: None,
            reason: Some("Evicted".into())
        }
    );
    assert!(matches!(
        launcher_pod::observe(&launcher("l", "Succeeded", None), now),
        Launcher::Ended {
            exit: Exit::Succeeded,
            ..
        }
    ));
    let mut going = launcher("l", "Running", Some("n1"));
    going.metadata.deletion_timestamp = Some(Time(now));
    assert!(matches!(
        launcher_pod::observe(&going, now),
        Launcher::Terminating { .. }
    ));
    let mut unschedulable = launcher("l", "Pending", None);
    unschedulable.status.as_mut().unwrap().conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some("0/3 nodes are available".into()),
        ..Default::default()
    }]);
    assert!(matches!(
        launcher_pod::observe(&unschedulable, now),
        Launcher::Pending { unschedulable: Some(m), .. } if m == "0/3 nodes are available"
    ));
}

#[test]
fn pod_names_fit_a_host_name_and_differ_per_run() {
    let long = "a".repeat(253);
    let name = launcher_pod::new_pod_name(&long);
    assert!(name.len() <= 63, "{name}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{name}"
    );
    assert_ne!(launcher_pod::new_pod_name("vm1"), launcher_pod::new_pod_name("vm1"));
}

#[test]
fn kvm_from_a_device_plugin_replaces_the_host_device() {
    let mut with_plugin = config();
    with_plugin.kvm_resource = Some("devices.kubevirt.io/kvm".into());
    let pod = launcher_pod::build(&vm(ALWAYS), "p", &with_plugin, &ClaimModes::new()).unwrap();
    let spec = pod.spec.unwrap();
    assert!(spec.volumes.unwrap().iter().all(|v| v.name != "kvm"));
    let resources = spec.containers[0].resources.clone().unwrap();
    assert_eq!(resources.limits.unwrap()["devices.kubevirt.io/kvm"].0, "1");
    let plain = launcher_pod::build(&vm(ALWAYS), "p", &config(), &ClaimModes::new()).unwrap();
    let volumes = plain.spec.unwrap().volumes.unwrap();
    let kvm = volumes.iter().find(|v| v.name == "kvm").unwrap();
    assert_eq!(kvm.host_path.as_ref().unwrap().type_.as_deref(), Some("CharDevice"));
}

#[test]
fn memory_limit_gets_the_overhead_too() {
    let limited = vm(&ALWAYS.replace(
        "memory: {guest: 256Mi}",
        "memory: {guest: 256Mi}\n      resources: {limits: {memory: 512Mi, cpu: '2'}}",
    ));
    let pod = launcher_pod::build(&limited, "p", &config(), &ClaimModes::new()).unwrap();
    let resources = pod.spec.unwrap().containers[0].resources.clone().unwrap();
    let limits = resources.limits.unwrap();
    assert_eq!(limits["memory"].0, ((512u64 + 160) << 20).to_string());
    assert_eq!(limits["cpu"].0, "2");
}

#[test]
fn the_launchers_last_error_is_its_termination_message() {
    let pod = launcher_pod::build(&vm(ALWAYS), "p", &config(), &ClaimModes::new()).unwrap();
    let launcher = &pod.spec.unwrap().containers[0];
    assert_eq!(
        launcher.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
}

#[test]
fn the_launcher_pod_blocks_its_vms_foreground_deletion() {
    let pod = launcher_pod::build(&vm(ALWAYS), "p", &config(), &ClaimModes::new()).unwrap();
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
}

#[test]
fn lease_decisions() {
    let now = Timestamp::now();
    let ago = |s: i64| MicroTime(now - jiff::SignedDuration::from_secs(s));
    let held = |holder: &str, renewed: i64| LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        renew_time: Some(ago(renewed)),
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    };
    assert_eq!(decide(None, "me", now), Decision::Acquire { transitions: 0 });
    assert_eq!(decide(Some(&held("me", 100)), "me", now), Decision::Renew);
    assert_eq!(
        decide(Some(&held("other", 5)), "me", now),
        Decision::Follow {
            holder: "other".into(),
            expires_in: Duration::from_secs(10)
        }
    );
    assert_eq!(
        decide(Some(&held("other", 16)), "me", now),
        Decision::Acquire { transitions: 4 }
    );
    let released = LeaseSpec {
        holder_identity: None,
        ..held("x", 0)
    };
    assert_eq!(decide(Some(&released), "me", now), Decision::Acquire { transitions: 4 });
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/vmlet-system/leases";

async fn elect(script: Vec<Expect>, release: bool) -> (Result<bool, kube::Error>, Vec<Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, script));
    let api = Api::namespaced(Client::new(service, "default"), "vmlet-system");
    let elector = LeaderElector::new(api, "vmlet-controller", "me", Duration::from_secs(15));
    let result = if release {
        elector.release().await.map(|()| true)
    } else {
        elector.try_lead(Timestamp::now()).await
    };
    (result, server.await.unwrap())
}

fn lease(holder: &str, renewed_ago: i64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "vmlet-controller", "resourceVersion": "5"},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 2,
            "renewTime": MicroTime(Timestamp::now() - jiff::SignedDuration::from_secs(renewed_ago)),
        }
    })
}

#[tokio::test]
async fn the_first_candidate_creates_the_lease() {
    let (led, seen) = elect(
        vec![
            expect(Method::GET, &format!("{LEASES}/vmlet-controller"), not_found()).status(StatusCode::NOT_FOUND),
            expect(Method::POST, LEASES, lease("me", 0)).status(StatusCode::CREATED),
        ],
        false,
    )
    .await;
    assert!(led.unwrap());
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "me");
    assert_eq!(seen[1].body["spec"]["leaseDurationSeconds"], 15);
}

#[tokio::test]
async fn a_live_leader_is_followed_and_a_dead_one_replaced() {
    let (led, seen) = elect(
        vec![expect(
            Method::GET,
            &format!("{LEASES}/vmlet-controller"),
            lease("other", 3),
        )],
        false,
    )
    .await;
    assert!(!led.unwrap());
    assert_eq!(seen.len(), 1);

    let (led, seen) = elect(
        vec![
            expect(Method::GET, &format!("{LEASES}/vmlet-controller"), lease("other", 30)),
            expect(Method::PUT, &format!("{LEASES}/vmlet-controller"), lease("me", 0)),
        ],
        false,
    )
    .await;
    assert!(led.unwrap());
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "me");
    assert_eq!(seen[1].body["spec"]["leaseTransitions"], 3);
    // The write is conditional on what was read.
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "5");
}

#[tokio::test]
async fn losing_the_race_is_not_leading() {
    let conflict =
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409});
    let (led, _) = elect(
        vec![
            expect(Method::GET, &format!("{LEASES}/vmlet-controller"), lease("other", 30)),
            expect(Method::PUT, &format!("{LEASES}/vmlet-controller"), conflict).status(StatusCode::CONFLICT),
        ],
        false,
    )
    .await;
    assert!(!led.unwrap());
}

#[tokio::test]
async fn the_leader_renews_and_releases() {
    let (led, seen) = elect(
        vec![
            expect(Method::GET, &format!("{LEASES}/vmlet-controller"), lease("me", 5)),
            expect(Method::PUT, &format!("{LEASES}/vmlet-controller"), lease("me", 0)),
        ],
        false,
    )
    .await;
    assert!(led.unwrap());
    assert_eq!(
        seen[1].body["spec"]["leaseTransitions"], 2,
        "a renewal is no transition"
    );

    let (released, seen) = elect(
        vec![
            expect(Method::GET, &format!("{LEASES}/vmlet-controller"), lease("me", 5)),
            expect(Method::PUT, &format!("{LEASES}/vmlet-controller"), lease("", 0)),
        ],
        true,
    )
    .await;
    assert!(released.unwrap());
    assert_eq!(seen[1].body["spec"].get("holderIdentity"), None);
}

#[tokio::test]
async fn a_vm_that_cannot_boot_gets_no_launcher_and_says_why() {
    let no_boot = vm(&ALWAYS.replace(
        "kernelBoot: {hostPath: {kernelPath: /var/lib/vmlet/guest/vmlinux}}",
        "{}",
    ));
    let (result, seen) = run(no_boot, vec![list_pods(), apply_status(), post_event()]).await;
    result.unwrap();
    let status = assert_apply(&seen[1]);
    assert_eq!(status["conditions"][1]["type"], "Failure");
    assert_eq!(status["conditions"][1]["reason"], "InvalidSpec");
    assert_eq!(seen[2].body["type"], "Warning");
    assert_eq!(seen[2].body["reason"], "InvalidSpec");
}

/// A VM whose volumes need the cluster's help: a containerDisk, a claim, a cloud-init Secret and an SSH key Secret.
const WITH_VOLUMES: &str = r#"
runStrategy: Always
template:
  spec:
    domain:
      memory: {guest: 256Mi}
      devices:
        disks: [{name: root, disk: {}}, {name: data, disk: {}}, {name: cloudinit, disk: {}}]
        interfaces: [{name: default, bridge: {}}]
    networks: [{name: default, pod: {}}]
    volumes:
      - name: root
        containerDisk: {image: "registry.example/fedora:40", imagePullSecret: regcred}
      - name: data
        persistentVolumeClaim: {claimName: data-claim}
      - name: cloudinit
        cloudInitNoCloud: {secretRef: {name: init}}
    accessCredentials:
      - sshPublicKey: {source: {secret: {secretName: keys}}, propagationMethod: {noCloud: {}}}
"#;

fn get_claim(volume_mode: &str) -> Expect {
    expect(
        Method::GET,
        "/api/v1/namespaces/ns/persistentvolumeclaims/data-claim",
        json!({
            "kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "metadata": {"name": "data-claim", "namespace": "ns"},
            "spec": {"volumeMode": volume_mode, "accessModes": ["ReadWriteOnce"]},
        }),
    )
}

/// Reconciles a new VM `WITH_VOLUMES` whose claim is in `volume_mode`; returns the Pod it creates, as sent.
async fn pod_made_with_claim(volume_mode: &str) -> Value {
    let created = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "ns"}});
    let (result, seen) = run(
        vm(WITH_VOLUMES),
        vec![
            list_pods(),
            get_claim(volume_mode),
            expect(Method::POST, "/api/v1/namespaces/ns/pods", created).status(StatusCode::CREATED),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(assert_apply(&seen[3])["printableStatus"], "Starting");
    seen[2].body.clone()
}

/// The Pod volumes every `WITH_VOLUMES` launcher has: its own, then the VM's.
fn volumes_with(claim: Value) -> Value {
    json!([
        {"name": "run", "hostPath": {"path": "/var/run/vmlet/pods/ns_NAME", "type": "DirectoryOrCreate"}},
        {"name": "qemu-cache", "hostPath": {"path": "/var/cache/vmlet/qemu", "type": "DirectoryOrCreate"}},
        {"name": "tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}},
        {"name": "kvm", "hostPath": {"path": "/dev/kvm", "type": "CharDevice"}},
        claim,
        {"name": "user-data-2-cloudinit", "secret": {"secretName": "init"}},
        {"name": "ssh-keys-0-keys", "secret": {"secretName": "keys"}},
        {"name": "disk-0-root", "image": {"reference": "registry.example/fedora:40", "pullPolicy": "IfNotPresent"}},
    ])
}

/// The launcher container's mounts of a `WITH_VOLUMES` launcher, with the claim's if it is a filesystem.
fn mounts_with(claim: Option<Value>) -> Value {
    let mut mounts = vec![
        json!({"name": "run", "mountPath": "/var/run/vmlet"}),
        json!({"name": "qemu-cache", "mountPath": "/var/cache/vmlet/qemu"}),
        json!({"name": "tun", "mountPath": "/dev/net/tun"}),
        json!({"name": "kvm", "mountPath": "/dev/kvm"}),
    ];
    mounts.extend(claim);
    mounts.extend([
        json!({"name": "user-data-2-cloudinit", "mountPath": "/var/run/vmlet-volumes/cloud-init/cloudinit/user", "readOnly": true}),
        json!({"name": "ssh-keys-0-keys", "mountPath": "/var/run/vmlet-volumes/ssh-keys/keys", "readOnly": true}),
        json!({"name": "disk-0-root", "mountPath": "/var/run/vmlet-volumes/disks/root", "readOnly": true}),
    ]);
    Value::Array(mounts)
}

/// `pod` with its random name replaced by NAME (in its run directory too), so that it can be compared whole.
fn named_name(pod: Value) -> Value {
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let text = serde_json::to_string(&pod).unwrap().replace(&name, "NAME");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_filesystem_claim_is_read_then_mounted_beside_the_image_and_the_secrets() {
    let pod = named_name(pod_made_with_claim("Filesystem").await);
    let spec = &pod["spec"];
    assert_eq!(
        spec["volumes"],
        volumes_with(json!({"name": "disk-1-data", "persistentVolumeClaim": {"claimName": "data-claim"}}))
    );
    let launcher = &spec["containers"][0];
    assert_eq!(
        launcher["volumeMounts"],
        mounts_with(Some(
            json!({"name": "disk-1-data", "mountPath": "/var/run/vmlet-volumes/disks/data"})
        ))
    );
    assert_eq!(launcher.get("volumeDevices"), None);
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(spec.get("initContainers"), None, "image volumes need no holders");
    assert_eq!(spec.get("shareProcessNamespace"), None);
    // And the rest is the launcher Pod as ever: the request is exactly the builder's Pod.
    let claims = [("data-claim".to_owned(), ClaimMode::Filesystem)].into();
    let built = launcher_pod::build(&defaulted(vm(WITH_VOLUMES)), "NAME", &config(), &claims).unwrap();
    assert_eq!(pod, serde_json::to_value(built).unwrap());
}

#[tokio::test]
async fn a_block_claim_is_the_launchers_device_at_the_same_path() {
    let pod = named_name(pod_made_with_claim("Block").await);
    let spec = &pod["spec"];
    assert_eq!(
        spec["volumes"],
        volumes_with(json!({"name": "disk-1-data", "persistentVolumeClaim": {"claimName": "data-claim"}}))
    );
    let launcher = &spec["containers"][0];
    assert_eq!(launcher["volumeMounts"], mounts_with(None));
    assert_eq!(
        launcher["volumeDevices"],
        json!([{"name": "disk-1-data", "devicePath": "/var/run/vmlet-volumes/disks/data"}])
    );
}

#[tokio::test]
async fn a_missing_claim_makes_no_pod_and_tells_the_user_which() {
    let (result, seen) = run(
        vm(WITH_VOLUMES),
        vec![
            list_pods(),
            expect(
                Method::GET,
                "/api/v1/namespaces/ns/persistentvolumeclaims/data-claim",
                not_found(),
            )
            .status(StatusCode::NOT_FOUND),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::from_secs(15)),
        "claims are not watched: looked at again soon"
    );
    let message =
        "volume \"data\": the persistent volume claim \"data-claim\" does not exist; the VM starts once it does";
    let status = assert_apply(&seen[2]);
    assert_eq!(status["printableStatus"], "ErrorPvcNotFound");
    assert_eq!(status.get("phase"), None, "no launcher was made");
    assert_eq!(status.get("launcherPod"), None);
    let conditions: Vec<(&str, &str, &str, &str)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
                c["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [
            ("Ready", "False", "FailedPvcNotFound", message),
            ("Failure", "True", "FailedPvcNotFound", message),
        ]
    );
    assert_eq!(seen[3].body["type"], "Warning");
    assert_eq!(seen[3].body["reason"], "FailedPvcNotFound");
    assert_eq!(seen[3].body["note"], message);
}

/// A launcher Pod on node n1 whose `container` (an init container when `init`) waits for its image.
fn waiting_for_image(container: &str, init: bool, reason: &str) -> Pod {
    let mut pod = launcher("l", "Pending", Some("n1"));
    let waiting = ContainerStatus {
        name: container.into(),
        state: Some(ContainerState {
            waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some("Back-off pulling image \"registry.example/fedora:40\"".into()),
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    };
    let status = pod.status.as_mut().unwrap();
    if init {
        status.init_container_statuses = Some(vec![waiting]);
    } else {
        status.container_statuses = Some(vec![waiting]);
    }
    pod
}

#[test]
fn image_pull_failures_read_back_from_the_launcher_or_a_holder() {
    let pull = |pod: &Pod| launcher_pod::image_pull(pod).map(|p| (p.backing_off, p.message));
    let message = "Back-off pulling image \"registry.example/fedora:40\"".to_owned();
    assert_eq!(
        pull(&waiting_for_image(crate::cluster::CONTAINER, false, "ImagePullBackOff")),
        Some((true, message.clone()))
    );
    assert_eq!(
        pull(&waiting_for_image("disk-0-root", true, "ErrImagePull")),
        Some((false, message))
    );
    assert_eq!(
        pull(&waiting_for_image(
            crate::cluster::CONTAINER,
            false,
            "ContainerCreating"
        )),
        None
    );
    assert_eq!(pull(&launcher("l", "Running", Some("n1"))), None);
}

#[tokio::test]
async fn a_launcher_waiting_for_its_image_shows_the_kubelets_words() {
    let mut starting = vm(WITH_VOLUMES);
    starting.status = Some(VirtualMachineStatus {
        phase: Some(Phase::Scheduled),
        printable_status: Some(PrintableStatus::Starting),
        launcher_pod: Some("l".into()),
        node_name: Some("n1".into()),
        ..VirtualMachineStatus::default()
    });
    let pod = waiting_for_image(crate::cluster::CONTAINER, false, "ImagePullBackOff");
    let (result, seen) = run(
        starting,
        vec![
            list_of(&[&pod]),
            node_lease(Timestamp::now()),
            apply_status(),
            post_event(),
        ],
    )
    .await;
    result.unwrap();
    // Every change of state is an Event, this one too though the plan has none of its own.
    assert_eq!(seen[3].body["reason"], "StatusChanged");
    assert_eq!(seen[3].body["type"], "Warning");
    assert_eq!(seen[3].body["note"], "the VM is ImagePullBackOff (was Starting)");
    let status = assert_apply(&seen[2]);
    assert_eq!(status["printableStatus"], "ImagePullBackOff");
    assert_eq!(status["phase"], "Scheduled");
    assert_eq!(status["conditions"][0]["reason"], "ImagePullBackOff");
    assert_eq!(
        status["conditions"][0]["message"],
        "Back-off pulling image \"registry.example/fedora:40\""
    );
}

#[test]
fn a_launcher_that_ended_beside_running_holders_has_ended() {
    let now = Timestamp::now();
    let mut pod = launcher("l", "Running", Some("n1"));
    pod.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: crate::cluster::CONTAINER.into(),
        state: Some(ContainerState {
            terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                exit_code: 0,
                finished_at: Some(Time(now)),
                ..Default::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }]);
    assert!(matches!(
        launcher_pod::observe(&pod, now),
        Launcher::Ended {
            exit: Exit::Succeeded,
            ..
        }
    ));
    let status = pod.status.as_mut().unwrap();
    let state = status.container_statuses.as_mut().unwrap()[0].state.as_mut().unwrap();
    state.terminated.as_mut().unwrap().exit_code = 4;
    assert!(matches!(
        launcher_pod::observe(&pod, now),
        Launcher::Ended {
            exit: Exit::Failed { code: Some(4), .. },
            ..
        }
    ));
}

/// A failed launcher's last error, from its termination message, is the run's reason; a launcher killed by a
/// signal is killed, not failed with an exit code of its own.
#[test]
fn a_failed_launcher_says_why_and_a_killed_one_is_killed() {
    let now = Timestamp::now();
    let ended = |exit_code: i32, reason: &str, message: Option<&str>| {
        let mut pod = launcher("l", "Failed", Some("n1"));
        pod.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: crate::cluster::CONTAINER.into(),
            state: Some(ContainerState {
                terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                    exit_code,
                    reason: Some(reason.into()),
                    message: message.map(str::to_owned),
                    finished_at: Some(Time(now)),
                    ..Default::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
        match launcher_pod::observe(&pod, now) {
            Launcher::Ended { exit, .. } => exit,
            other => panic!("{other:?}"),
        }
    };
    let kernel = "could not open kernel file '/var/lib/vmlet/guest/vmlinux': No such file or directory";
    assert_eq!(
        ended(1, "Error", Some(kernel)),
        Exit::Failed {
            code: Some(1),
            reason: Some(kernel.into())
        }
    );
    // FallbackToLogsOnError: the log's tail, of which the last line is the error.
    assert_eq!(
        ended(1, "Error", Some(&format!("INFO starting\nvmlet-launcher: {kernel}\n"))),
        Exit::Failed {
            code: Some(1),
            reason: Some(format!("vmlet-launcher: {kernel}"))
        }
    );
    assert_eq!(
        ended(137, "Error", Some("INFO the guest runs")),
        Exit::Failed {
            code: None,
            reason: Some("signal 9, SIGKILL".into())
        }
    );
    assert_eq!(
        ended(137, "OOMKilled", None),
        Exit::Failed {
            code: None,
            reason: Some("out of memory: signal 9, SIGKILL".into())
        }
    );
}

#[test]
fn in_holder_mode_the_pod_shares_its_processes_and_starts_the_holders_first() {
    let holder = PodConfig {
        container_disks: ContainerDisks::Holder,
        ..config()
    };
    let claims = [("data-claim".to_owned(), ClaimMode::Filesystem)].into();
    let pod = launcher_pod::build(&vm(WITH_VOLUMES), "p", &holder, &claims).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.share_process_namespace, Some(true));
    let init: Vec<(&str, Option<&str>)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(
        init,
        [("holder-tools", None), ("disk-0-root", Some("Always"))],
        "the busybox copy, then the holder as a sidecar"
    );
    let tools = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(tools.image.as_deref(), Some("registry.example/vmlet-launcher:1"));
    let mounts: Vec<&str> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounts,
        [
            "/var/run/vmlet",
            "/var/cache/vmlet/qemu",
            "/dev/net/tun",
            "/dev/kvm",
            "/var/run/vmlet-volumes",
            "/var/run/vmlet-volumes/disks/data",
            "/var/run/vmlet-volumes/cloud-init/cloudinit/user",
            "/var/run/vmlet-volumes/ssh-keys/keys",
        ],
        "the shared volumes root, then what is mounted in it; the disk is the holder's link"
    );
}

/// A node's heartbeat brings back the VMs shown Unknown because that node fell silent, and only those.
#[test]
fn a_heartbeat_looks_again_at_the_vms_its_node_left_unknown() {
    let on = |node: &str, printable: PrintableStatus, name: &str| {
        let mut vm = vm(ALWAYS);
        vm.metadata.name = Some(name.into());
        vm.status = Some(VirtualMachineStatus {
            node_name: Some(node.into()),
            printable_status: Some(printable),
            ..VirtualMachineStatus::default()
        });
        super::CachedVm::from(&vm)
    };
    let vms = [
        on("n1", PrintableStatus::Unknown, "lost-on-n1"),
        on("n1", PrintableStatus::Running, "running-on-n1"),
        on("n2", PrintableStatus::Unknown, "lost-on-n2"),
    ];
    let names = |lease: &str| -> Vec<String> {
        super::waiting_on_node(vms.iter(), lease)
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(names("vmlet-node-n1"), ["lost-on-n1"]);
    assert_eq!(
        names("vmlet-controller"),
        Vec::<String>::new(),
        "the leader's Lease is no heartbeat"
    );
}

const PROBED: &str = r#"
runStrategy: Always
template:
  spec:
    domain:
      memory: {guest: 256Mi}
      firmware:
        kernelBoot: {hostPath: {kernelPath: /var/lib/vmlet/guest/vmlinux}}
    readinessProbe:
      httpGet: {port: 8080, path: /healthz}
      initialDelaySeconds: 20
      periodSeconds: 5
    livenessProbe:
      exec: {command: [cat, /tmp/healthy]}
      timeoutSeconds: 3
      failureThreshold: 2
"#;

/// The kubelet probes the launcher Pod: TCP and HTTP checks as they are (the Pod's address reaches the guest),
/// the guest agent's through the launcher's own command in the container.
#[test]
fn a_vms_probes_are_its_launcher_containers() {
    let pod = launcher_pod::build(&defaulted(vm(PROBED)), "l", &config(), &Default::default()).unwrap();
    let container = serde_json::to_value(&pod.spec.unwrap().containers[0]).unwrap();
    assert_eq!(
        container["readinessProbe"],
        json!({"httpGet": {"port": 8080, "path": "/healthz"}, "initialDelaySeconds": 20, "periodSeconds": 5})
    );
    assert_eq!(
        container["livenessProbe"],
        json!({
            "exec": {"command": ["vmlet-launcher", "guest-exec", "--timeout-secs=3", "--", "cat", "/tmp/healthy"]},
            "timeoutSeconds": 3,
            "failureThreshold": 2,
            "terminationGracePeriodSeconds": 1,
        })
    );
    let ping = vm(&PROBED.replace("exec: {command: [cat, /tmp/healthy]}", "guestAgentPing: {}"));
    let pod = launcher_pod::build(&defaulted(ping), "l", &config(), &Default::default()).unwrap();
    let container = serde_json::to_value(&pod.spec.unwrap().containers[0]).unwrap();
    assert_eq!(
        container["livenessProbe"]["exec"],
        json!({"command": ["vmlet-launcher", "guest-ping"]})
    );
    let plain = launcher_pod::build(&defaulted(vm(ALWAYS)), "l", &config(), &Default::default()).unwrap();
    let container = serde_json::to_value(&plain.spec.unwrap().containers[0]).unwrap();
    assert!(container.get("readinessProbe").is_none() && container.get("livenessProbe").is_none());
}

/// The VM's Ready condition of a VM with a readiness probe: its launcher Pod's, whose readiness the kubelet's
/// probe decides.
#[tokio::test]
async fn a_probed_vm_is_ready_only_while_its_launcher_pod_is() {
    let ready_condition = |pod_ready: Option<&str>| {
        let mut pod = launcher("l", "Running", Some("n1"));
        if let Some(ready) = pod_ready {
            pod.status.as_mut().unwrap().conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                message: (ready == "False").then(|| "containers with unready status: [launcher]".into()),
                ..Default::default()
            }]);
        }
        async move {
            let (result, seen) = run(
                running_vm(PROBED),
                vec![
                    list_of(&[&pod]),
                    node_lease(Timestamp::now()),
                    apply_status(),
                    post_event(),
                ],
            )
            .await;
            result.unwrap();
            let status = assert_apply(&seen[2]);
            assert_eq!(status["phase"], "Running");
            let ready = &status["conditions"][0];
            assert_eq!(ready["type"], "Ready");
            (
                ready["status"].as_str().unwrap().to_owned(),
                ready["reason"].as_str().unwrap().to_owned(),
                ready["message"].as_str().unwrap().to_owned(),
            )
        }
    };
    assert_eq!(
        ready_condition(None).await,
        (
            "False".into(),
            "GuestNotReady".into(),
            "the readiness probe has not passed yet".into()
        )
    );
    assert_eq!(
        ready_condition(Some("False")).await,
        (
            "False".into(),
            "GuestNotReady".into(),
            "the launcher Pod is not ready: containers with unready status: [launcher]".into()
        )
    );
    assert_eq!(
        ready_condition(Some("True")).await.0,
        "True",
        "the probe passes: the VM is ready"
    );
}

/// An Event published again within six minutes is the first one's series: a merge patch of its count onto the
/// Event as the API server named it, no new Event.
#[tokio::test]
async fn a_repeated_event_is_a_series_of_the_first() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let created = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "vm1.18f"}});
    let server = tokio::spawn(serve(
        handle,
        vec![
            expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                created.clone(),
            ),
            expect(
                Method::PATCH,
                "/apis/events.k8s.io/v1/namespaces/ns/events/vm1.18f",
                created,
            ),
        ],
    ));
    let ctx = context(Client::new(service, "default"));
    let regarding = vm(ALWAYS).object_ref(&());
    let event = super::events::Event {
        warning: true,
        reason: "LauncherFailed".into(),
        note: "the launcher failed: no such disk".into(),
        action: "Observe".into(),
        related: None,
    };
    let publish = async {
        ctx.events.publish(&event, &regarding).await.unwrap();
        ctx.events.publish(&event, &regarding).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(10), publish)
        .await
        .expect("publishing hung");
    let seen = server.await.unwrap();
    let first = &seen[0].body;
    assert_eq!(
        (&first["type"], &first["reason"], &first["note"], &first["action"]),
        (
            &json!("Warning"),
            &json!("LauncherFailed"),
            &json!("the launcher failed: no such disk"),
            &json!("Observe")
        )
    );
    assert_eq!(first["regarding"]["uid"], UID);
    assert_eq!(first["reportingController"], FIELD_MANAGER);
    assert_eq!(first["reportingInstance"], "test");
    assert!(first["eventTime"].is_string());
    assert_eq!(seen[1].content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(seen[1].body["series"]["count"], 2);
    assert!(seen[1].body["series"]["lastObservedTime"].is_string());
}
