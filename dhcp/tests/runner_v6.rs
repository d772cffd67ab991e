//! The IPv6 runner on one end of a veth pair, dhcpcd on the other, each end in a network namespace of its own. The
//! tests check what the client's kernel ends up with (address, routes, router neighbour, MTU) and the resolv.conf
//! dhcpcd wrote, not what anyone printed.
//!
//! - The guest's way (`images/guest`): the kernel handles router advertisements, dhcpcd asks for an address
//!   whatever they say.
//! - dhcpcd's own way: it handles the advertisements, and asks for an address because the Managed flag says so.
//!
//! Needs root and dhcpcd.
#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::CloneFlags;
use tokio::sync::{oneshot, watch};
use vmlet_dhcp::MacAddr;
use vmlet_dhcp::v6::runner::{Runner, Status};
use vmlet_dhcp::v6::{Config, Router};
use vmlet_testkit::{Child, NetNs, Sandbox, VethEnd, poll_until, veth};

const SERVER_IF: &str = "srv0";
const CLIENT_IF: &str = "cli0";
const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const OTHER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
const SERVER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
/// Calico's gateway: a hardware address no interface of the test has, so the router's is plainly not the server's.
const ROUTER_MAC: MacAddr = MacAddr([0xee; 6]);
const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
const DNS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x0a);
/// The bound on every wait; the clients give up well before it.
const WAIT: Duration = Duration::from_secs(30);

/// A server namespace and a client namespace joined by a veth pair.
struct Network {
    server: NetNs,
    client: NetNs,
}

impl Network {
    fn new(client_mac: MacAddr) -> Network {
        let network = Network {
            server: NetNs::new(),
            client: NetNs::new(),
        };
        veth::link(
            &network.server,
            &VethEnd::named(SERVER_IF).mac(&SERVER_MAC.to_string()),
            &network.client,
            &VethEnd::named(CLIENT_IF).mac(&client_mac.to_string()),
        );
        network
    }

    fn client_sysctl(&self, setting: &str) {
        self.client
            .run("sysctl", &["-q", "-w", &format!("net.ipv6.conf.{CLIENT_IF}.{setting}")]);
    }

    /// The client interface's global addresses, as `ADDRESS/LEN`.
    fn client_addresses(&self) -> Vec<String> {
        let output = self
            .client
            .ip(&["-6", "-o", "addr", "show", "dev", CLIENT_IF, "scope", "global"]);
        output.lines().filter_map(|line| field_after(line, "inet6")).collect()
    }

    fn client_routes(&self) -> String {
        self.client.ip(&["-6", "route", "show", "dev", CLIENT_IF])
    }

    /// Waits for the client's default route and returns its line.
    fn client_default_route(&self) -> String {
        poll_until("a default route", WAIT, Duration::from_millis(100), || {
            self.client_routes()
                .lines()
                .find(|line| line.starts_with("default"))
                .map(str::to_owned)
        })
        .unwrap()
    }
}

/// The word after `key` in a line of `ip` output.
fn field_after(line: &str, key: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|&word| word == key)?;
    words.next().map(str::to_owned)
}

/// The runner on its own thread in the server namespace: namespaces belong to threads, so the thread enters the
/// namespace and runs a runtime of its own there.
struct Serving {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Status>>,
    status: watch::Receiver<Status>,
}

impl Serving {
    fn start(ns: &NetNs, config: Config) -> Serving {
        let path = format!("/run/netns/{}", ns.name());
        let (ready, started) = mpsc::channel();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = || -> Result<(tokio::runtime::Runtime, Runner), String> {
                let namespace = std::fs::File::open(&path).map_err(|err| format!("{path}: {err}"))?;
                nix::sched::setns(namespace, CloneFlags::CLONE_NEWNET).map_err(|err| format!("setns: {err}"))?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| err.to_string())?;
                let runner = runtime
                    .block_on(async { Runner::bind(config, SERVER_IF) })
                    .map_err(|err| format!("{err}: {:?}", std::error::Error::source(&err)))?;
                Ok((runtime, runner))
            };
            match started() {
                Ok((runtime, runner)) => {
                    let _ = ready.send(Ok(runner.status()));
                    runtime.block_on(runner.run(async {
                        let _ = stop.await;
                    }))
                }
                Err(err) => {
                    let _ = ready.send(Err(err));
                    Status::default()
                }
            }
        });
        let status = started.recv_timeout(WAIT).unwrap().unwrap();
        Serving {
            shutdown: Some(shutdown),
            thread: Some(thread),
            status,
        }
    }

    /// Waits until the status satisfies `condition`, and returns it.
    fn wait_for(&self, what: &str, condition: impl Fn(&Status) -> bool) -> Status {
        poll_until(what, WAIT, Duration::from_millis(50), || {
            let status = *self.status.borrow();
            condition(&status).then_some(status)
        })
        .unwrap()
    }

    fn stop(mut self) -> Status {
        self.shut_down().unwrap()
    }

    fn shut_down(&mut self) -> Option<Status> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // The runner returns as soon as it sees the shutdown.
        self.thread.take().map(|thread| thread.join().unwrap())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shut_down();
        } else if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn config(client_mac: MacAddr, address: &str) -> Config {
    let mut config = Config::new(client_mac, address.parse().unwrap(), SERVER_MAC);
    config.router = Some(Router {
        link_local: ROUTER,
        mac: Some(ROUTER_MAC),
    });
    config.dns = vec![DNS];
    config.search = vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()];
    config.mtu = Some(1400);
    config
}

