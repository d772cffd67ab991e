//! `vmlet-launcher dhcp-serve` against the DHCP clients Debian ships (busybox udhcpc, ISC dhclient, dhcpcd), each
//! test in namespaces of its own: the server on one end of a veth pair, the client on the other. Every test checks
//! what the client applied to its namespace (addresses, routes, MTU, resolv.conf), not what it printed.
//!
//! What each client does with the options:
//! - udhcpc hands everything to its script (ours, `clients/udhcpc.script`, does what a distribution's does).
//! - dhclient applies the lease through `/sbin/dhclient-script`; option 121 only through Debian's exit hook
//!   `rfc3442-classless-routes` and only if the configuration declares the option. It ignores MTUs of 576 and
//!   below, and writes search domains with a trailing dot.
//! - dhcpcd applies addresses and routes itself, puts the MTU on its routes (the link MTU stays as it was), and
//!   leaves `search` out of resolv.conf when it would repeat `domain`.
//!
//! Needs root and a built `vmlet-launcher` (`cargo build -p vmlet-launcher`).

// Helpers here are test code like the tests themselves (which clippy.toml already exempts): a failed unwrap fails
// the test, and the testkit's errors say what was awaited and what the process printed.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::ExitStatus;
use std::time::Duration;

use vmlet_testkit::{Child, NetNs, Sandbox, VethEnd, binary, veth};

const CLIENT_MAC: &str = "02:00:00:00:00:01";
const OTHER_MAC: &str = "02:00:00:00:00:99";
const SERVER_IF: &str = "srv0";
const CLIENT_IF: &str = "cli0";
/// The server end's only address in the bridge binding's shape: the pod's address went to the guest.
const LINK_LOCAL: &str = "169.254.75.10";
/// A server without an address in the client's subnet must be told what to call itself.
const LINK_LOCAL_SERVER_ID: &str = "--server-id=169.254.75.10";
/// The bound on every wait for a server or a client; clients give up well before it.
const WAIT: Duration = Duration::from_secs(30);
const UDHCPC_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/udhcpc.script");

/// The server's options in a pod network with an ordinary subnet.
const SUBNET_OPTIONS: &[&str] = &[
    "--address=10.0.0.5/24",
    "--gateway=10.0.0.1",
    "--dns=10.0.0.53",
    "--dns=10.0.0.54",
    "--search=example.test",
    "--search=svc.example.test",
    "--mtu=1400",
    "--route=10.96.0.0/12=10.0.0.1",
];

/// The server's options for a Calico pod: a /32 address and a gateway no subnet contains.
const CALICO_OPTIONS: &[&str] = &[
    "--address=10.244.1.7/32",
    "--gateway=169.254.1.1",
    "--dns=10.96.0.10",
    "--search=default.svc.cluster.local",
    "--route=10.96.0.0/12=169.254.1.1",
];

/// A server namespace and a client namespace joined by a veth pair.
struct Network {
    server: NetNs,
    client: NetNs,
}

impl Network {
    /// `server_address` goes on the server end, `client_mac` on the client end.
    fn new(server_address: &str, client_mac: &str) -> Network {
        let network = Network {
            server: NetNs::new(),
            client: NetNs::new(),
        };
        veth::link(
            &network.server,
            &VethEnd::named(SERVER_IF).address(server_address),
            &network.client,
            &VethEnd::named(CLIENT_IF).mac(client_mac),
        );
        network
    }

    /// The server end has no address in the client's subnet, only a link-local one.
    fn link_local(client_mac: &str) -> Network {
        Network::new(&format!("{LINK_LOCAL}/32"), client_mac)
    }

    fn serve(&self, options: &[&str]) -> DhcpServer {
        DhcpServer::start(&self.server, options)
    }
}

/// `vmlet-launcher dhcp-serve` on the server end, for `CLIENT_MAC`.
struct DhcpServer {
    process: Child,
}

