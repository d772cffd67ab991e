//! What can go wrong, each worded so a person knows what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("there is no VM {namespace}/{name}{place}")]
    NoSuchVm {
        namespace: String,
        name: String,
        /// Where it was looked for, e.g. " in /srv/vms".
        place: String,
    },
    #[error("the VM {name} is not running (its status: {status})")]
    NotRunning { name: String, status: String },
    /// The API server's 403, naming the permission that is missing.
    #[error("not allowed: {0} (the ClusterRole vmlet-user grants what vmlet uses)")]
    Forbidden(String),
    #[error(
        "no vmlet-handler standalone runs on {}: start it with `vmlet-handler standalone --manifests {}`",
        .0.display(),
        .0.display()
    )]
    HandlerNotRunning(PathBuf),
    /// The verb does not apply to the VM as it is: starting a running VM, say.
    #[error("{0}")]
    Refused(String),
    #[error("cannot use {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a manifest vmlet reads", path.display())]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("cannot change {} in place", path.display())]
    Edit {
        path: PathBuf,
        #[source]
        source: crate::manifest_edit::EditError,
    },
    #[error("cannot read the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error("the API server refused")]
    Api(#[source] kube::Error),
    #[error("the launcher refused: {0}")]
    Launcher(String),
    #[error("the connection to the VM failed")]
    Io(#[from] std::io::Error),
    #[error("{what} did not happen within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Error {
        match &error {
            kube::Error::Api(status) if status.is_forbidden() => Error::Forbidden(forbidden(&status.message)),
            _ => Error::Api(error),
        }
    }
}

/// The API server's 403 message, `pods "p" is forbidden: User "u" cannot create resource "pods/exec" in API group ""
/// in the namespace "ns"`, from its reason on: who is missing which verb on which resource.
fn forbidden(message: &str) -> String {
    match message.split_once("is forbidden: ") {
        Some((_, why)) => why.to_owned(),
        None => message.to_owned(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, as the program prints it.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_says_which_permission_is_missing() {
        let status = kube::core::Status::failure(
            "pods \"p\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the \
             namespace \"ns\"",
            "Forbidden",
        )
        .with_code(403);
        let error = Error::from(kube::Error::Api(status.boxed()));
        assert_eq!(
            error.to_string(),
            "not allowed: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \
             \"ns\" (the ClusterRole vmlet-user grants what vmlet uses)"
        );
    }
}
