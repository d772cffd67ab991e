//! Router advertisements (RFC 4861 §4.2) for the guest, and the router solicitations that ask for them.
//!
//! The advertisement says what the guest cannot learn from DHCPv6:
//! - **Managed and Other flags set**: the address comes from DHCPv6 (IA_NA), because the guest must get the pod's
//!   exact address; SLAAC would make up another one. So the prefix information never has the autonomous flag.
//! - **The on-link prefix** (L=1, A=0) when the pod's address has a prefix shorter than /128, so the guest reaches
//!   its neighbours on the pod's subnet directly. A /128 (the common pod address) gets no prefix option at all: an
//!   on-link /128 says nothing the address does not, and the guest reaches everything, its subnet included,
//!   through the router.
//! - **The default router**: the advertisement is sent from the pod gateway's link-local and hardware addresses,
//!   with a non-zero router lifetime, so the guest's default route points at the real gateway, which in the bridge
//!   and tap bindings sits on the guest's own link. Without a gateway it comes from the server's own link-local
//!   address with router lifetime 0: flags, prefix, MTU and DNS, but no default route.
//! - MTU, DNS servers (RDNSS) and search domains (DNSSL) from RFC 8106, and route information (RFC 4191) for
//!   further destinations through the router.
//!
//! Reachable time and retransmission timer are 0 (unspecified): the guest keeps its own neighbour discovery
//! timing, as it would with the pod's gateway.

use std::net::Ipv6Addr;

use crate::config::MacAddr;
use crate::v6::config::{Config, MIN_MTU, link_local_of, wire_names};
use crate::v6::frame::{self, Endpoint, Packet, Payload, PayloadTooLong};

/// ICMPv6 types of neighbour discovery (RFC 4861).
pub const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;
pub const NEIGHBOUR_SOLICITATION: u8 = 135;
pub const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Neighbour discovery packets carry a hop limit no router would leave, proof they come from the link itself.
pub const ND_HOP_LIMIT: u8 = 255;
/// The largest advertisement (after the ICMPv6 header) one IPv6 packet carries on any link.
pub(crate) const MAX_BODY_LEN: usize = MIN_MTU as usize - 40 - 4;
/// The hop limit the guest puts on its packets, the usual default.
const CUR_HOP_LIMIT: u8 = 64;
const MANAGED: u8 = 0x80;
const OTHER_CONFIGURATION: u8 = 0x40;
const ON_LINK: u8 = 0x80;
/// Seconds the router, its routes and the DNS options stay valid. Advertisements repeat far more often, so a few
/// lost ones change nothing; RFC 8106 asks for at least three advertisement intervals.
pub const LIFETIME: u16 = 1800;
/// The pod's subnet is on the guest's link as long as the pod lives.
const INFINITE: u32 = u32::MAX;

const OPTION_SOURCE_LINK_LAYER: u8 = 1;
const OPTION_PREFIX_INFORMATION: u8 = 3;
const OPTION_MTU: u8 = 5;
const OPTION_ROUTE_INFORMATION: u8 = 24;
const OPTION_RDNSS: u8 = 25;
const OPTION_DNSSL: u8 = 31;

/// Why a router solicitation got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("not a router solicitation")]
    NotASolicitation,
    /// From a hardware address other than the guest's.
    #[error("from another client")]
    OtherClient,
    #[error("invalid router solicitation: {0}")]
    Invalid(InvalidSolicitation),
}

/// What RFC 4861 §6.1.1 makes a router discard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSolicitation {
    #[error("hop limit {0}, not 255")]
    HopLimit(u8),
    #[error("code {0}, not 0")]
    Code(u8),
    #[error("{0} bytes, fewer than 8")]
    Truncated(usize),
    #[error("an option of length zero or past the end")]
    BadOption,
    #[error("a link-layer address from the unspecified address")]
    LinkLayerFromUnspecified,
}

/// Builds the guest's router advertisements and decides which solicitations to answer.
#[derive(Clone, Debug)]
pub struct Advertiser {
    source: Endpoint,
    guest: MacAddr,
    body: Vec<u8>,
}

impl Advertiser {
    /// An advertiser for an already validated configuration (see [`Config::validate`]).
    pub fn new(config: &Config) -> Advertiser {
        Advertiser {
            source: source(config).0,
            guest: config.client_mac,
            body: advertisement(config),
        }
    }

