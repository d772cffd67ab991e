//! `list` and `status` output: the columns of `kubectl get vm` (the CRD's printer columns), `-o wide` adding the
//! launcher Pod and restarts, `-o yaml|json` the objects.

use vmlet_api::{ConditionType, VirtualMachine, VirtualMachineStatus};

use crate::standalone;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

/// The printable status, as the STATUS column shows it.
pub fn printable(status: Option<&VirtualMachineStatus>) -> String {
    status
        .and_then(|s| s.printable_status)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Unknown".into())
}

/// The VMs as `output` asks, at `now`.
pub fn render(vms: &[VirtualMachine], output: Option<Output>, namespaces: bool, now: jiff::Timestamp) -> String {
    match output {
        Some(Output::Json) => {
            let value = if vms.len() == 1 {
                serde_json::to_value(&vms[0])
            } else {
                serde_json::to_value(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": vms}))
            };
            format!("{:#}\n", value.unwrap_or_default())
        }
        Some(Output::Yaml) => {
            if vms.len() == 1 {
                serde_yaml::to_string(&vms[0]).unwrap_or_default()
            } else {
                serde_yaml::to_string(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": vms}))
                    .unwrap_or_default()
            }
        }
        wide => table(vms, wide == Some(Output::Wide), namespaces, now),
    }
}

fn table(vms: &[VirtualMachine], wide: bool, namespaces: bool, now: jiff::Timestamp) -> String {
    let mut header = vec!["NAME", "STATUS", "READY", "IP", "NODE", "AGE"];
    if wide {
        header.extend(["LAUNCHER", "RESTARTS"]);
    }
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            let status = vm.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.iter().find(|c| c.condition_type == ConditionType::Ready))
                .map(|c| c.status.clone())
                .unwrap_or_default();
            let age = vm
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| age(now.duration_since(t.0).as_secs()))
                .unwrap_or_else(|| "<unknown>".into());
            let mut row = vec![
                vm.metadata.name.clone().unwrap_or_default(),
                status
                    .and_then(|s| s.printable_status)
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_default(),
                ready,
                standalone::ip(vm).unwrap_or_default(),
                status.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                age,
            ];
            if wide {
                row.push(status.and_then(|s| s.launcher_pod.clone()).unwrap_or_default());
                row.push(status.map(|s| s.restart_count).unwrap_or_default().to_string());
            }
            if namespaces {
                row.insert(0, vm.metadata.namespace.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        format!("{}\n", padded.join("   ").trim_end())
    };
    let mut text = line(header);
    for row in &rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

/// kubectl's short ages: `45s`, `3m20s`, `15m`, `5h3m`, `20h`, `3d4h`, `12d`.
pub fn age(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 => format!("{m}m{}s", secs % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmlet_api::{Condition, InterfaceStatus, PrintableStatus};

    #[test]
    fn rows_carry_kubectl_get_vms_columns() {
        let mut vm: VirtualMachine = serde_yaml::from_str(
            "apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: web, namespace: lab, creationTimestamp: '2030-01-01T00:00:00Z'}\nspec: {template: {spec: {domain: {}}}}\n",
        )
        .unwrap();
        vm.status = Some(VirtualMachineStatus {
            printable_status: Some(PrintableStatus::Running),
            conditions: vec![Condition {
                condition_type: ConditionType::Ready,
                status: "True".into(),
                reason: None,
                message: None,
                last_transition_time: None,
            }],
            interfaces: vec![InterfaceStatus {
                name: "default".into(),
                ip_address: Some("10.111.0.2".into()),
                ..Default::default()
            }],
            node_name: Some("n1".into()),
            launcher_pod: Some("vmlet-launcher-web-abcde".into()),
            ..Default::default()
        });
        let now: jiff::Timestamp = "2030-01-01T00:03:20Z".parse().unwrap();
        let text = render(std::slice::from_ref(&vm), None, false, now);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["NAME", "STATUS", "READY", "IP", "NODE", "AGE"]);
        assert_eq!(lines[1], ["web", "Running", "True", "10.111.0.2", "n1", "3m20s"]);
        let wide = render(std::slice::from_ref(&vm), Some(Output::Wide), true, now);
        let cells: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "lab",
                "web",
                "Running",
                "True",
                "10.111.0.2",
                "n1",
                "3m20s",
                "vmlet-launcher-web-abcde",
                "0"
            ]
        );
        let json: serde_json::Value = serde_json::from_str(&render(&[vm], Some(Output::Json), false, now)).unwrap();
        assert_eq!(json["status"]["printableStatus"], "Running");
    }

    #[test]
    fn ages_read_as_kubectls() {
        let cases = [
            (5, "5s"),
            (200, "3m20s"),
            (900, "15m"),
            (5 * 3600 + 180, "5h3m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (12 * 86400, "12d"),
        ];
        for (secs, text) in cases {
            assert_eq!(age(secs), text);
        }
    }
}
