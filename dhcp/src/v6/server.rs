//! The pure DHCPv6 core (RFC 8415): one client message in, at most one reply out, no I/O.
//!
//! The client is recognised by the hardware address its messages come from, whatever DUID it uses: a guest's DUID
//! may be made from another interface's address, or change at every boot of a diskless guest. Its address is
//! fixed by the configuration, so a binding is never lost: after a restart the server answers a RENEW as it would
//! have before.

use std::net::Ipv6Addr;
use std::time::SystemTime;

use dhcproto::v6::{self, DhcpOption, IAAddr, IANA, IAPD, Message, MessageType, OptionCode, Status, StatusCode};
use dhcproto::{Encodable, Encoder};
use serde::{Deserialize, Serialize};

use crate::config::{LeaseTime, MacAddr};
use crate::server::{LeaseState, lease_clock};
use crate::v6::config::{Config, MIN_MTU, wire_names};
use crate::v6::wire::{self, Malformed};

/// The largest reply: what fits in one packet on any IPv6 link, after the IPv6 and UDP headers.
pub const MAX_REPLY_LEN: usize = MIN_MTU as usize - 40 - 8;
/// Tells the client that no better server will answer, so that it requests at once instead of waiting a second
/// for other advertisements (RFC 8415 §18.2.1).
const PREFERENCE: u8 = 255;
const INFINITE: u32 = u32::MAX;

/// A client message, for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Solicit,
    Request,
    Confirm,
    Renew,
    Rebind,
    Release,
    Decline,
    InformationRequest,
}

impl Request {
    fn of(message_type: MessageType) -> Option<Request> {
        Some(match message_type {
            MessageType::Solicit => Request::Solicit,
            MessageType::Request => Request::Request,
            MessageType::Confirm => Request::Confirm,
            MessageType::Renew => Request::Renew,
            MessageType::Rebind => Request::Rebind,
            MessageType::Release => Request::Release,
            MessageType::Decline => Request::Decline,
            MessageType::InformationRequest => Request::InformationRequest,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Advertise,
    Reply,
}

/// What a reply says of the guest's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// The reply gives or confirms the guest's address.
    Granted,
    /// The reply tells the client an address it holds is not its own: NoBinding, NotOnLink, or lifetimes of 0.
    Refused,
    /// The client asked for no address: configuration only, or a release or decline acknowledged.
    #[default]
    NotAsked,
}

/// An encoded reply, to go back to the address and hardware address the message came from, port 546.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub request: Request,
    pub kind: ReplyKind,
    pub verdict: Verdict,
    pub bytes: Vec<u8>,
}

/// Why a well-formed message got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// From a hardware address other than the one client served.
    OtherClient,
    /// A server or relay message, or a type this server does not know.
    NotAClientMessage,
    /// No client identifier where RFC 8415 §16 requires one.
    MissingClientId,
    /// No server identifier where RFC 8415 §16 requires one.
    MissingServerId,
    /// A server identifier in a message meant for any server (SOLICIT, CONFIRM, REBIND).
    UnexpectedServerId,
    /// Meant for another server.
    OtherServerSelected,
    /// An INFORMATION-REQUEST carrying an identity association.
    UnexpectedIa,
    /// A CONFIRM with no address in it, which gets no reply (RFC 8415 §18.3.3).
    NothingToConfirm,
}

/// The result of handling one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    Ignored(Ignored),
    Malformed(Malformed),
}

/// The guest's address as the server last handed it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv6Addr,
    pub state: LeaseState,
    /// When the state was entered, in seconds since the Unix epoch.
    pub since: u64,
    /// When a bound address runs out; `None` for an infinite lifetime or a state without expiry.
    pub expires: Option<u64>,
}

/// What a reply says besides the configuration: the answers for the client's IAs and a message-wide status.
#[derive(Default)]
struct Answer {
    options: Vec<DhcpOption>,
    verdict: Verdict,
    status: Option<Status>,
}

/// A single-client DHCPv6 server's logic.
#[derive(Debug)]
pub struct Server {
    config: Config,
    duid: Vec<u8>,
    lease: Option<Lease>,
}

