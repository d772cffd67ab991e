//! The pure DHCPv6 core, message by message and option by option.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv6Addr;
use std::time::{Duration, SystemTime};

use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, IANA, IAPD, Message, MessageType, ORO, OptionCode, Status, StatusCode,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use vmlet_dhcp::v6::server::MAX_REPLY_LEN;
use vmlet_dhcp::v6::{Config, Counters, Ignored, Malformed, Outcome, Reply, ReplyKind, Request, Server, Verdict};
use vmlet_dhcp::{LeaseState, LeaseTime, MacAddr};

const CLIENT: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]);
const SERVER_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0xfe]);
const POD_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 7);
const STALE_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 9, 0, 0, 0, 9);
const IAID: u32 = 0x0af4_0107;
/// The server's DUID-LL, from `SERVER_MAC`.
const SERVER_DUID: [u8; 10] = [0, 3, 0, 1, 0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// The guest's DUID-LL, as the test guest makes it from its MAC.
const CLIENT_DUID: [u8; 10] = [0, 3, 0, 1, 0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07];

fn config() -> Config {
    let mut c = Config::new(CLIENT, "fd00:10:244:1::7/128".parse().unwrap(), SERVER_MAC);
    c.dns = vec!["fd00:10:96::a".parse().unwrap()];
    c.search = vec![
        "default.svc.cluster.local".into(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    c.validate().unwrap();
    c
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A client message, as a real client would build it.
struct Msg(Message);

impl Msg {
    /// A message with the guest's DUID, which every message type but INFORMATION-REQUEST must carry.
    fn new(kind: MessageType) -> Self {
        Msg::bare(kind).opt(DhcpOption::ClientId(CLIENT_DUID.to_vec()))
    }

    fn bare(kind: MessageType) -> Self {
        Msg(Message::new_with_id(kind, [0x12, 0x34, 0x56]))
    }

    fn opt(mut self, option: DhcpOption) -> Self {
        self.0.opts_mut().insert(option);
        self
    }

    fn for_server(self) -> Self {
        self.opt(DhcpOption::ServerId(SERVER_DUID.to_vec()))
    }

    /// An IA_NA holding `addresses`.
    fn ia(self, iaid: u32, addresses: &[Ipv6Addr]) -> Self {
        let opts = addresses
            .iter()
            .map(|&addr| {
                DhcpOption::IAAddr(IAAddr {
                    addr,
                    preferred_life: 0,
                    valid_life: 0,
                    opts: DhcpOptions::new(),
                })
            })
            .collect();
        self.opt(DhcpOption::IANA(IANA {
            id: iaid,
            t1: 0,
            t2: 0,
            opts,
        }))
    }

    fn oro(self, codes: &[u16]) -> Self {
        let opts = codes.iter().map(|&c| OptionCode::from(c)).collect();
        self.opt(DhcpOption::ORO(ORO { opts }))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.0.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }
}

fn solicit() -> Msg {
    Msg::new(MessageType::Solicit).ia(IAID, &[]).oro(&[23, 24])
}

fn request() -> Msg {
    Msg::new(MessageType::Request).for_server().ia(IAID, &[POD_IP])
}

fn handle(server: &mut Server, msg: Msg) -> Outcome {
    server.handle(CLIENT, &msg.bytes(), now())
}

fn exchange(server: &mut Server, msg: Msg) -> (Reply, Message) {
    match handle(server, msg) {
        Outcome::Reply(reply) => {
            let message = Message::decode(&mut Decoder::new(&reply.bytes)).unwrap();
            (reply, message)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn codes(m: &Message) -> Vec<u16> {
    m.opts().iter().map(|o| u16::from(OptionCode::from(o))).collect()
}

/// The IA_NAs of a reply by IAID: the order of options of one code means nothing (and `dhcproto` keeps none).
fn ias(m: &Message) -> Vec<IANA> {
    let all = m.opts().get_all(OptionCode::IANA).unwrap_or_default();
    let mut ias: Vec<IANA> = all
        .iter()
        .map(|o| match o {
            DhcpOption::IANA(ia) => ia.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    ias.sort_by_key(|ia| ia.id);
    ias
}

/// The (address, preferred, valid) triples in an IA, by address.
fn addresses(ia: &IANA) -> Vec<(Ipv6Addr, u32, u32)> {
    let mut addresses: Vec<_> = ia
        .opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
            _ => None,
        })
        .collect();
    addresses.sort();
    addresses
}

fn status_of(opts: &DhcpOptions) -> Option<Status> {
    match opts.get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(StatusCode { status, .. })) => Some(*status),
        _ => None,
    }
}

#[test]
fn solicit_gets_an_advertisement_of_the_pod_address() {
    let mut server = Server::new(config());
    let (reply, m) = exchange(&mut server, solicit());
    assert_eq!(
        (reply.request, reply.kind, reply.verdict),
        (Request::Solicit, ReplyKind::Advertise, Verdict::Granted)
    );
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert_eq!(m.xid(), [0x12, 0x34, 0x56]);
    assert_eq!(
        m.opts().get(OptionCode::ServerId),
        Some(&DhcpOption::ServerId(SERVER_DUID.to_vec()))
    );
    assert_eq!(
        m.opts().get(OptionCode::ClientId),
        Some(&DhcpOption::ClientId(CLIENT_DUID.to_vec()))
    );
    assert_eq!(m.opts().get(OptionCode::Preference), Some(&DhcpOption::Preference(255)));
    assert_eq!(status_of(m.opts()), None, "success goes without saying");
    let ias = ias(&m);
    assert_eq!(ias.len(), 1);
    assert_eq!((ias[0].id, ias[0].t1, ias[0].t2), (IAID, u32::MAX, u32::MAX));
    assert_eq!(addresses(&ias[0]), [(POD_IP, u32::MAX, u32::MAX)]);
    assert_eq!(server.lease().unwrap().state, LeaseState::Offered);
    assert_eq!(server.lease().unwrap().address, POD_IP);
}

#[test]
fn dns_and_an_uncompressed_search_list_are_sent() {
    let mut server = Server::new(config());
    let (reply, m) = exchange(&mut server, solicit());
    assert_eq!(
        m.opts().get(OptionCode::DomainNameServers),
        Some(&DhcpOption::DomainNameServers(vec!["fd00:10:96::a".parse().unwrap()]))
    );
    let Some(DhcpOption::DomainSearchList(names)) = m.opts().get(OptionCode::DomainSearchList) else {
        panic!("no domain search list in {m:?}");
    };
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        ["default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."]
    );
    // Every name whole: a compressing encoder would point back at "svc.cluster.local" after the first.
    let mut wire = b"\x07default\x03svc\x07cluster\x05local\x00".to_vec();
    wire.extend_from_slice(b"\x03svc\x07cluster\x05local\x00\x07cluster\x05local\x00");
    let mut option = vec![0, 24];
    option.extend_from_slice(&(wire.len() as u16).to_be_bytes());
    option.extend_from_slice(&wire);
    assert!(reply.bytes.windows(option.len()).any(|w| w == option));
}

#[test]
fn the_option_request_is_honoured() {
    let mut server = Server::new(config());
    let without = |m: &Message| codes(m).into_iter().filter(|&c| c == 23 || c == 24).collect::<Vec<_>>();
    let msg = Msg::new(MessageType::Solicit).ia(IAID, &[]);
    assert_eq!(
        without(&exchange(&mut server, msg).1),
        [23, 24],
        "no ORO: everything configured"
    );
    let msg = Msg::new(MessageType::Solicit).ia(IAID, &[]).oro(&[23]);
    assert_eq!(without(&exchange(&mut server, msg).1), [23]);
    let msg = Msg::new(MessageType::Solicit).ia(IAID, &[]).oro(&[24, 82]);
    assert_eq!(without(&exchange(&mut server, msg).1), [24]);
    let msg = Msg::new(MessageType::Solicit).ia(IAID, &[]).oro(&[]);
    assert_eq!(without(&exchange(&mut server, msg).1), Vec::<u16>::new());
}

#[test]
fn rapid_commit_is_honoured_at_once() {
    let mut server = Server::new(config());
    let (reply, m) = exchange(&mut server, solicit().opt(DhcpOption::RapidCommit));
    assert_eq!((reply.kind, reply.verdict), (ReplyKind::Reply, Verdict::Granted));
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert!(m.opts().get(OptionCode::RapidCommit).is_some());
    assert!(m.opts().get(OptionCode::Preference).is_none());
    assert_eq!(addresses(&ias(&m)[0]), [(POD_IP, u32::MAX, u32::MAX)]);
    assert_eq!(server.lease().unwrap().state, LeaseState::Bound);
}

#[test]
fn request_binds_the_pod_address_whatever_the_hint() {
    let mut server = Server::new(config());
    exchange(&mut server, solicit());
    let msg = Msg::new(MessageType::Request).for_server().ia(IAID, &[STALE_IP]);
    let (reply, m) = exchange(&mut server, msg);
    assert_eq!(
        (reply.request, reply.kind, reply.verdict),
        (Request::Request, ReplyKind::Reply, Verdict::Granted)
    );
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert_eq!(
        addresses(&ias(&m)[0]),
        [(POD_IP, u32::MAX, u32::MAX)],
        "a hint is no binding"
    );
    let lease = server.lease().unwrap();
    assert_eq!(
        (lease.address, lease.state, lease.expires),
        (POD_IP, LeaseState::Bound, None)
    );
}

#[test]
fn finite_lifetimes_set_renewal_times_and_expiry() {
    let mut c = config();
    c.preferred_lifetime = LeaseTime::Finite(Duration::from_secs(3000));
    c.valid_lifetime = LeaseTime::Finite(Duration::from_secs(3600));
    let mut server = Server::new(c);
    let (_, m) = exchange(&mut server, request());
    let ia = &ias(&m)[0];
    assert_eq!((ia.t1, ia.t2), (1500, 2400));
    assert_eq!(addresses(ia), [(POD_IP, 3000, 3600)]);
    let lease = server.lease().unwrap();
    assert_eq!(lease.expires, Some(lease.since + 3600));
}

#[test]
fn a_request_for_another_server_is_ignored_and_voids_the_advertisement() {
    let mut server = Server::new(config());
    exchange(&mut server, solicit());
    let msg = Msg::new(MessageType::Request)
        .opt(DhcpOption::ServerId(vec![0, 3, 0, 1, 9, 9, 9, 9, 9, 9]))
        .ia(IAID, &[POD_IP]);
    assert_eq!(handle(&mut server, msg), Outcome::Ignored(Ignored::OtherServerSelected));
    assert!(server.lease().is_none());
}

#[test]
fn renew_of_the_pod_address_is_granted_even_by_a_restarted_server() {
    let mut server = Server::new(config());
    let msg = Msg::new(MessageType::Renew).for_server().ia(IAID, &[POD_IP]);
    let (reply, m) = exchange(&mut server, msg);
    assert_eq!((reply.request, reply.verdict), (Request::Renew, Verdict::Granted));
    assert_eq!(addresses(&ias(&m)[0]), [(POD_IP, u32::MAX, u32::MAX)]);
    assert_eq!(server.lease().unwrap().state, LeaseState::Bound);
}

#[test]
fn renew_of_another_address_gets_no_binding_so_the_client_requests_anew() {
    let mut server = Server::new(config());
    let msg = Msg::new(MessageType::Renew).for_server().ia(IAID, &[STALE_IP]);
    let (reply, m) = exchange(&mut server, msg);
    assert_eq!(reply.verdict, Verdict::Refused);
    let ia = &ias(&m)[0];
    assert_eq!(ia.id, IAID);
    assert_eq!(addresses(ia), []);
    assert_eq!(status_of(&ia.opts), Some(Status::NoBinding));
    assert!(server.lease().is_none());
    // Holding the right address as well, the client keeps that and drops the other.
    let msg = Msg::new(MessageType::Renew).for_server().ia(IAID, &[STALE_IP, POD_IP]);
    let (reply, m) = exchange(&mut server, msg);
    assert_eq!(reply.verdict, Verdict::Granted);
    assert_eq!(addresses(&ias(&m)[0]), [(POD_IP, u32::MAX, u32::MAX), (STALE_IP, 0, 0)]);
}

#[test]
fn rebind_withdraws_a_stale_address_and_grants_the_pod_address() {
    let mut server = Server::new(config());
    let msg = Msg::new(MessageType::Rebind).ia(IAID, &[STALE_IP]);
    let (reply, m) = exchange(&mut server, msg);
    assert_eq!((reply.request, reply.verdict), (Request::Rebind, Verdict::Granted));
    assert_eq!(addresses(&ias(&m)[0]), [(POD_IP, u32::MAX, u32::MAX), (STALE_IP, 0, 0)]);
    // A second IA loses what it holds, or hears it has no binding.
    let msg = Msg::new(MessageType::Rebind)
        .ia(1, &[POD_IP])
        .ia(2, &[STALE_IP])
        .ia(3, &[]);
    let (_, m) = exchange(&mut server, msg);
    let ias = ias(&m);
    assert_eq!(addresses(&ias[0]), [(POD_IP, u32::MAX, u32::MAX)]);
    assert_eq!(addresses(&ias[1]), [(STALE_IP, 0, 0)]);
    assert_eq!(
        (addresses(&ias[2]), status_of(&ias[2].opts)),
        (vec![], Some(Status::NoBinding))
    );
}

#[test]
fn confirm_says_whether_the_addresses_belong_on_this_link() {
    let mut server = Server::new(config());
    let (reply_ok, m) = exchange(&mut server, Msg::new(MessageType::Confirm).ia(IAID, &[POD_IP]));
    assert_eq!(
        (reply_ok.request, reply_ok.verdict),
        (Request::Confirm, Verdict::Granted)
    );
    assert_eq!(status_of(m.opts()), Some(Status::Success));
    assert_eq!(server.lease().unwrap().state, LeaseState::Bound);

    // A guest that kept the address of an earlier pod must learn at once that it is gone.
    let msg = Msg::new(MessageType::Confirm).ia(IAID, &[POD_IP, STALE_IP]);
    let (reply_stale, m) = exchange(&mut server, msg);
    assert_eq!(reply_stale.verdict, Verdict::Refused);
    assert_eq!(status_of(m.opts()), Some(Status::NotOnLink));
    assert!(ias(&m).is_empty());

    let nothing = Msg::new(MessageType::Confirm).ia(IAID, &[]);
    assert_eq!(
        handle(&mut server, nothing),
        Outcome::Ignored(Ignored::NothingToConfirm)
    );
}

#[test]
fn information_request_gets_configuration_only() {
    let mut server = Server::new(config());
    let (reply, m) = exchange(&mut server, Msg::bare(MessageType::InformationRequest));
    assert_eq!(
        (reply.request, reply.kind, reply.verdict),
        (Request::InformationRequest, ReplyKind::Reply, Verdict::NotAsked)
    );
    assert_eq!(
        codes(&m),
        [2, 23, 24],
        "server ID, DNS, search list; no client ID was sent"
    );
    let (_, m) = exchange(
        &mut server,
        Msg::new(MessageType::InformationRequest).for_server().oro(&[23]),
    );
    assert_eq!(codes(&m), [1, 2, 23]);
    assert!(server.lease().is_none(), "INFORMATION-REQUEST binds nothing");

    let with_ia = Msg::new(MessageType::InformationRequest).ia(IAID, &[]);
    assert_eq!(handle(&mut server, with_ia), Outcome::Ignored(Ignored::UnexpectedIa));
    let elsewhere = Msg::new(MessageType::InformationRequest).opt(DhcpOption::ServerId(vec![0, 3, 0, 1, 1]));
    assert_eq!(
        handle(&mut server, elsewhere),
        Outcome::Ignored(Ignored::OtherServerSelected)
    );
}

#[test]
fn release_and_decline_are_acknowledged_and_recorded() {
    let mut server = Server::new(config());
    exchange(&mut server, request());
    let msg = Msg::new(MessageType::Release)
        .for_server()
        .ia(IAID, &[POD_IP])
        .ia(2, &[STALE_IP]);
    let (reply_release, m) = exchange(&mut server, msg);
    assert_eq!(
        (reply_release.request, reply_release.kind, reply_release.verdict),
        (Request::Release, ReplyKind::Reply, Verdict::NotAsked)
    );
    assert_eq!(status_of(m.opts()), Some(Status::Success));
    let ias = ias(&m);
    assert_eq!(ias.len(), 1, "only the IA the server has no binding for");
    assert_eq!((ias[0].id, status_of(&ias[0].opts)), (2, Some(Status::NoBinding)));
    assert!(m.opts().get(OptionCode::DomainNameServers).is_none());
    assert_eq!(server.lease().unwrap().state, LeaseState::Released);

    let msg = Msg::new(MessageType::Decline).for_server().ia(IAID, &[POD_IP]);
    let (reply_decline, m) = exchange(&mut server, msg);
    assert_eq!(reply_decline.request, Request::Decline);
    assert_eq!(status_of(m.opts()), Some(Status::Success));
    assert_eq!(server.lease().unwrap().state, LeaseState::Declined);

    let foreign = Msg::new(MessageType::Release)
        .opt(DhcpOption::ServerId(vec![0, 3, 0, 1, 1]))
        .ia(IAID, &[POD_IP]);
    assert_eq!(
        handle(&mut server, foreign),
        Outcome::Ignored(Ignored::OtherServerSelected)
    );
    assert_eq!(server.lease().unwrap().state, LeaseState::Declined);
}

#[test]
fn one_address_goes_to_one_identity_association() {
    let mut server = Server::new(config());
    let (_, m) = exchange(&mut server, Msg::new(MessageType::Solicit).ia(1, &[]).ia(2, &[]));
    let ias = ias(&m);
    assert_eq!(addresses(&ias[0]), [(POD_IP, u32::MAX, u32::MAX)]);
    assert_eq!((ias[1].id, status_of(&ias[1].opts)), (2, Some(Status::NoAddrsAvail)));
    // The IA that already holds the address keeps it.
    let msg = Msg::new(MessageType::Renew).for_server().ia(1, &[]).ia(2, &[POD_IP]);
    let (_, m) = exchange(&mut server, msg);
    let ias = self::ias(&m);
    assert_eq!(status_of(&ias[0].opts), Some(Status::NoBinding));
    assert_eq!(addresses(&ias[1]), [(POD_IP, u32::MAX, u32::MAX)]);
}

#[test]
fn prefixes_are_not_delegated() {
    let mut server = Server::new(config());
    let pd = DhcpOption::IAPD(IAPD {
        id: 7,
        t1: 0,
        t2: 0,
        opts: DhcpOptions::new(),
    });
    let (reply, m) = exchange(&mut server, Msg::new(MessageType::Solicit).opt(pd.clone()));
    assert_eq!(reply.verdict, Verdict::NotAsked);
    assert_eq!(status_of(m.opts()), Some(Status::NoAddrsAvail));
    let Some(DhcpOption::IAPD(answer)) = m.opts().get(OptionCode::IAPD) else {
        panic!("no IA_PD in {m:?}");
    };
    assert_eq!((answer.id, status_of(&answer.opts)), (7, Some(Status::NoPrefixAvail)));
    assert!(server.lease().is_none());
    // Alongside an IA_NA, the address is still given.
    let (_, m) = exchange(&mut server, solicit().opt(pd));
    assert_eq!(status_of(m.opts()), None);
    assert_eq!(addresses(&ias(&m)[0]), [(POD_IP, u32::MAX, u32::MAX)]);
}

#[test]
fn identifiers_follow_rfc8415_section_16() {
    let mut server = Server::new(config());
    let cases = [
        (Msg::bare(MessageType::Solicit).ia(IAID, &[]), Ignored::MissingClientId),
        (solicit().for_server(), Ignored::UnexpectedServerId),
        (Msg::new(MessageType::Request).ia(IAID, &[]), Ignored::MissingServerId),
        (
            Msg::new(MessageType::Renew).ia(IAID, &[POD_IP]),
            Ignored::MissingServerId,
        ),
        (
            Msg::new(MessageType::Release).ia(IAID, &[POD_IP]),
            Ignored::MissingServerId,
        ),
        (
            Msg::new(MessageType::Decline).ia(IAID, &[POD_IP]),
            Ignored::MissingServerId,
        ),
        (
            Msg::new(MessageType::Rebind).for_server().ia(IAID, &[POD_IP]),
            Ignored::UnexpectedServerId,
        ),
        (
            Msg::new(MessageType::Confirm).for_server().ia(IAID, &[POD_IP]),
            Ignored::UnexpectedServerId,
        ),
    ];
    for (msg, expected) in cases {
        let kind = msg.0.msg_type();
        assert_eq!(handle(&mut server, msg), Outcome::Ignored(expected), "{kind:?}");
    }
    assert!(server.lease().is_none());
}

#[test]
fn any_duid_from_the_guest_mac_is_served_and_nothing_from_another_mac() {
    let mut server = Server::new(config());
    let duids = [
        vec![0, 1, 0, 1, 0x2c, 0xa9, 0x3f, 0x79, 0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07], // DUID-LLT
        vec![0, 2, 0, 0, 0x01, 0x37, 1, 2, 3, 4],                                     // DUID-EN
        vec![0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, 1],                                     // DUID-LL of another NIC
        vec![0, 4, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],                   // DUID-UUID
    ];
    for duid in duids {
        let msg = Msg::bare(MessageType::Solicit)
            .opt(DhcpOption::ClientId(duid.clone()))
            .ia(IAID, &[]);
        let (_, m) = exchange(&mut server, msg);
        assert_eq!(m.opts().get(OptionCode::ClientId), Some(&DhcpOption::ClientId(duid)));
    }
    let stranger = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    let mut server = Server::new(config());
    for msg in [solicit(), request(), Msg::bare(MessageType::InformationRequest)] {
        assert_eq!(
            server.handle(stranger, &msg.bytes(), now()),
            Outcome::Ignored(Ignored::OtherClient)
        );
    }
    assert!(server.lease().is_none());
}

#[test]
fn server_and_relay_messages_are_ignored() {
    let mut server = Server::new(config());
    for kind in [
        MessageType::Advertise,
        MessageType::Reply,
        MessageType::Reconfigure,
        MessageType::RelayForw,
        MessageType::RelayRepl,
        MessageType::LeaseQuery,
        MessageType::Unknown(0),
        MessageType::Unknown(200),
    ] {
        assert_eq!(
            handle(&mut server, Msg::new(kind)),
            Outcome::Ignored(Ignored::NotAClientMessage),
            "{kind:?}"
        );
    }
    // A relay message is not parsed as options at all: its header would not pass as one.
    let mut relay = vec![12, 0];
    relay.extend_from_slice(&[0xfe; 32]);
    assert_eq!(
        server.handle(CLIENT, &relay, now()),
        Outcome::Ignored(Ignored::NotAClientMessage)
    );
}

#[test]
fn malformed_messages_are_dropped_and_counted() {
    let mut server = Server::new(config());
    let good = solicit().bytes();
    let mut counters = Counters::default();
    let mut check = |packet: &[u8], expected: Malformed| {
        let outcome = server.handle(CLIENT, packet, now());
        counters.count(&outcome);
        assert_eq!(outcome, Outcome::Malformed(expected));
    };
    check(&[], Malformed::Truncated(0));
    check(&good[..3], Malformed::Truncated(3));
    check(&good[..good.len() - 1], Malformed::OptionOverrun(6));
    let mut stray = good.clone();
    stray.push(0);
    check(&stray, Malformed::StrayBytes(1));
    let mut short_duid = good[..4].to_vec();
    short_duid.extend_from_slice(&[0, 1, 0, 1, 7]);
    check(&short_duid, Malformed::BadOptionLength { code: 1, len: 1 });
    let mut twice = good.clone();
    twice.extend_from_slice(&[0, 1, 0, 3, 0, 4, 7]);
    check(&twice, Malformed::DuplicateOption(1));
    assert_eq!(counters.malformed, 6);
    assert_eq!(counters.answered, 0);
    // An option the server does not read is only framed: a status code of length 0 before other options, which
    // panics dhcproto's own decoder (it computes `0 - 2`), passes unread.
    let mut status_len_0 = good[..4].to_vec();
    status_len_0.extend_from_slice(&[0, 13, 0, 0]);
    status_len_0.extend_from_slice(&good[4..]);
    assert!(matches!(server.handle(CLIENT, &status_len_0, now()), Outcome::Reply(_)));
}

#[test]
fn counters_sort_outcomes() {
    let mut server = Server::new(config());
    let mut counters = Counters::default();
    let messages = [
        solicit(),
        request(),
        Msg::new(MessageType::Renew).for_server().ia(IAID, &[STALE_IP]),
        Msg::new(MessageType::Release).for_server().ia(IAID, &[POD_IP]),
        Msg::new(MessageType::Decline).for_server().ia(IAID, &[POD_IP]),
        Msg::new(MessageType::Reply),
    ];
    for msg in messages {
        counters.count(&handle(&mut server, msg));
    }
    counters.count(&server.handle(CLIENT, &[1], now()));
    assert_eq!(
        counters,
        Counters {
            answered: 5,
            refused: 1,
            ignored: 1,
            malformed: 1,
            releases: 1,
            declines: 1
        }
    );
}

#[test]
fn replies_fit_the_minimum_mtu() {
    let mut c = config();
    c.dns = (1..=40u16)
        .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))
        .collect();
    c.search = (0..6)
        .map(|i| format!("zone{i}-a-rather-long-label.example{i}.org"))
        .collect();
    let mut server = Server::new(c);
    // The largest request the sanitizer lets through: four IAs with four stale addresses each, a long DUID.
    let stale: Vec<Ipv6Addr> = (1..=4u16).map(|i| Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, i)).collect();
    let mut msg = Msg::bare(MessageType::Rebind).opt(DhcpOption::ClientId([0, 2, 0, 0, 0, 9, 7, 7].repeat(16)));
    for iaid in 1..=4 {
        msg = msg.ia(iaid, &stale);
    }
    let (reply, m) = exchange(&mut server, msg);
    assert!(reply.bytes.len() <= MAX_REPLY_LEN, "{} bytes", reply.bytes.len());
    assert_eq!(ias(&m).len(), 4);
    assert!(
        m.opts().get(OptionCode::DomainSearchList).is_none(),
        "the least important option went first"
    );
    // A small request keeps everything.
    let (reply, m) = exchange(&mut server, solicit());
    assert!(reply.bytes.len() <= MAX_REPLY_LEN);
    assert!(m.opts().get(OptionCode::DomainSearchList).is_some());
}

/// Arbitrary bytes never panic the core; this is the fuzz target's property, run here on a fixed budget of
/// mutations of real messages.
#[test]
fn mutated_messages_never_panic() {
    let mut server = Server::new(config());
    let seeds = [
        solicit().opt(DhcpOption::RapidCommit).bytes(),
        request().oro(&[23, 24]).bytes(),
        Msg::new(MessageType::Rebind)
            .ia(1, &[POD_IP, STALE_IP])
            .ia(2, &[])
            .bytes(),
        Msg::new(MessageType::Confirm).ia(IAID, &[POD_IP]).bytes(),
    ];
    common::mutations(&seeds, 30_000, |packet| {
        if let Outcome::Reply(reply) = server.handle(CLIENT, packet, now()) {
            assert!(reply.bytes.len() <= MAX_REPLY_LEN);
            Message::decode(&mut Decoder::new(&reply.bytes)).unwrap();
        }
    });
}
