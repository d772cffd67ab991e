//! Prometheus metrics of the handler, in every role, served in the text exposition format on `/metrics`.
//!
//! Where KubeVirt has a metric of the same meaning, it has KubeVirt's name, so that dashboards made for KubeVirt
//! read vmlet's: `kubevirt_vmi_phase_count`, `kubevirt_vmi_phase_transition_time_from_creation_seconds`,
//! `kubevirt_vmi_cpu_usage_seconds_total`, `kubevirt_vmi_memory_resident_bytes`, and client-go's
//! `rest_client_requests_total`. The others are vmlet's own, prefixed `vmlet_`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// A VM.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
pub struct VmLabels {
    pub namespace: String,
    pub name: String,
}

/// How many VMs are in a phase on a node (KubeVirt's labels, those vmlet knows).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
    pub node: String,
}

/// A phase a VM reached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub phase: String,
}

/// Why a launcher's run failed: the VM's Failure reason (`LauncherFailed`, `LauncherKilled`, `GuestCrashed`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// A VM's DHCP packets by what became of them (the launcher's counters).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
pub struct DhcpLabels {
    pub namespace: String,
    pub name: String,
    pub protocol: String,
    pub outcome: String,
}

/// A request to the Kubernetes API, as client-go labels it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: String,
}

/// Which role reconciled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the handler.
pub struct Metrics {
    registry: Registry,
    pub phases: Family<PhaseLabels, Gauge>,
    pub from_creation: HistogramFamily<TransitionLabels>,
    pub first_lease: Histogram,
    pub restarts: Family<VmLabels, Counter>,
    pub launcher_failures: Family<ReasonLabels, Counter>,
    pub dhcp_packets: Family<DhcpLabels, Gauge>,
    pub cpu_seconds: Family<VmLabels, Counter<f64, AtomicU64>>,
    pub resident_bytes: Family<VmLabels, Gauge>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub reconcile_seconds: HistogramFamily<RoleLabels>,
}

/// Start latencies: from half a second to about half an hour.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 13))
}

/// Reconcile durations: from a millisecond to about half a minute.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let phases = Family::<PhaseLabels, Gauge>::default();
        registry.register("kubevirt_vmi_phase_count", "VMs by phase and node", phases.clone());
        let from_creation = HistogramFamily::<TransitionLabels>::new_with_constructor(latency_histogram);
        registry.register(
            "kubevirt_vmi_phase_transition_time_from_creation_seconds",
            "Seconds from a VM's launcher being made to the VM reaching a phase",
            from_creation.clone(),
        );
        let first_lease = latency_histogram();
        registry.register(
            "vmlet_vmi_first_lease_seconds",
            "Seconds from a VM's launcher being made to its guest's first address",
            first_lease.clone(),
        );
        let restarts = Family::<VmLabels, Counter>::default();
        registry.register(
            "vmlet_vm_restarts",
            "Restarts the run strategy made on its own",
            restarts.clone(),
        );
        let launcher_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "vmlet_launcher_failures",
            "Launcher runs that failed, by the VM's Failure reason",
            launcher_failures.clone(),
        );
        let dhcp_packets = Family::<DhcpLabels, Gauge>::default();
        registry.register(
            "vmlet_vmi_dhcp_packets",
            "The VM's DHCP packets by outcome, as its launcher counts them since it started",
            dhcp_packets.clone(),
        );
        let cpu_seconds = Family::<VmLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "kubevirt_vmi_cpu_usage_seconds",
            "CPU time of the VM's QEMU, user and system",
            cpu_seconds.clone(),
        );
        let resident_bytes = Family::<VmLabels, Gauge>::default();
        registry.register(
            "kubevirt_vmi_memory_resident_bytes",
            "Resident memory of the VM's QEMU",
            resident_bytes.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "rest_client_requests",
            "Requests to the Kubernetes API by method and status code",
            api_requests.clone(),
        );
        let reconcile_seconds = HistogramFamily::<RoleLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "vmlet_reconcile_duration_seconds",
            "How long a reconciliation took: one VM for the controller, one pass over every VM in standalone mode",
            reconcile_seconds.clone(),
        );
        Metrics {
            registry,
            phases,
            from_creation,
            first_lease,
            restarts,
            launcher_failures,
            dhcp_packets,
            cpu_seconds,
            resident_bytes,
            api_requests,
            reconcile_seconds,
        }
    }
}

