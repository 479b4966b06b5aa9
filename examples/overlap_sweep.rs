//! `cargo run --release --example overlap_sweep`: accuracy vs token overlap (experiments/overlap_sweep.toml);
//! writes figures/overlap_sweep.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let file = rmflow::sweep::SweepFile::from_file(std::path::Path::new(
        "experiments/overlap_sweep.toml",
    ))?;
    let data = rmflow::figures::overlap_sweep(&file)?;
    rmflow::figures::write(&data, std::path::Path::new("figures"), "overlap_sweep")?;
    eprintln!(
        "figures/overlap_sweep.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
