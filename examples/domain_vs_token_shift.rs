//! `cargo run --release --example domain_vs_token_shift`: writes figures/domain_vs_token_shift.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    rmflow::figures::run_example("domain_vs_token_shift", || {
        rmflow::figures::domain_vs_token_shift(&Config::embedded_default(), 20)
    })
}
