//! Preference data as researchers have it (`lm::data::preference`): the official evaluation sets
//! (`save_to_disk` folders, Arrow IPC streams), pyarrow-written Parquet and Arrow files
//! (`scripts/preference_fixtures.py`), JSONL; TRL's standard, implicit-prompt and conversational
//! shapes; and every bad input refused naming the file, row and column.
#![cfg(feature = "lm")]

use rmflow::lm::data::preference::{
    read_pairs, Columns, DataError, DataSource, Message, PreferencePair, Turns,
};
use std::path::{Path, PathBuf};

fn root(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn fixture(name: &str) -> PathBuf {
    root("tests/fixtures/preference").join(name)
}

fn official(name: &str) -> PathBuf {
    root("experiments/data/exrm-vs-imrm").join(name)
}

fn read(path: PathBuf) -> Result<Vec<PreferencePair>, DataError> {
    read_pairs(&DataSource::new(path))
}

fn split(path: PathBuf, split: &str) -> Result<Vec<PreferencePair>, DataError> {
    read_pairs(&DataSource {
        split: Some(split.into()),
        ..DataSource::new(path)
    })
}

fn text(t: &Turns) -> &str {
    match t {
        Turns::Text(s) => s,
        Turns::Messages(_) => panic!("expected text, got {t:?}"),
    }
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rmflow-prefdata-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The official sets read with the sizes the official plans state, the rewritten sets row for
/// row with the UltraFeedback test prompts.
#[test]
fn official_sets_read_as_the_official_code_wrote_them() {
    for (set, train, test) in [
        ("rewardbench_math", 34, 200),
        ("rewardbench_code", 84, 200),
        ("rewardmath", 2000, 200),
        ("ultrafeedback_paraphrase", 200, 200),
        ("ultrafeedback_french", 200, 200),
        ("ultrafeedback_spanish", 200, 200),
    ] {
        assert_eq!(
            split(official(set), "train").unwrap().len(),
            train,
            "{set} train"
        );
        assert_eq!(
            split(official(set), "test").unwrap().len(),
            test,
            "{set} test"
        );
    }
    let uf = split(official("ultrafeedback"), "test").unwrap();
    let fr = split(official("ultrafeedback_french"), "test").unwrap();
    assert_eq!(uf.len(), 200);
    for (a, b) in uf.iter().zip(&fr) {
        assert_eq!(a.prompt, b.prompt, "row {}", a.row);
    }
    // Translated responses (a few, like "24", read the same in French).
    let same = uf
        .iter()
        .zip(&fr)
        .filter(|(a, b)| a.chosen == b.chosen)
        .count();
    assert!(same < 10, "{same} of 200 chosen responses untranslated");
    // The rewritten sets keep the original responses; mapped columns read them.
    let orig = read_pairs(&DataSource {
        split: Some("test".into()),
        columns: Columns {
            chosen: Some("orig_chosen".into()),
            rejected: Some("orig_rejected".into()),
            prompt: None,
        },
        ..DataSource::new(official("ultrafeedback_french"))
    })
    .unwrap();
    assert_eq!(orig[17].chosen, uf[17].chosen);
    assert_eq!(orig[199].rejected, uf[199].rejected);
}

#[test]
fn splits_are_named_or_refused() {
    let e = read(official("rewardbench_math")).unwrap_err();
    assert!(matches!(e, DataError::WhichSplit { .. }), "{e}");
    let e = split(official("rewardbench_math"), "validation").unwrap_err();
    match &e {
        DataError::NoSplit { split, listed, .. } => {
            assert_eq!(split, "validation");
            assert_eq!(listed, &["train", "test"]);
        }
        other => panic!("{other}"),
    }
    // One split's folder reads on its own.
    assert_eq!(read(official("rewardbench_code/train")).unwrap().len(), 84);
    // The UltraFeedback train split's Arrow file is not in the snapshot: named.
    let e = split(official("ultrafeedback"), "train").unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("data-00000-of-00001.arrow"), "{e}");
}

/// pyarrow's Parquet (snappy, gzip, zstd, lz4), Arrow file and stream (several batches, large strings): the
/// same pairs, the extra column ignored.
#[test]
fn parquet_and_arrow_files_read_the_same_pairs() {
    let expected = read(fixture("standard.parquet")).unwrap();
    assert_eq!(expected.len(), 3);
    assert_eq!(text(&expected[1].prompt), "Translate «chat» to English.");
    assert_eq!(text(&expected[2].rejected), "5");
    for f in [
        "standard_gzip.parquet",
        "standard.arrow",
        "standard_large.arrows",
    ] {
        assert_eq!(read(fixture(f)).unwrap(), expected, "{f}");
    }
}

/// The same pairs as a `save_to_disk` folder (a `DatasetDict` around the Arrow stream, laid out
/// as `datasets` writes it), a Parquet file and JSON Lines (written here, an extra column among
/// them): identical pairs, row for row.
#[test]
fn a_dataset_folder_parquet_and_jsonl_of_the_same_data_give_the_same_pairs() {
    let expected = read(fixture("standard.parquet")).unwrap();
    let dir = temp("same-data");
    let folder = dir.join("dataset");
    std::fs::create_dir_all(folder.join("train")).unwrap();
    std::fs::write(folder.join("dataset_dict.json"), r#"{"splits": ["train"]}"#).unwrap();
    std::fs::write(
        folder.join("train/state.json"),
        r#"{"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": "train"}"#,
    )
    .unwrap();
    std::fs::copy(
        fixture("standard_large.arrows"),
        folder.join("train/data-00000-of-00001.arrow"),
    )
    .unwrap();
    let jsonl = dir.join("pairs.jsonl");
    let lines: Vec<String> = expected
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p.row, "prompt": text(&p.prompt), "chosen": text(&p.chosen),
                "rejected": text(&p.rejected),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    assert_eq!(read(folder.clone()).unwrap(), expected);
    assert_eq!(split(folder, "train").unwrap(), expected);
    assert_eq!(read(jsonl).unwrap(), expected);
}

#[test]
fn conversational_shapes_and_implicit_prompts() {
    let m = |r: &str, c: &str| Message {
        role: r.into(),
        content: c.into(),
    };
    let pairs = read(fixture("implicit_conversational.arrow")).unwrap();
    assert_eq!(
        pairs[1].prompt,
        Turns::Messages(vec![
            m("system", "Be brief."),
            m("user", "Capital of France?")
        ])
    );
    assert_eq!(
        pairs[1].rejected,
        Turns::Messages(vec![m("assistant", "Lyon.")])
    );
    let mapped = read_pairs(&DataSource {
        columns: Columns {
            prompt: Some("question".into()),
            chosen: Some("good".into()),
            rejected: Some("bad".into()),
        },
        ..DataSource::new(fixture("conversational.arrows"))
    })
    .unwrap();
    assert_eq!(
        mapped[0].prompt,
        Turns::Messages(vec![m("user", "What color is the sky?")])
    );
    assert!(mapped[0].is_conversational());
}

/// Bad inputs: each refused as the variant naming what was wrong, where.
#[test]
fn bad_inputs_name_the_file_row_and_column() {
    let e = read(fixture("null_chosen.parquet")).unwrap_err();
    assert!(
        matches!(&e, DataError::Value { row: 1, column, why, .. } if column == "chosen" && why == "null"),
        "{e}"
    );
    let e = read(fixture("int_chosen.parquet")).unwrap_err();
    assert!(
        matches!(&e, DataError::Type { column, .. } if column == "chosen"),
        "{e}"
    );
    for f in ["truncated.parquet", "truncated.arrows"] {
        let e = read(fixture(f)).unwrap_err();
        assert!(matches!(e, DataError::Malformed { .. }), "{f}: {e}");
        assert!(e.to_string().contains(f), "{e}");
    }
    let e = read(fixture("empty.parquet")).unwrap_err();
    assert!(matches!(e, DataError::Empty { .. }), "{e}");
    let e = read_pairs(&DataSource {
        columns: Columns {
            prompt: Some("instruction".into()),
            ..Columns::default()
        },
        ..DataSource::new(fixture("standard.parquet"))
    })
    .unwrap_err();
    match &e {
        DataError::NoColumn { column, found, .. } => {
            assert_eq!(column, "instruction");
            assert!(found.contains(&"score".to_string()));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("columns.prompt"), "{e}");
    let e = read(fixture("absent.parquet")).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
    // Brotli is not among the codecs built in (snappy, gzip, zstd, lz4): refused naming the
    // file and the codec.
    let e = read(fixture("standard_brotli.parquet")).unwrap_err();
    assert!(e.to_string().contains("standard_brotli.parquet"), "{e}");
    assert!(e.to_string().to_lowercase().contains("brotli"), "{e}");
}

/// JSON Lines and JSON arrays: standard rows, TRL's implicit text prompt, and every bad row named.
#[test]
fn jsonl_rows_and_their_errors() {
    let d = temp("jsonl");
    let f = d.join("pairs.jsonl");
    std::fs::write(
        &f,
        "{\"chosen\": \"The sky is blue.\", \"rejected\": \"The sky is green.\", \"id\": 1}\n\n\
         {\"chosen\": \"Q: 2+2? A: 4\", \"rejected\": \"Q: 2+2? A: 5\"}\n",
    )
    .unwrap();
    let pairs = read(f.clone()).unwrap();
    assert_eq!(
        (
            text(&pairs[0].prompt),
            text(&pairs[0].chosen),
            text(&pairs[0].rejected)
        ),
        ("The sky is", " blue.", " green.")
    );
    assert_eq!(pairs[1].row, 1);
    let arr = d.join("pairs.json");
    std::fs::write(
        &arr,
        "[{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}]",
    )
    .unwrap();
    assert_eq!(text(&read(arr).unwrap()[0].prompt), "p");
    for (body, row, what) in [
        ("{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"chosen\": 3, \"rejected\": \"b\"}\n", 1, "a number"),
        ("{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"rejected\": \"b\"}\n", 1, "missing"),
        ("{\"prompt\": \"p\", \"chosen\": [{\"role\": \"assistant\"}], \"rejected\": \"b\"}\n", 0, "no \"content\""),
    ] {
        std::fs::write(&f, body).unwrap();
        let e = read(f.clone()).unwrap_err();
        assert!(
            matches!(&e, DataError::Value { row: r, column, why, .. } if *r == row && column == "chosen" && why.contains(what)),
            "{e}"
        );
    }
    std::fs::write(
        &f,
        b"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"\xff\"}\n",
    )
    .unwrap();
    let e = read(f.clone()).unwrap_err();
    assert!(
        matches!(&e, DataError::Malformed { row: Some(1), why, .. } if why.contains("UTF-8")),
        "{e}"
    );
    std::fs::write(&f, "{\"prompt\": \"p\", \"chosen\": \"a\"\n").unwrap();
    assert!(matches!(
        read(f.clone()).unwrap_err(),
        DataError::Malformed { row: Some(0), .. }
    ));
    let _ = std::fs::remove_dir_all(&d);
}

/// `rmflow lm-data`: bad data is exit 2 naming the row and column, with no output written; good
/// data is written as JSON Lines that read back as the same pairs.
#[test]
fn lm_data_command_exit_codes_and_output() {
    let d = temp("cli");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rmflow"))
            .arg("lm-data")
            .args(args)
            .output()
            .unwrap()
    };
    let out = d.join("pairs.jsonl");
    let bad = fixture("null_chosen.parquet");
    let o = run(&[
        "--data",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("row 1") && err.contains("\"chosen\""), "{err}");
    assert!(!out.exists(), "output written on an error");
    let good = fixture("implicit_conversational.arrow");
    let o = run(&[
        "--data",
        good.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = read(out.clone()).unwrap();
    assert_eq!(
        back.iter().map(|p| &p.chosen).collect::<Vec<_>>(),
        read(good)
            .unwrap()
            .iter()
            .map(|p| &p.chosen)
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&d);
}
