//! `vmlet-launcher dhcp-serve`: the DHCP server alone, for operators and benchmarks.
//!
//! Once its sockets are bound, it logs one `INFO` event whose message is `serving`, with the fields `interface`,
//! `client_mac`, `address` and `server_id`; anything waiting for the server to be ready waits for that event. In the
//! default text format (with `NO_COLOR=1`; otherwise field names are wrapped in ANSI styling) the line reads
//!
//! ```text
//! 2026-01-01T00:00:00.000000Z  INFO vmlet_launcher::dhcp_serve: serving interface=eth0 client_mac=02:00:00:00:00:01 address=10.0.0.5/24 server_id=169.254.75.10
//! ```
//!
//! and with `--log-json` it is the line whose `fields.message` is `"serving"`. On SIGINT or SIGTERM the server
//! stops, logs the event `stopped` with its counters, and exits 0.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use vmlet_dhcp::runner::Runner;
use vmlet_dhcp::{LeaseTime, MacAddr, Route, ServerConfig, UserOption};

#[derive(clap::Args)]
pub struct Args {
    /// The interface to serve on.
    #[arg(long, value_name = "IF")]
    interface: String,
    /// The one client to answer; every other hardware address is ignored.
    #[arg(long, value_name = "MAC")]
    client_mac: MacAddr,
    /// The address handed to the client, with its prefix length.
    #[arg(long, value_name = "IP/PREFIX")]
    address: Ipv4Net,
    /// The client's default gateway.
    #[arg(long, value_name = "IP")]
    gateway: Option<Ipv4Addr>,
    /// A route besides the default one (gateway 0.0.0.0 for an on-link route); repeatable.
    #[arg(long = "route", value_name = "CIDR=GW")]
    routes: Vec<Route>,
    /// A DNS server; repeatable.
    #[arg(long, value_name = "IP")]
    dns: Vec<Ipv4Addr>,
    /// A DNS search domain; repeatable.
    #[arg(long, value_name = "DOMAIN")]
    search: Vec<String>,
    /// The domain name (option 15); defaults to the first search domain.
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// The client's host name.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// The client's interface MTU.
    #[arg(long, value_name = "N")]
    mtu: Option<u16>,
    /// An NTP server; repeatable.
    #[arg(long, value_name = "IP")]
    ntp: Vec<Ipv4Addr>,
    /// A raw option for every reply: decimal code, hexadecimal data (224=0a0b0c or 224=0a:0b:0c); repeatable.
    #[arg(long = "option", value_name = "CODE=HEX", value_parser = parse_user_option)]
    options: Vec<UserOption>,
    /// The server's own address (option 54 and the source of replies) [default: the interface's first IPv4 address]
    #[arg(long, value_name = "IP")]
    server_id: Option<Ipv4Addr>,
    /// The lease time in seconds [default: infinite]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    lease_secs: Option<u64>,
    /// A JSON file that keeps the lease across restarts.
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let server_id = match args.server_id {
        Some(id) => id,
        None => first_ipv4_address(&args.interface)?,
    };
    let config = ServerConfig {
        gateway: args.gateway,
        routes: args.routes,
        dns: args.dns,
        search: args.search,
        domain_name: args.domain,
        hostname: args.hostname,
        mtu: args.mtu,
        ntp: args.ntp,
        lease_time: args
            .lease_secs
            .map_or(LeaseTime::Infinite, |secs| LeaseTime::Finite(Duration::from_secs(secs))),
        user_options: args.options,
        ..ServerConfig::new(args.client_mac, args.address, server_id)
    };
    // Installed before the server says it is ready, so that a signal sent as soon as it does is not lost.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let runner = Runner::bind(config, &args.interface, args.state_file)?;
    let config = runner.config();
    info!(
        interface = %args.interface,
        client_mac = %config.client_mac,
        address = %config.address,
        server_id = %config.server_id,
        "serving"
    );
    let status = runner
        .run(async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
        .await;
    let counters = status.counters;
    info!(
        answered = counters.answered,
        naks = counters.naks,
        ignored = counters.ignored,
        malformed = counters.malformed,
        releases = counters.releases,
        declines = counters.declines,
        send_errors = status.send_errors,
        "stopped"
    );
    Ok(())
}

/// The interface's first IPv4 address, the natural server identifier.
fn first_ipv4_address(interface: &str) -> anyhow::Result<Ipv4Addr> {
    let mut exists = false;
    for entry in nix::ifaddrs::getifaddrs().context("cannot list the interface addresses")? {
        if entry.interface_name != interface {
            continue;
        }
        exists = true;
        if let Some(ipv4) = entry.address.as_ref().and_then(|address| address.as_sockaddr_in()) {
            return Ok(ipv4.ip());
        }
    }
    if exists {
        bail!("interface {interface:?} has no IPv4 address; pass --server-id")
    }
    bail!("interface {interface:?} not found")
}

fn parse_user_option(text: &str) -> Result<UserOption, String> {
    let invalid = || format!("expected CODE=HEX like 224=0a0b0c, got {text:?}");
    let (code, hex) = text.split_once('=').ok_or_else(invalid)?;
    let code = code.parse().map_err(|_| invalid())?;
    let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
    if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid());
    }
    let nibble = |digit: u8| (digit as char).to_digit(16).unwrap_or(0) as u8; // checked as hexadecimal above
    let data = digits
        .chunks(2)
        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
        .collect();
    Ok(UserOption { code, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_options_parse() {
        let option = parse_user_option("224=0a:0B0c").unwrap();
        assert_eq!(
            option,
            UserOption {
                code: 224,
                data: vec![0x0a, 0x0b, 0x0c]
            }
        );
        assert_eq!(parse_user_option("80=").unwrap(), UserOption { code: 80, data: vec![] });
        for bad in ["224", "256=00", "x=00", "224=0", "224=+1", "224=zz"] {
            assert!(parse_user_option(bad).is_err(), "{bad}");
        }
    }
}
