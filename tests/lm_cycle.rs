//! The Hamiltonian-cycle experiment (feature `lm`, no download): the shared-prefix forward
//! against the plain one, the exact enumeration's bookkeeping, and `rmflow ham-cycle` end to end
//! (outputs, bit-for-bit reproducibility, bad configs).
#![cfg(feature = "lm")]

mod common;

use rmflow::lm::cycle::{order_masses, write_initial_checkpoint, CycleFile, CycleTokens};
use rmflow::lm::{Device, Forward, LanguageModel};
use rmflow::problem::hamiltonian::{generate, vertex_orders, CycleSpec};
use std::path::Path;

/// An untrained cycle model on `n` vertices written into `dir` and loaded, its tokens, and
/// `pairs` training pairs of the default data spec at that size.
fn fixture(
    dir: &Path,
    n: usize,
    pairs: usize,
) -> (
    LanguageModel,
    CycleTokens,
    Vec<rmflow::problem::hamiltonian::CyclePair>,
) {
    let mut file = CycleFile::default();
    file.data.vertices = n;
    file.model.dim = 32;
    let tokens = write_initial_checkpoint(dir, &file).unwrap();
    let lm = LanguageModel::load(dir, &Device::Cpu, Forward::Nets).unwrap();
    let spec = CycleSpec {
        vertices: n,
        train_pairs: pairs,
        test_pairs: 1,
        ..file.data.clone()
    };
    let (train, _) = generate(&spec).unwrap();
    (lm, tokens, train)
}

/// The largest absolute entry of `t`.
fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The rendered prompt ids of `pair`'s graph.
fn prompt(lm: &LanguageModel, graph: &rmflow::problem::hamiltonian::Graph) -> Vec<u32> {
    let t = rmflow::lm::cycle::problem::template_of(&lm.dir).unwrap();
    rmflow::lm::cycle::problem::prompt_ids(lm, &t, &graph.prompt()).unwrap()
}

