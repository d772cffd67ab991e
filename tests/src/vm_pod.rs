//! A VM pod for end-to-end tests: `vmlet-launcher run` as a pod runs it, in a network namespace that plays the pod
//! (its `eth0` a veth whose other end, in a namespace that plays the node, holds the gateway), as PID 1 of a PID
//! namespace of its own, booting the real test guest of `images/guest/` under libvirt. Checks read what the guest
//! printed on its serial console (the `VMLET-GUEST` records of `images/guest/README.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::{Child, NetNs, ScratchDir, VethEnd, binary, guest_image, poll_until, run, veth};

pub const POD_MAC: &str = "02:42:0a:f4:01:07";
pub const MTU: u32 = 1400;
/// The bound on a guest's boot to its last console line: seconds under KVM, tens of seconds under TCG on a busy
/// machine, and the first launcher on a machine also waits for libvirt to probe QEMU.
pub const BOOT: Duration = Duration::from_secs(300);
/// The bound on anything that does not wait for a guest.
pub const WAIT: Duration = Duration::from_secs(30);

/// Guests boot one at a time within a test process: several TCG guests on two cores only make each one slower.
pub fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static GUESTS: Mutex<()> = Mutex::new(());
    GUESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the VM manifest says beyond the test guest itself.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// The interface's binding as YAML, e.g. `bridge: {}`, followed by any other interface fields
    /// (`masquerade: {}, ports: [{port: 8080}]`).
    pub interface: String,
    /// The pod network's fields, e.g. `vmNetworkCIDR: 10.11.0.0/24`; empty for none.
    pub pod_network: String,
    /// Kernel arguments for the guest's `/init` (`vmlet.ping=...`, `vmlet.ipv6=1`, `vmlet.listen=...`).
    pub kernel_args: String,
    pub memory: String,
    /// The VM's name.
    pub name: String,
    pub run_strategy: String,
}

impl GuestSpec {
    /// A guest with the binding `interface` that pings `ping` and stays up.
    pub fn new(interface: &str, ping: &str) -> GuestSpec {
        GuestSpec {
            interface: interface.to_owned(),
            pod_network: String::new(),
            kernel_args: format!("vmlet.ping={ping}"),
            memory: "256Mi".to_owned(),
            name: "testvm".to_owned(),
            run_strategy: "Always".to_owned(),
        }
    }

    /// The VM's manifest: the test guest booted by direct kernel boot, with this spec's interface and arguments.
    pub fn manifest(&self) -> String {
        let guest = guest_image();
        format!(
            r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}, namespace: default, uid: 5b0c7a54-3f1e-4d2a-9a63-0c5d2c1f7e10}}
spec:
  runStrategy: {run_strategy}
  template:
    spec:
      terminationGracePeriodSeconds: 60
      domain:
        memory: {{guest: {memory}}}
        firmware:
          kernelBoot:
            kernelArgs: "console=ttyS0 quiet panic=-1 {args}"
            hostPath: {{kernelPath: {kernel}, initrdPath: {initrd}}}
        devices:
          interfaces: [{{name: default, {interface}}}]
      networks: [{{name: default, pod: {{{pod_network}}}}}]
"#,
            name = self.name,
            run_strategy = self.run_strategy,
            memory = self.memory,
            args = self.kernel_args,
            interface = self.interface,
            pod_network = self.pod_network,
            kernel = guest.kernel().display(),
            initrd = guest.initrd().display(),
        )
    }

    /// The guest also configures IPv6 (DHCPv6 and router advertisements).
    pub fn ipv6(mut self) -> GuestSpec {
        self.kernel_args.push_str(" vmlet.ipv6=1");
        self
    }

    /// The guest also serves TCP on `ports`.
    pub fn listen(mut self, ports: &[u16]) -> GuestSpec {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        self.kernel_args.push_str(&format!(" vmlet.listen={}", ports.join(",")));
        self
    }

    /// The guest also reads and discards whatever a connection to `port` sends, until the peer closes it.
    pub fn discard(mut self, port: u16) -> GuestSpec {
        self.kernel_args.push_str(&format!(" vmlet.discard={port}"));
        self
    }

    /// The guest also connects to `address` and sends zeros until the peer closes the connection, then again, for as
    /// long as it runs.
    pub fn send_to(mut self, address: std::net::SocketAddr) -> GuestSpec {
        self.kernel_args
            .push_str(&format!(" vmlet.send={}:{}", address.ip(), address.port()));
        self
    }
}

