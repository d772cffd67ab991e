//! Any bytes a guest can send to the IPv6 side: no panic in the DHCPv6 core, the router solicitation parser or the
//! frame parser, and every DHCPv6 reply decodes and fits one packet on any IPv6 link.
#![no_main]

use std::net::Ipv6Addr;
use std::time::SystemTime;

use dhcproto::v6::Message;
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use vmlet_dhcp::MacAddr;
use vmlet_dhcp::v6::server::MAX_REPLY_LEN;
use vmlet_dhcp::v6::{Config, Outcome, Router, Server, frame, ra};

const CLIENT: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]);

fuzz_target!(|data: &[u8]| {
    let mut config = Config::new(
        CLIENT,
        "fd00:10:244:1::7/64".parse().expect("address"),
        MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
    );
    config.router = Some(Router {
        link_local: Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee),
        mac: Some(MacAddr([0xee; 6])),
    });
    config.dns = vec![Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x0a)];
    config.search = vec!["default.svc.cluster.local".into(), "cluster.local".into()];
    config.mtu = Some(1400);
    let mut server = Server::new(config);
    if let Outcome::Reply(reply) = server.handle(CLIENT, data, SystemTime::UNIX_EPOCH) {
        assert!(
            reply.bytes.len() <= MAX_REPLY_LEN,
            "reply of {} bytes",
            reply.bytes.len()
        );
        Message::decode(&mut Decoder::new(&reply.bytes)).expect("a reply that decodes");
    }
    let _ = ra::parse_solicitation(255, Ipv6Addr::UNSPECIFIED, data);
    let _ = frame::parse(data);
});