/// The guest's dhcpcd configuration (`images/guest/dhcpcd.conf`) without its event script.
const GUEST_DHCPCD_CONF: &str = "noipv6rs
ia_na
option dhcp6_name_servers, dhcp6_domain_search
duid ll
";

/// dhcpcd on its own: router advertisements decide whether it asks for an address.
const DHCPCD_CONF: &str = "option dhcp6_name_servers, dhcp6_domain_search, rapid_commit
";

/// dhcpcd in the client namespace, in the foreground, exiting once configured (keeping what it configured).
fn dhcpcd(network: &Network, sandbox: &Sandbox, conf: &str) -> Child {
    let mut command = sandbox.command(&network.client, "dhcpcd");
    command
        .args(["-B", "-1", "-6", "-t", "15", "-f"])
        .arg(sandbox.dir().write("dhcpcd.conf", conf))
        .arg(CLIENT_IF);
    Child::spawn("dhcpcd", &mut command)
}

/// The name servers and search domains of the resolv.conf dhcpcd wrote.
fn resolver(sandbox: &Sandbox) -> (Vec<String>, Vec<String>) {
    let resolv_conf = sandbox.read_written("/etc/resolv.conf").unwrap_or_default();
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => nameservers.extend(words.next().map(str::to_owned)),
            Some("search") => search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (nameservers, search)
}

/// A /128 pod address, as Calico gives, to a client configured like the test guest. The server end has no IPv6 at
/// all, so nothing but the runner's own frames reaches the client.
#[test]
fn a_guest_like_client_gets_the_address_the_router_and_dns() {
    let network = Network::new(CLIENT_MAC);
    network.server.run(
        "sysctl",
        &["-q", "-w", &format!("net.ipv6.conf.{SERVER_IF}.disable_ipv6=1")],
    );
    // Route information options are taken only up to this prefix length; Linux's default is 0.
    network.client_sysctl("accept_ra_rt_info_max_plen=128");
    let mut config = config(CLIENT_MAC, "fd00:10:244:1::7/128");
    config.routes = vec!["fd00:10:96::/112".parse().unwrap()];
    let serving = Serving::start(&network.server, config);
    let sandbox = Sandbox::new();
    let mut client = dhcpcd(&network, &sandbox, GUEST_DHCPCD_CONF);
    let status = client.wait_exit(WAIT).unwrap();
    assert!(status.success(), "dhcpcd exited with {status}:\n{}", client.output());

    assert_eq!(network.client_addresses(), ["fd00:10:244:1::7/128"]);
    let default = network.client_default_route();
    assert_eq!(field_after(&default, "via"), Some(ROUTER.to_string()), "{default}");
    assert_eq!(field_after(&default, "proto").as_deref(), Some("ra"), "{default}");
    let routes = network.client_routes();
    let route = routes.lines().find(|line| line.starts_with("fd00:10:96::/112"));
    assert_eq!(
        route.and_then(|line| field_after(line, "via")),
        Some(ROUTER.to_string()),
        "{routes}"
    );
    assert!(
        !routes.contains("fd00:10:244:1::"),
        "a /128 puts no prefix on the link:\n{routes}"
    );
    // The router's hardware address came with the advertisement: no neighbour discovery needed.
    let neighbours = network.client.ip(&["-6", "neigh", "show", "dev", CLIENT_IF]);
    let router = neighbours.lines().find(|line| line.starts_with(&ROUTER.to_string()));
    assert_eq!(
        router.and_then(|line| field_after(line, "lladdr")),
        Some(ROUTER_MAC.to_string()),
        "{neighbours}"
    );
    assert!(router.is_some_and(|line| line.contains(" router")), "{neighbours}");
    let mtu = network
        .client
        .run("sysctl", &["-n", &format!("net.ipv6.conf.{CLIENT_IF}.mtu")]);
    assert_eq!(mtu.trim(), "1400");
    let (nameservers, search) = resolver(&sandbox);
    assert_eq!(nameservers, [DNS.to_string()]);
    assert_eq!(search, ["default.svc.cluster.local", "svc.cluster.local"]);

    let status = serving.stop();
    assert_eq!(
        (status.dhcp.malformed, status.dhcp.ignored, status.dhcp.refused),
        (0, 0, 0),
        "{status:?}"
    );
    assert!(status.dhcp.answered >= 2, "{status:?}");
    assert!(status.unsolicited_advertisements >= 1, "{status:?}");
    assert_eq!(status.dropped_frames, 0, "{status:?}");
    assert_eq!(
        status.lease.map(|l| l.address),
        Some("fd00:10:244:1::7".parse().unwrap())
    );
}