impl DhcpServer {
    fn start(ns: &NetNs, options: &[&str]) -> DhcpServer {
        let mut command = ns.exec(binary("vmlet-launcher"));
        command
            .args(["dhcp-serve", "--interface", SERVER_IF, "--client-mac", CLIENT_MAC])
            .args(options)
            .env("NO_COLOR", "1")
            // Ignored packets are logged at debug level.
            .env("VMLET_LOG", "info,vmlet_dhcp=debug");
        let server = DhcpServer {
            process: Child::spawn("vmlet-launcher dhcp-serve", &mut command),
        };
        server.wait_ready();
        server
    }

    /// The one place that knows how the server says it is ready: an `INFO` event whose message is `serving`.
    fn wait_ready(&self) {
        self.process
            .wait_for(" serving ", WAIT, |line| line.contains(" serving "))
            .unwrap();
    }

    /// The first line of the server's log that contains all of `words`.
    fn log_line(&self, words: &[&str]) -> String {
        let what = format!("a log line with {words:?}");
        self.process
            .wait_for(&what, WAIT, |line| words.iter().all(|w| line.contains(w)))
            .unwrap()
    }

    /// Stops the server with SIGTERM and returns the counters it logs as it stops.
    fn stop(mut self) -> HashMap<String, u64> {
        let status = self.process.terminate();
        assert!(
            status.success(),
            "dhcp-serve exited with {status} on SIGTERM:\n{}",
            self.process.output()
        );
        let line = self.process.wait_for_line(" stopped ", WAIT).unwrap();
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .filter_map(|(key, value)| Some((key.to_owned(), value.parse().ok()?)))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Udhcpc,
    Dhclient,
    Dhcpcd,
}

/// Options 121 and 26 must be declared or requested: no client asks for them out of the box (only Debian's
/// `/etc/dhcp/dhclient.conf` and `/etc/dhcpcd.conf` do, and the tests do not depend on the host's copies).
const DHCLIENT_CONF: &str = "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
timeout 10;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, domain-search,
	interface-mtu, rfc3442-classless-static-routes;
";
const DHCPCD_CONF: &str = "option domain_name_servers, domain_name, domain_search, interface_mtu
option classless_static_routes
# No ARP probe of the offered address and no link-local fallback: neither is under test, both cost seconds.
noarp
noipv4ll
";

/// A client run in the client namespace, inside a sandbox that keeps its files (resolv.conf, leases) private.
struct ClientRun {
    client: Client,
    process: Child,
}

impl ClientRun {
    fn start(client: Client, network: &Network, sandbox: &Sandbox) -> ClientRun {
        let dir = sandbox.dir();
        let mut command = match client {
            Client::Udhcpc => {
                let mut command = sandbox.command(&network.client, "busybox");
                // -n: exit when no lease comes after the three DISCOVERs -t sends, one second (-T) apart.
                command.args([
                    "udhcpc",
                    "-f",
                    "-q",
                    "-n",
                    "-t",
                    "3",
                    "-T",
                    "1",
                    "-i",
                    CLIENT_IF,
                    "-s",
                    UDHCPC_SCRIPT,
                ]);
                command.args(["-O", "staticroutes", "-O", "search", "-O", "mtu"]);
                command
            }
            Client::Dhclient => {
                let mut command = sandbox.command(&network.client, "dhclient");
                // -d: stay in the foreground once bound, so the test owns the process.
                command.args(["-d", "-1", "-v", "-sf", "/sbin/dhclient-script"]);
                command.arg("-cf").arg(dir.write("dhclient.conf", DHCLIENT_CONF));
                command.arg("-lf").arg(dir.join("dhclient.leases"));
                command.arg("-pf").arg(dir.join("dhclient.pid"));
                command.arg(CLIENT_IF);
                command
            }
            Client::Dhcpcd => {
                let mut command = sandbox.command(&network.client, "dhcpcd");
                // -B -1: in the foreground, and exit once the lease is applied (keeping it).
                command
                    .args(["-B", "-1", "-4", "-t", "10", "-f"])
                    .arg(dir.write("dhcpcd.conf", DHCPCD_CONF));
                command.arg(CLIENT_IF);
                command
            }
        };
        ClientRun {
            client,
            process: Child::spawn(format!("{client:?}"), &mut command),
        }
    }

