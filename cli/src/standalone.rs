//! Standalone mode: the VMs are the manifests in a folder that `vmlet-handler standalone` runs, their status the
//! `NAME.status.yaml` files beside them, their pods `STATE/pods/NAMESPACE_NAME/` (docs/standalone.md). A change to a
//! VM is an edit of its manifest, of the one field concerned (`manifest_edit`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;
use vmlet_api::{RUN_ANNOTATION, VirtualMachine, VirtualMachineStatus};

use crate::manifest_edit;
use crate::run_strategy::Change;
use crate::{Endpoint, Error, Result, Stream};

/// `vmlet-handler standalone`'s default state folder.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vmlet/standalone";

pub struct Machine {
    pub manifests: PathBuf,
    pub state_dir: PathBuf,
    pub namespace: String,
    /// Whether a handler runs on these manifests (found among the machine's processes).
    pub handler_runs: bool,
}

/// A VM's manifest: the file, the document's place in it, the VM it describes.
pub struct Found {
    pub path: PathBuf,
    pub document: std::ops::Range<usize>,
    pub vm: VirtualMachine,
}

#[derive(Deserialize)]
struct StatusFile {
    name: String,
    namespace: String,
    status: VirtualMachineStatus,
}

impl Machine {
    /// The machine of `manifests`, or of the running handler whose state folder is `state_dir` when only that is
    /// given.
    pub fn locate(
        manifests: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        namespace: Option<String>,
    ) -> Result<Machine> {
        if let Some(manifests) = manifests {
            return Ok(Machine::new(manifests, state_dir, namespace));
        }
        let state = state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let wanted = state.canonicalize().unwrap_or_else(|_| state.clone());
        let manifests = running_handlers()
            .into_iter()
            .find(|(_, s)| *s == wanted)
            .map(|(m, _)| m)
            .ok_or_else(|| Error::HandlerNotRunning(state.clone()))?;
        Ok(Machine::new(manifests, Some(state), namespace))
    }

    /// The machine of `manifests`: its state folder as given, else the running handler's, else the default.
    pub fn new(manifests: PathBuf, state_dir: Option<PathBuf>, namespace: Option<String>) -> Machine {
        let wanted = manifests.canonicalize().ok();
        let handler = running_handlers()
            .into_iter()
            .find(|(m, _)| Some(m) == wanted.as_ref())
            .map(|(_, state)| state);
        let handler_runs = handler.is_some();
        let state_dir = state_dir
            .or(handler)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        Machine {
            manifests,
            state_dir,
            namespace: namespace.unwrap_or_else(|| "default".into()),
            handler_runs,
        }
    }

    fn require_handler(&self) -> Result<()> {
        if self.handler_runs {
            Ok(())
        } else {
            Err(Error::HandlerNotRunning(self.manifests.clone()))
        }
    }

