//! Puts the DHCPv6 [`Server`] and the [`Advertiser`] on the interface that faces the guest (never the pod's own:
//! the caller passes the bridge or tap).
//!
//! One `AF_PACKET` socket carries everything. It receives, through a classic BPF filter, only what the cores read:
//! DHCPv6 to port 547 and router solicitations, both usually multicast. It sends whole frames: advertisements with
//! the router's addresses, which only a raw frame can carry, and DHCPv6 replies from the server's link-local
//! address. So the interface needs no IPv6 of its own (the bridge may keep IPv6 disabled and send nothing of its
//! own onto the guest's link), no route and no neighbour entry. On a bridge, multicast from the guest reaches the
//! bridge device itself unless an MLD querier prunes it, and a pod network has none.
//!
//! Unsolicited advertisements go out at start, twice more a few seconds apart, then every 20 s. None is sent with
//! lifetime 0 at shutdown: a launcher restarted in the same pod carries on, and the guest keeps its router
//! meanwhile.

use std::future::Future;
use std::io::{self, Read};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use socket2::{Domain, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::v6::config::{Config, ConfigError};
use crate::v6::frame::{self, Endpoint, NEXT_HEADER_ICMPV6, NEXT_HEADER_UDP, Packet, Payload, PayloadTooLong};
use crate::v6::ra::{Advertiser, ROUTER_SOLICITATION};
use crate::v6::server::{Lease, Outcome, Server};
use crate::v6::{Counters, Unanswered};

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;
/// Any value does for link-local replies; this is the usual default.
const HOP_LIMIT: u8 = 64;
/// Room for any frame, so that none is cut short.
const RECEIVE_BUFFER: usize = 65536;
/// Quick advertisements after start, for a guest already up (a restarted launcher) that may not solicit.
const INITIAL_ADVERTISEMENTS: u64 = 3;
const INITIAL_INTERVAL: Duration = Duration::from_secs(3);
/// Well inside the advertised lifetimes ([`crate::v6::ra::LIFETIME`]): many may be lost before anything expires.
const INTERVAL: Duration = Duration::from_secs(20);

/// Why the runner could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid IPv6 configuration")]
    Config(#[source] ConfigError),
    #[error("interface {0:?} not found")]
    InterfaceNotFound(String),
    #[error("cannot open a packet socket on interface {interface:?}")]
    PacketSocket {
        interface: String,
        #[source]
        source: io::Error,
    },
}

/// What the runner has done so far, for whoever reports on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub dhcp: Counters,
    /// Router advertisements sent in answer to a solicitation.
    pub solicited_advertisements: u64,
    pub unsolicited_advertisements: u64,
    /// Router solicitations left unanswered: from another client, or invalid.
    pub ignored_solicitations: u64,
    /// Frames that reached neither core: damaged, or DHCPv6 from an address no client uses.
    pub dropped_frames: u64,
    /// Replies and advertisements made but not sent.
    pub send_errors: u64,
    pub lease: Option<Lease>,
}

/// The DHCPv6 server and the router advertisements with their socket, ready to run.
pub struct Runner {
    socket: AsyncFd<Socket>,
    cores: Cores,
    advertised: Option<watch::Receiver<Config>>,
}

/// What handles a frame, apart from the socket it came on, which stays borrowed while frames are read.
struct Cores {
    server: Server,
    advertiser: Advertiser,
    status: watch::Sender<Status>,
}

