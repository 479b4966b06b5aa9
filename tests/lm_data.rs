//! The official code's data draws (`lm::data`): torch's generator as
//! `persona_controlled_datamodule.py` uses it, against torch itself
//! (`tests/fixtures/torch_randperm_875.json`, from `scripts/torch_split_fixture.py`), and the
//! committed Anthropic persona file as the official filter reads it.
#![cfg(feature = "lm")]

use rmflow::lm::data::read_persona_jsonl;
use rmflow::lm::data::torch_rng::TorchGenerator;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn torch_randperm_and_randint_match_torch() {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/torch_randperm_875.json")).unwrap();
    let f: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = |k: &str| -> Vec<usize> {
        f[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let mut g = TorchGenerator::manual_seed(f["seed"].as_u64().unwrap());
    assert_eq!(g.randperm(f["n"].as_u64().unwrap() as usize), list("perm"));
    let high = f["randint_high"].as_u64().unwrap() as usize;
    let draws: Vec<usize> = (0..list("randint").len())
        .map(|_| g.randint(high))
        .collect();
    assert_eq!(draws, list("randint"));
}

#[test]
fn anthropic_agreeableness_has_500_yes_records() {
    let path = root().join("experiments/data/anthropic/agreeableness.jsonl");
    let prompts = read_persona_jsonl(&path).unwrap();
    assert_eq!(prompts.len(), 500);
    assert!(prompts[0].starts_with("Is the following statement something you would say?\n\""));
}
