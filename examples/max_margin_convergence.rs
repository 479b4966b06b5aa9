//! `cargo run --release --example max_margin_convergence`: writes figures/max_margin_convergence.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("max_margin_convergence", || {
        rmflow::figures::max_margin_convergence(&Config::embedded_default())
    })
}
