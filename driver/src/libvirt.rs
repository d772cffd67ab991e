//! libvirt's QEMU driver, embedded in this process (`qemu:///embed?root=RUN_DIR/libvirt`), and the lifecycle of the
//! pod's domain.
//!
//! Embedded rather than a per-pod `libvirtd`: measured in `docs/driver-choice.md`, it starts domains as fast, uses
//! about 23 MB less memory, and needs no daemon to supervise nor a mount namespace to hide its paths.
//!
//! libvirt daemonizes QEMU, so QEMU is re-parented to PID 1 of the pod (the launcher's reaper), which reaps it as soon
//! as it exits; this process must not be PID 1 nor a child subreaper, or QEMU's zombies would wait for it. Dropping
//! the [`Driver`] destroys its domains (libvirt's own autodestroy is not available to embedded drivers).
//!
//! virt is synchronous; its handles are `Send + Sync` and libvirt is thread-safe. libvirt's event loop, which the
//! embedded driver needs, runs on a thread of its own.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::sys;
use vmlet_domain::{DomainSpec, DomainSpecError, DomainState};

use crate::{root, state};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("libvirt's QEMU driver cannot run in PID 1, which must reap QEMU: run vmlet-driver under the launcher")]
    Pid1,
    #[error("cannot prepare libvirt's directory {}", .path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run libvirt's event loop: {0}")]
    EventLoop(String),
    #[error("cannot open libvirt's QEMU driver in {}", .root.display())]
    Connect {
        root: PathBuf,
        #[source]
        source: LibvirtError,
    },
    #[error("invalid domain {name}")]
    Spec {
        name: String,
        #[source]
        source: DomainSpecError,
    },
    #[error("cannot define domain {name}")]
    Define {
        name: String,
        #[source]
        source: LibvirtError,
    },
    #[error("cannot start domain {name}")]
    Start {
        name: String,
        #[source]
        source: LibvirtError,
    },
    #[error("cannot start a thread to watch domain {name}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} domain {name}")]
    Domain {
        action: &'static str,
        name: String,
        #[source]
        source: LibvirtError,
    },
}

/// libvirt's message for a failed call.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LibvirtError(String);

impl From<virt::error::Error> for LibvirtError {
    fn from(error: virt::error::Error) -> LibvirtError {
        LibvirtError(error.message().to_owned())
    }
}

/// The embedded QEMU driver: one per process.
pub struct Driver {
    connection: Connect,
    qemu_version: String,
    /// The short link libvirt knows the root by, when the root's own path is too long for its sockets.
    link: Option<PathBuf>,
}

impl Driver {
    /// Opens libvirt's QEMU driver with its files in `run_dir/libvirt` and QEMU's capabilities cached in
    /// `cache_dir`, shared by the pods on the node that run the same launcher image: with a warm cache this takes
    /// about 50 ms, without one about 1.5 s, the time libvirt takes to probe QEMU.
    pub fn start(run_dir: &Path, cache_dir: &Path) -> Result<Driver, DriverError> {
        if std::process::id() == 1 {
            return Err(DriverError::Pid1);
        }
        let started = Instant::now();
        let root = run_dir.join("libvirt");
        root::prepare(&root, cache_dir).map_err(|source| DriverError::Prepare {
            path: root.clone(),
            source,
        })?;
        let named = root::name_for_libvirt(&root).map_err(|source| DriverError::Prepare {
            path: root.clone(),
            source,
        })?;
        start_event_loop()?;
        let connect_error = |error: virt::error::Error| DriverError::Connect {
            root: root.clone(),
            source: error.into(),
        };
        let connection = Connect::open(Some(&root::embed_uri(&named))).map_err(connect_error)?;
        // libvirt probes QEMU on the first call that needs its capabilities: make it this one, not the first start.
        let version = connection.get_hyp_version().map_err(connect_error)?;
        let qemu_version = format!("{}.{}.{}", version / 1_000_000, version / 1000 % 1000, version % 1000);
        // The launcher logs it from the `ready` event.
        tracing::debug!(
            root = %root.display(),
            qemu = qemu_version,
            elapsed_ms = started.elapsed().as_millis(),
            "libvirt's QEMU driver is ready"
        );
        Ok(Driver {
            connection,
            qemu_version,
            link: (named != root).then_some(named),
        })
    }

    /// QEMU's version, as libvirt reports it: `7.2.0`.
    pub fn qemu_version(&self) -> &str {
        &self.qemu_version
    }

