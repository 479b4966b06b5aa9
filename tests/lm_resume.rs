//! Runs that survive a kill (`lm-recipe --checkpoint-every`, `--resume`): a run aborted at
//! several points (after an optimizer step, in the middle of a checkpoint's write, between two
//! reward models; head-only and full fine-tuning) and resumed writes the same outputs as an uninterrupted run, bit for bit
//! (wall times aside); SIGTERM stops a run with a checkpoint and exit code 5; a resume with
//! another config or model is refused naming the field. Tiny random checkpoints, no download.
#![cfg(all(feature = "lm", target_os = "linux"))]

use rmflow::lm::checkpoint::tiny::{standard_specs, write_tiny_checkpoint, PROBE_TEXTS};
use rmflow::lm::recipe::{vocabulary_texts, RecipeFile};
use rmflow::lm::train::reference::ReferenceTables;
use std::path::{Path, PathBuf};

mod common;
use std::process::{Command, Output};

const PAPER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/experiments/persona_paper.toml"
);

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rmflow-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A small recipe: 16 training pairs, 2 steps an epoch, 3 epochs, evaluated every epoch.
fn small_recipe(dir: &Path, lr: f64) -> PathBuf {
    let mut f = RecipeFile::from_file(Path::new(PAPER)).unwrap();
    f.data.as_mut().unwrap().statements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&f.data.as_ref().unwrap().statements);
    f.data.as_mut().unwrap().train_prompts = 16;
    f.data.as_mut().unwrap().test_prompts = 8;
    f.train.epochs = 3;
    f.train.pairs_per_step = 8;
    f.train.micro_batch = 4;
    f.train.eval_every_epochs = 1;
    f.train.adamw.lr = lr;
    let p = dir.join(format!("recipe-{lr}.toml"));
    std::fs::write(&p, toml::to_string(&f).unwrap()).unwrap();
    p
}

/// A tiny Llama whose vocabulary holds the recipe's words.
fn model(dir: &Path) -> PathBuf {
    let f = RecipeFile::from_file(Path::new(PAPER)).unwrap();
    let mut f2 = f.clone();
    f2.data.as_mut().unwrap().statements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&f.data.as_ref().unwrap().statements);
    let mut texts: Vec<String> = PROBE_TEXTS.iter().map(|s| s.to_string()).collect();
    texts.extend(vocabulary_texts(&f2).unwrap());
    let spec = standard_specs()
        .into_iter()
        .find(|(n, _)| *n == "llama-tied")
        .expect("a tiny llama-tied")
        .1;
    let m = dir.join("llama");
    write_tiny_checkpoint(&m, spec, &texts).unwrap();
    m
}

/// `rmflow SUB ARGS` on 2 threads, aborted where `abort` says (`RMFLOW_TEST_ABORT`).
fn rmflow(sub: &str, args: &[&str], abort: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rmflow"));
    c.arg(sub).args(args).env("RAYON_NUM_THREADS", "2");
    match abort {
        Some(a) => c.env("RMFLOW_TEST_ABORT", a),
        None => c.env_remove("RMFLOW_TEST_ABORT"),
    };
    c.output().unwrap()
}

fn recipe(args: &[&str], abort: Option<&str>) -> Output {
    rmflow("lm-recipe", args, abort)
}

fn start(model: &Path, config: &Path, out: &Path, abort: Option<&str>) -> Output {
    recipe(
        &[
            "--model",
            model.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--reward",
            "exrm,imrm",
            "--mode",
            "both",
        ],
        abort,
    )
}

fn checkpoints_of(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.checkpoint", out.display()))
}

/// Every file of a run's output (relative path, bytes) with its wall-clock fields removed:
/// JSON keys naming seconds.
fn contents(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(out).unwrap().display().to_string();
            let bytes = std::fs::read(&path).unwrap();
            let bytes = if name.ends_with(".json") {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                strip(&mut v);
                v.to_string().into_bytes()
            } else if name.ends_with(".csv") {
                strip_csv(&String::from_utf8(bytes).unwrap()).into_bytes()
            } else {
                bytes
            };
            files.push((name, bytes));
        }
    }
    files.sort();
    files
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !k.contains("seconds") && !k.contains("per_second"));
            m.values_mut().for_each(strip);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// A CSV without its wall-clock columns (headers naming seconds).
