//! The recipe on preference datasets (`[preferences]`, the paper's Section 5.2) on a tiny random
//! checkpoint: standard, conversational and implicit-prompt sets end to end through the CLI; the
//! metrics recomputed from every pair's rewards as the official evaluator computes them; the
//! `limit` sample and the length filter; config and data errors naming the field, file or row.
#![cfg(feature = "lm")]

mod common;

use rmflow::lm::recipe::RecipeFile;
use std::path::{Path, PathBuf};

const STANDARD: [(&str, &str, &str); 6] = [
    ("is the sky blue", "yes it is blue", "no it is green"),
    ("is snow cold", "yes snow is cold", "no snow is hot"),
    ("is fire hot", "yes fire is hot", "no fire is cold"),
    ("is grass green", "yes grass is green", "no grass is red"),
    ("is ice cold", "yes ice is cold", "no ice is warm"),
    (
        "is the sun bright",
        "yes it is very bright",
        "no it is dark",
    ),
];

fn temp(name: &str) -> PathBuf {
    common::temp_dir("rmflow-shift", name)
}

/// The standard pairs as JSON Lines (an extra column, ignored).
fn write_standard(dir: &Path) -> PathBuf {
    let p = dir.join("standard.jsonl");
    let lines: Vec<String> = STANDARD
        .iter()
        .map(|(q, c, r)| {
            serde_json::json!({"prompt": q, "chosen": c, "rejected": r, "source": "test"})
                .to_string()
        })
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// Conversational pairs (TRL: the prompt a list of messages, each response an assistant turn).
fn write_conversational(dir: &Path) -> PathBuf {
    let p = dir.join("conversational.jsonl");
    let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
    let lines: Vec<String> = STANDARD[..4]
        .iter()
        .map(|(q, c, r)| {
            serde_json::json!({
                "prompt": [m("user", q)],
                "chosen": [m("assistant", c)],
                "rejected": [m("assistant", r)],
            })
            .to_string()
        })
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// Implicit-prompt pairs (only `chosen` and `rejected`, the prompt their common beginning).
fn write_implicit(dir: &Path) -> PathBuf {
    let p = dir.join("implicit.jsonl");
    let lines: Vec<String> = STANDARD[2..]
        .iter()
        .map(|(q, c, r)| {
            serde_json::json!({"chosen": format!("{q} {c}"), "rejected": format!("{q} {r}")})
                .to_string()
        })
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// A preference recipe over the three files: the standard set trains; the evaluation sets are
/// the conversational, the implicit-prompt and a 3-pair sample of the standard one.
fn recipe_text(dir: &Path) -> String {
    let (s, c, i) = (
        write_standard(dir),
        write_conversational(dir),
        write_implicit(dir),
    );
    format!(
        r#"seed = 4
[preferences]
train = {{ path = {s:?} }}
[[preferences.eval]]
name = "conv"
path = {c:?}
[[preferences.eval]]
name = "implicit"
path = {i:?}
[[preferences.eval]]
name = "sample"
path = {s:?}
limit = 3
[train]
beta = 0.1
lr = 1e-2
epochs = 2
pairs_per_step = 4
micro_batch = 2
eval_every_epochs = 1
eval_batch = 5
"#
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A tiny Llama whose vocabulary holds the sets' words and the template's pieces.
fn checkpoint(dir: &Path, config: &Path) -> PathBuf {
    common::tiny_chat_llama(dir, config, "llama-gqa")
}

fn recipe(model: &Path, config: &Path, out: &Path) -> std::process::Output {
    let mut args = common::lm_recipe_args(model, config, out);
    args.push("--force".into());
    common::rmflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn num(row: &std::collections::HashMap<String, String>, key: &str) -> f64 {
    row[key].parse().unwrap()
}

/// The official evaluator's metrics of one split from its pairs' rewards
/// (`reward_model_evaluator.py`): loss, accuracy with ties ½, normalised absolute margin
/// (torch's std, n − 1), mean chosen and rejected rewards.
fn official_metrics(pairs: &[(f64, f64)]) -> [f64; 5] {
    let n = pairs.len() as f64;
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    let loss = pairs.iter().map(|(c, r)| softplus(r - c)).sum::<f64>() / n;
    let accuracy = pairs
        .iter()
        .map(|(c, r)| {
            if c > r {
                1.0
            } else if c == r {
                0.5
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / n;
    let all: Vec<f64> = pairs.iter().flat_map(|&(c, r)| [c, r]).collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let std =
        (all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (all.len() as f64 - 1.0)).sqrt();
    let margin = pairs.iter().map(|(c, r)| (c - r).abs()).sum::<f64>() / n / (std + 1e-8);
    let chosen = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let rejected = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    [loss, accuracy, margin, chosen, rejected]
}

/// Standard, conversational and implicit-prompt sets through `lm-recipe`, both reward models:
/// the splits as configured, the sample drawn as torch draws it, the responses rendered through
/// the chat template, and every metric of `metrics.csv` equal to the official evaluator's
/// formulas recomputed from `pair_rewards.csv`.
#[test]
fn preference_sets_train_and_evaluate_through_the_recipe() {
    let dir = temp("end-to-end");
    let config = write_config(&dir, &recipe_text(&dir));
    let model = checkpoint(&dir, &config);
    let out = dir.join("out");
    let o = recipe(&model, &config, &out);
    assert!(o.status.success(), "{}", common::stderr(&o));

    let r = common::read_json(&out.join("recipe.json"));
    let sets = r["sets"].as_array().unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s["split"].as_str().unwrap()).collect();
    assert_eq!(names, ["train", "conv", "implicit", "sample"]);
    let used: Vec<u64> = sets.iter().map(|s| s["used"].as_u64().unwrap()).collect();
    assert_eq!(used, [6, 4, 4, 3]);
    assert_eq!(sets[1]["conversational"], true);
    // torch.randperm(6, generator=torch.Generator().manual_seed(517))[:3].
    let rows: Vec<u64> = serde_json::from_value(sets[3]["pair_rows"].clone()).unwrap();
    assert_eq!(rows, TORCH_RANDPERM_6_SEED_517[..3]);

    // The conversational responses: what the template adds after the prompt's generation turn.
    let seqs: Vec<serde_json::Value> = std::fs::read_to_string(out.join("sequences.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seqs.len(), 2 * (6 + 4 + 4 + 3));
    assert_eq!(seqs[12]["response_text"], "yes it is blue<|im_end|>\n");
    // The implicit prompt is the pair's common beginning (TRL), so the response starts after it.
    // (TRL backs up over the space before the first difference, so the response keeps it.)
    assert_eq!(seqs[20]["response_text"], " yes fire is hot<|im_end|>\n");

    let pairs = common::csv_table(&out.join("pair_rewards.csv"));
    assert_eq!(pairs.len(), 2 * 3 * (6 + 4 + 4 + 3));
    let metrics = common::csv_table(&out.join("metrics.csv"));
    assert_eq!(metrics.len(), 2 * 3 * 4);
    for m in &metrics {
        let of: Vec<(f64, f64)> = pairs
            .iter()
            .filter(|p| ["model", "epoch", "split"].iter().all(|k| p[*k] == m[*k]))
            .map(|p| (num(p, "chosen_reward"), num(p, "rejected_reward")))
            .collect();
        assert_eq!(of.len(), m["pairs"].parse::<usize>().unwrap());
        let expected = official_metrics(&of);
        let got = [
            "loss",
            "exact_tie_accuracy",
            "normalised_abs_margin",
            "mean_chosen_reward",
            "mean_rejected_reward",
        ]
        .map(|k| num(m, k));
        for (g, e) in got.iter().zip(expected) {
            // pair_rewards.csv prints every reward exactly ({:e} of an f64).
            assert!(
                (g - e).abs() <= 1e-12 * e.abs().max(1.0),
                "{m:?}: {got:?} vs {expected:?}"
            );
        }
    }
    // Training moved the IM-RM on its training pairs: epoch 0 is an exact tie (π = π_ref).
    let imrm_train = |epoch: &str| {
        metrics
            .iter()
            .find(|m| m["model"] == "imrm" && m["split"] == "train" && m["epoch"] == epoch)
            .map(|m| num(m, "exact_tie_accuracy"))
            .unwrap()
    };
    assert_eq!(imrm_train("0"), 0.5);
    assert!(imrm_train("2") > 0.5, "{}", imrm_train("2"));
}

/// `torch.randperm(6, generator=torch.Generator().manual_seed(517))`, printed by torch 2.15.0.
const TORCH_RANDPERM_6_SEED_517: [u64; 6] = [5, 0, 3, 2, 1, 4];

/// The length filter counts each text with the model's tokenizer (special tokens added): its
/// counts before and after are reported, and a set it empties is refused naming the file.
#[test]
fn the_length_filter_is_counted_and_reported() {
    let dir = temp("lengths");
    let text = recipe_text(&dir);
    let config = write_config(&dir, &text);
    let model = checkpoint(&dir, &config);
    // The limit: the tokens of a 4-word response, as the model's tokenizer counts them (special
    // tokens added), so that the 5-word response's pair is dropped.
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let count = |t: &str| tokenizer.encode(t, true).unwrap().get_ids().len();
    let limit = count(STANDARD[0].1);
    let filtered = text.replace(
        "[preferences]\n",
        &format!("[preferences]\nmax_response_tokens = {limit}\n"),
    );
    let config = write_config(&dir, &filtered);
    let out = dir.join("out");
    let o = recipe(&model, &config, &out);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r = common::read_json(&out.join("recipe.json"));
    let train = &r["sets"][0];
    assert_eq!(train["rows"], 6);
    let kept: Vec<u64> = STANDARD
        .iter()
        .enumerate()
        .filter(|(_, (_, c, r))| count(c) <= limit && count(r) <= limit)
        .map(|(k, _)| k as u64)
        .collect();
    assert!(!kept.is_empty() && kept.len() < 6, "{kept:?}");
    assert_eq!(train["after_length_filter"], kept.len());
    let rows: Vec<u64> = serde_json::from_value(train["pair_rows"].clone()).unwrap();
    assert_eq!(rows, kept);

    let none = text.replace("[preferences]\n", "[preferences]\nmax_prompt_tokens = 1\n");
    let config = write_config(&dir, &none);
    let o = recipe(&model, &config, &dir.join("none"));
    assert_eq!(common::code(&o), 2, "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("standard.jsonl"),
        "{}",
        common::stderr(&o)
    );
    assert!(!dir.join("none").exists());
}

/// Config errors name the field; data errors the file, row and column; each exits 2 and writes
/// nothing.
#[test]
fn bad_preference_recipes_are_refused_naming_what_is_wrong() {
    let dir = temp("errors");
    let text = recipe_text(&dir);
    let config = write_config(&dir, &text);
    let model = checkpoint(&dir, &config);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{text}\n[data]\nstatements = \"x\"\nquestion = \"{{statement}}\"\n"),
            "preferences",
        ),
        (
            text.replace("name = \"conv\"\n", ""),
            "preferences.eval[0].name",
        ),
        (
            text.replace("name = \"implicit\"", "name = \"conv\""),
            "preferences.eval[1].name",
        ),
        (
            text.replace("limit = 3", "limit = 0"),
            "preferences.eval[2].limit",
        ),
        // A set's fields are spelled out (not a flattened DataSource) so that a typo is refused.
        (text.replace("limit = 3", "limt = 3"), "limt"),
        (
            text.replace("[preferences]\n", "[preferences]\nchat_template = false\n"),
            "conversational",
        ),
        (
            text.replace("standard.jsonl\" }", "missing.jsonl\" }"),
            "missing.jsonl",
        ),
        (
            text.replace(
                "standard.jsonl\" }",
                "standard.jsonl\", columns = { chosen = \"best\" } }",
            ),
            "\"best\"",
        ),
    ];
    for (k, (bad, named)) in cases.iter().enumerate() {
        let config = dir.join(format!("bad-{k}.toml"));
        std::fs::write(&config, bad).unwrap();
        let out = dir.join(format!("out-{k}"));
        let o = recipe(&model, &config, &out);
        let err = common::stderr(&o);
        assert_eq!(common::code(&o), 2, "case {k}: {err}");
        assert!(err.contains(named), "case {k}: expected {named:?} in {err}");
        assert!(!out.exists(), "case {k}: wrote {}", out.display());
    }
}

/// The two Section 5.2 configs read on a fresh clone: every set they name is in the repository
/// with the official sizes, and the math plan's `limit = 1000` draws the official datamodule's
/// sample (`torch.randperm(2000)` with generator seed 517 begins 1281, 790, 1639, 382, 319 in
/// torch 2.15.0).
#[test]
fn the_section_5_2_configs_name_the_committed_sets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, train_rows) in [("uf_shift.toml", 200), ("math_shift.toml", 2000)] {
        let file = RecipeFile::from_file(&root.join("experiments").join(name)).unwrap();
        let p = file.preferences.as_ref().unwrap();
        let sets: Vec<&rmflow::lm::recipe::PreferenceSet> =
            std::iter::once(&p.train).chain(&p.eval).collect();
        assert_eq!(sets.len(), 8, "{name}");
        for (k, set) in sets.iter().enumerate() {
            let mut source = set.source();
            source.path = root.join(&source.path);
            let pairs = rmflow::lm::data::preference::read_pairs(&source).unwrap();
            let expected = if k == 0 { train_rows } else { 200 };
            assert_eq!(pairs.len(), expected, "{name}: {}", source.path.display());
        }
        assert_eq!(p.sample_seed, 517);
    }
    let perm = rmflow::lm::data::torch_rng::TorchGenerator::manual_seed(517).randperm(2000);
    assert_eq!(perm[..5], [1281, 790, 1639, 382, 319]);
}
