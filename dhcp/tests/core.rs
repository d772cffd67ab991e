//! The pure core, message by message and option by option.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use vmlet_dhcp::{
    ClientNotice, Counters, Destination, Ignored, LeaseState, LeaseTime, MacAddr, Malformed, Outcome, Reply, ReplyKind,
    Request, RequestState, Server, ServerConfig, UserOption,
};

const CLIENT: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]);
const SERVER_ID: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

fn config() -> ServerConfig {
    let mut c = ServerConfig::new(CLIENT, "10.244.1.7/24".parse().unwrap(), SERVER_ID);
    c.gateway = Some(Ipv4Addr::new(10, 244, 1, 1));
    c.dns = vec![Ipv4Addr::new(10, 96, 0, 10)];
    c.search = vec![
        "default.svc.cluster.local".into(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    c.hostname = Some("vm1".into());
    c.mtu = Some(1400);
    c.ntp = vec![Ipv4Addr::new(10, 0, 0, 123)];
    c
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A client request, as a real client would build it.
struct Req(Message);

impl Req {
    fn new(kind: MessageType) -> Self {
        Self::from_mac(kind, CLIENT)
    }

    fn from_mac(kind: MessageType, mac: MacAddr) -> Self {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(0x1234_5678, unspecified, unspecified, unspecified, unspecified, &mac.0);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        Req(m)
    }

    fn opt(mut self, option: DhcpOption) -> Self {
        self.0.opts_mut().insert(option);
        self
    }

    fn ciaddr(mut self, ip: Ipv4Addr) -> Self {
        self.0.set_ciaddr(ip);
        self
    }

    fn giaddr(mut self, ip: Ipv4Addr) -> Self {
        self.0.set_giaddr(ip);
        self
    }

    fn broadcast(mut self) -> Self {
        self.0.set_flags(Flags::default().set_broadcast());
        self
    }

    fn requesting(self, codes: &[u8]) -> Self {
        let codes = codes.iter().map(|&c| OptionCode::from(c)).collect();
        self.opt(DhcpOption::ParameterRequestList(codes))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.0.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }
}

fn handle(server: &mut Server, req: Req) -> Outcome {
    server.handle(&req.bytes(), now())
}

fn reply(server: &mut Server, req: Req) -> (Reply, Message) {
    match handle(server, req) {
        Outcome::Reply(reply) => {
            let message = Message::decode(&mut Decoder::new(&reply.bytes)).unwrap();
            (reply, message)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn message_type(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

fn codes(m: &Message) -> Vec<u8> {
    m.opts().iter().map(|(code, _)| u8::from(*code)).collect()
}

fn selecting() -> Req {
    Req::new(MessageType::Request)
        .opt(DhcpOption::ServerIdentifier(SERVER_ID))
        .opt(DhcpOption::RequestedIpAddress(POD_IP))
}

#[test]
fn discover_gets_an_offer_of_the_pod_address() {
    let mut server = Server::new(config());
    let (reply, m) = reply(&mut server, Req::new(MessageType::Discover));
    assert_eq!((reply.request, reply.kind), (Request::Discover, ReplyKind::Offer));
    assert_eq!(message_type(&m), MessageType::Offer);
    assert_eq!(m.opcode(), v4::Opcode::BootReply);
    assert_eq!(m.xid(), 0x1234_5678);
    assert_eq!(m.chaddr(), CLIENT.0);
    assert_eq!(m.yiaddr(), POD_IP);
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        m.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_ID))
    );
    assert_eq!(server.lease().unwrap().state, LeaseState::Offered);
}

#[test]
fn without_a_request_list_every_configured_option_is_sent() {
    let mut server = Server::new(config());
    let (_, m) = reply(&mut server, Req::new(MessageType::Discover));
    let o = m.opts();
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 244, 1, 1)]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 96, 0, 10)]))
    );
    assert_eq!(o.get(OptionCode::Hostname), Some(&DhcpOption::Hostname("vm1".into())));
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("default.svc.cluster.local".into()))
    );
    let Some(DhcpOption::DomainSearch(names)) = o.get(OptionCode::DomainSearch) else {
        panic!("no domain search option");
    };
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        ["default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."]
    );
    assert_eq!(o.get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(1400)));
    assert_eq!(
        o.get(OptionCode::NtpServers),
        Some(&DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 123)]))
    );
    // An on-link gateway and no other route: option 3 says it all, so 121 is not sent.
    assert!(o.get(OptionCode::ClasslessStaticRoute).is_none());
}

