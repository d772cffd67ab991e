//! The link-local address of a pod's IPv6 gateway that the CNI names by a global address.
//!
//! Router advertisements must come from the router's link-local address, which becomes the guest's default route, so
//! a global gateway (`default via fd00::1`) must be matched to its link-local address before the guest can use it.
//! The launcher asks the link: neighbour discovery for the gateway gives its MAC address; the link-local address
//! routers make from their MAC address (modified EUI-64, what Linux bridges and most routers use) is then asked for
//! too, and taken only if the same MAC answers for it.
//!
//! The asking happens in the background, once the pod interface is the guest's, and for as long as it takes: right
//! after a CNI set a pod up, the node's addresses on the link are in duplicate address detection and answer nothing
//! for a random delay of up to a second and then a second per probe (`dad_transmits`, `retrans_time_ms`), longer
//! with slower timers. Meanwhile the guest gets its address, DNS and MTU; router advertisements name the router
//! from the moment it is found. A gateway whose link-local address is made otherwise (stable privacy) is never
//! found, and its guest gets no default route.
//!
//! The questions go out as raw frames on the pod interface (now a bridge port or a tc redirect's end, with no
//! address of its own), from a link-local address made from its own MAC address, which nothing else uses; a packet
//! socket sees the answers before the bridge or the redirect takes them.

