//! `vmlet-launcher run` as a pod runs it: in a network namespace that plays the pod (its `eth0` a veth whose other
//! end, in a namespace that plays the node, holds the gateway), as PID 1 of a PID namespace of its own, booting the
//! real test guest of `images/guest/` under libvirt. Every check reads what the guest printed on its serial console.
//!
//! Needs root and the built `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use vmlet_testkit::{Child, NetNs, ScratchDir, VethEnd, binary, guest_image, poll_until, run, veth};

const POD_MAC: &str = "02:42:0a:f4:01:07";
const MTU: u32 = 1400;
/// The bound on a guest's boot to its last console line: seconds under KVM, tens of seconds under TCG on a busy
/// machine, and the first launcher on a machine also waits for libvirt to probe QEMU.
const BOOT: Duration = Duration::from_secs(300);
/// The bound on anything that does not wait for a guest.
const WAIT: Duration = Duration::from_secs(30);

/// Guests boot one at a time: several TCG guests on two cores only make each one slower.
fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static GUESTS: Mutex<()> = Mutex::new(());
    GUESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node namespace and a pod namespace joined by a veth pair, the pod end configured as a CNI would.
struct VmPod {
    node: NetNs,
    pod: NetNs,
    dir: ScratchDir,
}

impl VmPod {
    /// A pod on an ordinary subnet: 10.244.1.7/24, gateway 10.244.1.1 on the node end.
    fn subnet() -> VmPod {
        let vm_pod = VmPod::linked("10.244.1.1/24");
        vm_pod.pod.ip(&["addr", "add", "10.244.1.7/24", "dev", "eth0"]);
        vm_pod.pod.ip(&["route", "add", "default", "via", "10.244.1.1"]);
        vm_pod
    }

    /// A Calico-style pod: 10.244.1.7/32 with the off-link gateway 169.254.1.1, which only the node end answers.
    fn calico() -> VmPod {
        let vm_pod = VmPod::linked("169.254.1.1/32");
        vm_pod.node.ip(&["route", "add", "10.244.1.7/32", "dev", "veth-node"]);
        vm_pod.pod.ip(&["addr", "add", "10.244.1.7/32", "dev", "eth0"]);
        vm_pod
            .pod
            .ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
        vm_pod
            .pod
            .ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
        vm_pod
    }

