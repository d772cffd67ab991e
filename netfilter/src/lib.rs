//! nftables tables and tc ingress filters, each written as the tool's input and loaded by the tool, which applies
//! it at once: the launcher's bindings and standalone mode's pod networks share this one way of replacing them.
//!
//! What to load is pure text ([`Table::ruleset`], [`IngressFilters::batch`]), so plans are tested without root;
//! [`load_ruleset`] and [`load_batch`] run `nft -f -` and `tc -batch -`.
//!
//! The loaders block the calling thread on purpose: network namespaces are per thread, and the tool must run in the
//! caller's, which a task moved to another thread would not be in. Each tool takes milliseconds.

use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Either tool loads a few rules in milliseconds; anything near this means it hangs.
const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);

/// The tool could not apply its input.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {0}")]
    Spawn(&'static str, #[source] io::Error),
    #[error("{program} refused the rules ({status}): {stderr}")]
    Refused {
        program: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{0} did not finish within {TIMEOUT:?}")]
    TimedOut(&'static str),
}

/// An nftables address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
    Bridge,
}

impl Family {
    fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// One nftables table, owned whole by whoever loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// The chains, as `nft` reads them inside `table FAMILY NAME { ... }`.
    pub chains: String,
}

impl Table {
    /// The input that replaces the table: `add` makes the `delete` valid when the table does not exist yet, and the
    /// whole input is one transaction, so the old rules give way to the new at once and loading it again changes
    /// nothing.
    pub fn ruleset(&self) -> String {
        let (family, name, chains) = (self.family.keyword(), &self.name, &self.chains);
        format!("add table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{chains}}}\n")
    }
}

/// One filter of a link's ingress hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    /// What follows `prio N` in `tc filter add`: the protocol, the classifier and its action.
    pub spec: String,
}

/// All the ingress filters of one link, on a `clsact` qdisc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressFilters {
    pub link: String,
    pub filters: Vec<Filter>,
}

impl IngressFilters {
    /// The tc commands that leave the link with exactly these filters: every earlier ingress filter is deleted
    /// first, so loading them again changes nothing.
    pub fn batch(&self) -> String {
        let link = &self.link;
        let mut batch = format!("qdisc replace dev {link} clsact\nfilter del dev {link} ingress\n");
        for Filter { priority, spec } in &self.filters {
            batch.push_str(&format!("filter add dev {link} ingress prio {priority} {spec}\n"));
        }
        batch
    }
}

/// Replaces each table with [`Table::ruleset`], all in one transaction.
pub fn replace_tables(tables: &[Table]) -> Result<(), ToolError> {
    let ruleset: String = tables.iter().map(Table::ruleset).collect();
    load_ruleset(&ruleset)
}

/// Replaces each link's ingress filters, stopping at the first command that fails.
pub fn replace_ingress_filters(links: &[IngressFilters]) -> Result<(), ToolError> {
    let batch: String = links.iter().map(IngressFilters::batch).collect();
    load_batch(&batch)
}

/// Loads an nftables ruleset (`nft -f -`) in the calling thread's network namespace.
pub fn load_ruleset(ruleset: &str) -> Result<(), ToolError> {
    feed("nft", &["-f", "-"], ruleset)
}

/// Runs a batch of tc commands (`tc -batch -`) in the calling thread's network namespace.
pub fn load_batch(batch: &str) -> Result<(), ToolError> {
    feed("tc", &["-batch", "-"], batch)
}

/// Runs `program args` with `input` on its standard input.
fn feed(program: &'static str, args: &[&str], input: &str) -> Result<(), ToolError> {
    let spawn_error = |err| ToolError::Spawn(program, err);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let written = child
        .stdin
        .take()
        .map_or(Ok(()), |mut stdin| stdin.write_all(input.as_bytes()));
    // Closed above, so the tool sees the end of its input.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(spawn_error)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::TimedOut(program));
            }
            None => std::thread::sleep(POLL),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !status.success() {
        return Err(ToolError::Refused {
            program,
            status,
            stderr: stderr.trim_end().to_owned(),
        });
    }
    // A tool that exits successfully without reading all its input would be a surprise worth reporting.
    written.map_err(spawn_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_replaced_as_a_whole() {
        let table = Table {
            family: Family::Inet,
            name: "vmlet-nat".into(),
            chains: "    chain input {\n    }\n".into(),
        };
        assert_eq!(
            table.ruleset(),
            "add table inet vmlet-nat\ndelete table inet vmlet-nat\ntable inet vmlet-nat {\n    chain input {\n    }\n}\n"
        );
    }

    #[test]
    fn a_links_ingress_filters_are_replaced_as_a_whole() {
        let filters = IngressFilters {
            link: "tap0".into(),
            filters: vec![
                Filter {
                    priority: 1,
                    spec: "protocol ip u32 match ip protocol 17 0xff classid 1:1".into(),
                },
                Filter {
                    priority: 100,
                    spec: "protocol all matchall action drop".into(),
                },
            ],
        };
        assert_eq!(
            filters.batch(),
            "qdisc replace dev tap0 clsact\n\
             filter del dev tap0 ingress\n\
             filter add dev tap0 ingress prio 1 protocol ip u32 match ip protocol 17 0xff classid 1:1\n\
             filter add dev tap0 ingress prio 100 protocol all matchall action drop\n"
        );
    }

    #[test]
    fn a_tool_that_is_missing_or_refuses_is_an_error() {
        assert!(matches!(
            feed("vmlet-no-such-tool", &[], ""),
            Err(ToolError::Spawn("vmlet-no-such-tool", _))
        ));
        assert!(matches!(
            feed("false", &[], ""),
            Err(ToolError::Refused { program: "false", .. })
        ));
        assert!(feed("cat", &[], "input").is_ok());
    }
}
