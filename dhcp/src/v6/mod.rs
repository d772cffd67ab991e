//! IPv6 for the one guest: router advertisements and a DHCPv6 server, so that it gets the pod's IPv6 address, its
//! default route and DNS with no configuration of its own.
//!
//! The guest's address is the pod's exact address, so it comes over DHCPv6 (IA_NA) and router advertisements carry
//! the Managed flag and never an autonomous prefix (see [`ra`]). [`Advertiser`] (router advertisements) is a pure
//! core that knows nothing of sockets; [`frame`] builds and parses the Ethernet frames it travels in.

pub mod config;
pub mod frame;
pub mod ra;

pub use config::{Config, ConfigError, Router};
pub use ra::{Advertiser, InvalidSolicitation, Unanswered};