use std::io::{self, Read};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv6Net;
use socket2::{Domain, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::{info, warn};
use vmlet_dhcp::v6::config::link_local_of;
use vmlet_dhcp::v6::frame::{self, Endpoint, Payload};
use vmlet_dhcp::v6::ra::{ND_HOP_LIMIT, NEIGHBOUR_ADVERTISEMENT, NEIGHBOUR_SOLICITATION};
use vmlet_dhcp::{MacAddr, v6};

use super::apply::{Wired, read_record, write_record};
use super::error::ApplyError;
use crate::guest_addressing;

/// A neighbour that answers at all answers within milliseconds; one that has not within this is asked again.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// The pause between rounds of questions, doubled after each round up to [`MAX_PAUSE`]: quick while the node's
/// addresses finish their detection, cheap for a router that never answers.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// After this long a warning says that the guest has no IPv6 default route yet (the search goes on).
const WARN_AFTER: Duration = Duration::from_secs(10);

/// Neighbour discovery options (RFC 4861 §4.6.1).
const SOURCE_LINK_LAYER_ADDRESS: u8 = 1;
const TARGET_LINK_LAYER_ADDRESS: u8 = 2;

/// The global IPv6 gateway whose link-local address is to be found, if the pod has one and it is not known yet.
pub fn global_gateway(gateway: Option<Ipv6Addr>, link_local: Option<Ipv6Addr>) -> Option<Ipv6Addr> {
    gateway.filter(|gateway| !gateway.is_unicast_link_local() && link_local.is_none())
}

/// Who answers for an IPv6 address on the link.
pub trait Neighbours {
    /// Asks the link once, and returns the MAC address that answered within [`ANSWER_WITHIN`].
    async fn ask(&mut self, target: Ipv6Addr) -> Option<MacAddr>;
}

/// The link-local address of the router that answers for `gateway`, asked of `neighbours` until it answers.
pub async fn find_router(neighbours: &mut impl Neighbours, gateway: Ipv6Addr) -> Ipv6Addr {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut warned = false;
    loop {
        if let Some(mac) = neighbours.ask(gateway).await {
            let candidate = link_local_of(mac);
            if neighbours.ask(candidate).await == Some(mac) {
                info!(%gateway, link_local = %candidate, %mac, "found the IPv6 gateway's link-local address");
                return candidate;
            }
        }
        if !warned && started.elapsed() >= WARN_AFTER {
            warned = true;
            warn!(
                %gateway,
                "the IPv6 gateway's link-local address is not found yet: the guest has no IPv6 default route until it is"
            );
        }
        sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// The solicited-node multicast address of `target` and its Ethernet address (RFC 4291 §2.7.1, RFC 2464 §7).
fn solicited_node(target: Ipv6Addr) -> Endpoint {
    let [.., a, b, c] = target.octets();
    Endpoint {
        mac: MacAddr([0x33, 0x33, 0xff, a, b, c]),
        ip: Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(a), u16::from_be_bytes([b, c])),
    }
}

/// A neighbour solicitation for `target` from `source`, whose MAC address it names for the answer.
pub fn solicitation(source: Endpoint, target: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[SOURCE_LINK_LAYER_ADDRESS, 1]);
    body.extend_from_slice(&source.mac.0);
    frame::icmpv6(
        source,
        solicited_node(target),
        ND_HOP_LIMIT,
        NEIGHBOUR_SOLICITATION,
        &body,
    )
    .expect("a neighbour solicitation fits in any frame")
}

/// The MAC address a neighbour advertisement `frame` gives for `target`: its target link-layer address option, or
/// without one its Ethernet source.
pub fn advertised_mac(frame: &[u8], target: Ipv6Addr) -> Option<MacAddr> {
    let packet = frame::parse(frame).ok()?;
    let Payload::Icmpv6(message) = packet.payload else {
        return None;
    };
    if packet.hop_limit != ND_HOP_LIMIT || message.first() != Some(&NEIGHBOUR_ADVERTISEMENT) {
        return None;
    }
    let advertised = <[u8; 16]>::try_from(message.get(8..24)?).ok().map(Ipv6Addr::from)?;
    if advertised != target {
        return None;
    }
    let mut options = message.get(24..)?;
    while let [kind, len, ..] = *options {
        let option_len = usize::from(len) * 8;
        if option_len == 0 || option_len > options.len() {
            return None;
        }
        if kind == TARGET_LINK_LAYER_ADDRESS {
            return <[u8; 6]>::try_from(options.get(2..8)?).ok().map(MacAddr);
        }
        options = &options[option_len..];
    }
    Some(packet.src.mac)
}

/// The pod interface's neighbours, asked over a packet socket.
pub struct LinkNeighbours {
    socket: AsyncFd<Socket>,
    source: Endpoint,
}

/// Only neighbour advertisements: IPv6 (ethertype at 12), ICMPv6 with no extension header (next header at 20), type
/// 136 (at 54). Everything else the link carries, the guest's traffic included, never reaches the socket.
const FILTER: [(u16, u8, u8, u32); 8] = [
    ((libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16, 0, 0, 12),
    ((libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, 0, 5, 0x86dd),
    ((libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16, 0, 0, 20),
    ((libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, 0, 3, 58),
    ((libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16, 0, 0, 54),
    (
        (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        0,
        1,
        NEIGHBOUR_ADVERTISEMENT as u32,
    ),
    ((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0xffff),
    ((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0),
];

impl LinkNeighbours {
    /// A packet socket on the link `index` of the calling thread's network namespace, asking from `mac`. Must be
    /// called within a Tokio runtime, whose reactor the socket joins.
    pub fn open(index: u32, mac: MacAddr) -> io::Result<LinkNeighbours> {
        // Protocol 0 receives nothing until bound, so no frame queues up before the filter is in place.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
        let filter: Vec<SockFilter> = FILTER
            .iter()
            .map(|&(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
            .collect();
        socket.attach_filter(&filter)?;
        socket.set_nonblocking(true)?;
        // Every protocol: a socket for one protocol sees frames only after tc ingress, where the tap binding's
        // redirect takes them away.
        socket.bind(&link_address(index))?;
        // SAFETY: a `Socket` owns its descriptor, closes it only when dropped, and always returns it from
        // `as_raw_fd`; the `AsyncFd` owns the `Socket`.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(LinkNeighbours {
            socket,
            source: Endpoint {
                mac,
                ip: link_local_of(mac),
            },
        })
    }

    async fn answer(&self, target: Ipv6Addr) -> io::Result<MacAddr> {
        let mut buffer = [0; 2048];
        loop {
            let mut guard = self.socket.readable().await?;
            while let Ok(received) = guard.try_io(|socket| {
                let mut socket: &Socket = socket.get_ref();
                socket.read(&mut buffer)
            }) {
                if let Some(mac) = advertised_mac(&buffer[..received?], target) {
                    return Ok(mac);
                }
            }
        }
    }
}

impl Neighbours for LinkNeighbours {
    async fn ask(&mut self, target: Ipv6Addr) -> Option<MacAddr> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        if let Err(err) = self.socket.get_ref().send(&solicitation(self.source, target)) {
            warn!(%target, error = %err, "cannot ask the link for the IPv6 gateway");
            sleep(ANSWER_WITHIN).await;
            return None;
        }
        match timeout_at(deadline, self.answer(target)).await {
            Ok(Ok(mac)) => Some(mac),
            Ok(Err(err)) => {
                warn!(%target, error = %err, "cannot read the link's answers");
                sleep(ANSWER_WITHIN).await;
                None
            }
            Err(_elapsed) => None,
        }
    }
}

/// The `sockaddr_ll` that binds a packet socket to every protocol on the link `index`.
fn link_address(index: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is one of this platform's socket address types, which is all `view_as` requires.
    let address = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    address.sll_family = libc::AF_PACKET as libc::sa_family_t;
    address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    address.sll_ifindex = index as i32;
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds a `sockaddr_ll` with every field set (the rest zeroed) and `len` is its size.
    unsafe { SockAddr::new(storage, len) }
}

/// The search for a global IPv6 gateway's router, with what the guest is to be told once it is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSearch {
    pub gateway: Ipv6Addr,
    /// The pod interface, now the guest's, and the MAC address it has since it gave the guest its own.
    pub pod_port: u32,
    pub pod_port_mac: MacAddr,
    /// What the binding made, from which the guest's IPv6 configuration is made again once the router is known.
    pub wired: Wired,
    /// Where the router, once found, is recorded, so that a restarted launcher advertises it at once.
    pub state_file: PathBuf,
}

impl RouterSearch {
    /// Starts the search on the pod interface of the calling thread's network namespace. The receiver gets the
    /// guest's IPv6 configuration naming the router once it is found; until then it holds the one without.
    pub fn start(self) -> io::Result<watch::Receiver<v6::Config>> {
        let mut neighbours = LinkNeighbours::open(self.pod_port, self.pod_port_mac)?;
        let initial = guest_addressing::dhcpv6_config(&self.wired)
            .unwrap_or_else(|| v6::Config::new(self.wired.guest_mac, Ipv6Net::default(), self.wired.served_link_mac));
        let (updates, receiver) = watch::channel(initial);
        tokio::spawn(async move {
            let link_local = find_router(&mut neighbours, self.gateway).await;
            if let Err(err) = record_router(&self.state_file, link_local) {
                warn!(error = %err, "cannot record the IPv6 gateway's link-local address");
            }
            let mut wired = self.wired;
            wired.pod.gateway_v6_link_local = Some(link_local);
            if let Some(config) = guest_addressing::dhcpv6_config(&wired) {
                let _ = updates.send(config);
            }
        });
        Ok(receiver)
    }
}

/// Adds the router found to the pod network's record.
fn record_router(state_file: &Path, link_local: Ipv6Addr) -> Result<(), ApplyError> {
    let Some(mut recorded) = read_record(state_file)? else {
        return Ok(());
    };
    recorded.pod.gateway_v6_link_local = Some(link_local);
    write_record(state_file, &recorded)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    #[test]
    fn only_a_global_gateway_not_yet_matched_is_looked_for() {
        let global = "fd00::1".parse().ok();
        assert_eq!(global_gateway(global, None), global);
        assert_eq!(global_gateway(global, "fe80::1".parse().ok()), None);
        assert_eq!(global_gateway("fe80::1".parse().ok(), None), None);
        assert_eq!(global_gateway(None, None), None);
    }

    const ROUTER_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01]);
    const ASKING: Endpoint = Endpoint {
        mac: MacAddr([0x02, 0, 0, 0, 0, 7]),
        ip: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 7),
    };

    /// The advertisement a router sends for `target` in answer to [`ASKING`], built as the kernel would.
    fn advertisement(target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
        let mut body = vec![0x60, 0, 0, 0];
        body.extend_from_slice(&target.octets());
        body.extend_from_slice(options);
        let router = Endpoint {
            mac: ROUTER_MAC,
            ip: link_local_of(ROUTER_MAC),
        };
        frame::icmpv6(router, ASKING, ND_HOP_LIMIT, NEIGHBOUR_ADVERTISEMENT, &body).unwrap()
    }

    #[test]
    fn a_solicitation_asks_the_targets_solicited_node_group_and_names_the_asker() {
        let target: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
        let frame = solicitation(ASKING, target);
        let packet = frame::parse(&frame).unwrap();
        assert_eq!(packet.dst.mac, MacAddr([0x33, 0x33, 0xff, 0, 0, 1]));
        assert_eq!(packet.dst.ip, "ff02::1:ff00:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!((packet.src, packet.hop_limit), (ASKING, 255));
        let Payload::Icmpv6(message) = packet.payload else {
            panic!("not ICMPv6")
        };
        assert_eq!(message[0], NEIGHBOUR_SOLICITATION);
        assert_eq!(&message[8..24], &target.octets());
        assert_eq!(&message[24..32], &[1, 1, 2, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn an_advertisement_gives_the_mac_of_its_target_only() {
        let target: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
        let other = [2, 1, 0x02, 0, 0, 0, 0, 9];
        assert_eq!(
            advertised_mac(&advertisement(target, &other), target),
            Some(MacAddr([2, 0, 0, 0, 0, 9]))
        );
        assert_eq!(advertised_mac(&advertisement(target, &[]), target), Some(ROUTER_MAC));
        assert_eq!(
            advertised_mac(&advertisement(target, &other), "fd00::2".parse().unwrap()),
            None
        );
        assert_eq!(advertised_mac(&solicitation(ASKING, target), target), None);
        assert_eq!(
            advertised_mac(&advertisement(target, &[2, 0, 1, 2]), target),
            None,
            "a zero-length option"
        );
    }

    /// A link whose router answers for its addresses from the `quiet_for`-th question on, as after a long duplicate
    /// address detection.
    struct SlowRouter {
        answers: Vec<(Ipv6Addr, MacAddr)>,
        quiet_for: usize,
        asked: VecDeque<Ipv6Addr>,
    }

    impl Neighbours for SlowRouter {
        async fn ask(&mut self, target: Ipv6Addr) -> Option<MacAddr> {
            self.asked.push_back(target);
            if self.asked.len() <= self.quiet_for {
                sleep(ANSWER_WITHIN).await;
                return None;
            }
            self.answers.iter().find(|(ip, _)| *ip == target).map(|(_, mac)| *mac)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_router_is_found_however_long_it_takes_to_answer() {
        let gateway: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
        let mut link = SlowRouter {
            answers: vec![(gateway, ROUTER_MAC), (link_local_of(ROUTER_MAC), ROUTER_MAC)],
            quiet_for: 12,
            asked: VecDeque::new(),
        };
        assert_eq!(find_router(&mut link, gateway).await, link_local_of(ROUTER_MAC));
        let mut expected = vec![gateway; 13];
        expected.push(link_local_of(ROUTER_MAC));
        assert_eq!(
            link.asked, expected,
            "asked until the router answered, then its link-local address"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_local_address_answered_by_another_mac_is_not_the_router() {
        let gateway: Ipv6Addr = "fd00:10:244:1::1".parse().unwrap();
        let mut link = SlowRouter {
            answers: vec![
                (gateway, ROUTER_MAC),
                (link_local_of(ROUTER_MAC), MacAddr([2, 0, 0, 0, 0, 9])),
            ],
            quiet_for: 0,
            asked: VecDeque::new(),
        };
        let search = find_router(&mut link, gateway);
        assert!(tokio::time::timeout(Duration::from_secs(3600), search).await.is_err());
        assert!(link.asked.len() > 4, "asked again and again: {:?}", link.asked);
    }
}
