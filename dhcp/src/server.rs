//! The pure core: one request in, at most one reply out, no I/O.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Encodable, Encoder, Name};
use serde::{Deserialize, Serialize};

use crate::config::{LeaseTime, MacAddr, ServerConfig};
use crate::wire::{self, Malformed};

/// The smallest message every client must accept (RFC 2131 §2: a 576-byte datagram less IP and UDP headers).
const MIN_MESSAGE: usize = 576 - 28;

/// Where a reply goes, as RFC 2131 §4.1 decides from the request's `giaddr`, `ciaddr` and broadcast flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Through the relay agent at this address, to the server port 67.
    Relay(Ipv4Addr),
    /// To this address at the client's hardware address, port 68, with no ARP (the client may not answer yet).
    Unicast { ip: Ipv4Addr, mac: MacAddr },
    /// To 255.255.255.255 and ff:ff:ff:ff:ff:ff, port 68.
    Broadcast,
}

/// The state a REQUEST shows its client to be in (RFC 2131 §4.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    Selecting,
    InitReboot,
    /// Renewing and rebinding look alike but for the IP destination, and are answered alike.
    RenewingOrRebinding,
}

/// What a request was, for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Discover,
    Request(RequestState),
    Inform,
}

/// The kind of reply sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// An encoded reply and where to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub request: Request,
    pub kind: ReplyKind,
    pub destination: Destination,
    pub bytes: Vec<u8>,
}

/// Why a well-formed packet got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// From a hardware address other than the one client served.
    OtherClient,
    /// Not a BOOTREQUEST, or not from an Ethernet client.
    NotARequest,
    /// The client chose another server's offer.
    OtherServerSelected,
    /// A REQUEST with neither a requested address nor `ciaddr`.
    IncompleteRequest,
    /// A message type a server does not answer (OFFER, ACK, LEASEQUERY, ...).
    UnexpectedMessageType,
}

/// What the client told the server without wanting an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientNotice {
    /// The client gave its address back.
    Released,
    /// The client found its address in use by another host.
    Declined,
}

/// The result of handling one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    Recorded(ClientNotice),
    Ignored(Ignored),
    Malformed(Malformed),
}

/// The client's lease as the server last recorded it; kept across restarts by whoever runs the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub state: LeaseState,
    /// When the state was entered, in seconds since the Unix epoch.
    pub since: u64,
    /// When a bound lease runs out; `None` for an infinite lease or a state without expiry.
    pub expires: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    Offered,
    Bound,
    Released,
    Declined,
}

/// A single-client DHCPv4 server's logic.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    lease: Option<Lease>,
}

impl Server {
    /// A server for an already validated configuration (see [`ServerConfig::validate`]).
    pub fn new(config: ServerConfig) -> Self {
        Server { config, lease: None }
    }