    /// Defines the domain (replacing an earlier definition of the same name), starts it, and calls `on_change` with
    /// every change of its state (see [`state::watch`]).
    pub fn define_and_start(
        &self,
        spec: &DomainSpec,
        on_change: impl FnMut(DomainState) -> bool + Send + 'static,
    ) -> Result<Domain, DriverError> {
        let started = Instant::now();
        let name = spec.name.clone();
        let xml = spec.to_xml().map_err(|source| DriverError::Spec {
            name: name.clone(),
            source,
        })?;
        let domain = virt::domain::Domain::define_xml(&self.connection, &xml).map_err(|error| DriverError::Define {
            name: name.clone(),
            source: error.into(),
        })?;
        domain.create().map_err(|error| DriverError::Start {
            name: name.clone(),
            source: error.into(),
        })?;
        if let Err(source) = state::watch(&name, domain.clone(), DomainState::Running, on_change) {
            if let Err(destroy_error) = domain.destroy() {
                let error = LibvirtError::from(destroy_error);
                tracing::warn!(domain = name, %error, "cannot destroy the unwatched domain");
            }
            return Err(DriverError::Thread { name, source });
        }
        tracing::info!(
            domain = name,
            elapsed_ms = started.elapsed().as_millis(),
            "domain started"
        );
        Ok(Domain { name, domain })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The guest lives and dies with the launcher, and so with this process.
        match self.connection.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE) {
            Ok(domains) => {
                for domain in domains {
                    if let Err(error) = domain.destroy() {
                        tracing::warn!(error = %LibvirtError::from(error), "cannot destroy a domain");
                    }
                }
            }
            Err(error) => tracing::warn!(error = %LibvirtError::from(error), "cannot list the running domains"),
        }
        if let Err(error) = self.connection.close() {
            tracing::warn!(error = %LibvirtError::from(error), "cannot close the connection to libvirt");
        }
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// The pod's running domain.
pub struct Domain {
    name: String,
    domain: virt::domain::Domain,
}

impl Domain {
    /// The state now, asked of libvirt.
    pub fn state(&self) -> Result<DomainState, DriverError> {
        let (state, reason) = self
            .domain
            .get_state()
            .map_err(|error| self.error("read the state of", error))?;
        Ok(state::from_libvirt(state, reason))
    }

    /// Presses the ACPI power button; the guest decides whether and when to power off.
    pub fn shutdown(&self) -> Result<(), DriverError> {
        self.domain
            .shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            .map(drop)
            .map_err(|error| self.error("shut down", error))
    }

    /// Kills QEMU. A domain that has already stopped is left as it is.
    pub fn destroy(&self) -> Result<(), DriverError> {
        match self.domain.destroy() {
            Ok(()) => Ok(()),
            Err(_) if self.state().is_ok_and(DomainState::is_stopped) => Ok(()),
            Err(error) => Err(self.error("destroy", error)),
        }
    }

    /// Stops the guest's vCPUs; QEMU keeps its memory.
    pub fn pause(&self) -> Result<(), DriverError> {
        self.domain
            .suspend()
            .map(drop)
            .map_err(|error| self.error("pause", error))
    }

    pub fn resume(&self) -> Result<(), DriverError> {
        self.domain
            .resume()
            .map(drop)
            .map_err(|error| self.error("resume", error))
    }

    fn error(&self, action: &'static str, error: virt::error::Error) -> DriverError {
        DriverError::Domain {
            action,
            name: self.name.clone(),
            source: error.into(),
        }
    }
}

/// libvirt's default event loop, registered once per process and run on its own thread: the embedded driver
/// handles QEMU's monitor and QEMU's exit through it.
fn start_event_loop() -> Result<(), DriverError> {
    static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();
    EVENT_LOOP
        .get_or_init(|| {
            // By default libvirt also prints every error to stderr; the errors returned here carry them.
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl().map_err(|error| LibvirtError::from(error).to_string())?;
            thread::Builder::new()
                .name("libvirt-events".to_owned())
                .spawn(run_event_loop)
                .map(drop)
                .map_err(|error| format!("cannot start its thread: {error}"))
        })
        .clone()
        .map_err(DriverError::EventLoop)
}

fn run_event_loop() {
    loop {
        if let Err(error) = virt::event::event_run_default_impl() {
            tracing::warn!(error = %LibvirtError::from(error), "libvirt's event loop failed an iteration");
            thread::sleep(Duration::from_millis(100));
        }
    }
}