fn strip_csv(text: &str) -> String {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let keep: Vec<bool> = header.iter().map(|h| !h.contains("seconds")).collect();
    let row = |l: &str| -> String {
        let cells: Vec<&str> = l.split(',').collect();
        let kept: Vec<&str> = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
            .map(|(_, c)| *c)
            .collect();
        kept.join(",")
    };
    std::iter::once(header.join(","))
        .map(|h| row(&h))
        .chain(lines.map(row))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Panics naming the first file (and its first line) that differs.
fn same_outputs(got: &[(String, Vec<u8>)], expected: &[(String, Vec<u8>)], tag: &str) {
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(expected), "{tag}: other files");
    for ((name, a), (_, b)) in got.iter().zip(expected) {
        if a != b {
            let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
            let at = a
                .bytes()
                .zip(b.bytes())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let window = |t: &str| {
                t.chars()
                    .skip(at.saturating_sub(120))
                    .take(240)
                    .collect::<String>()
            };
            panic!(
                "{tag}: {name} differs at byte {at}: {} / {}",
                window(&a),
                window(&b)
            );
        }
    }
}

/// `rmflow lm-progress OUT FLAG` on a run of the other experiment (its checkpoint written):
/// exit 2 naming the flag and the runs it reads. Returns whether it was checked.
fn progress_refuses(out: &Path, flag: &str, reads: &str) -> bool {
    if !checkpoints_of(out).join("LATEST").is_file() {
        return false;
    }
    let o = common::rmflow(&["lm-progress", out.to_str().unwrap(), flag]);
    assert_eq!(o.status.code(), Some(2), "{flag}: {}", stderr(&o));
    let want = format!("{flag} reads {reads} runs");
    assert!(stderr(&o).contains(&want), "{flag}: {}", stderr(&o));
    true
}

/// `rmflow lm-progress` on the killed run `out` against the finished run `reference`: where a
/// checkpoint was written, every row it prints is the reference's row of the same evaluation
/// (`file`'s columns less wall times and `pairs`, which a checkpoint does not hold), and the
/// models it calls finished have all their rows; before any checkpoint, exit 2 saying so.
/// `key` columns name an evaluation's row; `extra` is passed on (`--alignment`). Returns the
/// rows compared.
fn progress_matches(
    out: &Path,
    reference: &Path,
    file: &str,
    key: &[&str],
    extra: &[&str],
    tag: &str,
) -> usize {
    let mut args = vec!["lm-progress", out.to_str().unwrap()];
    args.extend(extra);
    let o = common::rmflow(&args);
    if !checkpoints_of(out).join("LATEST").is_file() {
        assert_eq!(o.status.code(), Some(2), "{tag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no checkpoint written yet"),
            "{tag}: {}",
            stderr(&o)
        );
        return 0;
    }
    assert!(o.status.success(), "{tag}: {}", stderr(&o));
    let table = |text: &str| -> Vec<std::collections::HashMap<String, String>> {
        let text = strip_csv(text);
        let mut lines = text.lines();
        let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
        lines
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(String::from))
                    .collect()
            })
            .collect()
    };
    let got = table(&String::from_utf8(o.stdout).unwrap());
    let expected = table(&std::fs::read_to_string(reference.join(file)).unwrap());
    let id = |r: &std::collections::HashMap<String, String>| -> Vec<String> {
        key.iter().map(|k| r[*k].clone()).collect()
    };
    for row in &got {
        let want = expected
            .iter()
            .find(|e| id(e) == id(row))
            .unwrap_or_else(|| panic!("{tag}: no reference row for {:?}", id(row)));
        for (k, v) in want {
            if k != "pairs" {
                assert_eq!(&row[k], v, "{tag}: {k} of {:?}", id(row));
            }
        }
    }
    // A finished reward model's rows are all there (lm-recipe: `status`).
    let model_of =
        |r: &std::collections::HashMap<String, String>| (r["mode"].clone(), r["model"].clone());
    for row in got
        .iter()
        .filter(|r| r.get("status").is_some_and(|s| s == "finished"))
    {
        let count = |t: &[std::collections::HashMap<String, String>]| {
            t.iter().filter(|r| model_of(r) == model_of(row)).count()
        };
        assert_eq!(count(&got), count(&expected), "{tag}: {:?}", model_of(row));
    }
    got.len()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The outputs of an uninterrupted run of `config` on `model` (into `dir/uninterrupted`), which
/// leaves no checkpoints behind.
fn uninterrupted_outputs(model: &Path, config: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = dir.join("uninterrupted");
    let o = start(model, config, &out, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !checkpoints_of(&out).exists(),
        "checkpoints left after a finished run"
    );
    contents(&out)
}

