//! `cargo run --release --example optimizers`: writes figures/optimizers.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let config = rmflow::config::Config::embedded_default();
    let data = rmflow::figures::optimizers(&config)?;
    rmflow::figures::write(&data, std::path::Path::new("figures"), "optimizers")?;
    eprintln!(
        "figures/optimizers.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
