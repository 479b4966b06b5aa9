//! `cargo run --release --example rho_heatmap`: writes figures/rho_heatmap.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("rho_heatmap", || {
        rmflow::figures::rho_heatmap(&Config::embedded_default())
    })
}
