//! The paper's recipe (`rmflow lm-recipe`, MATH.md §6) on tiny random checkpoints of every
//! family: end to end through the CLI, the per-token log-probabilities and read-out positions
//! against independent computations, gradient accumulation, chat templates against
//! `transformers`' renderings, determinism and config errors.
#![cfg(feature = "lm")]

mod common;

use rmflow::lm::checkpoint::chat_template::{ChatTemplate, Message};
use rmflow::lm::checkpoint::tiny::{standard_specs, write_tiny_checkpoint, TinySpec, PROBE_TEXTS};
use rmflow::lm::recipe::{
    build_problem, last_response_hidden, load_recipe_model, response_token_logprobs,
    vocabulary_texts, RecipeFile, SplitRule, StatementFormat,
};
use rmflow::lm::{Architecture, Device, Forward, LanguageModel};
use std::path::{Path, PathBuf};
use std::process::Command;

const PAPER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/experiments/persona_paper.toml"
);

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rmflow-recipe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn paper() -> RecipeFile {
    let mut f = RecipeFile::from_file(Path::new(PAPER)).unwrap();
    f.data.as_mut().unwrap().statements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&f.data.as_ref().unwrap().statements);
    f
}

/// The recipe's texts and the chat template's pieces as the tiny checkpoint's vocabulary.
fn vocabulary() -> Vec<String> {
    let mut t: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
    t.extend(vocabulary_texts(&paper()).unwrap());
    t.push("<|im_start|>system You are a helpful assistant.<|im_end|> user assistant".into());
    t
}

/// A tiny checkpoint of `spec`; with `chat`, a tokenizer_config.json carrying [`common::CHATML`].
fn checkpoint(dir: &Path, spec: TinySpec, chat: bool) {
    write_tiny_checkpoint(dir, spec, &vocabulary()).unwrap();
    if chat {
        let cfg = serde_json::json!({"chat_template": common::CHATML, "eos_token": "<|im_end|>"});
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    }
}

/// The paper's config with the statements path made absolute and `edit` applied.
fn config(dir: &Path, edit: &dyn Fn(&mut RecipeFile)) -> PathBuf {
    let mut f = paper();
    edit(&mut f);
    let p = dir.join(format!(
        "recipe-{}.toml",
        std::fs::read_dir(dir).unwrap().count()
    ));
    std::fs::write(&p, toml::to_string(&f).unwrap()).unwrap();
    p
}

fn run(args: &[&str], threads: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .arg("lm-recipe")
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap()
}

fn run_ok(model: &Path, config: &Path, out: &Path, mode: &str, threads: &str) {
    let o = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--mode",
            mode,
            "--force",
        ],
        threads,
    );
    assert!(
        o.status.success(),
        "{}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The last column of a run's `rewards.csv`: every sequence's reward after training.
fn final_rewards(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("rewards.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap())
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Rows of metrics.csv as (mode, model, epoch, split, exact-tie accuracy, normalised margin).
fn metrics(out: &Path) -> Vec<(String, String, usize, String, f64, f64)> {
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[col("mode")].to_string(),
                f[col("model")].to_string(),
                f[col("epoch")].parse().unwrap(),
                f[col("split")].to_string(),
                f[col("exact_tie_accuracy")].parse().unwrap(),
                f[col("normalised_abs_margin")].parse().unwrap(),
            )
        })
        .collect()
}

