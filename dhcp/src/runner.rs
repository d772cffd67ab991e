//! Puts a [`Server`] on an interface.
//!
//! Requests arrive on an ordinary UDP socket on port 67, bound to the interface. Replies to the client go out on an
//! `AF_PACKET` socket as IPv4 datagrams built by [`crate::frame`], addressed to the client's hardware address or to
//! broadcast: a client without an address cannot answer ARP, and the interface usually has no route to it anyway.
//! Replies through a relay agent take the ordinary UDP path.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::Counters;
use crate::config::{ConfigError, MacAddr, ServerConfig};
use crate::frame;
use crate::server::{ClientNotice, Destination, Lease, LeaseState, Outcome, Reply, Server};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const TTL: u8 = 64;
/// Room for the largest UDP datagram, so that no request is cut short.
const RECEIVE_BUFFER: usize = 65536;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid DHCP configuration")]
    Config(#[source] ConfigError),
    #[error("interface {0:?} not found")]
    InterfaceNotFound(String),
    #[error("cannot bind the DHCP server port on interface {interface:?}")]
    Bind {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a packet socket")]
    PacketSocket(#[source] io::Error),
    #[error("cannot read the lease state file {path}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the server has done so far, for whoever reports on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub counters: Counters,
    /// Replies the server made but could not send.
    pub send_errors: u64,
    pub lease: Option<Lease>,
}

/// A [`Server`] with its sockets, ready to run.
pub struct Runner {
    server: Server,
    udp: UdpSocket,
    /// Send-only: opened with protocol 0, so the kernel queues no incoming frames on it.
    packet: Socket,
    ifindex: i32,
    state_file: Option<PathBuf>,
    /// What the state file holds, so that it is rewritten only when that changes.
    saved: Option<Lease>,
    status: watch::Sender<Status>,
}

impl Runner {
    /// Validates `config`, carries on from the lease in `state_file` if that file exists, and binds the sockets on
    /// `interface`. Must be called within a Tokio runtime, whose reactor the UDP socket joins.
    pub fn bind(config: ServerConfig, interface: &str, state_file: Option<PathBuf>) -> Result<Runner, Error> {
        config.validate().map_err(Error::Config)?;
        let not_found = || Error::InterfaceNotFound(interface.to_owned());
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|_| not_found())?;
        let ifindex = i32::try_from(ifindex).map_err(|_| not_found())?;

        let lease = match &state_file {
            Some(path) => load_lease(path).map_err(|source| Error::StateFile {
                path: path.clone(),
                source,
            })?,
            None => None,
        };
        let server = Server::new(config).with_lease(lease);
        if let Some(lease) = server.lease() {
            info!(address = %lease.address, state = ?lease.state, "lease restored");
        }

        let udp = bind_udp(interface).map_err(|source| Error::Bind {
            interface: interface.to_owned(),
            source,
        })?;
        let packet = Socket::new(Domain::PACKET, Type::DGRAM, None)
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .map_err(Error::PacketSocket)?;
        let status = watch::Sender::new(Status {
            lease: server.lease().copied(),
            ..Status::default()
        });
        Ok(Runner {
            server,
            udp,
            packet,
            ifindex,
            state_file,
            saved: lease,
            status,
        })
    }

    pub fn config(&self) -> &ServerConfig {
        self.server.config()
    }

    /// The counters and lease, updated after every packet.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Serves until `shutdown` completes, and returns the final status.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Status {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut buffer = vec![0; RECEIVE_BUFFER];
        loop {
            let received = tokio::select! {
                () = &mut shutdown => break,
                received = self.udp.recv_from(&mut buffer) => received,
            };
            match received {
                Ok((len, peer)) => self.handle(&buffer[..len], peer).await,
                Err(err) => warn!(error = %err, "receive failed"),
            }
        }
        *self.status.borrow()
    }

    async fn handle(&mut self, packet: &[u8], peer: SocketAddr) {
        let before = self.server.lease().copied();
        let outcome = self.server.handle(packet, SystemTime::now());
        let xid = format!("{:#010x}", xid(packet));
        let mut send_failed = false;
        match &outcome {
            Outcome::Reply(reply) => {
                let destination = describe(reply.destination);
                match self.send(reply).await {
                    Ok(()) => info!(%xid, request = ?reply.request, reply = ?reply.kind, %destination, "answered"),
                    Err(err) => {
                        send_failed = true;
                        warn!(
                            %xid, request = ?reply.request, reply = ?reply.kind, %destination, error = %err,
                            "reply not sent"
                        );
                    }
                }
            }
            Outcome::Recorded(ClientNotice::Released) => info!(%xid, "client released its address"),
            Outcome::Recorded(ClientNotice::Declined) => info!(%xid, "client declined its address as in use"),
            Outcome::Ignored(reason) => {
                let client = chaddr(packet).map(|mac| mac.to_string()).unwrap_or_default();
                debug!(%xid, %client, %peer, reason = ?reason, "ignored");
            }
            Outcome::Malformed(reason) => warn!(%peer, len = packet.len(), %reason, "malformed packet dropped"),
        }

        let lease = self.server.lease().copied();
        if lease != before {
            self.save(lease);
        }
        self.status.send_modify(|status| {
            status.counters.count(&outcome);
            status.send_errors += u64::from(send_failed);
            status.lease = lease;
        });
    }

    async fn send(&self, reply: &Reply) -> io::Result<()> {
        let (ip, mac) = match reply.destination {
            Destination::Relay(giaddr) => {
                return self.udp.send_to(&reply.bytes, (giaddr, SERVER_PORT)).await.map(drop);
            }
            Destination::Unicast { ip, mac } => (ip, mac),
            Destination::Broadcast => (Ipv4Addr::BROADCAST, MacAddr::BROADCAST),
        };
        let source = SocketAddrV4::new(self.server.config().server_id, SERVER_PORT);
        let datagram = frame::ipv4_udp(source, SocketAddrV4::new(ip, CLIENT_PORT), &reply.bytes, TTL)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        // Non-blocking: a full send buffer loses this reply like the network might, and the client retransmits.
        self.packet
            .send_to(&datagram, &link_address(self.ifindex, mac))
            .map(drop)
    }

    /// Records the lease for a restarted server. An offer is not worth an fsync (the client asks again anyway), and
    /// neither is a lease that differs only in when it was last confirmed: the write would stall the next packet.
    fn save(&mut self, lease: Option<Lease>) {
        let Some(path) = &self.state_file else { return };
        if !worth_saving(lease, self.saved) {
            return;
        }
        match write_atomically(path, lease) {
            Ok(()) => self.saved = lease,
            Err(err) => error!(path = %path.display(), error = %err, "cannot write the lease state file"),
        }
    }
}

