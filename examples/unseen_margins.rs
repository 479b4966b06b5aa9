//! `cargo run --release --example unseen_margins`: writes figures/unseen_margins.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let config = rmflow::config::Config::embedded_default();
    let data = rmflow::figures::unseen_margins(&config)?;
    rmflow::figures::write(&data, std::path::Path::new("figures"), "unseen_margins")?;
    eprintln!(
        "figures/unseen_margins.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
