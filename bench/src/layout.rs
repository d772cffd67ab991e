//! `vmlet-bench dhcp-layout`: writes `launcher/dhcp-serve.ld`, the linker script that places the functions
//! `vmlet-launcher dhcp-serve` runs first and together in the launcher's code (see `launcher/build.rs`).
//!
//! It runs the server under Valgrind's callgrind in the `dhcp` benchmark's setup, makes it serve some exchanges,
//! stops it with SIGTERM, and lists every function of the launcher that ran, from start to exit. Each becomes a
//! pattern for its input section (`.text.SYMBOL`, one per function): the v0 symbol names (`.cargo/config.toml`)
//! spell out a function's path and type arguments, and the pattern leaves out only the hashes in them, which change
//! with the compiler, a dependency's version or features. So the script keeps matching as the code changes, and a
//! function it no longer names is only placed elsewhere, as it would be without the script.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use vmlet_testkit::{Child, ScratchDir, binary};

use crate::dhcp;

#[derive(clap::Args)]
pub struct Args {
    /// The `vmlet-launcher` to profile: a release build, like the one the layout is for [default: the one next to
    /// this program, or in $VMLET_BIN_DIR].
    #[arg(long, value_name = "PATH")]
    launcher: Option<PathBuf>,
    /// Where to write the linker script [default: launcher/dhcp-serve.ld in this source tree].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Exchanges the profiled server answers.
    #[arg(long, default_value_t = 20)]
    exchanges: usize,
}

/// Startup under Valgrind takes seconds, more on a busy machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The environments the server is profiled in: the code it runs differs with how it logs. Each is one run.
const ENVIRONMENTS: [&[(&str, &str)]; 3] = [&[], &[("VMLET_LOG", "warn")], &[("VMLET_LOG_JSON", "1")]];

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the profile run creates network namespaces: run it as root"
    );
    let launcher = args.launcher.clone().unwrap_or_else(|| binary("vmlet-launcher"));
    let launcher = launcher
        .canonicalize()
        .with_context(|| format!("cannot find {}", launcher.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../launcher/dhcp-serve.ld"));
    for (program, package) in [("valgrind", "valgrind"), ("busybox", "busybox-static")] {
        vmlet_testkit::output_within(Command::new(program).arg("--help"), Duration::from_secs(10))
            .with_context(|| format!("cannot run {program} (Debian package `{package}`)"))?;
    }

    let (server_ns, client_ns) = dhcp::namespaces();
    let scratch = ScratchDir::new();
    let mut executed = BTreeSet::new();
    for (run, environment) in ENVIRONMENTS.iter().enumerate() {
        let profile = scratch.join(format!("callgrind.{run}.out"));
        let mut command = server_ns.exec("valgrind");
        command
            .arg("--tool=callgrind")
            .arg("--demangle=no")
            .arg(format!("--callgrind-out-file={}", profile.display()))
            .arg(&launcher)
            .args(dhcp::dhcp_serve_args())
            .env_remove("VMLET_LOG")
            .env_remove("VMLET_LOG_JSON")
            .envs(environment.iter().copied())
            .env("NO_COLOR", "1");
        let mut server = Child::spawn("vmlet-launcher dhcp-serve under callgrind", &mut command);
        dhcp::wait_listening_within(&server_ns, &server, STARTUP_TIMEOUT)?;
        // The benchmark's client asks for broadcast replies; busybox's udhcpc, as in the test guest, for unicast
        // ones, which the server sends differently.
        let batch = dhcp::run_batch(&client_ns, 0x7700_0000 + 0x10000 * run as u32, 0, args.exchanges)?;
        ensure!(!batch.samples.is_empty(), "no exchange succeeded under callgrind");
        for _ in 0..args.exchanges.div_ceil(4) {
            let mut udhcpc = client_ns.exec("busybox");
            udhcpc.args(["udhcpc", "-i", dhcp::CLIENT_IF, "-n", "-q", "-f", "-s", "/bin/true"]);
            let output = vmlet_testkit::output_within(&mut udhcpc, Duration::from_secs(30)).context("udhcpc")?;
            ensure!(
                output.status.success(),
                "udhcpc got no lease: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let status = server.terminate();
        ensure!(
            status.success(),
            "the server exited with {status} on SIGTERM:\n{}",
            server.output()
        );
        let profile = std::fs::read_to_string(&profile).context("cannot read callgrind's profile")?;
        executed.extend(launcher_functions(&profile, &launcher.to_string_lossy()));
    }
    ensure!(
        executed.iter().any(|name| name.starts_with("_R")),
        "{} has no v0 symbol names: build it with this tree's .cargo/config.toml (an explicit RUSTFLAGS replaces it)",
        launcher.display()
    );
    let symbols = defined_functions(&launcher)?;
    let script = linker_script(&executed, &symbols);
    std::fs::write(&out, &script).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: {} patterns for the functions `dhcp-serve` ran",
        out.display(),
        script.matches("*(.text.").count()
    );
    Ok(())
}

/// A function in a program's symbol table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Symbol {
    address: u64,
    name: String,
}

/// The functions `nm` lists as defined in the code of `program`.
fn defined_functions(program: &std::path::Path) -> anyhow::Result<Vec<Symbol>> {
    let output = vmlet_testkit::output_within(
        Command::new("nm").arg("--defined-only").arg(program),
        Duration::from_secs(60),
    )
    .context("cannot run nm")?;
    if !output.status.success() {
        bail!("nm failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then_some(Symbol {
                address: u64::from_str_radix(address, 16).ok()?,
                name: name.to_owned(),
            })
        })
        .collect())
}