#[test]
fn killed_runs_resume_to_the_same_outputs() {
    let dir = temp("kill");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let expected = uninterrupted_outputs(&model, &config, &dir);
    let reference = dir.join("uninterrupted");
    // Head then full, EX-RM then IM-RM: 6 steps each; checkpoints after epochs 1 and 2 and
    // after each reward model (3 writes each).
    let (mut resumed, mut progress_rows, mut refused) = (0, [0, 0, 0], false);
    for (tag, abort) in [
        ("step-1", "step:1"),
        ("step-3", "step:3"),
        ("step-8", "step:8"),
        ("step-15", "step:15"),
        ("step-24", "step:24"),
        ("write-1", "checkpoint-write:1"),
        ("write-3", "checkpoint-write:3"),
        ("write-4", "checkpoint-write:4"),
        ("write-8", "checkpoint-write:8"),
    ] {
        let out = dir.join(tag);
        let o = start(&model, &config, &out, Some(abort));
        assert!(!o.status.success(), "{tag}: the run was not aborted");
        assert!(!out.exists(), "{tag}: partial output");
        let metrics_key = ["mode", "model", "epoch", "split"];
        progress_rows[0] +=
            progress_matches(&out, &reference, "metrics.csv", &metrics_key, &[], tag);
        let alignment_key = ["mode", "model", "epoch", "split", "statistic"];
        let alignment = ["--alignment"];
        progress_rows[1] += progress_matches(
            &out,
            &reference,
            "alignment.csv",
            &alignment_key,
            &alignment,
            tag,
        );
        // The pairs are built again from the run's model and config.
        let pair_key = ["mode", "model", "epoch", "split", "pair"];
        progress_rows[2] += progress_matches(
            &out,
            &reference,
            "pair_rewards.csv",
            &pair_key,
            &["--pairs"],
            tag,
        );
        let checked = progress_refuses(&out, "--prompts", "ham-cycle");
        assert_eq!(progress_refuses(&out, "--tokens", "ham-cycle"), checked);
        refused |= checked;
        let o = recipe(&["--resume", out.to_str().unwrap()], None);
        assert!(o.status.success(), "{tag}: resume failed: {}", stderr(&o));
        // The progress display continues from the checkpoint's step count.
        resumed += stderr(&o).matches(": resumed after step ").count();
        same_outputs(&contents(&out), &expected, tag);
        wall_time_covers_the_work(&out, tag);
        assert!(!checkpoints_of(&out).exists(), "{tag}: checkpoints left");
    }
    assert!(
        resumed > 0,
        "no resume reported the step it continued after"
    );
    assert!(
        progress_rows.iter().all(|&n| n > 0),
        "lm-progress compared {progress_rows:?} rows"
    );
    assert!(
        refused,
        "lm-progress --prompts was not tried on a checkpoint"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every reward model's wall time covers at least the parts of it that a checkpoint carries: its
/// optimizer steps and its evaluations (`lm-recipe`: their forwards, in `<mode>/<model>/summary.json`;
/// `ham-cycle`: their generation and enumeration, in `metrics.csv`). A resumed run must count the
/// processes before the kill too, not only the last.
fn wall_time_covers_the_work(out: &Path, tag: &str) {
    let json = |f: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
    };
    let mut runs = Vec::new(); // (name, wall seconds, carried seconds)
    if out.join("recipe.json").is_file() {
        for r in json(&out.join("recipe.json"))["runs"].as_array().unwrap() {
            let (mode, model) = (r["mode"].as_str().unwrap(), r["model"].as_str().unwrap());
            let s = json(&out.join(mode).join(model).join("summary.json"));
            let evaluations: f64 = s["checkpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seconds"].as_f64().unwrap())
                .sum();
            let carried = s["step_seconds"].as_f64().unwrap() + evaluations;
            runs.push((
                format!("{mode} {model}"),
                s["seconds"].as_f64().unwrap(),
                carried,
            ));
        }
    } else {
        let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (gen, enumerate) = (column("generation_seconds"), column("enumeration_seconds"));
        for r in json(&out.join("summary.json"))["runs"].as_array().unwrap() {
            let reward = r["reward"].as_str().unwrap();
            let evaluations: f64 = metrics
                .lines()
                .skip(1)
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|c| c[0] == reward)
                .map(|c| c[gen].parse::<f64>().unwrap() + c[enumerate].parse::<f64>().unwrap())
                .sum();
            let carried = r["step_seconds"].as_f64().unwrap() + evaluations;
            runs.push((reward.to_string(), r["seconds"].as_f64().unwrap(), carried));
        }
    }
    assert!(!runs.is_empty(), "{tag}: no run summaries");
    for (name, wall, carried) in runs {
        // `metrics.csv` rounds its seconds to 1 ms (0.5 ms per value, two per row, under 50 rows).
        assert!(
            wall + 0.05 >= carried,
            "{tag}: {name}: {wall} s of wall time for {carried} s of steps and evaluations"
        );
    }
}

