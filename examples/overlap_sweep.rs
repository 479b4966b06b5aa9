//! `cargo run --release --example overlap_sweep`: accuracy vs token overlap (experiments/overlap_sweep.toml);
//! writes figures/overlap_sweep.{png,svg,csv} (see figures/README.md).

fn main() -> anyhow::Result<()> {
    let file = rmflow::analysis::sweep::SweepFile::from_file(std::path::Path::new(
        "experiments/overlap_sweep.toml",
    ))?;
    rmflow::figures::run_example("overlap_sweep", || rmflow::figures::overlap_sweep(&file))
}
