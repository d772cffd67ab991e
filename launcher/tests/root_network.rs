//! The network layer against the kernel: a pod namespace joined by a veth to a node namespace, set up as a CNI
//! would, then discovered and rewired. Needs root; the unit tests of the same code (plans, the applier on a fake)
//! do not.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, setsockopt, socket, sockopt};
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoBridgePort, InfoData, InfoKind,
    InfoPortData, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use vmlet_dhcp::MacAddr;
use vmlet_dhcp::frame::ipv4_udp;
use vmlet_dhcp::v6;

use vmlet_launcher::network::apply::Wired;
use vmlet_launcher::network::binding::BindingRequest;
use vmlet_launcher::network::binding::bridge::DEFAULT_SERVER_ADDRESS;
use vmlet_launcher::network::binding::masquerade::GuestSubnets;
use vmlet_launcher::network::error::ApplyError;
use vmlet_launcher::network::netlink::{self, Netlink};
use vmlet_launcher::network::netns::in_netns;
use vmlet_launcher::network::pod_interface::{PodInterface, PodRoute, discover};
use vmlet_launcher::network::resolv_conf::DnsConfig;
use vmlet_launcher::network::tap_device::open_tap;

const POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07]);
/// The link-local address the kernel derives from [`POD_MAC`] (EUI-64).
const POD_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0858, 0x0aff, 0xfef4, 0x0107);
const NODE_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01];
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const POD_IPV6: &str = "fd00:10:244:1::7/64";
const NODE_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const MTU: u32 = 1400;
const RESOLV_CONF: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                           nameserver 10.96.0.10\n\
                           nameserver fd00:10:96::a\n\
                           options ndots:5\n";
/// Each tap frame starts with a `virtio_net_hdr`, as QEMU reads it.
const VNET_HEADER_LEN: usize = 10;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// A UDP port nobody uses, marking frames that must get through.
const MARKER_PORT: u16 = 6767;

/// A network namespace held only by a file descriptor: never mounted nor named, so the kernel destroys it with its
/// links when the value is dropped, and also when the test process dies.
struct TestNetns(OwnedFd);

impl TestNetns {
    fn new() -> TestNetns {
        let created = thread::spawn(|| -> io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .expect("the namespace thread panicked");
        TestNetns(created.expect("creating a network namespace (the network tests need root)"))
    }

    fn run<W, F, T>(&self, work: W) -> T
    where
        W: FnOnce(Handle) -> F + Send,
        F: Future<Output = T>,
        T: Send,
    {
        in_netns(self.0.as_fd(), work).expect("entering the test namespace")
    }
}

/// A directory for the state file and `resolv.conf`, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vmlet-n-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// How the CNI wired the pod.
#[derive(Clone, Copy, PartialEq)]
enum Cni {
    /// 10.244.1.7/24 with gateway 10.244.1.1 on the node's end, and fd00:10:244:1::7/64 with gateway fe80::1.
    Subnet,
    /// Calico's way: 10.244.1.7/32, and a default route through 169.254.1.1, on the link by a route of its own.
    PointToPoint,
}

/// A pod namespace whose `eth0` is a veth to a node namespace, with MTU 1400.
struct TestPod {
    pod: TestNetns,
    node: TestNetns,
    dir: ScratchDir,
}

impl TestPod {
    fn new(cni: Cni) -> TestPod {
        let test_pod = TestPod {
            pod: TestNetns::new(),
            node: TestNetns::new(),
            dir: ScratchDir::new(),
        };
        let node_fd = test_pod.node.0.as_raw_fd();
        test_pod.pod.run(|handle| plug_pod(handle, node_fd, cni));
        test_pod.node.run(|handle| plug_node(handle, cni));
        fs::write(test_pod.resolv_conf(), RESOLV_CONF).unwrap();
        test_pod
    }

    fn resolv_conf(&self) -> PathBuf {
        self.dir.0.join("resolv.conf")
    }

    fn request(&self) -> BindingRequest {
        BindingRequest {
            binding: vmlet_api::Binding::Bridge,
            interface: "eth0".into(),
            run_dir: self.dir.0.join("run"),
            resolv_conf: self.resolv_conf(),
            hostname: "vm1".into(),
            subdomain: None,
            guest_mac: None,
            ports: Vec::new(),
            subnets: GuestSubnets::parse(None, None).unwrap(),
        }
    }