    /// Waits until the client has applied a lease (true) or given up (false).
    fn leased(&mut self) -> bool {
        match self.client {
            // Prints this once dhclient-script has applied the lease.
            Client::Dhclient => match self
                .process
                .wait_for(" bound to ", WAIT, |l| l.starts_with("bound to "))
            {
                Ok(_) => true,
                Err(_) => {
                    self.process.wait_exit(WAIT).unwrap();
                    false
                }
            },
            Client::Udhcpc | Client::Dhcpcd => self.exit_status().success(),
        }
    }

    fn exit_status(&mut self) -> ExitStatus {
        self.process.wait_exit(WAIT).unwrap()
    }

    fn output(&self) -> String {
        self.process.output()
    }
}

/// Starts `client` and waits until it has applied a lease from the server.
fn lease(client: Client, network: &Network, sandbox: &Sandbox) -> ClientRun {
    let mut run = ClientRun::start(client, network, sandbox);
    assert!(run.leased(), "{client:?} got no lease:\n{}", run.output());
    run
}

/// A route of the client interface's main table, as `ip -4 route` shows it.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    destination: String,
    via: Option<String>,
    mtu: Option<u32>,
}

/// What the client namespace's kernel shows for the client interface, and the resolv.conf the client wrote.
#[derive(Debug)]
struct Applied {
    addresses: Vec<String>,
    routes: Vec<Route>,
    link_mtu: u32,
    nameservers: Vec<String>,
    search: Vec<String>,
}

impl Applied {
    fn observe(network: &Network, sandbox: &Sandbox) -> Applied {
        let ns = &network.client;
        let addresses = ns.ip(&["-4", "-o", "addr", "show", "dev", CLIENT_IF]);
        let addresses = addresses.lines().filter_map(|line| field_after(line, "inet")).collect();
        let routes = ns.ip(&["-4", "route", "show", "dev", CLIENT_IF]);
        let routes = routes
            .lines()
            .map(|line| Route {
                destination: line.split_whitespace().next().unwrap_or_default().to_owned(),
                via: field_after(line, "via"),
                mtu: field_after(line, "mtu").and_then(|mtu| mtu.parse().ok()),
            })
            .collect();
        let link = ns.ip(&["-o", "link", "show", "dev", CLIENT_IF]);
        let link_mtu = field_after(&link, "mtu").and_then(|mtu| mtu.parse().ok()).unwrap();
        let resolv_conf = sandbox.read_written("/etc/resolv.conf").unwrap_or_default();
        let (nameservers, search) = resolver_config(&resolv_conf);
        Applied {
            addresses,
            routes,
            link_mtu,
            nameservers,
            search,
        }
    }

    fn route(&self, destination: &str) -> &Route {
        let found = self.routes.iter().find(|route| route.destination == destination);
        found.unwrap_or_else(|| panic!("no route to {destination} in {:#?}", self.routes))
    }

    fn assert_route(&self, destination: &str, via: Option<&str>) {
        assert_eq!(
            self.route(destination).via.as_deref(),
            via,
            "route to {destination}: {:#?}",
            self.routes
        );
    }
}

/// The word after `key` in a line of `ip` output.
fn field_after(line: &str, key: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|&word| word == key)?;
    words.next().map(str::to_owned)
}

/// The name servers and search list a resolver reads from resolv.conf: the last `domain` or `search` line wins,
/// and a trailing dot (dhclient writes one) changes nothing.
fn resolver_config(resolv_conf: &str) -> (Vec<String>, Vec<String>) {
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => nameservers.extend(words.next().map(str::to_owned)),
            Some("domain") => search = words.take(1).map(|d| d.trim_end_matches('.').to_owned()).collect(),
            Some("search") => search = words.map(|d| d.trim_end_matches('.').to_owned()).collect(),
            _ => {}
        }
    }
    (nameservers, search)
}

