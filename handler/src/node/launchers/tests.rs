use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use serde_json::{Value, json};
use vmlet_control::{GuestAgentStatus, GuestInterface, GuestOsInfo, InterfaceStatus, LeaseState, Phase, Status};

use super::*;
use crate::cluster::{MANAGED_BY, MANAGED_BY_LABEL, VM_NAME_LABEL};
use crate::node::fakes::{self, LauncherProcess};

const POD: &str = "vmlet-launcher-web-x7k2p";
const NEXT_POD: &str = "vmlet-launcher-web-z9q4r";
const VM_UID: &str = "uid-web";

fn running() -> Status {
    Status {
        phase: Phase::Running,
        domain_state: Some("running".into()),
        interfaces: vec![InterfaceStatus {
            name: "default".into(),
            mac: "02:42:0a:f4:01:07".into(),
            ip_addresses: vec!["10.244.1.7".into(), "fd00::7".into()],
            binding: "bridge".into(),
        }],
        launcher_pid: 1,
        started_at: 1_000,
        uptime_secs: 5,
        guest_agent: Some(Box::new(GuestAgentStatus {
            os: Some(GuestOsInfo {
                name: Some("Debian GNU/Linux".into()),
                id: Some("debian".into()),
                version_id: Some("12".into()),
                ..Default::default()
            }),
            interfaces: vec![GuestInterface {
                name: "enp1s0".into(),
                mac: Some("02:42:0a:f4:01:07".into()),
                ip_addresses: vec!["10.244.1.7/24".into(), "fe80::42:aff:fef4:107/64".into()],
            }],
            answered_at: 1_004,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn launcher_pod(exit_code: Option<i32>) -> Pod {
    named_launcher_pod(POD, exit_code)
}

/// A launcher pod as the controller makes it, as the watch reports it.
fn named_launcher_pod(name: &str, exit_code: Option<i32>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(
                [
                    (VM_NAME_LABEL.to_owned(), "web".to_owned()),
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                ]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "vmlet.dev/v1alpha1".into(),
                kind: "VirtualMachine".into(),
                name: "web".into(),
                uid: VM_UID.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        status: Some(PodStatus {
            phase: Some(if exit_code.is_some() { "Failed" } else { "Running" }.into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "launcher".into(),
                state: Some(ContainerState {
                    terminated: exit_code.map(|exit_code| ContainerStateTerminated {
                        exit_code,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The VM `web` at `version`, with this status.
fn vm(version: u32, status: Value) -> Value {
    json!({
        "apiVersion": "vmlet.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "web", "namespace": "default", "uid": VM_UID,
                     "resourceVersion": version.to_string()},
        "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}}}}},
        "status": status,
    })
}

/// The status as the controller leaves it while `pod` runs: its fields only.
fn controller_status(pod: &str) -> Value {
    json!({"phase": "Scheduled", "printableStatus": "Starting", "nodeName": "node-a", "launcherPod": pod,
           "restartCount": 2})
}

/// `base` with the node's fields `node` merged in, as the API server keeps both writers' fields.
fn with_node(mut base: Value, node: &Value) -> Value {
    let object = base.as_object_mut().unwrap();
    for (key, value) in node.as_object().unwrap() {
        object.insert(key.clone(), value.clone());
    }
    base
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

const VM_URI: &str = "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web";
const STATUS_URI: &str =
    "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web/status?&force=true&fieldManager=vmlet-node";

/// The node's fields while the launcher of `pod` runs its guest.
fn running_report(pod: &str) -> Value {
    json!({
        "conditions": [
            {"type": "Paused", "status": "False", "reason": "NotPaused",
             "lastTransitionTime": "1970-01-01T00:01:40Z"},
        ],
        "interfaces": [{"name": "default", "ipAddress": "10.244.1.7",
                        "ipAddresses": ["10.244.1.7", "fd00::7"], "mac": "02:42:0a:f4:01:07",
                        "interfaceName": "enp1s0", "infoSource": "domain, guest-agent"}],
        "guestOSInfo": {"name": "Debian GNU/Linux", "id": "debian", "versionId": "12"},
        "launcher": {"pod": pod, "node": "node-a", "state": "Running", "message": "domain state running"},
    })
}

/// Expects the node's apply of exactly `fields`, conditional on `version`, and answers it as the API server
/// would, at the next version.
async fn expect_apply(server: &mut fakes::ApiServer, version: u32, base: &Value, fields: &Value) -> Value {
    let now = with_node(base.clone(), fields);
    let seen = server.answer(200, vm(version + 1, now.clone())).await;
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", STATUS_URI));
    assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(
        seen.body.unwrap(),
        json!({"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachine",
               "metadata": {"resourceVersion": version.to_string()}, "status": fields})
    );
    now
}

async fn expect_get(server: &mut fakes::ApiServer, answer: Value) {
    let seen = server.answer(200, answer).await;
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", VM_URI));
}

#[tokio::test]
async fn a_running_launcher_is_read_and_reported_once_then_its_silence_and_loss() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = LauncherProcess::start(dir.path(), POD, running());
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        // The VM as the controller left it: the node reads it once, and writes only its own fields.
        let controller = controller_status(POD);
        expect_get(&mut server, vm(1, controller.clone())).await;
        let now = expect_apply(&mut server, 1, &controller, &running_report(POD)).await;
        // The launcher went silent at 110: reported, with what was known of the guest.
        let mut unreachable = running_report(POD);
        unreachable["launcher"] = json!({"pod": POD, "node": "node-a", "state": "Unreachable",
            "message": "the launcher has not answered since 1970-01-01T00:01:50Z"});
        let now = expect_apply(&mut server, 2, &now, &unreachable).await;
        // Silent for 30 s: lost, and no longer on the network nor known to run any OS.
        let lost = json!({
            "conditions": [{"type": "Paused", "status": "False", "reason": "NotPaused",
                            "lastTransitionTime": "1970-01-01T00:01:40Z"}],
            "launcher": {"pod": POD, "node": "node-a", "state": "Lost",
                         "message": "the launcher has not answered since 1970-01-01T00:01:50Z"},
        });
        let mut base = now;
        base.as_object_mut().unwrap().remove("interfaces");
        base.as_object_mut().unwrap().remove("guestOSInfo");
        expect_apply(&mut server, 3, &base, &lost).await;
        server.done().await;
    });

    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Init);
    launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
    launchers.observe(watcher::Event::InitDone);
    launchers.tick(at(100)).await;
    // Nothing changed but the uptime: no request.
    launchers.tick(at(103)).await;

    launcher.kill();
    launchers.tick(at(110)).await;
    launchers.tick(at(130)).await;
    launchers.tick(at(140)).await;
    // Lost stays lost: nothing more is written.
    launchers.tick(at(150)).await;
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_pause_is_seen_at_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = LauncherProcess::start(dir.path(), POD, running());
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let controller = controller_status(POD);
        expect_get(&mut server, vm(1, controller.clone())).await;
        let now = expect_apply(&mut server, 1, &controller, &running_report(POD)).await;
        let mut paused = running_report(POD);
        paused["conditions"][0] = json!({"type": "Paused", "status": "True", "reason": "Paused",
            "lastTransitionTime": "1970-01-01T00:01:43Z"});
        paused["launcher"]["state"] = json!("Paused");
        paused["launcher"]["message"] = json!("domain state paused (user)");
        expect_apply(&mut server, 2, &now, &paused).await;
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Apply(launcher_pod(None)));
    launchers.tick(at(100)).await;
    *launcher.vm.0.lock().unwrap() = Status {
        phase: Phase::Paused,
        domain_state: Some("paused (user)".into()),
        ..running()
    };
    launchers.tick(at(103)).await;
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_restarted_handler_adopts_a_running_launcher_without_rewriting_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let _launcher = LauncherProcess::start(dir.path(), POD, running());
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        // The VM already holds what the previous handler wrote: nothing to apply.
        expect_get(
            &mut server,
            vm(7, with_node(controller_status(POD), &running_report(POD))),
        )
        .await;
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Init);
    launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
    launchers.observe(watcher::Event::InitDone);
    launchers.tick(at(500)).await;
    launchers.tick(at(503)).await;
    drop(launchers);
    api.await.unwrap();
}

/// Plays an API server that holds the VM `web` and takes every write of the node's fields.
async fn accept_everything(mut server: fakes::ApiServer) {
    let mut version = 1;
    let mut status = controller_status(POD);
    while let Some((seen, reply)) = server.next().await {
        if seen.method == "PATCH" {
            version += 1;
            status = with_node(status, &seen.body.unwrap()["status"]);
        }
        reply.send(200, &vm(version, status.clone()));
    }
}

/// `running()` with what a launcher counts: its DHCP servers' packets and its QEMU's usage.
fn counting(lease: LeaseState, cpu_seconds: f64) -> Status {
    let counters = |lease: Option<LeaseState>, pairs: &[(&str, u64)]| vmlet_control::DhcpStatus {
        lease,
        counters: pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };
    Status {
        dhcp: Some(counters(Some(lease), &[("answered", 2), ("ignored", 1)])),
        dhcpv6: Some(Box::new(counters(None, &[("answered", 0)]))),
        router_advertisements: Some(Box::new(counters(None, &[("unsolicited", 3)]))),
        qemu: Some(vmlet_control::ProcessUsage {
            cpu_seconds,
            resident_bytes: 300 << 20,
        }),
        ..running()
    }
}

#[tokio::test]
async fn a_launchers_answers_become_its_vms_series_and_its_start_counts_from_the_pods_creation() {
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = fakes::pair();
    let api = tokio::spawn(accept_everything(server));
    let metrics = Arc::new(Metrics::default());
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), metrics.clone());
    let mut pod = launcher_pod(None);
    pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(90)));
    launchers.observe(watcher::Event::Apply(pod.clone()));
    // The pod is made; its launcher has no socket yet.
    launchers.tick(at(100)).await;
    let launcher = LauncherProcess::start(dir.path(), POD, counting(LeaseState::Offered, 1.5));
    launchers.tick(at(110)).await;
    *launcher.vm.0.lock().unwrap() = counting(LeaseState::Bound, 4.0);
    launchers.tick(at(114)).await;
    launchers.tick(at(117)).await;

    let text = metrics.encode();
    for line in [
        r#"kubevirt_vmi_phase_transition_time_from_creation_seconds_sum{phase="running"} 20.0"#,
        r#"kubevirt_vmi_phase_transition_time_from_creation_seconds_count{phase="running"} 1"#,
        "vmlet_vmi_first_lease_seconds_sum 24.0",
        "vmlet_vmi_first_lease_seconds_count 1",
        r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"} 4.0"#,
        r#"kubevirt_vmi_memory_resident_bytes{namespace="default",name="web"} 314572800"#,
        r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="dhcpv4",outcome="ignored"} 1"#,
        r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="dhcpv6",outcome="answered"} 0"#,
        r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="ra",outcome="unsolicited"} 3"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // The pod goes: so do its VM's series.
    launcher.kill();
    launchers.observe(watcher::Event::Delete(pod));
    launchers.tick(at(120)).await;
    let text = metrics.encode();
    assert!(!text.contains(r#"name="web""#), "{text}");
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_launcher_running_when_first_seen_adds_no_start_latency() {
    let dir = tempfile::tempdir().unwrap();
    let _launcher = LauncherProcess::start(dir.path(), POD, counting(LeaseState::Bound, 1.0));
    let (client, server) = fakes::pair();
    let api = tokio::spawn(accept_everything(server));
    let metrics = Arc::new(Metrics::default());
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), metrics.clone());
    let mut pod = launcher_pod(None);
    pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(90)));
    launchers.observe(watcher::Event::Apply(pod));
    launchers.tick(at(500)).await;
    launchers.tick(at(503)).await;
    let text = metrics.encode();
    assert!(text.contains("vmlet_vmi_first_lease_seconds_count 0"), "{text}");
    assert!(
        !text.contains("kubevirt_vmi_phase_transition_time_from_creation_seconds_count"),
        "{text}"
    );
    assert!(
        text.contains(r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"} 1.0"#),
        "{text}"
    );
    drop(launchers);
    api.await.unwrap();
}

/// The node's fields once the pod shows the launcher's exit code 4.
fn exited_report() -> Value {
    json!({
        "conditions": [{"type": "Paused", "status": "False", "reason": "NotPaused",
                        "lastTransitionTime": "1970-01-01T00:01:40Z"}],
        "launcher": {"pod": POD, "node": "node-a", "state": "Exited", "exitCode": 4},
    })
}

#[tokio::test]
async fn the_pods_exit_code_is_reported_once_and_its_deletion_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let before = with_node(controller_status(POD), &running_report(POD));
        expect_get(&mut server, vm(1, before.clone())).await;
        let mut base = before;
        base.as_object_mut().unwrap().remove("interfaces");
        base.as_object_mut().unwrap().remove("guestOSInfo");
        expect_apply(&mut server, 1, &base, &exited_report()).await;
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Apply(launcher_pod(Some(4))));
    launchers.tick(at(200)).await;
    launchers.observe(watcher::Event::Delete(launcher_pod(Some(4))));
    launchers.tick(at(210)).await;
    assert!(launchers.launchers.is_empty(), "a deleted pod is forgotten");
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_pod_deleted_while_its_vm_runs_is_reported_lost_even_when_missed_by_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        expect_get(
            &mut server,
            vm(1, with_node(controller_status(POD), &running_report(POD))),
        )
        .await;
        let seen = server.answer(200, vm(2, json!({}))).await;
        assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", STATUS_URI));
        let body = seen.body.unwrap();
        assert_eq!(body["status"]["launcher"]["state"], "Lost");
        assert_eq!(body["status"]["launcher"]["message"], "the launcher's pod is gone");
        assert!(body["status"].get("interfaces").is_none());
        assert!(body["status"].get("guestOSInfo").is_none());
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Apply(launcher_pod(None)));
    // The watch restarts and the pod is no longer listed: it was deleted while the watch was down.
    launchers.observe(watcher::Event::Init);
    launchers.observe(watcher::Event::InitDone);
    launchers.tick(at(300)).await;
    assert!(launchers.launchers.is_empty());
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn an_ended_pods_word_never_covers_the_next_pod_the_vm_follows() {
    let dir = tempfile::tempdir().unwrap();
    let _launcher = LauncherProcess::start(dir.path(), NEXT_POD, running());
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        // The controller follows the next pod already: the ended one's exit is not written...
        let controller = controller_status(NEXT_POD);
        expect_get(&mut server, vm(5, controller.clone())).await;
        // ...and the next pod's report is.
        expect_get(&mut server, vm(5, controller.clone())).await;
        let mut next = running_report(NEXT_POD);
        next["conditions"][0]["lastTransitionTime"] = json!("1970-01-01T00:05:00Z");
        let now = expect_apply(&mut server, 5, &controller, &next).await;
        // The ended pod is asked about again while it lingers, as the VM may yet name it; the next one is not.
        expect_get(&mut server, vm(6, now)).await;
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Apply(named_launcher_pod(POD, Some(4))));
    launchers.observe(watcher::Event::Apply(named_launcher_pod(NEXT_POD, None)));
    launchers.tick(at(300)).await;
    launchers.tick(at(303)).await;
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_write_refused_because_the_vm_changed_is_decided_again_on_the_new_status() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let running = with_node(controller_status(POD), &running_report(POD));
        expect_get(&mut server, vm(1, running.clone())).await;
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                              "message": "the object has been modified", "code": 409});
        let seen = server.answer(409, conflict).await;
        assert_eq!(seen.body.unwrap()["metadata"]["resourceVersion"], "1");
        // Meanwhile the controller moved on to the next pod: this pod's loss is not written.
        let mut moved = running;
        moved["launcherPod"] = json!(NEXT_POD);
        expect_get(&mut server, vm(2, moved)).await;
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Delete(launcher_pod(None)));
    launchers.tick(at(300)).await;
    assert!(launchers.launchers.is_empty(), "nothing left to say about it");
    drop(launchers);
    api.await.unwrap();
}

