//! `vmlet-bench dhcp`: `vmlet-launcher dhcp-serve` and dnsmasq serve the same single host with the same options
//! on the same veth pair, one after the other, taking turns in batches so that a slow spell of the machine hurts
//! both alike. A client in the other namespace times full exchanges; each server's memory is read after its batch.
//! A third contestant, the floor, answers with canned replies: what it takes is what no server can go below on
//! this machine, and what a server takes beyond it is its own work.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nix::sys::signal::Signal;
use serde::Serialize;
use vmlet_testkit::{Child, NetNs, ScratchDir, VethEnd, binary, poll_until, veth};

use crate::client::Client;
use crate::stats::{Latency, Memory};

#[derive(clap::Args)]
pub struct Args {
    /// Measured exchanges per server.
    #[arg(long, default_value_t = 2000)]
    exchanges: usize,
    /// Batches per server: each batch runs on a freshly started server, the servers taking turns.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    batches: u16,
    /// Exchanges at the start of each batch that are not measured.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Both servers log only warnings, instead of a line per DHCP message.
    #[arg(long)]
    quiet: bool,
    /// Give up if the whole run takes longer than this many seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A `vmlet-launcher` executable to measure [default: the one next to this program, or in $VMLET_BIN_DIR];
    /// repeatable, to compare builds in one run (the ratio row compares the first with dnsmasq).
    #[arg(long = "launcher", value_name = "PATH")]
    launchers: Vec<PathBuf>,
    /// After the table, where each server's resident pages were at the end of its last batch, mapping by mapping
    /// (from `/proc/PID/smaps`; always in the JSON report).
    #[arg(long)]
    breakdown: bool,
}

// The host both servers serve. The server end of the veth has only a link-local address, as in a pod whose
// address went to its guest.
const SERVER_IF: &str = "srv0";
pub(crate) const CLIENT_IF: &str = "cli0";
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC_TEXT: &str = "02:00:00:00:00:01";
const SERVER_ID: &str = "169.254.75.10";
const ADDRESS: &str = "10.0.0.5";
const PREFIX: u8 = 24;
const NETMASK: &str = "255.255.255.0";
const GATEWAY: &str = "10.0.0.1";
const DNS: &str = "10.0.0.53";
const SEARCH: &str = "example.test";
const MTU: u16 = 1400;
const ROUTE: &str = "10.96.0.0/12";

/// Lost exchanges a batch tolerates before the run is called off as broken.
const MAX_LOST_PER_BATCH: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Server {
    /// `vmlet-launcher dhcp-serve`, from this executable.
    Vmlet(PathBuf),
    Dnsmasq,
    /// Not a server: the floor every server's latency sits on (see [`crate::floor`]).
    Floor,
}

impl Server {
    /// `label` tells apart several vmlet builds in one run.
    fn name(&self, label: Option<&str>) -> String {
        match (self, label) {
            (Server::Vmlet(_), None) => "vmlet dhcp-serve".to_owned(),
            (Server::Vmlet(_), Some(label)) => format!("vmlet {label}"),
            (Server::Dnsmasq, _) => "dnsmasq".to_owned(),
            (Server::Floor, _) => "floor (canned)".to_owned(),
        }
    }

