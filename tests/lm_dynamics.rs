//! `rmflow lm-dynamics` (MATH.md §3 on a real LM) on tiny random checkpoints: the training
//! direction's kernel against candle's autograd of `∇_U ln π`, the states against the trainer's
//! log-probabilities, the CLI's outputs and first-order check, a checkpoint's margins against the
//! run's own, and bad input.
#![cfg(feature = "lm")]

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use rmflow::analysis::dynamics::direction::{kernel, ResponseStates};
use rmflow::lm::dynamics::states::sequence_states;
use rmflow::lm::recipe::{build, load_recipe_model, response_token_logprobs, RecipeFile};
use rmflow::lm::Forward;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TRAIN: [(&str, &str, &str); 5] = [
    ("is the sky blue", "yes it is blue", "no it is green"),
    ("is snow cold", "yes snow is cold", "no snow is hot"),
    ("is fire hot", "yes fire is hot", "no fire is cold"),
    ("is grass green", "yes grass is green", "no grass is red"),
    ("is ice cold", "yes ice is cold", "no ice is warm"),
];

/// Paraphrases: new words, some tokens shared with the training responses.
const SHIFTED: [(&str, &str, &str); 4] = [
    (
        "is the sky blue",
        "sure the sky is blue",
        "never the sky is red",
    ),
    (
        "is the sun bright",
        "sure it is very bright",
        "never it is dark",
    ),
    (
        "is snow cold",
        "certainly snow is cold",
        "nope snow is warm",
    ),
    ("is grass green", "certainly it is green", "nope it is red"),
];