impl Runner {
    /// Validates `config` and opens the packet socket on `interface`. Must be called within a Tokio runtime,
    /// whose reactor the socket joins.
    pub fn bind(config: Config, interface: &str) -> Result<Runner, Error> {
        config.validate().map_err(Error::Config)?;
        let not_found = || Error::InterfaceNotFound(interface.to_owned());
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|_| not_found())?;
        let ifindex = i32::try_from(ifindex).map_err(|_| not_found())?;
        let socket = open_socket(ifindex)
            .and_then(|socket| {
                // SAFETY: a `Socket` owns its descriptor, closes it only when dropped, and always returns it from
                // `as_raw_fd`; the `AsyncFd` owns the `Socket`.
                unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)
            })
            .map_err(|source| Error::PacketSocket {
                interface: interface.to_owned(),
                source,
            })?;
        Ok(Runner {
            socket,
            cores: Cores {
                advertiser: Advertiser::new(&config),
                server: Server::new(config),
                status: watch::Sender::new(Status::default()),
            },
            advertised: None,
        })
    }

    /// Router advertisements say what the latest of `updates` says (its router and routes, for one), from the
    /// moment it changes: a router found after the start is advertised at once, without a restart. DHCPv6 keeps
    /// serving the configuration the runner was bound with; an update that does not validate is ignored.
    pub fn advertise_updates(mut self, updates: watch::Receiver<Config>) -> Runner {
        self.advertised = Some(updates);
        self
    }

    pub fn config(&self) -> &Config {
        self.cores.server.config()
    }

    /// The counters and lease, updated after every frame.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.cores.status.subscribe()
    }

    /// Serves until `shutdown` completes, and returns the final status.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Status {
        let Runner {
            socket,
            mut cores,
            mut advertised,
        } = self;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut buffer = vec![0; RECEIVE_BUFFER];
        let mut next_advertisement = Instant::now();
        let mut unsolicited = 0;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(config) = next_update(&mut advertised) => {
                    match config.validate() {
                        Ok(()) => {
                            info!(router = ?config.router.map(|router| router.link_local), "router advertisements updated");
                            cores.advertiser = Advertiser::new(&config);
                            // As at the start: a guest that gave up soliciting learns the news quickly.
                            unsolicited = 0;
                            next_advertisement = Instant::now();
                        }
                        Err(err) => warn!(error = %err, "invalid router advertisement update ignored"),
                    }
                }
                () = sleep_until(next_advertisement) => {
                    cores.advertise(socket.get_ref(), cores.advertiser.unsolicited(), false);
                    unsolicited += 1;
                    next_advertisement = Instant::now() + advertisement_interval(unsolicited);
                }
                readable = socket.readable() => {
                    let mut guard = match readable {
                        Ok(guard) => guard,
                        Err(err) => {
                            warn!(error = %err, "cannot wait for frames");
                            break;
                        }
                    };
                    // Everything queued, until the socket would block.
                    loop {
                        let received = guard.try_io(|socket| {
                            let mut socket: &Socket = socket.get_ref();
                            socket.read(&mut buffer)
                        });
                        match received {
                            Ok(Ok(len)) => cores.handle(socket.get_ref(), &buffer[..len]),
                            Ok(Err(err)) => {
                                warn!(error = %err, "receive failed");
                                break;
                            }
                            Err(_would_block) => break,
                        }
                    }
                }
            }
        }
        *cores.status.borrow()
    }
}

/// The next configuration from `updates`; pending for ever when there are none, or no more.
async fn next_update(updates: &mut Option<watch::Receiver<Config>>) -> Option<Config> {
    let Some(receiver) = updates else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *updates = None;
        return std::future::pending().await;
    }
    Some(receiver.borrow_and_update().clone())
}

impl Cores {
    fn handle(&mut self, socket: &Socket, frame: &[u8]) {
        let packet = match frame::parse(frame) {
            Ok(packet) => packet,
            Err(err) => {
                debug!(error = %err, len = frame.len(), "frame dropped");
                self.status.send_modify(|status| status.dropped_frames += 1);
                return;
            }
        };
        match packet.payload {
            Payload::Udp { dst_port, data, .. } if dst_port == SERVER_PORT => self.handle_dhcp(socket, &packet, data),
            // The filter passes UDP to the server port only.
            Payload::Udp { .. } => self.status.send_modify(|status| status.dropped_frames += 1),
            Payload::Icmpv6(_) => match self.advertiser.answer(&packet) {
                Ok(destination) => self.advertise(socket, destination, true),
                Err(reason) => {
                    let client = packet.src.mac;
                    match reason {
                        Unanswered::Invalid(_) => warn!(%client, %reason, "router solicitation dropped"),
                        _ => debug!(%client, %reason, "router solicitation ignored"),
                    }
                    self.status.send_modify(|status| status.ignored_solicitations += 1);
                }
            },
        }
    }