    /// Where advertisements come from: the router, or the server standing in for one.
    pub fn source(&self) -> Endpoint {
        self.source
    }

    /// Where an unsolicited advertisement goes: all nodes, but only at the guest's hardware address, so that it
    /// never reaches the pod network through the bridge.
    pub fn unsolicited(&self) -> Endpoint {
        Endpoint {
            mac: self.guest,
            ip: ALL_NODES,
        }
    }

    /// Where the answer to `packet` goes, if it is a valid router solicitation from the guest: to the address it
    /// came from, or to all nodes if it had none yet (RFC 4861 §6.2.6), always at the guest's hardware address.
    pub fn answer(&self, packet: &Packet<'_>) -> Result<Endpoint, Unanswered> {
        let Payload::Icmpv6(message) = packet.payload else {
            return Err(Unanswered::NotASolicitation);
        };
        if message.first() != Some(&ROUTER_SOLICITATION) {
            return Err(Unanswered::NotASolicitation);
        }
        if packet.src.mac != self.guest {
            return Err(Unanswered::OtherClient);
        }
        let link_layer = parse_solicitation(packet.hop_limit, packet.src.ip, message).map_err(Unanswered::Invalid)?;
        if link_layer.is_some_and(|mac| mac != self.guest) {
            return Err(Unanswered::OtherClient);
        }
        let ip = if packet.src.ip.is_unspecified() {
            ALL_NODES
        } else {
            packet.src.ip
        };
        Ok(Endpoint { mac: self.guest, ip })
    }

    /// The whole advertisement frame to `destination`.
    pub fn frame(&self, destination: Endpoint) -> Result<Vec<u8>, PayloadTooLong> {
        frame::icmpv6(self.source, destination, ND_HOP_LIMIT, ROUTER_ADVERTISEMENT, &self.body)
    }
}

/// Checks a router solicitation (RFC 4861 §6.1.1) and returns the source link-layer address it carries, if any.
/// `message` is the whole ICMPv6 message, its checksum already verified.
pub fn parse_solicitation(
    hop_limit: u8,
    source: Ipv6Addr,
    message: &[u8],
) -> Result<Option<MacAddr>, InvalidSolicitation> {
    if hop_limit != ND_HOP_LIMIT {
        return Err(InvalidSolicitation::HopLimit(hop_limit));
    }
    if message.len() < 8 {
        return Err(InvalidSolicitation::Truncated(message.len()));
    }
    if message[1] != 0 {
        return Err(InvalidSolicitation::Code(message[1]));
    }
    let mut link_layer = None;
    let mut rest = &message[8..];
    while let [kind, units, ..] = *rest {
        let len = usize::from(units) * 8;
        if len == 0 || len > rest.len() {
            return Err(InvalidSolicitation::BadOption);
        }
        // An Ethernet address fills an option of one unit; other link layers are not ours to serve.
        if kind == OPTION_SOURCE_LINK_LAYER && len == 8 {
            let mut mac = [0; 6];
            mac.copy_from_slice(&rest[2..8]);
            link_layer = Some(MacAddr(mac));
        }
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(InvalidSolicitation::BadOption);
    }
    if source.is_unspecified() && link_layer.is_some() {
        return Err(InvalidSolicitation::LinkLayerFromUnspecified);
    }
    Ok(link_layer)
}

/// The advertisement's source, and the hardware address its source link-layer option announces (none when the
/// router's is unknown: the option would otherwise name the server's).
fn source(config: &Config) -> (Endpoint, Option<MacAddr>) {
    match config.router {
        Some(router) => {
            let mac = router.mac.unwrap_or(config.server_mac);
            (
                Endpoint {
                    mac,
                    ip: router.link_local,
                },
                router.mac,
            )
        }
        None => (
            Endpoint {
                mac: config.server_mac,
                ip: link_local_of(config.server_mac),
            },
            Some(config.server_mac),
        ),
    }
}

