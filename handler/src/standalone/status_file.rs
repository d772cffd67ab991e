//! VM status in standalone mode: a YAML file beside the VM's manifest, and `vmlet-handler status` to show them.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use vmlet_api::{Condition, ConditionType, PrintableStatus, VirtualMachineStatus};

use super::manifests::{VmKey, is_status_file};
use crate::vm_status::NodeStatus;

/// What a status file holds: which VM, and its status as the API would show it.
#[derive(Debug, Serialize, Deserialize)]
struct StatusFile {
    name: String,
    namespace: String,
    status: VirtualMachineStatus,
}

/// The status file of a VM: `NAME.status.yaml` in the `default` namespace, `NAMESPACE_NAME.status.yaml` elsewhere.
pub fn path(manifests: &Path, key: &VmKey) -> PathBuf {
    let stem = if key.namespace == "default" {
        key.name.clone()
    } else {
        key.file_stem()
    };
    manifests.join(format!("{stem}.status.yaml"))
}

/// The VMs that have a status file in `manifests`: a VM whose manifest is gone is still looked at, so that its
/// status goes with it even when it never had a pod.
pub fn keys(manifests: &Path) -> io::Result<Vec<VmKey>> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(manifests)? {
        let path = entry?.path();
        if is_status_file(&path)
            && let Ok(file) = read_file(&path)
        {
            keys.push(VmKey {
                namespace: file.namespace,
                name: file.name,
            });
        }
    }
    Ok(keys)
}

pub fn read(path: &Path) -> anyhow::Result<VirtualMachineStatus> {
    Ok(read_file(path)?.status)
}

fn read_file(path: &Path) -> anyhow::Result<StatusFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not a status file", path.display()))
}

/// Writes through a temporary file and a rename, so `status` never reads half a file.
pub fn write(path: &Path, key: &VmKey, status: &VirtualMachineStatus) -> anyhow::Result<()> {
    let file = StatusFile {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        status: status.clone(),
    };
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&file)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Combines the run strategy's status (the controller's part, `crate::lifecycle`) with the launcher's (the node
/// role's part) as server-side apply combines the two writers' fields in a cluster: the node's fields replaced,
/// the others left. The launcher pod is named as the controller names it, so that the next round's plan takes the
/// launcher's report for this pod's, as the controller does; like the controller, it follows that report one
/// round later.
pub fn overlay(status: &mut VirtualMachineStatus, launcher: &NodeStatus) {
    launcher.write_into(status);
    status.launcher_pod = Some(launcher.launcher.pod.clone());
}

/// Says in the status that the manifest cannot be read, when the run strategy's status does not already. A VM
/// that no pod runs (`running` false) cannot run at all, as KubeVirt shows a VM no node can take.
pub fn note_spec_error(status: &mut VirtualMachineStatus, error: &str, running: bool) {
    if !running {
        status.printable_status = Some(PrintableStatus::ErrorUnschedulable);
        status.conditions.retain(|c| c.condition_type != ConditionType::Ready);
        status.conditions.push(Condition::new(
            ConditionType::Ready,
            "False",
            "InvalidSpec",
            "the VM's spec cannot run".to_owned(),
        ));
    }
    if status.conditions.iter().any(|c| c.message.as_deref() == Some(error)) {
        return;
    }
    status.conditions.retain(|c| c.condition_type != ConditionType::Failure);
    status.conditions.push(Condition::new(
        ConditionType::Failure,
        "True",
        "InvalidSpec",
        error.to_owned(),
    ));
}

/// Marks a VM whose pod cannot start yet: printable status, Ready false with the reason, and, for a `failure` (an
/// image, a claim or a Secret that cannot be had, as opposed to a pull under way), the Failure condition, each
/// naming the volume at fault.
pub fn note_waiting(status: &mut VirtualMachineStatus, why: &super::volumes::NotReady, failure: bool) {
    status.printable_status = Some(why.printable);
    status
        .conditions
        .retain(|c| !matches!(c.condition_type, ConditionType::Ready | ConditionType::Failure));
    let conditions = [(ConditionType::Ready, "False"), (ConditionType::Failure, "True")];
    for (condition_type, value) in conditions.into_iter().take(if failure { 2 } else { 1 }) {
        status
            .conditions
            .push(Condition::new(condition_type, value, why.reason, why.message.clone()));
    }
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The folder of VirtualMachine manifests that standalone mode runs.
    #[arg(long)]
    manifests: PathBuf,
    /// `wide` adds why a VM is not ready, as `kubectl get -o wide` adds columns.
    #[arg(short, long, value_parser = ["wide"])]
    output: Option<String>,
}

/// Prints one line per VM, as `kubectl get vm` does.
pub fn print_status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.manifests)
        .with_context(|| format!("cannot read {}", args.manifests.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_status_file(p))
        .collect();
    files.sort();
    let wide = args.output.is_some();
    let rows: Vec<Vec<String>> = files
        .iter()
        .filter_map(|path| read_file(path).ok())
        .map(|file| row(&file, wide))
        .collect();
    print!("{}", table(&header(wide), &rows));
    Ok(())
}

const HEADER: [&str; 6] = ["NAMESPACE", "NAME", "STATUS", "READY", "IP", "NODE"];

fn header(wide: bool) -> Vec<&'static str> {
    let mut header = HEADER.to_vec();
    if wide {
        header.push("REASON");
    }
    header
}

