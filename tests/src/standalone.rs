//! Standalone mode's machine for end-to-end tests: a network namespace that plays the machine (its host bridge,
//! the pods' namespaces and their NAT never touch the test machine's own network), a manifest folder and a state
//! folder, and `vmlet-handler standalone` running on them. Pod namespaces are named after the test's, so they are
//! removed when the test ends, however it ends.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::vm_pod::{GuestSpec, qemu_cache_dir};
use crate::{Child, NetNs, ScratchDir, binary, poll_until, remove_namespaces, run, unique_name};

/// The bound on a guest's boot: tens of seconds under TCG on a busy machine, more for the first launcher on a
/// machine, which waits for libvirt to probe QEMU.
pub const BOOT: Duration = Duration::from_secs(300);
/// The bound on anything that does not wait for a guest to boot (a shutdown waits for an ACPI power-off).
pub const WAIT: Duration = Duration::from_secs(90);
/// The machine's IPv6 pool, for dual-stack pods (`--pod-cidr-v6`), and its first address, the bridge's.
pub const POOL_V6: &str = "fd00:6d76:6c74::/64";
pub const GATEWAY_V6: &str = "fd00:6d76:6c74::1";

/// A machine for standalone mode: a namespace for the handler, a manifest folder, a state folder.
pub struct Machine {
    host: NetNs,
    dir: ScratchDir,
    /// The prefix of the pods' namespaces.
    prefix: String,
    handler: Option<Child>,
    /// Arguments the handler gets besides the machine's own.
    handler_args: Vec<OsString>,
    /// Forwarders that make ports of the test machine's loopback reachable from the machine's.
    forwarders: Vec<Child>,
}

impl Machine {
    #[allow(clippy::new_without_default)] // a machine is made, with namespaces, not defaulted
    pub fn new() -> Machine {
        let machine = Machine {
            host: NetNs::new(),
            dir: ScratchDir::new(),
            prefix: format!("{}.", unique_name()),
            handler: None,
            handler_args: Vec::new(),
            forwarders: Vec::new(),
        };
        std::fs::create_dir_all(machine.manifests()).expect("creating the manifest folder");
        machine
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("vms")
    }