/// The advertisement after the ICMPv6 type, code and checksum.
pub(crate) fn advertisement(config: &Config) -> Vec<u8> {
    let router_lifetime = if config.router.is_some() { LIFETIME } else { 0 };
    let mut body = vec![CUR_HOP_LIMIT, MANAGED | OTHER_CONFIGURATION];
    body.extend_from_slice(&router_lifetime.to_be_bytes());
    body.extend_from_slice(&[0; 8]); // reachable time, retransmission timer: unspecified

    if let (_, Some(mac)) = source(config) {
        push_option(&mut body, OPTION_SOURCE_LINK_LAYER, &mac.0);
    }
    if let Some(mtu) = config.mtu {
        let mut data = vec![0, 0];
        data.extend_from_slice(&mtu.to_be_bytes());
        push_option(&mut body, OPTION_MTU, &data);
    }
    if config.address.prefix_len() < 128 {
        let mut data = vec![config.address.prefix_len(), ON_LINK];
        data.extend_from_slice(&INFINITE.to_be_bytes()); // valid
        data.extend_from_slice(&INFINITE.to_be_bytes()); // preferred
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(&config.address.network().octets());
        push_option(&mut body, OPTION_PREFIX_INFORMATION, &data);
    }
    // Routes go through the advertisement's source, so they need a real router; the default route is the router
    // lifetime's business.
    let routes = config
        .routes
        .iter()
        .filter(|r| config.router.is_some() && r.prefix_len() > 0);
    for route in routes {
        let mut data = vec![route.prefix_len(), 0]; // medium preference
        data.extend_from_slice(&u32::from(LIFETIME).to_be_bytes());
        // Only the octets the prefix length needs: 8 up to /64, all 16 beyond (RFC 4191 §2.3).
        let octets = if route.prefix_len() > 64 { 16 } else { 8 };
        data.extend_from_slice(&route.network().octets()[..octets]);
        push_option(&mut body, OPTION_ROUTE_INFORMATION, &data);
    }
    if !config.dns.is_empty() {
        let mut data = vec![0, 0];
        data.extend_from_slice(&u32::from(LIFETIME).to_be_bytes());
        for server in &config.dns {
            data.extend_from_slice(&server.octets());
        }
        push_option(&mut body, OPTION_RDNSS, &data);
    }
    if !config.search.is_empty() {
        let mut data = vec![0, 0];
        data.extend_from_slice(&u32::from(LIFETIME).to_be_bytes());
        data.extend_from_slice(&wire_names(&config.search));
        push_option(&mut body, OPTION_DNSSL, &data);
    }
    body
}