/// The IM-RM's reference tables are kept beside the checkpoints once computed and read back by a
/// resumed run instead of recomputed; it still writes the uninterrupted outputs, bit for bit. A
/// kept table that does not fit the run's sequences is refused, naming the file and the row.
#[test]
fn imrm_reference_tables_are_kept_and_read_back() {
    let dir = temp("reference");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let uninterrupted = dir.join("uninterrupted");
    let o = start(&model, &config, &uninterrupted, None);
    assert!(o.status.success(), "{}", stderr(&o));
    // Step 20: the second step of the full IM-RM (head EX-RM, head IM-RM, full EX-RM, full
    // IM-RM, 6 steps each).
    let out = dir.join("run");
    assert!(!start(&model, &config, &out, Some("step:20"))
        .status
        .success());
    let kept = checkpoints_of(&out).join("reference-imrm-full.cbor");
    assert!(kept.is_file(), "no kept tables");
    assert!(checkpoints_of(&out)
        .join("reference-imrm-head.cbor")
        .is_file());
    assert!(!checkpoints_of(&out)
        .join("reference-exrm-full.cbor")
        .exists());
    let bytes = std::fs::read(&kept).unwrap();
    let mut tables: ReferenceTables = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(tables.all.len(), tables.training.as_ref().unwrap().len());
    tables.training.as_mut().unwrap()[3].pop();
    let mut edited = Vec::new();
    ciborium::into_writer(&tables, &mut edited).unwrap();
    std::fs::write(&kept, edited).unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("reference-imrm-full.cbor") && err.contains("row 3"),
        "{err}"
    );
    std::fs::write(&kept, &bytes).unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("reference log-probabilities read from"),
        "{err}"
    );
    assert!(
        !err.contains("reference log-probabilities of every sequence"),
        "{err}"
    );
    same_outputs(&contents(&out), &contents(&uninterrupted), "kept tables");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_checkpoints_and_exits_5() {
    let dir = temp("term");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let out = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args(common::lm_recipe_args(&model, &config, &out))
        .args(["--checkpoint-every", "0"])
        .env("RAYON_NUM_THREADS", "2")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the run file, then ask the run to stop.
    let run_json = checkpoints_of(&out).join("run.json");
    let t0 = std::time::Instant::now();
    while !run_json.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    match o.status.code() {
        // Stopped while scoring, after an evaluation or a step: no output, and what the run
        // kept to resume from.
        Some(5) => {
            assert!(err.contains("SIGTERM"), "{err}");
            assert!(checkpoints_of(&out).join("run.json").is_file(), "{err}");
            assert!(!out.exists());
            let o = recipe(&["--resume", out.to_str().unwrap()], None);
            assert!(o.status.success(), "{}", stderr(&o));
        }
        // Killed by the default handler before the run installed its own (loading).
        None => assert!(!out.exists()),
        other => panic!("exit {other:?}: {err}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while the run scores sequences (reference tables, an evaluation, frozen features)
/// stops it there with exit code 5 and no output, not after the next optimizer step; resumed,
/// it writes the uninterrupted outputs.
#[test]
fn sigterm_while_scoring_stops_there_and_resumes() {
    let dir = temp("term-scoring");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let expected = uninterrupted_outputs(&model, &config, &dir);
    for n in [1, 9, 40] {
        let tag = format!("interrupt-point:{n}");
        let out = dir.join(format!("term-{n}"));
        let mut c = Command::new(env!("CARGO_BIN_EXE_rmflow"));
        c.args(common::lm_recipe_args(&model, &config, &out))
            .args(["--reward", "exrm,imrm", "--mode", "both"])
            .env("RAYON_NUM_THREADS", "2")
            .env("RMFLOW_TEST_SIGTERM", &tag);
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(5), "{tag}: {err}");
        assert!(err.contains("stopped by SIGTERM while"), "{tag}: {err}");
        assert!(!out.exists(), "{tag}: partial output");
        let o = recipe(&["--resume", out.to_str().unwrap()], None);
        assert!(o.status.success(), "{tag}: resume failed: {}", stderr(&o));
        same_outputs(&contents(&out), &expected, &tag);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The scoring journals of `out`'s checkpoint folder (`scoring-*.cbor`), by name and size.
fn journals(out: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(checkpoints_of(out))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("scoring-"))
                .map(|n| {
                    let len = std::fs::metadata(checkpoints_of(out).join(&n))
                        .unwrap()
                        .len();
                    (n, len)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// A run killed (abort, as SIGKILL) in the middle of a scoring pass (an evaluation, the IM-RM's
/// reference pass) resumes it where it stopped: the chunks its journal holds are read back, not
/// scored again, and the outputs equal an uninterrupted run's bit for bit, also when the kill
/// cut the journal's last record short (the journal cut by hand here). Finished runs and
/// finished passes leave no journal.
#[test]
fn a_killed_scoring_pass_resumes_where_it_stopped() {
    let dir = temp("journal");
    let model = model(&dir);
    let mut f = RecipeFile::from_file(&small_recipe(&dir, 1e-3)).unwrap();
    f.train.eval_batch = 4;
    let config = dir.join("recipe-journal.toml");
    std::fs::write(&config, toml::to_string(&f).unwrap()).unwrap();
    let expected = uninterrupted_outputs(&model, &config, &dir);
    // Chunk 3: the head EX-RM's first evaluation; later ones fall in the IM-RMs' reference
    // passes and later evaluations (the names are checked below).
    let mut passes = Vec::new();
    for (n, cut) in [(3, false), (40, true), (120, false), (230, true)] {
        let tag = format!("scored-chunk:{n}");
        let out = dir.join(format!("chunk-{n}"));
        let o = start(&model, &config, &out, Some(&tag));
        assert!(!o.status.success(), "{tag}: the run was not aborted");
        let found = journals(&out);
        assert_eq!(found.len(), 1, "{tag}: journals {found:?}");
        let (name, len) = &found[0];
        if cut {
            let path = checkpoints_of(&out).join(name);
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len - 5).unwrap();
        }
        passes.push(name.clone());
        let o = recipe(&["--resume", out.to_str().unwrap()], None);
        let err = stderr(&o);
        assert!(o.status.success(), "{tag}: resume failed: {err}");
        assert!(
            err.contains("sequences read back from the scoring journal"),
            "{tag}: {err}"
        );
        same_outputs(&contents(&out), &expected, &tag);
        assert!(!checkpoints_of(&out).exists(), "{tag}: checkpoints left");
    }
    assert!(
        passes.iter().any(|p| p.contains("-evaluation-after-step-"))
            && passes.iter().any(|p| p.contains("-reference")),
        "the kills hit {passes:?}: not both an evaluation and a reference pass"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest checkpoint of `out` (`state-NNNNNN/`, named by `LATEST`).
fn latest_state(out: &Path) -> PathBuf {
    let dir = checkpoints_of(out);
    let name = std::fs::read_to_string(dir.join("LATEST")).unwrap();
    dir.join(name.trim())
}

/// `progress.cbor` of `state` with `edit` applied to its reward model in training (`current`).
fn edit_progress(state: &Path, edit: impl FnOnce(&mut ciborium::Value)) {
    let path = state.join("progress.cbor");
    let mut v: ciborium::Value =
        ciborium::from_reader(std::fs::File::open(&path).unwrap()).unwrap();
    edit(field(&mut v, "current"));
    let mut bytes = Vec::new();
    ciborium::into_writer(&v, &mut bytes).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

/// The value of `key` in the CBOR map `v`.
fn field<'a>(v: &'a mut ciborium::Value, key: &str) -> &'a mut ciborium::Value {
    let ciborium::Value::Map(entries) = v else {
        panic!("not a map: {v:?}")
    };
    &mut entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap_or_else(|| panic!("no key {key}"))
        .1
}

/// A checkpoint whose weights are gone (its record kept without `tensors.safetensors`) is
/// refused by `--resume` (exit 2, naming the file and `--replay`); `--resume --replay` rebuilds
/// them by re-running the recorded steps and writes the uninterrupted outputs bit for bit (head
/// and full fine-tuning, EX-RM and IM-RM). A record the replay does not reproduce (one step's
/// loss moved by one ulp) stops it with exit code 4 naming the step and the machines; a damaged
/// weights file is refused against the record's digest (exit 2).
#[test]
fn lost_weights_are_replayed_from_the_record() {
    let dir = temp("replay");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let expected = uninterrupted_outputs(&model, &config, &dir);
    // Head EX-RM after 2 steps, full EX-RM after 2, full IM-RM after 4 (6 steps each model).
    let mut replayed = 0;
    for (tag, abort) in [
        ("step-3", "step:3"),
        ("step-15", "step:15"),
        ("step-24", "step:24"),
    ] {
        let out = dir.join(tag);
        let o = start(&model, &config, &out, Some(abort));
        assert!(!o.status.success(), "{tag}: the run was not aborted");
        let state = latest_state(&out);
        std::fs::remove_file(state.join("tensors.safetensors")).unwrap();
        // As on a new machine: the model's files written again (same bytes, a new time).
        for e in std::fs::read_dir(&model).unwrap().flatten() {
            let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            let f = std::fs::File::options().write(true).open(e.path()).unwrap();
            f.set_modified(later).unwrap();
        }
        let o = recipe(&["--resume", out.to_str().unwrap()], None);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{tag}: {err}");
        assert!(
            err.contains("tensors.safetensors is gone") && err.contains("--replay"),
            "{tag}: {err}"
        );
        let o = recipe(&["--resume", out.to_str().unwrap(), "--replay"], None);
        let err = stderr(&o);
        assert!(o.status.success(), "{tag}: replay failed: {err}");
        replayed += err.matches("replaying step ").count();
        same_outputs(&contents(&out), &expected, tag);
        assert!(!checkpoints_of(&out).exists(), "{tag}: checkpoints left");
    }
    assert!(
        replayed >= 8,
        "{replayed} steps replayed, expected 2 + 2 + 4"
    );

    // One step's recorded loss moved by one ulp: the replay stops there, naming it.
    let out = dir.join("moved-loss");
    assert!(!start(&model, &config, &out, Some("step:15"))
        .status
        .success());
    let state = latest_state(&out);
    std::fs::remove_file(state.join("tensors.safetensors")).unwrap();
    edit_progress(&state, |current| {
        let ciborium::Value::Array(history) = field(current, "history") else {
            panic!("history is not an array")
        };
        let loss = field(&mut history[1], "loss");
        let x = loss.as_float().expect("a float loss");
        *loss = ciborium::Value::Float(f64::from_bits(x.to_bits() + 1));
        // The record names the machine its steps ran on: say it was another.
        let ciborium::Value::Array(machines) = field(current, "machines") else {
            panic!("machines is not an array")
        };
        assert_eq!(machines.len(), 1, "one machine ran the steps");
        assert_eq!(
            field(&mut machines[0], "from_step").as_integer(),
            Some(1.into())
        );
        *field(field(&mut machines[0], "machine"), "cpu") = "Another CPU".into();
    });
    let o = recipe(&["--resume", out.to_str().unwrap(), "--replay"], None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("step 2: the loss is"), "{err}");
    assert!(
        err.contains("The record's steps ran on Another CPU (")
            && err.contains(") from step 1; this machine is "),
        "{err}"
    );
    assert!(!out.exists(), "partial output");

    // With --allow-drift the same replay goes on and the run says where it departed: the
    // summary's `replay_drift` names step 2's loss, and the weights (equal: only the record
    // moved) give the uninterrupted metrics. Other pairs are never tolerated.
    let o = recipe(
        &[
            "--resume",
            out.to_str().unwrap(),
            "--replay",
            "--allow-drift",
        ],
        None,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("replayed with drift (--allow-drift): 1 departures from the record, the first at step 2 (the loss)"), "{err}");
    let got = contents(&out);
    let file = |files: &[(String, Vec<u8>)], name: &str| {
        let f = files.iter().find(|f| f.0 == name);
        f.unwrap_or_else(|| panic!("no {name}")).1.clone()
    };
    assert_eq!(file(&got, "metrics.csv"), file(&expected, "metrics.csv"));
    let summaries: Vec<serde_json::Value> = got
        .iter()
        .filter(|f| f.0.ends_with("summary.json"))
        .map(|f| serde_json::from_slice(&f.1).unwrap())
        .collect();
    let drifts: Vec<&serde_json::Value> = summaries
        .iter()
        .filter_map(|s| s.get("replay_drift"))
        .collect();
    assert_eq!(drifts.len(), 1, "one reward model replayed: {summaries:?}");
    assert_eq!(drifts[0][0]["step"], 2, "{}", drifts[0]);
    assert_eq!(drifts[0][0]["what"], "the loss", "{}", drifts[0]);
    assert_eq!(drifts[0].as_array().unwrap().len(), 1, "{}", drifts[0]);

    // A damaged weights file: refused against the record's digest, naming it.
    let out = dir.join("damaged");
    assert!(!start(&model, &config, &out, Some("step:15"))
        .status
        .success());
    let weights = latest_state(&out).join("tensors.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("tensors.safetensors: damaged"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_resume_with_another_config_or_model_is_refused_naming_it() {
    let dir = temp("refuse");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let out = dir.join("run");
    let o = start(&model, &config, &out, Some("step:3"));
    assert!(!o.status.success());
    let other = small_recipe(&dir, 2e-3);
    let o = recipe(
        &[
            "--resume",
            out.to_str().unwrap(),
            "--config",
            other.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("config.train.lr"), "{}", stderr(&o));
    let o = recipe(
        &["--resume", out.to_str().unwrap(), "--reward", "imrm"],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("rewards"), "{}", stderr(&o));
    // The model changed since the run started.
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, [bytes.as_slice(), &[0u8; 8]].concat()).unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("model_files"), "{}", stderr(&o));
    // Changed in place, same length: refused as well (the files' digests, not their sizes).
    let mut flipped = bytes.clone();
    flipped[bytes.len() - 1] ^= 1;
    std::fs::write(&weights, &flipped).unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("model_files"), "{}", stderr(&o));
    std::fs::write(&weights, &bytes).unwrap();
    // A new run on the same --out is refused while the checkpoints wait.
    let o = start(&model, &config, &out, None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`common::TINY_CYCLE`] with 3 epochs per reward model (6 steps each), evaluated every epoch.
fn tiny_cycle() -> String {
    common::TINY_CYCLE.replace("epochs = 2", "epochs = 3")
}

fn ham_cycle(args: &[&str], abort: Option<&str>) -> Output {
    rmflow("ham-cycle", args, abort)
}

/// `ham-cycle` killed after an optimizer step of either reward model or in the middle of a
/// checkpoint's write, and resumed: the same outputs as an uninterrupted run (the pretrained
/// reference, every evaluation's generations and exact masses, both reward models), bit for bit
/// but wall times; a resume with another config is refused naming the field.
#[test]
fn killed_cycle_runs_resume_to_the_same_outputs() {
    let dir = temp("cycle");
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, tiny_cycle()).unwrap();
    let start = |out: &Path, abort: Option<&str>| {
        ham_cycle(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            abort,
        )
    };
    let reference = dir.join("uninterrupted");
    let o = start(&reference, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!checkpoints_of(&reference).exists(), "checkpoints left");
    let expected = contents(&reference);
    // IM-RM then EX-RM, 6 steps each; checkpoints after epochs 1 and 2 and after each model.
    let (mut resumed, mut progress_rows, mut prompt_rows) = (0, 0, 0);
    let (mut pair_rows, mut token_rows) = (0, 0);
    let mut refused = false;
    for (tag, abort) in [
        ("step-1", "step:1"),
        ("step-4", "step:4"),
        ("step-6", "step:6"),
        ("step-9", "step:9"),
        ("write-2", "checkpoint-write:2"),
        ("write-3", "checkpoint-write:3"),
    ] {
        let out = dir.join(tag);
        let o = start(&out, Some(abort));
        assert!(!o.status.success(), "{tag}: the run was not aborted");
        assert!(!out.exists(), "{tag}: partial output");
        assert!(
            checkpoints_of(&out)
                .join("pretrained/pretrain.cbor")
                .is_file(),
            "{tag}"
        );
        progress_rows += progress_matches(
            &out,
            &reference,
            "metrics.csv",
            &["reward", "epoch"],
            &[],
            tag,
        );
        prompt_rows += progress_matches(
            &out,
            &reference,
            "prompts.csv",
            &["epoch", "prompt"],
            &["--prompts"],
            tag,
        );
        pair_rows += progress_matches(
            &out,
            &reference,
            "pair_rewards.csv",
            &["reward", "epoch", "split", "pair"],
            &["--pairs"],
            tag,
        );
        token_rows += progress_matches(
            &out,
            &reference,
            "token_rewards.csv",
            &["reward", "epoch", "split", "side", "token"],
            &["--tokens"],
            tag,
        );
        refused |= progress_refuses(&out, "--alignment", "lm-recipe");
        let o = ham_cycle(&["--resume", out.to_str().unwrap()], None);
        assert!(o.status.success(), "{tag}: resume failed: {}", stderr(&o));
        resumed += stderr(&o).matches(": resumed after step ").count();
        same_outputs(&contents(&out), &expected, tag);
        wall_time_covers_the_work(&out, tag);
        assert!(!checkpoints_of(&out).exists(), "{tag}: checkpoints left");
    }
    assert!(
        resumed > 0,
        "no resume reported the step it continued after"
    );
    assert!(progress_rows > 0, "lm-progress compared no row");
    assert!(prompt_rows > 0, "lm-progress --prompts compared no row");
    assert!(pair_rows > 0, "lm-progress --pairs compared no row");
    assert!(token_rows > 0, "lm-progress --tokens compared no row");
    assert!(
        refused,
        "lm-progress --alignment was not tried on a checkpoint"
    );
    // SIGTERM while scoring (the IM-RM's reference scoring; an EX-RM evaluation): exit 5 at
    // once, then resumed to the same outputs.
    for n in [2, 12] {
        let out = dir.join(format!("term-{n}"));
        let o = Command::new(env!("CARGO_BIN_EXE_rmflow"))
            .args(["ham-cycle", "--config", cfg.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .env("RAYON_NUM_THREADS", "2")
            .env("RMFLOW_TEST_SIGTERM", format!("interrupt-point:{n}"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(5), "term-{n}: {}", stderr(&o));
        assert!(!out.exists(), "term-{n}: partial output");
        let o = ham_cycle(&["--resume", out.to_str().unwrap()], None);
        assert!(
            o.status.success(),
            "term-{n}: resume failed: {}",
            stderr(&o)
        );
        same_outputs(&contents(&out), &expected, &format!("term-{n}"));
    }
    // Another config on resume is refused, naming the field; a new run over the unfinished one
    // is refused too.
    let out = dir.join("refused");
    assert!(!start(&out, Some("step:2")).status.success());
    let other = dir.join("other.toml");
    std::fs::write(&other, tiny_cycle().replace("lr = 1e-3", "lr = 2e-3")).unwrap();
    let o = ham_cycle(
        &[
            "--resume",
            out.to_str().unwrap(),
            "--config",
            other.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("config.train.lr"), "{}", stderr(&o));
    let o = start(&out, None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unfinished run"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ham-cycle` resumed from a record without its weights and without its pretrained reference
/// (both large; the record as kept where weights cannot go): `--replay` pretrains the reference
/// again, re-runs the recorded steps against the record and writes the uninterrupted outputs bit
/// for bit (IM-RM after 4 steps, EX-RM after 2).
#[test]
fn cycle_runs_replay_without_weights_or_reference() {
    let dir = temp("cycle-replay");
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, tiny_cycle()).unwrap();
    let start = |out: &Path, abort: Option<&str>| {
        let (cfg, out) = (cfg.to_str().unwrap(), out.to_str().unwrap());
        ham_cycle(&["--config", cfg, "--out", out], abort)
    };
    let reference = dir.join("uninterrupted");
    assert!(start(&reference, None).status.success());
    let expected = contents(&reference);
    let mut replayed = 0;
    for (tag, abort) in [("step-5", "step:5"), ("step-9", "step:9")] {
        let out = dir.join(tag);
        assert!(!start(&out, Some(abort)).status.success(), "{tag}");
        std::fs::remove_file(latest_state(&out).join("tensors.safetensors")).unwrap();
        std::fs::remove_dir_all(checkpoints_of(&out).join("pretrained")).unwrap();
        let o = ham_cycle(&["--resume", out.to_str().unwrap(), "--replay"], None);
        let err = stderr(&o);
        assert!(o.status.success(), "{tag}: replay failed: {err}");
        replayed += err.matches("replaying step ").count();
        same_outputs(&contents(&out), &expected, tag);
    }
    assert!(replayed >= 6, "{replayed} steps replayed, expected 4 + 2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run whose `run.json` predates the model files' digests (`model_files` as `[bytes, mtime]`)
/// is compared in that form on `--resume`: it resumes while the files' times are the recorded
/// ones, and is refused, naming `model_files`, once a file's time moved.
#[test]
fn runs_started_before_model_digests_resume_by_file_time() {
    let dir = temp("mtime-form");
    let model = model(&dir);
    let config = small_recipe(&dir, 1e-3);
    let out = dir.join("run");
    assert!(!start(&model, &config, &out, Some("step:3"))
        .status
        .success());
    let run_json = checkpoints_of(&out).join("run.json");
    let mut identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    let mut files = serde_json::Map::new();
    for e in std::fs::read_dir(&model).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        let time = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH);
        let entry = serde_json::json!([meta.len(), time.unwrap().as_secs()]);
        files.insert(e.file_name().to_string_lossy().to_string(), entry);
    }
    identity["model_files"] = serde_json::Value::Object(files);
    std::fs::write(&run_json, identity.to_string()).unwrap();
    // A file's time moved (same bytes): refused in the old form.
    let weights = std::fs::File::options()
        .write(true)
        .open(model.join("model.safetensors"))
        .unwrap();
    let original = weights.metadata().unwrap().modified().unwrap();
    weights
        .set_modified(original + std::time::Duration::from_secs(3600))
        .unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("model_files"), "{}", stderr(&o));
    // The recorded times: it resumes.
    weights.set_modified(original).unwrap();
    let o = recipe(&["--resume", out.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