    /// Carries on from a lease recorded by an earlier run; a lease for another address is forgotten.
    pub fn with_lease(mut self, lease: Option<Lease>) -> Self {
        self.lease = lease.filter(|l| l.address == self.config.address.addr());
        self
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Handles one packet received on the server port.
    pub fn handle(&mut self, packet: &[u8], now: SystemTime) -> Outcome {
        let (request, message_type) = match wire::decode_request(packet) {
            Ok(decoded) => decoded,
            Err(malformed) => return Outcome::Malformed(malformed),
        };
        if request.opcode() != Opcode::BootRequest || request.htype() != v4::HType::Eth || request.hlen() != 6 {
            return Outcome::Ignored(Ignored::NotARequest);
        }
        if request.chaddr() != self.config.client_mac.0 {
            return Outcome::Ignored(Ignored::OtherClient);
        }
        let requested_ip = match request.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match request.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let ours = self.config.address.addr();

        match message_type {
            MessageType::Discover => {
                self.record(LeaseState::Offered, now);
                Outcome::Reply(self.reply(&request, Request::Discover, ReplyKind::Offer))
            }
            MessageType::Request => {
                let ciaddr = Some(request.ciaddr()).filter(|ip| !ip.is_unspecified());
                let (state, claimed) = match (server_id, requested_ip, ciaddr) {
                    (Some(id), _, _) if id != self.config.server_id => {
                        if self.lease.is_some_and(|l| l.state == LeaseState::Offered) {
                            self.lease = None;
                        }
                        return Outcome::Ignored(Ignored::OtherServerSelected);
                    }
                    (Some(_), Some(ip), _) => (RequestState::Selecting, ip),
                    (None, Some(ip), None) => (RequestState::InitReboot, ip),
                    (_, _, Some(ip)) => (RequestState::RenewingOrRebinding, ip),
                    _ => return Outcome::Ignored(Ignored::IncompleteRequest),
                };
                let kind = if claimed == ours {
                    self.record(LeaseState::Bound, now);
                    ReplyKind::Ack
                } else {
                    ReplyKind::Nak
                };
                Outcome::Reply(self.reply(&request, Request::Request(state), kind))
            }
            MessageType::Inform => Outcome::Reply(self.reply(&request, Request::Inform, ReplyKind::Ack)),
            MessageType::Release | MessageType::Decline => {
                if server_id.is_some_and(|id| id != self.config.server_id) {
                    return Outcome::Ignored(Ignored::OtherServerSelected);
                }
                let (state, notice) = if message_type == MessageType::Release {
                    (LeaseState::Released, ClientNotice::Released)
                } else {
                    (LeaseState::Declined, ClientNotice::Declined)
                };
                self.record(state, now);
                Outcome::Recorded(notice)
            }
            _ => Outcome::Ignored(Ignored::UnexpectedMessageType),
        }
    }

    fn record(&mut self, state: LeaseState, now: SystemTime) {
        let (since, expires) = lease_clock(state, self.config.lease_time, now);
        self.lease = Some(Lease {
            address: self.config.address.addr(),
            state,
            since,
            expires,
        });
    }

    fn reply(&self, request: &Message, kind_of_request: Request, kind: ReplyKind) -> Reply {
        let config = &self.config;
        let inform = kind_of_request == Request::Inform;
        let mut reply = Message::new_with_id(
            request.xid(),
            if kind == ReplyKind::Nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                request.ciaddr()
            },
            if kind == ReplyKind::Nak || inform {
                Ipv4Addr::UNSPECIFIED
            } else {
                config.address.addr()
            },
            Ipv4Addr::UNSPECIFIED,
            request.giaddr(),
            request.chaddr(),
        );
        reply.set_opcode(Opcode::BootReply).set_flags(request.flags());

        let message_type = match kind {
            ReplyKind::Offer => MessageType::Offer,
            ReplyKind::Ack => MessageType::Ack,
            ReplyKind::Nak => MessageType::Nak,
        };
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(message_type));
        opts.insert(DhcpOption::ServerIdentifier(config.server_id));