    fn handle_dhcp(&mut self, socket: &Socket, packet: &Packet<'_>, message: &[u8]) {
        let client = packet.src.mac;
        // Clients send from their link-local address (RFC 8415 §13.1); a reply to anything else would go nowhere.
        if !packet.src.ip.is_unicast_link_local() {
            debug!(%client, source = %packet.src.ip, "DHCPv6 message from a non-link-local address dropped");
            self.status.send_modify(|status| status.dropped_frames += 1);
            return;
        }
        let outcome = self.server.handle(client, message, SystemTime::now());
        let xid = format!("{:#08x}", xid(message));
        let mut send_failed = false;
        match &outcome {
            Outcome::Reply(reply) => {
                let sent = reply_frame(self.server.config(), packet, &reply.bytes)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
                    .and_then(|frame| send(socket, &frame));
                let (request, kind, verdict) = (reply.request, reply.kind, reply.verdict);
                match sent {
                    Ok(()) => info!(%xid, %client, ?request, reply = ?kind, ?verdict, "answered"),
                    Err(err) => {
                        send_failed = true;
                        warn!(%xid, %client, ?request, reply = ?kind, error = %err, "reply not sent");
                    }
                }
            }
            Outcome::Ignored(reason) => debug!(%xid, %client, ?reason, "ignored"),
            Outcome::Malformed(reason) => warn!(%client, len = message.len(), %reason, "malformed message dropped"),
        }
        let lease = self.server.lease().copied();
        self.status.send_modify(|status| {
            status.dhcp.count(&outcome);
            status.send_errors += u64::from(send_failed);
            status.lease = lease;
        });
    }

    fn advertise(&self, socket: &Socket, destination: Endpoint, solicited: bool) {
        let sent = self
            .advertiser
            .frame(destination)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
            .and_then(|frame| send(socket, &frame));
        match &sent {
            Ok(()) if solicited => info!(destination = %destination.ip, "router advertisement sent"),
            Ok(()) => debug!("unsolicited router advertisement sent"),
            Err(err) => warn!(destination = %destination.ip, error = %err, "router advertisement not sent"),
        }
        self.status.send_modify(|status| match (sent.is_ok(), solicited) {
            (true, true) => status.solicited_advertisements += 1,
            (true, false) => status.unsolicited_advertisements += 1,
            (false, _) => status.send_errors += 1,
        });
    }
}

/// Non-blocking: a full send buffer loses this frame like the network might, and the client asks again.
fn send(socket: &Socket, frame: &[u8]) -> io::Result<()> {
    socket.send(frame).map(drop)
}

/// The frame that carries a DHCPv6 reply back to where `request` came from, port 546.
fn reply_frame(config: &Config, request: &Packet<'_>, reply: &[u8]) -> Result<Vec<u8>, PayloadTooLong> {
    let source = Endpoint {
        mac: config.server_mac,
        ip: config.server_link_local(),
    };
    frame::udp(source, SERVER_PORT, request.src, CLIENT_PORT, HOP_LIMIT, reply)
}

/// How long after the `sent`-th unsolicited advertisement the next one goes.
fn advertisement_interval(sent: u64) -> Duration {
    if sent < INITIAL_ADVERTISEMENTS {
        INITIAL_INTERVAL
    } else {
        INTERVAL
    }
}

