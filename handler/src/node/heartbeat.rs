//! The node role's signs of life: a Lease renewed while it runs, and a Node label that says whether VMs may be
//! scheduled here, written only when that changes.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::info;

use super::{Config, FIELD_MANAGER};
use crate::cluster::{SCHEDULABLE_LABEL, lease_name};

pub struct Heartbeat {
    leases: Api<Lease>,
    nodes: Api<Node>,
    lease: Lease,
    node: String,
    /// The label as last written by this process; unknown at start, so the first beat writes it.
    labelled: Option<bool>,
    /// The Node was missing at the last try (said once).
    waiting_for_node: bool,
}

impl Heartbeat {
    /// `started` is when this process took the Lease, its `acquireTime`.
    pub fn new(client: Client, config: &Config, started: Timestamp) -> Heartbeat {
        Heartbeat {
            leases: Api::namespaced(client.clone(), &config.namespace),
            nodes: Api::all(client),
            lease: lease(config, started),
            node: config.node_name.clone(),
            labelled: None,
            waiting_for_node: false,
        }
    }

    /// Renews the Lease (creating it if needed) and sets the Node label if readiness changed.
    pub async fn beat(&mut self, ready: bool, now: Timestamp) -> Result<(), kube::Error> {
        let spec = self.lease.spec.get_or_insert_default();
        spec.renew_time = Some(MicroTime(now));
        let name = self.lease.metadata.name.clone().unwrap_or_default();
        self.leases
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&self.lease),
            )
            .await?;
        self.label(ready).await
    }

    /// Writes the Node label, unless it already says `ready`. A merge patch, not an apply: an apply creates a
    /// missing Node (which the node role may not, and should not, do); a patch of a missing one fails, and the label
    /// waits for the kubelet to register the Node.
    pub async fn label(&mut self, ready: bool) -> Result<(), kube::Error> {
        if self.labelled == Some(ready) {
            return Ok(());
        }
        let patch = json!({ "metadata": { "labels": { SCHEDULABLE_LABEL: ready.to_string() } } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self.nodes.patch(&self.node, &params, &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                if !self.waiting_for_node {
                    info!(node = %self.node, "the Node does not exist yet: its label waits for it");
                    self.waiting_for_node = true;
                }
                return Ok(());
            }
            Err(err) => return Err(err),
        }
        info!(node = %self.node, schedulable = ready, "node label set");
        self.labelled = Some(ready);
        self.waiting_for_node = false;
        Ok(())
    }
}