/// The functions of `object` (a path as Valgrind names it) that ran, from callgrind's output, with the suffixes
/// it adds to tell apart recursive calls (`'2`) removed.
///
/// Callgrind names an object or a function in full once, `ob=(3) /path` or `fn=(12) name`, and by its number
/// alone afterwards; `cob=` and `cfn=` (the callee of a call) define numbers too.
fn launcher_functions(profile: &str, object: &str) -> BTreeSet<String> {
    let mut objects: HashMap<&str, &str> = HashMap::new();
    let mut functions: HashMap<&str, &str> = HashMap::new();
    let mut current_object = None;
    let mut executed = BTreeSet::new();
    for line in profile.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let Some(rest) = value.strip_prefix('(') else { continue };
        let Some((id, name)) = rest.split_once(')') else {
            continue;
        };
        let name = name.trim_start();
        let names = match key {
            "ob" | "cob" => &mut objects,
            "fn" | "cfn" => &mut functions,
            _ => continue,
        };
        if !name.is_empty() {
            names.insert(id, name);
        }
        match key {
            "ob" => current_object = objects.get(id).copied(),
            "fn" if current_object == Some(object) => {
                if let Some(function) = functions.get(id) {
                    let function = function.split_once('\'').map_or(*function, |(name, _)| name);
                    executed.insert(function.to_owned());
                }
            }
            _ => {}
        }
    }
    executed
}

/// A pattern for a function's symbol that leaves out what changes without the code changing: the crate hashes
/// (`Cs<hash>_`) and back-references (`B<offset>_`, whose offsets move when a hash's length does) of a v0 name, the
/// hash of a legacy one (`17h<hash>E`), and the `.llvm.<number>` suffix LTO gives the local functions it exports.
fn symbol_pattern(symbol: &str) -> String {
    let symbol = symbol.split_once(".llvm.").map_or(symbol, |(name, _)| name);
    let mut pattern = String::with_capacity(symbol.len() + 1);
    if let Some(v0) = symbol.strip_prefix("_R") {
        pattern.push_str("_R");
        let mut rest = v0;
        while let Some(at) = rest.find(['C', 'B']) {
            let (before, from) = rest.split_at(at);
            pattern.push_str(before);
            let tag = &from[..1];
            let after_tag = if tag == "C" {
                from[1..].strip_prefix('s')
            } else {
                Some(&from[1..])
            };
            let base62 = after_tag.map(|text| {
                let digits = text.bytes().take_while(u8::is_ascii_alphanumeric).count();
                (text, digits)
            });
            match base62 {
                // `Cs<hash>_` or `B<offset>_`: the number becomes `*`.
                Some((text, digits)) if text[digits..].starts_with('_') => {
                    pattern.push_str(if tag == "C" { "Cs*_" } else { "B*_" });
                    rest = &text[digits + 1..];
                }
                _ => {
                    pattern.push_str(tag);
                    rest = &from[1..];
                }
            }
        }
        pattern.push_str(rest);
    } else {
        let legacy_hash = symbol
            .strip_suffix('E')
            .and_then(|name| name.len().checked_sub(19).map(|at| (name, at)))
            .filter(|(name, at)| name[*at..].starts_with("17h"));
        match legacy_hash {
            Some((name, at)) => pattern.push_str(&name[..at + 3]),
            None => pattern.push_str(symbol),
        }
    }
    pattern.push('*');
    pattern
}

