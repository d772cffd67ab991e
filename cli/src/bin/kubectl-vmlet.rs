//! `kubectl-vmlet`: the `vmlet` program under the name kubectl looks for plugins by, so `kubectl vmlet ...` runs it.

include!("../main.rs");
