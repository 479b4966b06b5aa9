//! `cargo run --release --example verification_without_generation`: writes figures/verification_without_generation.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("verification_without_generation", || {
        rmflow::figures::verification_without_generation(&Config::embedded_default())
    })
}
