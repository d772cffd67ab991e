//! Link options of `vmlet-launcher` that make it smaller in memory (measured in docs/benchmarks.md):
//!
//! - packed relative relocations (DT_RELR, glibc 2.36 or newer): the dynamic loader reads a few kilobytes of them
//!   at start instead of about 190 KB of `.rela.dyn`;
//! - `dhcp-serve.ld`: the functions `vmlet-launcher dhcp-serve` runs, first and together in the executable, so that
//!   the pages it touches, and the kernel maps around each of them, are not spread over all of the launcher's code.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let layout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dhcp-serve.ld");
    println!("cargo::rerun-if-changed={}", layout.display());
    println!("cargo::rustc-link-arg-bin=vmlet-launcher=-Wl,-z,pack-relative-relocs");
    println!("cargo::rustc-link-arg-bin=vmlet-launcher=-Wl,-T,{}", layout.display());
}