/// Appends an option, padded with zeros to a multiple of 8 bytes. An option too long for its length byte is left
/// for [`Config::validate`] to refuse: the advertisement would exceed [`MAX_BODY_LEN`] anyway.
fn push_option(body: &mut Vec<u8>, kind: u8, data: &[u8]) {
    let len = (2 + data.len()).div_ceil(8) * 8;
    body.push(kind);
    body.push(u8::try_from(len / 8).unwrap_or(0));
    body.extend_from_slice(data);
    body.resize(body.len() + len - 2 - data.len(), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LeaseTime;
    use crate::v6::config::Router;

    const GUEST_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x07]);
    const ROUTER_MAC: MacAddr = MacAddr([0xee; 6]);
    const SERVER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

    fn config() -> Config {
        let mut c = Config::new(GUEST_MAC, "fd00:10:244:1::7/128".parse().unwrap(), SERVER_MAC);
        c.router = Some(Router {
            link_local: "fe80::ecee:eeff:feee:eeee".parse().unwrap(),
            mac: Some(ROUTER_MAC),
        });
        c
    }

    /// The options after the fixed part, as (type, data without type and length).
    fn options(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &body[12..];
        while !rest.is_empty() {
            let len = usize::from(rest[1]) * 8;
            out.push((rest[0], rest[2..len].to_vec()));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn a_slash_128_pod_gets_flags_router_and_link_layer_but_no_prefix() {
        let body = advertisement(&config());
        assert_eq!(body[..12], [64, 0xc0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(options(&body), [(1, ROUTER_MAC.0.to_vec())]);
    }

    #[test]
    fn every_option_is_encoded_as_its_rfc_says() {
        let mut c = config();
        c.address = "2001:db8:1:2::5/64".parse().unwrap();
        c.mtu = Some(1400);
        c.dns = vec!["fd00:10:96::a".parse().unwrap(), "2001:db8::53".parse().unwrap()];
        c.search = vec!["svc.cluster.local".into()];
        c.routes = vec![
            "fd00:10:96::/112".parse().unwrap(),
            "2001:db8:aa::/48".parse().unwrap(),
            "::/0".parse().unwrap(),
        ];
        c.valid_lifetime = LeaseTime::Finite(std::time::Duration::from_secs(600)); // DHCPv6 only
        c.preferred_lifetime = c.valid_lifetime;
        let body = advertisement(&c);
        assert_eq!(
            body.len() % 8,
            4,
            "options come in units of 8 bytes after the 12-byte fixed part"
        );
        let options = options(&body);
        let kinds: Vec<u8> = options.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, [1, 5, 3, 24, 24, 25, 31]);

        assert_eq!(options[1].1, [0, 0, 0, 0, 0x05, 0x78]);
        let mut prefix = vec![64, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        prefix.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(options[2].1, prefix, "on-link, not autonomous, the network part only");
        let mut route = vec![112, 0, 0, 0, 0x07, 0x08];
        route.extend_from_slice(&[0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(options[3].1, route, "a prefix longer than /64 takes all 16 octets");
        assert_eq!(
            options[4].1,
            [48, 0, 0, 0, 0x07, 0x08, 0x20, 0x01, 0x0d, 0xb8, 0, 0xaa, 0, 0]
        );
        let mut rdnss = vec![0, 0, 0, 0, 0x07, 0x08];
        for dns in &c.dns {
            rdnss.extend_from_slice(&dns.octets());
        }
        assert_eq!(options[5].1, rdnss);
        let mut dnssl = vec![0, 0, 0, 0, 0x07, 0x08];
        dnssl.extend_from_slice(b"\x03svc\x07cluster\x05local\x00");
        dnssl.resize(30, 0); // padded to 32 bytes with the type and length
        assert_eq!(options[6].1, dnssl);
    }

    #[test]
    fn without_a_router_the_server_advertises_with_lifetime_zero_and_no_routes() {
        let mut c = config();
        c.router = None;
        c.routes = vec!["fd00:10:96::/112".parse().unwrap()];
        let advertiser = Advertiser::new(&c);
        assert_eq!(
            advertiser.source(),
            Endpoint {
                mac: SERVER_MAC,
                ip: "fe80::ff:fe00:fe".parse().unwrap()
            }
        );
        let body = advertisement(&c);
        assert_eq!(body[..4], [64, 0xc0, 0, 0], "no default route");
        assert_eq!(options(&body), [(1, SERVER_MAC.0.to_vec())]);
    }

    #[test]
    fn a_router_of_unknown_mac_is_advertised_from_the_server_mac_without_link_layer_option() {
        let mut c = config();
        c.router = Some(Router {
            link_local: "fe80::1".parse().unwrap(),
            mac: None,
        });
        let advertiser = Advertiser::new(&c);
        assert_eq!(
            advertiser.source(),
            Endpoint {
                mac: SERVER_MAC,
                ip: "fe80::1".parse().unwrap()
            }
        );
        assert_eq!(options(&advertisement(&c)), []);
    }

    /// A router solicitation frame from `mac` at `ip`, with `options` after the reserved field.
    fn solicitation(mac: MacAddr, ip: Ipv6Addr, hop_limit: u8, options: &[u8]) -> Vec<u8> {
        let src = Endpoint { mac, ip };
        let dst = Endpoint {
            mac: MacAddr([0x33, 0x33, 0, 0, 0, 2]),
            ip: "ff02::2".parse().unwrap(),
        };
        let mut body = vec![0; 4];
        body.extend_from_slice(options);
        frame::icmpv6(src, dst, hop_limit, ROUTER_SOLICITATION, &body).unwrap()
    }

    fn answer(advertiser: &Advertiser, frame: &[u8]) -> Result<Endpoint, Unanswered> {
        advertiser.answer(&frame::parse(frame).unwrap())
    }

    #[test]
    fn the_guest_is_answered_at_its_address_or_all_nodes() {
        let advertiser = Advertiser::new(&config());
        let guest_ll: Ipv6Addr = "fe80::42:aff:fef4:107".parse().unwrap();
        let mut slla = vec![1, 1];
        slla.extend_from_slice(&GUEST_MAC.0);
        for options in [&[][..], &slla] {
            let rs = solicitation(GUEST_MAC, guest_ll, 255, options);
            assert_eq!(
                answer(&advertiser, &rs),
                Ok(Endpoint {
                    mac: GUEST_MAC,
                    ip: guest_ll
                })
            );
        }
        let rs = solicitation(GUEST_MAC, Ipv6Addr::UNSPECIFIED, 255, &[]);
        assert_eq!(answer(&advertiser, &rs), Ok(advertiser.unsolicited()));
        assert_eq!(
            advertiser.unsolicited(),
            Endpoint {
                mac: GUEST_MAC,
                ip: ALL_NODES
            }
        );
    }

    #[test]
    fn others_and_invalid_solicitations_are_not_answered() {
        let advertiser = Advertiser::new(&config());
        let ll: Ipv6Addr = "fe80::1:2".parse().unwrap();
        let stranger = MacAddr([2, 0, 0, 0, 0, 0x99]);
        assert_eq!(
            answer(&advertiser, &solicitation(stranger, ll, 255, &[])),
            Err(Unanswered::OtherClient)
        );
        let mut foreign_slla = vec![1, 1];
        foreign_slla.extend_from_slice(&stranger.0);
        assert_eq!(
            answer(&advertiser, &solicitation(GUEST_MAC, ll, 255, &foreign_slla)),
            Err(Unanswered::OtherClient)
        );
        let invalid = |hop_limit, options: &[u8]| answer(&advertiser, &solicitation(GUEST_MAC, ll, hop_limit, options));
        assert_eq!(
            invalid(64, &[]),
            Err(Unanswered::Invalid(InvalidSolicitation::HopLimit(64)))
        );
        assert_eq!(
            invalid(255, &[1, 0, 0, 0, 0, 0, 0, 0]),
            Err(Unanswered::Invalid(InvalidSolicitation::BadOption))
        );
        assert_eq!(
            invalid(255, &[1, 2, 0, 0, 0, 0, 0, 0]),
            Err(Unanswered::Invalid(InvalidSolicitation::BadOption))
        );
        assert_eq!(
            invalid(255, &[1]),
            Err(Unanswered::Invalid(InvalidSolicitation::BadOption))
        );
        let mut slla = vec![1, 1];
        slla.extend_from_slice(&GUEST_MAC.0);
        assert_eq!(
            answer(&advertiser, &solicitation(GUEST_MAC, Ipv6Addr::UNSPECIFIED, 255, &slla)),
            Err(Unanswered::Invalid(InvalidSolicitation::LinkLayerFromUnspecified))
        );
        // An unknown option of the right shape is skipped.
        assert!(invalid(255, &[14, 1, 1, 2, 3, 4, 5, 6]).is_ok());
    }

    #[test]
    fn solicitation_parsing_checks_the_fixed_part() {
        let ll = "fe80::1".parse().unwrap();
        assert_eq!(
            parse_solicitation(255, ll, &[133, 0, 0, 0, 0, 0, 0]),
            Err(InvalidSolicitation::Truncated(7))
        );
        assert_eq!(
            parse_solicitation(255, ll, &[133, 1, 0, 0, 0, 0, 0, 0]),
            Err(InvalidSolicitation::Code(1))
        );
        assert_eq!(parse_solicitation(255, ll, &[133, 0, 0, 0, 0, 0, 0, 0]), Ok(None));
    }

    #[test]
    fn other_messages_are_not_solicitations() {
        let advertiser = Advertiser::new(&config());
        let src = Endpoint {
            mac: GUEST_MAC,
            ip: "fe80::1:2".parse().unwrap(),
        };
        let ra = frame::icmpv6(src, advertiser.unsolicited(), 255, ROUTER_ADVERTISEMENT, &[0; 12]).unwrap();
        assert_eq!(answer(&advertiser, &ra), Err(Unanswered::NotASolicitation));
        let udp = frame::udp(src, 546, advertiser.unsolicited(), 547, 1, b"x").unwrap();
        assert_eq!(answer(&advertiser, &udp), Err(Unanswered::NotASolicitation));
    }

    #[test]
    fn the_frame_comes_from_the_router_with_hop_limit_255() {
        let advertiser = Advertiser::new(&config());
        let frame = advertiser.frame(advertiser.unsolicited()).unwrap();
        let packet = frame::parse(&frame).unwrap();
        assert_eq!(packet.src.mac, ROUTER_MAC);
        assert_eq!(packet.src.ip, "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap());
        assert_eq!(packet.dst.mac, GUEST_MAC);
        assert_eq!(packet.dst.ip, ALL_NODES);
        assert_eq!(packet.hop_limit, 255);
        let Payload::Icmpv6(message) = packet.payload else {
            panic!("not ICMPv6")
        };
        assert_eq!(message[..2], [134, 0]);
        assert_eq!(message[4..], advertisement(&config()));
    }
}