        let mut optional = Vec::new();
        if kind != ReplyKind::Nak {
            if !inform {
                let secs = config.lease_time.as_secs();
                opts.insert(DhcpOption::AddressLeaseTime(secs));
                if secs != u32::MAX {
                    opts.insert(DhcpOption::Renewal(secs / 2));
                    opts.insert(DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32));
                }
            }
            let requested = requested_options(request);
            optional = self.optional_options(requested.as_deref());
            for option in &optional {
                reply.opts_mut().insert(option.clone());
            }
        }
        if kind == ReplyKind::Nak && !request.giaddr().is_unspecified() {
            reply.set_flags(request.flags().set_broadcast());
        }

        let limit = max_message_size(request);
        let mut bytes = encode(&reply);
        // Least important options go first when the client cannot take them all.
        while bytes.len() > limit {
            let Some(option) = optional.pop() else { break };
            reply.opts_mut().remove(OptionCode::from(&option));
            bytes = encode(&reply);
        }
        let destination = destination(request, kind, config.address.addr(), inform);
        Reply {
            request: kind_of_request,
            kind,
            destination,
            bytes,
        }
    }

    /// The configured options, most important first, restricted to what the client asked for when it sent a
    /// parameter request list. The subnet mask is always sent (a client without it guesses from the address class)
    /// and so are the operator's own options.
    fn optional_options(&self, requested: Option<&[u8]>) -> Vec<DhcpOption> {
        let config = &self.config;
        let wanted = |code: u8| code == 1 || requested.is_none_or(|codes| codes.contains(&code));
        let mut options = Vec::new();
        if wanted(1) {
            options.push(DhcpOption::SubnetMask(config.address.netmask()));
        }
        if let Some(gateway) = config.gateway.filter(|_| wanted(3)) {
            options.push(DhcpOption::Router(vec![gateway]));
        }
        let routes = config.classless_routes();
        // A lone default route is what option 3 already says; 121 is for anything more.
        if wanted(121) && routes.iter().any(|r| r.destination.prefix_len() != 0) {
            let routes = routes.iter().map(|r| (r.destination, r.gateway)).collect();
            options.push(DhcpOption::ClasslessStaticRoute(routes));
        }
        if !config.dns.is_empty() && wanted(6) {
            options.push(DhcpOption::DomainNameServer(config.dns.clone()));
        }
        if let Some(mtu) = config.mtu.filter(|_| wanted(26)) {
            options.push(DhcpOption::InterfaceMtu(mtu));
        }
        if let Some(domain) = config.effective_domain_name().filter(|_| wanted(15)) {
            options.push(DhcpOption::DomainName(domain.to_owned()));
        }
        if let Some(hostname) = config.hostname.as_ref().filter(|_| wanted(12)) {
            options.push(DhcpOption::Hostname(hostname.clone()));
        }
        if !config.search.is_empty() && wanted(119) {
            let names = config.search.iter().filter_map(|d| d.parse::<Name>().ok()).collect();
            options.push(DhcpOption::DomainSearch(names));
        }
        if !config.ntp.is_empty() && wanted(42) {
            options.push(DhcpOption::NtpServers(config.ntp.clone()));
        }
        for user in &config.user_options {
            options.push(DhcpOption::Unknown(v4::UnknownOption::new(
                user.code.into(),
                user.data.clone(),
            )));
        }
        options
    }
}

/// When a lease entered `state` and, for a bound finite lease, when it runs out, in seconds since the Unix epoch.
pub(crate) fn lease_clock(state: LeaseState, lifetime: LeaseTime, now: SystemTime) -> (u64, Option<u64>) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let expires = match (state, lifetime) {
        (LeaseState::Bound, LeaseTime::Finite(d)) => Some(since.saturating_add(d.as_secs())),
        _ => None,
    };
    (since, expires)
}

/// The codes in the client's parameter request list, if it sent one.
fn requested_options(request: &Message) -> Option<Vec<u8>> {
    match request.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(codes)) => Some(codes.iter().map(|&c| u8::from(c)).collect()),
        _ => None,
    }
}

/// The largest DHCP message the client accepts: its option 57 (counted, as RFC 2132 §9.10 reads, over the whole
/// IP datagram) less the IP and UDP headers, and never below what every client must accept.
fn max_message_size(request: &Message) -> usize {
    match request.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(size)) => usize::from(*size).saturating_sub(28).max(MIN_MESSAGE),
        _ => MIN_MESSAGE,
    }
}

fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MIN_MESSAGE);
    // Encoding into a Vec cannot fail: the only error is running out of room in a fixed buffer, and a validated
    // configuration gives no option that outgrows its length byte.
    let _ = message.encode(&mut Encoder::new(&mut bytes));
    bytes
}

fn destination(request: &Message, kind: ReplyKind, address: Ipv4Addr, inform: bool) -> Destination {
    let mac = MacAddr(request.chaddr().try_into().unwrap_or([0; 6]));
    if !request.giaddr().is_unspecified() {
        return Destination::Relay(request.giaddr());
    }
    if kind == ReplyKind::Nak {
        return Destination::Broadcast;
    }
    if !request.ciaddr().is_unspecified() {
        return Destination::Unicast {
            ip: request.ciaddr(),
            mac,
        };
    }
    if request.flags().broadcast() || inform {
        return Destination::Broadcast;
    }
    Destination::Unicast { ip: address, mac }
}
