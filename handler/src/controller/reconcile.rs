//! One reconciliation of one VM: observe its launcher Pods and its node, plan (`crate::lifecycle`), act, report.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};
use vmlet_api::instancetype::{
    Catalog, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstancetype,
    VirtualMachinePreference,
};
use vmlet_api::{RUN_ANNOTATION, VirtualMachine, VirtualMachineStatus};

use super::pod_volumes::{ClaimMode, ClaimModes, claims_of};
use super::{CachedVm, Context, Error, events, launcher_pod};
use crate::lifecycle::{
    self, EventKind, Launcher, LauncherAction, MissingClaim, NodeHealth, Observation, Obstacles, RunRequest,
};
use crate::metrics::{Metrics, ReasonLabels, RoleLabels, VmLabels};
use crate::vm_status::controller_part;

/// The finalizer that keeps a VM until its launcher is gone.
pub const FINALIZER: &str = "vmlet.dev/launcher";
/// The field manager of every status the controller applies.
pub const FIELD_MANAGER: &str = "vmlet-controller";
/// How often a VM is looked at when nothing else asks for it.
const RESYNC: Duration = Duration::from_secs(300);

/// The controller's reconcile function: the lifecycle behind the finalizer `vmlet.dev/launcher`, added first and
/// removed once the VM's deletion has stopped its launcher. As kube's finalizer helper does it, but with the
/// controller's field manager on every patch, and a VM already gone when its finalizer goes is no error.
pub async fn reconcile(cached: Arc<CachedVm>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = match cached.to_vm() {
        Ok(vm) => reconcile_vm(&vm, &ctx).await,
        Err(err) => Err(Error::UnreadableSpec(err)),
    };
    ctx.metrics
        .reconcile_seconds
        .get_or_create(&RoleLabels {
            role: "controller".into(),
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_vm(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    let namespace = vm.namespace().ok_or(Error::NoNamespace)?;
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let index = vm.finalizers().iter().position(|f| f == FINALIZER);
    match (index, vm.metadata.deletion_timestamp.is_some()) {
        (Some(_), false) => sync(vm, ctx, false).await,
        (Some(index), true) => {
            let action = sync(vm, ctx, true).await?;
            remove_finalizer(&vms, &vm.name_any(), index).await?;
            Ok(action)
        }
        (None, false) => {
            add_finalizer(&vms, vm).await?;
            // The patch changes the VM, which brings it back.
            Ok(Action::await_change())
        }
        (None, true) => Ok(Action::await_change()),
    }
}

/// The patch parameters of the controller's own writes: its field manager names it in `managedFields`.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Adds the finalizer, failing (to try again) if someone else changed the finalizers meanwhile: the API server
/// does not deduplicate them.
async fn add_finalizer(vms: &Api<VirtualMachine>, vm: &VirtualMachine) -> Result<(), Error> {
    let operations = if vm.finalizers().is_empty() {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": vm.finalizers() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(operations)?;
    vms.patch(&vm.name_any(), &patch_params(), &Patch::<()>::Json(patch))
        .await?;
    Ok(())
}

/// Removes the finalizer at `index`, only if it is still there (the test operation guards the index).
async fn remove_finalizer(vms: &Api<VirtualMachine>, name: &str, index: usize) -> Result<(), Error> {
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]))?;
    match vms.patch(name, &patch_params(), &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(()),
        // Gone already: an earlier round removed the finalizer and the VM went with it.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn sync(vm: &VirtualMachine, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let namespace = vm.namespace().ok_or(Error::NoNamespace)?;
    // The VM as it runs: the object is patched as stored, the launcher made from this.
    let mut effective = vm.clone();
    let catalog = catalog_of(vm, &ctx.client, &namespace).await?;
    let resolved = catalog.resolve(&mut effective);
    vmlet_api::defaults::apply(&mut effective, &ctx.defaults);
    let name = vm.name_any();
    let uid = vm.uid().ok_or(Error::NoUid)?;
    let now = Timestamp::now();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);

    // Listed from the API server, not a cache: whether a launcher exists must never be out of date, or a second
    // one would be made.
    let listed = pods
        .list(&ListParams::default().labels(&format!("{}={uid}", launcher_pod::VM_UID_LABEL)))
        .await?;
    let (pod, extra) = launcher_pod::newest(
        listed
            .items
            .into_iter()
            .filter(|p| launcher_pod::belongs_to(p, vm))
            .collect(),
    );
    for stale in extra.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        warn!(vm = %name, pod = %stale.name_any(), "stopping a second launcher of the VM");
        delete_pod(&pods, stale).await?;
    }
    let launcher = pod.as_ref().map_or(Launcher::Absent, |p| launcher_pod::observe(p, now));

    let node = match pod.as_ref().and_then(|p| p.spec.as_ref()?.node_name.clone()) {
        Some(node) => {
            let heartbeat = ctx
                .leases
                .get_opt(&crate::cluster::lease_name(&node))
                .await?
                .and_then(|lease| lease.spec)
                .and_then(|spec| spec.renew_time.or(spec.acquire_time))
                .map(|t| t.0);
            lifecycle::node_health(heartbeat, ctx.node_timeout, now)
        }
        None => NodeHealth::Unknown,
    };

    let annotation = vm.annotations().get(RUN_ANNOTATION).cloned();
    let previous = vm.status.clone().unwrap_or_default();
    let observation = Observation {
        run_strategy: effective.spec.run_strategy(),
        request: annotation.as_deref().map(RunRequest::parse),
        deleting,
        spec_error: resolved
            .and_then(|()| effective.validate())
            .err()
            .map(|e| e.to_string()),
        status: &previous,
        launcher,
        readiness: pod
            .as_ref()
            .map(|pod| launcher_pod::readiness(pod, &effective.spec.template.spec))
            .unwrap_or_default(),
        node,
        now,
    };
    let mut obstacles = Obstacles {
        missing_claim: None,
        image_pull: pod.as_ref().and_then(launcher_pod::image_pull),
    };
    let mut plan = lifecycle::plan_with(&observation, &obstacles);
    // The claims are read only for a launcher about to be made: the Pod needs their volume modes, and a missing
    // one stops the start.
    let mut claims = ClaimModes::new();
    if plan.action == LauncherAction::Create {
        match read_claims(&effective, &Api::namespaced(ctx.client.clone(), &namespace)).await? {
            Ok(modes) => claims = modes,
            Err(missing) => {
                obstacles.missing_claim = Some(missing);
                plan = lifecycle::plan_with(&observation, &obstacles);
            }
        }
    }
    debug!(vm = %name, ?plan.action, phase = ?plan.status.phase, "planned");

    let mut launcher_name = pod.as_ref().map(ResourceExt::name_any);
    // The launcher Pod an action was on: its Events name it as their related object, which also keeps Events of
    // one reason about different launchers (restart 1, restart 2, ...) from merging into one series.
    let mut acted_on = None;
    match plan.action {
        LauncherAction::None => {}
        LauncherAction::Create => {
            let pod_name = launcher_pod::new_pod_name(&name);
            let new = launcher_pod::build(&effective, &pod_name, &ctx.pod_config, &claims)?;
            let created = pods.create(&PostParams::default(), &new).await?;
            info!(vm = %name, pod = %pod_name, "launcher created");
            acted_on = Some(created.object_ref(&()));
            launcher_name = Some(pod_name);
        }
        LauncherAction::Delete => {
            if let Some(pod) = &pod {
                delete_pod(&pods, pod).await?;
                info!(vm = %name, pod = %pod.name_any(), "launcher deleted");
                acted_on = Some(pod.object_ref(&()));
            }
        }
    }

    if plan.consume_request
        && let Some(value) = &annotation
    {
        // Removes the request only if it is still the one acted on: a newer one is kept for the next round.
        let path = format!(
            "/metadata/annotations/{}",
            RUN_ANNOTATION.replace('~', "~0").replace('/', "~1")
        );
        let patch: json_patch::Patch = serde_json::from_value(json!([
            { "op": "test", "path": path, "value": value },
            { "op": "remove", "path": path },
        ]))?;
        vms.patch(&name, &patch_params(), &Patch::<()>::Json(patch)).await?;
    }

    count(&ctx.metrics, vm, &previous, &plan);
    let changed = lifecycle::status_change(&previous, &plan);
    let mut status = plan.status;
    status.launcher_pod = launcher_name;
    // Only the controller's fields: the node role owns the others (`crate::vm_status`).
    if status != controller_part(&previous) {
        let apply = json!({
            "apiVersion": VirtualMachine::api_version(&()),
            "kind": VirtualMachine::kind(&()),
            "status": status,
        });
        vms.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&apply))
            .await?;
    }

    let reference = vm.object_ref(&());
    for event in plan.events.iter().chain(&changed) {
        let published = events::Event {
            warning: event.kind == EventKind::Warning,
            reason: event.reason.into(),
            note: event.message.clone(),
            action: match plan.action {
                LauncherAction::Create => "StartLauncher",
                LauncherAction::Delete => "StopLauncher",
                LauncherAction::None => "Observe",
            }
            .into(),
            related: acted_on.clone(),
        };
        // An event that cannot be recorded is no reason to act again: what it reports is done.
        if let Err(err) = ctx.events.publish(&published, &reference).await {
            warn!(vm = %name, reason = event.reason, error = %err, "cannot record an event");
        }
    }

    if deleting && !plan.release {
        return Err(Error::StillStopping);
    }
    Ok(Action::requeue(next_look(plan.requeue_after)))
}

