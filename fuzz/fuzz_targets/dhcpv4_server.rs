//! Any bytes a guest can send to the DHCPv4 server: no panic, and every reply decodes and fits the client.
#![no_main]

use std::net::Ipv4Addr;
use std::time::SystemTime;

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use vmlet_dhcp::{MacAddr, Outcome, Server, ServerConfig, UserOption};

fuzz_target!(|data: &[u8]| {
    let mut config = ServerConfig::new(
        MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]),
        "10.244.1.7/32".parse().expect("address"),
        Ipv4Addr::new(169, 254, 75, 10),
    );
    config.gateway = Some(Ipv4Addr::new(169, 254, 1, 1));
    config.routes = vec!["10.96.0.0/12=169.254.1.1".parse().expect("route")];
    config.dns = vec![Ipv4Addr::new(10, 96, 0, 10)];
    config.search = vec!["default.svc.cluster.local".into(), "cluster.local".into()];
    config.hostname = Some("vm1".into());
    config.mtu = Some(1400);
    config.user_options = vec![UserOption { code: 224, data: vec![1; 100] }];
    let mut server = Server::new(config);
    if let Outcome::Reply(reply) = server.handle(data, SystemTime::UNIX_EPOCH) {
        assert!(reply.bytes.len() <= 1500, "reply of {} bytes", reply.bytes.len());
        Message::decode(&mut Decoder::new(&reply.bytes)).expect("a reply that decodes");
    }
});
