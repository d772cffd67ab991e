//! The driver's side of the protocol (`vmlet_domain::protocol`): requests from stdin, answered in order on stdout,
//! where state changes also go as they happen.

use std::io::{self, BufRead, Write};
use std::time::Instant;

use vmlet_domain::protocol::{Command, Event, Request, to_line};

use crate::libvirt::{Domain, Driver};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read a request")]
    Read(#[source] io::Error),
    #[error("not a request: {line:?}")]
    BadRequest {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write an event")]
    Write(#[source] io::Error),
}

/// What this process runs: nothing until a start request, then one domain.
#[derive(Default)]
pub struct Server {
    // Dropped before the driver, which then destroys the domain if it still runs.
    domain: Option<Domain>,
    driver: Option<Driver>,
}

impl Server {
    /// Answers requests until `input` ends, when the launcher has gone.
    pub fn serve(&mut self, input: impl BufRead) -> Result<(), ServeError> {
        for line in input.lines() {
            let line = line.map_err(ServeError::Read)?;
            let request: Request =
                serde_json::from_str(&line).map_err(|source| ServeError::BadRequest { line, source })?;
            self.handle(request)?;
        }
        Ok(())
    }

    fn handle(&mut self, Request { id, command }: Request) -> Result<(), ServeError> {
        let result = match command {
            Command::Start {
                domain,
                run_dir,
                cache_dir,
            } => {
                if self.driver.is_some() {
                    Err("this driver has started its domain already".to_owned())
                } else {
                    return self.start(id, &domain, &run_dir, &cache_dir);
                }
            }
            Command::Shutdown => self.act(Domain::shutdown),
            Command::Destroy => self.act(Domain::destroy),
            Command::Pause => self.act(Domain::pause),
            Command::Resume => self.act(Domain::resume),
        };
        send(&match result {
            Ok(()) => Event::Done { id },
            Err(message) => Event::Error { id, message },
        })
    }

    fn act(&self, action: fn(&Domain) -> Result<(), crate::libvirt::DriverError>) -> Result<(), String> {
        let domain = self.domain.as_ref().ok_or("no domain has been started")?;
        action(domain).map_err(|error| chain(&error))
    }

    fn start(
        &mut self,
        id: u64,
        spec: &vmlet_domain::DomainSpec,
        run_dir: &std::path::Path,
        cache_dir: &std::path::Path,
    ) -> Result<(), ServeError> {
        let started = Instant::now();
        let driver = match Driver::start(run_dir, cache_dir) {
            Ok(driver) => driver,
            Err(error) => return send(&error_event(id, &error)),
        };
        send(&Event::Ready {
            id,
            qemu_version: driver.qemu_version().to_owned(),
            elapsed_ms: elapsed_ms(started),
        })?;
        let driver = self.driver.insert(driver);
        let started = Instant::now();
        // Held until `started` is out, so that no state change precedes it.
        let mut out = io::stdout().lock();
        let on_change = |state| send(&Event::State { state }).is_ok();
        match driver.define_and_start(spec, on_change) {
            Ok(domain) => {
                self.domain = Some(domain);
                write_event(
                    &mut out,
                    &Event::Started {
                        id,
                        elapsed_ms: elapsed_ms(started),
                    },
                )
            }
            Err(error) => write_event(&mut out, &error_event(id, &error)),
        }
    }
}

fn error_event(id: u64, error: &dyn std::error::Error) -> Event {
    Event::Error {
        id,
        message: chain(error),
    }
}

/// An error and its sources, as one line: `cannot start domain vm1: internal error: ...`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        message.push_str(": ");
        message.push_str(&error.to_string());
        source = error.source();
    }
    message
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Writes one event to stdout, whose lock keeps lines from two threads apart.
fn send(event: &Event) -> Result<(), ServeError> {
    write_event(&mut io::stdout().lock(), event)
}

fn write_event(out: &mut impl Write, event: &Event) -> Result<(), ServeError> {
    let line = to_line(event).map_err(|error| ServeError::Write(error.into()))?;
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ServeError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start domain vm1")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("internal error: no")]
    struct Inner;

    #[test]
    fn error_messages_carry_their_sources() {
        assert_eq!(chain(&Outer(Inner)), "cannot start domain vm1: internal error: no");
        assert_eq!(chain(&Inner), "internal error: no");
    }
}