/// What a plan says for the metrics: the VM's restarts and its launchers' failures.
fn count(metrics: &Metrics, vm: &VirtualMachine, previous: &VirtualMachineStatus, plan: &lifecycle::Plan) {
    if plan.status.restart_count > previous.restart_count {
        let labels = VmLabels {
            namespace: vm.namespace().unwrap_or_default(),
            name: vm.name_any(),
        };
        let restarts = u64::from(plan.status.restart_count - previous.restart_count);
        metrics.restarts.get_or_create(&labels).inc_by(restarts);
    }
    for event in plan.events.iter().filter(|e| lifecycle::is_launcher_failure(e.reason)) {
        metrics
            .launcher_failures
            .get_or_create(&ReasonLabels {
                reason: event.reason.into(),
            })
            .inc();
    }
}

/// The instance type and preference `vm` names, as far as they exist: resolution refuses those missing.
async fn catalog_of(vm: &VirtualMachine, client: &kube::Client, namespace: &str) -> Result<Catalog, Error> {
    let mut catalog = Catalog::default();
    if let Some(m) = &vm.spec.instancetype {
        let key = (namespace.to_owned(), m.name.clone());
        match m.cluster_wide() {
            Some(true) => {
                let api: Api<VirtualMachineClusterInstancetype> = Api::all(client.clone());
                if let Some(found) = api.get_opt(&m.name).await? {
                    catalog.cluster_instancetypes.insert(m.name.clone(), found.spec.0);
                }
            }
            Some(false) => {
                let api: Api<VirtualMachineInstancetype> = Api::namespaced(client.clone(), namespace);
                if let Some(found) = api.get_opt(&m.name).await? {
                    catalog.instancetypes.insert(key, found.spec);
                }
            }
            None => {}
        }
    }
    if let Some(m) = &vm.spec.preference {
        let key = (namespace.to_owned(), m.name.clone());
        match m.cluster_wide() {
            Some(true) => {
                let api: Api<VirtualMachineClusterPreference> = Api::all(client.clone());
                if let Some(found) = api.get_opt(&m.name).await? {
                    catalog.cluster_preferences.insert(m.name.clone(), found.spec.0);
                }
            }
            Some(false) => {
                let api: Api<VirtualMachinePreference> = Api::namespaced(client.clone(), namespace);
                if let Some(found) = api.get_opt(&m.name).await? {
                    catalog.preferences.insert(key, found.spec);
                }
            }
            None => {}
        }
    }
    Ok(catalog)
}

/// When to look at the VM again if nothing asks for it before: when the plan says, else at the resync. A node
/// falling silent asks for it (`node_silence`).
pub fn next_look(planned: Option<Duration>) -> Duration {
    planned.map_or(RESYNC, |planned| planned.min(RESYNC))
}

/// The volume mode of every claim the VM names, or the first that does not exist.
async fn read_claims(
    vm: &VirtualMachine,
    api: &Api<PersistentVolumeClaim>,
) -> Result<Result<ClaimModes, MissingClaim>, Error> {
    let mut modes = ClaimModes::new();
    for (volume, claim) in claims_of(&vm.spec.template.spec) {
        let Some(found) = api.get_opt(claim).await? else {
            return Ok(Err(MissingClaim {
                volume: volume.into(),
                claim: claim.into(),
            }));
        };
        // Kubernetes' default is Filesystem.
        let block = found.spec.and_then(|s| s.volume_mode).as_deref() == Some("Block");
        let mode = if block { ClaimMode::Block } else { ClaimMode::Filesystem };
        modes.insert(claim.into(), mode);
    }
    Ok(Ok(modes))
}

/// Deletes a launcher Pod gracefully, only if it is still the one that was seen (not a newer one of the same name).
async fn delete_pod(pods: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}
