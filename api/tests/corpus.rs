//! The project's corpus of manifests in KubeVirt's layout (`tests/corpus/`), each with what vmlet makes of it: the
//! VM (the file's last document, after the instance types and preferences it may name) resolved, with its defaults
//! applied (`NAME.expected.yaml`), or every refusal, one per line (`NAME.refused`). A manifest
//! whose name starts with `refused-` must be refused, every other accepted.
//!
//! `VMLET_BLESS=1 cargo test -p vmlet-api --test corpus` rewrites the expectations from what the code does now;
//! review the difference before committing it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vmlet_api::defaults::{self, ClusterDefaults};
use vmlet_api::instancetype::{self, Catalog};
use vmlet_api::{InvalidSpec, VirtualMachine};

/// What vmlet makes of one file: its VM's defaults-applied YAML, or its refusals.
fn verdict(text: &str) -> Result<String, Vec<String>> {
    let mut catalog = Catalog::default();
    let mut vm = None;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).expect("a corpus file is YAML");
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if instancetype::KINDS.contains(&kind.as_str()) {
            let name = value["metadata"]["name"].as_str().expect("a name");
            let spec = serde_json::to_value(&value["spec"]).expect("JSON");
            catalog
                .insert(&kind, "default", name, spec)
                .expect("a usable instance type or preference");
        } else {
            vm = Some(value);
        }
    }
    // From the text, not the value, so that errors give the line: the VM is the last document.
    let last = serde_yaml::Deserializer::from_str(text).last().expect("a VM");
    assert!(vm.is_some(), "the corpus file holds a VM");
    let mut vm: VirtualMachine = vmlet_api::manifest::parse_vm(last).map_err(|e| vec![e.0])?;
    let lines = |invalid: InvalidSpec| -> Vec<String> {
        invalid
            .0
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    };
    catalog.resolve(&mut vm).map_err(lines)?;
    defaults::apply(&mut vm, &ClusterDefaults::default());
    vm.validate().map_err(lines)?;
    Ok(serde_yaml::to_string(&vm).expect("a VM serializes"))
}

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the corpus folder")
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".yaml") && !name.ends_with(".expected.yaml")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_manifest_of_the_corpus_gives_its_expected_result() {
    let bless = std::env::var_os("VMLET_BLESS").is_some();
    let mut failures = Vec::new();
    let files = manifests();
    assert!(files.len() >= 8, "the corpus is missing: {files:?}");
    for file in files {
        let name = file.file_stem().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let (expected_file, got) = match verdict(&text) {
            Ok(yaml) => (file.with_extension("expected.yaml"), yaml),
            Err(problems) => (file.with_extension("refused"), problems.join("\n") + "\n"),
        };
        let should_refuse = name.starts_with("refused-");
        if should_refuse != (expected_file.extension().and_then(|e| e.to_str()) == Some("refused")) {
            failures.push(format!(
                "{name}: expected to be {}, got:\n{got}",
                if should_refuse { "refused" } else { "accepted" }
            ));
            continue;
        }
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_file) {
            Ok(expected) if expected == got => {}
            Ok(expected) => failures.push(format!("{name}: expected\n{expected}\ngot\n{got}")),
            Err(_) => failures.push(format!("{name}: {} is missing; got\n{got}", expected_file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
