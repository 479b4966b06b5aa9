//! `cargo run --release --example theorem2_accuracy`: writes figures/theorem2_accuracy.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let config = rmflow::config::Config::embedded_default();
    let data = rmflow::figures::theorem2_accuracy(&config)?;
    rmflow::figures::write(&data, std::path::Path::new("figures"), "theorem2_accuracy")?;
    eprintln!(
        "figures/theorem2_accuracy.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