    /// Discovers `eth0` once the kernel has given it its link-local address.
    fn discover(&self) -> PodInterface {
        self.pod.run(|handle| async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let pod = discover(&handle, "eth0").await.unwrap();
                if pod.ipv6_link_local.is_some() {
                    return pod;
                }
                assert!(Instant::now() < deadline, "eth0 got no link-local address within 5 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn setup(&self) -> Result<Wired, ApplyError> {
        let request = self.request();
        self.pod
            .run(|handle| async move { vmlet_launcher::network::apply::setup(&request, &handle).await })
    }

    fn links(&self) -> Vec<LinkState> {
        self.pod.run(|handle| async move { link_states(&handle).await })
    }
}

async fn plug_pod(handle: Handle, node_netns: RawFd, cni: Cni) {
    let veth = LinkVeth::new("eth0", "veth-node")
        .mtu(MTU)
        .address(POD_MAC.0.to_vec())
        .build();
    handle.link().add(veth).execute().await.unwrap();
    let peer = index_of(&handle, "veth-node").await;
    let move_peer = LinkUnspec::new_with_index(peer).setns_by_fd(node_netns).build();
    handle.link().set(move_peer).execute().await.unwrap();
    let eth0 = index_of(&handle, "eth0").await;
    for index in [index_of(&handle, "lo").await, eth0] {
        let up = LinkUnspec::new_with_index(index).up().build();
        handle.link().set(up).execute().await.unwrap();
    }
    match cni {
        Cni::Subnet => {
            add_address(&handle, eth0, "10.244.1.7/24").await;
            add_address(&handle, eth0, POD_IPV6).await;
            let default_v4 = RouteMessageBuilder::<Ipv4Addr>::new().gateway(NODE_IP).build();
            handle.route().add(default_v4).execute().await.unwrap();
            let default_v6 = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(NODE_LINK_LOCAL)
                .output_interface(eth0)
                .build();
            handle.route().add(default_v6).execute().await.unwrap();
        }
        Cni::PointToPoint => {
            add_address(&handle, eth0, "10.244.1.7/32").await;
            let gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(CALICO_GATEWAY, 32)
                .output_interface(eth0)
                .scope(RouteScope::Link)
                .build();
            handle.route().add(gateway).execute().await.unwrap();
            let default_v4 = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(CALICO_GATEWAY)
                .output_interface(eth0)
                .build();
            handle.route().add(default_v4).execute().await.unwrap();
        }
    }
}

async fn plug_node(handle: Handle, cni: Cni) {
    let veth = index_of(&handle, "veth-node").await;
    let configure = LinkUnspec::new_with_index(veth)
        .mtu(MTU)
        .address(NODE_MAC.to_vec())
        .up()
        .build();
    handle.link().set(configure).execute().await.unwrap();
    if cni == Cni::Subnet {
        add_address(&handle, veth, "10.244.1.1/24").await;
        add_address(&handle, veth, "fe80::1/64").await;
        add_address(&handle, veth, "fd00:10:244:1::1/64").await;
    }
}

async fn index_of(handle: &Handle, name: &str) -> u32 {
    handle
        .link_by_name(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name} not found"))
        .header
        .index
}

/// Adds an address, IPv6 ones without duplicate address detection so that they are usable at once.
async fn add_address(handle: &Handle, index: u32, net: &str) {
    let net: IpNet = net.parse().unwrap();
    let mut request = handle.address().add(index, net.addr(), net.prefix_len());
    if net.addr().is_ipv6() {
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request.execute().await.unwrap();
}

/// What the tests compare of a link.
#[derive(Debug, PartialEq)]
struct LinkState {
    name: String,
    index: u32,
    kind: Option<InfoKind>,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
    up: bool,
    controller: Option<u32>,
    /// Global addresses (kernel-made link-local ones come and go with carrier and timers).
    addresses: Vec<IpNet>,
    /// Any IPv6 address at all, link-local included.
    has_ipv6_address: bool,
    message: LinkMessage,
}

async fn link_states(handle: &Handle) -> Vec<LinkState> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.unwrap();
    let mut states = Vec::new();
    for link in links {
        let index = link.header.index;
        let addresses = handle.addresses_of(index).await.unwrap();
        let mut global: Vec<IpNet> = addresses
            .iter()
            .filter(|address| netlink::address_is_global(address))
            .filter_map(netlink::address_net)
            .collect();
        global.sort();
        states.push(LinkState {
            name: netlink::link_name(&link).unwrap().to_owned(),
            index,
            kind: netlink::link_kind(&link).cloned(),
            mac: netlink::link_mac(&link),
            mtu: netlink::link_mtu(&link),
            up: link.header.flags.contains(LinkFlags::Up),
            controller: netlink::link_controller(&link),
            addresses: global,
            has_ipv6_address: addresses
                .iter()
                .any(|address| netlink::address_net(address).is_some_and(|net| net.addr().is_ipv6())),
            message: link,
        });
    }
    states
}

fn link<'a>(links: &'a [LinkState], name: &str) -> &'a LinkState {
    links.iter().find(|link| link.name == name).unwrap_or_else(|| {
        panic!(
            "{name} not found among {:?}",
            links.iter().map(|l| &l.name).collect::<Vec<_>>()
        )
    })
}

/// What the binding sets on the links, for comparing one run with the next.
fn comparable(links: &[LinkState]) -> Vec<String> {
    links
        .iter()
        .map(|link| {
            format!(
                "{} {} {:?} {:?} {:?} up={} controller={:?} {:?}",
                link.name, link.index, link.kind, link.mac, link.mtu, link.up, link.controller, link.addresses,
            )
        })
        .collect()
}

fn inet_conf(link: &LinkMessage) -> Option<InetDevConf> {
    af_spec(link).find_map(|spec| match spec {
        AfSpecUnspec::Inet(inet) => inet.iter().find_map(|entry| match entry {
            AfSpecInet::DevConf(conf) => Some(*conf),
            _ => None,
        }),
        _ => None,
    })
}

fn addr_gen_mode(link: &LinkMessage) -> Option<In6AddrGenMode> {
    af_spec(link).find_map(|spec| match spec {
        AfSpecUnspec::Inet6(inet6) => inet6.iter().find_map(|entry| match entry {
            AfSpecInet6::AddrGenMode(mode) => Some(*mode),
            _ => None,
        }),
        _ => None,
    })
}

fn af_spec(link: &LinkMessage) -> impl Iterator<Item = &AfSpecUnspec> {
    link.attributes
        .iter()
        .filter_map(|attribute| match attribute {
            LinkAttribute::AfSpecUnspec(specs) => Some(specs),
            _ => None,
        })
        .flatten()
}

/// Whether the bridge learns addresses behind the port `link`.
fn bridge_port_learning(link: &LinkMessage) -> Option<bool> {
    netlink::link_infos(link)
        .filter_map(|info| match info {
            LinkInfo::PortData(InfoPortData::BridgePort(attributes)) => Some(attributes),
            _ => None,
        })
        .flatten()
        .find_map(|attribute| match attribute {
            InfoBridgePort::Learning(learning) => Some(*learning),
            _ => None,
        })
}

/// `IFLA_TUN_*` attributes the kernel reports for a tap, by their numbers in `if_link.h`.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;

/// The value of the tun attribute `kind`, as bytes.
fn tun_attribute(link: &LinkMessage, kind: u16) -> Option<Vec<u8>> {
    netlink::link_infos(link)
        .filter_map(|info| match info {
            LinkInfo::Data(InfoData::Tun(attributes)) => Some(attributes),
            _ => None,
        })
        .flatten()
        .find_map(|attribute| match attribute {
            InfoTun::Other(nla) if nla.kind() == kind => {
                let mut value = vec![0; nla.value_len()];
                nla.emit_value(&mut value);
                Some(value)
            }
            _ => None,
        })
}

/// Runs `nft` inside the current thread's namespace and returns what it prints.
async fn nft(args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("nft")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("nft did not finish within 10 s")
    .expect("running nft");
    assert!(
        output.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A route as discovery reports it, from text.
fn route(destination: &str, gateway: Option<&str>, on_link: bool, metric: u32) -> PodRoute {
    PodRoute {
        destination: destination.parse().unwrap(),
        gateway: gateway.map(|gateway| gateway.parse().unwrap()),
        on_link,
        metric,
    }
}

fn sorted(mut routes: Vec<PodRoute>) -> Vec<PodRoute> {
    routes.sort_by_key(|route| (route.destination, route.gateway));
    routes
}

#[test]
fn discovery_describes_a_dual_stack_pod() {
    let test_pod = TestPod::new(Cni::Subnet);
    let index = test_pod
        .pod
        .run(|handle| async move { index_of(&handle, "eth0").await });

    let pod = test_pod.discover();

    assert_eq!(pod.name, "eth0");
    assert_eq!(pod.index, index);
    assert_eq!(pod.mac, POD_MAC);
    assert_eq!(pod.mtu, MTU);
    assert_eq!(pod.ipv4, vec!["10.244.1.7/24".parse::<Ipv4Net>().unwrap()]);
    assert_eq!(pod.ipv6, vec![POD_IPV6.parse::<Ipv6Net>().unwrap()]);
    assert_eq!(pod.ipv6_link_local, Some(POD_LINK_LOCAL));
    assert_eq!(
        sorted(pod.routes),
        sorted(vec![
            route("0.0.0.0/0", Some("10.244.1.1"), false, 0),
            route("10.244.1.0/24", None, false, 0),
            route("::/0", Some("fe80::1"), false, 1024),
            route("fd00:10:244:1::/64", None, false, 256),
        ])
    );
    assert_eq!(pod.gateway_v4, Some(NODE_IP));
    assert_eq!(pod.gateway_v6, Some(NODE_LINK_LOCAL));
}

#[test]
fn discovery_describes_a_calico_style_pod() {
    let test_pod = TestPod::new(Cni::PointToPoint);

    let pod = test_pod.discover();

    assert_eq!((pod.mac, pod.mtu), (POD_MAC, MTU));
    assert_eq!(pod.ipv4, vec!["10.244.1.7/32".parse::<Ipv4Net>().unwrap()]);
    assert!(pod.ipv6.is_empty());
    assert_eq!(pod.ipv6_link_local, Some(POD_LINK_LOCAL));
    assert_eq!(
        sorted(pod.routes),
        sorted(vec![
            route("0.0.0.0/0", Some("169.254.1.1"), false, 0),
            route("169.254.1.1/32", None, false, 0),
        ])
    );
    assert_eq!((pod.gateway_v4, pod.gateway_v6), (Some(CALICO_GATEWAY), None));
}

#[test]
fn discovery_of_a_missing_interface_fails() {
    let test_pod = TestPod::new(Cni::Subnet);
    let err = test_pod
        .pod
        .run(|handle| async move { discover(&handle, "net7").await })
        .unwrap_err();
    assert_eq!(err.to_string(), "interface \"net7\" not found");
}

/// Checks every link the binding made or changed, for a pod whose addresses were `addresses`.
fn assert_bridged(test_pod: &TestPod, setup: &Wired, pod: &PodInterface, addresses: &[&str]) {
    assert_eq!(setup.served_link, "vb-eth0");
    assert_eq!(setup.tap, "tap-eth0");
    assert_eq!(setup.guest_mac, POD_MAC);
    assert_eq!(setup.mtu, MTU);
    assert_eq!(setup.server_address, Some(DEFAULT_SERVER_ADDRESS));
    assert_eq!(&setup.pod, pod);
    assert_eq!(setup.dns, DnsConfig::parse(RESOLV_CONF));

    let links = test_pod.links();
    let bridge = link(&links, "vb-eth0");
    let bridge_index = bridge.index;
    assert_eq!(bridge.mac, Some(setup.served_link_mac));
    assert_eq!(bridge.kind, Some(InfoKind::Bridge));
    assert_eq!((bridge.mtu, bridge.up), (Some(MTU), true));
    assert_eq!(bridge.addresses, vec!["169.254.75.10/32".parse::<IpNet>().unwrap()]);
    let arp = inet_conf(&bridge.message).expect("the bridge reports its IPv4 settings");
    assert_eq!((arp.arp_ignore, arp.arp_announce), (1, 2));

    let port = link(&links, "eth0-nic");
    assert_eq!(port.index, pod.index, "the pod interface is renamed, not replaced");
    let port_mac = port.mac.unwrap();
    assert_eq!(setup.pod_port_mac, Some(port_mac));
    assert_ne!(port_mac, POD_MAC);
    assert_eq!(port_mac.0[0] & 0x03, 0x02, "locally administered unicast");
    assert_eq!(port.controller, Some(bridge_index));
    assert_eq!((port.mtu, port.up), (Some(MTU), true));
    assert!(port.addresses.is_empty());
    assert!(!port.has_ipv6_address, "not even a link-local address");
    assert_eq!(addr_gen_mode(&port.message), Some(In6AddrGenMode::None));
    assert_eq!(bridge_port_learning(&port.message), Some(false));

    let tap = link(&links, "tap-eth0");
    assert_eq!(tap.kind, Some(InfoKind::Tun));
    assert_eq!(tap.controller, Some(bridge_index));
    assert_eq!((tap.mtu, tap.up), (Some(MTU), true));
    assert!(!tap.has_ipv6_address);
    assert_eq!(addr_gen_mode(&tap.message), Some(In6AddrGenMode::None));
    assert_eq!(
        tun_attribute(&tap.message, IFLA_TUN_TYPE),
        Some(vec![libc::IFF_TAP as u8])
    );
    assert_eq!(tun_attribute(&tap.message, IFLA_TUN_PERSIST), Some(vec![1]));
    assert_eq!(tun_attribute(&tap.message, IFLA_TUN_VNET_HDR), Some(vec![1]));
    assert_eq!(
        tun_attribute(&tap.message, IFLA_TUN_OWNER),
        Some(0u32.to_ne_bytes().to_vec())
    );

    let ports: Vec<&str> = links
        .iter()
        .filter(|link| link.controller == Some(bridge_index))
        .map(|link| link.name.as_str())
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");

    let placeholder = link(&links, "eth0");
    assert_ne!(placeholder.index, pod.index);
    assert_eq!(placeholder.kind, Some(InfoKind::Bridge));
    assert_eq!((placeholder.up, placeholder.controller), (true, None));
    assert_eq!(placeholder.mtu, Some(MTU));
    let mut expected: Vec<IpNet> = addresses.iter().map(|net| net.parse().unwrap()).collect();
    expected.sort();
    assert_eq!(placeholder.addresses, expected);
    assert!(!links.iter().any(|link| link.controller == Some(placeholder.index)));

    let rules = test_pod
        .pod
        .run(|_| async { nft(&["list", "table", "bridge", "vmlet"]).await });
    assert!(rules.contains("oifname \"eth0-nic\" drop"), "{rules}");

    let recorded = fs::read_to_string(test_pod.request().state_file()).unwrap();
    assert!(recorded.contains("\"10.244.1.7/"), "{recorded}");
}

#[test]
fn bridge_binding_hands_a_dual_stack_pod_to_the_guest_and_is_idempotent() {
    let test_pod = TestPod::new(Cni::Subnet);
    let pod = test_pod.discover();

    let setup = test_pod.setup().unwrap();
    assert_bridged(&test_pod, &setup, &pod, &["10.244.1.7/24", POD_IPV6]);

    let before = comparable(&test_pod.links());
    let rules_before = test_pod.pod.run(|_| async { nft(&["list", "ruleset"]).await });
    let again = test_pod.setup().unwrap();
    assert_eq!(again, setup);
    assert_eq!(comparable(&test_pod.links()), before);
    let rules_after = test_pod.pod.run(|_| async { nft(&["list", "ruleset"]).await });
    assert_eq!(rules_after, rules_before);
}

#[test]
fn bridge_binding_hands_a_calico_style_pod_to_the_guest() {
    let test_pod = TestPod::new(Cni::PointToPoint);
    let pod = test_pod.discover();

    let setup = test_pod.setup().unwrap();

    assert_bridged(&test_pod, &setup, &pod, &["10.244.1.7/32"]);
    assert_eq!(setup.pod.gateway_v4, Some(CALICO_GATEWAY));
}

#[test]
fn bridge_binding_finishes_what_an_interrupted_launcher_started() {
    let test_pod = TestPod::new(Cni::Subnet);
    let pod = test_pod.discover();
    // As if a launcher had recorded the pod network, taken the addresses off and renamed the interface, then died.
    let state_file = test_pod.request().state_file();
    fs::create_dir_all(state_file.parent().unwrap()).unwrap();
    let record = serde_json::json!({ "pod": pod, "dns": DnsConfig::parse(RESOLV_CONF) });
    fs::write(&state_file, record.to_string()).unwrap();
    test_pod.pod.run(|handle| async move {
        for address in handle.addresses_of(pod.index).await.unwrap() {
            handle.address().del(address).execute().await.unwrap();
        }
        let down = LinkUnspec::new_with_index(pod.index).down().build();
        handle.link().set(down).execute().await.unwrap();
        let rename = LinkUnspec::new_with_index(pod.index).name("eth0-nic").build();
        handle.link().set(rename).execute().await.unwrap();
    });

    let setup = test_pod.setup().unwrap();

    assert_bridged(&test_pod, &setup, &pod, &["10.244.1.7/24", POD_IPV6]);
}

#[test]
fn bridge_binding_refuses_to_guess_when_its_record_is_lost() {
    let test_pod = TestPod::new(Cni::Subnet);
    test_pod.setup().unwrap();
    fs::remove_file(test_pod.request().state_file()).unwrap();

    let err = test_pod.setup().unwrap_err();

    assert!(matches!(err, ApplyError::RecordLost { .. }), "{err}");
}

/// A tap file set non-blocking, read as the guest's NIC.
struct Guest(File);

impl Guest {
    fn attach(test_pod: &TestPod) -> Guest {
        let tap = test_pod.pod.run(|_| async { open_tap("tap-eth0").unwrap() });
        fcntl(&tap, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        Guest(tap)
    }

    fn send(&mut self, frame: &[u8]) {
        let mut buffer = vec![0; VNET_HEADER_LEN];
        buffer.extend_from_slice(frame);
        self.0.write_all(&buffer).unwrap();
    }

    /// The first frame the guest receives within `within` for which `wanted` holds.
    fn receive(&self, within: Duration, wanted: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
        receive(self.0.as_fd(), VNET_HEADER_LEN, within, wanted)
    }
}

/// Reads frames from the non-blocking `fd` (each after `skip` bytes of header) until one satisfies `wanted` or
/// `within` has passed.
fn receive(
    fd: std::os::fd::BorrowedFd<'_>,
    skip: usize,
    within: Duration,
    mut wanted: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buffer = vec![0; 65536];
    while Instant::now() < deadline {
        match nix::unistd::read(fd, &mut buffer) {
            Ok(len) if len > skip && wanted(&buffer[skip..len]) => return Some(buffer[skip..len].to_vec()),
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => thread::sleep(Duration::from_millis(5)),
            Err(err) => panic!("reading frames: {err}"),
        }
    }
    None
}

/// A packet socket that sees every frame in the node namespace.
fn node_capture(test_pod: &TestPod) -> OwnedFd {
    test_pod.node.run(|_| async {
        socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        )
        .unwrap()
    })
}

fn ethernet(destination: [u8; 6], source: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An ARP request from the guest for `target`, with `sender` as its address (0.0.0.0 for a probe).
fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&POD_MAC.0);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    ethernet([0xff; 6], POD_MAC.0, ETHERTYPE_ARP, &arp)
}

/// The MAC address in an ARP reply for `ip`.
fn arp_reply_for(frame: &[u8], ip: Ipv4Addr) -> Option<[u8; 6]> {
    let arp = frame.get(14..42)?;
    let is_reply = frame[12..14] == ETHERTYPE_ARP.to_be_bytes() && arp[6..8] == [0, 2];
    (is_reply && arp[14..18] == ip.octets()).then(|| arp[8..14].try_into().unwrap_or_default())
}

/// The UDP destination port of an IPv4 frame.
fn udp_destination_port(frame: &[u8]) -> Option<u16> {
    if frame.get(12..14)? != ETHERTYPE_IPV4.to_be_bytes() || *frame.get(23)? != 17 {
        return None;
    }
    let udp = 14 + usize::from(frame[14] & 0x0f) * 4;
    Some(u16::from_be_bytes(frame.get(udp + 2..udp + 4)?.try_into().ok()?))
}

/// A UDP broadcast from the guest.
fn guest_broadcast(source_port: u16, destination_port: u16) -> Vec<u8> {
    let packet = ipv4_udp(
        SocketAddrV4::new(POD_IP, source_port),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, destination_port),
        b"vmlet test",
        64,
    )
    .unwrap();
    ethernet([0xff; 6], POD_MAC.0, ETHERTYPE_IPV4, &packet)
}

/// Sends a UDP broadcast from `source` out of `interface`, in the current thread's namespace.
fn broadcast_from(source: SocketAddrV4, interface: &str, destination_port: u16) {
    let socket = UdpSocket::bind(source).unwrap();
    socket.set_broadcast(true).unwrap();
    setsockopt(&socket, sockopt::BindToDevice, &interface.into()).unwrap();
    socket
        .send_to(b"vmlet test", (Ipv4Addr::BROADCAST, destination_port))
        .unwrap();
}

#[test]
fn guest_reaches_the_pod_network_and_dhcp_stays_in_the_pod() {
    let test_pod = TestPod::new(Cni::Subnet);
    test_pod.setup().unwrap();
    let mut guest = Guest::attach(&test_pod);
    let wait = Duration::from_secs(5);

    // The guest, with the pod's MAC and IP addresses, finds its gateway on the node. The tap port needs a moment
    // to forward once the guest has attached, so the request is repeated.
    let deadline = Instant::now() + wait;
    let gateway_mac = loop {
        guest.send(&arp_request(POD_IP, NODE_IP));
        if let Some(reply) = guest.receive(Duration::from_millis(200), |frame| {
            arp_reply_for(frame, NODE_IP).is_some()
        }) {
            break arp_reply_for(&reply, NODE_IP);
        }
        assert!(Instant::now() < deadline, "no ARP reply from the node within {wait:?}");
    };
    assert_eq!(gateway_mac, Some(NODE_MAC));

    // The pod answers ARP for the server address, but not for the pod's address, which is the guest's: a guest
    // probing for it before using it must hear nothing.
    guest.send(&arp_request(Ipv4Addr::UNSPECIFIED, DEFAULT_SERVER_ADDRESS));
    let server = guest.receive(wait, |frame| arp_reply_for(frame, DEFAULT_SERVER_ADDRESS).is_some());
    assert!(
        server.is_some(),
        "the bridge does not answer ARP for the server address"
    );
    guest.send(&arp_request(Ipv4Addr::UNSPECIFIED, POD_IP));
    let claimed = guest.receive(Duration::from_millis(500), |frame| {
        arp_reply_for(frame, POD_IP).is_some()
    });
    assert_eq!(claimed, None, "someone answers ARP for the guest's address");

    // The guest's DHCP requests stay in the pod, while other broadcasts get through. The marker is sent last, so
    // once the node sees it, it has seen all it will.
    let node = node_capture(&test_pod);
    guest.send(&guest_broadcast(68, 67));
    guest.send(&guest_broadcast(MARKER_PORT, MARKER_PORT));
    let mut leaked = Vec::new();
    let marker = receive(node.as_fd(), 0, wait, |frame| {
        let port = udp_destination_port(frame);
        leaked.extend(port.filter(|&port| port != MARKER_PORT));
        port == Some(MARKER_PORT)
    });
    assert!(marker.is_some(), "the node never saw the guest's broadcast");
    assert!(leaked.is_empty(), "the node saw UDP to ports {leaked:?}");

    // The pod's DHCP server reaches the guest and never the node.
    let node = node_capture(&test_pod);
    test_pod.pod.run(|_| async {
        broadcast_from(SocketAddrV4::new(DEFAULT_SERVER_ADDRESS, 67), "vb-eth0", 68);
    });
    let offer = guest.receive(wait, |frame| udp_destination_port(frame) == Some(68));
    assert!(offer.is_some(), "the guest never saw the pod's DHCP reply");
    guest.send(&guest_broadcast(MARKER_PORT, MARKER_PORT));
    let mut leaked = Vec::new();
    let marker = receive(node.as_fd(), 0, wait, |frame| {
        let port = udp_destination_port(frame);
        leaked.extend(port.filter(|&port| port != MARKER_PORT));
        port == Some(MARKER_PORT)
    });
    assert!(marker.is_some(), "the node never saw the guest's broadcast");
    assert!(leaked.is_empty(), "the node saw UDP to ports {leaked:?}");

    // A DHCP server on the pod network does not reach the guest.
    test_pod.node.run(|_| async {
        broadcast_from(SocketAddrV4::new(NODE_IP, 67), "veth-node", 68);
        broadcast_from(SocketAddrV4::new(NODE_IP, MARKER_PORT), "veth-node", MARKER_PORT);
    });
    let mut foreign = Vec::new();
    let marker = guest.receive(wait, |frame| {
        let port = udp_destination_port(frame);
        foreign.extend(port.filter(|&port| port != MARKER_PORT));
        port == Some(MARKER_PORT)
    });
    assert!(marker.is_some(), "the guest never saw the node's broadcast");
    assert!(foreign.is_empty(), "the guest saw UDP to ports {foreign:?}");
}

/// A global IPv6 gateway whose router's link-local address is still in duplicate address detection, as right after
/// a CNI set the pod up, is found once the detection ends (here after about 3 s), by raw neighbour discovery on the
/// pod interface.
#[test]
fn a_global_ipv6_gateway_is_found_once_its_routers_link_local_address_is_usable() {
    let test_pod = TestPod::new(Cni::Subnet);
    let pod = test_pod.discover();
    let router = vmlet_dhcp::v6::config::link_local_of(MacAddr(NODE_MAC));
    test_pod.node.run(|handle| async move {
        let veth = index_of(&handle, "veth-node").await;
        // Each detection probe waits 3 s for an answer.
        fs::write("/proc/sys/net/ipv6/neigh/veth-node/retrans_time_ms", "3000").unwrap();
        let addresses: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(veth)
            .execute()
            .try_collect()
            .await
            .unwrap();
        for address in addresses {
            let is_router = address
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V6(ip)) if *ip == router));
            if is_router {
                handle.address().del(address).execute().await.unwrap();
            }
        }
        handle
            .address()
            .add(veth, IpAddr::V6(router), 64)
            .execute()
            .await
            .unwrap();
    });
    let gateway: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
    let found = test_pod.pod.run(|_| async move {
        let mut neighbours =
            vmlet_launcher::network::gateway::LinkNeighbours::open(pod.index, MacAddr([2, 0, 0, 0, 0, 0x42])).unwrap();
        let search = vmlet_launcher::network::gateway::find_router(&mut neighbours, gateway);
        tokio::time::timeout(Duration::from_secs(60), search).await
    });
    assert_eq!(found.ok(), Some(router));
}

