//! `cargo run --release --example semantic_sweep`: unseen-token accuracy vs α over 20 seeds;
//! writes figures/semantic_sweep.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let mut config = rmflow::config::Config::embedded_default();
    config.train.t_max = 1e6;
    config.train.observations_per_decade = 1.0;
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0];
    rmflow::figures::run_example("semantic_sweep", || {
        rmflow::figures::semantic_sweep(&config, &alphas, 20)
    })
}
