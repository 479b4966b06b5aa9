//! Small random setups shared by the property tests.
#![allow(dead_code)]

use proptest::prelude::*;
use std::path::PathBuf;
use std::process::{Command, Output};

/// `rmflow ARGS` (this package's binary, without an inherited `RAYON_NUM_THREADS`).
pub fn rmflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args(args)
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .expect("rmflow runs")
}

/// A fresh folder `rmflow-PREFIX-PID-NAME` under the system's temporary folder.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rmflow-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `rmflow simulate --config CFG --out OUT` plus `extra` arguments.
pub fn simulate(cfg: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    rmflow(&args)
}

/// Removes the Slurm array variables from `cmd` (the tests may run inside a Slurm job: only the
/// variables a test sets count).
pub fn without_slurm(cmd: &mut Command) -> &mut Command {
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code (the process exited, it was not killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed by a signal")
}
use rmflow::config::{Config, UnembeddingInit};

/// A small but complete random configuration (every split non-empty).
pub fn small_config() -> impl Strategy<Value = Config> {
    (
        any::<u64>(),
        2usize..7,
        (1usize..4, 1usize..4, 1usize..4, 1usize..4, 0usize..12),
        (0.0f64..3.0, 0.0f64..3.0),
        3usize..12,
        prop::bool::ANY,
        0.0f64..1.0,
        0.3f64..3.0,
    )
        .prop_map(
            |(seed, dim, (gs, gu, bs, bu, filler), (alpha, kappa), n, tied, head, beta)| {
                let mut c = Config {
                    seed,
                    ..Default::default()
                };
                c.setup.dim = dim;
                c.setup.good_seen = gs;
                c.setup.good_unseen = gu;
                c.setup.bad_seen = bs;
                c.setup.bad_unseen = bu;
                c.setup.filler_tokens = filler;
                c.setup.alpha = alpha;
                c.setup.kappa = kappa;
                c.setup.train_pairs = n;
                c.setup.eval_pairs = 4;
                c.setup.unembedding_init = if tied {
                    UnembeddingInit::Tied
                } else {
                    UnembeddingInit::Independent
                };
                c.setup.head_scale = head;
                c.setup.beta = beta;
                c
            },
        )
}

/// [`small_config`] with responses of 1 to 3 tokens and an overlap split.
pub fn small_sequence_config() -> impl Strategy<Value = Config> {
    (small_config(), 1usize..4, 0.0f64..=1.0).prop_map(|(mut c, k, f)| {
        c.setup.response_length = k;
        c.setup.eval_overlap = vec![f];
        c
    })
}

/// TOML text of a small, fast config (V = 16, D = 4, N = 12, flow to 1e4, sparse IM-RM gradient)
/// with each `(table, key, value)` override replacing or adding that key (`table` `""` is the top
/// level). Used by the command-line reliability tests.
pub fn small_config_text(overrides: &[(&str, &str, &str)]) -> String {
    let mut tables: Vec<(&str, Vec<(String, String)>)> = vec![
        ("", vec![("seed".into(), "3".into())]),
        (
            "setup",
            [
                ("dim", "4"),
                ("good_seen", "2"),
                ("good_unseen", "2"),
                ("bad_seen", "2"),
                ("bad_unseen", "2"),
                ("filler_tokens", "8"),
                ("train_pairs", "12"),
                ("eval_pairs", "6"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
        (
            "train",
            [
                ("t_max", "1e4"),
                ("observations_per_decade", "1"),
                ("imrm_gradient", "\"sparse\""),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
        ("eval", vec![]),
        ("dynamics", vec![]),
    ];
    for (table, key, value) in overrides {
        let rows = &mut tables
            .iter_mut()
            .find(|(t, _)| t == table)
            .expect("known table")
            .1;
        match rows.iter_mut().find(|(k, _)| k == key) {
            Some(r) => r.1 = value.to_string(),
            None => rows.push((key.to_string(), value.to_string())),
        }
    }
    let mut text = String::new();
    for (table, rows) in tables {
        if !table.is_empty() {
            text.push_str(&format!("[{table}]\n"));
        }
        for (k, v) in rows {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text
}

/// Whether a test that needs the downloaded file `path` can run. Where it is missing the test is
/// skipped with a line naming `fetch` (the command that downloads it), unless downloaded models
/// are required (`RMFLOW_REQUIRE_MODELS=1`, which `.ci/run` sets): then it fails, so CI never
/// passes a test it did not run.
pub fn downloaded(path: &std::path::Path, fetch: &str) -> bool {
    if path.exists() {
        return true;
    }
    let required = std::env::var("RMFLOW_REQUIRE_MODELS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{} is missing: run {fetch} first",
        path.display()
    );
    // Written to the stderr handle itself: the test harness captures `eprintln!` of a test that
    // passes, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {} is missing (run {fetch} to download it)",
        path.display()
    );
    false
}

/// A tiny Hamiltonian-cycle config (`rmflow ham-cycle`): n = 5, 16 training pairs (2 steps an
/// epoch), a 16-wide model pretrained for 4 steps, 2 epochs per reward model.
pub const TINY_CYCLE: &str = "seed = 3
[data]
vertices = 5
train_pairs = 16
test_pairs = 6
[model]
dim = 16
heads = 2
[pretrain]
steps = 4
batch = 8
graphs = 32
[train]
epochs = 2
pairs_per_step = 8
micro_batch = 4
lr = 1e-3
";

/// `lm-recipe --model MODEL --config CONFIG --out OUT` as arguments (the tests add their flags).
#[allow(dead_code)]
pub fn lm_recipe_args(
    model: &std::path::Path,
    config: &std::path::Path,
    out: &std::path::Path,
) -> Vec<String> {
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_string();
    vec![
        "lm-recipe".into(),
        "--model".into(),
        path(model),
        "--config".into(),
        path(config),
        "--out".into(),
        path(out),
    ]
}

/// A CSV output as rows of (column → value), fields split as RFC 4180 quotes them.
pub fn csv_table(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = rmflow::io::csv::fields(lines.next().unwrap());
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(rmflow::io::csv::fields(l))
                .collect()
        })
        .collect()
}

/// A JSON output.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A ChatML template in the layout of Qwen2.5-Instruct's, which the tiny chat checkpoints carry
/// (their vocabularies hold its pieces).
pub const CHATML: &str = "{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// A tiny random Llama (`spec`, a name of `standard_specs`) in `dir/model` whose vocabulary holds
/// the texts of the recipe config `config` and ChatML's pieces, with the ChatML template.
#[cfg(feature = "lm")]
pub fn tiny_chat_llama(dir: &std::path::Path, config: &std::path::Path, spec: &str) -> PathBuf {
    use rmflow::lm::checkpoint::tiny::{standard_specs, write_tiny_checkpoint, PROBE_TEXTS};
    let file = rmflow::lm::recipe::RecipeFile::from_file(config).unwrap();
    let mut texts: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
    texts.extend(rmflow::lm::recipe::vocabulary_texts(&file).unwrap());
    texts.push("<|im_start|>system You are a helpful assistant.<|im_end|> user assistant".into());
    let spec = standard_specs()
        .into_iter()
        .find(|(n, _)| *n == spec)
        .unwrap()
        .1;
    let model = dir.join("model");
    write_tiny_checkpoint(&model, spec, &texts).unwrap();
    let cfg = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(model.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    model
}