/// The shared-prefix forward equals the plain forward of each whole sequence, and the
/// enumeration's `ln π(σ|x)` equals the sum of the plain forward's token log-probabilities.
#[test]
fn shared_prefix_scores_equal_whole_sequence_scores() {
    let dir = common::temp_dir("cycle", "prefix");
    let (lm, tokens, pairs) = fixture(&dir, 5, 1);
    let graph = &pairs[0].graph;
    let p = prompt(&lm, graph);
    let orders = vertex_orders(5).unwrap();
    let conts: Vec<Vec<u32>> = orders[..7].iter().map(|o| tokens.response_ids(o)).collect();
    let (h_last, h) = lm.continuation_hidden_states(&p, &conts).unwrap();
    let whole: Vec<Vec<u32>> = conts
        .iter()
        .map(|c| [p.clone(), c.clone()].concat())
        .collect();
    let full = lm.padded_hidden_states(&whole).unwrap();
    let c = conts[0].len();
    let tail = full.narrow(1, p.len(), c).unwrap();
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| max_abs(&(a - b).unwrap());
    // f32 tolerance: the fused and the differentiable kernels round differently.
    assert!(
        diff(&h, &tail) < 1e-4,
        "continuations differ by {}",
        diff(&h, &tail)
    );
    let last = full.get(0).unwrap().get(p.len() - 1).unwrap();
    assert!(diff(&h_last, &last) < 1e-4);
    // ln π(σ|x) of the enumeration = Σ_k ln π(y_k|·) from the plain forward's logits.
    let logits = lm.logits(&whole).unwrap();
    let mass = order_masses(&lm, lm.unembedding(), &tokens, &p, graph, &orders[..1], 64).unwrap();
    let row = &logits[0];
    let mut lp = 0.0;
    for (k, &t) in conts[0].iter().enumerate() {
        let r = row.row(p.len() - 1 + k);
        let lse = rmflow::numerics::logsumexp(r.as_slice().unwrap());
        lp += r[t as usize] - lse;
    }
    assert!(
        (mass.ln_orders - lp).abs() < 1e-4 * lp.abs().max(1.0),
        "{} vs {lp}",
        mass.ln_orders
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The training step's shared-prompt forward (differentiable kernels, several prompts of
/// different lengths left-padded, each with continuations in interleaved order) gives the same
/// states and the same gradient of every parameter as the padded forward of each whole sequence.
#[test]
fn shared_prompt_training_forward_has_the_whole_sequence_gradient() {
    use candle_core::Tensor;
    use rmflow::lm::nets::Kernels;
    let dir = common::temp_dir("cycle", "prefix-grad");
    let (lm, tokens, pairs) = fixture(&dir, 5, 3);
    let prompts: Vec<Vec<u32>> = pairs.iter().map(|p| prompt(&lm, &p.graph)).collect();
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "prompts of one length {lens:?} test no padding"
    );
    let orders = vertex_orders(5).unwrap();
    let group = [0usize, 1, 2, 0, 1, 2];
    let conts: Vec<Vec<u32>> = (0..group.len())
        .map(|i| tokens.response_ids(&orders[3 * i + 1]))
        .collect();
    let c = conts[0].len();
    let d = lm.dim;
    // A fixed linear read-out of the prompts' last states and every continuation state.
    let w: Vec<f32> = (0..d)
        .map(|k| ((k * 7 + 3) % 11) as f32 / 11.0 - 0.5)
        .collect();
    let w = Tensor::new(w.as_slice(), &lm.device)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (h_last, h) = lm
        .prompt_group_hidden_states(&refs, &conts, &group, Kernels::Autograd)
        .unwrap();
    let loss_shared = (h_last.matmul(&w).unwrap().sum_all().unwrap()
        + h.reshape((group.len() * c, d))
            .unwrap()
            .matmul(&w)
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let whole: Vec<Vec<u32>> = group
        .iter()
        .zip(&conts)
        .map(|(&g, c)| [prompts[g].clone(), c.clone()].concat())
        .collect();
    let full = lm.padded_hidden_states(&whole).unwrap();
    let mut rows = Vec::new();
    // Each prompt's last state once (from its first continuation), then every continuation's.
    for (g, len) in lens.iter().enumerate() {
        let i = group.iter().position(|&x| x == g).unwrap();
        rows.push(full.get(i).unwrap().get(len - 1).unwrap());
    }
    for (i, &g) in group.iter().enumerate() {
        rows.push(full.get(i).unwrap().narrow(0, lens[g], c).unwrap());
    }
    let picked = Tensor::cat(
        &rows
            .iter()
            .map(|r| {
                if r.rank() == 1 {
                    r.unsqueeze(0).unwrap()
                } else {
                    r.clone()
                }
            })
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let loss_full = picked.matmul(&w).unwrap().sum_all().unwrap();
    let (a, b) = (
        loss_shared.to_scalar::<f32>().unwrap(),
        loss_full.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "loss {a} vs {b}");
    let (ga, gb) = (
        loss_shared.backward().unwrap(),
        loss_full.backward().unwrap(),
    );
    let mut worst = (0f32, String::new());
    for (name, v) in lm.parameters() {
        let (x, y) = (ga.get(v.as_tensor()), gb.get(v.as_tensor()));
        let (Some(x), Some(y)) = (x, y) else {
            assert!(
                x.is_none() && y.is_none(),
                "{name}: gradient on one side only"
            );
            continue;
        };
        let rel = max_abs(&(x - y).unwrap()) / max_abs(y).max(1e-6);
        if rel > worst.0 {
            worst = (rel, name);
        }
    }
    eprintln!("largest relative gradient difference: {worst:?}");
    // f32: the two forwards sum in different orders (left padding, rotary positions shifted).
    assert!(
        worst.0 < 1e-3,
        "largest relative gradient difference {worst:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The grammar-restricted conditionals sum to 1 over every order (each order scored once, at the
/// right positions); the raw masses are probabilities (≤ 1) and the cycles' mass is part of the
/// orders'.
#[test]
fn enumeration_probabilities_sum_to_one() {
    let dir = common::temp_dir("cycle", "enumeration");
    let (lm, tokens, pairs) = fixture(&dir, 6, 3);
    let orders = vertex_orders(6).unwrap();
    for pair in &pairs {
        let p = prompt(&lm, &pair.graph);
        // Batches that split the orders unevenly (720 = 7 · 100 + 20).
        let m = order_masses(
            &lm,
            lm.unembedding(),
            &tokens,
            &p,
            &pair.graph,
            &orders,
            100,
        )
        .unwrap();
        assert!(
            (m.restricted_total - 1.0).abs() < 1e-6,
            "restricted total {}",
            m.restricted_total
        );
        assert!(m.ln_orders <= 1e-6 && m.ln_cycles <= m.ln_orders);
        assert_eq!(
            Some(m.cycle_orders as u64),
            rmflow::problem::hamiltonian::count_cycle_orders(&pair.graph)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rmflow ham-cycle --config CFG --out OUT`.
fn ham_cycle(cfg: &Path, out: &Path) -> std::process::Output {
    ham_cycle_with(cfg, out, None)
}

/// `rmflow ham-cycle --config CFG --out OUT [--model MODEL]`.
fn ham_cycle_with(cfg: &Path, out: &Path, model: Option<&Path>) -> std::process::Output {
    let mut args = vec![
        "ham-cycle",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(m) = model {
        args.extend(["--model", m.to_str().unwrap()]);
    }
    common::rmflow(&args)
}

/// `rmflow ham-cycle` end to end on a tiny config, twice: every output, the same bytes.
#[test]
fn ham_cycle_runs_end_to_end_reproducibly() {
    let dir = common::temp_dir("cycle", "e2e");
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, common::TINY_CYCLE).unwrap();
    let run = |name: &str| {
        let out = dir.join(name);
        let o = ham_cycle(&cfg, &out);
        assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
        out
    };
    let (a, b) = (run("a"), run("b"));
    for f in [
        "prompts.csv",
        "steps.csv",
        "pretrain.csv",
        "pairs.jsonl",
        "pair_rewards.csv",
        "token_rewards.csv",
        "config.toml",
        "reference/model.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two runs of one config");
    }
    // metrics.csv: every column but the last two (generation and enumeration seconds, wall
    // time).
    let strip = |d: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(d.join("metrics.csv")).unwrap();
        text.lines()
            .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
            .collect()
    };
    assert_eq!(strip(&a), strip(&b), "metrics.csv differs between two runs");
    let metrics = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    // Epochs 0, 1, 2 for each reward model.
    assert_eq!(metrics.lines().count(), 1 + 6, "{metrics}");
    let imrm0: Vec<&str> = metrics.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(imrm0[0], "imrm");
    // Before training the IM-RM is exactly the reference: every test margin is 0 (accuracy ½).
    assert_eq!(imrm0[4], "0.5");
    // The enumeration's bookkeeping holds inside the run (max |restricted total − 1|), at every
    // IM-RM evaluation.
    for line in metrics.lines().skip(1).filter(|l| l.starts_with("imrm")) {
        let restricted: f64 = line.split(',').nth(14).unwrap().parse().unwrap();
        assert!(restricted < 1e-6, "{line}");
    }
    pair_rewards_give_the_accuracies(&a);
    token_rewards_sum_to_the_margins(&a);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rmflow_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        a.join("reference/tokenizer.json").is_file() && a.join("initial/config.json").is_file()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pair_rewards.csv` of the run in `out` holds every pair of `pairs.jsonl` at every evaluation
/// of `metrics.csv`, and its margins give that evaluation's train and test accuracy (ties ½),
/// minimum and mean test margin (`{:e}` prints the shortest round-tripping digits, so the
/// margins are the run's f64s and the sums are equal to the last bit or to 1e-12 relative).
fn pair_rewards_give_the_accuracies(out: &Path) {
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    let (pairs, rewards, metrics) = (
        read("pairs.jsonl"),
        read("pair_rewards.csv"),
        read("metrics.csv"),
    );
    let mut lines = rewards.lines();
    assert_eq!(
        lines.next(),
        Some("reward,epoch,step,split,pair,chosen_reward,rejected_reward")
    );
    // (reward, epoch) -> split -> margins in pair order.
    let mut margins: std::collections::BTreeMap<(String, String), [Vec<f64>; 2]> =
        Default::default();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let split = usize::from(f[3] == "test");
        let m = margins.entry((f[0].into(), f[1].into())).or_default();
        assert_eq!(f[4].parse::<usize>().unwrap(), m[split].len(), "{line}");
        let (c, r): (f64, f64) = (f[5].parse().unwrap(), f[6].parse().unwrap());
        m[split].push(c - r);
    }
    let per_split = |name: &str| {
        pairs
            .lines()
            .filter(|l| l.contains(&format!("\"split\":\"{name}\"")))
            .count()
    };
    let rows: Vec<&str> = metrics.lines().skip(1).collect();
    assert_eq!(
        margins.len(),
        rows.len(),
        "one evaluation per metrics.csv row"
    );
    // Wins and ties are counts: (wins + ties / 2) / n is exact in f64.
    let accuracy = |m: &[f64]| {
        let count = |f: fn(f64) -> bool| m.iter().filter(|&&x| f(x)).count() as f64;
        (count(|x| x > 0.0) + 0.5 * count(|x| x == 0.0)) / m.len() as f64
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300);
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        let m = &margins[&(f[0].to_string(), f[1].to_string())];
        assert_eq!(
            (m[0].len(), m[1].len()),
            (per_split("train"), per_split("test")),
            "{row}"
        );
        assert_eq!(
            accuracy(&m[0]),
            f[3].parse::<f64>().unwrap(),
            "train accuracy: {row}"
        );
        assert_eq!(
            accuracy(&m[1]),
            f[4].parse::<f64>().unwrap(),
            "test accuracy: {row}"
        );
        let min = m[1].iter().copied().fold(f64::INFINITY, f64::min);
        let mean = m[1].iter().sum::<f64>() / m[1].len() as f64;
        assert!(
            close(min, f[5].parse().unwrap()),
            "min test margin {min}: {row}"
        );
        assert!(
            close(mean, f[6].parse().unwrap()),
            "mean test margin {mean}: {row}"
        );
    }
}

/// `token_rewards.csv` of the run in `out`: the IM-RM's reward is the sum of its response
/// tokens' contributions, so over a split `Σ mean × count` of the chosen side less that of the
/// rejected side, over the pairs, is `metrics.csv`'s mean margin (the test split's; every
/// sequence distinct here, and 1e-9 relative for the sums' rounding). The EX-RM has no rows.
fn token_rewards_sum_to_the_margins(out: &Path) {
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    let (tokens, metrics) = (read("token_rewards.csv"), read("metrics.csv"));
    let mut lines = tokens.lines();
    assert_eq!(
        lines.next(),
        Some("reward,epoch,step,split,side,token,mean,count")
    );
    let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
    for line in lines {
        let f = rmflow::io::csv::fields(line);
        assert_eq!(f[0], "imrm", "{line}");
        if f[3] == "test" {
            let sign = if f[4] == "chosen" { 1.0 } else { -1.0 };
            let (mean, count): (f64, f64) = (f[6].parse().unwrap(), f[7].parse().unwrap());
            *sums.entry(f[1].clone()).or_default() += sign * mean * count;
        }
    }
    let test_pairs = read("pairs.jsonl").matches("\"split\":\"test\"").count() as f64;
    let mut checked = 0;
    for row in metrics.lines().skip(1).filter(|l| l.starts_with("imrm,")) {
        let f: Vec<&str> = row.split(',').collect();
        let mean: f64 = f[6].parse().unwrap();
        match sums.get(f[1]) {
            Some(sum) => {
                let got = sum / test_pairs;
                assert!(
                    (got - mean).abs() <= 1e-9 * mean.abs().max(1e-12),
                    "{got} vs {row}"
                );
                checked += 1;
            }
            None => assert_eq!(mean, 0.0, "no token rows for a trained IM-RM: {row}"),
        }
    }
    assert!(checked >= 2, "token rows of {checked} evaluations");
}

/// Bad configs: exit 2 naming the field, nothing written.
#[test]
fn bad_configs_are_refused_naming_the_field() {
    let dir = common::temp_dir("cycle", "bad");
    for (text, field) in [
        ("[data]\nvertices = 3\n", "data.vertices"),
        (
            "[data]\nvertices = 10\n[eval]\nexact = true\n",
            "eval.exact",
        ),
        ("[model]\ndim = 30\nheads = 4\n", "model.heads"),
        ("[train]\nlr = -1.0\n", "train.lr"),
        ("[train]\nlearning_rate = 1.0\n", "learning_rate"),
    ] {
        let cfg = dir.join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = dir.join("out");
        let o = ham_cycle(&cfg, &out);
        assert_eq!(common::code(&o), 2, "{text}: {}", common::stderr(&o));
        assert!(
            common::stderr(&o).contains(field),
            "{text}: {}",
            common::stderr(&o)
        );
        assert!(!out.exists(), "{text}: output left behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed `experiments/ham_cycle.toml` states every default (`CycleFile::default()`).
#[test]
fn committed_default_config_is_the_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/ham_cycle.toml");
    assert_eq!(CycleFile::from_file(&path).unwrap(), CycleFile::default());
}

/// Audit round 3 (issue #41): 21 to 64 vertices, which the validation accepts, run to the end
/// (the Held–Karp count of `pairs.jsonl` panicked after the whole run); `cycle_orders` is null.
#[test]
fn ham_cycle_beyond_twenty_vertices_runs_to_the_end() {
    let dir = common::temp_dir("cycle", "n21");
    let cfg = dir.join("n21.toml");
    let text = common::TINY_CYCLE
        .replace("vertices = 5", "vertices = 21")
        .replace("epochs = 2", "epochs = 1");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.join("out");
    let o = ham_cycle(&cfg, &out);
    assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
    let pairs = std::fs::read_to_string(out.join("pairs.jsonl")).unwrap();
    for line in pairs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["cycle_orders"].is_null(), "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Audit round 3 (issue #41): runs far above the machine's memory are refused up front (exit 3,
/// naming the fields to lower), with no output, temporary or lock left; they aborted after
/// allocating before.
#[test]
fn ham_cycle_refuses_runs_above_the_memory_up_front() {
    let dir = common::temp_dir("cycle", "memory");
    for (text, field) in [
        ("[data]\ntrain_pairs = 1000000000\n", "data.train_pairs"),
        (
            "[model]\ndim = 4096\nlayers = 64\nheads = 32\n",
            "model.layers",
        ),
    ] {
        let cfg = dir.join("big.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = dir.join("out");
        let o = ham_cycle(&cfg, &out);
        let err = common::stderr(&o);
        assert_eq!(common::code(&o), 3, "{text}: {err}");
        assert!(
            err.contains(field) && err.contains("--ignore-memory-estimate"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "big.toml")
            .collect();
        assert!(left.is_empty(), "{text}: left {left:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny pretrained-style Llama in `dir/model` (word-level vocabulary of the task's words and
/// ChatML's pieces, no `<sep>` or `<edge_sep>`), with the ChatML template.
fn tiny_pretrained(dir: &Path) -> std::path::PathBuf {
    use rmflow::lm::checkpoint::tiny::{standard_specs, write_tiny_checkpoint};
    let spec = standard_specs()
        .into_iter()
        .find(|(n, _)| *n == "llama-tied")
        .unwrap()
        .1;
    let texts = vec![
        "Vertices : Edges : 0 1 2 3 4 5 6 7 8 9".to_string(),
        "<|im_start|>system You are a helpful assistant.<|im_end|> user assistant".to_string(),
    ];
    let model = dir.join("model");
    write_tiny_checkpoint(&model, spec, &texts).unwrap();
    // ChatML's markers as special tokens (the words `im_start`, `im_end` renamed).
    let path = model.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for word in ["im_start", "im_end"] {
        let marker = format!("<|{word}|>");
        let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove(word).unwrap();
        vocab.insert(marker.clone(), id.clone());
        tok["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": id, "content": marker, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
    }
    std::fs::write(&path, tok.to_string()).unwrap();
    let cfg = serde_json::json!({"chat_template": common::CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(model.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    model
}

/// `ham-cycle --model MODEL` on the config `text` in `dir`: the model's vocabulary size before
/// the task's tokens, the run's `summary.json` and its output folder (exit 0 asserted).
fn pretrained_run(
    dir: &Path,
    model: &Path,
    text: &str,
) -> (u64, serde_json::Value, std::path::PathBuf) {
    let vocab = LanguageModel::load(model, &Device::Cpu, Forward::Nets)
        .unwrap()
        .unembedding()
        .dim(0)
        .unwrap() as u64;
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.join("out");
    let o = ham_cycle_with(&cfg, &out, Some(model));
    assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    (vocab, summary, out)
}

/// Issue #45: a pretrained checkpoint as the reference (`--model`): `<sep>` and `<edge_sep>`
/// become the two new ids past its vocabulary (plain tokens: kept when decoding), prompts go
/// through its chat template, the enumeration's bookkeeping holds, the untrained IM-RM ties
/// every test pair, and nothing of the from-scratch model (no pretraining, no checkpoint
/// folders) is written.
#[test]
fn ham_cycle_runs_on_a_pretrained_checkpoint() {
    let dir = common::temp_dir("cycle", "pretrained");
    let model = tiny_pretrained(&dir);
    let text = "seed = 3\n[data]\nvertices = 4\ntrain_pairs = 8\ntest_pairs = 3\n[train]\nepochs = 1\npairs_per_step = 8\nmicro_batch = 4\nlr = 1e-3\n[eval]\nexact_batch = 5\n";
    let (vocab, summary, out) = pretrained_run(&dir, &model, text);
    let tokens = &summary["tokens"];
    assert_eq!(tokens["sep"], vocab, "{tokens}");
    assert_eq!(tokens["edge_sep"], vocab + 1, "{tokens}");
    assert_eq!(tokens["vocab_size"], vocab + 2, "{tokens}");
    assert!(summary["pretrain"].is_null());
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let imrm: Vec<Vec<&str>> = metrics
        .lines()
        .filter(|l| l.starts_with("imrm"))
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(imrm.len(), 2, "{metrics}");
    assert_eq!(imrm[0][4], "0.5", "{metrics}");
    for row in &imrm {
        let restricted: f64 = row[14].parse().unwrap();
        assert!(restricted < 1e-6, "{row:?}");
    }
    // The reference masses are the epoch-0 policy's.
    assert_eq!(imrm[0][9], imrm[0][10], "{metrics}");
    assert!(!out.join("reference").exists() && !out.join("initial").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue #45: the added task tokens are plain tokens (`add_tokens`): a vertex order decodes with
/// its `<sep>`s kept (special tokens are skipped), and each vertex is one token.
#[test]
fn pretrained_tokens_keep_the_separators_when_decoding() {
    let dir = common::temp_dir("cycle", "codec");
    let model = tiny_pretrained(&dir);
    let r = rmflow::lm::cycle::run::Reference::pretrained(&model, 3).unwrap();
    let lm = r.load(&Device::Cpu).unwrap();
    let tokens = CycleTokens::of_tokenizer(&lm.tokenizer, &r.template, 4).unwrap();
    let ids = tokens.response_ids(&[2, 0, 3, 1]);
    assert_eq!(ids.len(), 8);
    let text = tokens.decode(&ids).unwrap();
    assert_eq!(text.matches("<sep>").count(), 3, "{text:?}");
    assert!(!text.contains("<|im_end|>"), "{text:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue #45: with `model.path`, the from-scratch model's fields are refused where changed
/// (they would be silently unused), naming the field.
#[test]
fn pretrained_model_refuses_the_scratch_fields() {
    let dir = common::temp_dir("cycle", "path-fields");
    let model = tiny_pretrained(&dir);
    for (extra, field) in [
        ("[model]\ndim = 64\n", "model.dim"),
        ("[pretrain]\nsteps = 10\n", "pretrain.steps"),
    ] {
        let cfg = dir.join("bad.toml");
        let text = format!("{extra}[data]\nvertices = 4\n");
        std::fs::write(&cfg, &text).unwrap();
        let out = dir.join("out");
        let o = ham_cycle_with(&cfg, &out, Some(&model));
        let err = common::stderr(&o);
        assert_eq!(common::code(&o), 2, "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Incremental decoding (the key-value cache, prompts of different lengths left-padded) gives
/// the states of the whole sequence's forward at every step, to f32 rounding.
#[test]
fn cached_decoding_equals_the_whole_sequence_forward() {
    let dir = common::temp_dir("cycle", "kv-cache");
    let (lm, tokens, pairs) = fixture(&dir, 6, 4);
    let prompts: Vec<Vec<u32>> = pairs.iter().map(|p| prompt(&lm, &p.graph)).collect();
    assert!(
        prompts.iter().any(|p| p.len() != prompts[0].len()),
        "the fixture should have prompts of different lengths"
    );
    let (h0, mut cache) = lm.start_decoding(&prompts).unwrap().unwrap();
    let fed: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| tokens.response_ids(&p.chosen))
        .collect();
    let mut seqs = prompts.clone();
    let mut h = h0;
    for step in 0..5 {
        let pos: Vec<usize> = seqs.iter().map(|s| s.len() - 1).collect();
        let whole = lm.hidden_states(&seqs, &pos).unwrap();
        let diff = max_abs(&(&h - &whole).unwrap());
        let scale = max_abs(&whole);
        assert!(
            diff < 1e-4 * scale.max(1.0),
            "step {step}: {diff} (scale {scale})"
        );
        let next: Vec<u32> = fed.iter().map(|f| f[step]).collect();
        for (s, &t) in seqs.iter_mut().zip(&next) {
            s.push(t);
        }
        h = lm.decode_step(&mut cache, &next).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One prefill for both decodings: `decode_sampled_and_greedy` gives, bit for bit, what
/// `decode` gives sampled (from the same seed) and then greedy, over several batches of prompts
/// of different lengths (the cloned cache must not carry the sampled tokens into the greedy
/// decoding, and the draws must come in the same order).
#[test]
fn one_prefill_decodes_as_two() {
    use rand::SeedableRng;
    let dir = common::temp_dir("cycle", "one-prefill");
    let (lm, tokens, pairs) = fixture(&dir, 6, 7);
    let prompts: Vec<Vec<u32>> = pairs.iter().map(|p| prompt(&lm, &p.graph)).collect();
    let graphs: Vec<_> = pairs.iter().map(|p| &p.graph).collect();
    let decoder = rmflow::lm::cycle::Decoder {
        lm: &lm,
        unembedding: lm.unembedding(),
        tokens: &tokens,
        max_new: 9,
        batch: 3,
    };
    let seeded = || rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let sampled = decoder
        .decode(&prompts, &graphs, Some(&mut seeded()))
        .unwrap();
    let greedy = decoder.decode(&prompts, &graphs, None).unwrap();
    let (both_sampled, both_greedy) = decoder
        .decode_sampled_and_greedy(&prompts, &graphs, &mut seeded())
        .unwrap();
    let key = |d: &[rmflow::lm::cycle::Decoding]| -> Vec<(String, bool, usize)> {
        d.iter()
            .map(|x| (x.text.clone(), x.stopped, x.tokens))
            .collect()
    };
    assert_eq!(key(&both_sampled), key(&sampled));
    assert_eq!(key(&both_greedy), key(&greedy));
    assert_eq!(sampled.len(), 7);
    assert_ne!(
        key(&sampled),
        key(&greedy),
        "sampling should differ from greedy here"
    );
    assert!(
        sampled.iter().map(|d| d.tokens).sum::<usize>() > 7,
        "nothing was decoded"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue #45: a pretrained checkpoint without a chat template (as Pythia) gets the official
/// `update_tokenizer` first (the default template's pad, eos, `<|user|>`, `<|assistant|>` as
/// special tokens), then `<sep>` and `<edge_sep>`: the run goes through, the separators are the
/// last two ids, and generation stops at the added eos.
#[test]
fn ham_cycle_runs_on_a_pretrained_checkpoint_without_a_template() {
    let dir = common::temp_dir("cycle", "pretrained-plain");
    let model = tiny_pretrained(&dir);
    std::fs::remove_file(model.join("tokenizer_config.json")).unwrap();
    let text = "seed = 3\n[data]\nvertices = 4\ntrain_pairs = 8\ntest_pairs = 2\n[train]\nepochs = 1\npairs_per_step = 8\nmicro_batch = 4\n[eval]\nexact_batch = 7\n";
    let (vocab, summary, _) = pretrained_run(&dir, &model, text);
    let tokens = &summary["tokens"];
    // pad, eos, <|user|>, <|assistant|>, then <sep>, <edge_sep>.
    assert_eq!(tokens["vocab_size"], vocab + 6, "{tokens}");
    assert_eq!(tokens["sep"], vocab + 4, "{tokens}");
    assert_eq!(tokens["edge_sep"], vocab + 5, "{tokens}");
    assert_eq!(tokens["eos"], vocab + 1, "{tokens}");
    let _ = std::fs::remove_dir_all(&dir);
}
