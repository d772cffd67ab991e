//! What the server hands out: one address to one client, and the options that go with it.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use vmlet_mac::{MacAddr, ParseMacError};

/// A static route handed to the client: traffic for `destination` goes through `gateway`
/// (`0.0.0.0` for a route on the client's link).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// A `CIDR=GATEWAY` route that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid route {0:?}: expected CIDR=GATEWAY like 10.96.0.0/12=10.244.0.1")]
pub struct ParseRouteError(String);

impl FromStr for Route {
    type Err = ParseRouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseRouteError(s.to_owned());
        let (destination, gateway) = s.split_once('=').ok_or_else(err)?;
        Ok(Route {
            destination: destination.parse::<Ipv4Net>().map_err(|_| err())?.trunc(),
            gateway: gateway.parse().map_err(|_| err())?,
        })
    }
}

/// How long the client may keep its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseTime {
    /// The address is the pod's for as long as the pod lives, so by default it never expires.
    Infinite,
    Finite(Duration),
}

impl LeaseTime {
    /// The value of option 51: whole seconds, with `0xffffffff` meaning infinite (RFC 2131 §3.3).
    pub fn as_secs(self) -> u32 {
        match self {
            LeaseTime::Infinite => u32::MAX,
            LeaseTime::Finite(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX - 1).max(1),
        }
    }
}

/// A raw option the operator wants every reply to carry, whether or not the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOption {
    pub code: u8,
    pub data: Vec<u8>,
}

/// Everything the server needs to answer its one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// The only client served; every other hardware address is ignored.
    pub client_mac: MacAddr,
    /// The client's address and prefix, usually the pod's own (a /32 is common).
    pub address: Ipv4Net,
    /// The default gateway; it may lie outside `address`'s subnet (Calico's 169.254.1.1).
    pub gateway: Option<Ipv4Addr>,
    /// Further routes besides the default one.
    pub routes: Vec<Route>,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    /// Option 15; when unset, the first search domain is used.
    pub domain_name: Option<String>,
    pub hostname: Option<String>,
    pub mtu: Option<u16>,
    pub ntp: Vec<Ipv4Addr>,
    /// The server's own address, sent as option 54 and used as the source of replies.
    pub server_id: Ipv4Addr,
    pub lease_time: LeaseTime,
    pub user_options: Vec<UserOption>,
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("the client address {0} is not a host address")]
    NotAHostAddress(Ipv4Net),
    #[error("the MTU {0} is below the IPv4 minimum of 68")]
    MtuTooSmall(u16),
    #[error("user option {0} is reserved by DHCP itself")]
    ReservedOption(u8),
    #[error("user option {0} carries {1} bytes; an option holds at most 255")]
    OptionTooLong(u8, usize),
    #[error("{0:?} is not a valid domain name")]
    InvalidDomain(String),
    #[error("the host name {0:?} is longer than 255 bytes")]
    HostnameTooLong(String),
}

impl ServerConfig {
    /// A configuration with only the mandatory parts; everything else is empty.
    pub fn new(client_mac: MacAddr, address: Ipv4Net, server_id: Ipv4Addr) -> Self {
        ServerConfig {
            client_mac,
            address,
            gateway: None,
            routes: Vec::new(),
            dns: Vec::new(),
            search: Vec::new(),
            domain_name: None,
            hostname: None,
            mtu: None,
            ntp: Vec::new(),
            server_id,
            lease_time: LeaseTime::Infinite,
            user_options: Vec::new(),
        }
    }

    /// Checks what the packet encoder would otherwise have to refuse or truncate at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ip = self.address.addr();
        let is_host =
            self.address.prefix_len() >= 31 || (ip != self.address.network() && ip != self.address.broadcast());
        if !is_host || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(ConfigError::NotAHostAddress(self.address));
        }
        if let Some(mtu) = self.mtu.filter(|&mtu| mtu < 68) {
            return Err(ConfigError::MtuTooSmall(mtu));
        }
        for option in &self.user_options {
            if RESERVED_OPTIONS.contains(&option.code) {
                return Err(ConfigError::ReservedOption(option.code));
            }
            if option.data.len() > 255 {
                return Err(ConfigError::OptionTooLong(option.code, option.data.len()));
            }
        }
        for domain in self.search.iter().chain(&self.domain_name) {
            if dhcproto::Name::from_str(domain).is_err() || domain.is_empty() {
                return Err(ConfigError::InvalidDomain(domain.clone()));
            }
        }
        if let Some(hostname) = self.hostname.as_ref().filter(|h| h.len() > 255) {
            return Err(ConfigError::HostnameTooLong(hostname.clone()));
        }
        Ok(())
    }

    /// The domain name (option 15): the configured one, or else the first search domain.
    pub fn effective_domain_name(&self) -> Option<&str> {
        self.domain_name.as_deref().or(self.search.first().map(String::as_str))
    }

    /// The routes for option 121, in the order the client installs them: an on-link route to a gateway outside the
    /// client's subnet first (a /32 pod with gateway 169.254.1.1 cannot reach it otherwise), then the configured
    /// routes, then the default route last.
    pub fn classless_routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        let off_link = |gw: Ipv4Addr| !gw.is_unspecified() && !self.address.contains(&gw);
        let gateways = self.routes.iter().map(|r| r.gateway).chain(self.gateway);
        for gateway in gateways.filter(|&gw| off_link(gw)) {
            let on_link = Route {
                destination: Ipv4Net::from(gateway),
                gateway: Ipv4Addr::UNSPECIFIED,
            };
            if !routes.contains(&on_link) {
                routes.push(on_link);
            }
        }
        for route in self.routes.iter().filter(|r| r.destination.prefix_len() != 0) {
            if !routes.contains(route) {
                routes.push(*route);
            }
        }
        if let Some(gateway) = self.gateway {
            routes.push(Route {
                destination: Ipv4Net::default(),
                gateway,
            });
        }
        routes
    }
}