impl Server {
    /// A server for an already validated configuration (see [`Config::validate`]).
    pub fn new(config: Config) -> Self {
        Server {
            duid: config.server_duid(),
            config,
            lease: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Handles one message received on the server port from the hardware address `client_mac`.
    pub fn handle(&mut self, client_mac: MacAddr, packet: &[u8], now: SystemTime) -> Outcome {
        let Some(&message_type) = packet.first() else {
            return Outcome::Malformed(Malformed::Truncated(0));
        };
        let Some(request) = Request::of(MessageType::from(message_type)) else {
            return Outcome::Ignored(Ignored::NotAClientMessage);
        };
        if client_mac != self.config.client_mac {
            return Outcome::Ignored(Ignored::OtherClient);
        }
        let message = match wire::decode_request(packet) {
            Ok(message) => message,
            Err(malformed) => return Outcome::Malformed(malformed),
        };
        if let Err(ignored) = self.check_identifiers(request, &message) {
            return Outcome::Ignored(ignored);
        }
        match self.answer(request, &message, now) {
            Ok(reply) => Outcome::Reply(reply),
            Err(ignored) => Outcome::Ignored(ignored),
        }
    }

    /// The identifier rules of RFC 8415 §16 for each message type.
    fn check_identifiers(&mut self, request: Request, message: &Message) -> Result<(), Ignored> {
        let has_client_id = message.opts().get(OptionCode::ClientId).is_some();
        let server_id = match message.opts().get(OptionCode::ServerId) {
            Some(DhcpOption::ServerId(id)) => Some(id),
            _ => None,
        };
        let (client_id_required, server_id_rule) = match request {
            Request::Solicit | Request::Confirm | Request::Rebind => (true, Some(false)),
            Request::Request | Request::Renew | Request::Release | Request::Decline => (true, Some(true)),
            Request::InformationRequest => (false, None),
        };
        if client_id_required && !has_client_id {
            return Err(Ignored::MissingClientId);
        }
        match (server_id_rule, server_id) {
            (Some(false), Some(_)) => Err(Ignored::UnexpectedServerId),
            (Some(true), None) => Err(Ignored::MissingServerId),
            (_, Some(id)) if *id != self.duid => {
                // The client took another server's advertisement: ours is void.
                if request == Request::Request && self.lease.is_some_and(|l| l.state == LeaseState::Offered) {
                    self.lease = None;
                }
                Err(Ignored::OtherServerSelected)
            }
            _ if request == Request::InformationRequest && !identity_associations(message).is_empty() => {
                Err(Ignored::UnexpectedIa)
            }
            _ => Ok(()),
        }
    }

    fn answer(&mut self, request: Request, message: &Message, now: SystemTime) -> Result<Reply, Ignored> {
        let ias = identity_associations(message);
        let rapid_commit =
            request == Request::Solicit && !ias.is_empty() && message.opts().get(OptionCode::RapidCommit).is_some();
        let kind = if request == Request::Solicit && !rapid_commit {
            ReplyKind::Advertise
        } else {
            ReplyKind::Reply
        };
        let answer = match request {
            Request::Solicit | Request::Request | Request::Renew | Request::Rebind => {
                let answer = self.assign(request, message, &ias);
                if answer.verdict == Verdict::Granted {
                    let committed = kind == ReplyKind::Reply;
                    self.record(
                        if committed {
                            LeaseState::Bound
                        } else {
                            LeaseState::Offered
                        },
                        now,
                    );
                }
                answer
            }
            Request::Confirm => {
                let answer = self.confirm(&ias)?;
                if answer.verdict == Verdict::Granted {
                    self.record(LeaseState::Bound, now);
                }
                answer
            }
            Request::Release | Request::Decline => {
                let (answer, gave_back) = self.give_back(message, &ias);
                if gave_back {
                    let released = request == Request::Release;
                    self.record(
                        if released {
                            LeaseState::Released
                        } else {
                            LeaseState::Declined
                        },
                        now,
                    );
                }
                answer
            }
            Request::InformationRequest => Answer::default(),
        };

        let mut reply = Message::new_with_id(
            match kind {
                ReplyKind::Advertise => MessageType::Advertise,
                ReplyKind::Reply => MessageType::Reply,
            },
            message.xid(),
        );
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::ServerId(self.duid.clone()));
        if let Some(client_id) = message.opts().get(OptionCode::ClientId) {
            opts.insert(client_id.clone());
        }
        if kind == ReplyKind::Advertise {
            opts.insert(DhcpOption::Preference(PREFERENCE));
        }
        if rapid_commit {
            opts.insert(DhcpOption::RapidCommit);
        }
        if let Some(status) = answer.status {
            opts.insert(status_code(status));
        }
        for option in answer.options {
            opts.insert(option);
        }
        // A client giving its address back is configured no further.
        let mut configuration = if matches!(request, Request::Release | Request::Decline) {
            Vec::new()
        } else {
            self.configuration(message)
        };
        for option in &configuration {
            reply.opts_mut().insert(option.clone());
        }

        let mut bytes = encode(&reply);
        // Least important options go first when the reply would not fit.
        while bytes.len() > MAX_REPLY_LEN {
            let Some(option) = configuration.pop() else { break };
            reply.opts_mut().remove(OptionCode::from(&option));
            bytes = encode(&reply);
        }
        Ok(Reply {
            request,
            kind,
            verdict: answer.verdict,
            bytes,
        })
    }

    /// The answer to each IA of a SOLICIT, REQUEST, RENEW or REBIND. The guest's address goes to the IA_NA that
    /// holds it already, or else to the one with the lowest IAID; the others get none. Addresses the client holds
    /// that are not the guest's are withdrawn (lifetimes 0), except that a RENEW holding only such addresses is
    /// refused with NoBinding, after which the client requests anew (RFC 8415 §18.3.4).
    fn assign(&self, request: Request, message: &Message, ias: &[&IANA]) -> Answer {
        let ours = self.config.address.addr();
        let target = ias
            .iter()
            .position(|ia| addresses(ia).any(|a| a == ours))
            .or((!ias.is_empty()).then_some(0));
        let target_granted = match (request, target) {
            (_, None) => false,
            (Request::Renew, Some(i)) => addresses(ias[i]).any(|a| a == ours) || addresses(ias[i]).next().is_none(),
            _ => true,
        };
        let mut answer = Answer {
            verdict: match (target_granted, ias.is_empty()) {
                (true, _) => Verdict::Granted,
                (false, false) => Verdict::Refused,
                (false, true) => Verdict::NotAsked,
            },
            ..Answer::default()
        };
        for (i, ia) in ias.iter().enumerate() {
            // In a SOLICIT or REQUEST the client's addresses are only hints; later it holds them.
            let stale: Vec<Ipv6Addr> = match request {
                Request::Solicit | Request::Request => Vec::new(),
                _ => addresses(ia).filter(|&a| a != ours).collect(),
            };
            answer.options.push(match request {
                _ if Some(i) == target && target_granted => self.grant(ia, &stale),
                Request::Solicit | Request::Request => ia_status(ia, Status::NoAddrsAvail),
                Request::Renew => ia_status(ia, Status::NoBinding),
                _ if !stale.is_empty() => withdraw(ia, &stale),
                _ => ia_status(ia, Status::NoBinding),
            });
        }
        let no_prefix = match request {
            Request::Solicit | Request::Request => Status::NoPrefixAvail,
            _ => Status::NoBinding,
        };
        answer
            .options
            .extend(delegations(message).map(|pd| pd_status(pd, no_prefix)));
        if target.is_none() && matches!(request, Request::Solicit | Request::Request) {
            answer.status = Some(Status::NoAddrsAvail);
        }
        answer
    }

    /// Whether the addresses of a CONFIRM all belong on the link; only the guest's does (RFC 8415 §18.3.3).
    fn confirm(&self, ias: &[&IANA]) -> Result<Answer, Ignored> {
        let mut held = ias.iter().flat_map(|ia| addresses(ia)).peekable();
        if held.peek().is_none() {
            return Err(Ignored::NothingToConfirm);
        }
        let on_link = held.all(|a| a == self.config.address.addr());
        Ok(Answer {
            verdict: if on_link { Verdict::Granted } else { Verdict::Refused },
            status: Some(if on_link { Status::Success } else { Status::NotOnLink }),
            options: Vec::new(),
        })
    }

    /// The answer to a RELEASE or DECLINE (RFC 8415 §18.3.7-8): success, and NoBinding for each IA that does not
    /// hold the guest's address; and whether one did.
    fn give_back(&self, message: &Message, ias: &[&IANA]) -> (Answer, bool) {
        let ours = self.config.address.addr();
        let (holding, others): (Vec<&IANA>, Vec<&IANA>) = ias.iter().partition(|ia| addresses(ia).any(|a| a == ours));
        let mut options: Vec<DhcpOption> = others.iter().map(|ia| ia_status(ia, Status::NoBinding)).collect();
        options.extend(delegations(message).map(|pd| pd_status(pd, Status::NoBinding)));
        let answer = Answer {
            options,
            verdict: Verdict::NotAsked,
            status: Some(Status::Success),
        };
        (answer, !holding.is_empty())
    }

    /// `ia` answered with the guest's address and, with lifetimes of 0, the `stale` addresses it must drop.
    fn grant(&self, ia: &IANA, stale: &[Ipv6Addr]) -> DhcpOption {
        let preferred = self.config.preferred_lifetime.as_secs();
        let (t1, t2) = renewal_times(self.config.preferred_lifetime);
        let mut opts = v6::DhcpOptions::new();
        opts.insert(DhcpOption::IAAddr(IAAddr {
            addr: self.config.address.addr(),
            preferred_life: preferred,
            valid_life: self.config.valid_lifetime.as_secs(),
            opts: v6::DhcpOptions::new(),
        }));
        for &address in stale {
            opts.insert(lifetimes_zero(address));
        }
        DhcpOption::IANA(IANA {
            id: ia.id,
            t1,
            t2,
            opts,
        })
    }

    /// DNS servers and search domains, those the client asked for in its option request, or all of them if it sent
    /// none; DNS servers first, being the more important.
    fn configuration(&self, message: &Message) -> Vec<DhcpOption> {
        let requested = match message.opts().get(OptionCode::ORO) {
            Some(DhcpOption::ORO(oro)) => Some(oro.opts.iter().map(|&code| u16::from(code)).collect::<Vec<_>>()),
            _ => None,
        };
        let wanted = |code: u16| requested.as_ref().is_none_or(|codes| codes.contains(&code));
        let mut options = Vec::new();
        if !self.config.dns.is_empty() && wanted(wire::DNS_SERVERS) {
            options.push(DhcpOption::DomainNameServers(self.config.dns.clone()));
        }
        if !self.config.search.is_empty() && wanted(wire::DOMAIN_LIST) {
            // Encoded here: dhcproto compresses the names, which DHCPv6 forbids (RFC 8415 §10).
            let names = wire_names(&self.config.search);
            options.push(DhcpOption::Unknown(v6::UnknownOption::new(
                OptionCode::DomainSearchList,
                names,
            )));
        }
        options
    }

    fn record(&mut self, state: LeaseState, now: SystemTime) {
        let (since, expires) = lease_clock(state, self.config.valid_lifetime, now);
        self.lease = Some(Lease {
            address: self.config.address.addr(),
            state,
            since,
            expires,
        });
    }
}

/// The message's IA_NAs by IAID: `dhcproto` keeps options of one code in no particular order.
fn identity_associations(message: &Message) -> Vec<&IANA> {
    let all = message.opts().get_all(OptionCode::IANA).unwrap_or_default();
    let mut ias: Vec<&IANA> = all
        .iter()
        .filter_map(|option| match option {
            DhcpOption::IANA(ia) => Some(ia),
            _ => None,
        })
        .collect();
    ias.sort_by_key(|ia| ia.id);
    ias
}

fn delegations(message: &Message) -> impl Iterator<Item = &IAPD> {
    let all = message.opts().get_all(OptionCode::IAPD).unwrap_or_default();
    all.iter().filter_map(|option| match option {
        DhcpOption::IAPD(pd) => Some(pd),
        _ => None,
    })
}

fn addresses(ia: &IANA) -> impl Iterator<Item = Ipv6Addr> + '_ {
    ia.opts.iter().filter_map(|option| match option {
        DhcpOption::IAAddr(address) => Some(address.addr),
        _ => None,
    })
}