/// The transaction ID, or 0 for a message too short to carry one.
fn xid(message: &[u8]) -> u32 {
    message
        .get(1..4)
        .map_or(0, |b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
}

/// Passes IPv6 frames that arrive on the interface (never those it sends) carrying a router solicitation or UDP to
/// the DHCPv6 server port directly, without extension headers; drops everything else in the kernel. Each entry is
/// (code, jump if true, jump if false, constant), jumps counting the instructions skipped.
const FILTER: [(u32, u8, u8, u32); 13] = {
    use libc::{BPF_ABS, BPF_B, BPF_H, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const PACKET_TYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
    const ETHERTYPE_AT: u32 = 12;
    const NEXT_HEADER_AT: u32 = 14 + 6;
    const ICMPV6_TYPE_AT: u32 = 14 + 40;
    const UDP_DESTINATION_AT: u32 = 14 + 40 + 2;
    [
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, PACKET_TYPE),
        (BPF_JMP | BPF_JEQ | BPF_K, 10, 0, libc::PACKET_OUTGOING as u32), // to drop
        (BPF_LD | BPF_H | BPF_ABS, 0, 0, ETHERTYPE_AT),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 8, frame::ETHERTYPE_IPV6 as u32), // else drop
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, NEXT_HEADER_AT),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 2, NEXT_HEADER_ICMPV6 as u32), // else to the UDP test
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, ICMPV6_TYPE_AT),
        (BPF_JMP | BPF_JEQ | BPF_K, 3, 4, ROUTER_SOLICITATION as u32), // accept or drop
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 3, NEXT_HEADER_UDP as u32),     // else drop
        (BPF_LD | BPF_H | BPF_ABS, 0, 0, UDP_DESTINATION_AT),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 1, SERVER_PORT as u32), // else drop
        (BPF_RET | BPF_K, 0, 0, u32::MAX),                     // accept the whole frame
        (BPF_RET | BPF_K, 0, 0, 0),                            // drop
    ]
};

/// A raw packet socket on `ifindex` that receives what [`FILTER`] passes.
fn open_socket(ifindex: i32) -> io::Result<Socket> {
    // Protocol 0 receives nothing until bound, so no frame queues up before the filter is in place.
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
    let filter: Vec<SockFilter> = FILTER
        .iter()
        .map(|&(code, jt, jf, k)| SockFilter::new(code as u16, jt, jf, k)) // BPF codes fit in 16 bits
        .collect();
    socket.attach_filter(&filter)?;
    socket.set_nonblocking(true)?;
    // Every protocol, not just IPv6: a socket for one protocol sees frames only after tc ingress, where the tap
    // binding's redirect takes them away.
    socket.bind(&link_address(ifindex, libc::ETH_P_ALL as u16))?;
    Ok(socket)
}

