//! Kubernetes mode: VMs through the API server of the current kubeconfig context, with only what `kubectl` users
//! already have (docs/cli.md): `get`, `list` and `patch` on VirtualMachines; `pods/exec` into a launcher Pod's
//! `launcher` container running `vmlet-launcher connect console|vnc|control`, which joins the exec's stdin and
//! stdout to that socket of the run directory, or `connect guest --port PORT` for a port of the guest; `pods/log`.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, ListParams, LogParams, Patch, PatchParams};
use kube::config::KubeConfigOptions;
use kube::{Api, Client};
use serde_json::json;
use vmlet_api::{RUN_ANNOTATION, VirtualMachine};

use crate::run_strategy::{self, Change};
use crate::{Endpoint, Error, Result, Stream};

/// The launcher Pod's container (handler/src/controller/launcher_pod.rs).
pub const LAUNCHER_CONTAINER: &str = "launcher";

pub struct Cluster {
    client: Client,
    pub namespace: String,
    /// The kubeconfig context given on the command line, passed on to the programs vmlet runs (ssh's ProxyCommand).
    pub context: Option<String>,
}

impl Cluster {
    /// The cluster of the kubeconfig's current context, or of `context`.
    pub async fn connect(context: Option<String>, namespace: Option<String>) -> Result<Cluster> {
        let options = KubeConfigOptions {
            context: context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_kubeconfig(&options)
            .await
            .map_err(Error::Kubeconfig)?;
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(Error::Api)?;
        Ok(Cluster {
            client,
            namespace,
            context,
        })
    }

    pub fn new(client: Client, namespace: &str) -> Cluster {
        Cluster {
            client,
            namespace: namespace.to_owned(),
            context: None,
        }
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn vm(&self, name: &str) -> Result<VirtualMachine> {
        match self.vms().get(name).await {
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(Error::NoSuchVm {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                place: String::new(),
            }),
            other => Ok(other?),
        }
    }

    pub async fn list(&self, all_namespaces: bool) -> Result<Vec<VirtualMachine>> {
        let api = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.vms()
        };
        Ok(api.list(&ListParams::default()).await?.items)
    }

    /// A merge patch of the one field: the run strategy, or the run request the controller acts on once.
    pub async fn change(&self, name: &str, change: Change) -> Result<()> {
        let patch = match change {
            Change::Strategy(strategy) => json!({"spec": {"runStrategy": strategy.as_str()}}),
            Change::Running(running) => json!({"spec": {"running": running}}),
            Change::Request(request) => json!({"metadata": {"annotations": {RUN_ANNOTATION: request}}}),
        };
        self.vms()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// The VM's launcher Pod, while it has one.
    fn launcher_pod(vm: &VirtualMachine) -> Result<String> {
        let status = vm.status.as_ref();
        match status.and_then(|s| s.launcher_pod.clone()) {
            Some(pod) if run_strategy::runs(status) => Ok(pod),
            _ => Err(Error::NotRunning {
                name: vm.metadata.name.clone().unwrap_or_default(),
                status: crate::table::printable(status),
            }),
        }
    }

    pub async fn open(&self, vm: &VirtualMachine, endpoint: Endpoint) -> Result<Stream> {
        let pod = Self::launcher_pod(vm)?;
        let params = AttachParams::default()
            .container(LAUNCHER_CONTAINER)
            .stdin(true)
            .stdout(true)
            .stderr(false);
        let mut process = self.pods().exec(&pod, endpoint.launcher_command(), &params).await?;
        let (Some(stdout), Some(stdin)) = (process.stdout(), process.stdin()) else {
            return Err(Error::Launcher("the exec has no stdin or stdout".into()));
        };
        Ok(Box::new(tokio::io::join(stdout, stdin)))
    }

    /// Copies the launcher container's log to `out`, following it when asked.
    pub async fn logs(&self, vm: &VirtualMachine, follow: bool, out: &mut (impl std::io::Write + Send)) -> Result<()> {
        let status = vm.status.as_ref();
        let pod = status
            .and_then(|s| s.launcher_pod.clone())
            .ok_or_else(|| Error::NotRunning {
                name: vm.metadata.name.clone().unwrap_or_default(),
                status: crate::table::printable(status),
            })?;
        let params = LogParams {
            container: Some(LAUNCHER_CONTAINER.into()),
            follow,
            ..LogParams::default()
        };
        let mut stream = Box::pin(self.pods().log_stream(&pod, &params).await?);
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = futures::AsyncReadExt::read(&mut stream, &mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
    }
}