fn jsonl(dir: &Path, name: &str, rows: &[(&str, &str, &str)]) -> PathBuf {
    let p = dir.join(name);
    let lines: Vec<String> = rows
        .iter()
        .map(|(q, c, r)| serde_json::json!({"prompt": q, "chosen": c, "rejected": r}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// A preference recipe: TRAIN trains; "shifted" and "same" (TRAIN's first 3) evaluate.
fn setup(name: &str, tied: bool) -> (PathBuf, PathBuf, PathBuf) {
    let dir = common::temp_dir("rmflow-lmdyn", name);
    let (t, s) = (
        jsonl(&dir, "train.jsonl", &TRAIN),
        jsonl(&dir, "shifted.jsonl", &SHIFTED),
    );
    let text = format!(
        "seed = 4\n[preferences]\ntrain = {{ path = {t:?} }}\n[[preferences.eval]]\nname = \"shifted\"\npath = {s:?}\n[[preferences.eval]]\nname = \"same\"\npath = {t:?}\nlimit = 3\n[train]\nbeta = 0.1\nlr = 1e-2\nepochs = 2\npairs_per_step = 4\nmicro_batch = 2\neval_every_epochs = 1\neval_batch = 5\n"
    );
    let config = dir.join("recipe.toml");
    std::fs::write(&config, text).unwrap();
    let want = if tied { "llama-tied" } else { "llama-gqa" };
    let model = common::tiny_chat_llama(&dir, &config, want);
    (dir, model, config)
}

/// `∇_U Σ_k ln softmax(U h_k)_{y_k}` by candle's autograd, f64.
fn autograd_unembedding_gradient(
    u: &ndarray::Array2<f64>,
    r: ResponseStates,
) -> ndarray::Array2<f64> {
    let dev = Device::Cpu;
    let (v, d) = u.dim();
    let uv =
        Var::from_tensor(&Tensor::from_vec(u.iter().copied().collect(), (v, d), &dev).unwrap())
            .unwrap();
    let h = Tensor::from_vec(r.states.iter().copied().collect(), r.states.dim(), &dev).unwrap();
    let lp =
        candle_nn::ops::log_softmax(&h.matmul(&uv.as_tensor().t().unwrap()).unwrap(), D::Minus1)
            .unwrap();
    let idx: Vec<u32> = r.tokens.iter().map(|&t| t as u32).collect();
    let idx = Tensor::new(idx.as_slice(), &dev)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let total = lp.gather(&idx, 1).unwrap().sum_all().unwrap();
    assert_eq!(total.dtype(), DType::F64);
    let g = total.backward().unwrap();
    let g = g.get(uv.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    ndarray::Array2::from_shape_vec((v, d), g.into_iter().flatten().collect()).unwrap()
}

/// On a tied and an untied tiny Llama: for every pair of sequences of the problem, the
/// direction's `κ = ⟨G(y), G(ȳ)⟩_F` equals the inner product of candle's autograd gradients
/// `∇_U ln π` to 1e-9 relative (the issue asks 1e-6), its identity part equals
/// `Σ_{k,l: y_k = ȳ_l} ⟨h_k, h̄_l⟩` from the definition, and the states' `ln π` equal the
/// trainer's scoring of the same sequences (f32) to 2e-5 absolute.
#[test]
fn kernel_equals_autograd_unembedding_gradients() {
    for tied in [true, false] {
        let (_dir, model, config) = setup(if tied { "kernel-tied" } else { "kernel" }, tied);
        let file = RecipeFile::from_file(&config).unwrap();
        let (lm, _) = load_recipe_model(&model, &Device::Cpu, Forward::Nets, &file).unwrap();
        let problem = build(&file, &lm).unwrap().problem;
        let seqs = &problem.sequences;
        let idx: Vec<usize> = (0..seqs.len()).collect();
        let states = sequence_states(&lm, seqs, &idx, 3).unwrap();
        let u = lm.unembedding_f64().unwrap();
        let trainer = response_token_logprobs(&lm, seqs, 4).unwrap();
        let grads: Vec<ndarray::Array2<f64>> = states
            .iter()
            .map(|s| autograd_unembedding_gradient(&u, s.as_ref().unwrap().response()))
            .collect();
        for (i, s) in states.iter().enumerate() {
            let s = s.as_ref().unwrap();
            let lp =
                rmflow::analysis::dynamics::direction::response_log_probs(u.view(), s.response());
            assert_eq!(lp.len(), trainer[i].len(), "sequence {i}");
            for (a, b) in lp.iter().zip(&trainer[i]) {
                assert!(
                    (a - b).abs() <= 2e-5,
                    "sequence {i}: ln π {a} from the states, {b} from the trainer"
                );
            }
        }
        for a in 0..seqs.len() {
            for b in (a..seqs.len()).step_by(3) {
                let (sa, sb) = (states[a].as_ref().unwrap(), states[b].as_ref().unwrap());
                let (total, identity) = kernel(u.view(), sa.response(), sb.response());
                let want = (&grads[a] * &grads[b]).sum();
                assert!(
                    (total - want).abs() <= 1e-9 * want.abs().max(1e-3),
                    "κ({a}, {b}) = {total}, autograd {want}"
                );
                let mut id = 0.0;
                for (k, &y) in sa.tokens.iter().enumerate() {
                    for (l, &yb) in sb.tokens.iter().enumerate() {
                        if y == yb {
                            id += sa.states.row(k).dot(&sb.states.row(l));
                        }
                    }
                }
                assert!(
                    (identity - id).abs() <= 1e-9 * id.abs().max(1e-3),
                    "identity part of κ({a}, {b}) = {identity}, definition {id}"
                );
            }
        }
    }
}

fn num(row: &HashMap<String, String>, key: &str) -> f64 {
    row[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key} = {:?}", row[key]))
}

fn dynamics(args: &[&str]) -> std::process::Output {
    let mut all = vec!["lm-dynamics"];
    all.extend_from_slice(args);
    common::rmflow(&all)
}

/// Step 0 through the CLI, both reward models: every evaluation pair once per reward model;
/// the IM-RM's margins exactly 0 (the model is its reference) and its velocity the sum of its
/// identity part and the rest; the first-order check of the part passes (its error halves with
/// η); the whole model's central-difference velocities agree at ε and ε/2 within 5 % and its
/// step is applied (f32) within 1 %; each
/// split's token shares sum to 1; the outputs name the config.
#[test]
fn step_zero_through_the_cli() {
    let (dir, model, config) = setup("cli", true);
    let out = dir.join("dyn");
    let o = dynamics(&[
        "--model",
        model.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = common::csv_table(&out.join("pairs.csv"));
    assert_eq!(rows.len(), 2 * (SHIFTED.len() + 3));
    for r in rows.iter().filter(|r| r["reward"] == "imrm") {
        assert_eq!(num(r, "margin"), 0.0, "{r:?}");
        let (v, id, rest) = (
            num(r, "velocity"),
            num(r, "velocity_identity"),
            num(r, "velocity_rest"),
        );
        assert!((v - id - rest).abs() <= 1e-12 * v.abs().max(1e-12), "{r:?}");
    }
    let summary = common::read_json(&out.join("summary.json"));
    for r in summary["rewards"].as_array().unwrap() {
        let f = &r["first_order"];
        assert_eq!(f["part_passes"], true, "{r}");
        let c = f["whole_consistency"].as_f64().unwrap();
        let applied = f["whole_applied"].as_f64().unwrap();
        assert!(
            (applied - 1.0).abs() < 0.01,
            "{}: {applied} of the whole-model step applied",
            r["reward"]
        );
        assert!(
            c < 0.05,
            "{}: whole-model step not first order: {c}",
            r["reward"]
        );
    }
    let tokens = common::csv_table(&out.join("tokens.csv"));
    for split in ["shifted", "same"] {
        let total: f64 = tokens
            .iter()
            .filter(|t| t["split"] == split)
            .map(|t| num(t, "share"))
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{split}: shares sum to {total}");
    }
    let cfg = common::read_json(&out.join("config.json"));
    assert_eq!(cfg["recipe"]["seed"], 4);
    assert!(cfg["rmflow_version"].is_string());
}

/// A kept checkpoint of an IM-RM run: lm-dynamics reads the run's model and config from it,
/// and its margins equal the run's own evaluation of the same parameters (pair_rewards.csv at
/// that epoch) within 2e-6 absolute: the run scores in f32, ≤ 15 response tokens of |ln π| ≤ 6
/// per side, policy and reference, so its rounding is ≤ 4 · 15 · 6 · 6e-8 nats ≈ 2e-5, times
/// β = 0.1.
#[test]
fn checkpoint_margins_equal_the_runs() {
    let (dir, model, config) = setup("ckpt", true);
    let run = dir.join("run");
    let mut args = common::lm_recipe_args(&model, &config, &run);
    args.extend(["--reward", "imrm", "--keep-checkpoints", "--epochs", "2"].map(String::from));
    let o = common::rmflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // state-000002: written before the epoch-1 evaluation, after epoch 1's steps.
    let state = dir.join("run.checkpoint").join("state-000002");
    let out = dir.join("dyn");
    let o = dynamics(&[
        "--checkpoint",
        state.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-whole-step",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = common::read_json(&out.join("config.json"));
    assert_eq!(cfg["checkpoint"]["epoch"], 1, "{cfg}");
    let theirs: HashMap<(String, String), f64> = common::csv_table(&run.join("pair_rewards.csv"))
        .into_iter()
        .filter(|r| r["epoch"] == "1")
        .map(|r| {
            (
                (r["split"].clone(), r["pair"].clone()),
                num(&r, "chosen_reward") - num(&r, "rejected_reward"),
            )
        })
        .collect();
    let rows = common::csv_table(&out.join("pairs.csv"));
    assert_eq!(rows.len(), SHIFTED.len() + 3);
    for r in rows {
        let want = theirs[&(r["split"].clone(), r["pair"].clone())];
        let got = num(&r, "margin");
        assert!(
            got != 0.0 && (got - want).abs() <= 2e-6,
            "{r:?}: the run's margin {want}"
        );
    }
}

/// Bad input: exit 2 naming what is wrong, nothing written.
#[test]
fn bad_input_is_refused() {
    let (dir, model, config) = setup("bad", true);
    let out = dir.join("dyn");
    let (m, c, o) = (
        model.to_str().unwrap(),
        config.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let cases: [(&[&str], &str); 5] = [
        (
            &["--model", m, "--config", c, "--out", o, "--sets", "nope"],
            "no split \"nope\"",
        ),
        (
            &["--model", m, "--config", c, "--out", o, "--reward", "exgrm"],
            "--reward",
        ),
        (
            &["--model", m, "--config", c, "--out", o, "--eta=-1"],
            "--eta",
        ),
        (&["--model", m, "--out", o], "--config"),
        (&["--checkpoint", c, "--out", o], "not a checkpoint"),
    ];
    for (args, says) in cases {
        let r = dynamics(args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}
