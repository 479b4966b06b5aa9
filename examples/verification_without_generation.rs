//! `cargo run --release --example verification_without_generation`: writes figures/verification_without_generation.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let config = rmflow::config::Config::embedded_default();
    let data = rmflow::figures::verification_without_generation(&config)?;
    rmflow::figures::write(
        &data,
        std::path::Path::new("figures"),
        "verification_without_generation",
    )?;
    eprintln!(
        "figures/verification_without_generation.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
