//! Real-model mode on all-MiniLM-L6-v2 (feature `lm`; needs `scripts/fetch-model.sh` first).
#![cfg(feature = "lm")]

mod common;

use std::path::Path;
use std::process::Command;

const MODEL: &str = "models/all-MiniLM-L6-v2";

/// The downloaded MiniLM folder; `None` (the test is skipped, see [`common::downloaded`]) where
/// `scripts/fetch-model.sh` has not been run.
fn model_dir() -> Option<&'static Path> {
    let p = Path::new(MODEL);
    common::downloaded(&p.join("model.safetensors"), "scripts/fetch-model.sh").then_some(p)
}

/// Theorem 2 on real representations (body frozen, head-only): the IM-RM ties on every unseen
/// answer pair (tie-aware accuracy exactly ½, unseen rows untouched), the EX-RM does not.
#[test]
fn head_only_real_model_reproduces_theorem2() {
    let Some(model) = model_dir() else { return };
    let out = std::env::temp_dir().join(format!("rmflow-lm-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args([
            "lm",
            "--model",
            model.to_str().unwrap(),
            "--config",
            "experiments/persona.toml",
            "--out",
            out.to_str().unwrap(),
            "--force",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let split = |model: &str, name: &str| -> serde_json::Value {
        summary[model]["final"]["splits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["split"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        split("imrm", "unseen")["tie_aware_accuracy"]
            .as_f64()
            .unwrap(),
        0.5
    );
    assert_eq!(
        summary["imrm"]["final"]["unseen_row_drift"]
            .as_f64()
            .unwrap(),
        0.0
    );
    assert!(
        split("exrm", "unseen")["tie_aware_accuracy"]
            .as_f64()
            .unwrap()
            > 0.5
    );
    assert_eq!(
        split("imrm", "train")["strict_accuracy"].as_f64().unwrap(),
        1.0
    );
    let setup: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("setup.json")).unwrap()).unwrap();
    assert_eq!(setup["vocab_size"], 30522);
    assert_eq!(setup["dim"], 384);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_answer_words_and_missing_models_are_named() {
    let Some(model) = model_dir() else { return };
    let dir = std::env::temp_dir().join(format!("rmflow-lm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string("experiments/persona.toml")
        .unwrap()
        .replace(
            r#"unseen_rejected = ["nope", "hardly"]"#,
            r#"unseen_rejected = ["nope", "unhelpfulness"]"#,
        );
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, text).unwrap();
    let run = |model: &str, config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_rmflow"))
            .args([
                "lm",
                "--model",
                model,
                "--config",
                config.to_str().unwrap(),
                "--out",
                dir.join("out").to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let o = run(model.to_str().unwrap(), &cfg);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("\"unhelpfulness\" is not a single token"),
        "{err}"
    );
    let o = run("/no/such/model", Path::new("experiments/persona.toml"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("missing config.json"),
        "{err}"
    );
    assert!(!dir.join("out").exists());
}

/// candle-transformers' BERT and the differentiable re-implementation used for full fine-tuning
/// give the same hidden states on the real checkpoint (f32; bound 1e-4 relative to max |h|).
#[test]
fn differentiable_bert_matches_candle_transformers_on_minilm() {
    let Some(model) = model_dir() else { return };
    use rmflow::lm::{Device, Forward, LanguageModel};
    let a = LanguageModel::load(model, &Device::Cpu, Forward::CandleReference).unwrap();
    let b = LanguageModel::load(model, &Device::Cpu, Forward::Nets).unwrap();
    let mut seqs = Vec::new();
    let mut pos = Vec::new();
    for s in [
        "Is the following statement something you would say? \"I like to help.\" Answer:",
        "Would you agree with this: \"Being kind to strangers matters to me, even when it costs me time.\" Reply:",
    ] {
        let (ids, p) = a.prompt_ids(s).unwrap();
        let (with, q) = a.with_answer(&ids, p, a.answer_token("certainly", false).unwrap());
        seqs.extend([ids, with]);
        pos.extend([p, q]);
    }
    let (ha, hb) = (
        a.hidden_at(&seqs, &pos, 4).unwrap(),
        b.hidden_at(&seqs, &pos, 4).unwrap(),
    );
    let gap = (&ha - &hb).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let scale = ha.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    eprintln!("max |Δh| = {gap:e} (max |h| = {scale:.3})");
    assert!(gap <= 1e-4 * scale, "max |Δh| = {gap:e}");
}

/// Full fine-tuning of the real model (2 AdamW steps on 8 pairs): every parameter tensor gets a
/// gradient (none cut off by a fused kernel), the unseen answer rows of `U` stay put.
#[test]
fn full_fine_tuning_of_minilm_trains_every_parameter() {
    let Some(model) = model_dir() else { return };
    let dir = std::env::temp_dir().join(format!("rmflow-lm-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = std::fs::read_to_string("experiments/persona.toml").unwrap();
    for (from, to) in [
        ("steps = 20", "steps = 2"),
        ("pairs_per_step = 32", "pairs_per_step = 8"),
        ("eval_at = [1, 2, 3]", "eval_at = []"),
    ] {
        assert!(
            text.contains(from),
            "experiments/persona.toml no longer has `{from}`"
        );
        text = text.replace(from, to);
    }
    let cfg = dir.join("full.toml");
    std::fs::write(&cfg, &text).unwrap();
    let out = dir.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args(["lm", "--mode", "full", "--model"])
        .arg(model)
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for m in ["exrm", "imrm"] {
        let s: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("full/{m}/summary.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(s["steps"], 2);
        assert_eq!(
            s["unchanged_parameters"].as_array().unwrap().len(),
            0,
            "{m}: {}",
            s["unchanged_parameters"]
        );
    }
    let im: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("full/imrm/summary.json")).unwrap())
            .unwrap();
    assert_eq!(im["unseen_row_drift"], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