fn applies_the_subnet_options(client: Client) {
    let network = Network::new("10.0.0.2/24", CLIENT_MAC);
    let server = network.serve(SUBNET_OPTIONS);
    let sandbox = Sandbox::new();
    let _client = lease(client, &network, &sandbox);

    let applied = Applied::observe(&network, &sandbox);
    assert_eq!(applied.addresses, ["10.0.0.5/24"], "{applied:#?}");
    applied.assert_route("default", Some("10.0.0.1"));
    applied.assert_route("10.96.0.0/12", Some("10.0.0.1"));
    if client == Client::Dhcpcd {
        assert_eq!(applied.link_mtu, 1500, "{applied:#?}");
        assert!(
            applied.routes.iter().all(|route| route.mtu == Some(1400)),
            "{applied:#?}"
        );
    } else {
        assert_eq!(applied.link_mtu, 1400, "{applied:#?}");
    }
    assert_eq!(applied.nameservers, ["10.0.0.53", "10.0.0.54"], "{applied:#?}");
    assert_eq!(applied.search, ["example.test", "svc.example.test"], "{applied:#?}");
    // The server identified itself by the interface's address, which the client can reach.
    network.client.run("ping", &["-c", "1", "-W", "5", "10.0.0.2"]);
    let counters = server.stop();
    assert_eq!((counters["answered"], counters["naks"]), (2, 0), "{counters:?}");
}

#[test]
fn udhcpc_applies_the_subnet_options() {
    applies_the_subnet_options(Client::Udhcpc);
}

#[test]
fn dhclient_applies_the_subnet_options() {
    applies_the_subnet_options(Client::Dhclient);
}

#[test]
fn dhcpcd_applies_the_subnet_options() {
    applies_the_subnet_options(Client::Dhcpcd);
}

/// A /32 address with a gateway outside it works only through option 121's on-link route to the gateway.
fn applies_a_calico_address(client: Client) {
    let network = Network::link_local(CLIENT_MAC);
    let server = network.serve(&[CALICO_OPTIONS, &[LINK_LOCAL_SERVER_ID]].concat());
    let sandbox = Sandbox::new();
    let _client = lease(client, &network, &sandbox);

    let applied = Applied::observe(&network, &sandbox);
    assert_eq!(applied.addresses, ["10.244.1.7/32"], "{applied:#?}");
    applied.assert_route("169.254.1.1", None);
    applied.assert_route("default", Some("169.254.1.1"));
    applied.assert_route("10.96.0.0/12", Some("169.254.1.1"));
    assert_eq!(applied.nameservers, ["10.96.0.10"], "{applied:#?}");
    assert_eq!(applied.search, ["default.svc.cluster.local"], "{applied:#?}");

    // The routes carry traffic: the server side plays Calico's gateway and answers for an address beyond it.
    let server_ns = &network.server;
    server_ns.ip(&["addr", "add", "169.254.1.1/32", "dev", SERVER_IF]);
    server_ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    server_ns.ip(&["route", "add", "10.244.1.7/32", "dev", SERVER_IF]);
    network.client.run("ping", &["-c", "1", "-W", "5", "192.0.2.1"]);
    server.stop();
}

#[test]
fn udhcpc_applies_a_calico_address() {
    applies_a_calico_address(Client::Udhcpc);
}

#[test]
fn dhclient_applies_a_calico_address() {
    applies_a_calico_address(Client::Dhclient);
}

#[test]
fn dhcpcd_applies_a_calico_address() {
    applies_a_calico_address(Client::Dhcpcd);
}

#[test]
fn a_client_with_another_mac_gets_nothing() {
    let network = Network::new("10.0.0.2/24", OTHER_MAC);
    let server = network.serve(SUBNET_OPTIONS);
    let sandbox = Sandbox::new();
    let mut client = ClientRun::start(Client::Udhcpc, &network, &sandbox);
    let status = client.exit_status();
    assert!(!status.success(), "udhcpc exited with {status}:\n{}", client.output());

    let applied = Applied::observe(&network, &sandbox);
    assert!(applied.addresses.is_empty(), "{applied:#?}");
    server.log_line(&["ignored", &format!("client={OTHER_MAC}"), "OtherClient"]);
    let counters = server.stop();
    assert_eq!(counters["answered"], 0, "{counters:?}");
    assert!(counters["ignored"] >= 1, "{counters:?}");
}

