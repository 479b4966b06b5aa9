//! rmflow's forwards against the reference implementation: tiny random checkpoints built and run
//! by Hugging Face `transformers` (`scripts/reference_fixtures.py`, fixtures under
//! `tests/fixtures/reference`), loaded by rmflow and compared logit by logit (BERT: `h Eᵀ` from
//! `BertModel`'s last hidden state and its word embeddings). No Python needed.
#![cfg(feature = "lm")]

use rmflow::lm::{Device, Forward, LanguageModel};
use std::path::{Path, PathBuf};

/// f32 forwards of a 2-layer, D = 32 model: agreement to 1e-4 absolute (the bound).
const LOGIT_TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

#[test]
fn logits_match_transformers_on_every_family() {
    let names = [
        "llama-gqa",
        "llama-tied",
        "llama3-rope",
        "qwen2",
        "qwen2-tied",
        "gpt2",
        "pythia",
        "neox-sequential",
        "bert",
    ];
    let mut report = Vec::new();
    for name in names {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let inputs: Vec<Vec<u32>> = serde_json::from_value(r["inputs"].clone()).unwrap();
        let expected: Vec<Vec<Vec<f64>>> = serde_json::from_value(r["logits"].clone()).unwrap();
        let lm = LanguageModel::load(&dir, &Device::Cpu, Forward::Nets)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(lm.arch.model_type(), r["model_type"].as_str().unwrap());
        // All inputs in one right-padded batch: padding must not leak into shorter sequences.
        let got = lm.logits(&inputs).unwrap();
        let mut worst: f64 = 0.0;
        let mut scale: f64 = 0.0;
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.nrows(), e.len(), "{name}: positions");
            for (row, erow) in g.rows().into_iter().zip(e) {
                assert_eq!(row.len(), erow.len(), "{name}: vocabulary size");
                for (a, b) in row.iter().zip(erow) {
                    worst = worst.max((a - b).abs());
                    scale = scale.max(b.abs());
                }
            }
        }
        report.push(format!(
            "{name}: max |Δlogit| = {worst:.2e} (max |logit| {scale:.2})"
        ));
        assert!(
            worst <= LOGIT_TOLERANCE,
            "{name}: max |logit difference| {worst:e} > {LOGIT_TOLERANCE:e}\n{}",
            report.join("\n")
        );
        assert!(scale > 0.1, "{name}: degenerate logits (max {scale})");
    }
    eprintln!("{}", report.join("\n"));
}