#[test]
fn infinite_lease_by_default_and_no_renewal_times() {
    let mut server = Server::new(config());
    let (_, m) = reply(&mut server, Req::new(MessageType::Discover));
    assert_eq!(
        m.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(u32::MAX))
    );
    assert!(m.opts().get(OptionCode::Renewal).is_none());
    assert!(m.opts().get(OptionCode::Rebinding).is_none());
}

#[test]
fn finite_lease_carries_renewal_and_rebinding_times() {
    let mut c = config();
    c.lease_time = LeaseTime::Finite(Duration::from_secs(3600));
    let mut server = Server::new(c);
    let (_, m) = reply(&mut server, selecting());
    assert_eq!(
        m.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(m.opts().get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(m.opts().get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
    let lease = server.lease().unwrap();
    assert_eq!(lease.state, LeaseState::Bound);
    assert_eq!(lease.expires, Some(lease.since + 3600));
}

#[test]
fn request_list_is_honoured() {
    let mut server = Server::new(config());
    let (_, m) = reply(&mut server, Req::new(MessageType::Discover).requesting(&[3, 6]));
    // 53, 54 and 51 belong to the protocol; the subnet mask is always sent.
    assert_eq!(codes(&m), [1, 3, 6, 51, 53, 54]);
    let (_, m) = reply(
        &mut server,
        Req::new(MessageType::Discover).requesting(&[26, 119, 12, 15, 42]),
    );
    assert_eq!(codes(&m), [1, 12, 15, 26, 42, 51, 53, 54, 119]);
}

#[test]
fn selecting_request_for_the_offered_address_is_acked() {
    let mut server = Server::new(config());
    reply(&mut server, Req::new(MessageType::Discover));
    let (reply, m) = reply(&mut server, selecting());
    assert_eq!(
        (reply.request, reply.kind),
        (Request::Request(RequestState::Selecting), ReplyKind::Ack)
    );
    assert_eq!(message_type(&m), MessageType::Ack);
    assert_eq!(m.yiaddr(), POD_IP);
    let lease = server.lease().unwrap();
    assert_eq!(
        (lease.address, lease.state, lease.expires),
        (POD_IP, LeaseState::Bound, None)
    );
}

#[test]
fn selecting_request_for_another_address_is_naked() {
    let mut server = Server::new(config());
    let req = Req::new(MessageType::Request)
        .opt(DhcpOption::ServerIdentifier(SERVER_ID))
        .opt(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 244, 1, 99)));
    let (reply, m) = reply(&mut server, req);
    assert_eq!(reply.kind, ReplyKind::Nak);
    assert_nak(&reply, &m);
}

fn assert_nak(reply: &Reply, m: &Message) {
    assert_eq!(message_type(m), MessageType::Nak);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(codes(m), [53, 54], "a NAK carries no configuration");
    assert_eq!(reply.destination, Destination::Broadcast);
}

#[test]
fn selecting_another_server_is_ignored_and_forgets_the_offer() {
    let mut server = Server::new(config());
    reply(&mut server, Req::new(MessageType::Discover));
    let req = Req::new(MessageType::Request)
        .opt(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 244, 1, 1)))
        .opt(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 244, 1, 50)));
    assert_eq!(handle(&mut server, req), Outcome::Ignored(Ignored::OtherServerSelected));
    assert!(server.lease().is_none());
}

#[test]
fn init_reboot_with_the_right_address_is_acked_and_a_stale_one_naked() {
    let mut server = Server::new(config());
    let (reply_ok, m) = reply(
        &mut server,
        Req::new(MessageType::Request).opt(DhcpOption::RequestedIpAddress(POD_IP)),
    );
    assert_eq!(reply_ok.request, Request::Request(RequestState::InitReboot));
    assert_eq!(message_type(&m), MessageType::Ack);

    // A guest that kept the address of an earlier pod must learn at once that it is gone.
    let stale = Req::new(MessageType::Request).opt(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 244, 9, 9)));
    let (reply_nak, m) = reply(&mut server, stale);
    assert_eq!(reply_nak.request, Request::Request(RequestState::InitReboot));
    assert_nak(&reply_nak, &m);
}

