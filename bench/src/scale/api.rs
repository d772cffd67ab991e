//! A small in-process Kubernetes API server on loopback, enough for the handler's controller and node roles: lists
//! (paged) and watches with label and field selectors, get, create, replace, delete, JSON patch, merge patch and
//! server-side apply (each field manager owns the top-level status fields and condition types it last applied, so
//! that a field a role stops applying goes, as with the real API server).
//!
//! It also plays the cluster around the handler: a pod is scheduled and running as soon as it is made (on the node
//! the benchmark picks), the other nodes' node roles report a pod's launcher running at once, and their heartbeat
//! Leases are renewed. It counts every request by verb and resource, and the VMs' state changes.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A resource, by the path segment that names it.
type Resource = String;

/// Where an object lives: resource, namespace ("" for cluster-scoped), name.
type Key = (Resource, String, String);

/// Picks the node of a new pod, and says whether the benchmark's own node role runs there.
pub type Scheduler = Box<dyn Fn(&str) -> String + Send + Sync>;

/// What the benchmark reads back.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Requests by verb (`list`, `watch`, `get`, `create`, `update`, `patch`, `delete`) and resource, with the
    /// subresource after a slash.
    pub requests: BTreeMap<(String, String), u64>,
    /// Changes of a VM's `printableStatus`.
    pub state_changes: u64,
    pub pods_created: u64,
    /// When the last pod was made.
    pub last_pod_created: Option<Instant>,
    /// VMs whose printable status is `Running`.
    pub running: u64,
}

impl Counts {
    pub fn writes(&self) -> u64 {
        self.requests
            .iter()
            .filter(|((verb, _), _)| matches!(verb.as_str(), "create" | "update" | "patch" | "delete"))
            .map(|(_, n)| n)
            .sum()
    }

    /// The writes a VM's life leads to: to VMs, their status, pods and events; not the roles' Leases nor Nodes.
    pub fn vm_writes(&self) -> u64 {
        self.requests
            .iter()
            .filter(|((verb, resource), _)| {
                matches!(verb.as_str(), "create" | "update" | "patch" | "delete")
                    && !matches!(resource.as_str(), "leases" | "nodes")
            })
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// What happened between `earlier` and these counts.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut requests = self.requests.clone();
        for (key, n) in &earlier.requests {
            if let Some(now) = requests.get_mut(key) {
                *now -= n;
            }
        }
        requests.retain(|_, n| *n > 0);
        Counts {
            requests,
            state_changes: self.state_changes - earlier.state_changes,
            pods_created: self.pods_created - earlier.pods_created,
            last_pod_created: self.last_pod_created,
            running: self.running,
        }
    }
}

struct Watch {
    resource: Resource,
    namespace: Option<String>,
    selector: Selector,
    events: mpsc::UnboundedSender<Bytes>,
}

