//! `cargo run --release --features lm --example verification_without_generation_hamiltonian
//! [RUN_DIR ...]`: verification accuracy, generation success and the exact `π(C|x)` over
//! training of `rmflow ham-cycle` runs (default: the committed runs under
//! `experiments/results/ham_cycle/`: `n6` and `n10` from scratch, `smollm2_n6_lr1e-6`,
//! `smollm2_n6_lr1e-5` and the official size `smollm2_n10` on a pretrained SmolLM2, where
//! present), into
//! figures/verification_without_generation_hamiltonian.
//! Reads the runs' `metrics.csv` only; the runs' commands are in
//! experiments/results/ham_cycle/README.md.

fn main() -> anyhow::Result<()> {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        dirs = [
            "n6",
            "n10",
            "smollm2_n6_lr1e-6",
            "smollm2_n6_lr1e-5",
            "smollm2_n10",
        ]
        .iter()
        .map(|d| format!("experiments/results/ham_cycle/{d}"))
        .collect();
    }
    rmflow::figures::run_example("verification_without_generation_hamiltonian", || {
        let runs = dirs
            .iter()
            .map(std::path::Path::new)
            .filter(|d| d.join("metrics.csv").is_file())
            .map(|d| {
                let text = std::fs::read_to_string(d.join("metrics.csv"))
                    .map_err(|e| anyhow::anyhow!("{}/metrics.csv: {e}", d.display()))?;
                let label = d.file_name().map_or(d.display().to_string(), |n| {
                    n.to_string_lossy().into_owned()
                });
                Ok((label, text))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rmflow::figures::verification_without_generation_hamiltonian(&runs)
    })
}
