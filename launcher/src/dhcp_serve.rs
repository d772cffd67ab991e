//! `vmlet-launcher dhcp-serve`: the DHCP server alone, for operators and benchmarks.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("dhcp-serve is not implemented yet")
}
