//! Every verb's conversation with the API server, scripted: a mock server expects each request in turn (method, path,
//! query, body), answers it, and checks that the ClusterRole `vmlet-user` allows it. A request the script does not
//! expect fails the test.

#![allow(clippy::unwrap_used)]

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use vmlet_cli::args::Verb;
use vmlet_cli::cluster::Cluster;
use vmlet_cli::{Error, Target, rbac, verbs};

const VMS: &str = "/apis/vmlet.dev/v1alpha1/namespaces/ns/virtualmachines";
const POD: &str = "/api/v1/namespaces/ns/pods/vmlet-launcher-web-x7k2p";

struct Expect {
    method: Method,
    path: String,
    query: Vec<(&'static str, &'static str)>,
    body: Option<Value>,
    status: StatusCode,
    answer: String,
}

fn expect(method: Method, path: &str, answer: Value) -> Expect {
    Expect {
        method,
        path: path.into(),
        query: Vec::new(),
        body: None,
        status: StatusCode::OK,
        answer: answer.to_string(),
    }
}

impl Expect {
    fn query(mut self, pairs: &[(&'static str, &'static str)]) -> Self {
        self.query.extend_from_slice(pairs);
        self
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn text(mut self, text: &str) -> Self {
        self.answer = text.into();
        self
    }
}

fn vm(strategy: &str, running: bool) -> Value {
    let status = if running {
        json!({"printableStatus": "Running", "launcherPod": "vmlet-launcher-web-x7k2p",
               "conditions": [{"type": "Ready", "status": "True"}],
               "interfaces": [{"name": "default", "ipAddress": "10.244.1.7"}]})
    } else {
        json!({"printableStatus": "Stopped"})
    };
    json!({"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachine",
           "metadata": {"name": "web", "namespace": "ns", "creationTimestamp": "2030-01-01T00:00:00Z"},
           "spec": {"runStrategy": strategy, "template": {"spec": {"domain": {}}}},
           "status": status})
}

fn forbidden(resource: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
           "message": format!("pods \"vmlet-launcher-web-x7k2p\" is forbidden: User \"alice\" cannot create resource \"{resource}\" in API group \"\" in the namespace \"ns\"")})
}

/// The query as pairs, repeated keys kept in order (exec's `command`).
fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2C", ",").replace("%2F", "/")))
        .collect()
}

/// Runs `verb` against a mock API server that answers `script`, and returns the verb's result.
async fn converse(verb: Verb, script: Vec<Expect>) -> Result<u8, Error> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        for (i, step) in script.into_iter().enumerate() {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request {i} never came"));
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            assert_eq!(
                (&method, path.as_str()),
                (&step.method, step.path.as_str()),
                "request {i}"
            );
            assert!(
                rbac::allowed(method.as_str(), &path),
                "request {i} {method} {path} is not allowed by vmlet-user"
            );
            let query = pairs(request.uri().query());
            for (key, value) in &step.query {
                assert!(
                    query.contains(&((*key).to_owned(), (*value).to_owned())),
                    "request {i} {path}: {key}={value} in {query:?}"
                );
            }
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned());
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if let Some(body) = step.body {
                assert_eq!(
                    content_type.as_deref(),
                    Some("application/merge-patch+json"),
                    "request {i}"
                );
                assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), body, "request {i}");
            }
            let response = Response::builder()
                .status(step.status)
                .body(Body::from(step.answer.into_bytes()))
                .unwrap();
            send.send_response(response);
        }
        // Nothing more: a further request fails here.
        let extra = tokio::time::timeout(std::time::Duration::from_millis(200), handle.next_request()).await;
        if let Ok(Some((request, _))) = extra {
            panic!("an unexpected request: {} {}", request.method(), request.uri());
        }
    });
    let target = Target::Cluster(Cluster::new(Client::new(service, "ns"), "ns"));
    let result = verbs::run_on(target, verb).await;
    server.await.unwrap();
    result
}

fn get_vm(strategy: &str, running: bool) -> Expect {
    expect(Method::GET, &format!("{VMS}/web"), vm(strategy, running))
}

/// The exec of `vmlet-launcher connect SOCKET` in the launcher container, refused so that the mock needs no
/// websocket: the request is what is checked, and the refusal's message.
fn exec(socket: &'static str) -> Expect {
    expect(Method::GET, &format!("{POD}/exec"), forbidden("pods/exec"))
        .query(&[
            ("container", "launcher"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("command", "vmlet-launcher"),
            ("command", "connect"),
            ("command", socket),
        ])
        .status(StatusCode::FORBIDDEN)
}

fn assert_forbidden(result: Result<u8, Error>, resource: &str) {
    let error = result.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Forbidden(_)), "{text}");
    assert!(
        text.contains(&format!("cannot create resource \"{resource}\"")),
        "{text}"
    );
}

