//! The real-model configs' one training vocabulary (`src/lm/train/config.rs`): the same `[train]`
//! fields in `lm-recipe` and `ham-cycle`, `[finetune]` of `rmflow lm` under the same names, the
//! old names as aliases, and every validation error a `ConfigError` naming its field. No model
//! is needed.
#![cfg(feature = "lm")]

use rmflow::config::ConfigError;
use rmflow::lm::cycle::CycleFile;
use rmflow::lm::recipe::RecipeFile;
use rmflow::lm::train::config::{AdamW, FinetuneConfig, TrainConfig};
use rmflow::lm::LmFile;
use std::path::{Path, PathBuf};

fn experiments(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments")
        .join(name)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rmflow-lm-config-{tag}-{}", std::process::id()))
}

/// The committed recipe config with `[train]` replaced by `train`.
fn recipe_text(train: &str) -> String {
    let text = std::fs::read_to_string(experiments("persona_paper.toml")).unwrap();
    let start = text
        .find("[train]")
        .expect("persona_paper.toml has [train]");
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |i| start + 2 + i);
    format!("{}[train]\n{train}\n{}", &text[..start], &text[end..])
}

/// The field a config error names (`None`: not a field error).
fn field_of(e: &ConfigError) -> Option<&str> {
    match e {
        ConfigError::Field { field, .. } => Some(field),
        _ => None,
    }
}

#[test]
fn one_train_table_means_the_same_in_recipe_and_cycle() {
    let train = "beta = 0.02\nlr = 3e-4\nhead_lr = 1e-3\nweight_decay = 0.1\nbeta1 = 0.8\n\
                 beta2 = 0.99\neps = 1e-7\nepochs = 3\npairs_per_step = 8\nmicro_batch = 4\n\
                 head_init_std = 0.0\neval_every_epochs = 2\neval_batch = 16";
    let dir = temp("same");
    let recipe = RecipeFile::from_file(&write(&dir, "r.toml", &recipe_text(train))).unwrap();
    let cycle = CycleFile::from_text(&format!("[train]\n{train}\n"), "cycle").unwrap();
    let expected = TrainConfig {
        beta: 0.02,
        adamw: AdamW {
            lr: 3e-4,
            head_lr: Some(1e-3),
            weight_decay: 0.1,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-7,
        },
        epochs: 3,
        pairs_per_step: 8,
        micro_batch: 4,
        head_init_std: Some(0.0),
        eval_every_epochs: 2,
        eval_batch: 16,
        drop_last_token_of_longest: false,
    };
    assert_eq!(recipe.train, expected);
    assert_eq!(cycle.train, expected);
    // Absent fields take each experiment's own defaults.
    let cycle = CycleFile::from_text("[train]\nepochs = 2\n", "cycle").unwrap();
    assert_eq!(
        cycle.train,
        TrainConfig {
            epochs: 2,
            ..TrainConfig::cycle()
        }
    );
    assert_eq!(CycleFile::default().train, TrainConfig::cycle());
    // The official flush's last-token drop: the recipe describes the official evaluation
    // batches; the cycle does not, and refuses the option naming it.
    let flush = format!("{train}\ndrop_last_token_of_longest = true");
    let recipe = RecipeFile::from_file(&write(&dir, "f.toml", &recipe_text(&flush))).unwrap();
    assert!(recipe.train.drop_last_token_of_longest);
    match CycleFile::from_text(&format!("[train]\n{flush}\n"), "cycle") {
        Err(ConfigError::Field { field, .. }) => {
            assert_eq!(field, "train.drop_last_token_of_longest")
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn finetune_table_reads_the_same_names_and_the_old_ones() {
    let committed = LmFile::from_file(&experiments("persona.toml")).unwrap();
    assert_eq!(committed.finetune.pairs_per_step, 32);
    assert_eq!(committed.finetune.eval_every_steps, 5);
    assert_eq!(committed.finetune.eval_at, vec![1, 2, 3]);
    let text = std::fs::read_to_string(experiments("persona.toml")).unwrap();
    let old = text
        .replace("pairs_per_step = 32", "batch_pairs = 32")
        .replace("eval_every_steps = 5", "eval_every = 5");
    assert_ne!(
        old, text,
        "persona.toml no longer has the fields this test renames"
    );
    let dir = temp("alias");
    let parsed = LmFile::from_file(&write(&dir, "old.toml", &old)).unwrap();
    assert_eq!(parsed, committed);
    assert_eq!(
        FinetuneConfig {
            steps: 20,
            ..FinetuneConfig::default()
        }
        .adamw,
        AdamW::adam(2e-5)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_field_of_the_other_schedule_is_refused_naming_it() {
    let dir = temp("schedule");
    let err =
        RecipeFile::from_file(&write(&dir, "r.toml", &recipe_text("steps = 10"))).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("`steps`"), "{err}");
    let text = std::fs::read_to_string(experiments("persona.toml")).unwrap();
    let epochs = text.replace("[finetune]\n", "[finetune]\nepochs = 3\n");
    let err = LmFile::from_file(&write(&dir, "l.toml", &epochs)).unwrap_err();
    assert!(err.to_string().contains("`epochs`"), "{err}");
    let err = CycleFile::from_text("[train]\nlearning_rate = 1.0\n", "cycle").unwrap_err();
    assert!(err.to_string().contains("learning_rate"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validation_errors_name_the_field() {
    let dir = temp("fields");
    for (train, field) in [
        ("lr = -1.0", "train.lr"),
        ("beta = nan", "train.beta"),
        ("beta2 = 1.0", "train.beta2"),
        ("head_lr = 0.0", "train.head_lr"),
        ("micro_batch = 0", "train.micro_batch"),
    ] {
        let p = write(&dir, "r.toml", &recipe_text(train));
        let err = RecipeFile::from_file(&p).unwrap_err();
        assert_eq!(field_of(&err), Some(field), "recipe {train}: {err}");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
        let err = CycleFile::from_text(&format!("[train]\n{train}\n"), "cycle").unwrap_err();
        assert_eq!(field_of(&err), Some(field), "cycle {train}: {err}");
    }
    for (text, field) in [
        ("[data]\nvertices = 3\n", "data.vertices"),
        (
            "[data]\nvertices = 10\n[eval]\nexact = true\n",
            "eval.exact",
        ),
        ("[model]\ndim = 30\nheads = 4\n", "model.heads"),
        (
            "[pretrain]\nwalk_fraction = 2.0\n",
            "pretrain.walk_fraction",
        ),
    ] {
        let err = CycleFile::from_text(text, "cycle").unwrap_err();
        assert_eq!(field_of(&err), Some(field), "{text}: {err}");
    }
    let persona = std::fs::read_to_string(experiments("persona.toml")).unwrap();
    for (from, to, field) in [
        ("lr = 1e-5", "lr = 0.0", "finetune.lr"),
        ("steps = 20", "steps = 0", "finetune.steps"),
        (
            "train_fraction = 0.7",
            "train_fraction = 1.5",
            "lm.train_fraction",
        ),
    ] {
        assert!(persona.contains(from), "persona.toml has no `{from}`");
        let p = write(&dir, "l.toml", &persona.replacen(from, to, 1));
        let err = LmFile::from_file(&p).unwrap_err();
        assert_eq!(field_of(&err), Some(field), "{to}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
