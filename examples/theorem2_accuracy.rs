//! `cargo run --release --example theorem2_accuracy`: writes figures/theorem2_accuracy.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("theorem2_accuracy", || {
        rmflow::figures::theorem2_accuracy(&Config::embedded_default())
    })
}
