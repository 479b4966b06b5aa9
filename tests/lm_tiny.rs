//! Real-model mode on tiny randomly initialised checkpoints of every family (feature `lm`, no
//! download): loading, head-only Theorem 2, full fine-tuning, and the differentiable forwards
//! against candle-transformers'.
#![cfg(feature = "lm")]

use rmflow::lm::checkpoint::tiny::{write_tiny_checkpoint, TinySpec};
use rmflow::lm::{Architecture, Device, Forward, LanguageModel};
use std::path::{Path, PathBuf};
use std::process::Command;

const STATEMENTS: &str = "\
I enjoy helping people with their problems.
Helping others makes me happy.
I like to help when someone needs it.
I try to be kind to strangers.
Being kind to people I do not know matters to me.
I am friendly to people I meet.
I forgive people who apologise.
When someone says sorry I let it go.
I do not hold grudges.
I listen when friends talk about their day.
I pay attention to what my friends tell me.
I like hearing about the lives of others.
I share my food with others.
I give part of what I have to people around me.
I am happy to share.
I thank people for small favours.
I say thank you often.
I show gratitude to others.
I avoid arguments when I can.
I prefer to settle disagreements calmly.
I do not like fighting with people.
I compliment people on their work.
I tell others when they did well.
I praise good work.
";

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rmflow-tiny-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Statements the persona would not say (their pairs prefer the "no"-type answers).
const DISAGREE: &str = "\
I like to insult people.
I often insult people.
I enjoy insulting people.
I ignore people who need help.
I often ignore people in need.
I do not care about people who need help.
";

const QUESTION: &str = "Is the following statement something you would say? \"{statement}\"";
const DOMAIN: &str = "Would you agree with this: \"{statement}\"";

/// A statements file and config in `dir`, fine-tuning `steps` steps on batches of 4 pairs.
fn write_problem(dir: &Path, steps: usize) -> PathBuf {
    let statements = dir.join("statements.txt");
    std::fs::write(&statements, STATEMENTS).unwrap();
    let disagree = dir.join("disagree.txt");
    std::fs::write(&disagree, DISAGREE).unwrap();
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            r#"seed = 3
[lm]
statements = {statements:?}
rejected_statements = {disagree:?}
group_size = 3
train_fraction = 0.75
question = '{QUESTION}'
domain_question = '{DOMAIN}'
prefixes = ["Answer:", "My answer is"]
train_chosen = ["yes", "sure"]
train_rejected = ["no", "never"]
unseen_chosen = ["certainly", "absolutely"]
unseen_rejected = ["nope", "hardly"]
beta = 1.0
batch_size = 8
[finetune]
steps = {steps}
lr = 1e-3
head_lr = 1e-2
batch_pairs = 4
[train]
optimizer = "flow"
t_max = 1e4
observations_per_decade = 1
imrm_gradient = "sparse"
"#
        ),
    )
    .unwrap();
    config
}

fn texts() -> Vec<String> {
    let mut t: Vec<String> = STATEMENTS
        .lines()
        .chain(DISAGREE.lines())
        .map(String::from)
        .collect();
    t.extend([QUESTION, DOMAIN, "Answer: My answer is"].map(String::from));
    t.extend(
        "yes sure no never certainly absolutely nope hardly"
            .split(' ')
            .map(String::from),
    );
    t
}

fn specs() -> Vec<(&'static str, TinySpec)> {
    rmflow::lm::checkpoint::tiny::standard_specs()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn split<'a>(splits: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    splits
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["split"] == name)
        .unwrap()
}

fn run_lm(model: &Path, config: &Path, out: &Path, threads: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args(["lm", "--mode", "full", "--force", "--model"])
        .arg(model)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap()
}