/// Options the server composes itself and that an operator therefore may not override.
const RESERVED_OPTIONS: [u8; 9] = [0, 50, 51, 52, 53, 54, 55, 57, 255];

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: &str) -> ServerConfig {
        ServerConfig::new(
            MacAddr([2, 0, 0, 0, 0, 1]),
            address.parse().unwrap(),
            "169.254.75.10".parse().unwrap(),
        )
    }

    #[test]
    fn route_parses() {
        let route: Route = "10.96.0.1/12=10.244.0.1".parse().unwrap();
        assert_eq!(route.destination, "10.96.0.0/12".parse().unwrap());
        assert_eq!(route.gateway, Ipv4Addr::new(10, 244, 0, 1));
        assert!("10.96.0.0/12".parse::<Route>().is_err());
        assert!("10.96.0.0/40=1.1.1.1".parse::<Route>().is_err());
    }

    #[test]
    fn lease_time_in_seconds() {
        assert_eq!(LeaseTime::Infinite.as_secs(), u32::MAX);
        assert_eq!(LeaseTime::Finite(Duration::from_secs(3600)).as_secs(), 3600);
        assert_eq!(LeaseTime::Finite(Duration::from_secs(u64::MAX)).as_secs(), u32::MAX - 1);
        assert_eq!(LeaseTime::Finite(Duration::ZERO).as_secs(), 1);
    }

    #[test]
    fn validation_rejects_what_cannot_be_served() {
        assert_eq!(config("10.0.0.5/24").validate(), Ok(()));
        assert_eq!(config("10.0.0.5/32").validate(), Ok(()));
        assert_eq!(
            config("10.0.0.0/24").validate(),
            Err(ConfigError::NotAHostAddress("10.0.0.0/24".parse().unwrap()))
        );
        assert!(config("10.0.0.255/24").validate().is_err());
        let mut c = config("10.0.0.5/24");
        c.mtu = Some(60);
        assert_eq!(c.validate(), Err(ConfigError::MtuTooSmall(60)));
        let mut c = config("10.0.0.5/24");
        c.user_options.push(UserOption {
            code: 53,
            data: vec![1],
        });
        assert_eq!(c.validate(), Err(ConfigError::ReservedOption(53)));
        let mut c = config("10.0.0.5/24");
        c.user_options.push(UserOption {
            code: 224,
            data: vec![0; 256],
        });
        assert_eq!(c.validate(), Err(ConfigError::OptionTooLong(224, 256)));
        let mut c = config("10.0.0.5/24");
        c.search.push("bad..domain".into());
        assert!(matches!(c.validate(), Err(ConfigError::InvalidDomain(_))));
    }

    #[test]
    fn off_link_gateway_gets_an_on_link_route_and_default_comes_last() {
        let mut c = config("10.244.1.7/32");
        c.gateway = Some(Ipv4Addr::new(169, 254, 1, 1));
        c.routes.push("10.96.0.0/12=169.254.1.1".parse().unwrap());
        let routes = c.classless_routes();
        let text: Vec<String> = routes
            .iter()
            .map(|r| format!("{}={}", r.destination, r.gateway))
            .collect();
        assert_eq!(
            text,
            [
                "169.254.1.1/32=0.0.0.0",
                "10.96.0.0/12=169.254.1.1",
                "0.0.0.0/0=169.254.1.1"
            ]
        );
    }

    #[test]
    fn an_on_link_route_given_too_is_not_repeated() {
        let mut c = config("10.244.1.7/32");
        c.gateway = Some(Ipv4Addr::new(169, 254, 1, 1));
        c.routes.push("169.254.1.1/32=0.0.0.0".parse().unwrap());
        let text: Vec<String> = c
            .classless_routes()
            .iter()
            .map(|r| format!("{}={}", r.destination, r.gateway))
            .collect();
        assert_eq!(text, ["169.254.1.1/32=0.0.0.0", "0.0.0.0/0=169.254.1.1"]);
    }

    #[test]
    fn on_link_gateway_needs_no_extra_route() {
        let mut c = config("10.244.1.7/24");
        c.gateway = Some(Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(
            c.classless_routes(),
            [Route {
                destination: Ipv4Net::default(),
                gateway: Ipv4Addr::new(10, 244, 1, 1)
            }]
        );
    }

    #[test]
    fn domain_name_falls_back_to_first_search_domain() {
        let mut c = config("10.0.0.5/24");
        assert_eq!(c.effective_domain_name(), None);
        c.search = vec!["ns.svc.cluster.local".into(), "cluster.local".into()];
        assert_eq!(c.effective_domain_name(), Some("ns.svc.cluster.local"));
        c.domain_name = Some("example.org".into());
        assert_eq!(c.effective_domain_name(), Some("example.org"));
    }
}
