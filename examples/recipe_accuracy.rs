//! `cargo run --release --example recipe_accuracy [NAME] [RUN_DIR ...]`: the paper's recipe
//! (`rmflow lm-recipe`) accuracy per epoch, both reward models, every split, from the runs'
//! `metrics.csv` (default: the committed SmolLM2-135M-Instruct runs under
//! `experiments/results/smollm2_recipe/`), into figures/NAME.{png,svg,csv} (default NAME
//! recipe_smollm2). Reads CSVs only: the runs themselves take an hour on 2 CPU cores
//! (experiments/results/smollm2_recipe/README.md has their commands).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "recipe_smollm2".into());
    let mut dirs: Vec<String> = args.collect();
    if dirs.is_empty() {
        dirs = ["full_imrm", "full_exrm", "head"]
            .iter()
            .map(|d| format!("experiments/results/smollm2_recipe/{d}"))
            .collect();
    }
    rmflow::figures::run_example(&name, || {
        let texts = dirs
            .iter()
            .filter(|d| std::path::Path::new(d).join("metrics.csv").is_file())
            .map(|d| {
                std::fs::read_to_string(std::path::Path::new(d).join("metrics.csv"))
                    .map_err(|e| anyhow::anyhow!("{d}/metrics.csv: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rmflow::figures::recipe_accuracy(
            &texts,
            "lm-recipe on SmolLM2-135M-Instruct (experiments/persona_paper.toml, ChatML, CPU)",
        )
    })
}