/// The `sockaddr_ll` that binds a packet socket to `protocol` on the interface `ifindex`.
fn link_address(ifindex: i32, protocol: u16) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is one of this platform's socket address types, which is all `view_as` requires.
    let address = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    address.sll_family = libc::AF_PACKET as libc::sa_family_t;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = ifindex;
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds a `sockaddr_ll` with every field set (the rest zeroed) and `len` is its size.
    unsafe { SockAddr::new(storage, len) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacAddr;

    const GUEST: Endpoint = Endpoint {
        mac: MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]),
        ip: std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0x42, 0x0aff, 0xfef4, 0x0107),
    };
    const ALL_DHCP: Endpoint = Endpoint {
        mac: MacAddr([0x33, 0x33, 0, 1, 0, 2]),
        ip: std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2),
    };
    const PACKET_HOST: u32 = 0;
    const PACKET_MULTICAST: u32 = 2;

    /// Runs [`FILTER`] on a frame the way the kernel does, for the instructions it uses.
    fn filter_passes(frame: &[u8], packet_type: u32) -> bool {
        let mut accumulator = 0u32;
        let mut pc = 0;
        loop {
            let (code, jt, jf, k) = FILTER[pc];
            pc += 1;
            let load = |width: usize| {
                if k == (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32 {
                    return Some(packet_type);
                }
                let bytes = frame.get(k as usize..k as usize + width)?;
                Some(bytes.iter().fold(0, |acc, &b| acc << 8 | u32::from(b)))
            };
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match load(4) {
                    Some(value) => accumulator = value,
                    None => return false, // the kernel drops a frame too short for a load
                },
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => match load(2) {
                    Some(value) => accumulator = value,
                    None => return false,
                },
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => match load(1) {
                    Some(value) => accumulator = value,
                    None => return false,
                },
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if accumulator == k { jt } else { jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return k != 0,
                other => panic!("instruction {other:#x} not modelled"),
            }
        }
    }

    #[test]
    fn the_filter_passes_solicitations_and_dhcpv6_only() {
        let router_solicitation = frame::icmpv6(GUEST, ALL_DHCP, 255, ROUTER_SOLICITATION, &[0; 4]).unwrap();
        let dhcpv6 = frame::udp(GUEST, CLIENT_PORT, ALL_DHCP, SERVER_PORT, 1, &[1, 0, 0, 1]).unwrap();
        assert!(filter_passes(&router_solicitation, PACKET_MULTICAST));
        assert!(filter_passes(&dhcpv6, PACKET_MULTICAST));
        assert!(filter_passes(&dhcpv6, PACKET_HOST));
        assert!(
            !filter_passes(&dhcpv6, libc::PACKET_OUTGOING as u32),
            "what the runner sends"
        );

        let advertisement = frame::icmpv6(ALL_DHCP, GUEST, 255, 134, &[0; 12]).unwrap();
        let echo = frame::icmpv6(GUEST, ALL_DHCP, 64, 128, &[0; 4]).unwrap();
        let reply = frame::udp(GUEST, SERVER_PORT, ALL_DHCP, CLIENT_PORT, 1, &[7, 0, 0, 1]).unwrap();
        let dns = frame::udp(GUEST, 40000, ALL_DHCP, 53, 64, &[0; 12]).unwrap();
        let mut ipv4 = dhcpv6.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut hop_by_hop = router_solicitation.clone();
        hop_by_hop[20] = 0;
        for other in [advertisement, echo, reply, dns, ipv4, hop_by_hop] {
            assert!(!filter_passes(&other, PACKET_MULTICAST), "{:?}", frame::parse(&other));
        }
        assert!(!filter_passes(&router_solicitation[..54], PACKET_MULTICAST));
    }

    #[test]
    fn replies_go_back_from_the_server_link_local_address() {
        let config = Config::new(
            GUEST.mac,
            "fd00:10:244:1::7/128".parse().unwrap(),
            MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
        );
        let solicit = frame::udp(GUEST, CLIENT_PORT, ALL_DHCP, SERVER_PORT, 1, &[1, 0, 0, 1]).unwrap();
        let request = frame::parse(&solicit).unwrap();
        let reply = reply_frame(&config, &request, &[2, 0, 0, 1]).unwrap();
        let packet = frame::parse(&reply).unwrap();
        assert_eq!(
            packet.src,
            Endpoint {
                mac: config.server_mac,
                ip: "fe80::ff:fe00:fe".parse().unwrap()
            }
        );
        assert_eq!(packet.dst, GUEST);
        assert_eq!(
            packet.payload,
            Payload::Udp {
                src_port: SERVER_PORT,
                dst_port: CLIENT_PORT,
                data: &[2, 0, 0, 1]
            }
        );
    }

    #[test]
    fn unsolicited_advertisements_start_quick_then_settle() {
        let intervals: Vec<Duration> = (1..=5).map(advertisement_interval).collect();
        assert_eq!(
            intervals,
            [INITIAL_INTERVAL, INITIAL_INTERVAL, INTERVAL, INTERVAL, INTERVAL]
        );
        assert_eq!(xid(&[1, 0xab, 0xcd, 0xef, 0]), 0xabcdef);
        assert_eq!(xid(&[1, 0xab]), 0);
    }

    #[tokio::test]
    async fn each_update_is_taken_once_and_a_gone_sender_ends_them() {
        let mut config = Config::new(
            GUEST.mac,
            "fd00:10:244:1::7/64".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 1]),
        );
        let (sender, receiver) = watch::channel(config.clone());
        let mut updates = Some(receiver);
        let pending = |updates: &mut Option<watch::Receiver<Config>>| {
            let mut next = std::pin::pin!(next_update(updates));
            let waker = std::task::Waker::noop();
            next.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        };
        assert!(pending(&mut updates), "the configuration bound with is no update");
        config.router = Some(crate::v6::Router {
            link_local: "fe80::1".parse().unwrap(),
            mac: None,
        });
        sender.send(config.clone()).unwrap();
        assert_eq!(next_update(&mut updates).await, Some(config));
        assert!(pending(&mut updates), "taken once");
        drop(sender);
        assert!(pending(&mut updates));
        assert!(updates.is_none(), "no sender, no more updates");
        assert!(pending(&mut None));
    }
}