    fn version(&self) -> anyhow::Result<String> {
        let program = match self {
            Server::Vmlet(path) => path.clone(),
            Server::Dnsmasq => "dnsmasq".into(),
            Server::Floor => return Ok("vmlet-bench dhcp-floor: canned replies, no server logic".to_owned()),
        };
        let output = vmlet_testkit::output_within(Command::new(&program).arg("--version"), Duration::from_secs(10))
            .with_context(|| format!("cannot run {}", program.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    fn start(&self, name: &str, server_ns: &NetNs, scratch: &ScratchDir, quiet: bool) -> anyhow::Result<Child> {
        let mut command = match self {
            Server::Vmlet(path) => vmlet_command(path, server_ns, quiet),
            Server::Dnsmasq => dnsmasq_command(server_ns, scratch, quiet),
            Server::Floor => floor_command(server_ns)?,
        };
        Ok(Child::spawn(name, &mut command))
    }
}

/// `vmlet-launcher dhcp-serve` serving the benchmark's host.
fn vmlet_command(launcher: &Path, ns: &NetNs, quiet: bool) -> Command {
    let mut command = ns.exec(launcher);
    command.args(dhcp_serve_args());
    command
        .env("VMLET_LOG", if quiet { "warn" } else { "info" })
        .env("NO_COLOR", "1");
    command
}

/// The arguments of `vmlet-launcher` that serve the benchmark's host.
pub(crate) fn dhcp_serve_args() -> [String; 10] {
    [
        "dhcp-serve".to_owned(),
        format!("--interface={SERVER_IF}"),
        format!("--client-mac={CLIENT_MAC_TEXT}"),
        format!("--address={ADDRESS}/{PREFIX}"),
        format!("--gateway={GATEWAY}"),
        format!("--dns={DNS}"),
        format!("--search={SEARCH}"),
        format!("--mtu={MTU}"),
        format!("--route={ROUTE}={GATEWAY}"),
        format!("--server-id={SERVER_ID}"),
    ]
}

/// This program's canned responder, in the server's place.
fn floor_command(ns: &NetNs) -> anyhow::Result<Command> {
    let mut command = ns.exec(std::env::current_exe().context("cannot find this program")?);
    command.args([
        "dhcp-floor".to_owned(),
        format!("--interface={SERVER_IF}"),
        format!("--server-id={SERVER_ID}"),
        format!("--address={ADDRESS}"),
        format!("--client-mac={CLIENT_MAC_TEXT}"),
    ]);
    Ok(command)
}

/// dnsmasq serving the benchmark's host, with the same options as [`vmlet_command`].
fn dnsmasq_command(ns: &NetNs, scratch: &ScratchDir, quiet: bool) -> Command {
    let mut command = ns.exec("dnsmasq");
    command.args([
        // In the foreground as in production (not `--no-daemon`, its debug mode), logging to stderr.
        "--keep-in-foreground".to_owned(),
        "--log-facility=-".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        format!("--pid-file={}", scratch.join("dnsmasq.pid").display()),
        "--port=0".to_owned(),
        "--no-ping".to_owned(),
        "--dhcp-authoritative".to_owned(),
        "--leasefile-ro".to_owned(),
        format!("--interface={SERVER_IF}"),
        "--bind-interfaces".to_owned(),
        // The interface has no address in the subnet.
        format!("--shared-network={SERVER_IF},{ADDRESS}"),
        format!("--dhcp-range={ADDRESS},static,{NETMASK}"),
        format!("--dhcp-host={CLIENT_MAC_TEXT},{ADDRESS},infinite"),
        format!("--dhcp-option=option:router,{GATEWAY}"),
        format!("--dhcp-option=option:dns-server,{DNS}"),
        format!("--dhcp-option=option:domain-name,{SEARCH}"),
        format!("--dhcp-option=option:domain-search,{SEARCH}"),
        format!("--dhcp-option=option:mtu,{MTU}"),
        format!("--dhcp-option=option:classless-static-route,{ROUTE},{GATEWAY},0.0.0.0/0,{GATEWAY}"),
    ]);
    if quiet {
        command.arg("--quiet-dhcp");
    }
    command
}

/// What one server did over the whole run.
#[derive(Serialize)]
struct ServerResult {
    name: String,
    version: String,
    latency: Option<Latency>,
    lost: usize,
    /// Read at the end of the last batch.
    memory: Option<Memory>,
    /// Where `memory` was, read at the same time.
    regions: Vec<Region>,
    ack_bytes: usize,
    #[serde(skip)]
    samples: Vec<Duration>,
}

/// dnsmasq's figures divided by vmlet's: above 1, vmlet is faster or smaller.
#[derive(Serialize)]
struct Ratios {
    median: f64,
    p99: f64,
    mean: f64,
    rss: f64,
    pss: f64,
    anonymous: f64,
}

#[derive(Serialize)]
struct Report {
    exchanges: usize,
    batches: u16,
    warmup_per_batch: usize,
    quiet: bool,
    servers: Vec<ServerResult>,
    dnsmasq_over_vmlet: Option<Ratios>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark creates network namespaces: run it as root"
    );
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let (server_ns, client_ns) = namespaces();
    let scratch = ScratchDir::new();

    let launchers = match args.launchers.as_slice() {
        [] => vec![binary("vmlet-launcher")],
        paths => paths.to_vec(),
    };
    // The first build, then dnsmasq, then the others: the ratio row compares the first two.
    let mut servers = vec![Server::Vmlet(launchers[0].clone()), Server::Dnsmasq, Server::Floor];
    servers.extend(launchers[1..].iter().cloned().map(Server::Vmlet));
    let several = launchers.len() > 1;
    let mut results = Vec::new();
    for server in &servers {
        let label = match server {
            Server::Vmlet(path) if several => Some(path.display().to_string()),
            _ => None,
        };
        results.push(ServerResult {
            name: server.name(label.as_deref()),
            version: server.version()?,
            latency: None,
            lost: 0,
            memory: None,
            regions: Vec::new(),
            ack_bytes: 0,
            samples: Vec::new(),
        });
    }
    let per_batch = args.exchanges.div_ceil(usize::from(args.batches));
    let mut xid = 0x7600_0000;
    for batch in 0..args.batches {
        // Forwards, then backwards: no server always runs right after the same other one.
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if batch % 2 == 1 {
            order.reverse();
        }
        for index in order {
            ensure!(
                Instant::now() < deadline,
                "the run took longer than {} s",
                args.max_seconds
            );
            let server = &servers[index];
            let result = &mut results[index];
            let process = server.start(&result.name, &server_ns, &scratch, args.quiet)?;
            wait_listening(&server_ns, &process)?;
            let batch_result = run_batch(&client_ns, xid, args.warmup, per_batch)
                .with_context(|| format!("batch {} against {}", batch + 1, result.name))?;
            xid += (args.warmup + per_batch) as u32;
            let (memory, regions) = stop(process).with_context(|| result.name.clone())?;
            result.memory = Some(memory);
            result.regions = regions;
            result.samples.extend(batch_result.samples);
            result.lost += batch_result.lost;
            result.ack_bytes = batch_result.ack_bytes;
        }
    }
    for result in &mut results {
        result.latency = Latency::of(&result.samples);
    }
    let report = Report {
        exchanges: per_batch * usize::from(args.batches),
        batches: args.batches,
        warmup_per_batch: args.warmup,
        quiet: args.quiet,
        dnsmasq_over_vmlet: ratios(&results[0], &results[1]),
        servers: results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        if args.breakdown {
            print_regions(&report);
        }
    }
    Ok(())
}

/// The server's namespace and the client's, joined by a veth pair: the server end has only a link-local address.
pub(crate) fn namespaces() -> (NetNs, NetNs) {
    let server_ns = NetNs::new();
    let client_ns = NetNs::new();
    veth::link(
        &server_ns,
        &VethEnd::named(SERVER_IF).address(&format!("{SERVER_ID}/32")),
        &client_ns,
        &VethEnd::named(CLIENT_IF).mac(CLIENT_MAC_TEXT),
    );
    (server_ns, client_ns)
}

/// Waits until a UDP socket listens on port 67 in the server's namespace: how ready looks from outside, the same
/// for both servers.
pub(crate) fn wait_listening(ns: &NetNs, server: &Child) -> anyhow::Result<()> {
    wait_listening_within(ns, server, Duration::from_secs(10))
}

pub(crate) fn wait_listening_within(ns: &NetNs, server: &Child, timeout: Duration) -> anyhow::Result<()> {
    let listening = poll_until("a socket on UDP port 67", timeout, Duration::from_millis(5), || {
        let sockets = ns.run("ss", &["-H", "-u", "-l", "-n", "sport = :67"]);
        (!sockets.trim().is_empty()).then_some(())
    });
    listening.map_err(|err| anyhow::anyhow!("{err}\n{}", server.output()))
}

/// Stops a server, and returns its memory as it was just before, and where it was.
fn stop(mut server: Child) -> anyhow::Result<(Memory, Vec<Region>)> {
    let memory = Memory::of(server.pid()).context("cannot read the server's memory")?;
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", server.pid()))
        .context("cannot read the server's memory map")?;
    let status = server.terminate();
    // The floor has no SIGTERM handler.
    let terminated = status.signal() == Some(Signal::SIGTERM as i32);
    ensure!(
        status.success() || terminated,
        "exited with {status} on SIGTERM:\n{}",
        server.output()
    );
    Ok((memory, resident_regions(&smaps)))
}

pub(crate) struct BatchResult {
    pub(crate) samples: Vec<Duration>,
    lost: usize,
    ack_bytes: usize,
}

/// Runs `warmup` unmeasured and then `measured` exchanges from the client namespace, on a thread of its own (the
/// namespace switch is per thread).
pub(crate) fn run_batch(ns: &NetNs, first_xid: u32, warmup: usize, measured: usize) -> anyhow::Result<BatchResult> {
    let netns = format!("/run/netns/{}", ns.name());
    let client = std::thread::spawn(move || {
        let mut client = Client::open_in(&netns, CLIENT_IF, CLIENT_MAC)?;
        let mut result = BatchResult {
            samples: Vec::with_capacity(measured),
            lost: 0,
            ack_bytes: 0,
        };
        for i in 0..warmup + measured {
            let Some(exchange) = client.exchange(first_xid + i as u32)? else {
                result.lost += 1;
                ensure!(
                    result.lost <= MAX_LOST_PER_BATCH,
                    "more than {MAX_LOST_PER_BATCH} exchanges lost"
                );
                continue;
            };
            if exchange.address.to_string() != ADDRESS {
                bail!("the server offered {} instead of {ADDRESS}", exchange.address);
            }
            result.ack_bytes = exchange.ack_len;
            if i >= warmup {
                result.samples.push(exchange.elapsed);
            }
        }
        Ok(result)
    });
    client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

fn ratios(vmlet: &ServerResult, dnsmasq: &ServerResult) -> Option<Ratios> {
    let (ours, theirs) = (vmlet.latency?, dnsmasq.latency?);
    let (our_memory, their_memory) = (vmlet.memory?, dnsmasq.memory?);
    Some(Ratios {
        median: theirs.median_us / ours.median_us,
        p99: theirs.p99_us / ours.p99_us,
        mean: theirs.mean_us / ours.mean_us,
        rss: their_memory.rss_kib as f64 / our_memory.rss_kib as f64,
        pss: their_memory.pss_kib as f64 / our_memory.pss_kib as f64,
        anonymous: their_memory.anonymous_kib as f64 / our_memory.anonymous_kib as f64,
    })
}

fn print_table(report: &Report) {
    println!(
        "DHCP DISCOVER→ACK over a veth pair: {} measured exchanges per server in {} batches ({} warm-up each), \
         logging {}",
        report.exchanges,
        report.batches,
        report.warmup_per_batch,
        if report.quiet { "warnings only" } else { "every message" }
    );
    println!();
    let mut rows = vec![
        [
            "server",
            "median µs",
            "p99 µs",
            "mean µs",
            "lost",
            "RSS KiB",
            "PSS KiB",
            "anon KiB",
            "ACK B",
        ]
        .map(str::to_owned),
    ];
    let dash = || "-".to_owned();
    for server in &report.servers {
        let (latency, memory) = (server.latency, server.memory);
        rows.push([
            server.name.clone(),
            latency.map_or_else(dash, |l| format!("{:.0}", l.median_us)),
            latency.map_or_else(dash, |l| format!("{:.0}", l.p99_us)),
            latency.map_or_else(dash, |l| format!("{:.0}", l.mean_us)),
            server.lost.to_string(),
            memory.map_or_else(dash, |m| m.rss_kib.to_string()),
            memory.map_or_else(dash, |m| m.pss_kib.to_string()),
            memory.map_or_else(dash, |m| m.anonymous_kib.to_string()),
            server.ack_bytes.to_string(),
        ]);
    }
    if let Some(r) = &report.dnsmasq_over_vmlet {
        let times = |ratio: f64| format!("{ratio:.2}x");
        let (median, p99, mean) = (times(r.median), times(r.p99), times(r.mean));
        let (rss, pss, anonymous) = (times(r.rss), times(r.pss), times(r.anonymous));
        rows.push([
            "dnsmasq / vmlet".to_owned(),
            median,
            p99,
            mean,
            String::new(),
            rss,
            pss,
            anonymous,
            String::new(),
        ]);
    }
    let width = rows.iter().map(|row| row[0].chars().count()).max().unwrap_or(0);
    for row in rows {
        let cells: String = row[1..].iter().map(|cell| format!(" {cell:>9}")).collect();
        println!("{:<width$}{cells}", row[0]);
    }
    println!();
    for server in &report.servers {
        println!("{}: {}", server.name, server.version);
    }
}

fn print_regions(report: &Report) {
    for server in &report.servers {
        println!();
        println!("{}: resident KiB (anonymous KiB) by mapping", server.name);
        for region in &server.regions {
            println!(
                "  {:<28} {} {:>6} {:>6}",
                region.name, region.perms, region.rss_kib, region.anonymous_kib
            );
        }
    }
}

/// Resident pages of consecutive mappings of one file (or of one kind of anonymous memory) with the same
/// permissions, as `/proc/PID/smaps` shows them: an executable's or a library's code (`r-xp`), its read-only data
/// (`r--p`: after relocation, its `.data.rel.ro` is anonymous), its writable data (`rw-p`), the heap, stacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Region {
    /// A file's name without its directory, `[heap]`, `[stack]`, `[vdso]`..., or `[anon]` for an unnamed mapping.
    name: String,
    perms: String,
    rss_kib: u64,
    anonymous_kib: u64,
}

/// The regions of `/proc/PID/smaps` that hold resident pages, in address order; neighbouring mappings of the same
/// name and permissions are added together.
fn resident_regions(smaps: &str) -> Vec<Region> {
    let mut regions: Vec<Region> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if !first.ends_with(':') {
            // A mapping's header: range, permissions, offset, device, inode, and maybe a name.
            let perms = fields.next().unwrap_or_default().to_owned();
            let name = match fields.nth(3) {
                Some(path) if path.starts_with('/') => path.rsplit('/').next().unwrap_or(path).to_owned(),
                Some(name) => name.to_owned(),
                None => "[anon]".to_owned(),
            };
            match regions.last() {
                Some(last) if last.name == name && last.perms == perms => {}
                _ => regions.push(Region {
                    name,
                    perms,
                    rss_kib: 0,
                    anonymous_kib: 0,
                }),
            }
            continue;
        }
        let Some(region) = regions.last_mut() else { continue };
        let kib: u64 = fields.next().and_then(|value| value.parse().ok()).unwrap_or(0);
        match first {
            "Rss:" => region.rss_kib += kib,
            "Anonymous:" => region.anonymous_kib += kib,
            _ => {}
        }
    }
    regions.retain(|region| region.rss_kib > 0);
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_add_up_neighbouring_mappings() {
        let smaps = "\
5600-5640 r--p 00000000 fe:01 42 /usr/bin/server
Size:                256 kB
Rss:                 128 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5640-5680 r-xp 00040000 fe:01 42 /usr/bin/server
Rss:                 200 kB
Anonymous:             0 kB
5680-5690 r--p 00080000 fe:01 42 /usr/bin/server
Rss:                  60 kB
Anonymous:            60 kB
5690-56a0 r--p 00090000 fe:01 42 /usr/bin/server
Rss:                   4 kB
Anonymous:             4 kB
56a0-56b0 rw-p 00000000 00:00 0
Rss:                   0 kB
Anonymous:             0 kB
7f00-7f10 rw-p 00000000 00:00 0 [heap]
Rss:                 132 kB
Anonymous:           132 kB
7f10-7f20 rw-p 00000000 00:00 0
Rss:                   8 kB
Anonymous:             8 kB
";
        let region = |name: &str, perms: &str, rss_kib, anonymous_kib| Region {
            name: name.to_owned(),
            perms: perms.to_owned(),
            rss_kib,
            anonymous_kib,
        };
        assert_eq!(
            resident_regions(smaps),
            [
                region("server", "r--p", 128, 0),
                region("server", "r-xp", 200, 0),
                region("server", "r--p", 64, 64),
                region("[heap]", "rw-p", 132, 132),
                region("[anon]", "rw-p", 8, 8),
            ]
        );
    }
}