/// Every family, both modes, both reward models, two epochs of the paper's recipe through the
/// CLI: every output written and finite; before training the IM-RM's reward is exactly 0 on
/// every sequence (π = π_ref), so every split is an exact tie (accuracy ½); the rows of every
/// run and split are there; the masked encoder says that its rewards are a proxy.
#[test]
fn recipe_runs_on_every_family_in_both_modes() {
    let dir = temp("families");
    let cfg = config(&dir, &|f| f.train.epochs = 2);
    for (name, spec) in standard_specs() {
        let model = dir.join(name);
        checkpoint(&model, spec, name == "qwen2");
        let out = dir.join(format!("out-{name}"));
        run_ok(&model, &cfg, &out, "both", "2");
        let rows = metrics(&out);
        // 2 modes × 2 models × 2 checkpoints (epoch 0, 2) × 4 splits.
        assert_eq!(rows.len(), 32, "{name}");
        for (mode, model_name, epoch, split, acc, norm) in &rows {
            assert!(
                acc.is_finite() && norm.is_finite(),
                "{name}: {mode} {model_name} {split}"
            );
            if model_name == "imrm" && *epoch == 0 {
                assert_eq!(*acc, 0.5, "{name}: {mode} IM-RM {split} before training");
            }
        }
        let rewards = std::fs::read_to_string(out.join("rewards.csv")).unwrap();
        assert_eq!(rewards.lines().count(), 1 + 4 * 720, "{name}");
        let recipe = json(&out.join("recipe.json"));
        assert_eq!(recipe["architecture"], spec.arch.model_type(), "{name}");
        let format = recipe["prompt_format"].as_str().unwrap();
        match (name, spec.arch) {
            ("qwen2", _) => assert!(format.starts_with("chat template"), "{format}"),
            (_, Architecture::Bert) => {
                assert!(recipe["note"]
                    .as_str()
                    .unwrap()
                    .contains("pseudo-log-likelihood"))
            }
            _ => assert!(format.contains("official default template"), "{format}"),
        }
        for run in recipe["runs"].as_array().unwrap() {
            assert_eq!(run["steps"], 6, "{name}: 2 epochs of ⌈80/32⌉ steps");
        }
        for m in ["head/exrm", "head/imrm", "full/exrm", "full/imrm"] {
            let s = json(&out.join(format!("{m}/summary.json")));
            let losses: Vec<f64> = s["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["loss"].as_f64().unwrap())
                .collect();
            assert!(losses.iter().all(|l| l.is_finite()), "{name} {m}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The paper's recipe exactly (50 epochs, Adam lr 1e-6, 32 pairs per step as 4 × 8, β = 0.01)
/// with full fine-tuning of both reward models on the tiny Qwen2 checkpoint with its chat
/// template: 150 steps each (50 epochs of ⌈80 / 32⌉ = 3 steps), and the IM-RM's training loss
/// goes down.
#[test]
fn paper_recipe_full_fine_tuning_on_a_tiny_checkpoint() {
    let dir = temp("paper");
    let model = dir.join("qwen2");
    checkpoint(&model, standard_specs()[4].1, true);
    let cfg = config(&dir, &|_| {});
    let out = dir.join("out");
    run_ok(&model, &cfg, &out, "full", "2");
    for m in ["exrm", "imrm"] {
        let s = json(&out.join(format!("full/{m}/summary.json")));
        let h = s["history"].as_array().unwrap();
        assert_eq!(h.len(), 150, "{m}");
        if m == "imrm" {
            // π = π_ref before the first update: every margin of step 1 is exactly 0 (training's
            // reference is computed by training's forward), so no pair is won and the loss is
            // ln 2 (f32).
            assert_eq!(h[0]["batch_accuracy"].as_f64().unwrap(), 0.0);
            let loss = h[0]["loss"].as_f64().unwrap();
            assert!(
                (loss - std::f64::consts::LN_2).abs() < 1e-7,
                "step 1 loss {loss}"
            );
            let first: f64 = h[..3].iter().map(|r| r["loss"].as_f64().unwrap()).sum();
            let last: f64 = h[h.len() - 3..]
                .iter()
                .map(|r| r["loss"].as_f64().unwrap())
                .sum();
            assert!(last < first, "IM-RM loss {first} → {last}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The IM-RM's per-token `ln π(y_k | x, y_<k)` and the EX-RM's read-out position against an
/// independent computation from the full logits (f64 log-softmax of the row that predicts each
/// response token; BERT: the token masked, read at its own position), every family.
#[test]
fn response_logprobs_and_readout_match_an_independent_computation() {
    let dir = temp("logprobs");
    for (name, spec) in standard_specs() {
        let model = dir.join(name);
        checkpoint(&model, spec, name == "qwen2");
        let lm = load_recipe_model(&model, &Device::Cpu, Forward::Nets, &paper())
            .unwrap()
            .0;
        let causal_llama = name.starts_with("llama") || name.starts_with("qwen2");
        assert_eq!(lm.shares_prefixes(), causal_llama, "{name}");
        let problem = build_problem(&paper(), &lm).unwrap();
        // Sequences of different lengths in one padded batch, multi-token answers included.
        let seqs = problem.sequences.iter();
        let mut pick: Vec<_> = seqs
            .clone()
            .filter(|s| s.prompt % 37 == 0)
            .take(3)
            .collect();
        pick.extend(seqs.clone().filter(|s| s.word == "not really").take(3));
        // Every sequence of one prompt (chosen, rejected, paraphrases: responses of different
        // lengths), which the shared-prompt forward scores from one prompt computation.
        pick.extend(seqs.filter(|s| s.prompt == 1));
        let pick: Vec<_> = pick.into_iter().cloned().collect();
        assert!(pick.iter().any(|s| s.word == "not really"));
        let lengths: std::collections::BTreeSet<usize> = pick
            .iter()
            .filter(|s| s.prompt == 1)
            .map(|s| s.response_end - s.response_start)
            .collect();
        assert!(
            lengths.len() > 1,
            "{name}: prompt 1's responses differ in length"
        );
        let got = response_token_logprobs(&lm, &pick, 4).unwrap();
        let hidden = last_response_hidden(&lm, &pick).unwrap();
        let mut worst: f64 = 0.0;
        for (i, s) in pick.iter().enumerate() {
            assert_eq!(got[i].len(), s.response_end - s.response_start, "{name}");
            for (j, k) in (s.response_start..s.response_end).enumerate() {
                let (ids, row) = match lm.mask_id {
                    None => (s.ids.clone(), k - 1),
                    Some(m) => {
                        let mut ids = s.ids.clone();
                        ids[k] = m;
                        (ids, k)
                    }
                };
                let logits = lm.logits(&[ids]).unwrap().remove(0);
                let r = logits.row(row);
                let max = r.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let lse = max + r.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                worst = worst.max((got[i][j] - (r[s.ids[k] as usize] - lse)).abs());
            }
            let h = lm
                .hidden_at(std::slice::from_ref(&s.ids), &[s.response_end - 1], 1)
                .unwrap();
            let gap = (&h.row(0) - &hidden.row(i))
                .iter()
                .fold(0.0f64, |a, b| a.max(b.abs()));
            assert!(gap <= 1e-5, "{name}: read-out position, gap {gap}");
        }
        assert!(worst <= 1e-5, "{name}: max |Δ ln π| = {worst}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One step over 32 pairs in micro-batches of 8 equals one step over all 32 at once. With
/// Adam's ε ≫ |g| the first update is ≈ −lr·g/ε, linear in the accumulated gradient, so the
/// comparison sees the accumulation rather than Adam's sign-like first step.
#[test]
fn gradient_accumulation_equals_one_large_batch() {
    let dir = temp("accumulate");
    let model = dir.join("llama");
    checkpoint(&model, standard_specs()[1].1, false);
    let read = |micro: usize| {
        let cfg = config(&dir, &|f| {
            f.train.epochs = 1;
            f.data.as_mut().unwrap().train_prompts = 32;
            f.train.micro_batch = micro;
            f.train.adamw.eps = 1.0;
            f.train.adamw.lr = 1e-2;
        });
        let out = dir.join(format!("out-{micro}"));
        run_ok(&model, &cfg, &out, "full", "2");
        final_rewards(&out)
    };
    let (a, b) = (read(8), read(32));
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let gap = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0, "training moved no reward");
    assert!(gap <= 1e-3 * scale, "max |Δr| {gap} vs max |r| {scale}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same seed ⇒ bit-identical outputs with 1 or 2 threads.
#[test]
fn recipe_is_reproducible_across_thread_counts() {
    let dir = temp("threads");
    let model = dir.join("pythia");
    checkpoint(&model, standard_specs()[6].1, false);
    let cfg = config(&dir, &|f| f.train.epochs = 1);
    let read = |threads: &str| {
        let out = dir.join(format!("out-{threads}"));
        run_ok(&model, &cfg, &out, "both", threads);
        (
            std::fs::read(out.join("rewards.csv")).unwrap(),
            std::fs::read(out.join("metrics.csv")).unwrap(),
            std::fs::read(out.join("history.csv")).unwrap(),
        )
    };
    assert!(read("1") == read("2"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// minijinja renders what `transformers`' `apply_chat_template` rendered (fixtures written by
/// scripts/reference_fixtures.py), and a template's `raise_exception` is an error.
#[test]
fn chat_templates_render_as_transformers_does() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/chat_templates.json");
    let f = json(&path);
    let bos = f["bos_token"].as_str().unwrap();
    let mut checked = 0;
    for r in f["renders"].as_array().unwrap() {
        let name = r["template"].as_str().unwrap();
        let t = ChatTemplate::new(f["templates"][name].as_str().unwrap(), bos, "", name).unwrap();
        let msgs: Vec<(String, String)> = r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let msgs: Vec<Message> = msgs
            .iter()
            .map(|(role, content)| Message { role, content })
            .collect();
        let got = t
            .render(&msgs, r["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(got, r["text"].as_str().unwrap(), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 8);
    let t = ChatTemplate::new(
        f["templates"]["llama3"].as_str().unwrap(),
        bos,
        "",
        "llama3",
    )
    .unwrap();
    let err = t
        .render(
            &[Message {
                role: "tool",
                content: "x",
            }],
            false,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("unknown role tool"), "{err:#}");
}

/// Bad configs are input errors (exit 2) naming the field or file, with no output left behind.
#[test]
fn recipe_config_errors_name_the_field() {
    let dir = temp("errors");
    let model = dir.join("llama");
    checkpoint(&model, standard_specs()[1].1, false);
    let unknown = dir.join("bad-unknown.toml");
    let text = std::fs::read_to_string(config(&dir, &|_| {})).unwrap();
    std::fs::write(&unknown, format!("{text}\n[extra]\nx = 1\n")).unwrap();
    let cases: [(&str, PathBuf, &str); 7] = [
        ("lr", config(&dir, &|f| f.train.adamw.lr = -1.0), "train.lr"),
        (
            "nan",
            config(&dir, &|f| f.train.beta = f64::NAN),
            "train.beta",
        ),
        (
            "question",
            config(&dir, &|f| {
                f.data.as_mut().unwrap().format = StatementFormat::Lines;
                f.data.as_mut().unwrap().split = SplitRule::Groups;
                f.data.as_mut().unwrap().question = "no slot".into();
            }),
            "data.question",
        ),
        ("unknown", unknown, "extra"),
        (
            "official-groups",
            config(&dir, &|f| f.data.as_mut().unwrap().group_size = 3),
            "data.group_size",
        ),
        (
            "prompts",
            config(&dir, &|f| f.data.as_mut().unwrap().train_prompts = 500),
            "data.train_prompts",
        ),
        (
            "words",
            config(&dir, &|f| {
                f.responses.as_mut().unwrap().eval_chosen_words.clear()
            }),
            "responses.eval_chosen_words",
        ),
    ];
    for (tag, cfg, field) in cases {
        let out = dir.join(format!("out-{tag}"));
        let o = run(
            &[
                "--model",
                model.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            "1",
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{tag}: {err}");
        assert!(err.contains(field), "{tag}: {err}");
        assert!(!out.exists(), "{tag}: output left behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ℓ(m) = softplus(−m)`: its gradient is `−σ(−m)` everywhere, `−½` exactly at `m = 0` (the first
/// IM-RM step, policy = reference), and its value is `ln(1 + e^{−m})` without overflow.
#[test]
fn loss_gradient_is_minus_sigmoid_of_minus_margin() {
    use candle_core::{Tensor, Var};
    use rmflow::lm::train::loss::softplus_neg;
    let ms: Vec<f32> = vec![
        0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 3.0, -3.0, 40.0, -40.0, 200.0, -200.0,
    ];
    let m = Var::from_tensor(&Tensor::new(ms.as_slice(), &Device::Cpu).unwrap()).unwrap();
    let loss = softplus_neg(m.as_tensor()).unwrap();
    let grads = loss.sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = grads.get(m.as_tensor()).unwrap().to_vec1().unwrap();
    let value: Vec<f32> = loss.to_vec1().unwrap();
    assert_eq!(g[0], -0.5, "dℓ/dm at m = 0");
    assert_eq!(g[1], -0.5, "dℓ/dm at m = −0");
    for (k, &mi) in ms.iter().enumerate() {
        let m64 = f64::from(mi);
        let want_g = -1.0 / (1.0 + m64.exp()); // −σ(−m)
        let want_l = if m64 > 0.0 {
            (-m64).exp().ln_1p()
        } else {
            -m64 + m64.exp().ln_1p()
        };
        let tol = 4.0 * f64::from(f32::EPSILON);
        assert!(
            (f64::from(g[k]) - want_g).abs() <= tol * want_g.abs().max(1e-30) + 1e-37,
            "m = {mi}: gradient {} against −σ(−m) = {want_g}",
            g[k]
        );
        assert!(
            // f32 `ln(1 + e^{−|x|})` has absolute, not relative, precision for large margins.
            (f64::from(value[k]) - want_l).abs() <= tol * want_l.max(1.0),
            "m = {mi}: loss {} against ln(1 + e^(−m)) = {want_l}",
            value[k]
        );
    }
}

/// accelerate's scaling (MATH.md §6): each micro-batch's mean loss is divided by the configured
/// accumulation steps (`pairs_per_step / micro_batch`), also in an epoch's last, smaller step. One
/// step over 16 pairs under `pairs_per_step = 32` (2 of 4 micro-batches) therefore moves the
/// rewards half as far as the same 16 pairs under `pairs_per_step = 16`. In Adam's linear regime
/// (ε = 1e3 ≫ |g|; the update `lr·g/(|g| + ε)`) the reward change is proportional to the gradient.
#[test]
fn last_partial_step_is_scaled_by_the_configured_accumulation() {
    let dir = temp("accumulate-partial");
    let model = dir.join("llama");
    checkpoint(&model, standard_specs()[1].1, false);
    let read = |pairs_per_step: usize, lr: f64| {
        let cfg = config(&dir, &|f| {
            f.train.epochs = 1;
            f.data.as_mut().unwrap().train_prompts = 16;
            f.train.pairs_per_step = pairs_per_step;
            f.train.micro_batch = 8;
            f.train.adamw.eps = 1e3;
            f.train.adamw.lr = lr;
        });
        let out = dir.join(format!("out-{pairs_per_step}-{lr}"));
        run_ok(&model, &cfg, &out, "full", "2");
        final_rewards(&out)
    };
    let start = read(16, 1e-12);
    // lr small enough that Δr is first order in Δθ: the second-order residual is relative
    // ∝ lr (measured 18 % at lr = 1 and 2 % at lr = 0.1 on this checkpoint with the default
    // template's tokens).
    let (partial, whole) = (read(32, 3e-3), read(16, 3e-3));
    let moved = |r: &[f64]| {
        r.iter()
            .zip(&start)
            .map(|(a, b)| a - b)
            .collect::<Vec<f64>>()
    };
    let (dp, dw) = (moved(&partial), moved(&whole));
    let scale = dw.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "training moved no reward");
    let gap = dp
        .iter()
        .zip(&dw)
        .fold(0.0f64, |m, (p, w)| m.max((p - 0.5 * w).abs()));
    // Dividing by the pairs in the step instead (rmflow before) gives 0.5.
    eprintln!("partial step: max |Δr − ½ Δr(whole)| = {gap:.3e} of {scale:.3e}");
    assert!(
        gap <= 5e-3 * scale,
        "partial step: max |Δr − ½ Δr(whole)| {gap} vs max |Δr(whole)| {scale}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Anthropic's persona JSONL as the prompt source (`--persona-jsonl`): only the records whose
/// `answer_matching_behavior` is " Yes" are used, each prompt is the record's `question` as it
/// stands; a malformed line is an input error naming the file and the line, with no output.
#[test]
fn persona_jsonl_prompts_follow_the_official_filter() {
    let dir = temp("persona-jsonl");
    let model = dir.join("llama");
    checkpoint(&model, standard_specs()[1].1, false);
    let mut lines = String::new();
    for k in 0..30 {
        let answer = if k % 3 == 2 { " No" } else { " Yes" };
        let statement = format!("I like helping person number {k}");
        let question =
            format!("Is the following statement something you would say?\n\"{statement}\"");
        lines.push_str(
            &serde_json::json!({
                "question": question,
                "statement": statement,
                "answer_matching_behavior": answer,
                "answer_not_matching_behavior": if answer == " Yes" { " No" } else { " Yes" },
            })
            .to_string(),
        );
        lines.push('\n');
    }
    let jsonl = dir.join("agreeableness.jsonl");
    std::fs::write(&jsonl, &lines).unwrap();
    let cfg = config(&dir, &|f| {
        f.train.epochs = 1;
        f.data.as_mut().unwrap().train_prompts = 12;
        f.data.as_mut().unwrap().test_prompts = 8;
    });
    let out = dir.join("out");
    let args = |out: &Path, file: &Path| {
        vec![
            "--model".to_string(),
            model.display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--mode".into(),
            "head".into(),
            "--persona-jsonl".into(),
            file.display().to_string(),
        ]
    };
    let a = args(&out, &jsonl);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), "2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recipe = json(&out.join("recipe.json"));
    let kept: Vec<String> = (0..30)
        .filter(|k| k % 3 != 2)
        .map(|k| {
            format!("Is the following statement something you would say?\n\"I like helping person number {k}\"")
        })
        .collect();
    let mut seen = Vec::new();
    for key in ["train_prompts", "test_prompts"] {
        for p in recipe[key].as_array().unwrap() {
            let p = p.as_str().unwrap().to_string();
            assert!(
                kept.contains(&p),
                "{key}: {p:?} is not a \" Yes\" record's question"
            );
            assert!(!seen.contains(&p), "{p:?} used twice");
            seen.push(p);
        }
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(recipe["config"]["data"]["format"], "persona_jsonl");
    // A malformed line: exit 2, file and line named, nothing written.
    let bad = dir.join("bad.jsonl");
    let mut text: Vec<&str> = lines.lines().collect();
    text[6] = "{\"question\": \"unterminated";
    std::fs::write(&bad, text.join("\n")).unwrap();
    let out_bad = dir.join("out-bad");
    let a = args(&out_bad, &bad);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), "2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:7", bad.display())), "{err}");
    assert!(!out_bad.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every reward model (`--reward all`: EX-RM, IM-RM, token-mean EX-RM, IM-RM without reference,
/// EX-GRM) in both modes on a tiny causal checkpoint with a chat template, against independent
/// computations of their rewards before training from candle-transformers' own forward:
/// `β Σ_k ln π(y_k|·)` (no reference: not 0 at epoch 0, unlike the IM-RM's), `P(Yes | request)`
/// for the EX-GRM on the official verification request. A masked encoder refuses the EX-GRM.
#[test]
fn every_reward_model_trains_and_starts_from_its_definition() {
    let dir = temp("rewards");
    let model = dir.join("qwen2");
    checkpoint(&model, standard_specs()[4].1, true);
    let cfg = config(&dir, &|f| f.train.epochs = 1);
    let out = dir.join("out");
    let o = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--mode",
            "both",
            "--reward",
            "all",
        ],
        "2",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = metrics(&out);
    // 2 modes × 5 models × 2 checkpoints × 4 splits.
    assert_eq!(rows.len(), 80);
    for m in ["exrm", "imrm", "exrm_token_mean", "imrm_no_ref", "exgrm"] {
        for mode in ["head", "full"] {
            let s = json(&out.join(format!("{mode}/{m}/summary.json")));
            assert_eq!(s["history"].as_array().unwrap().len(), 3, "{mode} {m}");
        }
    }
    // Epoch-0 mean chosen reward on the training pairs, from metrics.csv.
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let epoch0 = |model_name: &str| -> f64 {
        text.lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| {
                f[col("mode")] == "head"
                    && f[col("model")] == model_name
                    && f[col("epoch")] == "0"
                    && f[col("split")] == "train"
            })
            .map(|f| f[col("mean_chosen_reward")].parse().unwrap())
            .unwrap()
    };
    // Independent: candle-transformers' forward, one sequence at a time, f64 log-softmax.
    let lm = LanguageModel::load(&model, &Device::Cpu, Forward::CandleReference).unwrap();
    let file = RecipeFile::from_file(&cfg).unwrap();
    let problem = build_problem(&file, &lm).unwrap();
    let log_softmax = |row: ndarray::ArrayView1<f64>| -> Vec<f64> {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let z = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        row.iter().map(|x| x - z).collect()
    };
    let train = &problem.splits[0];
    let (mut no_ref, mut grm) = (0.0, 0.0);
    let yes = lm.tokenizer.token_to_id("Yes").unwrap() as usize;
    for &i in &train.chosen {
        let s = &problem.sequences[i];
        let logits = lm.logits(std::slice::from_ref(&s.ids)).unwrap().remove(0);
        for k in s.response_start..s.response_end {
            no_ref += file.train.beta * log_softmax(logits.row(k - 1))[s.ids[k] as usize];
        }
        let v = &problem.verification[i];
        let logits = lm.logits(std::slice::from_ref(&v.ids)).unwrap().remove(0);
        grm += log_softmax(logits.row(v.ids.len() - 1))[yes].exp();
    }
    let n = train.chosen.len() as f64;
    let (no_ref, grm) = (no_ref / n, grm / n);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
    assert!(no_ref < 0.0);
    assert!(
        close(epoch0("imrm_no_ref"), no_ref),
        "{} vs {no_ref}",
        epoch0("imrm_no_ref")
    );
    assert!(grm > 0.0 && grm < 1.0);
    assert!(close(epoch0("exgrm"), grm), "{} vs {grm}", epoch0("exgrm"));
    assert_eq!(epoch0("imrm"), 0.0);
    // The verification request is the official format in the chat template, token for token.
    let s = &problem.sequences[train.chosen[0]];
    let q = &problem.prompts_train[s.prompt];
    let text = format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQuestion: {q}\nAnswer: {}{}\nVerification: Is the answer correct (Yes/No)?<|im_end|>\n<|im_start|>assistant\n",
        s.prefix, s.word
    );
    let ids = lm.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(problem.verification[train.chosen[0]].ids, ids);
    assert!(out.join("verification.jsonl").is_file());
    // BERT: no EX-GRM.
    let bert = dir.join("bert");
    checkpoint(&bert, standard_specs()[0].1, false);
    let o = run(
        &[
            "--model",
            bert.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            dir.join("out-bert").to_str().unwrap(),
            "--reward",
            "exgrm",
        ],
        "2",
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("EX-GRM"));
    assert!(!dir.join("out-bert").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The token-mean EX-RM reads the mean of `h` over the response tokens themselves (the official
/// loss mask: positions of the response tokens), checked against candle-transformers' forward.
#[test]
fn token_mean_exrm_reads_the_response_positions() {
    let dir = temp("token-mean");
    let model = dir.join("llama");
    checkpoint(&model, standard_specs()[1].1, false);
    let cfg = config(&dir, &|_| {});
    let file = RecipeFile::from_file(&cfg).unwrap();
    let lm = load_recipe_model(&model, &Device::Cpu, Forward::Nets, &file)
        .unwrap()
        .0;
    let problem = build_problem(&file, &lm).unwrap();
    let seqs = &problem.sequences[..12];
    let mean = rmflow::lm::recipe::response_hidden_mean(&lm, seqs).unwrap();
    let reference = load_recipe_model(&model, &Device::Cpu, Forward::CandleReference, &file)
        .unwrap()
        .0;
    for (i, s) in seqs.iter().enumerate() {
        assert!(
            s.response_end - s.response_start > 1,
            "multi-token responses"
        );
        // Causal: h at position k reads ids[..=k] only, so each prefix is read at its end.
        let positions: Vec<usize> = (s.response_start..s.response_end).collect();
        let prefixes: Vec<Vec<u32>> = positions.iter().map(|&k| s.ids[..=k].to_vec()).collect();
        let h = reference.hidden_at(&prefixes, &positions, 64).unwrap();
        let want = h.mean_axis(ndarray::Axis(0)).unwrap();
        let gap = (&mean.row(i) - &want).fold(0.0f64, |a, x| a.max(x.abs()));
        assert!(gap < 1e-4, "sequence {i}: {gap}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A template-less causal checkpoint gets the official default template (`update_tokenizer`):
/// rmflow's added tokens, rendered prompt and response texts and their token ids equal those of
/// `transformers`' `apply_chat_template` after `update_tokenizer` (fixture written by
/// scripts/reference_default_template.py on the tiny GPT-2 and GPT-NeoX checkpoints, with and
/// without a tokenizer_config.json whose pad token has id 0); the embedding (and an untied
/// output head) gains one row per new token, drawn around the old rows' mean as mean-resizing
/// does; the template's `strftime_now` renders the configured date.
#[test]
fn default_template_matches_update_tokenizer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference");
    let f = json(&root.join("default_template.json"));
    let dir = temp("default-template");
    for (k, case) in f["cases"].as_array().unwrap().iter().enumerate() {
        let name = case["fixture"].as_str().unwrap();
        let model = dir.join(format!("{k}-{name}"));
        std::fs::create_dir_all(&model).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(root.join(name).join(file), model.join(file)).unwrap();
        }
        if !case["tokenizer_config"].is_null() {
            std::fs::write(
                model.join("tokenizer_config.json"),
                case["tokenizer_config"].to_string(),
            )
            .unwrap();
        }
        let file = paper();
        let (lm, format) = load_recipe_model(&model, &Device::Cpu, Forward::Nets, &file).unwrap();
        assert!(
            format.description.contains("official default template"),
            "{name}"
        );
        assert_eq!(
            lm.tokenizer.get_vocab_size(true) as u64,
            case["tokens_after"].as_u64().unwrap(),
            "{k} {name}: len(tokenizer)"
        );
        assert_eq!(
            lm.vocab_size as u64,
            case["embedding_rows_after"].as_u64().unwrap()
        );
        for (token, id) in case["added"].as_object().unwrap() {
            assert_eq!(
                lm.tokenizer.token_to_id(token).map(u64::from),
                id.as_u64(),
                "{k} {name}: id of {token}"
            );
        }
        let t = format.template.as_ref().unwrap();
        assert_eq!(t.eos_token, case["eos_token"].as_str().unwrap());
        for turn in case["turns"].as_array().unwrap() {
            let (p, r) = t
                .prompt_and_response(
                    turn["question"].as_str().unwrap(),
                    turn["answer"].as_str().unwrap(),
                )
                .unwrap();
            assert_eq!(p, turn["prompt"].as_str().unwrap(), "{k} {name}");
            assert_eq!(r, turn["response"].as_str().unwrap(), "{k} {name}");
            let ids = |text: &str| lm.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            let want = |key: &str| -> Vec<u32> {
                turn[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            assert_eq!(ids(&p), want("prompt_ids"), "{k} {name}: {p:?}");
            assert_eq!(ids(&r), want("response_ids"), "{k} {name}: {r:?}");
        }
        // The new rows: transformers' draws lie within 1e-5 of the old rows' mean (N(μ, 1e-9 Σ));
        // rmflow's must too, and be draws, not μ itself.
        let before = case["embedding_rows_before"].as_u64().unwrap() as usize;
        let u = lm.unembedding_f64().unwrap();
        let untied = name == "pythia";
        let mean_key = if untied {
            "output_old_row_mean"
        } else {
            "old_row_mean"
        };
        let mean: Vec<f64> = case[mean_key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for row in before..u.nrows() {
            let gap = u
                .row(row)
                .iter()
                .zip(&mean)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                gap < 1e-4 && gap > 0.0,
                "{k} {name}: row {row} is {gap} from the mean"
            );
        }
        // The old rows are untouched.
        let fresh = LanguageModel::load(&model, &Device::Cpu, Forward::Nets).unwrap();
        let u0 = fresh.unembedding_f64().unwrap();
        assert_eq!(u.slice(ndarray::s![..before, ..]), u0);
        // Same seed, same rows (policy and reference are both this draw).
        let again = load_recipe_model(&model, &Device::Cpu, Forward::Nets, &file)
            .unwrap()
            .0;
        assert_eq!(again.unembedding_f64().unwrap(), u);
    }
    // strftime_now: the configured date, fixed; the default is Llama-3.2's fallback date.
    let mut t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}", "", "", "date").unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "26 Jul 2024");
    t.set_date(rmflow::lm::checkpoint::chat_template::parse_template_date("2026-12-01").unwrap());
    assert_eq!(t.render(&[], false).unwrap(), "01 Dec 2026");
    let bad = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "", "date").unwrap();
    assert!(bad.render(&[], false).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fused step equals candle-nn's `AdamW` bit for bit over several steps, weight decay
/// and a variable without a gradient included.
#[test]
fn fused_adamw_equals_candle_adamw_bit_for_bit() {
    use candle_core::Tensor;
    use candle_nn::Optimizer;
    let dev = candle_core::Device::Cpu;
    let params = candle_nn::ParamsAdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let make = |seed: u64| -> Vec<candle_core::Var> {
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        [(7usize, 5usize), (3, 1), (4, 4)]
            .iter()
            .map(|&(r, c)| {
                let v: Vec<f32> = (0..r * c).map(|_| next()).collect();
                candle_core::Var::from_tensor(&Tensor::from_vec(v, (r, c), &dev).unwrap()).unwrap()
            })
            .collect()
    };
    let (ours, theirs) = (make(1), make(1));
    let mut fused = rmflow::lm::train::adamw::Adam::new(ours.clone(), params.clone()).unwrap();
    let mut candle = candle_nn::AdamW::new(theirs.clone(), params).unwrap();
    for step in 0..6 {
        let loss = |vars: &[candle_core::Var]| -> Tensor {
            // The third variable gets no gradient on odd steps.
            let used = if step % 2 == 1 { 2 } else { 3 };
            let mut total = Tensor::new(0f32, &dev).unwrap();
            for (k, v) in vars[..used].iter().enumerate() {
                let t = v.as_tensor();
                let term = ((t * (k as f64 + 1.0)).unwrap().sin().unwrap() * t)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                total = (total + term).unwrap();
            }
            total
        };
        fused.step(&loss(&ours).backward().unwrap()).unwrap();
        candle.step(&loss(&theirs).backward().unwrap()).unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "step {step}: {a:?} vs {b:?}");
        }
    }
}

/// Audit round 3 (issue #41): a persona JSONL with a repeated record uses the prompt once (it
/// could land in both train and test before, silently).
#[test]
fn repeated_persona_records_are_used_once() {
    let dir = temp("persona-repeats");
    let record = |k: usize| {
        serde_json::json!({
            "question": format!("Would you say \"I like number {k}\"?"),
            "statement": format!("I like number {k}"),
            "answer_matching_behavior": " Yes",
            "answer_not_matching_behavior": " No",
        })
        .to_string()
    };
    let lines: Vec<String> = [0, 1, 2, 1, 3, 0].iter().map(|&k| record(k)).collect();
    let path = dir.join("repeats.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let prompts = rmflow::lm::data::read_persona_jsonl(&path).unwrap();
    assert_eq!(prompts.len(), 4, "{prompts:?}");
    let unique: std::collections::BTreeSet<&String> = prompts.iter().collect();
    assert_eq!(unique.len(), 4);
    assert!(prompts[3].contains("number 3"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `data.split = "official"` (experiments/persona_paper.toml): the train and test prompts are the
/// committed Anthropic records at torch's `randperm(500)` positions (seed 875; the permutation
/// itself is checked against torch in `tests/lm_data.rs`), and the training responses' prefixes
/// and words follow the same generator's `randint` draws, chosen then rejected, train then test.
#[test]
fn official_split_takes_the_datamodules_records_and_draws() {
    use rmflow::lm::data::torch_rng::TorchGenerator;
    let dir = temp("official-split");
    let model = dir.join("llama");
    checkpoint(&model, standard_specs()[1].1, false);
    let file = paper();
    assert_eq!(file.data.as_ref().unwrap().split, SplitRule::Official);
    let (lm, _) = load_recipe_model(&model, &Device::Cpu, Forward::Nets, &file).unwrap();
    let problem = build_problem(&file, &lm).unwrap();
    let records =
        rmflow::lm::data::read_persona_jsonl(&file.data.as_ref().unwrap().statements).unwrap();
    let mut g = TorchGenerator::manual_seed(875);
    let perm = g.randperm(records.len());
    let pick = |r: std::ops::Range<usize>| -> Vec<String> {
        perm[r].iter().map(|&k| records[k].clone()).collect()
    };
    assert_eq!(problem.prompts_train, pick(0..80));
    assert_eq!(problem.prompts_test, pick(80..120));
    let r = file.responses.as_ref().unwrap();
    for split in &problem.splits[..2] {
        for (&c, &rj) in split.chosen.iter().zip(&split.rejected) {
            let (c, rj) = (&problem.sequences[c], &problem.sequences[rj]);
            assert_eq!(c.prefix, r.chosen_prefixes[g.randint(2)]);
            assert_eq!(c.word, r.chosen_words[g.randint(2)]);
            assert_eq!(rj.prefix, r.rejected_prefixes[g.randint(2)]);
            assert_eq!(rj.word, r.rejected_words[g.randint(2)]);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `1` where the official flush (`utils/rm_utils.py:84-88`) cuts the row: the padded width
/// `max prompt + max response` exceeds the longest row, and the row is that long. Rows are
/// (prompt length, total length).
fn official_cut(rows: &[(usize, usize)]) -> Vec<bool> {
    let width =
        rows.iter().map(|r| r.0).max().unwrap() + rows.iter().map(|r| r.1 - r.0).max().unwrap();
    let longest = rows.iter().map(|r| r.1).max().unwrap();
    rows.iter()
        .map(|r| longest < width && r.1 == longest)
        .collect()
}

/// The EX-RM's evaluations carry the footnote-3 statistics (`alignment.csv`), and
/// `train.drop_last_token_of_longest` cuts exactly the rows the official flush cuts: in every
/// training micro-batch (recounted from the steps' pairs and `sequences.jsonl`) and in the
/// official evaluator's batches of the training-format test pairs; off, nothing is cut.
#[test]
fn flush_drop_cuts_the_official_rows_and_alignment_is_written() {
    let dir = temp("flush");
    let model = dir.join("qwen2");
    checkpoint(&model, standard_specs()[4].1, true);
    let (off, on) = (dir.join("off"), dir.join("on"));
    let cfg = config(&dir, &|f| f.train.epochs = 2);
    run_ok(&model, &cfg, &off, "full", "2");
    let cfg = config(&dir, &|f| {
        f.train.epochs = 2;
        f.train.drop_last_token_of_longest = true;
    });
    run_ok(&model, &cfg, &on, "full", "2");
    let alignment = std::fs::read_to_string(off.join("alignment.csv")).unwrap();
    let test_pairs = json(&off.join("recipe.json"))["splits"][1]["pairs"]
        .as_u64()
        .unwrap();
    let row = alignment
        .lines()
        .find(|l| l.starts_with("full,exrm,0,0,test,") && l.contains(",max_margin_cosine,"))
        .expect("the epoch-0 separator cosines on the test pairs");
    assert_eq!(
        row.split(',').nth(8).unwrap().parse::<u64>().unwrap(),
        test_pairs
    );
    let recipe_off = json(&off.join("recipe.json"));
    assert!(recipe_off["evaluation_cuts"].is_null());
    let recipe = json(&on.join("recipe.json"));
    let seqs: Vec<serde_json::Value> = std::fs::read_to_string(on.join("sequences.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shape = |i: u64| {
        let s = &seqs[i as usize];
        (
            s["response_start"].as_u64().unwrap() as usize,
            s["ids"].as_array().unwrap().len(),
        )
    };
    let indices = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let train = &recipe["splits"][0];
    let (chosen, rejected) = (indices(&train["chosen"]), indices(&train["rejected"]));
    let micro = 8;
    for run in recipe["runs"].as_array().unwrap() {
        let mut expected = 0;
        for step in run["step_pairs"].as_array().unwrap() {
            for batch in indices(step).chunks(micro) {
                let rows: Vec<(usize, usize)> = batch
                    .iter()
                    .map(|&p| shape(chosen[p as usize]))
                    .chain(batch.iter().map(|&p| shape(rejected[p as usize])))
                    .collect();
                expected += official_cut(&rows).iter().filter(|&&c| c).count();
            }
        }
        assert_eq!(
            run["training_rows_cut"].as_u64().unwrap() as usize,
            expected
        );
        assert!(
            expected > 0,
            "the tiny run's batches cut no row: the test shows nothing"
        );
    }
    let test = &recipe["splits"][1];
    let (tc, tr) = (indices(&test["chosen"]), indices(&test["rejected"]));
    let mut expected = 0;
    for (c, r) in tc.chunks(micro).zip(tr.chunks(micro)) {
        let rows: Vec<(usize, usize)> = c.iter().chain(r).map(|&i| shape(i)).collect();
        expected += official_cut(&rows).iter().filter(|&&x| x).count();
    }
    let cuts = &recipe["evaluation_cuts"][1];
    assert_eq!(cuts["split"], "test");
    assert_eq!(cuts["cut"].as_u64().unwrap() as usize, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