/// dhclient with a lease file from elsewhere first asks for its old address (INIT-REBOOT), is refused, and then
/// goes through DISCOVER to the address the server has for it.
#[test]
fn a_client_rebooting_with_a_wrong_address_is_refused_then_leased() {
    let network = Network::link_local(CLIENT_MAC);
    let server = network.serve(&[SUBNET_OPTIONS, &[LINK_LOCAL_SERVER_ID]].concat());
    let sandbox = Sandbox::new();
    sandbox
        .dir()
        .write("dhclient.leases", stale_dhclient_lease("10.0.0.99"));
    let mut client = ClientRun::start(Client::Dhclient, &network, &sandbox);
    assert!(client.leased(), "dhclient got no lease:\n{}", client.output());

    client
        .process
        .wait_for_line("DHCPNAK from 169.254.75.10", WAIT)
        .unwrap();
    server.log_line(&["request=Request(InitReboot)", "reply=Nak"]);
    assert_eq!(Applied::observe(&network, &sandbox).addresses, ["10.0.0.5/24"]);
    let counters = server.stop();
    assert_eq!(counters["naks"], 1, "{counters:?}");
}

/// A dhclient lease file holding an unexpired lease of `address` on the client interface.
fn stale_dhclient_lease(address: &str) -> String {
    format!(
        "lease {{
  interface \"{CLIENT_IF}\";
  fixed-address {address};
  option subnet-mask 255.255.255.0;
  option dhcp-server-identifier {LINK_LOCAL};
  renew 4 2099/01/01 00:00:00;
  rebind 4 2099/01/01 00:00:00;
  expire 4 2099/01/01 00:00:00;
}}
"
    )
}

/// The state file records the lease once it is bound, and a restarted server carries on from it: the client's
/// INIT-REBOOT for its address is acknowledged.
#[test]
fn the_lease_survives_a_server_restart() {
    let network = Network::link_local(CLIENT_MAC);
    let sandbox = Sandbox::new();
    let state_file = sandbox.dir().join("lease.json");
    let state_option = format!("--state-file={}", state_file.display());
    let options = [SUBNET_OPTIONS, &[LINK_LOCAL_SERVER_ID, &state_option]].concat();

    let server = network.serve(&options);
    let first = lease(Client::Dhclient, &network, &sandbox);
    let recorded = read_state(&state_file);
    assert_eq!(
        (recorded["address"].as_str(), recorded["state"].as_str()),
        (Some("10.0.0.5"), Some("bound"))
    );
    server.stop();
    drop(first);

    let server = network.serve(&options);
    server.log_line(&["lease restored", "address=10.0.0.5"]);
    // The same lease file: dhclient reboots into the address it had.
    let mut second = ClientRun::start(Client::Dhclient, &network, &sandbox);
    assert!(second.leased(), "dhclient got no lease:\n{}", second.output());
    server.log_line(&["request=Request(InitReboot)", "reply=Ack"]);
    assert_eq!(Applied::observe(&network, &sandbox).addresses, ["10.0.0.5/24"]);
    assert_eq!(read_state(&state_file)["state"], "bound");
    let counters = server.stop();
    assert_eq!((counters["answered"], counters["naks"]), (1, 0), "{counters:?}");
}

fn read_state(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}: {text}", path.display()))
}

#[test]
fn resolv_conf_is_read_like_a_resolver_does() {
    let (servers, search) = resolver_config("# comment\ndomain a.test\nsearch b.test. c.test\nnameserver 192.0.2.1\n");
    assert_eq!(
        (servers, search),
        (
            vec!["192.0.2.1".to_owned()],
            vec!["b.test".to_owned(), "c.test".to_owned()]
        )
    );
    assert_eq!(resolver_config("search x.test\ndomain d.test.\n").1, ["d.test"]);
}