    /// [`VmPod::subnet`] with IPv6 too: fd00:10:244:1::7/64 with the default route through fe80::1, the node end's
    /// link-local address (its global one fd00:10:244:1::1/64); its resolv.conf also names an IPv6 server.
    fn dual_stack() -> VmPod {
        let vm_pod = VmPod::subnet();
        vm_pod
            .node
            .ip(&["-6", "addr", "add", "fd00:10:244:1::1/64", "dev", "veth-node", "nodad"]);
        vm_pod.with_ipv6();
        vm_pod.dir.write(
            "resolv.conf",
            "nameserver 10.96.0.10\nnameserver fd00:10:96::a\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        vm_pod
    }

    /// [`VmPod::dual_stack`]'s IPv6 alone: the pod has no IPv4 address.
    fn ipv6_only() -> VmPod {
        let vm_pod = VmPod::linked("fd00:10:244:1::1/64");
        vm_pod.with_ipv6();
        vm_pod
    }

    /// Gives the pod fd00:10:244:1::7/64 and its default route through the node end's fe80::1, without duplicate
    /// address detection so that the addresses are usable at once.
    fn with_ipv6(&self) {
        self.node
            .ip(&["-6", "addr", "add", "fe80::1/64", "dev", "veth-node", "nodad"]);
        self.pod
            .ip(&["-6", "addr", "add", "fd00:10:244:1::7/64", "dev", "eth0", "nodad"]);
        self.pod
            .ip(&["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
    }

    fn linked(node_address: &str) -> VmPod {
        let vm_pod = VmPod {
            node: NetNs::new(),
            pod: NetNs::new(),
            dir: ScratchDir::new(),
        };
        veth::link(
            &vm_pod.node,
            &VethEnd::named("veth-node").mtu(MTU).address(node_address),
            &vm_pod.pod,
            &VethEnd::named("eth0").mtu(MTU).mac(POD_MAC),
        );
        vm_pod.dir.write(
            "resolv.conf",
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        vm_pod
    }

    /// Writes a VM manifest whose guest pings `ping` and stays up, and returns its path.
    fn manifest(&self, ping: &str, memory: &str) -> PathBuf {
        self.manifest_named("vm.yaml", ping, memory)
    }

    /// [`VmPod::manifest`] for a guest that also configures IPv6 (DHCPv6 and router advertisements).
    fn manifest_ipv6(&self, ping: &str) -> PathBuf {
        let manifest = std::fs::read_to_string(self.manifest(ping, "256Mi")).unwrap();
        self.dir
            .write("vm.yaml", manifest.replace("vmlet.ping=", "vmlet.ipv6=1 vmlet.ping="))
    }

    fn manifest_named(&self, file: &str, ping: &str, memory: &str) -> PathBuf {
        let guest = guest_image();
        let manifest = format!(
            r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: testvm, namespace: default, uid: 5b0c7a54-3f1e-4d2a-9a63-0c5d2c1f7e10}}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 60
      domain:
        memory: {{guest: {memory}}}
        firmware:
          kernelBoot:
            kernelArgs: "console=ttyS0 quiet panic=-1 vmlet.ping={ping}"
            hostPath: {{kernelPath: {kernel}, initrdPath: {initrd}}}
        devices:
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
"#,
            kernel = guest.kernel().display(),
            initrd = guest.initrd().display(),
        );
        self.dir.write(file, manifest)
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The launcher as a pod's PID 1: in the pod's network namespace and a PID namespace of its own.
    fn start(&self, manifest: &Path) -> Launcher {
        let mut command = self.pod.exec("unshare");
        command
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(binary("vmlet-launcher"))
            .arg("run")
            .arg("--vm-spec")
            .arg(manifest)
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--cache-dir")
            .arg(qemu_cache_dir())
            .arg("--resolv-conf")
            .arg(self.dir.join("resolv.conf"))
            .env("NO_COLOR", "1");
        Launcher {
            process: Child::spawn("vmlet-launcher run", &mut command),
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("console.log")).unwrap_or_default()
    }

    /// Waits until the console has shown `count` lines starting with `prefix`, and returns the last of them.
    fn wait_console(&self, launcher: &Launcher, prefix: &str, count: usize) -> String {
        let found = poll_until(
            format!("console line {count} starting {prefix:?}"),
            BOOT,
            Duration::from_millis(200),
            || {
                let lines: Vec<String> = self
                    .console()
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| l.starts_with(prefix))
                    .collect();
                lines.get(count - 1).cloned()
            },
        );
        found.unwrap_or_else(|timeout| {
            panic!(
                "{timeout}\n--- console ---\n{}\n--- launcher ---\n{}",
                self.console(),
                launcher.process.output()
            )
        })
    }

    /// The control socket's answer to one request line.
    fn control(&self, command: &str) -> serde_json::Value {
        let request = format!("{{\"version\":1,\"id\":1,\"command\":\"{command}\"}}\n");
        let socket = self.run_dir().join("control.sock");
        let output = Command::new("socat")
            .args(["-t", "5", "-", &format!("UNIX-CONNECT:{}", socket.display())])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(request.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "control answer does not parse ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Processes that belong to this pod's VM, found by the run directory on their command line.
    fn vm_processes(&self) -> Vec<String> {
        let run_dir = self.run_dir().display().to_string();
        run(Command::new("ps").args(["-eo", "pid,args", "--no-headers"]))
            .lines()
            .filter(|line| line.contains(&run_dir) && !line.contains("vmlet-launcher"))
            .map(str::to_owned)
            .collect()
    }
}

/// QEMU's capability cache, kept between test runs as a node keeps it between pods.
fn qemu_cache_dir() -> PathBuf {
    std::env::var_os("VMLET_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/vmlet"))
        .join("qemu-caps")
}

struct Launcher {
    process: Child,
}

impl Launcher {
    /// PID 1 of the launcher's PID namespace, as the host sees it: `unshare`'s only child. A container runtime
    /// signals this process, and it forwards the signal to the launcher proper.
    fn pid1(&self) -> i32 {
        only_child(self.process.pid() as i32, "PID 1 under unshare")
    }

    /// The launcher proper: PID 1's child that runs `vmlet-launcher` (QEMU is PID 1's child too).
    fn launcher_pid(&self) -> i32 {
        let pid1 = self.pid1();
        let found = poll_until("the launcher under PID 1", WAIT, Duration::from_millis(50), || {
            children(pid1).into_iter().find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("vmlet-launcher"))
            })
        });
        found.unwrap()
    }

    fn signal(&self, pid: i32, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    }

    fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let status = self.process.wait_exit(timeout).unwrap_or_else(|t| panic!("{t}"));
        status.code()
    }
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn only_child(pid: i32, what: &str) -> i32 {
    poll_until(what, WAIT, Duration::from_millis(50), || children(pid).first().copied()).unwrap()
}

