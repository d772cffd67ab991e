//! The handler's Prometheus metrics, scraped by a real Prometheus (Debian's `prometheus`) and read back through
//! Prometheus's own query API: a standalone handler with one running VM.
//!
//! The handler and Prometheus both run in the machine's network namespace, on its loopback, so nothing listens on
//! the test machine's own addresses. Needs root, `prometheus` (`scripts/setup`), and the built `vmlet-handler`,
//! `vmlet-launcher` and `vmlet-driver`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use vmlet_testkit::standalone::{BOOT, Machine, POOL_V6, WAIT};
use vmlet_testkit::vm_pod::one_guest_at_a_time;
use vmlet_testkit::{Child, poll_until};

const HANDLER_METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// Prometheus in the machine's namespace, scraping the handler every second.
fn start_prometheus(machine: &Machine) -> Child {
    let dir = machine.dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: vmlet\n    static_configs: [{{targets: ['{HANDLER_METRICS}']}}]\n"
        ),
    )
    .unwrap();
    let mut command = machine.host().exec("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    Child::spawn("prometheus", &mut command)
}

/// The value of an instant query's first series, as Prometheus answers it.
fn query(machine: &Machine, expression: &str) -> Option<f64> {
    let output = machine
        .host()
        .exec("curl")
        .args(["-sfG", &format!("http://{PROMETHEUS}/api/v1/query"), "--data-urlencode"])
        .arg(format!("query={expression}"))
        .output()
        .ok()?;
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits until Prometheus has `expression` and `accept` takes its value.
fn wait_for(machine: &Machine, expression: &str, accept: impl Fn(f64) -> bool) -> f64 {
    wait_for_vm(machine, "web", expression, accept)
}

/// [`wait_for`], with a timeout showing the diagnostics of the VM `vm`.
fn wait_for_vm(machine: &Machine, vm: &str, expression: &str, accept: impl Fn(f64) -> bool) -> f64 {
    poll_until(
        format!("Prometheus to have {expression}"),
        WAIT,
        Duration::from_millis(500),
        || query(machine, expression).filter(|v| accept(*v)),
    )
    .unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics(vm)))
}

#[test]
fn prometheus_scrapes_the_standalone_handlers_metrics() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.handler_args(["--metrics-address", HANDLER_METRICS]);
    machine.start_handler();
    let _prometheus = start_prometheus(&machine);
    machine.add_vm("web", "Always");
    machine.wait_lease("web");
    machine.wait_status("web", &["Running", "True"], BOOT);

    // KubeVirt's names, so that its dashboards read these.
    let running = r#"kubevirt_vmi_phase_count{phase="running"}"#;
    assert_eq!(wait_for(&machine, running, |v| v == 1.0), 1.0);
    let to_running = r#"kubevirt_vmi_phase_transition_time_from_creation_seconds_count{phase="running"}"#;
    wait_for(&machine, to_running, |v| v == 1.0);
    let seconds_to_running = r#"kubevirt_vmi_phase_transition_time_from_creation_seconds_sum{phase="running"}"#;
    let took = wait_for(&machine, seconds_to_running, |v| v > 0.0);
    assert!(took < BOOT.as_secs_f64(), "{took} s to run");
    let resident = r#"kubevirt_vmi_memory_resident_bytes{namespace="default",name="web"}"#;
    let rss = wait_for(&machine, resident, |v| v > 0.0);
    assert!(rss > 16.0 * 1024.0 * 1024.0, "QEMU holds more than 16 MiB: {rss}");
    wait_for(
        &machine,
        r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"}"#,
        |v| v > 0.0,
    );
    // vmlet's own.
    wait_for(&machine, "vmlet_vmi_first_lease_seconds_count", |v| v == 1.0);
    wait_for(
        &machine,
        r#"vmlet_vmi_dhcp_packets{name="web",protocol="dhcpv4",outcome="answered"}"#,
        |v| v >= 2.0,
    );
    wait_for(
        &machine,
        r#"vmlet_reconcile_duration_seconds_count{role="standalone"}"#,
        |v| v > 1.0,
    );

    // A killed QEMU is a launcher failure, counted by its reason, and Always restarts the VM.
    let qemu = qemu_under(machine.shim_pid("web"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(&machine, "sum(vmlet_launcher_failures_total)", |v| v >= 1.0);
    wait_for(
        &machine,
        r#"vmlet_vm_restarts_total{namespace="default",name="web"}"#,
        |v| v >= 1.0,
    );
}

/// A dual-stack pod: the launcher serves the guest DHCPv6 and router advertisements, and their counters reach
/// Prometheus as DHCPv4's do.
#[test]
fn prometheus_counts_the_dhcpv6_and_router_advertisements_of_a_dual_stack_guest() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.dual_stack();
    machine.handler_args(["--metrics-address", HANDLER_METRICS]);
    machine.start_handler();
    let _prometheus = start_prometheus(&machine);
    machine.add_dual_stack_vm("dual", "Always");
    machine.wait_lease("dual");
    let lease = machine.wait_lease6("dual");
    let prefix = POOL_V6.trim_end_matches("/64");
    assert!(
        lease.contains(&format!("ip={prefix}2 ")),
        "the guest has its pod's IPv6 address: {lease}"
    );

    // Solicit and Request, each answered; dhcpcd asks for no rapid commit.
    let dhcpv6 = r#"vmlet_vmi_dhcp_packets{name="dual",protocol="dhcpv6",outcome="answered"}"#;
    wait_for_vm(&machine, "dual", dhcpv6, |v| v >= 2.0);
    // The guest's route to the gateway came from a router advertisement, solicited or not.
    let advertisements = r#"sum(vmlet_vmi_dhcp_packets{name="dual",protocol="ra",outcome=~"solicited|unsolicited"})"#;
    wait_for_vm(&machine, "dual", advertisements, |v| v >= 1.0);
    let dhcpv4 = r#"vmlet_vmi_dhcp_packets{name="dual",protocol="dhcpv4",outcome="answered"}"#;
    wait_for_vm(&machine, "dual", dhcpv4, |v| v >= 2.0);
}

/// The QEMU that runs under the shim `shim`.
fn qemu_under(shim: u32) -> u32 {
    let parent = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok()
    };
    let qemus = Command::new("pgrep").arg("qemu").output().unwrap();
    String::from_utf8_lossy(&qemus.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|&qemu| std::iter::successors(Some(qemu), |&pid| parent(pid).filter(|p| *p > 1)).any(|p| p == shim))
        .unwrap_or_else(|| panic!("no QEMU under the shim {shim}"))
}