    pub fn pod_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("state/pods/default_{name}"))
    }

    /// Starts the handler, in the machine's namespace only (the mounts stay the test machine's, so the pods'
    /// namespaces are visible to the test).
    pub fn start_handler(&mut self) {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.host.name()))
            .arg(binary("vmlet-handler"))
            .arg("standalone")
            .arg("--manifests")
            .arg(self.manifests())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--netns-prefix", &self.prefix])
            .args([
                "--pod-cidr",
                "10.111.0.0/24",
                "--dns",
                "10.111.0.1",
                "--interval-secs",
                "0.5",
            ])
            .arg("--cache-dir")
            .arg(qemu_cache_dir())
            .args(&self.handler_args)
            .env("NO_COLOR", "1");
        self.handler = Some(Child::spawn("vmlet-handler standalone", &mut command));
    }

    /// Adds arguments to the handler's command line, for the handlers started from now on.
    pub fn handler_args(&mut self, args: impl IntoIterator<Item = impl Into<OsString>>) {
        self.handler_args.extend(args.into_iter().map(Into::into));
    }

    /// The machine's network namespace.
    pub fn host(&self) -> &NetNs {
        &self.host
    }

    /// The machine's scratch folder (manifests in `vms/`, state in `state/`).
    pub fn dir(&self) -> &ScratchDir {
        &self.dir
    }

    /// Makes `127.0.0.1:port` inside the machine reach `127.0.0.1:port` of the test machine (a registry the test
    /// runs, say): two `socat`s joined by a unix socket, so no address outside loopback is involved.
    pub fn forward_loopback_port(&mut self, port: u16) {
        let socket = self.dir.join(format!("forward-{port}.sock"));
        let mut outside = Command::new("socat");
        outside
            .arg(format!("UNIX-LISTEN:{},fork", socket.display()))
            .arg(format!("TCP:127.0.0.1:{port}"));
        self.forwarders
            .push(Child::spawn(format!("socat to port {port}"), &mut outside));
        poll_until("the forwarder's socket", WAIT, Duration::from_millis(50), || {
            socket.exists().then_some(())
        })
        .unwrap_or_else(|timeout| panic!("{timeout}"));
        let mut inside = self.host.exec("socat");
        inside
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("UNIX-CONNECT:{}", socket.display()));
        self.forwarders
            .push(Child::spawn(format!("socat from port {port}"), &mut inside));
    }

    pub fn handler(&mut self) -> &mut Child {
        self.handler.as_mut().expect("the handler was started")
    }

    /// Gives the pods IPv6 addresses from [`POOL_V6`] too, for the handlers started from now on.
    pub fn dual_stack(&mut self) {
        self.handler_args(["--pod-cidr-v6", POOL_V6]);
    }

    /// Writes a manifest for a guest that pings the pods' gateway and stays up.
    pub fn add_vm(&self, name: &str, run_strategy: &str) -> PathBuf {
        self.add_guest(GuestSpec {
            name: name.to_owned(),
            run_strategy: run_strategy.to_owned(),
            ..GuestSpec::new("bridge: {}", "10.111.0.1")
        })
    }

    /// Writes a manifest for a guest that also takes IPv6 (DHCPv6 and router advertisements), pings both of the
    /// pods' gateways and stays up.
    pub fn add_dual_stack_vm(&self, name: &str, run_strategy: &str) -> PathBuf {
        self.add_guest(GuestSpec {
            name: name.to_owned(),
            run_strategy: run_strategy.to_owned(),
            ..GuestSpec::new("bridge: {}", &format!("10.111.0.1,{GATEWAY_V6}")).ipv6()
        })
    }

    fn add_guest(&self, spec: GuestSpec) -> PathBuf {
        let path = self.manifests().join(format!("{}.yaml", spec.name));
        std::fs::write(&path, spec.manifest()).expect("writing a manifest");
        path
    }

    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.pod_dir(name).join("run/console.log")).unwrap_or_default()
    }

    /// Waits for the guest's lease line on its current console and returns it.
    pub fn wait_lease(&self, name: &str) -> String {
        let found = poll_until(
            format!("{name}'s lease and ping"),
            BOOT,
            Duration::from_millis(250),
            || {
                let console = self.console(name);
                let lease = console
                    .lines()
                    .map(str::trim)
                    .find(|l| l.contains("VMLET-GUEST lease "))?;
                console
                    .contains("VMLET-GUEST ping target=10.111.0.1 ok")
                    .then(|| lease.to_owned())
            },
        );
        found.unwrap_or_else(|timeout| panic!("{timeout}\n{}", self.diagnostics(name)))
    }

    /// Waits for the guest's DHCPv6 lease line and its ping of the IPv6 gateway ([`Machine::add_dual_stack_vm`]),
    /// and returns the lease line.
    pub fn wait_lease6(&self, name: &str) -> String {
        let pinged = format!("VMLET-GUEST ping target={GATEWAY_V6} ");
        let found = poll_until(
            format!("{name}'s IPv6 lease and ping"),
            BOOT,
            Duration::from_millis(250),
            || {
                let console = self.console(name);
                let lease = console
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with("VMLET-GUEST lease6 "))?;
                let ping = console.lines().map(str::trim).find(|l| l.starts_with(&pinged))?;
                Some((lease.to_owned(), ping.ends_with(" ok")))
            },
        );
        match found {
            Ok((lease, true)) => lease,
            Ok((_, false)) => panic!("{name} cannot ping {GATEWAY_V6}\n{}", self.diagnostics(name)),
            Err(timeout) => panic!("{timeout}\n{}", self.diagnostics(name)),
        }
    }

    /// `vmlet-handler status` for the machine's manifests.
    pub fn status(&self) -> String {
        run(Command::new(binary("vmlet-handler"))
            .arg("status")
            .arg("--manifests")
            .arg(self.manifests()))
    }

    /// Waits until `vmlet-handler status` shows `name` with these cells, and returns the row.
    pub fn wait_status(&self, name: &str, cells: &[&str], within: Duration) -> String {
        let found = poll_until(
            format!("status of {name} with {cells:?}"),
            within,
            Duration::from_millis(250),
            || {
                self.status()
                    .lines()
                    .find(|row| {
                        let row: Vec<&str> = row.split_whitespace().collect();
                        row.get(1) == Some(&name) && cells.iter().all(|c| row.contains(c))
                    })
                    .map(str::to_owned)
            },
        );
        found.unwrap_or_else(|timeout| panic!("{timeout}\n{}", self.diagnostics(name)))
    }

    /// The status file as written, for assertions on fields the table leaves out.
    pub fn status_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.manifests().join(format!("{name}.status.yaml"))).unwrap_or_default()
    }

    /// The shim's pid as recorded in the pod.
    pub fn shim_pid(&self, name: &str) -> u32 {
        let record = std::fs::read_to_string(self.pod_dir(name).join("shim.json")).expect("reading shim.json");
        let record: serde_json::Value = serde_json::from_str(&record).expect("shim.json is JSON");
        record["pid"].as_u64().expect("shim.json has a pid") as u32
    }

    pub fn pod_namespaces(&self) -> Vec<String> {
        crate::namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect()
    }

    pub fn diagnostics(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.pod_dir(name).join("launcher.log")).unwrap_or_default();
        let handler = self.handler.as_ref().map(Child::output).unwrap_or_default();
        format!(
            "--- status ---\n{}\n--- console ---\n{}\n--- launcher ---\n{log}\n--- handler ---\n{handler}",
            self.status_file(name),
            self.console(name)
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The shims and launchers run in the pods' namespaces, so removing those ends them.
        self.handler.take();
        remove_namespaces(&self.prefix);
    }
}