    fn manifest_files(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.manifests).map_err(|source| Error::File {
            path: self.manifests.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                !name.ends_with(".status.yaml") && [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every VirtualMachine of the folder, with where it is written.
    fn manifests(&self) -> Result<Vec<Found>> {
        let mut found = Vec::new();
        for path in self.manifest_files()? {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            for document in manifest_edit::documents(&text) {
                let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text[document.clone()]) else {
                    continue;
                };
                if value.get("kind").and_then(|k| k.as_str()) != Some("VirtualMachine") {
                    continue;
                }
                // A manifest that does not validate is still a VM to list and to fix; only its kind matters here.
                let Ok(mut vm) = serde_yaml::from_value::<VirtualMachine>(value) else {
                    continue;
                };
                vm.metadata.namespace.get_or_insert_with(|| "default".into());
                if vm.metadata.creation_timestamp.is_none() {
                    vm.metadata.creation_timestamp = modified(&path);
                }
                found.push(Found {
                    path: path.clone(),
                    document,
                    vm,
                });
            }
        }
        Ok(found)
    }

    pub fn find(&self, name: &str) -> Result<Found> {
        let mut found = self
            .manifests()?
            .into_iter()
            .find(|f| {
                f.vm.metadata.name.as_deref() == Some(name)
                    && f.vm.metadata.namespace.as_deref() == Some(&self.namespace)
            })
            .ok_or_else(|| Error::NoSuchVm {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                place: format!(" in {}", self.manifests.display()),
            })?;
        found.vm.status = self.status(name);
        Ok(found)
    }

    fn status_path(&self, namespace: &str, name: &str) -> PathBuf {
        let stem = if namespace == "default" {
            name.to_owned()
        } else {
            format!("{namespace}_{name}")
        };
        self.manifests.join(format!("{stem}.status.yaml"))
    }

    fn status(&self, name: &str) -> Option<VirtualMachineStatus> {
        let text = std::fs::read_to_string(self.status_path(&self.namespace, name)).ok()?;
        let file: StatusFile = serde_yaml::from_str(&text).ok()?;
        (file.name == name && file.namespace == self.namespace).then_some(file.status)
    }

    pub async fn vm(&self, name: &str) -> Result<VirtualMachine> {
        self.require_handler()?;
        Ok(self.find(name)?.vm)
    }

    pub async fn list(&self, all_namespaces: bool) -> Result<Vec<VirtualMachine>> {
        self.require_handler()?;
        let mut vms = Vec::new();
        for found in self.manifests()? {
            let namespace = found.vm.metadata.namespace.clone().unwrap_or_default();
            if !all_namespaces && namespace != self.namespace {
                continue;
            }
            let mut vm = found.vm;
            let name = vm.metadata.name.clone().unwrap_or_default();
            vm.status = std::fs::read_to_string(self.status_path(&namespace, &name))
                .ok()
                .and_then(|text| serde_yaml::from_str::<StatusFile>(&text).ok())
                .map(|file| file.status);
            vms.push(vm);
        }
        Ok(vms)
    }

    /// Edits the VM's manifest in place: the one field, nothing else of the file.
    pub async fn change(&self, name: &str, change: Change) -> Result<()> {
        self.require_handler()?;
        let found = self.find(name)?;
        let path = found.path.clone();
        let text = std::fs::read_to_string(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        let doc = &text[found.document.clone()];
        let edited = match change {
            Change::Strategy(strategy) => manifest_edit::set_run_strategy(doc, strategy.as_str()),
            Change::Running(running) => manifest_edit::set_running(doc, running),
            Change::Request(request) => {
                // The handler acts on a request value once and remembers it (docs/standalone.md): forgetting that
                // makes the same value a new request, as the controller's removal of the annotation does.
                let record = self.state_dir.join("requests").join(self.pod_key(name));
                let _ = std::fs::remove_file(record);
                manifest_edit::set_annotation(doc, RUN_ANNOTATION, request)
            }
        }
        .map_err(|source| Error::Edit {
            path: path.clone(),
            source,
        })?;
        let whole = format!(
            "{}{edited}{}",
            &text[..found.document.start],
            &text[found.document.end..]
        );
        // Through a temporary file and a rename, so the handler never reads half a manifest.
        let tmp = path.with_file_name(format!(
            ".{}.vmlet-tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("manifest")
        ));
        std::fs::write(&tmp, whole)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::File { path, source })
    }

    fn pod_key(&self, name: &str) -> String {
        format!("{}_{name}", self.namespace)
    }

    pub fn pod_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("pods").join(self.pod_key(name))
    }

    pub async fn open(&self, vm: &VirtualMachine, endpoint: Endpoint) -> Result<Stream> {
        let name = vm.metadata.name.clone().unwrap_or_default();
        let not_running = || Error::NotRunning {
            name: name.clone(),
            status: crate::table::printable(vm.status.as_ref()),
        };
        let run_dir = vmlet_control::RunDir::new(self.pod_dir(&name).join("run"));
        if let Some(path) = endpoint.socket_path(&run_dir) {
            if !path.exists() {
                return Err(not_running());
            }
            let stream = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|_| not_running())?;
            return Ok(Box::new(stream));
        }
        let Endpoint::Port(port) = endpoint else {
            unreachable!("every other endpoint is a socket")
        };
        let address = ip(vm).ok_or_else(not_running)?;
        let stream = tokio::net::TcpStream::connect((address.as_str(), port)).await?;
        Ok(Box::new(stream))
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.pod_dir(name).join("launcher.log")
    }
}