#[test]
fn renewing_with_the_right_ciaddr_is_acked_by_unicast() {
    let mut server = Server::new(config());
    let (reply, m) = reply(&mut server, Req::new(MessageType::Request).ciaddr(POD_IP));
    assert_eq!(reply.request, Request::Request(RequestState::RenewingOrRebinding));
    assert_eq!(message_type(&m), MessageType::Ack);
    assert_eq!(m.ciaddr(), POD_IP);
    assert_eq!(m.yiaddr(), POD_IP);
    assert_eq!(
        reply.destination,
        Destination::Unicast {
            ip: POD_IP,
            mac: CLIENT
        }
    );
}

#[test]
fn rebinding_with_a_wrong_ciaddr_is_naked() {
    let mut server = Server::new(config());
    let req = Req::new(MessageType::Request)
        .ciaddr(Ipv4Addr::new(10, 244, 9, 9))
        .broadcast();
    let (reply, m) = reply(&mut server, req);
    assert_nak(&reply, &m);
}

#[test]
fn request_with_nothing_to_check_is_ignored() {
    let mut server = Server::new(config());
    assert_eq!(
        handle(&mut server, Req::new(MessageType::Request)),
        Outcome::Ignored(Ignored::IncompleteRequest)
    );
}

#[test]
fn inform_is_acked_with_configuration_but_no_address_or_lease() {
    let mut server = Server::new(config());
    let (reply, m) = reply(&mut server, Req::new(MessageType::Inform).ciaddr(POD_IP));
    assert_eq!((reply.request, reply.kind), (Request::Inform, ReplyKind::Ack));
    assert_eq!(message_type(&m), MessageType::Ack);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), POD_IP);
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(m.opts().get(OptionCode::DomainNameServer).is_some());
    assert_eq!(
        reply.destination,
        Destination::Unicast {
            ip: POD_IP,
            mac: CLIENT
        }
    );
    assert!(server.lease().is_none(), "INFORM binds nothing");
}

#[test]
fn release_and_decline_are_recorded_without_reply() {
    let mut server = Server::new(config());
    reply(&mut server, selecting());
    let release = Req::new(MessageType::Release)
        .ciaddr(POD_IP)
        .opt(DhcpOption::ServerIdentifier(SERVER_ID));
    assert_eq!(handle(&mut server, release), Outcome::Recorded(ClientNotice::Released));
    assert_eq!(server.lease().unwrap().state, LeaseState::Released);

    let decline = Req::new(MessageType::Decline)
        .opt(DhcpOption::ServerIdentifier(SERVER_ID))
        .opt(DhcpOption::RequestedIpAddress(POD_IP));
    assert_eq!(handle(&mut server, decline), Outcome::Recorded(ClientNotice::Declined));
    assert_eq!(server.lease().unwrap().state, LeaseState::Declined);

    let foreign = Req::new(MessageType::Release).opt(DhcpOption::ServerIdentifier(Ipv4Addr::new(1, 2, 3, 4)));
    assert_eq!(
        handle(&mut server, foreign),
        Outcome::Ignored(Ignored::OtherServerSelected)
    );
    assert_eq!(server.lease().unwrap().state, LeaseState::Declined);
}

#[test]
fn other_clients_are_ignored_whatever_they_send() {
    let mut server = Server::new(config());
    let stranger = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    for kind in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
        MessageType::Release,
    ] {
        let req = Req::from_mac(kind, stranger).opt(DhcpOption::RequestedIpAddress(POD_IP));
        assert_eq!(handle(&mut server, req), Outcome::Ignored(Ignored::OtherClient));
    }
    assert!(server.lease().is_none());
}

#[test]
fn server_messages_and_replies_are_ignored() {
    let mut server = Server::new(config());
    for kind in [MessageType::Offer, MessageType::Ack, MessageType::Nak] {
        assert_eq!(
            handle(&mut server, Req::new(kind)),
            Outcome::Ignored(Ignored::UnexpectedMessageType)
        );
    }
    let mut bootreply = Req::new(MessageType::Discover);
    bootreply.0.set_opcode(v4::Opcode::BootReply);
    assert_eq!(handle(&mut server, bootreply), Outcome::Ignored(Ignored::NotARequest));
    let mut not_ethernet = Req::new(MessageType::Discover);
    not_ethernet.0.set_htype(v4::HType::IEEE802);
    assert_eq!(
        handle(&mut server, not_ethernet),
        Outcome::Ignored(Ignored::NotARequest)
    );
}

