//! Puts KubeVirt's example manifests through `vmlet-handler validate` as a new user would: each document's
//! `apiVersion` changed to vmlet's, a `VirtualMachineInstance` taken as the template of a VM with `runStrategy:
//! Always`, nothing else changed. Prints a Markdown table, one row per file: accepted, or refused with the first
//! refusal. Exits non-zero when the examples' folder is missing or the validation command cannot run, not when
//! examples are refused: the table is the result.
//!
//! `kubevirt-compat [FOLDER]`; the folder defaults to `shared/kubevirt-examples` beside the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use vmlet_testkit::kubevirt::{convert, examples_dir};

fn main() -> ExitCode {
    let folder = match std::env::args_os().nth(1) {
        Some(folder) => PathBuf::from(folder),
        None => examples_dir(),
    };
    if !folder.is_dir() {
        eprintln!(
            "kubevirt-compat: no examples at {}: skipped (put KubeVirt's examples in shared/kubevirt-examples beside \
             the repository, or name a folder)",
            folder.display()
        );
        return ExitCode::SUCCESS;
    }
    match run(&folder) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kubevirt-compat: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(folder: &Path) -> Result<(), String> {
    let handler = vmlet_testkit::binary("vmlet-handler");
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| format!("cannot read {}: {e}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    let scratch = std::env::temp_dir().join(format!("kubevirt-compat-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    println!("| Example | Result | First refusal |");
    println!("|---|---|---|");
    let mut accepted = 0;
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let converted = match convert(&text) {
            Ok(converted) => converted,
            Err(e) => {
                println!("| {name} | refused | does not parse: {} |", cell(&e));
                continue;
            }
        };
        let input = scratch.join(&name);
        std::fs::write(&input, converted).map_err(|e| format!("cannot write {}: {e}", input.display()))?;
        let output = Command::new(&handler)
            .arg("validate")
            .arg(&input)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", handler.display()))?;
        if output.status.success() {
            accepted += 1;
            let result = if vmlet_testkit::kubevirt::BOOTED.contains(&name.as_str()) {
                "accepted, boots here"
            } else {
                "accepted"
            };
            println!("| {name} | {result} | |");
        } else {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The verdict lines are `FILE: KIND NAME: refused` followed by the refusals, indented.
            let first = stdout
                .lines()
                .find(|l| l.starts_with("  "))
                .map(str::trim)
                .or_else(|| stderr.lines().next())
                .unwrap_or("refused");
            println!("| {name} | refused | {} |", cell(first));
        }
    }
    println!();
    println!("{accepted} of {} examples accepted.", files.len());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Text fit for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