/// Under `tap` every frame from the pod network is redirected to the tap before the pod's stack sees it: the search
/// for a global gateway's router still hears the answers, on the pod interface itself.
#[test]
fn the_router_search_hears_the_gateway_through_the_tap_bindings_redirect() {
    let test_pod = TestPod::new(Cni::Subnet);
    test_pod.discover();
    let request = BindingRequest {
        binding: vmlet_api::Binding::Tap,
        ..test_pod.request()
    };
    let wired = test_pod
        .pod
        .run(|handle| async move { vmlet_launcher::network::apply::setup(&request, &handle).await })
        .unwrap();
    let gateway: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
    let found = test_pod.pod.run(|_| async move {
        let mut neighbours =
            vmlet_launcher::network::gateway::LinkNeighbours::open(wired.pod.index, wired.pod_port_mac.unwrap())
                .unwrap();
        let search = vmlet_launcher::network::gateway::find_router(&mut neighbours, gateway);
        tokio::time::timeout(Duration::from_secs(60), search).await
    });
    assert_eq!(
        found.ok(),
        Some(vmlet_dhcp::v6::config::link_local_of(MacAddr(NODE_MAC)))
    );
}

/// The Ethernet source of a router advertisement without IPv6 extension headers.
fn router_advertisement_source(frame: &[u8]) -> Option<&[u8]> {
    let is_advertisement = frame.len() > 54 && frame[12..14] == [0x86, 0xdd] && frame[20] == 58 && frame[54] == 134;
    is_advertisement.then(|| &frame[6..12])
}