/// A VM deleted between its read and its status write (every VM's deletion may meet a round so) is no
/// failure: its pod is forgotten, with nothing to warn of.
#[tokio::test]
async fn a_vm_deleted_before_its_status_is_written_is_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let running = with_node(controller_status(POD), &running_report(POD));
        expect_get(&mut server, vm(1, running)).await;
        let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                             "code": 404});
        let seen = server.answer(404, missing).await;
        assert_eq!(seen.uri, STATUS_URI);
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Delete(launcher_pod(None)));
    launchers.tick(at(300)).await;
    assert!(launchers.launchers.is_empty(), "nothing left to say about it");
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_pod_of_an_earlier_vm_of_the_same_name_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let mut other = vm(1, json!({}));
        other["metadata"]["uid"] = json!("uid-of-a-new-vm");
        expect_get(&mut server, other).await;
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Apply(launcher_pod(Some(0))));
    launchers.tick(at(300)).await;
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn a_deleted_pod_is_kept_until_its_last_word_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let running = with_node(controller_status(POD), &running_report(POD));
        expect_get(&mut server, vm(1, running.clone())).await;
        let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "message": "etcd is away", "reason": "ServiceUnavailable", "code": 503});
        let seen = server.answer(503, unavailable).await;
        assert_eq!(seen.uri, STATUS_URI);
        // The next round reads the VM again, as a failed write may or may not have landed.
        expect_get(&mut server, vm(1, running)).await;
        let seen = server.answer(200, vm(2, json!({}))).await;
        assert_eq!(seen.uri, STATUS_URI);
        assert_eq!(seen.body.unwrap()["status"]["launcher"]["state"], "Lost");
        server.done().await;
    });
    let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
    launchers.observe(watcher::Event::Delete(launcher_pod(None)));
    launchers.tick(at(300)).await;
    assert_eq!(launchers.launchers.len(), 1, "kept: its status is not written yet");
    launchers.tick(at(303)).await;
    assert!(launchers.launchers.is_empty());
    drop(launchers);
    api.await.unwrap();
}

