//! `vmlet-handler validate`: the check a VM meets before it runs, for users and CI pipelines. Each manifest of each
//! file is read as standalone mode reads it, with the defaults applied; every problem is printed with its field
//! path, and the defaults-applied VMs on request.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Deserialize;
use vmlet_api::VirtualMachine;
use vmlet_api::defaults::{ClusterDefaults, DefaultBinding};
use vmlet_api::instancetype::{self, Catalog};

use crate::standalone::manifests;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Manifest files (YAML or JSON, several documents each); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print each valid VM with its defaults applied (the verdicts then go to standard error).
    #[arg(short = 'o', long, value_enum)]
    output: Option<Output>,
    /// The binding of the interface given to a VM that names no network, as the controller's option.
    #[arg(long, default_value_t = DefaultBinding::Bridge)]
    default_network_binding: DefaultBinding,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Yaml,
    Json,
}

/// What one document of a file is found to be.
#[derive(Debug)]
pub struct Verdict {
    /// `Kind namespace/name`, or the document's number when it has no name.
    pub what: String,
    pub outcome: Result<Option<Box<VirtualMachine>>, Vec<String>>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let defaults = ClusterDefaults {
        network_binding: args.default_network_binding,
    };
    let mut refused = false;
    let mut first_output = true;
    let texts = args
        .files
        .iter()
        .map(|file| Ok((file, read(file)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A VM may name an instance type or preference of any file given. What cannot be used is reported again as
    // its own document's verdict; one defined twice is no document's fault, and is refused here.
    let read = manifests::read_catalog(texts.iter().map(|(file, text)| (file.as_path(), text.as_str())));
    let catalog = read.catalog;
    for duplicate in &read.duplicates {
        refused = true;
        match args.output {
            None => println!("refused: {duplicate}"),
            Some(_) => eprintln!("refused: {duplicate}"),
        }
    }
    for (file, text) in &texts {
        for verdict in check_text(text, &defaults, &catalog) {
            let head = format!("{}: {}", file.display(), verdict.what);
            let line = match &verdict.outcome {
                Ok(_) => format!("{head}: valid"),
                Err(problems) => {
                    refused = true;
                    let mut line = format!("{head}: refused");
                    for problem in problems {
                        line.push_str("\n  ");
                        line.push_str(problem);
                    }
                    line
                }
            };
            match (args.output, &verdict.outcome) {
                (None, _) => println!("{line}"),
                (Some(output), Ok(vm)) => {
                    eprintln!("{line}");
                    if let Some(vm) = vm {
                        print_vm(vm, output, &mut first_output)?;
                    }
                }
                (Some(_), Err(_)) => eprintln!("{line}"),
            }
        }
    }
    Ok(if refused { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn print_vm(vm: &VirtualMachine, output: Output, first: &mut bool) -> anyhow::Result<()> {
    match output {
        Output::Yaml => {
            if !std::mem::take(first) {
                println!("---");
            }
            print!("{}", serde_yaml::to_string(vm)?);
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(vm)?),
    }
    Ok(())
}

/// The verdict on every document of `text`, whose VMs may name what `catalog` holds.
pub fn check_text(text: &str, defaults: &ClusterDefaults, catalog: &Catalog) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    // Each document twice: as a value to tell its kind, and from its text so that errors give the line.
    let documents = serde_yaml::Deserializer::from_str(text).zip(serde_yaml::Deserializer::from_str(text));
    for (index, (document, typed)) in documents.enumerate() {
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(err) => {
                verdicts.push(Verdict {
                    what: format!("document {}", index + 1),
                    outcome: Err(vec![vmlet_api::manifest::describe(&err)]),
                });
                // The parser cannot find the next document after a broken one.
                break;
            }
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_owned();
        let metadata = value.get("metadata");
        let name = metadata.and_then(|m| m.get("name")).and_then(|n| n.as_str());
        let namespace = metadata
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default");
        let what = match name {
            Some(name) => format!("{kind} {namespace}/{name}"),
            None => format!("{kind} (document {})", index + 1),
        };
        let outcome = match kind.as_str() {
            "Secret" => manifests::parse_secret(value).map(|_| None).map_err(|e| vec![e]),
            "PersistentVolumeClaim" => manifests::parse_claim(value).map(|_| None).map_err(|e| vec![e]),
            kind if instancetype::KINDS.contains(&kind) => {
                let spec = value.get("spec").cloned().unwrap_or_default();
                serde_json::to_value(spec)
                    .map_err(|e| e.to_string())
                    .and_then(|spec| Catalog::default().insert(kind, namespace, name.unwrap_or(""), spec))
                    .map(|()| None)
                    .map_err(|e| vec![e])
            }
            _ => {
                let parsed = manifests::parse_vm(&value, typed, defaults, catalog);
                match (parsed, name) {
                    (Ok(_), None) => Err(vec!["metadata.name: a name is required".into()]),
                    (parsed, _) => parsed.map(|vm| Some(Box::new(vm))),
                }
            }
        };
        verdicts.push(Verdict { what, outcome });
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        check_text(text, &ClusterDefaults::default(), &Catalog::default())
            .into_iter()
            .flat_map(|v| v.outcome.err().unwrap_or_default())
            .collect()
    }

    #[test]
    fn every_problem_of_a_manifest_is_listed_with_its_path() {
        let text = "apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: a}
spec:
  running: true
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {guest: 1}
        devices:
          interfaces: [{name: default, bridge: {}, model: rtl8139}]
      networks: [{name: default, pod: {}}]
      volumes: [{name: root, containerDisk: {image: ''}}]
";
        assert_eq!(
            problems(text),
            [
                "spec.running: running and runStrategy are mutually exclusive",
                "spec.template.spec.domain.memory.guest: 1 is less than the minimum of 16Mi",
                "spec.template.spec.domain.devices.interfaces[0].model: \"rtl8139\" is not offered; only virtio, \
                 e1000 or e1000e",
                "spec.template.spec.volumes[0].containerDisk.image: an image is required",
            ]
        );
    }

    #[test]
    fn an_unknown_field_and_a_broken_document_give_path_and_line() {
        let unknown = "apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: a}
spec:
  template:
    spec:
      domain:
        devices:
          gpus: [{name: g, deviceName: nvidia.com/GP102}]
";
        assert_eq!(
            problems(unknown),
            ["spec.template.spec.domain.devices.gpus: not supported by vmlet (line 9 column 11)"]
        );
        let broken = problems("kind: VirtualMachine\nmetadata: {name: a\n");
        assert_eq!(broken.len(), 1);
        assert!(broken[0].contains("(line "), "{broken:?}");
    }

    #[test]
    fn other_kinds_are_refused_and_secrets_read() {
        let verdicts = check_text(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {userdata: x}\n",
            &ClusterDefaults::default(),
            &Catalog::default(),
        );
        assert_eq!(verdicts[0].what, "VirtualMachineInstance default/x");
        assert!(verdicts[0].outcome.is_err());
        assert_eq!(verdicts[1].what, "Secret default/s");
        assert!(matches!(verdicts[1].outcome, Ok(None)));
    }
}
