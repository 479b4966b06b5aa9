//! `cargo run --release --example preference_shift [NAME] [RUN_DIR]`: the paper's Section 5.2
//! bar chart from a run of `rmflow lm-recipe` on preference data: accuracy and normalised margin
//! per evaluation set, EX-RM beside IM-RM, grouped as in distribution / token-level shift
//! (paraphrase, French, Spanish) / domain shift (RewardBench math and code, RewardMATH), and each
//! group's mean accuracy by epoch. Default: the committed SmolLM2-135M-Instruct run of
//! `experiments/uf_shift.toml` under `experiments/results/uf_shift_smollm2/`, into
//! figures/NAME.{png,svg,csv} (default NAME uf_shift_smollm2). Reads the run's `metrics.csv`
//! only.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "uf_shift_smollm2".into());
    let dir = args
        .next()
        .unwrap_or_else(|| "experiments/results/uf_shift_smollm2".into());
    rmflow::figures::run_example(&name, || {
        let path = std::path::Path::new(&dir).join("metrics.csv");
        let metrics = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        rmflow::figures::preference_shift(
            &metrics,
            &format!("lm-recipe on preference data ({dir}/metrics.csv): exact-tie accuracy and the official normalised margin per set"),
        )
    })
}
