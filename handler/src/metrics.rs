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
use vmlet_api::Phase;

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

impl PhaseLabels {
    pub fn new(phase: Phase, node: String) -> PhaseLabels {
        PhaseLabels {
            phase: phase_label(phase).to_owned(),
            node,
        }
    }
}

/// A phase as KubeVirt's metrics name it in their `phase` label.
fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Scheduling => "scheduling",
        Phase::Scheduled => "scheduled",
        Phase::Running => "running",
        Phase::Succeeded => "succeeded",
        Phase::Failed => "failed",
        Phase::Unknown => "unknown",
    }
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

    /// Takes in what a VM's launcher answered: its DHCP, DHCPv6 and router advertisement counters, its QEMU's CPU
    /// time and resident memory. `seen` is what earlier answers left, for this VM's series.
    pub fn observe_launcher(&self, vm: &VmLabels, status: &vmlet_control::Status, seen: &mut LauncherSeries) {
        let protocols = [
            ("dhcpv4", status.dhcp.as_ref()),
            ("dhcpv6", status.dhcpv6.as_deref()),
            ("ra", status.router_advertisements.as_deref()),
        ];
        for (protocol, counted) in protocols {
            for (outcome, count) in counted.iter().flat_map(|c| &c.counters) {
                let series = DhcpLabels {
                    namespace: vm.namespace.clone(),
                    name: vm.name.clone(),
                    protocol: protocol.into(),
                    outcome: outcome.clone(),
                };
                self.dhcp_packets
                    .get_or_create(&series)
                    .set(i64::try_from(*count).unwrap_or(i64::MAX));
                seen.dhcp.insert(series);
            }
        }
        if let Some(qemu) = status.qemu {
            // A new QEMU (a restart) counts on from the last one's total.
            let last = seen.cpu_seconds;
            let delta = if qemu.cpu_seconds >= last {
                qemu.cpu_seconds - last
            } else {
                qemu.cpu_seconds
            };
            seen.cpu_seconds = qemu.cpu_seconds;
            self.cpu_seconds.get_or_create(vm).inc_by(delta);
            self.resident_bytes
                .get_or_create(vm)
                .set(i64::try_from(qemu.resident_bytes).unwrap_or(i64::MAX));
        }
    }

    /// Takes in that a VM reached Running `took` after its pod was made.
    pub fn observe_running(&self, took: std::time::Duration) {
        self.from_creation
            .get_or_create(&TransitionLabels {
                phase: phase_label(Phase::Running).into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Takes in what a launcher answered for its VM's start latencies, `since_creation` its pod was made: the
    /// first answer that runs, and the guest's first DHCP or DHCPv6 lease. Only what this process saw happen
    /// counts: a launcher that already ran when first asked (a restarted handler) adds nothing.
    pub fn observe_start(
        &self,
        answer: &vmlet_control::Status,
        since_creation: Option<std::time::Duration>,
        seen: &mut LauncherSeries,
    ) {
        let running = matches!(
            answer.phase,
            vmlet_control::Phase::Running | vmlet_control::Phase::Paused | vmlet_control::Phase::ShuttingDown
        );
        let bound = |dhcp: Option<&vmlet_control::DhcpStatus>| {
            dhcp.is_some_and(|d| d.lease == Some(vmlet_control::LeaseState::Bound))
        };
        let leased = bound(answer.dhcp.as_ref()) || bound(answer.dhcpv6.as_deref());
        if let (Some(before), Some(took)) = (seen.started, since_creation) {
            if running && !before.running {
                self.observe_running(took);
            }
            if leased && !before.leased {
                self.first_lease.observe(took.as_secs_f64());
            }
        }
        seen.started = Some(StartSeen {
            running: running || seen.started.is_some_and(|s| s.running),
            leased: leased || seen.started.is_some_and(|s| s.leased),
        });
    }

    /// Forgets a VM's own series, once it is gone: `seen` names its DHCP series.
    pub fn forget(&self, vm: &VmLabels, seen: &LauncherSeries) {
        self.restarts.remove(vm);
        self.cpu_seconds.remove(vm);
        self.resident_bytes.remove(vm);
        for series in &seen.dhcp {
            self.dhcp_packets.remove(series);
        }
    }
}

/// The series a VM's launcher answers made, and what was last seen of it, between two answers.
#[derive(Debug, Default)]
pub struct LauncherSeries {
    cpu_seconds: f64,
    dhcp: std::collections::BTreeSet<DhcpLabels>,
    /// How far the launcher's start had come, once seen; `None` before anything was.
    started: Option<StartSeen>,
}

#[derive(Clone, Copy, Debug)]
struct StartSeen {
    running: bool,
    leased: bool,
}

impl LauncherSeries {
    /// The launcher of a live pod did not answer: it has not started yet, so what it does next counts.
    pub fn unanswered(&mut self) {
        self.started.get_or_insert(StartSeen {
            running: false,
            leased: false,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// KubeVirt's `phase` label is the phase as the API spells it, in lower case.
    #[test]
    fn phase_labels_are_the_api_phases_in_lower_case() {
        use Phase::*;
        for phase in [Pending, Scheduling, Scheduled, Running, Succeeded, Failed, Unknown] {
            let spelt = serde_json::to_value(phase).unwrap();
            assert_eq!(phase_label(phase), spelt.as_str().unwrap().to_lowercase());
        }
    }

    #[test]
    fn the_exposition_has_kubevirts_names_and_the_handlers_values() {
        let metrics = Metrics::default();
        metrics
            .phases
            .get_or_create(&PhaseLabels::new(Phase::Running, "n1".into()))
            .set(2);
        let text = metrics.encode();
        assert!(
            text.contains(r#"kubevirt_vmi_phase_count{phase="running",node="n1"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vmlet_reconcile_duration_seconds histogram"),
            "{text}"
        );
    }

    fn answer(cpu_seconds: f64) -> vmlet_control::Status {
        let counters = |pairs: &[(&str, u64)]| vmlet_control::DhcpStatus {
            lease: None,
            counters: pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        };
        vmlet_control::Status {
            dhcp: Some(counters(&[("answered", 2)])),
            dhcpv6: Some(Box::new(counters(&[("answered", 3), ("refused", 1)]))),
            router_advertisements: Some(Box::new(counters(&[("solicited", 1), ("unsolicited", 4)]))),
            qemu: Some(vmlet_control::ProcessUsage {
                cpu_seconds,
                resident_bytes: 1 << 20,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_launchers_answer_gives_its_vms_dhcp_cpu_and_memory_series() {
        let metrics = Metrics::default();
        let web = VmLabels {
            namespace: "default".into(),
            name: "web".into(),
        };
        let db = VmLabels {
            namespace: "default".into(),
            name: "db".into(),
        };
        let (mut web_seen, mut db_seen) = (LauncherSeries::default(), LauncherSeries::default());
        metrics.observe_launcher(&web, &answer(1.5), &mut web_seen);
        metrics.observe_launcher(&web, &answer(2.0), &mut web_seen);
        // A new QEMU counts from its own start.
        metrics.observe_launcher(&web, &answer(0.25), &mut web_seen);
        metrics.observe_launcher(&db, &answer(1.0), &mut db_seen);
        let text = metrics.encode();
        for line in [
            r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"} 2.25"#,
            r#"kubevirt_vmi_memory_resident_bytes{namespace="default",name="web"} 1048576"#,
            r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="dhcpv4",outcome="answered"} 2"#,
            r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="dhcpv6",outcome="refused"} 1"#,
            r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="ra",outcome="unsolicited"} 4"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        metrics.forget(&web, &web_seen);
        let text = metrics.encode();
        assert!(!text.contains(r#"name="web""#), "{text}");
        assert!(
            text.contains(
                r#"vmlet_vmi_dhcp_packets{namespace="default",name="db",protocol="ra",outcome="solicited"} 1"#
            ),
            "{text}"
        );
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
}
