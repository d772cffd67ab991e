//! What the guest learns over IPv6: one address by DHCPv6, the router and the link by router advertisements.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

use crate::config::{LeaseTime, MacAddr};
use crate::v6::ra;

/// Every IPv6 link carries packets of this size (RFC 8200 §5); a router advertisement must fit in one.
pub const MIN_MTU: u32 = 1280;

/// The router that router advertisements speak for: the pod's IPv6 gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// Its link-local address, which becomes the guest's default route: advertisements are sent from it.
    pub link_local: Ipv6Addr,
    /// Its hardware address, the advertisements' Ethernet source and source link-layer option, so the guest needs
    /// no neighbour discovery to reach it. Without it the guest resolves the router itself, and the router (on the
    /// pod network, beyond the bridge) answers.
    pub mac: Option<MacAddr>,
}

/// Everything the DHCPv6 server and the router advertisements tell the one guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The only client served; every other hardware address is ignored.
    pub client_mac: MacAddr,
    /// The guest's address, handed out whole over DHCPv6 (IA_NA), and the prefix on its link. A /128, common for
    /// pods, puts nothing else on the link: the guest reaches everything through the router.
    pub address: Ipv6Net,
    /// The default router; without one the guest gets no default route.
    pub router: Option<Router>,
    /// Destinations beyond the router besides the default route, advertised as route information (RFC 4191).
    pub routes: Vec<Ipv6Net>,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    pub mtu: Option<u32>,
    /// The hardware address of the interface the server answers on: it makes the server's DUID and link-local
    /// address, the source of DHCPv6 replies (and of advertisements when there is no router).
    pub server_mac: MacAddr,
    pub preferred_lifetime: LeaseTime,
    pub valid_lifetime: LeaseTime,
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not a global or unique local unicast address")]
    NotAHostAddress(Ipv6Net),
    #[error("the router address {0} is not link-local")]
    RouterNotLinkLocal(Ipv6Addr),
    #[error("the route {0} is not a unicast prefix")]
    InvalidRoute(Ipv6Net),
    #[error("the DNS server {0} is not a unicast address")]
    InvalidDnsServer(Ipv6Addr),
    #[error("the MTU {0} is below the IPv6 minimum of 1280")]
    MtuTooSmall(u32),
    #[error("the preferred lifetime exceeds the valid lifetime")]
    PreferredOutlivesValid,
    #[error("{0:?} is not a valid domain name")]
    InvalidDomain(String),
    #[error("the router advertisement takes {0} bytes, more than one IPv6 packet carries on every link")]
    AdvertisementTooLarge(usize),
}

impl Config {
    /// A configuration with only the mandatory parts: no router, no DNS, infinite lifetimes.
    pub fn new(client_mac: MacAddr, address: Ipv6Net, server_mac: MacAddr) -> Self {
        Config {
            client_mac,
            address,
            router: None,
            routes: Vec::new(),
            dns: Vec::new(),
            search: Vec::new(),
            mtu: None,
            server_mac,
            preferred_lifetime: LeaseTime::Infinite,
            valid_lifetime: LeaseTime::Infinite,
        }
    }

    /// Checks what the packet builders would otherwise have to refuse or truncate at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ip = self.address.addr();
        if !is_unicast(ip) || ip.is_unicast_link_local() {
            return Err(ConfigError::NotAHostAddress(self.address));
        }
        if let Some(router) = self.router.filter(|r| !r.link_local.is_unicast_link_local()) {
            return Err(ConfigError::RouterNotLinkLocal(router.link_local));
        }
        if let Some(route) = self.routes.iter().find(|r| r.network().is_multicast()) {
            return Err(ConfigError::InvalidRoute(*route));
        }
        if let Some(dns) = self.dns.iter().find(|&&dns| !is_unicast(dns)) {
            return Err(ConfigError::InvalidDnsServer(*dns));
        }
        if let Some(mtu) = self.mtu.filter(|&mtu| mtu < MIN_MTU) {
            return Err(ConfigError::MtuTooSmall(mtu));
        }
        if self.preferred_lifetime.as_secs() > self.valid_lifetime.as_secs() {
            return Err(ConfigError::PreferredOutlivesValid);
        }
        if let Some(domain) = self.search.iter().find(|d| !is_domain_name(d)) {
            return Err(ConfigError::InvalidDomain(domain.clone()));
        }
        // Also bounds every option's length byte: one option longer than 255 units of 8 bytes would not fit either.
        let advertisement = ra::advertisement(self).len();
        if advertisement > ra::MAX_BODY_LEN {
            return Err(ConfigError::AdvertisementTooLarge(4 + advertisement));
        }
        Ok(())
    }

    /// The server's DUID: a DUID-LL (RFC 8415 §11.4) made from its hardware address, the same at every start.
    pub fn server_duid(&self) -> Vec<u8> {
        let mut duid = vec![0, 3, 0, 1]; // DUID-LL, hardware type Ethernet
        duid.extend_from_slice(&self.server_mac.0);
        duid
    }

    /// The server's link-local address, the modified EUI-64 of its hardware address (RFC 4291 appendix A), which
    /// is what the kernel would give the interface. The interface need not have it: replies are built whole.
    pub fn server_link_local(&self) -> Ipv6Addr {
        link_local_of(self.server_mac)
    }
}