impl Metrics {
    /// The metrics in the text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    /// Sets a VM's CPU time counter to `seconds`, the QEMU's total: a new QEMU (a restart) counts on from there.
    pub fn set_cpu_seconds(&self, vm: &VmLabels, seconds: f64, last: &mut f64) {
        let delta = if seconds >= *last { seconds - *last } else { seconds };
        *last = seconds;
        self.cpu_seconds.get_or_create(vm).inc_by(delta);
    }

    /// Forgets a VM's own series, once it is gone.
    pub fn forget(&self, vm: &VmLabels) {
        self.restarts.remove(vm);
        self.cpu_seconds.remove(vm);
        self.resident_bytes.remove(vm);
    }
}

/// Serves `/metrics` on `address` until the process ends.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!(address = %listener.local_addr()?, "serving metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "cannot accept a metrics connection");
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = respond(&metrics, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A scraper that hangs up early is its own business.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        )
    } else {
        (StatusCode::NOT_FOUND, "text/plain", "metrics are on /metrics\n".into())
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response of a status, a header and a body")
}

/// A Kubernetes client whose requests are counted in `rest_client_requests_total`, by method and status code.
pub async fn counted_client(metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&CountRequests(metrics))
        .build())
}

/// The layer of [`counted_client`].
#[derive(Clone)]
struct CountRequests(Arc<Metrics>);

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.method().to_string();
        let metrics = self.metrics.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => response.status().as_u16().to_string(),
                // client-go's label for a request that got no answer.
                Err(_) => "<error>".into(),
            };
            metrics
                .api_requests
                .get_or_create(&RequestLabels { method, code })
                .inc();
            answer
        })
    }
}

/// The CPU time in seconds and the resident memory in bytes of `pid`, from `/proc`.
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command, which may hold spaces and parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads configuration values and touches no memory of ours.
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (hz, page) = (u64::try_from(hz).ok()?.max(1), u64::try_from(page).ok()?);
    Some((ticks as f64 / hz as f64, pages * page))
}

/// The QEMU among the descendants of `ancestor`: a process whose command starts with `qemu`.
pub fn qemu_under(ancestor: u32) -> Option<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let command = head.split_once('(').map_or("", |(_, c)| c);
        let Some(ppid) = tail.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        parents.push((pid, ppid, command.starts_with("qemu")));
    }
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            if pid == ancestor {
                return true;
            }
            match parents.iter().find(|(p, _, _)| *p == pid) {
                Some((_, parent, _)) if *parent > 1 => pid = *parent,
                _ => return false,
            }
        }
        false
    };
    parents
        .iter()
        .filter(|(_, _, qemu)| *qemu)
        .map(|(pid, _, _)| *pid)
        .find(|pid| descends(*pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_kubevirts_names_and_the_handlers_values() {
        let metrics = Metrics::default();
        metrics
            .phases
            .get_or_create(&PhaseLabels {
                phase: "running".into(),
                node: "n1".into(),
            })
            .set(2);
        let vm = VmLabels {
            namespace: "default".into(),
            name: "web".into(),
        };
        let mut last = 0.0;
        metrics.set_cpu_seconds(&vm, 1.5, &mut last);
        metrics.set_cpu_seconds(&vm, 2.0, &mut last);
        // A new QEMU counts from its own start.
        metrics.set_cpu_seconds(&vm, 0.25, &mut last);
        let text = metrics.encode();
        assert!(
            text.contains(r#"kubevirt_vmi_phase_count{phase="running",node="n1"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"} 2.25"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vmlet_reconcile_duration_seconds histogram"),
            "{text}"
        );
        metrics.forget(&vm);
        assert!(!metrics.encode().contains(r#"name="web""#));
    }

    #[tokio::test]
    async fn api_requests_are_counted_by_method_and_code() {
        use tower::{Layer, Service};
        let metrics = Arc::new(Metrics::default());
        let (service, mut handle) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
        let mut counted = CountRequests(metrics.clone()).layer(service);
        let server = tokio::spawn(async move {
            let (_, reply) = handle.next_request().await.unwrap();
            reply.send_response(http::Response::builder().status(404).body(()).unwrap());
        });
        futures::future::poll_fn(|context| counted.poll_ready(context))
            .await
            .unwrap();
        let request = http::Request::builder().method("PATCH").body(()).unwrap();
        counted.call(request).await.unwrap();
        server.await.unwrap();
        assert!(
            metrics
                .encode()
                .contains(r#"rest_client_requests_total{method="PATCH",code="404"} 1"#),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        let (_, resident) = process_usage(std::process::id()).unwrap();
        assert!(resident > 0);
    }
}