/// T1 and T2 at half and four fifths of the preferred lifetime (RFC 8415 §21.4); never for an infinite one.
fn renewal_times(preferred: LeaseTime) -> (u32, u32) {
    match preferred.as_secs() {
        INFINITE => (INFINITE, INFINITE),
        secs => (secs / 2, (u64::from(secs) * 4 / 5) as u32),
    }
}

fn lifetimes_zero(address: Ipv6Addr) -> DhcpOption {
    DhcpOption::IAAddr(IAAddr {
        addr: address,
        preferred_life: 0,
        valid_life: 0,
        opts: v6::DhcpOptions::new(),
    })
}

fn withdraw(ia: &IANA, stale: &[Ipv6Addr]) -> DhcpOption {
    let opts = stale.iter().map(|&address| lifetimes_zero(address)).collect();
    DhcpOption::IANA(IANA {
        id: ia.id,
        t1: 0,
        t2: 0,
        opts,
    })
}

fn ia_status(ia: &IANA, status: Status) -> DhcpOption {
    DhcpOption::IANA(IANA {
        id: ia.id,
        t1: 0,
        t2: 0,
        opts: [status_code(status)].into_iter().collect(),
    })
}

fn pd_status(pd: &IAPD, status: Status) -> DhcpOption {
    DhcpOption::IAPD(IAPD {
        id: pd.id,
        t1: 0,
        t2: 0,
        opts: [status_code(status)].into_iter().collect(),
    })
}

fn status_code(status: Status) -> DhcpOption {
    let msg = match status {
        Status::Success => "ok",
        Status::NoAddrsAvail => "only one address, for another identity association",
        Status::NoBinding => "not this client's address",
        Status::NotOnLink => "not this link's address",
        Status::NoPrefixAvail => "no prefixes delegated",
        _ => "",
    };
    DhcpOption::StatusCode(StatusCode {
        status,
        msg: msg.to_owned(),
    })
}

fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAX_REPLY_LEN);
    // Encoding into a Vec cannot fail, and every length fits its field: the request's options were bounded by
    // the sanitizer, the configuration's by validation.
    let _ = message.encode(&mut Encoder::new(&mut bytes));
    bytes
}