/// The modified EUI-64 link-local address of `mac` (RFC 4291 appendix A): the one Linux and most routers make.
pub fn link_local_of(mac: MacAddr) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac.0;
    Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, a ^ 0x02, b, c, 0xff, 0xfe, d, e, f])
}

fn is_unicast(ip: Ipv6Addr) -> bool {
    !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast()
}

/// A host name made of letters, digits, hyphens and underscores (Kubernetes' search domains are such), each label
/// 1 to 63 bytes, at most 253 bytes in all, with an optional final dot.
fn is_domain_name(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Domain names in DNS wire format, never compressed: DHCPv6 (RFC 8415 §10) and the DNS search list option
/// (RFC 8106 §5.2) both forbid compression. The names must have passed [`Config::validate`].
pub(crate) fn wire_names(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for domain in domains {
        for label in domain.strip_suffix('.').unwrap_or(domain).split('.') {
            out.push(label.len() as u8); // at most 63 once validated
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(
            MacAddr([2, 0, 0, 0, 0, 1]),
            "fd00:10:244:1::7/128".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 0xfe]),
        )
    }

    #[test]
    fn duid_and_link_local_come_from_the_server_mac() {
        let mut c = config();
        c.server_mac = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(c.server_duid(), [0, 3, 0, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(
            c.server_link_local(),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn names_are_encoded_without_compression() {
        let names = ["svc.cluster.local".to_owned(), "cluster.local.".to_owned()];
        let mut expected = b"\x03svc\x07cluster\x05local\x00".to_vec();
        expected.extend_from_slice(b"\x07cluster\x05local\x00");
        assert_eq!(wire_names(&names), expected);
    }

    #[test]
    fn validation_accepts_a_pod_like_configuration() {
        let mut c = config();
        c.router = Some(Router {
            link_local: "fe80::1".parse().unwrap(),
            mac: Some(MacAddr([0xee; 6])),
        });
        c.dns = vec!["fd00:10:96::a".parse().unwrap()];
        c.search = vec!["default.svc.cluster.local".into(), "cluster.local.".into()];
        c.mtu = Some(1400);
        c.routes = vec!["fd00:10:96::/112".parse().unwrap()];
        assert_eq!(c.validate(), Ok(()));
        c.address = "2001:db8::5/64".parse().unwrap();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validation_rejects_what_cannot_be_served() {
        for bad in ["::/128", "::1/128", "ff02::1/128", "fe80::5/64"] {
            let mut c = config();
            c.address = bad.parse().unwrap();
            assert_eq!(c.validate(), Err(ConfigError::NotAHostAddress(c.address)), "{bad}");
        }
        let mut c = config();
        let global = "2001:db8::1".parse().unwrap();
        c.router = Some(Router {
            link_local: global,
            mac: None,
        });
        assert_eq!(c.validate(), Err(ConfigError::RouterNotLinkLocal(global)));
        let mut c = config();
        c.routes = vec!["ff00::/8".parse().unwrap()];
        assert!(matches!(c.validate(), Err(ConfigError::InvalidRoute(_))));
        let mut c = config();
        c.dns = vec![Ipv6Addr::UNSPECIFIED];
        assert_eq!(c.validate(), Err(ConfigError::InvalidDnsServer(Ipv6Addr::UNSPECIFIED)));
        let mut c = config();
        c.mtu = Some(1279);
        assert_eq!(c.validate(), Err(ConfigError::MtuTooSmall(1279)));
        let mut c = config();
        c.valid_lifetime = LeaseTime::Finite(std::time::Duration::from_secs(600));
        assert_eq!(c.validate(), Err(ConfigError::PreferredOutlivesValid));
        for bad in [
            "",
            ".",
            "a..b",
            "with space.org",
            &"x".repeat(64),
            &["abc"; 70].join("."),
        ] {
            let mut c = config();
            c.search = vec![bad.to_owned()];
            assert_eq!(c.validate(), Err(ConfigError::InvalidDomain(bad.to_owned())), "{bad:?}");
        }
    }

    #[test]
    fn an_advertisement_that_outgrows_the_minimum_mtu_is_refused() {
        let mut c = config();
        c.dns = (1..=80u16)
            .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))
            .collect();
        assert!(matches!(c.validate(), Err(ConfigError::AdvertisementTooLarge(len)) if len > 1240));
        c.dns.truncate(8);
        assert_eq!(c.validate(), Ok(()));
    }
}