#[tokio::test]
async fn start_on_halted_sets_always() {
    let script = vec![
        get_vm("Halted", false),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Always", false))
            .body(json!({"spec": {"runStrategy": "Always"}})),
    ];
    assert_eq!(converse(Verb::Start { vm: "web".into() }, script).await.unwrap(), 0);
}

#[tokio::test]
async fn start_on_manual_asks_once() {
    let script = vec![
        get_vm("Manual", false),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Manual", false))
            .body(json!({"metadata": {"annotations": {"vmlet.dev/run": "start"}}})),
    ];
    converse(Verb::Start { vm: "web".into() }, script).await.unwrap();
}

#[tokio::test]
async fn start_on_a_running_vm_is_refused_after_one_read() {
    let error = converse(Verb::Start { vm: "web".into() }, vec![get_vm("Always", true)])
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "web: the VM is already running");
}

#[tokio::test]
async fn stop_on_always_sets_halted() {
    let script = vec![
        get_vm("Always", true),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Halted", true))
            .body(json!({"spec": {"runStrategy": "Halted"}})),
    ];
    let stop = Verb::Stop {
        vm: "web".into(),
        grace_period: None,
        force: false,
    };
    converse(stop, script).await.unwrap();
}

#[tokio::test]
async fn stop_force_kills_through_the_launcher_after_the_change() {
    let script = vec![
        get_vm("Manual", true),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Manual", true))
            .body(json!({"metadata": {"annotations": {"vmlet.dev/run": "stop"}}})),
        exec("control"),
    ];
    let stop = Verb::Stop {
        vm: "web".into(),
        grace_period: None,
        force: true,
    };
    assert_forbidden(converse(stop, script).await, "pods/exec");
}

#[tokio::test]
async fn restart_of_always_shuts_down_through_the_launcher() {
    let script = vec![get_vm("Always", true), exec("control")];
    assert_forbidden(converse(Verb::Restart { vm: "web".into() }, script).await, "pods/exec");
}

#[tokio::test]
async fn pause_and_unpause_reach_the_control_socket() {
    for verb in [Verb::Pause { vm: "web".into() }, Verb::Unpause { vm: "web".into() }] {
        let script = vec![get_vm("Always", true), exec("control")];
        assert_forbidden(converse(verb, script).await, "pods/exec");
    }
}

#[tokio::test]
async fn console_and_vnc_exec_into_the_launcher() {
    let script = vec![get_vm("Always", true), exec("console")];
    assert_forbidden(converse(Verb::Console { vm: "web".into() }, script).await, "pods/exec");
    let vnc = Verb::Vnc {
        vm: "web".into(),
        proxy_only: true,
        port: 0,
    };
    let script = vec![get_vm("Always", true), exec("vnc")];
    assert_forbidden(converse(vnc, script).await, "pods/exec");
}

#[tokio::test]
async fn port_forward_execs_a_connection_to_the_guests_port() {
    let forward = Verb::PortForward {
        vm: "web".into(),
        ports: vec!["22".into()],
        stdio: true,
        address: "127.0.0.1".into(),
    };
    let script = vec![
        get_vm("Always", true),
        expect(Method::GET, &format!("{POD}/exec"), forbidden("pods/exec"))
            .query(&[
                ("container", "launcher"),
                ("stdin", "true"),
                ("stdout", "true"),
                ("command", "vmlet-launcher"),
                ("command", "connect"),
                ("command", "guest"),
                ("command", "--port"),
                ("command", "22"),
            ])
            .status(StatusCode::FORBIDDEN),
    ];
    assert_forbidden(converse(forward, script).await, "pods/exec");
}

#[tokio::test]
async fn logs_read_the_launcher_container() {
    let script = vec![
        get_vm("Always", true),
        expect(Method::GET, &format!("{POD}/log"), Value::Null)
            .query(&[("container", "launcher")])
            .text("launcher started\n"),
    ];
    let logs = Verb::Logs {
        vm: "web".into(),
        follow: false,
    };
    converse(logs, script).await.unwrap();
}