#[tokio::test]
async fn only_the_run_directories_of_pods_that_are_gone_and_silent_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path();
    let make = |name: &str| {
        let run = run_dir(pods, "default", name);
        std::fs::create_dir_all(run.join("disks")).unwrap();
        std::fs::write(run.join("dhcp-lease.json"), "{}").unwrap();
        run
    };
    let watched = make(POD);
    let gone = make("vmlet-launcher-web-gone1");
    let unwatched = make("vmlet-launcher-web-unwat");
    // A pod deleted by force whose launcher still runs.
    let _still_running = LauncherProcess::start(pods, "vmlet-launcher-web-forcd", running());
    let still_running = run_dir(pods, "default", "vmlet-launcher-web-forcd");
    let stranger = pods.join("not-a-run-dir");
    std::fs::create_dir_all(&stranger).unwrap();

    let (client, mut server) = fakes::pair();
    let api = tokio::spawn(async move {
        let seen = server
            .answer(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "NotFound", "code": 404}),
            )
            .await;
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            ("GET", "/api/v1/namespaces/default/pods/vmlet-launcher-web-gone1")
        );
        // A pod the watch does not show (its labels changed, say) but that exists: its directory stays.
        let seen = server
            .answer(
                200,
                json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "vmlet-launcher-web-unwat", "namespace": "default"}}),
            )
            .await;
        assert_eq!(seen.uri, "/api/v1/namespaces/default/pods/vmlet-launcher-web-unwat");
        server.done().await;
    });
    let mut config = fakes::config(pods);
    config.orphan_grace = Duration::from_secs(60);
    let mut launchers = Launchers::new(client, &config, Arc::default());
    // Before the watch has listed the node's pods, nothing is known to be gone.
    launchers.sweep(at(0)).await;
    launchers.observe(watcher::Event::Init);
    launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
    launchers.observe(watcher::Event::InitDone);
    // Found without a pod, but not for long enough.
    launchers.sweep(at(10)).await;
    launchers.sweep(at(69)).await;
    assert!(gone.exists());
    launchers.sweep(at(70)).await;
    drop(launchers);
    api.await.unwrap();

    assert!(!gone.exists());
    for kept in [&watched, &unwatched, &still_running, &stranger] {
        assert!(kept.exists(), "{}", kept.display());
    }
}
