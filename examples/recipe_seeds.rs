//! `cargo run --release --example recipe_seeds [NAME] [RUN_DIR ...]`: the paper's recipe
//! (`rmflow lm-recipe`) accuracy per epoch across seeds, one panel per reward model, from the
//! runs' `metrics.csv` (the first run drawn thick). Default: the committed 50-epoch
//! SmolLM2-135M-Instruct run on Anthropic's data and its seed runs under
//! `experiments/results/persona50_smollm2/`, into figures/NAME.{png,svg,csv} (default NAME
//! persona50_smollm2). Reads CSVs only: the runs take hours on 2 CPU cores (that folder's
//! README has their commands).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "persona50_smollm2".into());
    let mut dirs: Vec<String> = args.collect();
    if dirs.is_empty() {
        let root = "experiments/results/persona50_smollm2";
        // epoch0-seed-875: the 50-epoch run's epoch-0 footnote-3 statistics (its evaluations at
        // epochs 0 to 10 predate them), drawn as a thin run.
        dirs = ["seed-875", "seed-1", "seed-2", "seed-3", "epoch0-seed-875"]
            .iter()
            .map(|d| format!("{root}/{d}"))
            .collect();
    }
    rmflow::figures::run_example(&name, || {
        let runs = dirs
            .iter()
            .map(std::path::Path::new)
            .filter(|d| d.join("metrics.csv").is_file())
            .map(|d| {
                let read = |f: &str| std::fs::read_to_string(d.join(f));
                Ok(rmflow::figures::SeedRun {
                    label: d
                        .file_name()
                        .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
                    metrics: read("metrics.csv")
                        .map_err(|e| anyhow::anyhow!("{}/metrics.csv: {e}", d.display()))?,
                    alignment: read("alignment.csv").ok(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rmflow::figures::recipe_seeds(
            &runs,
            "lm-recipe on SmolLM2-135M-Instruct, Anthropic's agreeableness data (experiments/persona_paper.toml, CPU)",
        )
    })
}
