//! `cargo run --release --example unseen_margins`: writes figures/unseen_margins.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("unseen_margins", || {
        rmflow::figures::unseen_margins(&Config::embedded_default())
    })
}
