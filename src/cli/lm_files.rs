//! The real-model commands that write model files: `lm-convert`, `lm-import-gguf`, `lm-tiny`,
//! `lm-forward` (feature `lm`).

use super::args::OutputFlags;
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::io::atomic::{check_not_overwriting_input, AtomicDir, AtomicFile, OutputKind, Replace};
use rmflow::io::resources::human_bytes;
use rmflow::lm::checkpoint::{convert, gguf, tiny};
use rmflow::lm::{open_device, recipe};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct LmConvertArgs {
    /// Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// f16 or bf16.
    #[arg(long, default_value = "f16", value_parser = ["f16", "bf16"])]
    dtype: String,
    /// Output folder, written atomically (with rmflow-convert.json describing the copy).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(clap::Args)]
pub struct LmImportGgufArgs {
    /// The GGUF file (general.architecture = llama, byte-level BPE tokenizer).
    #[arg(long)]
    gguf: PathBuf,
    /// Output folder, written atomically.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(clap::Args)]
pub struct LmTinyArgs {
    /// Output folder, written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Also give the vocabularies every word of this recipe config (statements, prefixes,
    /// words), so that `rmflow lm-recipe` runs on the tiny checkpoints.
    #[arg(long)]
    recipe: Option<PathBuf>,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(clap::Args)]
pub struct LmForwardArgs {
    /// Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// JSON file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run_convert(a: LmConvertArgs) -> Result<()> {
    let dtype = convert::parse_half_dtype(&a.dtype).map_err(|e| InputError(e.to_string()))?;
    check_not_overwriting_input(&a.model, &a.out)?;
    let c = convert::convert_checkpoint(&a.model, &a.out, dtype, a.output.replace())?;
    outln!(
        "wrote {}: {} tensors cast to {}, {} kept, {} other files copied; safetensors {} → {}",
        a.out.display(),
        c.cast,
        c.dtype,
        c.kept,
        c.files.len(),
        human_bytes(c.bytes_before as f64),
        human_bytes(c.bytes_after as f64)
    );
    Ok(())
}

pub fn run_import_gguf(a: LmImportGgufArgs) -> Result<()> {
    check_not_overwriting_input(&a.gguf, &a.out)?;
    let t = Instant::now();
    eprintln!(
        "lm-import-gguf: reading and dequantising {}",
        a.gguf.display()
    );
    let r = gguf::import_gguf(&a.gguf, &a.out, a.output.replace())?;
    outln!(
        "wrote {}: {} tensors ({}), {:.1} M parameters as f32, vocabulary {} with {} merges, pre-tokenizer {:?}, chat template {}; {:.1} s",
        a.out.display(),
        r.tensors,
        r.tensor_types
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.parameters as f64 / 1e6,
        r.vocab_size,
        r.merges,
        r.pre_tokenizer,
        if r.chat_template { "kept" } else { "none" },
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run_tiny(a: LmTinyArgs) -> Result<()> {
    let mut texts = tiny::probe_texts();
    if let Some(path) = &a.recipe {
        check_not_overwriting_input(path, &a.out)?;
        let file = recipe::RecipeFile::from_file(path)?;
        for input in file.data_paths() {
            check_not_overwriting_input(input, &a.out)?;
        }
        texts.extend(recipe::vocabulary_texts(&file)?);
    }
    let dir = AtomicDir::create_as(&a.out, a.output.replace(), OutputKind::Checkpoint)?;
    tiny::write_standard_set(&dir, &texts)?;
    outln!("wrote {}", dir.commit()?.display());
    Ok(())
}

pub fn run_forward(a: LmForwardArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    check_not_overwriting_input(&a.model, &a.out)?;
    let file = AtomicFile::create(&a.out, Replace::from_flags(a.force, false))?;
    let record = tiny::forward_record(&a.model, &device, &tiny::probe_texts())?;
    file.commit(&serde_json::to_string(&record)?)?;
    outln!("wrote {}", a.out.display());
    Ok(())
}
