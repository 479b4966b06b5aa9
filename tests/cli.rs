//! The command line as a user meets it: bad input, determinism of the export, verify's verdicts.

use std::path::Path;
use std::process::{Command, Output};

fn rmflow(args: &[&str], threads: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmflow"));
    cmd.args(args);
    if let Some(t) = threads {
        cmd.env("RAYON_NUM_THREADS", t);
    }
    cmd.output().expect("rmflow runs")
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rmflow-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_configs_name_the_field_and_leave_no_output() {
    let dir = temp("bad");
    let cases = [
        ("[setup]\ndim = 0\n", "setup.dim"),
        ("[setup]\nbeta = -1.0\n", "setup.beta"),
        ("[setup]\nalpha = nan\n", "setup.alpha"),
        ("[train]\nt_max = 0.0\n", "train.t_max"),
        (
            "[train]\noptimizer = \"gd\"\nt_max = 1e100\n",
            "train.t_max",
        ),
        ("[setup]\ndimension = 3\n", "dimension"),
        ("[train]\noptimizer = \"sgd\"\n", "optimizer"),
        ("[eval]\ntie_tolerance = -1.0\n", "eval.tie_tolerance"),
        ("seed = \"x\"\n", "seed"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let out = dir.join(format!("out{i}"));
        let o = rmflow(
            &[
                "simulate",
                "--config",
                cfg.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        );
        assert!(!o.status.success(), "config {text:?} was accepted");
        assert!(
            stderr(&o).contains(field),
            "error for {text:?} does not name `{field}`: {}",
            stderr(&o)
        );
        assert!(!out.exists(), "a failed run left {}", out.display());
    }
    let o = rmflow(
        &[
            "simulate",
            "--config",
            "/no/such/file.toml",
            "--out",
            dir.join("x").to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/file.toml"));
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_gives_byte_identical_outputs_whatever_the_thread_count() {
    let dir = temp("det");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (out, threads) in [(&a, "1"), (&b, "2")] {
        let o = rmflow(
            &[
                "simulate",
                "--out",
                out.to_str().unwrap(),
                "--t-max",
                "1e12",
                "--imrm-gradient",
                "full",
                "--full-unembedding",
            ],
            Some(threads),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (fa, fb) = (files(&a), files(&b));
    let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "config.toml",
        "setup.json",
        "summary.json",
        "trajectory.csv",
        "train/prompt_hidden.npy",
        "eval_unseen/chosen_token.npy",
        "init/unembedding.npy",
        "final/unembedding.npy",
        "final/head.npy",
        "final/max_margin_head.npy",
        "final/max_margin_unembedding_delta_rows.npy",
        "unembedding_tokens.npy",
        "init/unembedding_rows.npy",
        "final/unembedding_rows.npy",
    ] {
        assert!(
            names.contains(&expected),
            "missing {expected}; have {names:?}"
        );
    }
    assert_eq!(fa.len(), fb.len());
    for ((na, da), (nb, db)) in fa.iter().zip(&fb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs between 1 and 2 threads");
    }
    // An existing output folder is refused without --force.
    let o = rmflow(
        &["simulate", "--out", a.to_str().unwrap(), "--t-max", "10"],
        None,
    );
    assert!(!o.status.success() && stderr(&o).contains("--force"));
}

#[test]
fn verify_passes_on_the_default_and_fails_on_a_broken_variant() {
    let ok = rmflow(&["verify", "--trials", "0"], None);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "verify failed on the default:\n{text}\n{}",
        stderr(&ok)
    );
    assert!(text.contains("ALL CLAIMS HOLD") && !text.contains("FAIL "));

    let bad = rmflow(
        &["verify", "--trials", "0", "--inject-fault", "adamw-as-gd"],
        None,
    );
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        !bad.status.success(),
        "verify accepted AdamW as gradient descent:\n{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("2a.gd.drift"))
        .expect("2a.gd.drift row");
    assert!(row.contains("FAIL"), "{row}");
}

/// The `.npy` header's shape tuple, e.g. `(4, 2, 2, 6, 2, 2)`.
fn npy_shape(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = String::from_utf8_lossy(&bytes[10..bytes.len().min(200)]).into_owned();
    let start = header.find("'shape': (").expect("shape in header") + 10;
    let end = header[start..].find(')').unwrap() + start;
    format!("({})", header[start..end].trim_end_matches(','))
}

#[test]
fn dynamics_writes_rho_tensors_with_documented_shapes() {
    let dir = temp("dyn");
    let cfg = dir.join("k2.toml");
    std::fs::write(
        &cfg,
        "[setup]\ndim = 6\nfiller_tokens = 20\ntrain_pairs = 6\neval_pairs = 4\nresponse_length = 2\neval_overlap = [0.5]\n[train]\nt_max = 100.0\nimrm_gradient = \"full\"\n[dynamics]\nsnapshot_times = [100.0]\n",
    )
    .unwrap();
    let out = dir.join("run");
    let o = rmflow(
        &[
            "dynamics",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let snaps: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dynamics/snapshots.json")).unwrap())
            .unwrap();
    let folder = snaps["snapshots"][0]["folder"]
        .as_str()
        .unwrap()
        .to_string();
    for split in ["seen", "unseen", "domain", "overlap50"] {
        assert_eq!(
            npy_shape(&out.join(format!("{folder}/rho_{split}.npy"))),
            "(4, 2, 2, 6, 2, 2)"
        );
        assert_eq!(
            npy_shape(&out.join(format!("{folder}/velocity_imrm_{split}.npy"))),
            "(4, 2, 6)"
        );
    }
    assert_eq!(npy_shape(&out.join("train/chosen_token.npy")), "(6, 2)");
    assert_eq!(
        npy_shape(&out.join("train/chosen_prefix_hidden.npy")),
        "(6, 2, 6)"
    );
    let csv = std::fs::read_to_string(out.join("dynamics.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .starts_with("t,split,rho_same_count"));
    assert!(csv.lines().count() > 4 * 3);
}

#[test]
fn sweep_rejects_bad_files_and_writes_a_table() {
    let dir = temp("sweep");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[sweep]\nparameter = \"alpha\"\nvalues = [1.0]\nseeds = 1\n",
    )
    .unwrap();
    let o = rmflow(
        &[
            "sweep",
            "--config",
            bad.to_str().unwrap(),
            "--out",
            dir.join("t").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !o.status.success() && stderr(&o).contains("sweep.seeds"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("t").exists());
    let good = dir.join("good.toml");
    std::fs::write(&good, "[sweep]\nparameter = \"alpha\"\nvalues = [0.0, 3.0]\nseeds = 2\n[base.setup]\ndim = 8\nfiller_tokens = 10\ntrain_pairs = 20\neval_pairs = 10\n[base.train]\nt_max = 1e4\n").unwrap();
    let o = rmflow(
        &[
            "sweep",
            "--config",
            good.to_str().unwrap(),
            "--out",
            dir.join("t").to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(dir.join("t/sweep.csv")).unwrap();
    assert!(std::fs::read_to_string(dir.join("t/sweep.toml"))
        .unwrap()
        .starts_with("# rmflow "));
    assert_eq!(csv.lines().count(), 1 + 2 * 2);
    assert!(
        csv.contains("\n3,imrm,2,0.5,0,"),
        "IM-RM unseen accuracy must be exactly ½ with zero spread:\n{csv}"
    );
}

/// `verify --without-full-vocabulary` on a vocabulary of 200 032 tokens (`V × D` = 51 MB per
/// copy; the full verify would hold dozens): the checks whose cost does not grow with `V` run and
/// hold, the full-vocabulary ones are SKIP rows with the reason, the seen-row drift row says why
/// it is not measured, and a config without the seen-row IM-RM is refused (exit 2, field named).
#[test]
fn verify_without_the_full_vocabulary_skips_only_the_full_vocabulary_checks() {
    let dir = temp("verify-seen-rows");
    let cfg = dir.join("large_v.toml");
    std::fs::write(
        &cfg,
        "seed = 4\n[setup]\nfiller_tokens = 200000\n[train]\nt_max = 1e8\nimrm_gradient = \"sparse\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let o = rmflow(
        &[
            "verify",
            "--config",
            cfg,
            "--trials",
            "0",
            "--without-full-vocabulary",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}\n{}", stderr(&o));
    assert!(text.contains("ALL CLAIMS HOLD"), "{text}");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no {id} row in\n{text}"))
            .to_string()
    };
    for id in [
        "2a.flow_full.drift",
        "2a.gd.drift",
        "2a.adamw.drift",
        "companion.paths_agree",
        "3.rho_bound",
    ] {
        let r = row(id);
        assert!(
            r.contains("SKIP") && r.contains("--without-full-vocabulary"),
            "{r}"
        );
    }
    assert!(row("2a.flow.drift").contains("SKIP"));
    for id in [
        "2a.flow.unseen_accuracy",
        "2a.flow.unseen_margin",
        "companion.dual_unseen",
        "2b.residual_limit",
        "qp.exrm",
        "qp.imrm",
    ] {
        assert!(row(id).contains("PASS"), "{}", row(id));
    }

    let full = dir.join("full_gradient.toml");
    std::fs::write(&full, "[train]\nimrm_gradient = \"full\"\n").unwrap();
    let o = rmflow(
        &[
            "verify",
            "--config",
            full.to_str().unwrap(),
            "--trials",
            "0",
            "--without-full-vocabulary",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("train.imrm_gradient"), "{}", stderr(&o));
}