#[test]
fn destination_follows_rfc2131_section_4_1() {
    let mut server = Server::new(config());
    let relay = Ipv4Addr::new(10, 244, 1, 1);
    let (r, _) = reply(&mut server, Req::new(MessageType::Discover).giaddr(relay));
    assert_eq!(r.destination, Destination::Relay(relay));
    let (r, _) = reply(&mut server, Req::new(MessageType::Discover).broadcast());
    assert_eq!(r.destination, Destination::Broadcast);
    let (r, m) = reply(&mut server, Req::new(MessageType::Discover).broadcast());
    assert!(m.flags().broadcast(), "the broadcast flag is echoed");
    assert_eq!(r.destination, Destination::Broadcast);
    let (r, _) = reply(&mut server, Req::new(MessageType::Discover));
    assert_eq!(
        r.destination,
        Destination::Unicast {
            ip: POD_IP,
            mac: CLIENT
        }
    );
    let (r, _) = reply(&mut server, Req::new(MessageType::Inform));
    assert_eq!(
        r.destination,
        Destination::Broadcast,
        "INFORM without ciaddr has nowhere to unicast"
    );
    // A NAK through a relay asks the relay to broadcast it.
    let stale = Req::new(MessageType::Request)
        .ciaddr(Ipv4Addr::new(10, 9, 9, 9))
        .giaddr(relay);
    let (r, m) = reply(&mut server, stale);
    assert_eq!((r.kind, r.destination), (ReplyKind::Nak, Destination::Relay(relay)));
    assert!(m.flags().broadcast());
    assert_eq!(m.giaddr(), relay);
}

#[test]
fn slash_32_address_with_off_link_gateway_gets_classless_routes() {
    let mut c = config();
    c.address = "10.244.1.7/32".parse().unwrap();
    c.gateway = Some(Ipv4Addr::new(169, 254, 1, 1));
    let mut server = Server::new(c);
    let (_, m) = reply(&mut server, Req::new(MessageType::Discover).requesting(&[1, 3, 121]));
    assert_eq!(
        m.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::BROADCAST))
    );
    // Option 3 stays for clients that ignore 121.
    assert_eq!(
        m.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(169, 254, 1, 1)]))
    );
    let Some(DhcpOption::ClasslessStaticRoute(routes)) = m.opts().get(OptionCode::ClasslessStaticRoute) else {
        panic!("no classless static routes");
    };
    let routes: Vec<String> = routes.iter().map(|(net, gw)| format!("{net} via {gw}")).collect();
    assert_eq!(routes, ["169.254.1.1/32 via 0.0.0.0", "0.0.0.0/0 via 169.254.1.1"]);
}

#[test]
fn extra_routes_go_before_the_default_route() {
    let mut c = config();
    c.routes = vec![
        "10.96.0.0/12=10.244.1.254".parse().unwrap(),
        "192.168.0.0/16=10.244.1.1".parse().unwrap(),
    ];
    let mut server = Server::new(c);
    let (_, m) = reply(&mut server, Req::new(MessageType::Discover));
    let Some(DhcpOption::ClasslessStaticRoute(routes)) = m.opts().get(OptionCode::ClasslessStaticRoute) else {
        panic!("no classless static routes");
    };
    let routes: Vec<String> = routes.iter().map(|(net, gw)| format!("{net} via {gw}")).collect();
    assert_eq!(
        routes,
        [
            "10.96.0.0/12 via 10.244.1.254",
            "192.168.0.0/16 via 10.244.1.1",
            "0.0.0.0/0 via 10.244.1.1"
        ]
    );
}

