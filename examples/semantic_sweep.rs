//! `cargo run --release --example semantic_sweep`: unseen-token accuracy vs α over 20 seeds;
//! writes figures/semantic_sweep.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut config = rmflow::config::Config::embedded_default();
    config.train.t_max = 1e6;
    config.train.observations_per_decade = 1;
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0];
    let data = rmflow::figures::semantic_sweep(&config, &alphas, 20)?;
    rmflow::figures::write(&data, std::path::Path::new("figures"), "semantic_sweep")?;
    eprintln!(
        "figures/semantic_sweep.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