/// The node role's Lease, held by the node's name.
fn lease(config: &Config, started: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&config.node_name)),
            namespace: Some(config.namespace.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.node_name.clone()),
            lease_duration_seconds: i32::try_from(config.lease_duration.as_secs()).ok(),
            acquire_time: Some(MicroTime(started)),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::node::fakes;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    const LEASE_URI: &str = "/apis/coordination.k8s.io/v1/namespaces/vmlet-system/leases/vmlet-node-node-a?&force=true&fieldManager=vmlet-node";
    const NODE_URI: &str = "/api/v1/nodes/node-a?&fieldManager=vmlet-node";

    fn lease_at(renewed: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "vmlet-node-node-a", "namespace": "vmlet-system"},
            "spec": {
                "holderIdentity": "node-a",
                "leaseDurationSeconds": 40,
                "acquireTime": "1970-01-01T00:01:40.000000Z",
                "renewTime": renewed,
            },
        })
    }

    fn node_labelled(value: &str) -> Value {
        json!({"metadata": {"labels": {"vmlet.dev/schedulable": value}}})
    }

    #[tokio::test]
    async fn the_lease_is_created_then_renewed_and_the_label_written_only_on_change() {
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // First beat: the apply creates the Lease; the Node gets its label.
            let seen = server.answer(201, lease_at("1970-01-01T00:01:40.000000Z")).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", LEASE_URI));
            assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"));
            assert_eq!(seen.body.unwrap(), lease_at("1970-01-01T00:01:40.000000Z"));
            let seen = server.answer(200, node_labelled("true")).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", NODE_URI));
            assert_eq!(seen.content_type.as_deref(), Some("application/merge-patch+json"));
            assert_eq!(seen.body.unwrap(), node_labelled("true"));
            // Second beat, still ready: the Lease only, renewed, acquired at the same time.
            let seen = server.answer(200, lease_at("1970-01-01T00:01:50.000000Z")).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", LEASE_URI));
            assert_eq!(seen.body.unwrap(), lease_at("1970-01-01T00:01:50.000000Z"));
            // Third beat, not ready: Lease and label.
            let seen = server.answer(200, lease_at("1970-01-01T00:02:00.000000Z")).await;
            assert_eq!(seen.body.unwrap(), lease_at("1970-01-01T00:02:00.000000Z"));
            let seen = server.answer(200, node_labelled("false")).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", NODE_URI));
            assert_eq!(seen.body.unwrap(), node_labelled("false"));
            server.done().await;
        });
        let mut heartbeat = Heartbeat::new(client, &fakes::config(std::path::Path::new("/nonexistent")), at(100));
        heartbeat.beat(true, at(100)).await.unwrap();
        heartbeat.beat(true, at(110)).await.unwrap();
        heartbeat.beat(false, at(120)).await.unwrap();
        // Stopping while already unschedulable writes nothing more.
        heartbeat.label(false).await.unwrap();
        drop(heartbeat);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_graceful_stop_marks_the_node_unschedulable() {
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, lease_at("1970-01-01T00:01:40.000000Z")).await;
            let seen = server.answer(200, node_labelled("true")).await;
            assert_eq!(seen.body.unwrap(), node_labelled("true"));
            let seen = server.answer(200, node_labelled("false")).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", NODE_URI));
            assert_eq!(seen.body.unwrap(), node_labelled("false"));
            server.done().await;
        });
        let mut heartbeat = Heartbeat::new(client, &fakes::config(std::path::Path::new("/nonexistent")), at(100));
        heartbeat.beat(true, at(100)).await.unwrap();
        heartbeat.label(false).await.unwrap();
        drop(heartbeat);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_label_write_is_tried_again_at_the_next_beat() {
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, lease_at("1970-01-01T00:01:40.000000Z")).await;
            let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "message": "etcd is away", "reason": "ServiceUnavailable", "code": 503});
            server.answer(503, unavailable).await;
            server.answer(200, lease_at("1970-01-01T00:01:50.000000Z")).await;
            let seen = server.answer(200, node_labelled("true")).await;
            assert_eq!(seen.body.unwrap(), node_labelled("true"));
            server.done().await;
        });
        let mut heartbeat = Heartbeat::new(client, &fakes::config(std::path::Path::new("/nonexistent")), at(100));
        assert!(heartbeat.beat(true, at(100)).await.is_err());
        heartbeat.beat(true, at(110)).await.unwrap();
        drop(heartbeat);
        api.await.unwrap();
    }

    /// A Node the kubelet has not registered yet is waited for, not made: the label is written once it exists.
    #[tokio::test]
    async fn a_missing_node_is_waited_for_not_created() {
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, lease_at("1970-01-01T00:01:40.000000Z")).await;
            let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404});
            let seen = server.answer(404, missing).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", NODE_URI));
            assert_eq!(seen.content_type.as_deref(), Some("application/merge-patch+json"));
            server.answer(200, lease_at("1970-01-01T00:01:50.000000Z")).await;
            let seen = server.answer(200, node_labelled("true")).await;
            assert_eq!(seen.body.unwrap(), node_labelled("true"));
            server.done().await;
        });
        let mut heartbeat = Heartbeat::new(client, &fakes::config(std::path::Path::new("/nonexistent")), at(100));
        heartbeat.beat(true, at(100)).await.unwrap();
        heartbeat.beat(true, at(110)).await.unwrap();
        drop(heartbeat);
        api.await.unwrap();
    }
}
