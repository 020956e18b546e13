//! `vitals-agent inject`: rewrites pod specs so Vitals watches them (placeholder until the
//! deploy issue lands; the interface below is the contract with `main.rs`).

use clap::Args;

/// Flags of `vitals-agent inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML to read; `-` (the default) reads stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: String,
}

/// Reads the manifests, injects Vitals, writes them to stdout.
pub fn run(args: &InjectArgs) -> anyhow::Result<()> {
    anyhow::bail!("inject is not implemented yet (input: {})", args.file)
}
