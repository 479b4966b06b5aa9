//! `cargo run --release --features lm --example real_model [MODEL_DIR] [CONFIG] [NAME]`: runs the
//! real-model experiment in full mode (default: models/all-MiniLM-L6-v2 from
//! scripts/fetch-model.sh, experiments/persona.toml) and writes figures/NAME.{png,svg,csv}
//! (default NAME real_model; see figures/README.md). A few minutes on CPU.

use rmflow::lm::{run_experiment, Device, LmFile, Mode};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/all-MiniLM-L6-v2".into()),
    );
    let config = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "experiments/persona.toml".into()),
    );
    let name = args.next().unwrap_or_else(|| "real_model".into());
    rmflow::figures::run_example(&name, || {
        let file = LmFile::from_file(&config)?;
        let run = run_experiment(&model, &file, &Device::Cpu, Mode::Full, &mut |kind, r| {
            eprintln!("{} step {}: loss {:.4}", kind.name(), r.step, r.loss);
        })?;
        rmflow::figures::real_model(&run)
    })
}
