//! KubeVirt's readiness and liveness probes: how the guest is checked (a TCP connection, an HTTP GET, a command
//! run by its guest agent, or a ping of the agent) and how often, with the Kubernetes defaults for what a probe
//! leaves out.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
#[cfg(feature = "kubernetes")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Empty;

/// One probe of the guest. Exactly one way of checking is given; gRPC probes are not offered (the field does not
/// exist here, so a manifest that has one is refused by name).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.tcpSocket), has(self.httpGet), has(self.exec), has(self.guestAgentPing)].filter(s, s).size() == 1",
    "message": "exactly one check is required: tcpSocket, httpGet, exec or guestAgentPing",
}])))]
pub struct Probe {
    /// A TCP connection to the guest's port succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// An HTTP GET of the guest answers with a status from 200 to 399.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// A command run in the guest by its QEMU guest agent exits with 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// The guest's QEMU guest agent answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent_ping: Option<Empty>,
    /// Seconds after the guest starts before the first check; 0 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
    /// Seconds between checks; 10 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub period_seconds: Option<u32>,
    /// Seconds a check may take before it counts as failed; 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub timeout_seconds: Option<u32>,
    /// Successes in a row after a failure before the probe passes again; 1 by default, and 1 for liveness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub success_threshold: Option<u32>,
    /// Failures in a row before the probe fails; 3 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(range(min = 1)))]
    pub failure_threshold: Option<u32>,
}

/// A TCP port of the guest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    /// A port number; Kubernetes' named ports have no meaning for a guest.
    pub port: IntOrString,
    /// The address to connect to; by default the guest's (the pod's) address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    /// A port number, as for `tcpSocket`.
    pub port: IntOrString,
    /// `/` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The address to connect to (and the `Host` header); by default the guest's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` only: vmlet offers no HTTPS probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kubernetes", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    /// The program and its arguments, run without a shell.
    #[serde(default)]
    pub command: Vec<String>,
}

/// A probe's timing with Kubernetes' defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// How a probe checks the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    TcpSocket {
        host: Option<String>,
        port: u16,
    },
    HttpGet {
        host: Option<String>,
        port: u16,
        path: String,
    },
    Exec {
        command: Vec<String>,
    },
    GuestAgentPing,
}

impl Probe {
    pub fn timing(&self) -> ProbeTiming {
        let seconds = |value: Option<u32>, default: u32| Duration::from_secs(u64::from(value.unwrap_or(default)));
        ProbeTiming {
            initial_delay: seconds(self.initial_delay_seconds, 0),
            period: seconds(self.period_seconds.filter(|&p| p > 0), 10),
            timeout: seconds(self.timeout_seconds.filter(|&t| t > 0), 1),
            success_threshold: self.success_threshold.unwrap_or(1).max(1),
            failure_threshold: self.failure_threshold.unwrap_or(3).max(1),
        }
    }

    /// The check, if the probe gives exactly one that vmlet can carry out (`validate` says why not otherwise).
    pub fn check(&self) -> Option<ProbeCheck> {
        let checks = [
            self.tcp_socket.as_ref().map(|tcp| {
                port_number(&tcp.port).map(|port| ProbeCheck::TcpSocket {
                    host: tcp.host.clone(),
                    port,
                })
            }),
            self.http_get.as_ref().map(|http| {
                port_number(&http.port).map(|port| ProbeCheck::HttpGet {
                    host: http.host.clone(),
                    port,
                    path: http.path.clone().unwrap_or_else(|| "/".into()),
                })
            }),
            self.exec.as_ref().map(|exec| {
                Some(ProbeCheck::Exec {
                    command: exec.command.clone(),
                })
            }),
            self.guest_agent_ping.as_ref().map(|_| Some(ProbeCheck::GuestAgentPing)),
        ];
        let mut given = checks.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(check), None) => check,
            _ => None,
        }
    }

    /// Every broken rule of this probe, with its field below the probe (`tcpSocket.port`).
    pub(crate) fn problems(&self, liveness: bool) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let given = [
            self.tcp_socket.is_some(),
            self.http_get.is_some(),
            self.exec.is_some(),
            self.guest_agent_ping.is_some(),
        ]
        .into_iter()
        .filter(|&g| g)
        .count();
        if given != 1 {
            problems.push((
                String::new(),
                "exactly one check is required: tcpSocket, httpGet, exec or guestAgentPing".into(),
            ));
        }
        let mut port = |field: &str, port: &IntOrString| {
            if port_number(port).is_none() {
                let shown = match port {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => format!("{s:?}"),
                };
                problems.push((format!("{field}.port"), format!("{shown} is not a port number")));
            }
        };
        if let Some(tcp) = &self.tcp_socket {
            port("tcpSocket", &tcp.port);
        }
        if let Some(http) = &self.http_get {
            port("httpGet", &http.port);
            if let Some(scheme) = http.scheme.as_deref().filter(|s| *s != "HTTP") {
                problems.push((
                    "httpGet.scheme".into(),
                    format!("{scheme:?} is not supported by vmlet: only HTTP"),
                ));
            }
            if let Some(path) = http.path.as_deref().filter(|p| !p.starts_with('/')) {
                problems.push(("httpGet.path".into(), format!("{path:?} does not start with '/'")));
            }
        }
        if let Some(exec) = &self.exec
            && exec.command.first().is_none_or(String::is_empty)
        {
            problems.push(("exec.command".into(), "a program to run is required".into()));
        }
        for (field, value) in [
            ("periodSeconds", self.period_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("successThreshold", self.success_threshold),
            ("failureThreshold", self.failure_threshold),
        ] {
            if value == Some(0) {
                problems.push((field.into(), "must be at least 1".into()));
            }
        }
        if liveness && self.success_threshold.is_some_and(|n| n != 1) {
            problems.push(("successThreshold".into(), "must be 1 for a liveness probe".into()));
        }
        problems
    }
}

/// A port given as a number from 1 to 65535.
fn port_number(port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|&p| p > 0),
        IntOrString::String(_) => None,
    }
}
