//! `cargo run --release --example ablations`: the IM-RM without a reference model and the EX-RM
//! averaged over response tokens; writes figures/ablations.{png,svg,csv} (see figures/README.md).

use rmflow::config::Config;

fn main() -> anyhow::Result<()> {
    let multi = Config::from_file(std::path::Path::new("experiments/multitoken.toml"))?;
    rmflow::figures::run_example("ablations", || {
        rmflow::figures::ablations(&Config::embedded_default(), &multi)
    })
}
