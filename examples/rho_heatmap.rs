//! `cargo run --release --example rho_heatmap`: writes figures/rho_heatmap.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let data = rmflow::figures::rho_heatmap(&rmflow::config::Config::embedded_default())?;
    rmflow::figures::write(&data, std::path::Path::new("figures"), "rho_heatmap")?;
    eprintln!(
        "figures/rho_heatmap.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
