//! `cargo run --release --example max_margin_convergence`: writes figures/max_margin_convergence.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let config = rmflow::config::Config::embedded_default();
    let data = rmflow::figures::max_margin_convergence(&config)?;
    rmflow::figures::write(
        &data,
        std::path::Path::new("figures"),
        "max_margin_convergence",
    )?;
    eprintln!(
        "figures/max_margin_convergence.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
