//! A DHCPv4 server for exactly one client: the guest of a VM pod, which it gives the pod's own address.
//!
//! [`Server`] is the pure core (request bytes in, reply bytes out) and knows nothing of sockets; the
//! [`runner`] puts it on an interface.

mod checksum;
pub mod config;
pub mod frame;
pub mod runner;
pub mod server;
pub mod v6;
mod wire;

pub use config::{ConfigError, LeaseTime, MacAddr, Route, ServerConfig, UserOption};
pub use server::{
    ClientNotice, Destination, Ignored, Lease, LeaseState, Outcome, Reply, ReplyKind, Request, RequestState, Server,
};
pub use wire::Malformed;

use serde::Serialize;

/// How many packets the server has seen, by what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub answered: u64,
    pub naks: u64,
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
                if reply.kind == ReplyKind::Nak {
                    self.naks += 1;
                }
            }
            Outcome::Recorded(ClientNotice::Released) => self.releases += 1,
            Outcome::Recorded(ClientNotice::Declined) => self.declines += 1,
            Outcome::Ignored(_) => self.ignored += 1,
            Outcome::Malformed(_) => self.malformed += 1,
        }
    }
}
