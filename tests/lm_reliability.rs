//! The real-model commands under bad input (feature `lm`, tiny checkpoints, no download): every
//! model-folder problem is an input error (exit 2) on one line naming the file; answer words
//! outside the vocabulary or shared between lists, and sequences longer than the model, are
//! refused; `--force` never replaces a model folder or an input; a fuzz of the `lm` and
//! `lm-recipe` configs never panics.
#![cfg(feature = "lm")]

use rmflow::lm::checkpoint::tiny::{standard_specs, write_tiny_checkpoint, PROBE_TEXTS};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rmflow-lmrel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn rmflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("rmflow runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed by a signal")
}

/// The `error:` line, checked to be the only line that is not progress.
fn error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("rmflow ")).collect();
    assert_eq!(lines.len(), 1, "the error is not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// A fuzz case's outcome: success, or a documented exit code with one error line and no output.
fn documented_outcome(o: &Output, out: &Path, what: &str) {
    assert!(matches!(code(o), 0 | 2 | 3 | 4), "{what}: {}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{what}: {}", stderr(o));
    if code(o) != 0 {
        error_line(o);
        assert!(!out.exists(), "{what}: output left");
    }
}

const WORDS: &str = "yes sure no never certainly absolutely nope hardly Answer: My answer is";
const QUESTION: &str = "Is the following statement something you would say? \"{statement}\"";

fn statements() -> String {
    (0..12)
        .map(|k| format!("I enjoy helping people number {k}.\n"))
        .collect()
}

/// A tiny checkpoint of family `name` (see `standard_specs`) knowing the test's words.
fn model(dir: &Path, name: &str) -> PathBuf {
    let spec = standard_specs()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1;
    let mut texts: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
    texts.extend([WORDS.to_string(), QUESTION.to_string(), statements()]);
    let p = dir.join(name);
    write_tiny_checkpoint(&p, spec, &texts).unwrap();
    p
}

/// An `lm` config in `dir` (statements file beside it) with `lm` keys replaced by `edits`.
fn lm_config(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let statements = dir.join(format!("{name}-statements.txt"));
    std::fs::write(&statements, statements_text(edits)).unwrap();
    let mut lm = vec![
        ("statements", format!("{statements:?}")),
        ("group_size", "2".into()),
        ("train_fraction", "0.5".into()),
        ("question", format!("'{QUESTION}'")),
        ("domain_question", format!("'{QUESTION}'")),
        ("prefixes", "[\"Answer:\"]".into()),
        ("train_chosen", "[\"yes\", \"sure\"]".into()),
        ("train_rejected", "[\"no\", \"never\"]".into()),
        ("unseen_chosen", "[\"certainly\"]".into()),
        ("unseen_rejected", "[\"nope\"]".into()),
        ("beta", "1.0".into()),
        ("batch_size", "8".into()),
    ];
    for (k, v) in edits
        .iter()
        .filter(|(k, _)| !k.starts_with('[') && *k != "statement_text")
    {
        match lm.iter_mut().find(|(key, _)| key == k) {
            Some(e) => e.1 = v.to_string(),
            None => lm.push((k, v.to_string())),
        }
    }
    let mut text = String::from("seed = 1\n[lm]\n");
    for (k, v) in lm {
        text += &format!("{k} = {v}\n");
    }
    text += "[train]\nt_max = 1e3\nobservations_per_decade = 1\nimrm_gradient = \"sparse\"\n";
    for (k, v) in edits.iter().filter(|(k, _)| k.starts_with('[')) {
        text += &format!("{k}\n{v}\n");
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn statements_text(edits: &[(&str, &str)]) -> String {
    match edits.iter().find(|(k, _)| *k == "statement_text") {
        Some((_, t)) => t.to_string(),
        None => statements(),
    }
}

fn lm(model: &Path, config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "lm",
        "--model",
        model.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    rmflow(&args)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn every_model_folder_problem_is_exit_2_on_one_line_naming_the_file() {
    let dir = temp("folders");
    let good = model(&dir, "llama-gqa");
    let weights = std::fs::read(good.join("model.safetensors")).unwrap();
    type Edit = Box<dyn Fn(&Path)>;
    let set_config = |key: &'static str, value: serde_json::Value| -> Edit {
        Box::new(move |m: &Path| {
            let p = m.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            c[key] = value.clone();
            std::fs::write(&p, c.to_string()).unwrap();
        })
    };
    let w = weights.clone();
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "empty folder",
            "config.json",
            Box::new(|m: &Path| {
                for e in std::fs::read_dir(m).unwrap() {
                    std::fs::remove_file(e.unwrap().path()).unwrap();
                }
            }),
        ),
        (
            "truncated safetensors",
            "model.safetensors",
            Box::new(move |m: &Path| {
                std::fs::write(m.join("model.safetensors"), &w[..w.len() / 2]).unwrap()
            }),
        ),
        (
            "garbage safetensors",
            "model.safetensors",
            Box::new(|m: &Path| {
                std::fs::write(m.join("model.safetensors"), "not a safetensors file at all")
                    .unwrap()
            }),
        ),
        (
            "empty safetensors",
            "model.safetensors",
            Box::new(|m: &Path| std::fs::write(m.join("model.safetensors"), "").unwrap()),
        ),
        (
            "a tensor in two files",
            "model-2.safetensors",
            Box::new(|m: &Path| {
                std::fs::copy(m.join("model.safetensors"), m.join("model-2.safetensors")).unwrap();
            }),
        ),
        (
            "unknown model_type",
            "config.json",
            set_config("model_type", "mamba".into()),
        ),
        (
            "zero attention heads",
            "num_attention_heads",
            set_config("num_attention_heads", 0.into()),
        ),
        (
            "heads not dividing the width",
            "num_attention_heads",
            set_config("num_attention_heads", 5.into()),
        ),
        (
            "zero key/value heads",
            "num_key_value_heads",
            set_config("num_key_value_heads", 0.into()),
        ),
        (
            "config not JSON",
            "config.json",
            Box::new(|m: &Path| std::fs::write(m.join("config.json"), "{ not json").unwrap()),
        ),
        (
            "bad tokenizer",
            "tokenizer.json",
            Box::new(|m: &Path| {
                std::fs::write(m.join("tokenizer.json"), "{\"model\": 3}").unwrap()
            }),
        ),
    ];
    for (k, (what, named, edit)) in cases.into_iter().enumerate() {
        let m = dir.join(format!("case{k}"));
        copy_dir(&good, &m);
        edit(&m);
        let out = dir.join(format!("case{k}.json"));
        let o = rmflow(&[
            "lm-forward",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 2, "{what}: {}", stderr(&o));
        let line = error_line(&o);
        assert!(
            line.contains(m.to_str().unwrap()) && line.contains(named),
            "{what}: {line}"
        );
        assert!(!out.exists(), "{what}: output left");
    }
    let missing = dir.join("no-such-model");
    let o = rmflow(&[
        "lm-forward",
        "--model",
        missing.to_str().unwrap(),
        "--out",
        dir.join("x.json").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    if !cfg!(feature = "cuda") {
        let o = rmflow(&[
            "lm-forward",
            "--model",
            good.to_str().unwrap(),
            "--device",
            "cuda",
            "--out",
            dir.join("y.json").to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(error_line(&o).contains("--features cuda"));
    }
}

#[test]
fn answers_outside_the_vocabulary_or_in_two_lists_and_overlong_prompts_are_refused() {
    let dir = temp("answers");
    let bert = model(&dir, "bert");
    let llama = model(&dir, "llama-gqa");
    /// (what, config edits, model, what the error says).
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a Path, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown words",
            vec![
                ("unseen_chosen", "[\"👍\"]"),
                ("unseen_rejected", "[\"👎\"]"),
            ],
            &bert,
            "unknown token",
        ),
        (
            "an unseen word that is trained",
            vec![("unseen_chosen", "[\"yes\"]")],
            &llama,
            "lm.train_chosen",
        ),
        (
            "a word on both sides",
            vec![("train_rejected", "[\"sure\"]")],
            &llama,
            "lm.train_rejected",
        ),
        (
            "a statement longer than the model's positions",
            vec![(
                "statement_text",
                &*Box::leak(
                    (0..12)
                        .map(|k| format!("{}{k}\n", "I enjoy helping people ".repeat(40)))
                        .collect::<String>()
                        .into_boxed_str(),
                ),
            )],
            &llama,
            "positions",
        ),
    ];
    for (k, (what, edits, m, says)) in cases.into_iter().enumerate() {
        let cfg = lm_config(&dir, &format!("c{k}"), &edits);
        let out = dir.join(format!("run{k}"));
        let o = lm(m, &cfg, &out, &[]);
        assert_eq!(code(&o), 2, "{what}: {}", stderr(&o));
        assert!(error_line(&o).contains(says), "{what}: {}", stderr(&o));
        assert!(!out.exists());
    }
    // The engine's tables are checked before the model is loaded: a bad field is named even
    // when the model folder does not exist.
    let cfg = lm_config(&dir, "engine", &[("[eval]", "tie_tolerance = -1.0")]);
    let o = lm(&dir.join("missing"), &cfg, &dir.join("r"), &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let line = error_line(&o);
    assert!(
        line.contains("eval.tie_tolerance") && line.contains(cfg.to_str().unwrap()),
        "{line}"
    );
}

#[test]
fn force_never_replaces_a_model_folder_or_an_input() {
    let dir = temp("inputs");
    let set = dir.join("tiny");
    let o = rmflow(&["lm-tiny", "--out", set.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let m = set.join("llama-gqa");
    let weights = std::fs::read(m.join("model.safetensors")).unwrap();
    for target in ["model.safetensors", "config.json"] {
        let out = m.join(target);
        let o = rmflow(&[
            "lm-forward",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--force",
        ]);
        assert_eq!(code(&o), 2, "{target}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), weights);
    // A run onto a model folder, and a copy over the folder holding its source.
    let own = model(&dir, "llama-gqa");
    let cfg = lm_config(&dir, "c", &[]);
    let o = lm(&own, &cfg, &set, &["--force"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = rmflow(&[
        "lm-convert",
        "--model",
        m.to_str().unwrap(),
        "--out",
        set.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), weights);
    // lm-tiny's recipe inside the folder it would replace.
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/experiments/persona_paper.toml"
        ),
        set.join("recipe.toml"),
    )
    .unwrap();
    let o = rmflow(&[
        "lm-tiny",
        "--out",
        set.to_str().unwrap(),
        "--recipe",
        set.join("recipe.toml").to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(set.join("recipe.toml").is_file());
    // A statements file kept inside the old run folder that --force would replace.
    let run = dir.join("run");
    let o = lm(&own, &cfg, &run, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let kept = run.join("statements.txt");
    std::fs::write(&kept, statements()).unwrap();
    let inside = lm_config(&dir, "inside", &[("statements", &format!("{kept:?}"))]);
    let o = lm(&own, &inside, &run, &["--force"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(kept.is_file());
    // The run itself reports its stage while loading.
    let o = lm(&own, &cfg, &run, &["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("rmflow lm: loading"), "{}", stderr(&o));
}

/// One field at a time set to a hostile value: the command succeeds or exits 2/3/4 with one
/// error line, never panics. 35 `lm` cases on the tiny Llama.
#[test]
fn fuzzed_lm_configs_never_panic() {
    let dir = temp("fuzz");
    let m = model(&dir, "llama-gqa");
    let values = [
        "0",
        "-1",
        "nan",
        "inf",
        "1e308",
        "18446744073709551615",
        "\"x\"",
        "[]",
        "[\"\"]",
        "true",
    ];
    let fields = [
        "group_size",
        "train_fraction",
        "beta",
        "batch_size",
        "prefixes",
        "train_chosen",
        "chat_template",
    ];
    let mut cases = 0;
    for (k, field) in fields.iter().enumerate() {
        for v in values.iter().skip(k % 3).step_by(2).take(5) {
            let cfg = lm_config(&dir, &format!("f{cases}"), &[(field, v)]);
            let out = dir.join(format!("o{cases}"));
            let o = lm(&m, &cfg, &out, &[]);
            documented_outcome(&o, &out, &format!("{field} = {v}"));
            cases += 1;
        }
    }
    assert!(cases >= 30, "{cases}");
}

/// The recipe's config with one `key = value` line replaced (the key's first occurrence).
fn recipe_with(dir: &Path, name: &str, key: &str, value: &str) -> PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/persona_own_statements.toml"
    ))
    .unwrap();
    let statements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/data/persona_statements.txt");
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let k = l.split('=').next().unwrap_or("").trim();
            if k == "statements" {
                format!("statements = {statements:?}")
            } else if k == key && !done {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// The tiny Llama of `dir`/llama, its vocabulary holding the recipe's words.
fn recipe_model(dir: &Path) -> PathBuf {
    let file = rmflow::lm::recipe::RecipeFile::from_file(&recipe_with(dir, "base", "seed", "875"))
        .unwrap();
    let mut texts: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
    texts.extend(rmflow::lm::recipe::vocabulary_texts(&file).unwrap());
    let spec = standard_specs()
        .into_iter()
        .find(|(n, _)| *n == "llama-gqa")
        .unwrap()
        .1;
    let m = dir.join("llama");
    write_tiny_checkpoint(&m, spec, &texts).unwrap();
    m
}

/// `lm-recipe` on model `m` and config `cfg` into `out`: one epoch of the head-only EX-RM.
fn recipe_head_epoch(m: &Path, cfg: &Path, out: &Path) -> Output {
    rmflow(&[
        "lm-recipe",
        "--model",
        m.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--mode",
        "head",
        "--epochs",
        "1",
        "--reward",
        "exrm",
    ])
}

/// One recipe field at a time set to a hostile value, on the tiny Llama (its vocabulary holds
/// the recipe's words), one epoch of the head-only EX-RM: never a panic, one error line. 23 cases.
#[test]
fn fuzzed_recipe_configs_never_panic() {
    let dir = temp("recipe-fuzz");
    let m = recipe_model(&dir);
    let cases: &[(&str, &[&str])] = &[
        ("group_size", &["0", "1000000", "-1"]),
        ("train_prompts", &["0", "100000", "\"x\""]),
        ("beta", &["0.0", "nan", "-inf"]),
        ("lr", &["0.0", "inf", "1e308"]),
        ("micro_batch", &["0", "18446744073709551615"]),
        ("pairs_per_step", &["0", "1"]),
        ("chosen_words", &["[]", "[\"\"]", "[\"no\"]"]),
        ("eval_chosen_prefixes", &["[]", "[\"\"]"]),
        ("tie_tolerance", &["-1.0", "nan"]),
    ];
    let mut n = 0;
    for (key, values) in cases {
        for v in *values {
            let cfg = recipe_with(&dir, &format!("r{n}"), key, v);
            let out = dir.join(format!("o{n}"));
            let o = recipe_head_epoch(&m, &cfg, &out);
            documented_outcome(&o, &out, &format!("{key} = {v}"));
            n += 1;
        }
    }
    assert_eq!(n, 23);
}

/// Audit round 3 (issue #41): a checkpoint whose chat template or tokenizer cannot be used is an
/// input error in `lm-recipe` (exit 2, was 4), on one line naming the file: a template that does
/// not compile or is not a string, a `tokenizer_config.json` that is not JSON, a broken
/// `chat_template.jinja`, a template list without "default", and a word-level vocabulary
/// without its unknown token.
#[test]
fn checkpoint_template_and_tokenizer_problems_are_input_errors_in_lm_recipe() {
    let dir = temp("recipe-template");
    let good = recipe_model(&dir);
    let config = |text: &'static str| {
        move |m: &Path| std::fs::write(m.join("tokenizer_config.json"), text).unwrap()
    };
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, &str, &str, Edit)> = vec![
        (
            "not JSON",
            "tokenizer_config.json",
            "not valid JSON",
            Box::new(config("{chat")),
        ),
        (
            "does not compile",
            "tokenizer_config.json",
            "does not compile",
            Box::new(config(r#"{"chat_template": "{% if %}"}"#)),
        ),
        (
            "not a string",
            "tokenizer_config.json",
            "string or a list",
            Box::new(config(r#"{"chat_template": 123}"#)),
        ),
        (
            "no default",
            "tokenizer_config.json",
            "default",
            Box::new(config(
                r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
            )),
        ),
        (
            "broken jinja",
            "chat_template.jinja",
            "does not compile",
            Box::new(|m: &Path| {
                let _ = std::fs::remove_file(m.join("tokenizer_config.json"));
                std::fs::write(m.join("chat_template.jinja"), "{% for %}").unwrap()
            }),
        ),
        (
            "no unknown token",
            "tokenizer.json",
            "cannot tokenize",
            Box::new(|m: &Path| {
                let p = m.join("tokenizer.json");
                let t = std::fs::read_to_string(&p).unwrap();
                std::fs::write(
                    &p,
                    t.replace("\"unk_token\": \"[UNK]\"", "\"unk_token\": \"[NOPE]\""),
                )
                .unwrap();
            }),
        ),
    ];
    for (k, (what, named, needle, edit)) in cases.into_iter().enumerate() {
        let m = dir.join(format!("case{k}"));
        copy_dir(&good, &m);
        edit(&m);
        let cfg = if what == "no unknown token" {
            recipe_with(&dir, &format!("c{k}"), "chosen_words", "[\"zebra\"]")
        } else {
            recipe_with(&dir, &format!("c{k}"), "seed", "875")
        };
        let out = dir.join(format!("o{k}"));
        let o = recipe_head_epoch(&m, &cfg, &out);
        assert_eq!(code(&o), 2, "{what}: {}", stderr(&o));
        let line = error_line(&o);
        assert!(
            line.contains(&m.join(named).display().to_string()) && line.contains(needle),
            "{what}: {line}"
        );
        assert!(!out.exists(), "{what}: output left");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Audit round 3 (issue #41): `lm-forward --force` replaces its own output (its JSON carries
/// `rmflow_version`), so `scripts/gpu-check.sh` can be rerun into one folder.
#[test]
fn lm_forward_force_replaces_its_own_output() {
    let dir = temp("forward-force");
    let m = model(&dir, "qwen2");
    let out = dir.join("forward.json");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec![
            "lm-forward",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = rmflow(&args);
        assert_eq!(code(&o), 0, "{extra:?}: {}", stderr(&o));
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["rmflow_version"], env!("CARGO_PKG_VERSION"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Audit round 3 (issue #41): `lm-convert` on a truncated `model.safetensors` is an input error
/// (exit 2, as `lm` and `lm-forward` give), naming the file, with no output.
#[test]
fn lm_convert_refuses_a_truncated_checkpoint_as_input() {
    let dir = temp("convert-truncated");
    let m = model(&dir, "llama-gqa");
    let st = m.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("half");
    let o = rmflow(&[
        "lm-convert",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(error_line(&o).contains(&st.display().to_string()));
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Audit round 3 (issue #41): a full disk while `lm-tiny` writes names the file, and says what
/// failed once (candle's error also returns its I/O cause as its source, so the chain printed
/// it twice). The disk is /dev/full behind `config.json` (the weights are written through a
/// temporary and a rename, which replaces a link).
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_while_writing_a_checkpoint_names_the_file_once() {
    let dir = temp("full-disk");
    let weights = dir.join("config.json");
    std::os::unix::fs::symlink("/dev/full", &weights).unwrap();
    let spec = standard_specs()[0].1;
    let texts: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
    let err = write_tiny_checkpoint(&dir, spec, &texts).unwrap_err();
    let line = rmflow::error::one_line(&err);
    assert!(line.contains(&weights.display().to_string()), "{line}");
    assert_eq!(line.matches("No space left on device").count(), 1, "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
