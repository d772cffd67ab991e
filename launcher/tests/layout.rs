//! The code layout of `launcher/dhcp-serve.ld` still names the launcher's functions. A pattern that names none is
//! harmless, but when many do the functions `dhcp-serve` runs are spread over the executable again, and its memory
//! grows by about a megabyte (docs/benchmarks.md): regenerate the script then, with `vmlet-bench dhcp-layout`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The share of patterns that must still name a function. Builds differ (a debug build inlines nothing, a release
/// one specialises some functions), so this is not all.
const MIN_MATCHING: f64 = 0.8;

#[test]
fn the_layout_names_the_launchers_functions() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dhcp-serve.ld")).unwrap();
    let patterns = section_patterns(&script);
    assert!(patterns.len() > 100, "{} patterns", patterns.len());

    let output = Command::new("nm")
        .arg("--defined-only")
        .arg(env!("CARGO_BIN_EXE_vmlet-launcher"))
        .output()
        .expect("running nm (binutils)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let symbols = String::from_utf8(output.stdout).unwrap();
    let names: Vec<&str> = symbols
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert!(
        names.iter().any(|name| name.starts_with("_R")),
        "the launcher has no v0 symbol names, which the layout's patterns are: build it with this tree's \
         .cargo/config.toml (an explicit RUSTFLAGS replaces its setting; add `-C symbol-mangling-version=v0` to it)"
    );
    let unmatched: Vec<&str> = patterns
        .iter()
        .filter(|pattern| !names.iter().any(|name| glob_matches(pattern, name)))
        .copied()
        .collect();
    let matching = 1.0 - unmatched.len() as f64 / patterns.len() as f64;
    assert!(
        matching >= MIN_MATCHING,
        "only {:.0} % of the patterns of launcher/dhcp-serve.ld name a function of the launcher: regenerate it \
         (docs/benchmarks.md). Unmatched: {unmatched:#?}",
        matching * 100.0
    );
}

/// The symbol patterns of the script's input section descriptions, `*(.text.PATTERN .text.unlikely.PATTERN)`.
fn section_patterns(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("*(.text.")?.split_whitespace().next())
        .collect()
}

/// Whether `name` matches `pattern`, in which `*` stands for any text (as in a linker script).
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[test]
fn globs_match_as_a_linker_does() {
    assert!(glob_matches("_RNvCs*_4main*", "_RNvCs1a2_4main"));
    assert!(glob_matches("_RNvCs*_4main*", "_RNvCs1a2_4main.llvm.42"));
    assert!(!glob_matches("_RNvCs*_4main*", "_RNvCs1a2_3run"));
    assert!(glob_matches("main", "main"));
    assert!(!glob_matches("main", "mainly"));
    assert!(glob_matches("a*b*c", "a-b-b-c"));
    assert!(!glob_matches("a*bc*c", "abc"));
    assert_eq!(
        section_patterns("SECTIONS\n{\n  .text : {\n    *(.text.x* .text.unlikely.x*)\n  }\n}\n"),
        ["x*"]
    );
}
