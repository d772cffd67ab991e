//! IPv6 for the one guest: router advertisements and a DHCPv6 server, so that it gets the pod's IPv6 address, its
//! default route and DNS with no configuration of its own.
//!
//! The guest's address is the pod's exact address, so it comes over DHCPv6 (IA_NA) and router advertisements carry
//! the Managed flag and never an autonomous prefix (see [`ra`]). [`Server`] (DHCPv6) and [`Advertiser`] (router
//! advertisements) are pure cores that know nothing of sockets; [`frame`] builds and parses the Ethernet frames
//! they travel in; the [`runner`] puts both on the guest-facing interface.

pub mod config;
pub mod frame;
pub mod ra;
pub mod runner;
pub mod server;
mod wire;

pub use config::{Config, ConfigError, Router};
pub use ra::{Advertiser, InvalidSolicitation, Unanswered};
pub use server::{Ignored, Lease, Outcome, Reply, ReplyKind, Request, Server, Verdict};
pub use wire::Malformed;

use serde::Serialize;

/// How many DHCPv6 messages the server has seen, by what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub answered: u64,
    /// Replies that told the client an address it holds is not its own.
    pub refused: u64,
    pub ignored: u64,
    pub malformed: u64,
    pub releases: u64,
    pub declines: u64,
}

impl Counters {
    pub fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Reply(reply) => {
                self.answered += 1;
                self.refused += u64::from(reply.verdict == Verdict::Refused);
                self.releases += u64::from(reply.request == Request::Release);
                self.declines += u64::from(reply.request == Request::Decline);
            }
            Outcome::Ignored(_) => self.ignored += 1,
            Outcome::Malformed(_) => self.malformed += 1,
        }
    }
}