fn row(file: &StatusFile, wide: bool) -> Vec<String> {
    let status = &file.status;
    let ready = status
        .conditions
        .iter()
        .find(|c| c.condition_type == ConditionType::Ready)
        .map_or("False", |c| c.status.as_str());
    let ip = status
        .interfaces
        .iter()
        .find_map(|i| i.ip_address.clone().or_else(|| i.ip_addresses.first().cloned()))
        .unwrap_or_default();
    let printable = status.printable_status.map(|p| p.to_string()).unwrap_or_default();
    let mut row = vec![
        file.namespace.clone(),
        file.name.clone(),
        printable,
        ready.to_owned(),
        ip,
        status.node_name.clone().unwrap_or_default(),
    ];
    if wide {
        row.push(reason(status));
    }
    row
}

/// Why a VM is not as wanted: its failure, else why it is not ready.
fn reason(status: &VirtualMachineStatus) -> String {
    let of = |condition_type, value: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.condition_type == condition_type && c.status == value)
    };
    of(ConditionType::Failure, "True")
        .or_else(|| of(ConditionType::Ready, "False"))
        .map(|c| {
            let reason = c.reason.as_deref().unwrap_or_default();
            match c.message.as_deref() {
                Some(message) => format!("{reason}: {message}"),
                None => reason.to_owned(),
            }
        })
        .unwrap_or_default()
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        format!("{}\n", padded.join("   ").trim_end())
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmlet_api::InterfaceStatus;

    #[test]
    fn status_files_sit_beside_the_manifests_and_read_back_as_written() {
        let dir = std::env::temp_dir().join(format!("vmlet-status-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = VmKey::from_file_stem("default_demo").unwrap();
        let path = path(&dir, &key);
        assert_eq!(path, dir.join("demo.status.yaml"));
        assert_eq!(
            super::path(&dir, &VmKey::from_file_stem("lab_x").unwrap()),
            dir.join("lab_x.status.yaml")
        );
        let status = VirtualMachineStatus {
            printable_status: Some(PrintableStatus::Running),
            interfaces: vec![InterfaceStatus {
                name: "default".into(),
                ip_address: Some("10.111.0.2".into()),
                ip_addresses: vec!["10.111.0.2".into()],
                mac: None,
                ..Default::default()
            }],
            node_name: Some("node-1".into()),
            ..Default::default()
        };
        write(&path, &key, &status).unwrap();
        assert_eq!(read(&path).unwrap(), status);
        let text = table(&header(false), &[row(&read_file(&path).unwrap(), false)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("NAMESPACE"), "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells, ["default", "demo", "Running", "False", "10.111.0.2", "node-1"]);
        remove(&path).unwrap();
        remove(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Standalone mode shows what the guest agent says as a cluster does.
    #[test]
    fn the_overlay_carries_the_guest_agents_word() {
        let answered = crate::vm_status::LauncherState::Answered(vmlet_control::Status {
            phase: vmlet_control::Phase::Running,
            interfaces: vec![vmlet_control::InterfaceStatus {
                name: "default".into(),
                mac: "02:00:0a:00:02:02".into(),
                ip_addresses: vec!["10.0.2.2".into()],
                binding: "masquerade".into(),
            }],
            guest_agent: Some(Box::new(vmlet_control::GuestAgentStatus {
                os: Some(vmlet_control::GuestOsInfo {
                    id: Some("debian".into()),
                    ..Default::default()
                }),
                interfaces: vec![vmlet_control::GuestInterface {
                    name: "enp1s0".into(),
                    mac: Some("02:00:0a:00:02:02".into()),
                    ip_addresses: vec!["10.0.2.2/24".into()],
                }],
                ..Default::default()
            })),
            ..Default::default()
        });
        let node = NodeStatus::derive(
            &answered,
            None,
            "node-1",
            "pod",
            jiff::Timestamp::from_second(100).unwrap(),
        );
        let mut status = VirtualMachineStatus::default();
        overlay(&mut status, &node);
        assert_eq!(status.guest_os_info.unwrap().id.as_deref(), Some("debian"));
        assert_eq!(status.interfaces[0].interface_name.as_deref(), Some("enp1s0"));
    }

    #[test]
    fn a_spec_error_is_a_failure_condition_once() {
        let mut status = VirtualMachineStatus {
            printable_status: Some(PrintableStatus::Running),
            ..Default::default()
        };
        note_spec_error(&mut status, "spec.template: bad", true);
        note_spec_error(&mut status, "spec.template: bad", true);
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].reason.as_deref(), Some("InvalidSpec"));
        assert_eq!(
            status.printable_status,
            Some(PrintableStatus::Running),
            "a VM running an earlier spec runs on"
        );
    }

    /// A manifest that cannot run shows as KubeVirt shows a VM no node can take, and the wide view says why.
    #[test]
    fn a_spec_that_cannot_run_is_unschedulable_with_its_reason() {
        let mut status = VirtualMachineStatus {
            printable_status: Some(PrintableStatus::Stopped),
            ..Default::default()
        };
        note_spec_error(&mut status, "domain.memory.guest: \"lots\" is not a quantity", false);
        assert_eq!(status.printable_status, Some(PrintableStatus::ErrorUnschedulable));
        let file = StatusFile {
            name: "broken".into(),
            namespace: "default".into(),
            status,
        };
        let text = table(&header(true), &[row(&file, true)]);
        assert!(text.lines().next().unwrap().ends_with("REASON"), "{text}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("ErrorUnschedulable"), "{text}");
        assert!(
            row.ends_with("InvalidSpec: domain.memory.guest: \"lots\" is not a quantity"),
            "{text}"
        );
    }
}
