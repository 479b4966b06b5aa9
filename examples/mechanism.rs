//! `cargo run --release --example mechanism [NAME] [OUT_DIR] [SPLIT]`: the paper's mechanism
//! measured by `rmflow lm-dynamics` (MATH.md §3): on one evaluation split, each pair's predicted
//! IM-RM margin velocity split into token identity and the rest, the EX-RM head's beside it, and
//! the tokens that carry the identity part. Default: the committed SmolLM2-135M-Instruct persona
//! measurement at step 0, `experiments/results/mechanism_smollm2/persona_step0`, split
//! `paraphrased_test`, into figures/NAME.{png,svg,csv} (default NAME mechanism_persona_step0).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .unwrap_or_else(|| "mechanism_persona_step0".into());
    let dir = args
        .next()
        .unwrap_or_else(|| "experiments/results/mechanism_smollm2/persona_step0".into());
    let split = args.next().unwrap_or_else(|| "paraphrased_test".into());
    rmflow::figures::run_example(&name, || {
        let read = |f: &str| {
            let p = std::path::Path::new(&dir).join(f);
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        rmflow::figures::mechanism(
            &read("pairs.csv")?,
            &read("tokens.csv")?,
            &split,
            &format!("rmflow lm-dynamics ({dir}): predicted margin velocities at one gradient-flow instant, MATH.md §3"),
        )
    })
}