fn bind_udp(interface: &str) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Bound to the device before the port, so that servers on other interfaces can share port 67. No SO_REUSEADDR:
    // a second server on this interface fails here instead of answering alongside the first.
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT).into())?;
    UdpSocket::from_std(socket.into())
}

/// The `sockaddr_ll` that sends an IPv4 datagram to `mac` on the interface `ifindex`.
fn link_address(ifindex: i32, mac: MacAddr) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is one of this platform's socket address types, which is all `view_as` requires.
    let address = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    address.sll_family = libc::AF_PACKET as libc::sa_family_t;
    address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    address.sll_ifindex = ifindex;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&mac.0);
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds a `sockaddr_ll` with every field set (the rest zeroed) and `len` is its size.
    unsafe { SockAddr::new(storage, len) }
}

fn worth_saving(lease: Option<Lease>, saved: Option<Lease>) -> bool {
    let durable = |l: Option<Lease>| l.map(|l| (l.address, l.state, l.expires));
    !lease.is_some_and(|l| l.state == LeaseState::Offered) && durable(lease) != durable(saved)
}

/// The lease recorded in `path`; none if the file does not exist yet.
fn load_lease(path: &Path) -> io::Result<Option<Lease>> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Replaces `path` with the lease as JSON, so that a crash leaves either the old file or the new one.
fn write_atomically(path: &Path, lease: Option<Lease>) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let mut file = File::create(&temporary)?;
    serde_json::to_writer(&mut file, &lease)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

/// The transaction ID, or 0 for a packet too short to carry one.
fn xid(packet: &[u8]) -> u32 {
    packet
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn chaddr(packet: &[u8]) -> Option<MacAddr> {
    packet.get(28..34)?.try_into().ok().map(MacAddr)
}

fn describe(destination: Destination) -> String {
    match destination {
        Destination::Relay(ip) => format!("relay {ip}"),
        Destination::Unicast { ip, mac } => format!("{ip} at {mac}"),
        Destination::Broadcast => "broadcast".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::LeaseState;

    #[test]
    fn lease_state_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("vmlet-dhcp-runner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lease.json");
        assert_eq!(load_lease(&path).unwrap(), None);

        let lease = Lease {
            address: Ipv4Addr::new(10, 244, 1, 7),
            state: LeaseState::Bound,
            since: 1_700_000_000,
            expires: Some(1_700_003_600),
        };
        write_atomically(&path, Some(lease)).unwrap();
        assert_eq!(load_lease(&path).unwrap(), Some(lease));
        write_atomically(&path, None).unwrap();
        assert_eq!(load_lease(&path).unwrap(), None);
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["lease.json"], "no temporary file is left behind");

        fs::write(&path, "not json").unwrap();
        assert!(load_lease(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn header_fields_are_read_without_trusting_the_length() {
        let mut packet = vec![0u8; 240];
        packet[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        packet[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        assert_eq!(xid(&packet), 0xdeadbeef);
        assert_eq!(chaddr(&packet), Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(xid(&packet[..7]), 0);
        assert_eq!(chaddr(&packet[..33]), None);
    }

    #[test]
    fn only_durable_changes_are_saved() {
        let bound = Lease {
            address: Ipv4Addr::new(10, 244, 1, 7),
            state: LeaseState::Bound,
            since: 100,
            expires: None,
        };
        let offered = Lease {
            state: LeaseState::Offered,
            ..bound
        };
        let reconfirmed = Lease { since: 200, ..bound };
        let released = Lease {
            state: LeaseState::Released,
            ..bound
        };
        assert!(worth_saving(Some(bound), None));
        assert!(!worth_saving(Some(offered), None), "an offer is transient");
        assert!(!worth_saving(Some(offered), Some(bound)));
        assert!(!worth_saving(Some(reconfirmed), Some(bound)), "only the time changed");
        assert!(worth_saving(Some(released), Some(bound)));
        let renewed = Lease {
            since: 200,
            expires: Some(3800),
            ..bound
        };
        assert!(worth_saving(
            Some(renewed),
            Some(Lease {
                expires: Some(3700),
                ..bound
            })
        ));
    }
}
