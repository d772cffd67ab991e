//! `vmlet-bench scale`: the handler's controller and one node role, the real release binaries, against an
//! in-process API server ([`api`]) with many VMs: CPU time and memory of each at a mass start and at steady state,
//! API requests per VM state change, and the time from the VMs made to their launcher Pods requested.
//!
//! No QEMU runs: the node role's launchers are control sockets served by this process, each answering that its
//! guest runs; the other nodes' node roles are played by the API server. A VM's state changes are the changes of
//! its `printableStatus`; the floor is one write per change, the status itself.

mod api;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::net::UnixListener;
use vmlet_control::{InterfaceStatus, Phase, Status};

use api::{ApiServer, Counts};

/// The node whose node role runs for real.
const NODE: &str = "node-a";
const NAMESPACE: &str = "vmlet-system";

#[derive(clap::Args)]
pub struct Args {
    /// VMs started at once.
    #[arg(long, default_value_t = 1000)]
    vms: usize,
    /// Nodes the VMs are spread over, round robin; the node role runs for the first.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Seconds of steady state measured after every VM runs.
    #[arg(long, default_value_t = 30)]
    steady_secs: u64,
    /// The longest the mass start may take.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
    /// The `vmlet-handler` to measure; by default the one next to this program.
    #[arg(long)]
    handler: Option<PathBuf>,
}

/// One process's CPU time and memory, from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu_seconds: f64,
    rss_kib: u64,
    anon_kib: u64,
    peak_kib: u64,
}

impl Usage {
    fn of(pid: u32) -> anyhow::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unexpected /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Ok(Usage {
            cpu_seconds: ticks as f64 / hz,
            rss_kib: kib("VmRSS:"),
            anon_kib: kib("RssAnon:"),
            peak_kib: kib("VmHWM:"),
        })
    }
}

/// A launcher that answers that its guest runs.
struct RunningLauncher(Status);

impl vmlet_control::Handler for RunningLauncher {
    async fn status(&self) -> Status {
        self.0.clone()
    }

    async fn act(&self, _: vmlet_control::Command) -> Result<Status, vmlet_control::Error> {
        Ok(self.0.clone())
    }
}

