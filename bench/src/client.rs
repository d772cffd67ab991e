//! A DHCP client that does nothing but full exchanges (DISCOVER→OFFER, REQUEST→ACK) and times them.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

/// The options the client asks for: those a guest needs.
const REQUESTED: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::DomainSearch,
    OptionCode::ClasslessStaticRoute,
];

/// How long one exchange may take before it counts as lost.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

/// A client socket on one interface of a network namespace.
pub struct Client {
    socket: UdpSocket,
    mac: [u8; 6],
    buffer: Vec<u8>,
}

/// One completed exchange.
pub struct Exchange {
    /// From sending DISCOVER to receiving ACK.
    pub elapsed: Duration,
    pub address: Ipv4Addr,
    pub ack_len: usize,
}

impl Client {
    /// Opens the client socket inside the namespace `netns` (a path such as `/run/netns/NAME`). Switches the
    /// calling thread's network namespace for good: call it on a thread of its own.
    pub fn open_in(netns: &str, interface: &str, mac: [u8; 6]) -> anyhow::Result<Client> {
        let ns = File::open(netns).with_context(|| format!("cannot open {netns}"))?;
        setns(ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {netns}"))?;
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("cannot open a socket")?;
        // Bound to the device: the interface has no address, and replies are broadcast to port 68.
        socket
            .bind_device(Some(interface.as_bytes()))
            .context("cannot bind to the client interface")?;
        socket.set_broadcast(true).context("cannot allow broadcast")?;
        socket
            .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
            .context("cannot bind the DHCP client port")?;
        Ok(Client {
            socket: socket.into(),
            mac,
            buffer: vec![0; 1500],
        })
    }

    /// Does one DISCOVER→OFFER→REQUEST→ACK exchange with the broadcast flag set; `None` if a reply did not come in
    /// time.
    pub fn exchange(&mut self, xid: u32) -> anyhow::Result<Option<Exchange>> {
        // DISCOVER is built before the clock starts; REQUEST depends on the OFFER and is built inside it, as in
        // any client.
        let discover = self.message(xid, MessageType::Discover).to_vec()?;
        let started = Instant::now();
        let deadline = started + EXCHANGE_TIMEOUT;
        self.send(&discover)?;
        let Some(offer) = self.receive(xid, MessageType::Offer, deadline)? else {
            return Ok(None);
        };
        let Some(DhcpOption::ServerIdentifier(server_id)) = offer.opts().get(OptionCode::ServerIdentifier) else {
            bail!("OFFER without a server identifier");
        };
        let mut request = self.message(xid, MessageType::Request);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        request.opts_mut().insert(DhcpOption::ServerIdentifier(*server_id));
        self.send(&request.to_vec()?)?;
        let Some(ack) = self.receive(xid, MessageType::Ack, deadline)? else {
            return Ok(None);
        };
        let elapsed = started.elapsed();
        let ack_len = ack.to_vec()?.len();
        Ok(Some(Exchange {
            elapsed,
            address: ack.yiaddr(),
            ack_len,
        }))
    }

    fn message(&self, xid: u32, kind: MessageType) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut message = Message::new_with_id(xid, unspecified, unspecified, unspecified, unspecified, &self.mac);
        message.set_flags(Flags::default().set_broadcast());
        message.opts_mut().insert(DhcpOption::MessageType(kind));
        message
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
        message
    }

    fn send(&self, bytes: &[u8]) -> anyhow::Result<()> {
        self.socket
            .send_to(bytes, (Ipv4Addr::BROADCAST, 67))
            .context("cannot send")?;
        Ok(())
    }

    /// The next reply of `kind` to transaction `xid`, skipping anything else; `None` after `deadline`.
    fn receive(&mut self, xid: u32, kind: MessageType, deadline: Instant) -> anyhow::Result<Option<Message>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            let len = match self.socket.recv(&mut self.buffer) {
                Ok(len) => len,
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(err) => return Err(err).context("cannot receive"),
            };
            // Anything else on port 68 (a late reply to an earlier exchange) is not this exchange's business.
            let Ok(message) = Message::decode(&mut Decoder::new(&self.buffer[..len])) else {
                continue;
            };
            if message.opcode() == Opcode::BootReply && message.xid() == xid {
                match message.opts().msg_type() {
                    Some(found) if found == kind => return Ok(Some(message)),
                    Some(MessageType::Nak) => bail!("the server answered {kind:?} with NAK"),
                    _ => {}
                }
            }
        }
    }
}