/// A node namespace and a pod namespace joined by a veth pair, the pod end configured as a CNI would.
pub struct VmPod {
    pub node: NetNs,
    pub pod: NetNs,
    pub dir: ScratchDir,
}

impl VmPod {
    /// A pod on an ordinary subnet: 10.244.1.7/24, gateway 10.244.1.1 on the node end.
    pub fn subnet() -> VmPod {
        let vm_pod = VmPod::linked("10.244.1.1/24");
        vm_pod.pod.ip(&["addr", "add", "10.244.1.7/24", "dev", "eth0"]);
        vm_pod.pod.ip(&["route", "add", "default", "via", "10.244.1.1"]);
        vm_pod
    }

    /// A Calico-style pod: 10.244.1.7/32 with the off-link gateway 169.254.1.1, which only the node end answers.
    pub fn calico() -> VmPod {
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
    pub fn dual_stack() -> VmPod {
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
    pub fn ipv6_only() -> VmPod {
        let vm_pod = VmPod::linked("fd00:10:244:1::1/64");
        vm_pod.with_ipv6();
        vm_pod
    }

    /// Gives the pod fd00:10:244:1::7/64 and its default route through the node end's fe80::1, without duplicate
    /// address detection so that the addresses are usable at once.
    pub fn with_ipv6(&self) {
        self.node_routes_ipv6();
        self.node
            .ip(&["-6", "addr", "add", "fe80::1/64", "dev", "veth-node", "nodad"]);
        self.pod
            .ip(&["-6", "addr", "add", "fd00:10:244:1::7/64", "dev", "eth0", "nodad"]);
        self.pod
            .ip(&["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
    }

    /// Makes the node namespace an IPv6 router, as a pod's gateway is: its neighbour advertisements then carry the
    /// router flag, without which a guest drops the router it was advertised.
    pub fn node_routes_ipv6(&self) {
        self.node.run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
    }

    /// A pod whose `eth0` is a veth to the node end `veth-node` with `node_address` (none when empty), no address
    /// of its own yet, and a resolv.conf.
    pub fn linked(node_address: &str) -> VmPod {
        let vm_pod = VmPod {
            node: NetNs::new(),
            pod: NetNs::new(),
            dir: ScratchDir::new(),
        };
        let mut node_end = VethEnd::named("veth-node").mtu(MTU);
        if !node_address.is_empty() {
            node_end = node_end.address(node_address);
        }
        veth::link(
            &vm_pod.node,
            &node_end,
            &vm_pod.pod,
            &VethEnd::named("eth0").mtu(MTU).mac(POD_MAC),
        );
        vm_pod.dir.write(
            "resolv.conf",
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        vm_pod
    }

    /// Writes a VM manifest with the bridge binding whose guest pings `ping` and stays up, and returns its path.
    pub fn manifest(&self, ping: &str, memory: &str) -> PathBuf {
        self.manifest_named("vm.yaml", ping, memory)
    }

    /// [`VmPod::manifest`] for a guest that also configures IPv6 (DHCPv6 and router advertisements).
    pub fn manifest_ipv6(&self, ping: &str) -> PathBuf {
        self.write_manifest("vm.yaml", &GuestSpec::new("bridge: {}", ping).ipv6())
    }

    pub fn manifest_named(&self, file: &str, ping: &str, memory: &str) -> PathBuf {
        let spec = GuestSpec {
            memory: memory.to_owned(),
            ..GuestSpec::new("bridge: {}", ping)
        };
        self.write_manifest(file, &spec)
    }

    /// Writes the manifest of a VM as `spec` says to `file` in the pod's directory, and returns its path.
    pub fn write_manifest(&self, file: &str, spec: &GuestSpec) -> PathBuf {
        self.dir.write(file, spec.manifest())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The launcher as a pod's PID 1: in the pod's network namespace and a PID namespace of its own.
    pub fn start(&self, manifest: &Path) -> Launcher {
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

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("console.log")).unwrap_or_default()
    }

    /// The console's lines that start with `prefix`, trimmed.
    pub fn console_lines(&self, prefix: &str) -> Vec<String> {
        self.console()
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Asserts that the guest reported exactly one default route, through `gateway` on `eth0`.
    pub fn assert_default_route(&self, gateway: &str) {
        let routes = self.console_lines(&format!("VMLET-GUEST route default via {gateway} dev eth0"));
        assert_eq!(routes.len(), 1, "one default route via {gateway}\n{}", self.console());
    }

    /// Waits until the console has shown `count` lines starting with `prefix`, and returns the last of them. Fails
    /// at once if the launcher has exited.
    pub fn wait_console(&self, launcher: &Launcher, prefix: &str, count: usize) -> String {
        let found = poll_until(
            format!("console line {count} starting {prefix:?}"),
            BOOT,
            Duration::from_millis(200),
            || {
                let line = self.console_lines(prefix).get(count - 1).cloned();
                if line.is_none() && launcher.has_exited() {
                    panic!(
                        "the launcher exited before console line {count} starting {prefix:?}\n--- console ---\n{}\n--- launcher ---\n{}",
                        self.console(),
                        launcher.process.output()
                    );
                }
                line
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
    pub fn control(&self, command: &str) -> serde_json::Value {
        let request = format!("{{\"version\":1,\"id\":1,\"command\":\"{command}\"}}\n");
        let socket = self.run_dir().join("control.sock");
        let output = Command::new("socat")
            .args(["-t", "5", "-", &format!("UNIX-CONNECT:{}", socket.display())])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(request.as_bytes())?;
                }
                child.wait_with_output()
            })
            .expect("running socat");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "control answer does not parse ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// What the guest sends on its TCP `port` before closing, read through `vmlet-launcher connect guest` in the
    /// pod (as `vmlet` runs it over `pods/exec`), or the launcher's error.
    pub fn connect_guest(&self, port: u16) -> Result<String, String> {
        let mut connect = self.pod.exec(crate::binary("vmlet-launcher"));
        connect
            .args(["connect", "guest", "--port", &port.to_string()])
            .stdin(std::process::Stdio::null());
        let output = crate::output_within(&mut connect, WAIT).map_err(|err| format!("vmlet-launcher: {err}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }

    /// Processes that belong to this pod's VM, found by the run directory on their command line.
    pub fn vm_processes(&self) -> Vec<String> {
        let run_dir = self.run_dir().display().to_string();
        run(Command::new("ps").args(["-eo", "pid,args", "--no-headers"]))
            .lines()
            .filter(|line| line.contains(&run_dir) && !line.contains("vmlet-launcher"))
            .map(str::to_owned)
            .collect()
    }
}

/// QEMU's capability cache, kept between test runs as a node keeps it between pods.
pub fn qemu_cache_dir() -> PathBuf {
    std::env::var_os("VMLET_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/vmlet"))
        .join("qemu-caps")
}

/// A running `vmlet-launcher run` under `unshare`.
pub struct Launcher {
    pub process: Child,
}

impl Launcher {
    /// PID 1 of the launcher's PID namespace, as the host sees it: `unshare`'s only child. A container runtime
    /// signals this process, and it forwards the signal to the launcher proper.
    pub fn pid1(&self) -> i32 {
        only_child(self.process.pid() as i32, "PID 1 under unshare")
    }

    /// The launcher proper: PID 1's child that runs `vmlet-launcher` (QEMU is PID 1's child too).
    pub fn launcher_pid(&self) -> i32 {
        let pid1 = self.pid1();
        let found = poll_until("the launcher under PID 1", WAIT, Duration::from_millis(50), || {
            children(pid1).into_iter().find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("vmlet-launcher"))
            })
        });
        found.unwrap_or_else(|timeout| panic!("{timeout}"))
    }

    /// Whether the process under `unshare` has exited (a zombie not yet reaped, or gone).
    pub fn has_exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid())).unwrap_or_default();
        // The state follows the command name in parentheses, which may itself contain spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, None | Some("Z" | "X"))
    }

    pub fn signal(&self, pid: i32, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|err| panic!("signalling {pid}: {err}"));
    }

    pub fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let status = self.process.wait_exit(timeout).unwrap_or_else(|t| panic!("{t}"));
        status.code()
    }
}

/// The children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn only_child(pid: i32, what: &str) -> i32 {
    poll_until(what, WAIT, Duration::from_millis(50), || children(pid).first().copied())
        .unwrap_or_else(|timeout| panic!("{timeout}"))
}

/// The `key=value` fields of a `VMLET-GUEST` console line.
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Connects from `ns` to TCP `host`:`port` (`host` an IPv4 or IPv6 address) and returns what the peer sent before
/// closing, or why the connection failed (socat's message, e.g. `Connection refused`).
pub fn tcp_read(ns: &NetNs, host: &str, port: u16) -> Result<String, String> {
    let target = if host.contains(':') {
        format!("TCP:[{host}]:{port},connect-timeout=5")
    } else {
        format!("TCP:{host}:{port},connect-timeout=5")
    };
    let output = crate::output_within(ns.exec("socat").args(["-T", "5", "-u", &target, "-"]), WAIT)
        .map_err(|err| format!("socat: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