/// Serves a running launcher's control socket for every pod the API server put on [`NODE`].
async fn stand_in_launchers(server: Arc<ApiServer>, pods_dir: PathBuf) {
    let mut served = std::collections::BTreeSet::new();
    let serial = AtomicU64::new(0);
    loop {
        for (namespace, pod) in server.pods_on(NODE) {
            if !served.insert((namespace.clone(), pod.clone())) {
                continue;
            }
            let dir = pods_dir.join(format!("{namespace}_{pod}"));
            let n = serial.fetch_add(1, Ordering::Relaxed);
            let status = Status {
                phase: Phase::Running,
                domain_state: Some("Running(Booted)".into()),
                interfaces: vec![InterfaceStatus {
                    name: "default".into(),
                    mac: format!("02:00:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
                    ip_addresses: vec![format!("10.{}.{}.{}", 64 + (n >> 16), (n >> 8) & 0xff, n & 0xff)],
                    binding: "bridge".into(),
                }],
                launcher_pid: 1,
                ..Default::default()
            };
            let bound = std::fs::create_dir_all(&dir).and_then(|()| UnixListener::bind(dir.join("control.sock")));
            match bound {
                Ok(listener) => {
                    tokio::spawn(vmlet_control::serve(listener, Arc::new(RunningLauncher(status))));
                }
                Err(err) => eprintln!(
                    "vmlet-bench: cannot serve a launcher's socket in {}: {err}",
                    dir.display()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn vm(index: usize) -> serde_json::Value {
    json!({
        "apiVersion": "vmlet.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": format!("vm-{index:05}"), "namespace": "default"},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"cpu": {"cores": 1}, "memory": {"guest": "256Mi"},
                       "firmware": {"kernelBoot": {"hostPath": {"kernelPath": "/var/lib/vmlet/guest/vmlinux"}}},
                       "devices": {"interfaces": [{"name": "default", "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
        }}},
    })
}

fn node_name(index: usize) -> String {
    if index == 0 {
        NODE.to_owned()
    } else {
        format!("node-{index:03}")
    }
}

/// A handler process, killed when dropped.
struct Handler {
    child: Child,
    name: &'static str,
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Handler {
    /// Starts a role; it logs as in a cluster (JSON lines, `info`), into nothing: formatting them is part of its
    /// cost, keeping them is not.
    fn spawn(name: &'static str, binary: &Path, args: &[&str], kubeconfig: &Path) -> anyhow::Result<Handler> {
        let child = Command::new(binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("VMLET_NAMESPACE", NAMESPACE)
            .env("VMLET_LOG_JSON", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Handler { child, name })
    }

    fn usage(&mut self) -> anyhow::Result<Usage> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the {} exited ({status}) during the benchmark", self.name);
        }
        Usage::of(self.child.id())
    }
}

/// The figures of one run.
struct Report {
    vms: usize,
    nodes: usize,
    to_pods: Duration,
    to_running: Duration,
    start: Counts,
    steady: Counts,
    steady_secs: f64,
    controller_start: Usage,
    controller_steady: Usage,
    node_start: Usage,
    node_steady: Usage,
    node_vms: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    raise_file_limit()?;
    let handler = match &args.handler {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("vmlet-handler"),
    };
    anyhow::ensure!(
        handler.exists(),
        "{} not found (bench/run builds it)",
        handler.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(args, &handler))?;
    print(&report);
    Ok(())
}

async fn measure(args: &Args, binary: &Path) -> anyhow::Result<Report> {
    let nodes: Vec<String> = (0..args.nodes.max(1)).map(node_name).collect();
    let placed = AtomicU64::new(0);
    let scheduled = nodes.clone();
    let server = ApiServer::new(
        Box::new(move |_pod| {
            let n = placed.fetch_add(1, Ordering::Relaxed) as usize;
            scheduled[n % scheduled.len()].clone()
        }),
        NODE,
    );
    let address = server.serve().await?;
    let dir = tempdir()?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: bench\n\
             clusters: [{{name: bench, cluster: {{server: 'http://{address}'}}}}]\n\
             users: [{{name: bench, user: {{token: bench}}}}]\n\
             contexts: [{{name: bench, context: {{cluster: bench, user: bench, namespace: default}}}}]\n"
        ),
    )?;
    for node in &nodes {
        server.insert(
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {}}}),
        );
    }
    let heartbeats = {
        let (server, nodes) = (Arc::clone(&server), nodes.clone());
        tokio::spawn(async move {
            loop {
                server.renew_leases(&nodes);
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };
    let pods_dir = dir.join("pods");
    std::fs::create_dir_all(&pods_dir)?;
    let launchers = tokio::spawn(stand_in_launchers(Arc::clone(&server), pods_dir.clone()));

    let mut controller = Handler::spawn(
        "controller",
        binary,
        &["controller", "--launcher-image", "vmlet/launcher:bench"],
        &kubeconfig,
    )?;
    let pods_arg = pods_dir.display().to_string();
    let mut node = Handler::spawn(
        "node role",
        binary,
        &["node", "--node-name", NODE, "--pods-dir", &pods_arg],
        &kubeconfig,
    )?;
    wait(
        "the controller to lead and the node role to beat",
        Duration::from_secs(60),
        &mut [&mut controller, &mut node],
        || server.has("leases", NAMESPACE, "vmlet-controller") && server.has("leases", NAMESPACE, "vmlet-node-node-a"),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The mass start.
    let before = server.counts();
    let (controller_before, node_before) = (controller.usage()?, node.usage()?);
    let created = Instant::now();
    for index in 0..args.vms {
        server.insert("virtualmachines", vm(index));
    }
    let limit = Duration::from_secs(args.max_seconds);
    let target = before.pods_created + args.vms as u64;
    wait(
        "every launcher Pod to be requested",
        limit,
        &mut [&mut controller, &mut node],
        || server.counts().pods_created >= target,
    )
    .await?;
    let to_pods = server
        .counts()
        .last_pod_created
        .map_or(created.elapsed(), |at| at - created);
    wait("every VM to run", limit, &mut [&mut controller, &mut node], || {
        server.counts().running >= args.vms as u64
    })
    .await?;
    let to_running = created.elapsed();
    // The writes a start leads to come a round after the last state change: let them land.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = server.counts().since(&before);
    let (controller_start, node_start) = (
        delta(controller_before, controller.usage()?),
        delta(node_before, node.usage()?),
    );

    // Steady state: nothing changes.
    let before = server.counts();
    let (controller_before, node_before) = (controller.usage()?, node.usage()?);
    let steady_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let steady = server.counts().since(&before);
    let steady_secs = steady_started.elapsed().as_secs_f64();
    let (controller_steady, node_steady) = (
        delta(controller_before, controller.usage()?),
        delta(node_before, node.usage()?),
    );
    heartbeats.abort();
    launchers.abort();
    drop((controller, node));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        vms: args.vms,
        nodes: nodes.len(),
        to_pods,
        to_running,
        start,
        steady,
        steady_secs,
        controller_start,
        controller_steady,
        node_start,
        node_steady,
        node_vms: args.vms.div_ceil(nodes.len()),
    })
}

/// CPU time between two readings; memory as of the later.
fn delta(before: Usage, after: Usage) -> Usage {
    Usage {
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        ..after
    }
}

/// Waits until `done`, failing if it takes longer than `limit` or a role exits meanwhile.
async fn wait(
    what: &str,
    limit: Duration,
    roles: &mut [&mut Handler],
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        for role in roles.iter_mut() {
            role.usage()?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vmlet-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A node role keeps a connection to each launcher, and this process serves them all.
fn raise_file_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the rlimit passed, which lives on this stack frame.
    let done = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    anyhow::ensure!(
        done,
        "cannot raise the open file limit: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn print(report: &Report) {
    let per_vm = |n: u64| n as f64 / report.vms as f64;
    println!(
        "{} VMs on {} node(s); the node role's node runs {}",
        report.vms, report.nodes, report.node_vms
    );
    println!();
    println!(
        "mass start: launcher Pods requested in {:.1} s, every VM Running in {:.1} s; {} state changes ({:.2} per VM)",
        report.to_pods.as_secs_f64(),
        report.to_running.as_secs_f64(),
        report.start.state_changes,
        per_vm(report.start.state_changes),
    );
    println!(
        "  API requests: {} ({:.2} per VM); writes for the VMs (VMs, their status, pods, events) {} ({:.2} per VM, \
         {:.2} per state change against the floor of 1); all writes {}",
        report.start.total(),
        per_vm(report.start.total()),
        report.start.vm_writes(),
        per_vm(report.start.vm_writes()),
        report.start.vm_writes() as f64 / report.start.state_changes.max(1) as f64,
        report.start.writes(),
    );
    for ((verb, resource), n) in &report.start.requests {
        println!("    {verb:>6} {resource:<28} {n:>7}  {:.2} per VM", per_vm(*n));
    }
    println!();
    println!(
        "steady state, {:.0} s: {} API requests ({:.3} per VM per minute), {} writes, {} state changes",
        report.steady_secs,
        report.steady.total(),
        report.steady.total() as f64 / report.vms as f64 / (report.steady_secs / 60.0),
        report.steady.writes(),
        report.steady.state_changes,
    );
    for ((verb, resource), n) in &report.steady.requests {
        println!("    {verb:>6} {resource:<28} {n:>7}");
    }
    println!();
    println!("| process | phase | CPU s | CPU ms per VM | RSS MiB | anon MiB | peak RSS MiB |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let rows = [
        ("controller", "mass start", report.controller_start, report.vms),
        ("controller", "steady", report.controller_steady, report.vms),
        ("node role", "mass start", report.node_start, report.node_vms),
        ("node role", "steady", report.node_steady, report.node_vms),
    ];
    for (process, phase, usage, vms) in rows {
        let steady = phase == "steady";
        let cpu = if steady {
            format!("{:.3} per s", usage.cpu_seconds / report.steady_secs)
        } else {
            format!("{:.2}", usage.cpu_seconds)
        };
        let per_vm =
            usage.cpu_seconds * 1000.0 / vms.max(1) as f64 / if steady { report.steady_secs / 60.0 } else { 1.0 };
        println!(
            "| {process} | {phase} | {cpu} | {per_vm:.2}{} | {:.1} | {:.1} | {:.1} |",
            if steady { " per min" } else { "" },
            usage.rss_kib as f64 / 1024.0,
            usage.anon_kib as f64 / 1024.0,
            usage.peak_kib as f64 / 1024.0,
        );
    }
}