/// A /64 pod address to dhcpcd left to itself: the Managed flag makes it ask for the address (with rapid commit),
/// the on-link prefix without the autonomous flag gives it the subnet route and no address of its own making. Then
/// the server end plays the real router, and traffic goes through the default route.
#[test]
fn dhcpcd_follows_the_managed_flag_and_the_route_carries_traffic() {
    let network = Network::new(CLIENT_MAC);
    let serving = Serving::start(&network.server, config(CLIENT_MAC, "2001:db8:1::5/64"));
    let sandbox = Sandbox::new();
    let mut client = dhcpcd(&network, &sandbox, DHCPCD_CONF);
    let status = client.wait_exit(WAIT).unwrap();
    assert!(status.success(), "dhcpcd exited with {status}:\n{}", client.output());
    client
        .wait_for_line("2001:db8:1::5", WAIT)
        .expect("dhcpcd reports the address it was given");

    let addresses = network.client_addresses();
    assert_eq!(addresses.len(), 1, "no address but the one given: {addresses:?}");
    assert!(addresses[0].starts_with("2001:db8:1::5/"), "{addresses:?}");
    let default = network.client_default_route();
    assert_eq!(field_after(&default, "via"), Some(ROUTER.to_string()), "{default}");
    let routes = network.client_routes();
    assert!(
        routes
            .lines()
            .any(|line| line.starts_with("2001:db8:1::/64") && !line.contains(" via ")),
        "the pod's subnet is on the link:\n{routes}"
    );
    let (nameservers, _) = resolver(&sandbox);
    assert_eq!(nameservers, [DNS.to_string()]);
    let status = serving.wait_for("a solicited advertisement", |s| s.solicited_advertisements >= 1);
    assert_eq!(status.dhcp.answered, 1, "one SOLICIT, committed at once: {status:?}");

    // The server end becomes the router the advertisements named, with an address beyond it.
    let server = &network.server;
    server.ip(&["link", "set", SERVER_IF, "address", &ROUTER_MAC.to_string()]);
    server.ip(&["addr", "add", &format!("{ROUTER}/64"), "dev", SERVER_IF, "nodad"]);
    server.ip(&["addr", "add", "2001:db8:ffff::1/128", "dev", "lo"]);
    server.ip(&["route", "add", "2001:db8:1::/64", "dev", SERVER_IF]);
    network
        .client
        .run("ping", &["-6", "-c", "1", "-W", "5", "2001:db8:ffff::1"]);
    serving.stop();
}

#[test]
fn a_client_with_another_mac_gets_nothing() {
    let network = Network::new(OTHER_MAC);
    let serving = Serving::start(&network.server, config(CLIENT_MAC, "fd00:10:244:1::7/128"));
    let sandbox = Sandbox::new();
    let client = dhcpcd(&network, &sandbox, GUEST_DHCPCD_CONF);
    // A retransmitted SOLICIT, and advertisements enough for the kernel to have taken one.
    serving.wait_for("two SOLICITs and three advertisements", |s| {
        s.dhcp.ignored >= 2 && s.unsolicited_advertisements >= 3
    });

    assert!(network.client_addresses().is_empty());
    // The advertisements go to the guest's hardware address only; this client's kernel never takes them.
    let routes = network.client_routes();
    assert!(!routes.contains("default"), "{routes}");
    drop(client);
    let status = serving.stop();
    assert_eq!(status.dhcp.answered, 0, "{status:?}");
    assert_eq!(status.solicited_advertisements, 0, "{status:?}");
}
