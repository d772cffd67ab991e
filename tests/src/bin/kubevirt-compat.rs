//! Puts KubeVirt's example manifests through `vmlet-handler validate` as a new user would: each document's
//! `apiVersion` changed to vmlet's, a `VirtualMachineInstance` taken as the template of a VM with `runStrategy:
//! Always`, nothing else changed. Prints a Markdown table, one row per file: accepted, or refused with the first
//! refusal. Exits non-zero when the examples' folder is missing or the validation command cannot run, not when
//! examples are refused: the table is the result.
//!
//! `kubevirt-compat [FOLDER]`; the folder defaults to `shared/kubevirt-examples` beside the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

const API_VERSION: &str = "vmlet.dev/v1alpha1";

fn main() -> ExitCode {
    let folder = match std::env::args_os().nth(1) {
        Some(folder) => PathBuf::from(folder),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kubevirt-examples"),
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
            println!("| {name} | accepted | |");
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

/// Every document of `text` in vmlet's group; a VirtualMachineInstance becomes a VM that runs it.
fn convert(text: &str) -> Result<String, String> {
    let mut out = String::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut value = Value::deserialize(document).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        let group = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if group.starts_with("kubevirt.io/") || group.contains(".kubevirt.io/") {
            value["apiVersion"] = Value::from(API_VERSION);
        }
        if value.get("kind").and_then(Value::as_str) == Some("VirtualMachineInstance") {
            value = vm_of_instance(value);
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn vm_of_instance(instance: Value) -> Value {
    let metadata = instance
        .get("metadata")
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()));
    let mut template_metadata = Mapping::new();
    for key in ["labels", "annotations"] {
        if let Some(value) = metadata.get(key) {
            template_metadata.insert(key.into(), value.clone());
        }
    }
    let mut template = Mapping::new();
    if !template_metadata.is_empty() {
        template.insert("metadata".into(), Value::Mapping(template_metadata));
    }
    template.insert("spec".into(), instance.get("spec").cloned().unwrap_or(Value::Null));
    let mut spec = Mapping::new();
    spec.insert("runStrategy".into(), "Always".into());
    spec.insert("template".into(), Value::Mapping(template));
    let mut vm = Mapping::new();
    vm.insert("apiVersion".into(), API_VERSION.into());
    vm.insert("kind".into(), "VirtualMachine".into());
    vm.insert("metadata".into(), metadata);
    vm.insert("spec".into(), Value::Mapping(spec));
    Value::Mapping(vm)
}

/// Text fit for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