#[derive(Clone, Default)]
struct Selector {
    labels: Vec<(String, String)>,
    fields: Vec<(String, String)>,
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Selector {
        let pairs = |text: Option<&String>| -> Vec<(String, String)> {
            text.map(|t| {
                t.split(',')
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
        };
        Selector {
            labels: pairs(query.get("labelSelector")),
            fields: pairs(query.get("fieldSelector")),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
            && self.fields.iter().all(|(path, v)| {
                let found = path.split('.').fold(object, |o, segment| &o[segment]);
                found.as_str() == Some(v)
            })
    }
}

#[derive(Default)]
struct Store {
    version: u64,
    objects: BTreeMap<Key, Value>,
    /// The objects by resource and label: a label-selected list (the controller lists a VM's Pods at each
    /// reconciliation) reads only what it selects, as a real API server's watch cache does not but etcd's key
    /// layout nearly does; without it a 10,000-VM run spends its time in this server's scans.
    by_label: BTreeMap<(Resource, String, String), BTreeSet<Key>>,
    /// Per VM status: which top-level fields and condition types each field manager applied last.
    owned: BTreeMap<(Key, String), (Vec<String>, Vec<String>)>,
    watches: Vec<Watch>,
    counts: Counts,
}

pub struct ApiServer {
    store: Mutex<Store>,
    scheduler: Scheduler,
    /// The node whose node role is the real one; every other node's is played here.
    real_node: String,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

impl ApiServer {
    pub fn new(scheduler: Scheduler, real_node: &str) -> Arc<ApiServer> {
        Arc::new(ApiServer {
            store: Mutex::new(Store::default()),
            scheduler,
            real_node: real_node.to_owned(),
        })
    }

    /// The store; a panic elsewhere while holding it leaves it as consistent as any request left it.
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn counts(&self) -> Counts {
        let store = self.lock();
        store.counts.clone()
    }

    /// Serves on a free port of loopback; returns the address.
    pub async fn serve(self: &Arc<ApiServer>) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let server = Arc::clone(&server);
                        async move { Ok::<_, Infallible>(server.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(address)
    }

    /// Puts an object in place as an administrator would (`kubectl apply`), uncounted.
    pub fn insert(&self, resource: &str, mut object: Value) {
        let mut store = self.lock();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        store.version += 1;
        let version = store.version;
        stamp(&mut object, version, true);
        let key = (resource.to_owned(), namespace, name);
        store.set(key, object.clone());
        store.notify(resource, "ADDED", &object);
    }

    /// Renews the heartbeat Lease of every node but the real one, as their node roles would.
    pub fn renew_leases(&self, nodes: &[String]) {
        for node in nodes.iter().filter(|n| **n != self.real_node) {
            self.insert(
                "leases",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": format!("vmlet-node-{node}"), "namespace": "vmlet-system"},
                       "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                                "renewTime": now_rfc3339()}}),
            );
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .map(|q| url_pairs(q).into_iter().collect::<BTreeMap<String, String>>())
            .unwrap_or_default();
        let content_type = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        match parse_path(&path) {
            None => reply(status(404, "NotFound", &format!("no route {path}"))),
            Some(route) => {
                if method == hyper::Method::GET
                    && route.name.is_none()
                    && query.get("watch").is_some_and(|w| w == "true")
                {
                    self.count("watch", &route);
                    self.watch(&route, &query)
                } else {
                    reply(self.act(&method, &route, &query, &content_type, body))
                }
            }
        }
    }

    fn count(&self, verb: &str, route: &Route) {
        let mut store = self.lock();
        let resource = match &route.subresource {
            Some(sub) => format!("{}/{sub}", route.resource),
            None => route.resource.clone(),
        };
        *store.counts.requests.entry((verb.to_owned(), resource)).or_default() += 1;
    }

    fn watch(&self, route: &Route, query: &BTreeMap<String, String>) -> Response<BoxBody<Bytes, Infallible>> {
        let (events, receiver) = mpsc::unbounded_channel();
        let mut store = self.lock();
        // Everything newer than the list the watch starts from is replayed, as the API server's watch cache does.
        let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let selector = Selector::parse(query);
        for ((resource, namespace, _), object) in &store.objects {
            if *resource == route.resource
                && route.namespace.as_ref().is_none_or(|n| n == namespace)
                && selector.matches(object)
                && version_of(object) > from
            {
                let _ = events.send(event_line("ADDED", object));
            }
        }
        store.watches.push(Watch {
            resource: route.resource.clone(),
            namespace: route.namespace.clone(),
            selector,
            events,
        });
        drop(store);
        let stream = tokio_stream_from(receiver).map(|line| Ok::<_, Infallible>(Frame::data(line)));
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BoxBody::new(StreamBody::new(stream)))
            .expect("a response of a status, a header and a body")
    }

    fn act(
        &self,
        method: &hyper::Method,
        route: &Route,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        let verb = match (method.as_str(), &route.name) {
            ("GET", None) => "list",
            ("GET", Some(_)) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => return status(405, "MethodNotAllowed", "method not allowed"),
        };
        self.count(verb, route);
        let namespace = route.namespace.clone().unwrap_or_default();
        let mut store = self.lock();
        match verb {
            "list" => store.list(route, query),
            "get" => {
                let key = (
                    route.resource.clone(),
                    namespace,
                    route.name.clone().unwrap_or_default(),
                );
                match store.objects.get(&key) {
                    Some(object) => (200, object.clone()),
                    None => status(404, "NotFound", "not found"),
                }
            }
            "create" => {
                let mut object = body;
                let name = match object["metadata"]["name"].as_str() {
                    Some(name) => name.to_owned(),
                    None => {
                        let base = object["metadata"]["generateName"].as_str().unwrap_or("x").to_owned();
                        let name = format!("{base}{}", store.version + 1);
                        object["metadata"]["name"] = json!(name);
                        name
                    }
                };
                object["metadata"]["namespace"] = json!(namespace);
                let key = (route.resource.clone(), namespace.clone(), name.clone());
                if store.objects.contains_key(&key) {
                    return status(409, "AlreadyExists", "already exists");
                }
                if route.resource == "pods" {
                    let node = (self.scheduler)(&name);
                    object["spec"]["nodeName"] = json!(node);
                    object["status"] = json!({"phase": "Running", "containerStatuses": [
                        {"name": "launcher", "ready": true, "restartCount": 0, "image": "", "imageID": "",
                         "state": {"running": {"startedAt": now_rfc3339()}}}]});
                    store.counts.pods_created += 1;
                    store.counts.last_pod_created = Some(Instant::now());
                }
                let answer = store.put(&route.resource, key, object, true);
                if route.resource == "pods" {
                    self.play_node_role(&mut store, &answer);
                }
                (201, answer)
            }
            "update" => {
                let key = (
                    route.resource.clone(),
                    namespace,
                    route.name.clone().unwrap_or_default(),
                );
                let Some(current) = store.objects.get(&key) else {
                    return status(404, "NotFound", "not found");
                };
                if body["metadata"]["resourceVersion"].is_string()
                    && body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                (200, store.put(&route.resource, key, body, false))
            }
            "delete" => {
                let key = (
                    route.resource.clone(),
                    namespace,
                    route.name.clone().unwrap_or_default(),
                );
                match store.take(&key) {
                    Some(object) => {
                        store.version += 1;
                        store.notify(&route.resource, "DELETED", &object);
                        (200, object)
                    }
                    None => status(404, "NotFound", "not found"),
                }
            }
            _ => {
                let key = (
                    route.resource.clone(),
                    namespace,
                    route.name.clone().unwrap_or_default(),
                );
                let manager = query.get("fieldManager").cloned().unwrap_or_default();
                store.patch(key, route.subresource.as_deref(), content_type, body, &manager)
            }
        }
    }

    /// What another node's node role writes once a launcher runs there.
    fn play_node_role(&self, store: &mut Store, pod: &Value) {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node == self.real_node {
            return;
        }
        let Some(owner) = pod["metadata"]["ownerReferences"][0]["name"].as_str() else {
            return;
        };
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let key = ("virtualmachines".to_owned(), namespace.to_owned(), owner.to_owned());
        let report = json!({"status": {
            "launcher": {"pod": pod["metadata"]["name"], "node": node, "state": "Running"},
            "conditions": [{"type": "Paused", "status": "False", "reason": "NotPaused",
                            "lastTransitionTime": now_rfc3339()}],
        }});
        store.patch(
            key,
            Some("status"),
            "application/apply-patch+yaml",
            report,
            "vmlet-node",
        );
    }
}

/// The labels of `object`, as (key, value) pairs.
fn labels(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    /// Stores `object` at `key`, in place of what was there, and indexes its labels.
    fn set(&mut self, key: Key, object: Value) {
        self.unindex(&key);
        for (k, v) in labels(&object) {
            self.by_label
                .entry((key.0.clone(), k, v))
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(key, object);
    }

    /// Removes the object at `key`.
    fn take(&mut self, key: &Key) -> Option<Value> {
        self.unindex(key);
        self.objects.remove(key)
    }

    fn unindex(&mut self, key: &Key) {
        let Some(old) = self.objects.get(key) else {
            return;
        };
        for (k, v) in labels(old) {
            let entry = (key.0.clone(), k, v);
            if let Some(keys) = self.by_label.get_mut(&entry) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_label.remove(&entry);
                }
            }
        }
    }

    fn list(&self, route: &Route, query: &BTreeMap<String, String>) -> (u16, Value) {
        let selector = Selector::parse(query);
        let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
        let skip: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        // Candidates in key order either way, so that pages follow one another.
        let candidates: Box<dyn Iterator<Item = (&Key, &Value)>> = match selector.labels.first() {
            Some((k, v)) => {
                let keys = self.by_label.get(&(route.resource.clone(), k.clone(), v.clone()));
                Box::new(
                    keys.into_iter()
                        .flatten()
                        .filter_map(|key| self.objects.get_key_value(key)),
                )
            }
            None => Box::new(
                self.objects
                    .range((route.resource.clone(), String::new(), String::new())..)
                    .take_while(|((resource, _, _), _)| *resource == route.resource),
            ),
        };
        let matching = candidates
            .filter(|((resource, namespace, _), object)| {
                *resource == route.resource
                    && route.namespace.as_ref().is_none_or(|n| n == namespace)
                    && selector.matches(object)
            })
            .map(|(_, object)| object);
        let items: Vec<&Value> = matching.skip(skip).take(limit.saturating_add(1)).collect();
        let more = items.len() > limit;
        let items: Vec<&Value> = items.into_iter().take(limit).collect();
        let mut metadata = json!({"resourceVersion": self.version.to_string()});
        if more {
            metadata["continue"] = json!((skip + limit).to_string());
        }
        (
            200,
            json!({"kind": "List", "apiVersion": "v1", "metadata": metadata, "items": items}),
        )
    }

    fn put(&mut self, resource: &str, key: Key, mut object: Value, created: bool) -> Value {
        self.version += 1;
        stamp(&mut object, self.version, created);
        if !created && let Some(old) = self.objects.get(&key) {
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        if resource == "virtualmachines" {
            self.count_change(&key, &object);
        }
        self.set(key, object.clone());
        self.notify(resource, if created { "ADDED" } else { "MODIFIED" }, &object);
        object
    }

    fn count_change(&mut self, key: &Key, new: &Value) {
        let before = self.objects.get(key).map(|o| o["status"]["printableStatus"].clone());
        let after = &new["status"]["printableStatus"];
        if before.as_ref() != Some(after) && !after.is_null() {
            self.counts.state_changes += 1;
            let was_running = before.as_ref().and_then(Value::as_str) == Some("Running");
            if after == "Running" && !was_running {
                self.counts.running += 1;
            } else if was_running && after != "Running" {
                self.counts.running -= 1;
            }
        }
    }

    fn patch(
        &mut self,
        key: Key,
        subresource: Option<&str>,
        content_type: &str,
        body: Value,
        manager: &str,
    ) -> (u16, Value) {
        let current = self.objects.get(&key).cloned();
        let mut object = match current {
            Some(object) => object,
            // Server-side apply makes what is missing, but never a Node.
            None if content_type.starts_with("application/apply-patch") && key.0 != "nodes" => {
                let mut made = body.clone();
                made["metadata"]["name"] = json!(key.2);
                if !key.1.is_empty() {
                    made["metadata"]["namespace"] = json!(key.1);
                }
                return (201, self.put(&key.0.clone(), key, made, true));
            }
            None => return status(404, "NotFound", "not found"),
        };
        if content_type.starts_with("application/json-patch") {
            // As the API server's JSON patch, a test for null passes on a path that is not there.
            let operations: Vec<Value> = body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|op| {
                    !(op["op"] == "test"
                        && op["value"].is_null()
                        && object.pointer(op["path"].as_str().unwrap_or_default()).is_none())
                })
                .collect();
            let Ok(patch) = serde_json::from_value::<json_patch::Patch>(Value::Array(operations)) else {
                return status(400, "BadRequest", "not a JSON patch");
            };
            if json_patch::patch(&mut object, &patch).is_err() {
                return status(422, "Invalid", "the patch's test failed");
            }
        } else if content_type.starts_with("application/apply-patch") {
            if let Some(version) = body["metadata"]["resourceVersion"].as_str()
                && object["metadata"]["resourceVersion"].as_str() != Some(version)
            {
                return status(409, "Conflict", "the object has been modified");
            }
            if subresource == Some("status") {
                self.apply_status(&key, &mut object, &body["status"], manager);
            } else {
                let mut body = body;
                if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                json_patch::merge(&mut object, &body);
            }
        } else {
            json_patch::merge(&mut object, &body);
        }
        object["metadata"]["resourceVersion"] = Value::Null;
        (200, self.put(&key.0.clone(), key, object, false))
    }

    /// Server-side apply of `status` by `manager`, owning top-level fields and condition types.
    fn apply_status(&mut self, key: &Key, object: &mut Value, status: &Value, manager: &str) {
        let owner = (key.clone(), manager.to_owned());
        let (old_fields, old_conditions) = self.owned.remove(&owner).unwrap_or_default();
        let Some(whole) = object.as_object_mut() else { return };
        let target = whole.entry("status").or_insert_with(|| json!({}));
        if !target.is_object() {
            *target = json!({});
        }
        let Some(target) = target.as_object_mut() else { return };
        let empty = serde_json::Map::new();
        let fields = status.as_object().unwrap_or(&empty);
        for field in &old_fields {
            if field != "conditions" && !fields.contains_key(field) {
                target.remove(field);
            }
        }
        let new_conditions: Vec<Value> = fields
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new_types: Vec<String> = new_conditions
            .iter()
            .filter_map(|c| c["type"].as_str().map(str::to_owned))
            .collect();
        let mut conditions: Vec<Value> = target
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                let kind = c["type"].as_str().unwrap_or_default().to_owned();
                !old_conditions.contains(&kind) && !new_types.contains(&kind)
            })
            .collect();
        conditions.extend(new_conditions);
        for (field, value) in fields {
            if field != "conditions" {
                target.insert(field.clone(), value.clone());
            }
        }
        if conditions.is_empty() {
            target.remove("conditions");
        } else {
            target.insert("conditions".into(), Value::Array(conditions));
        }
        self.owned.insert(owner, (fields.keys().cloned().collect(), new_types));
    }

    fn notify(&mut self, resource: &str, kind: &str, object: &Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.watches.retain(|watch| {
            if watch.resource != resource
                || watch.namespace.as_ref().is_some_and(|n| n != namespace)
                || !watch.selector.matches(object)
            {
                return !watch.events.is_closed();
            }
            watch.events.send(event_line(kind, object)).is_ok()
        });
    }
}

fn stamp(object: &mut Value, version: u64, created: bool) {
    let metadata = &mut object["metadata"];
    metadata["resourceVersion"] = json!(version.to_string());
    if created {
        metadata["uid"] = json!(format!("uid-{version}"));
        metadata["creationTimestamp"] = json!(now_rfc3339());
    }
}

fn version_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn reply((code, body): (u16, Value)) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(BoxBody::new(Full::new(Bytes::from(
            serde_json::to_vec(&body).unwrap_or_default(),
        ))))
        .expect("a response of a status, a header and a body")
}

fn tokio_stream_from(mut receiver: mpsc::UnboundedReceiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

struct Route {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1/...` or `/apis/GROUP/VERSION/...`, then `namespaces/NS/` or not, then `RESOURCE[/NAME[/SUB]]`.
fn parse_path(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match *segments.first()? {
        "api" => &segments[2.min(segments.len())..],
        "apis" => &segments[3.min(segments.len())..],
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    Some(Route {
        resource: resource.to_owned(),
        namespace,
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

impl ApiServer {
    /// The pods scheduled to `node`: namespace and name.
    pub fn pods_on(&self, node: &str) -> Vec<(String, String)> {
        let store = self.lock();
        store
            .objects
            .iter()
            .filter(|((resource, _, _), pod)| resource == "pods" && pod["spec"]["nodeName"] == node)
            .map(|((_, namespace, name), _)| (namespace.clone(), name.clone()))
            .collect()
    }

    pub fn has(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let store = self.lock();
        store
            .objects
            .contains_key(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resource_namespace_object_and_subresource() {
        let route = parse_path("/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web/status").unwrap();
        assert_eq!(
            (
                route.resource.as_str(),
                route.namespace.as_deref(),
                route.name.as_deref(),
                route.subresource.as_deref()
            ),
            ("virtualmachines", Some("default"), Some("web"), Some("status"))
        );
        let route = parse_path("/api/v1/pods").unwrap();
        assert_eq!(
            (route.resource.as_str(), route.namespace, route.name),
            ("pods", None, None)
        );
        let route = parse_path("/api/v1/nodes/node-a").unwrap();
        assert_eq!(
            (route.resource.as_str(), route.name.as_deref()),
            ("nodes", Some("node-a"))
        );
    }

    #[test]
    fn a_label_selected_list_finds_what_carries_the_label_now() {
        let mut store = Store::default();
        let pod = |name: &str, vm: &str| json!({"metadata": {"name": name, "labels": {"vm": vm}}});
        for (name, vm) in [("a", "one"), ("b", "two"), ("c", "one")] {
            store.set(("pods".into(), "default".into(), name.into()), pod(name, vm));
        }
        store.set(
            ("virtualmachines".into(), "default".into(), "one".into()),
            pod("one", "one"),
        );
        store.set(("pods".into(), "default".into(), "c".into()), pod("c", "two"));
        store.take(&("pods".into(), "default".into(), "b".into()));
        let route = parse_path("/api/v1/namespaces/default/pods").unwrap();
        let names = |query: &[(&str, &str)]| -> Vec<String> {
            let query = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let (_, list) = store.list(&route, &query);
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&[("labelSelector", "vm=one")]), ["a"]);
        assert_eq!(names(&[("labelSelector", "vm=two")]), ["c"]);
        assert_eq!(names(&[]), ["a", "c"], "only pods");
        assert_eq!(names(&[("limit", "1"), ("continue", "1")]), ["c"]);
    }

    #[test]
    fn status_apply_owns_fields_per_manager() {
        let mut store = Store::default();
        let key: Key = ("virtualmachines".into(), "default".into(), "web".into());
        store.objects.insert(
            key.clone(),
            json!({"metadata": {"name": "web", "resourceVersion": "1"}}),
        );
        let apply = |store: &mut Store, status: Value, manager: &str| {
            store.patch(
                key.clone(),
                Some("status"),
                "application/apply-patch+yaml",
                json!({"status": status}),
                manager,
            )
        };
        apply(
            &mut store,
            json!({"phase": "Running", "conditions": [{"type": "Ready"}]}),
            "controller",
        );
        apply(
            &mut store,
            json!({"interfaces": [1], "conditions": [{"type": "Paused"}]}),
            "node",
        );
        let (_, object) = apply(
            &mut store,
            json!({"conditions": [{"type": "Paused", "status": "True"}]}),
            "node",
        );
        assert_eq!(object["status"]["phase"], "Running");
        assert!(object["status"].get("interfaces").is_none(), "{object}");
        assert_eq!(object["status"]["conditions"].as_array().unwrap().len(), 2, "{object}");
    }
}