/// The `key=value` fields of a `VMLET-GUEST` console line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_guest_takes_the_pods_identity_and_shuts_down_on_sigterm() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let mut launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/24", "the guest has the pod's address");
    assert_eq!(lease["router"], "10.244.1.1", "and the pod's gateway");
    assert_eq!(lease["dns"], "10.96.0.10");
    assert_eq!(
        lease["search"],
        "default.svc.cluster.local,svc.cluster.local,cluster.local"
    );
    assert_eq!(lease["mtu"], "1400");
    assert_eq!(lease["hostname"], "testvm");
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert_eq!(
        (link["mtu"].as_str(), link["mac"].as_str()),
        ("1400", POD_MAC),
        "the guest has the pod's MAC and MTU"
    );
    let ping = pod.wait_console(&launcher, "VMLET-GUEST ping ", 1);
    assert_eq!(
        ping, "VMLET-GUEST ping target=10.244.1.1 ok",
        "the guest reaches the node"
    );

    let status = pod.control("status");
    assert_eq!(status["status"]["phase"], "running", "{status}");
    assert_eq!(status["status"]["dhcp"]["lease"], "bound", "{status}");
    assert_eq!(
        status["status"]["interfaces"][0]["ip_addresses"][0], "10.244.1.7",
        "{status}"
    );

    launcher.signal(launcher.pid1(), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(launcher.exit_code(BOOT), Some(0), "{}", launcher.process.output());
    pod.wait_console(&launcher, "VMLET-GUEST poweroff ", 1);
    assert!(
        launcher.process.output().contains("guest ended ending=ShutDown"),
        "{}",
        launcher.process.output()
    );
    assert_eq!(pod.vm_processes(), Vec::<String>::new());
}

#[test]
fn a_calico_pod_with_an_off_link_gateway_works() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::calico();
    let launcher = pod.start(&pod.manifest("169.254.1.1", "256Mi"));
    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/32");
    assert_eq!(lease["routes"], "169.254.1.1/32-0.0.0.0,0.0.0.0/0-169.254.1.1");
    let ping = pod.wait_console(&launcher, "VMLET-GUEST ping ", 1);
    assert_eq!(ping, "VMLET-GUEST ping target=169.254.1.1 ok");
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());
}

#[test]
fn sigkill_leaves_nothing_behind_and_a_new_launcher_carries_on() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let manifest = pod.manifest("10.244.1.1", "256Mi");
    let mut first = pod.start(&manifest);
    // The ping line, not only the lease: the second guest's lines are counted after the first guest's.
    pod.wait_console(&first, "VMLET-GUEST ping ", 1);
    assert!(!pod.vm_processes().is_empty(), "QEMU runs for the pod");

    first.signal(first.launcher_pid(), nix::sys::signal::Signal::SIGKILL);
    first.exit_code(WAIT);
    let left = poll_until("no QEMU left", WAIT, Duration::from_millis(100), || {
        pod.vm_processes().is_empty().then_some(())
    });
    assert!(left.is_ok(), "left behind: {:?}", pod.vm_processes());

    // The container restarts in the same pod: the network is already rewired, and the guest gets the same address.
    let second = pod.start(&manifest);
    let lease = fields(&pod.wait_console(&second, "VMLET-GUEST lease ", 2));
    assert_eq!(lease["ip"], "10.244.1.7/24");
    assert_eq!(
        pod.wait_console(&second, "VMLET-GUEST ping ", 2),
        "VMLET-GUEST ping target=10.244.1.1 ok"
    );
    assert!(
        second.process.output().contains("network ready"),
        "{}",
        second.process.output()
    );
}

#[test]
fn another_mac_on_the_bridge_gets_no_lease() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));
    pod.wait_console(&launcher, "VMLET-GUEST lease ", 1);

    let intruder = NetNs::new();
    veth::link(
        &pod.pod,
        &VethEnd::named("intruder"),
        &intruder,
        &VethEnd::named("eth0").mac("02:00:00:00:00:99"),
    );
    pod.pod.ip(&["link", "set", "intruder", "master", "vb-eth0"]);
    let udhcpc = intruder
        .exec("busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(
        !udhcpc.status.success(),
        "the intruder got a lease: {}",
        String::from_utf8_lossy(&udhcpc.stdout)
    );
    let status = pod.control("status");
    assert!(
        status["status"]["dhcp"]["counters"]["ignored"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[test]
fn an_invalid_spec_is_refused_and_nothing_is_touched() {
    let pod = VmPod::subnet();
    let before = pod.pod.ip(&["-br", "addr", "show", "eth0"]);
    for (manifest, message) in [
        (
            pod.manifest_named("lots.yaml", "10.244.1.1", "lots"),
            "invalid VM spec: domain.memory.guest: \"lots\" is not a quantity",
        ),
        (
            pod.dir.write(
                "bad.yaml",
                std::fs::read_to_string(pod.manifest("10.244.1.1", "256Mi"))
                    .unwrap()
                    .replace("bridge: {}", "sriov: {}"),
            ),
            "unknown field `sriov`",
        ),
    ] {
        let mut launcher = pod.start(&manifest);
        assert_eq!(launcher.exit_code(WAIT), Some(1));
        let output = launcher.process.output();
        assert!(output.contains(message), "expected {message:?} in:\n{output}");
        assert_eq!(output.lines().count(), 1, "one clear line:\n{output}");
    }
    assert_eq!(
        pod.pod.ip(&["-br", "addr", "show", "eth0"]),
        before,
        "the pod interface is as it was"
    );
    assert!(!pod.run_dir().exists(), "nothing was written");
}

#[test]
fn a_dead_driver_takes_the_launcher_and_the_guest_down() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let mut launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));
    pod.wait_console(&launcher, "VMLET-GUEST lease ", 1);
    assert!(!pod.vm_processes().is_empty(), "QEMU runs for the pod");

    let driver = poll_until(
        "vmlet-driver under the launcher",
        WAIT,
        Duration::from_millis(50),
        || {
            children(launcher.launcher_pid()).into_iter().find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("vmlet-driver"))
            })
        },
    )
    .unwrap();
    launcher.signal(driver, nix::sys::signal::Signal::SIGKILL);
    let code = launcher.exit_code(WAIT);
    assert!(
        code.is_some_and(|code| code != 0),
        "exit {code:?}:\n{}",
        launcher.process.output()
    );
    let left = poll_until("no QEMU left", WAIT, Duration::from_millis(100), || {
        pod.vm_processes().is_empty().then_some(())
    });
    assert!(left.is_ok(), "left behind: {:?}", pod.vm_processes());
}

