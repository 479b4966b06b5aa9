//! `cargo run --release --example optimizers`: writes figures/optimizers.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("optimizers", || {
        rmflow::figures::optimizers(&Config::embedded_default())
    })
}