#[tokio::test]
async fn list_and_status_read_virtual_machines() {
    let list = json!({"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachineList", "metadata": {},
                      "items": [vm("Always", true)]});
    let verb = Verb::List {
        output: None,
        all_namespaces: false,
    };
    converse(verb, vec![expect(Method::GET, VMS, list.clone())])
        .await
        .unwrap();
    let verb = Verb::List {
        output: None,
        all_namespaces: true,
    };
    let all = expect(Method::GET, "/apis/vmlet.dev/v1alpha1/virtualmachines", list);
    converse(verb, vec![all]).await.unwrap();
    let status = Verb::Status {
        vm: "web".into(),
        output: None,
    };
    converse(status, vec![get_vm("Always", true)]).await.unwrap();
}

#[tokio::test]
async fn a_missing_vm_and_a_stopped_one_say_so() {
    let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                         "message": "virtualmachines.vmlet.dev \"web\" not found"});
    let script = vec![expect(Method::GET, &format!("{VMS}/web"), missing).status(StatusCode::NOT_FOUND)];
    let error = converse(Verb::Console { vm: "web".into() }, script).await.unwrap_err();
    assert_eq!(error.to_string(), "there is no VM ns/web");

    let error = converse(Verb::Pause { vm: "web".into() }, vec![get_vm("Halted", false)])
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "the VM web is not running (its status: Stopped)");
}

#[tokio::test]
async fn stop_with_a_grace_period_presses_the_power_button_through_the_launcher() {
    let script = vec![
        get_vm("Always", true),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Halted", true))
            .body(json!({"spec": {"runStrategy": "Halted"}})),
        exec("control"),
    ];
    let stop = Verb::Stop {
        vm: "web".into(),
        grace_period: Some(5),
        force: false,
    };
    assert_forbidden(converse(stop, script).await, "pods/exec");
}

#[tokio::test]
async fn stop_with_a_grace_period_of_a_stopped_vm_changes_the_strategy_only() {
    let script = vec![
        get_vm("Always", false),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Halted", false))
            .body(json!({"spec": {"runStrategy": "Halted"}})),
    ];
    let stop = Verb::Stop {
        vm: "web".into(),
        grace_period: Some(5),
        force: false,
    };
    assert_eq!(converse(stop, script).await.unwrap(), 0);
}

#[tokio::test]
async fn restart_of_manual_asks_to_stop_waits_and_asks_to_start() {
    let script = vec![
        get_vm("Manual", true),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Manual", true))
            .body(json!({"metadata": {"annotations": {"vmlet.dev/run": "stop"}}})),
        // Still running at the first look, stopped at the second.
        get_vm("Manual", true),
        get_vm("Manual", false),
        expect(Method::PATCH, &format!("{VMS}/web"), vm("Manual", false))
            .body(json!({"metadata": {"annotations": {"vmlet.dev/run": "start"}}})),
    ];
    assert_eq!(converse(Verb::Restart { vm: "web".into() }, script).await.unwrap(), 0);
}

#[tokio::test]
async fn logs_follow_asks_the_kubelet_to_follow() {
    let script = vec![
        get_vm("Always", true),
        expect(Method::GET, &format!("{POD}/log"), Value::Null)
            .query(&[("container", "launcher"), ("follow", "true")])
            .text("launcher started\nthe guest is running\n"),
    ];
    let logs = Verb::Logs {
        vm: "web".into(),
        follow: true,
    };
    converse(logs, script).await.unwrap();
}

#[tokio::test]
async fn stop_and_start_of_a_vm_that_says_running_patch_running() {
    let says_running = |running: bool, up: bool| {
        let mut vm = vm("Always", up);
        let spec = vm["spec"].as_object_mut().unwrap();
        spec.remove("runStrategy");
        spec.insert("running".into(), json!(running));
        vm
    };
    let script = vec![
        expect(Method::GET, &format!("{VMS}/web"), says_running(true, true)),
        expect(Method::PATCH, &format!("{VMS}/web"), says_running(false, true))
            .body(json!({"spec": {"running": false}})),
    ];
    let stop = Verb::Stop {
        vm: "web".into(),
        grace_period: None,
        force: false,
    };
    assert_eq!(converse(stop, script).await.unwrap(), 0);
    let script = vec![
        expect(Method::GET, &format!("{VMS}/web"), says_running(false, false)),
        expect(Method::PATCH, &format!("{VMS}/web"), says_running(true, false))
            .body(json!({"spec": {"running": true}})),
    ];
    assert_eq!(converse(Verb::Start { vm: "web".into() }, script).await.unwrap(), 0);
}