#[test]
fn the_control_socket_pauses_and_resumes_and_a_dead_qemu_ends_the_launcher() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let mut launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));
    pod.wait_console(&launcher, "VMLET-GUEST ping ", 1);

    let paused = pod.control("pause");
    assert_eq!(paused["status"]["phase"], "paused", "{paused}");
    assert_eq!(pod.control("status")["status"]["phase"], "paused");
    let resumed = pod.control("resume");
    assert_eq!(resumed["status"]["phase"], "running", "{resumed}");
    let refused = pod.control("resume");
    assert_eq!(refused["error"]["kind"], "invalid_state", "{refused}");
    assert_eq!(refused["error"]["message"], "the guest is not paused", "{refused}");

    let qemu = pod
        .vm_processes()
        .iter()
        .find(|line| line.contains("qemu-system"))
        .and_then(|line| line.split_whitespace().next()?.parse::<i32>().ok())
        .expect("QEMU runs for the pod");
    launcher.signal(qemu, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        launcher.exit_code(WAIT),
        Some(4),
        "exit code 4: the guest crashed\n{}",
        launcher.process.output()
    );
    assert!(
        launcher.process.output().contains("guest ended ending=Crashed"),
        "{}",
        launcher.process.output()
    );
}

#[test]
fn a_dual_stack_guest_gets_the_pods_ipv6_address_and_route_with_no_configuration() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    let launcher = pod.start(&pod.manifest_ipv6("10.244.1.1,fd00:10:244:1::1"));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/24");
    assert_eq!(lease["dns"], "10.96.0.10", "DHCPv4 carries the IPv4 server");
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert_eq!(link["mtu"], MTU.to_string());
    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7", "the guest has the pod's IPv6 address");
    assert_eq!(lease6["dns"], "fd00:10:96::a", "and the pod's IPv6 DNS server");
    assert_eq!(
        lease6["search"],
        "default.svc.cluster.local,svc.cluster.local,cluster.local"
    );
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "the pod's IPv6 gateway is the guest's: {route6}"
    );
    pod.wait_console(&launcher, "VMLET-GUEST ping ", 2);
    let pings: Vec<String> = pod
        .console()
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("VMLET-GUEST ping "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        pings,
        [
            "VMLET-GUEST ping target=10.244.1.1 ok",
            "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
        ],
        "the guest reaches the node over both families"
    );
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());

    let status = pod.control("status");
    let addresses = &status["status"]["interfaces"][0]["ip_addresses"];
    assert_eq!(
        *addresses,
        serde_json::json!(["10.244.1.7", "fd00:10:244:1::7"]),
        "{status}"
    );
}

#[test]
fn an_ipv6_only_guest_gets_its_address_and_route_without_dhcpv4() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::ipv6_only();
    let launcher = pod.start(&pod.manifest_ipv6("fd00:10:244:1::1"));

    assert_eq!(
        pod.wait_console(&launcher, "VMLET-GUEST lease ", 1),
        "VMLET-GUEST lease failed"
    );
    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7");
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "{route6}"
    );
    assert_eq!(
        pod.wait_console(&launcher, "VMLET-GUEST ping ", 1),
        "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
    );
    let status = pod.control("status");
    assert_eq!(
        status["status"]["dhcp"],
        serde_json::Value::Null,
        "no DHCPv4 server: {status}"
    );
}