/// Sends a router advertisement for all nodes from fe80::1 out of `interface`, in the current thread's namespace.
/// The kernel fills in the checksum.
fn advertise_from(interface: &str, index: u32) {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV6),
    )
    .unwrap();
    socket.bind_device(Some(interface.as_bytes())).unwrap();
    socket.set_multicast_hops_v6(255).unwrap();
    socket.set_multicast_if_v6(index).unwrap();
    // Type 134, code 0, checksum, hop limit 64, no flags, router lifetime 1800 s, no timers.
    let advertisement = [134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    let all_nodes = std::net::SocketAddrV6::new(v6::ra::ALL_NODES, 0, 0, index);
    socket.send_to(&advertisement, &all_nodes.into()).unwrap();
}

#[test]
fn router_advertisements_reach_the_guest_only_from_the_pod() {
    let test_pod = TestPod::new(Cni::Subnet);
    let setup = test_pod.setup().unwrap();
    let guest = Guest::attach(&test_pod);
    let node = node_capture(&test_pod);

    // The launcher's advertisements, served on the bridge, reach the guest (the first ones may come before the tap
    // port forwards: the runner repeats them every 3 s at start). Without the router's hardware address, as the
    // launcher runs it, they come from the bridge's.
    let mut config = v6::Config::new(POD_MAC, POD_IPV6.parse().unwrap(), setup.served_link_mac);
    config.router = Some(v6::Router {
        link_local: NODE_LINK_LOCAL,
        mac: None,
    });
    let advertisement = thread::scope(|scope| {
        scope.spawn(|| {
            test_pod.pod.run(|_| async move {
                let runner = v6::runner::Runner::bind(config, &setup.served_link).unwrap();
                runner.run(tokio::time::sleep(Duration::from_secs(7))).await
            })
        });
        guest.receive(Duration::from_secs(7), |frame| {
            router_advertisement_source(frame) == Some(&setup.served_link_mac.0)
        })
    });
    assert!(
        advertisement.is_some(),
        "the guest never saw the launcher's advertisement"
    );

    // ... and never the node, which sees the guest's marker broadcast after them.
    let mut guest = guest;
    guest.send(&guest_broadcast(MARKER_PORT, MARKER_PORT));
    let mut leaked = false;
    let marker = receive(node.as_fd(), 0, Duration::from_secs(5), |frame| {
        leaked |= router_advertisement_source(frame).is_some();
        udp_destination_port(frame) == Some(MARKER_PORT)
    });
    assert!(marker.is_some(), "the node never saw the guest's broadcast");
    assert!(!leaked, "the launcher's advertisement reached the node");

    // The pod network's advertisements never reach the guest.
    test_pod.node.run(|handle| async move {
        let index = index_of(&handle, "veth-node").await;
        advertise_from("veth-node", index);
        broadcast_from(SocketAddrV4::new(NODE_IP, MARKER_PORT), "veth-node", MARKER_PORT);
    });
    let mut foreign = false;
    let marker = guest.receive(Duration::from_secs(5), |frame| {
        foreign |= router_advertisement_source(frame) == Some(&NODE_MAC);
        udp_destination_port(frame) == Some(MARKER_PORT)
    });
    assert!(marker.is_some(), "the guest never saw the node's broadcast");
    assert!(!foreign, "the node's advertisement reached the guest");
}

#[test]
fn in_netns_runs_in_the_namespace_and_resumes_panics() {
    let netns = TestNetns::new();
    let names = netns.run(|handle| async move {
        link_states(&handle)
            .await
            .into_iter()
            .map(|link| link.name)
            .collect::<Vec<_>>()
    });
    assert_eq!(names, vec!["lo".to_owned()]);

    let panicked = std::panic::catch_unwind(|| netns.run(|_| async { panic!("inside") }));
    let message = panicked.unwrap_err();
    assert_eq!(message.downcast_ref::<&str>(), Some(&"inside"));
}