#[test]
fn user_options_are_always_sent_and_override_built_in_ones() {
    let mut c = config();
    c.user_options = vec![
        UserOption {
            code: 224,
            data: b"private".to_vec(),
        },
        UserOption {
            code: 15,
            data: b"example.org".to_vec(),
        },
    ];
    let mut server = Server::new(c);
    let bytes = match handle(&mut server, Req::new(MessageType::Discover).requesting(&[1, 3])) {
        Outcome::Reply(r) => r.bytes,
        other => panic!("{other:?}"),
    };
    let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    assert_eq!(
        m.opts().get(OptionCode::Unknown(224)),
        Some(&DhcpOption::Unknown(v4::UnknownOption::new(
            224.into(),
            b"private".to_vec()
        )))
    );
    assert!(contains(&bytes, &[15, 11]), "option 15 carries the user's value");
    assert!(contains(&bytes, b"example.org"));
    assert!(!contains(&bytes, b"default"), "the built-in domain name is replaced");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn replies_fit_the_smallest_message_every_client_accepts() {
    let mut c = config();
    c.search = (0..20)
        .map(|i| format!("zone{i}-a-rather-long-label.example{i}.org"))
        .collect();
    c.user_options = vec![UserOption {
        code: 224,
        data: vec![7; 200],
    }];
    let mut server = Server::new(c);
    let (r, m) = reply(&mut server, Req::new(MessageType::Discover));
    assert!(r.bytes.len() <= 548, "{} bytes", r.bytes.len());
    // The least important options were left out; the essential ones stayed.
    for code in [
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::InterfaceMtu,
    ] {
        assert!(m.opts().get(code).is_some(), "{code:?} kept");
    }
    assert!(m.opts().get(OptionCode::Unknown(224)).is_none());
}

#[test]
fn a_larger_maximum_message_size_lets_everything_through() {
    let mut c = config();
    c.search = (0..20)
        .map(|i| format!("zone{i}-a-rather-long-label.example{i}.org"))
        .collect();
    let mut server = Server::new(c);
    let (r, m) = reply(
        &mut server,
        Req::new(MessageType::Discover).opt(DhcpOption::MaxMessageSize(1500)),
    );
    assert!(
        r.bytes.len() > 548 && r.bytes.len() <= 1500 - 28,
        "{} bytes",
        r.bytes.len()
    );
    assert!(m.opts().get(OptionCode::DomainSearch).is_some());
    // A maximum below the RFC's minimum is raised to it rather than believed.
    let (r, _) = reply(
        &mut server,
        Req::new(MessageType::Discover).opt(DhcpOption::MaxMessageSize(300)),
    );
    assert!(r.bytes.len() <= 548 && r.bytes.len() > 300);
}

#[test]
fn a_lease_from_an_earlier_run_carries_on_unless_the_address_changed() {
    let mut server = Server::new(config());
    reply(&mut server, selecting());
    let lease = *server.lease().unwrap();
    assert_eq!(Server::new(config()).with_lease(Some(lease)).lease(), Some(&lease));
    let mut moved = config();
    moved.address = "10.244.2.8/24".parse().unwrap();
    assert_eq!(Server::new(moved).with_lease(Some(lease)).lease(), None);
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut server = Server::new(config());
    let good = Req::new(MessageType::Discover).bytes();
    let mut counters = Counters::default();
    let mut check = |packet: &[u8], expected: Malformed| {
        let outcome = server.handle(packet, now());
        counters.count(&outcome);
        assert_eq!(outcome, Outcome::Malformed(expected));
    };
    check(&good[..100], Malformed::Truncated(100));
    let mut bad_cookie = good.clone();
    bad_cookie[236] = 0x63 ^ 0xff;
    check(&bad_cookie, Malformed::BadMagicCookie);
    let mut overrun = good[..240].to_vec();
    overrun.extend([53, 1, 1, 55, 40, 1, 3]);
    check(&overrun, Malformed::OptionOverrun(55));
    let mut no_type = good[..240].to_vec();
    no_type.push(255);
    check(&no_type, Malformed::NoMessageType);
    let mut long_hlen = good.clone();
    long_hlen[2] = 200;
    check(&long_hlen, Malformed::BadHardwareLength(200));
    assert_eq!(counters.malformed, 5);
    assert_eq!(counters.answered, 0);
}

#[test]
fn counters_sort_outcomes() {
    let mut server = Server::new(config());
    let mut counters = Counters::default();
    let requests = [
        Req::new(MessageType::Discover),
        selecting(),
        Req::new(MessageType::Request).ciaddr(Ipv4Addr::new(1, 1, 1, 1)),
        Req::from_mac(MessageType::Discover, MacAddr([2, 0, 0, 0, 0, 2])),
        Req::new(MessageType::Release),
        Req::new(MessageType::Decline),
    ];
    for req in requests {
        counters.count(&handle(&mut server, req));
    }
    assert_eq!(
        counters,
        Counters {
            answered: 3,
            naks: 1,
            ignored: 1,
            malformed: 0,
            releases: 1,
            declines: 1
        }
    );
}

/// Arbitrary bytes never panic the core; this is the fuzz target's property, run here on a fixed budget of
/// mutations of real requests.
#[test]
fn mutated_requests_never_panic() {
    let mut server = Server::new(config());
    let seeds = [
        Req::new(MessageType::Discover).requesting(&[1, 3, 6, 121]).bytes(),
        selecting().opt(DhcpOption::MaxMessageSize(1500)).bytes(),
        Req::new(MessageType::Inform).ciaddr(POD_IP).bytes(),
    ];
    common::mutations(&seeds, 30_000, |packet| {
        let _ = server.handle(packet, now());
    });
}