/// The linker script that places the sections of `executed` first in the code, in their names' order (which keeps
/// a module's functions together).
///
/// `symbols` is the program's symbol table. Only its functions count: callgrind also names code that has no
/// symbol. A function may have several names, when the compiler merged identical functions into one: callgrind
/// gives any of them, the section is named after one, so every name at the function's address gets a pattern. Where
/// a pattern would match more functions than one, the function is named in full instead.
fn linker_script(executed: &BTreeSet<String>, symbols: &[Symbol]) -> String {
    let mut matches: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<&str, u64> = HashMap::new();
    let mut names: HashMap<u64, Vec<&str>> = HashMap::new();
    for symbol in symbols {
        *matches.entry(symbol_pattern(&symbol.name)).or_default() += 1;
        addresses.insert(&symbol.name, symbol.address);
        names.entry(symbol.address).or_default().push(&symbol.name);
    }
    let patterns: BTreeSet<String> = executed
        .iter()
        .filter_map(|name| addresses.get(name.as_str()))
        .flat_map(|address| names[address].iter().copied())
        .map(|symbol| {
            let pattern = symbol_pattern(symbol);
            if matches.get(&pattern).copied().unwrap_or(0) > 1 {
                let name = symbol.split_once(".llvm.").map_or(symbol, |(name, _)| name);
                format!("{name}*")
            } else {
                pattern
            }
        })
        .collect();
    let mut script = [
        "/* The functions `vmlet-launcher dhcp-serve` runs, placed first and together in the launcher's code, so that",
        "   the pages it touches are few. Written by `vmlet-bench dhcp-layout` (docs/benchmarks.md); a function that",
        "   no pattern names is placed as it would be without this script. */",
        "SECTIONS",
        "{",
        "  .text : {",
    ]
    .join("\n");
    script.push('\n');
    for pattern in &patterns {
        let _ = writeln!(script, "    *(.text.{pattern} .text.unlikely.{pattern})");
    }
    // After `.init` and `.plt`, which run too: one window of pages with the rest.
    script.push_str("  }\n}\nINSERT AFTER .plt;\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_leave_out_hashes() {
        assert_eq!(
            symbol_pattern("_RNvMs0_NtNtNtNtCsjrHSEGnQ3l9_3std3sys4sync4once5futexNtB5_4Once4call"),
            "_RNvMs0_NtNtNtNtCs*_3std3sys4sync4once5futexNtB*_4Once4call*"
        );
        // A generic instance: its type arguments stay.
        assert_eq!(
            symbol_pattern("_RINvNtCs1a2B_4core3ptr13drop_in_placeNtCsXy9_10vmlet_dhcp6ServerEB4_.llvm.123"),
            "_RINvNtCs*_4core3ptr13drop_in_placeNtCs*_10vmlet_dhcp6ServerEB*_*"
        );
        // Identifiers that hold a C or a B are not numbers.
        assert_eq!(symbol_pattern("_RNvCs9_5Clock3Buf"), "_RNvCs*_5Clock3Buf*");
        assert_eq!(
            symbol_pattern("_ZN10vmlet_dhcp6server6Server5reply17h0123456789abcdefE"),
            "_ZN10vmlet_dhcp6server6Server5reply17h*"
        );
        assert_eq!(symbol_pattern("__rust_alloc"), "__rust_alloc*");
    }

    #[test]
    fn functions_are_those_of_the_object() {
        let profile = "\
ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6
fn=(1) memcpy
ob=(2) /target/vmlet-launcher
fn=(2) _RNvCs1_4main
cob=(1)
cfn=(1)
calls=1 0
cfn=(3) _RNvCs1_3run'2
fn=(3)
ob=(1)
fn=(4) free
";
        let functions = launcher_functions(profile, "/target/vmlet-launcher");
        assert_eq!(
            functions.into_iter().collect::<Vec<_>>(),
            ["_RNvCs1_3run", "_RNvCs1_4main"]
        );
    }

    #[test]
    fn the_script_names_what_ran() {
        let executed = BTreeSet::from([
            "_RNvCs1_4main".to_owned(),
            "_ZN4core3fmt5write17h0000000000000001E".to_owned(),
            "_RNvCs1_5alias".to_owned(),
            "(below main)".to_owned(),
        ]);
        let symbol = |address, name: &str| Symbol {
            address,
            name: name.to_owned(),
        };
        let symbols = [
            symbol(0x10, "_RNvCs1_4main"),
            symbol(0x20, "_ZN4core3fmt5write17h0000000000000001E"),
            symbol(0x30, "_ZN4core3fmt5write17h0000000000000002E"),
            symbol(0x40, "_RNvCs1_5alias"),
            symbol(0x40, "_RNvCs1_8original"),
            symbol(0x50, "_RNvCs1_7not_run"),
        ];
        let script = linker_script(&executed, &symbols);
        assert!(
            script.contains("    *(.text._RNvCs*_4main* .text.unlikely._RNvCs*_4main*)\n"),
            "{script}"
        );
        // Two functions of the same name but for their hashes: named in full.
        assert!(
            script.contains("*(.text._ZN4core3fmt5write17h0000000000000001E* "),
            "{script}"
        );
        // Both names of a merged function.
        assert!(script.contains("*(.text._RNvCs*_5alias* "), "{script}");
        assert!(script.contains("*(.text._RNvCs*_8original* "), "{script}");
        assert_eq!(script.matches("*(.text.").count(), 4, "{script}");
        assert!(script.ends_with("  }\n}\nINSERT AFTER .plt;\n"), "{script}");
    }
}