/// The VM's first address, as its status shows it.
pub fn ip(vm: &VirtualMachine) -> Option<String> {
    let status = vm.status.as_ref()?;
    status
        .interfaces
        .iter()
        .find_map(|i| i.ip_address.clone().or_else(|| i.ip_addresses.first().cloned()))
}

fn modified(path: &Path) -> Option<Time> {
    let at = std::fs::metadata(path).ok()?.modified().ok()?;
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(Time(jiff::Timestamp::from_second(secs as i64).ok()?))
}

/// The manifest and state folders of every `vmlet-handler standalone` running on this machine, resolved.
fn running_handlers() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut handlers = Vec::new();
    for entry in entries.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some((manifests, state)) = handler_args(&argv) else {
            continue;
        };
        // Relative folders are the handler's, from its working directory.
        let cwd = entry.path().join("cwd");
        let resolve = |dir: PathBuf| cwd.join(&dir).canonicalize().unwrap_or(dir);
        handlers.push((resolve(manifests), resolve(state)));
    }
    handlers
}

/// A `vmlet-handler standalone` command line's manifest and state folders.
fn handler_args(argv: &[String]) -> Option<(PathBuf, PathBuf)> {
    let program = Path::new(argv.first()?).file_name()?;
    if program != "vmlet-handler" || !argv.iter().any(|a| a == "standalone") {
        return None;
    }
    let value = |flag: &str| {
        argv.iter().enumerate().find_map(|(i, arg)| {
            if arg == flag {
                argv.get(i + 1).cloned()
            } else {
                arg.strip_prefix(&format!("{flag}=")).map(str::to_owned)
            }
        })
    };
    let manifests = value("--manifests")?;
    let state = value("--state-dir").unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    Some((manifests.into(), state.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_handlers_folders_come_from_its_command_line() {
        assert_eq!(
            handler_args(&argv(
                "/usr/bin/vmlet-handler standalone --manifests /srv/vms --state-dir=/srv/state"
            )),
            Some(("/srv/vms".into(), "/srv/state".into()))
        );
        assert_eq!(
            handler_args(&argv("vmlet-handler standalone --manifests=vms")),
            Some(("vms".into(), DEFAULT_STATE_DIR.into()))
        );
        assert_eq!(handler_args(&argv("vmlet-handler status --manifests /srv/vms")), None);
        assert_eq!(handler_args(&argv("vim standalone --manifests /srv/vms")), None);
    }

    #[tokio::test]
    async fn without_a_handler_the_verbs_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let machine = Machine::new(dir.path().to_owned(), None, None);
        assert!(!machine.handler_runs);
        let error = machine.vm("web").await.unwrap_err();
        assert!(matches!(error, Error::HandlerNotRunning(_)), "{error}");
        assert!(
            error.to_string().contains("vmlet-handler standalone --manifests"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_manifest_is_found_and_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let other = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
        let vm = "# mine\napiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: web}\nspec:\n  runStrategy: Always\n  template: {spec: {domain: {}}}\n";
        std::fs::write(dir.path().join("all.yaml"), format!("{other}---\n{vm}")).unwrap();
        let mut machine = Machine::new(dir.path().to_owned(), None, None);
        machine.handler_runs = true;
        let found = machine.find("web").unwrap();
        assert_eq!(found.vm.spec.run_strategy(), vmlet_api::RunStrategy::Always);
        machine
            .change("web", Change::Strategy(vmlet_api::RunStrategy::Halted))
            .await
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("all.yaml")).unwrap();
        assert_eq!(text, format!("{other}---\n{}", vm.replace("Always", "Halted")));
        let missing = machine.find("db").err().unwrap();
        assert!(
            missing.to_string().starts_with("there is no VM default/db in "),
            "{missing}"
        );
    }
}