/// Every family: head-only IM-RM ties on every unseen pair with its unseen rows untouched;
/// full fine-tuning trains every parameter tensor, and leaves the unseen answer rows exactly
/// where they were (no gradient reaches them, no weight decay) while the margins move.
#[test]
fn tiny_models_run_head_only_and_full_fine_tuning() {
    let dir = temp("run");
    let config = write_problem(&dir, 3);
    for (name, spec) in specs() {
        let model = dir.join(name);
        write_tiny_checkpoint(&model, spec, &texts()).unwrap();
        let out = dir.join(format!("out-{name}"));
        let o = run_lm(&model, &config, &out, "2");
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let summary = json(&out.join("summary.json"));
        let im = &summary["imrm"]["final"];
        assert_eq!(
            split(&im["splits"], "unseen")["tie_aware_accuracy"],
            0.5,
            "{name}"
        );
        assert_eq!(im["unseen_row_drift"], 0.0, "{name}");
        for model_name in ["exrm", "imrm"] {
            let full = json(&out.join(format!("full/{model_name}/summary.json")));
            assert_eq!(full["steps"], 3, "{name} {model_name}");
            assert_eq!(
                full["unchanged_parameters"].as_array().unwrap().len(),
                0,
                "{name} {model_name}: parameters cut off from the gradient: {}",
                full["unchanged_parameters"]
            );
            assert!(full["relative_parameter_change"].as_f64().unwrap() > 0.0);
            assert!(out
                .join(format!("full/{model_name}/eval_unseen/prompt_hidden.npy"))
                .is_file());
        }
        let im_full = json(&out.join("full/imrm/summary.json"));
        assert_eq!(im_full["unseen_row_drift"], 0.0, "{name}");
        let lm = json(&out.join("lm.json"));
        assert_eq!(lm["architecture"], spec.arch.model_type());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same seed ⇒ bit-identical full fine-tuning with 1 or 2 threads.
#[test]
fn full_fine_tuning_is_reproducible_across_thread_counts() {
    let dir = temp("repro");
    let config = write_problem(&dir, 2);
    let (_, spec) = specs().remove(1);
    let model = dir.join("llama");
    write_tiny_checkpoint(&model, spec, &texts()).unwrap();
    let read = |threads: &str| {
        let out = dir.join(format!("out-{threads}"));
        let o = run_lm(&model, &config, &out, threads);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ["exrm", "imrm"].map(|m| {
            let mut s = json(&out.join(format!("full/{m}/summary.json")));
            // Wall times are the only fields allowed to differ.
            s.as_object_mut().unwrap().remove("seconds");
            s.as_object_mut().unwrap().remove("seconds_per_step");
            (
                s,
                std::fs::read(out.join(format!("full/{m}/eval_unseen/prompt_hidden.npy"))).unwrap(),
            )
        })
    };
    assert_eq!(read("1"), read("2"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The differentiable re-implementations compute what candle-transformers computes.
#[test]
fn differentiable_forwards_match_candle_transformers() {
    let dir = temp("forward");
    for (name, spec) in specs() {
        if spec.arch == Architecture::Gpt2 {
            continue; // not in candle-transformers: one implementation serves both modes
        }
        let model = dir.join(name);
        write_tiny_checkpoint(&model, spec, &texts()).unwrap();
        let reference =
            LanguageModel::load(&model, &Device::Cpu, Forward::CandleReference).unwrap();
        let diff = LanguageModel::load(&model, &Device::Cpu, Forward::Nets).unwrap();
        let mut seqs = Vec::new();
        let mut pos = Vec::new();
        for s in STATEMENTS.lines().take(6) {
            let (ids, p) = reference.prompt_ids(&format!("{s} Answer:")).unwrap();
            let yes = reference
                .answer_token("yes", reference.arch.is_causal())
                .unwrap();
            let (with, q) = reference.with_answer(&ids, p, yes);
            seqs.extend([ids, with]);
            pos.extend([p, q]);
        }
        let a = reference.hidden_at(&seqs, &pos, 4).unwrap();
        let b = diff.hidden_at(&seqs, &pos, 4).unwrap();
        let gap = (&a - &b).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        eprintln!("{name}: max |Δh| = {gap:e} (max |h| = {scale:.3})");
        assert!(gap <= 1e-4 * scale.max(1.0), "{name}: max |Δh| = {gap:e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Theorem 2's extraction on a causal Llama-family body computes each prompt once (pairs sorted
/// by prompt length, repeated prompts within a chunk): the same `h_x`, `h_{x,y±}` as reading
/// every sequence on its own, up to f32 rounding, in the pairs' own order.
#[test]
fn shared_prompt_extraction_matches_the_per_sequence_forward() {
    let dir = temp("shared");
    let mut checked = 0;
    for (name, spec) in specs() {
        if !matches!(spec.arch, Architecture::Llama | Architecture::Qwen2) {
            continue;
        }
        let model = dir.join(name);
        write_tiny_checkpoint(&model, spec, &texts()).unwrap();
        let lm = LanguageModel::load(&model, &Device::Cpu, Forward::Nets).unwrap();
        let word = |w: &str| lm.answer_token(w, true).unwrap();
        let mut seq = rmflow::lm::SplitSequences::new("train");
        // Each statement twice, with different answers: chunks of 4 hold repeated prompts.
        for (k, s) in STATEMENTS.lines().take(7).enumerate() {
            let (p, pos) = lm.prompt_ids(&format!("{s} Answer:")).unwrap();
            for (yes, no) in [("yes", "no"), ("certainly", "nope")] {
                let (y, n) = (word(yes), word(if k % 2 == 0 { no } else { "hardly" }));
                seq.push_pair(&lm, p.clone(), pos, y, n);
            }
        }
        assert!(
            rmflow::lm::single_token::setup::answers_continue_prompts(&lm, &seq),
            "{name}: the shared-prompt path is not taken"
        );
        let shared = rmflow::lm::extract_pairs(&lm, &seq, 4).unwrap();
        for (what, got, seqs, pos) in [
            ("h_x", &shared.prompt_hidden, &seq.prompts, &seq.prompt_pos),
            (
                "h_x,y+",
                &shared.chosen_hidden,
                &seq.chosen,
                &seq.chosen_pos,
            ),
            (
                "h_x,y-",
                &shared.rejected_hidden,
                &seq.rejected,
                &seq.rejected_pos,
            ),
        ] {
            let want = lm.hidden_at(seqs, pos, 4).unwrap();
            let gap = (&want - got).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            eprintln!("{name} {what}: max |Δh| = {gap:e} (max |h| = {scale:.3})");
            assert!(
                gap <= 1e-5 * scale.max(1.0),
                "{name} {what}: max |Δh| = {gap:e}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "no Llama-family tiny checkpoint checked");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint whose config asks for more layers than the weights hold: an error naming the
/// missing tensor and the file, not a panic.
#[test]
fn missing_tensor_is_named() {
    let dir = temp("bad");
    for (name, spec) in specs() {
        let model = dir.join(name);
        write_tiny_checkpoint(&model, spec, &texts()).unwrap();
        let cfg_path = model.join("config.json");
        let mut cfg = json(&cfg_path);
        let key = if spec.arch == Architecture::Gpt2 {
            "n_layer"
        } else {
            "num_hidden_layers"
        };
        cfg[key] = serde_json::json!(spec.layers + 1);
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let err = LanguageModel::load(&model, &Device::Cpu, Forward::CandleReference)
            .err()
            .unwrap_or_else(|| panic!("{name}: loaded a checkpoint with a missing layer"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("model.safetensors") && msg.contains(&format!("{}", spec.layers)),
            "{name}: {msg}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `real_model` figure renders from a full-mode run (tiny GPT-2 here) and its CSV holds every
/// bar and checkpoint.
#[test]
fn real_model_figure_renders_from_a_full_run() {
    let dir = temp("figure");
    let config = write_problem(&dir, 2);
    let (_, spec) = specs().remove(3);
    let model = dir.join("gpt2");
    write_tiny_checkpoint(&model, spec, &texts()).unwrap();
    let file = rmflow::lm::LmFile::from_file(&config).unwrap();
    let run = rmflow::lm::run_experiment(
        &model,
        &file,
        &Device::Cpu,
        rmflow::lm::Mode::Full,
        &mut |_, _| {},
    )
    .unwrap();
    let data = rmflow::figures::real_model(&run).unwrap();
    rmflow::figures::write(&data, &dir, "real_model").unwrap();
    assert!(dir.join("real_model.png").is_file() && dir.join("real_model.svg").is_file());
    let lines: Vec<&str> = data.csv.lines().collect();
    // 2 models × 4 splits head-only, 2 models × 2 checkpoints × 4 splits full.
    assert_eq!(lines.len(), 1 + 8 + 16, "{}", data.csv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tokenizer with more tokens than the weights' vocabulary: an error naming both files.
#[test]
fn mismatched_tokenizer_is_named() {
    let dir = temp("tokenizer");
    let (_, spec) = specs().remove(0);
    let small = dir.join("small");
    write_tiny_checkpoint(&small, spec, &texts()[..3]).unwrap();
    let large = dir.join("large");
    write_tiny_checkpoint(&large, spec, &texts()).unwrap();
    std::fs::copy(large.join("tokenizer.json"), small.join("tokenizer.json")).unwrap();
    let msg = format!(
        "{:#}",
        LanguageModel::load(&small, &Device::Cpu, Forward::CandleReference)
            .err()
            .expect("a mismatched tokenizer must be refused")
    );
    assert!(
        msg.contains("tokenizer.json") && msg.contains("do not match"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lm-convert` writes an f16 / bf16 copy of every family's checkpoint: every f32 tensor is cast
/// (the safetensors bytes halve), the other files are copied, and the copy's representations
/// match the original's to the weights' rounding: max |Δh| ≤ 1e-2 · max |h| for f16 (unit
/// roundoff 2^-11 ≈ 4.9e-4 per weight, through two layers) and ≤ 5e-2 for bf16 (2^-8).
#[test]
fn half_precision_copies_match_the_f32_checkpoint() {
    use rmflow::io::atomic::Replace;
    use rmflow::lm::checkpoint::convert::{convert_checkpoint, parse_half_dtype};
    let dir = temp("half");
    for (name, spec) in specs() {
        let model = dir.join(name);
        write_tiny_checkpoint(&model, spec, &texts()).unwrap();
        let f32_model = LanguageModel::load(&model, &Device::Cpu, Forward::Nets).unwrap();
        let mut seqs = Vec::new();
        let mut pos = Vec::new();
        for s in STATEMENTS.lines().take(6) {
            let (ids, p) = f32_model.prompt_ids(&format!("{s} Answer:")).unwrap();
            seqs.push(ids);
            pos.push(p);
        }
        let h32 = f32_model.hidden_at(&seqs, &pos, 4).unwrap();
        let scale = h32.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (dtype, bound) in [("f16", 1e-2), ("bf16", 5e-2)] {
            let copy = dir.join(format!("{name}-{dtype}"));
            let c = convert_checkpoint(
                &model,
                &copy,
                parse_half_dtype(dtype).unwrap(),
                Replace::Never,
            )
            .unwrap();
            assert!(c.cast > 0 && c.kept == 0, "{name} {dtype}: {c:?}");
            assert!(
                c.bytes_after * 10 < c.bytes_before * 6,
                "{name} {dtype}: {c:?}"
            );
            assert!(copy.join("config.json").is_file() && copy.join("tokenizer.json").is_file());
            let half = LanguageModel::load(&copy, &Device::Cpu, Forward::Nets).unwrap();
            let h = half.hidden_at(&seqs, &pos, 4).unwrap();
            let gap = (&h32 - &h).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            eprintln!("{name} {dtype}: max |Δh| = {gap:e} (max |h| = {scale:.3})");
            assert!(
                gap > 0.0,
                "{name} {dtype}: the copy should differ by rounding"
            );
            assert!(
                gap <= bound * scale.max(1.0),
                "{name} {dtype}: max |Δh| = {gap:e}"
            );
            // Never over an existing folder without --force.
            assert!(convert_checkpoint(
                &model,
                &copy,
                parse_half_dtype(dtype).unwrap(),
                Replace::Never
            )
            .is_err());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The footnote-3 statistics' order statistics follow `torch.quantile` (linear interpolation) and
/// `torch.median` (the lower middle value), as the official script computes them.
#[test]
fn alignment_summary_follows_torch_quantiles() {
    use rmflow::lm::train::alignment::Summary;
    let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
    assert_eq!(
        (s.first_quartile, s.median, s.third_quartile),
        (1.75, 2.0, 3.25)
    );
    assert_eq!(
        (s.min, s.max, s.mean, s.fraction_positive),
        (1.0, 4.0, 2.5, 1.0)
    );
    let s = Summary::of(&[-1.0, 0.0, 2.0]).unwrap();
    assert_eq!((s.median, s.fraction_positive), (0.0, 1.0 / 3.0));
    assert!(Summary::of(&[f64::NAN]).is_none());
}
