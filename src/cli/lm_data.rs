//! `rmflow lm-data`: reads one split of a preference dataset as the experiments will
//! (`lm::data::preference`), prints what it found, and optionally writes it as JSON Lines.

use anyhow::Result;
use rmflow::io::atomic::{AtomicFile, Replace};
use rmflow::lm::data::preference::{read_pairs, Columns, DataFormat, DataSource, Turns};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LmDataArgs {
    /// A `save_to_disk` folder (dataset_dict.json or one split's state.json), an Arrow IPC file
    /// (stream or file format), a Parquet file, or JSON Lines / a JSON array.
    #[arg(long)]
    data: PathBuf,
    /// The split of a DatasetDict folder (needed where it lists several).
    #[arg(long)]
    split: Option<String>,
    /// The format, where the path does not say it.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The prompt column (default `prompt`; absent from the data: the prompt is implicit in
    /// both responses, extracted as TRL does).
    #[arg(long)]
    prompt_column: Option<String>,
    /// The chosen-response column (default `chosen`).
    #[arg(long)]
    chosen_column: Option<String>,
    /// The rejected-response column (default `rejected`).
    #[arg(long)]
    rejected_column: Option<String>,
    /// Write the pairs as JSON Lines (`row`, `prompt`, `chosen`, `rejected`: strings, or lists
    /// of `{role, content}` messages), atomically.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    HfDataset,
    Arrow,
    Parquet,
    Json,
}

pub fn run(a: LmDataArgs) -> Result<()> {
    let source = DataSource {
        path: a.data.clone(),
        split: a.split.clone(),
        format: a.format.map(|f| match f {
            FormatArg::HfDataset => DataFormat::HfDataset,
            FormatArg::Arrow => DataFormat::Arrow,
            FormatArg::Parquet => DataFormat::Parquet,
            FormatArg::Json => DataFormat::Json,
        }),
        columns: Columns {
            prompt: a.prompt_column.clone(),
            chosen: a.chosen_column.clone(),
            rejected: a.rejected_column.clone(),
        },
    };
    let target = match &a.out {
        Some(p) => Some(AtomicFile::create(p, Replace::from_flags(a.force, false))?),
        None => None,
    };
    let pairs = read_pairs(&source)?;
    let chars = |t: &Turns| match t {
        Turns::Text(s) => s.chars().count(),
        Turns::Messages(m) => m.iter().map(|x| x.content.chars().count()).sum(),
    };
    let mean = |f: &dyn Fn(&rmflow::lm::data::preference::PreferencePair) -> usize| {
        pairs.iter().map(f).sum::<usize>() as f64 / pairs.len() as f64
    };
    outln!(
        "{}{}: {} pairs, {} ({:?} format); mean characters: prompt {:.0}, chosen {:.0}, rejected {:.0}",
        a.data.display(),
        a.split.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default(),
        pairs.len(),
        if pairs[0].is_conversational() { "conversational" } else { "standard" },
        source.format(),
        mean(&|p| chars(&p.prompt)),
        mean(&|p| chars(&p.chosen)),
        mean(&|p| chars(&p.rejected)),
    );
    outln!("row 0: {}", serde_json::to_string(&pairs[0])?);
    if let Some(t) = target {
        let mut jsonl = String::new();
        for p in &pairs {
            jsonl.push_str(&serde_json::to_string(p)?);
            jsonl.push('\n');
        }
        outln!("wrote {}", t.commit(&jsonl)?.display());
    }
    Ok(())
}
