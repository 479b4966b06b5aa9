//! `rmflow sweep`: a parameter sweep over seeds, whole or one shard of it; `sweep merge`.

use super::args::OutputFlags;
use super::progress::progress_bar;
use super::tables::print_sweep_table;
use anyhow::Result;
use clap::Subcommand;
use rmflow::analysis::sweep::{self, SweepFile};
use rmflow::error::InputError;
use rmflow::io::atomic::{check_not_overwriting_input, AtomicDir, AtomicFile, Replace};
use rmflow::io::resources::{check_memory, Workload};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    action: Option<SweepAction>,
    /// Sweep file: `[sweep]` (parameter, values, seeds) and `[base]` config (e.g. experiments/overlap_sweep.toml).
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Output folder. Without --shard, written atomically: sweep.csv (the table) and sweep.toml
    /// (the resolved sweep file, with the rmflow version). With --shard, the folder that collects
    /// the shard files (shard-IIII-of-NNNN.json).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Run only slice I of N (0-based) of the sweep's units, balanced by estimated cost. Without
    /// it, SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are used when both are set.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    #[command(flatten)]
    output: OutputFlags,
    /// Run even if the estimated peak memory exceeds the memory available.
    #[arg(long)]
    ignore_memory_estimate: bool,
}

#[derive(Subcommand)]
enum SweepAction {
    /// Merge the shard files of one sweep into the table an unsharded run writes (byte-identical
    /// sweep.csv); every shard must be present, from the same sweep and rmflow version.
    Merge {
        /// Folder with the shard files.
        shard_dir: PathBuf,
        /// Output folder, written atomically (sweep.csv, sweep.toml).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputFlags,
    },
}

pub fn run(a: SweepArgs) -> Result<()> {
    if let Some(SweepAction::Merge {
        shard_dir,
        out,
        output,
    }) = a.action
    {
        return merge(&shard_dir, &out, output.replace());
    }
    let (config, out) = (
        a.config.expect("required by clap"),
        a.out.expect("required by clap"),
    );
    check_not_overwriting_input(&config, &out)?;
    let shard = shard_of(a.shard.as_deref())?;
    if shard.is_none() && out.extension().is_some_and(|e| e == "csv" || e == "toml") {
        return Err(InputError(format!(
            "--out {} names a file, but a sweep writes a folder (sweep.csv and sweep.toml inside): pass a folder path such as runs/my_sweep",
            out.display()
        ))
        .into());
    }
    let file = SweepFile::from_file(&config)?;
    for c in file.configs(0)? {
        check_memory(&c, Workload::Simulate, a.ignore_memory_estimate)?;
    }
    match shard {
        None => whole(&file, &config, &out, a.output.replace()),
        Some(s) => one_shard(&file, &config, &out, s, a.output.force),
    }
}

/// The shard of this process: `--shard I/N`, else a Slurm array task's (said on stderr).
fn shard_of(flag: Option<&str>) -> Result<Option<(usize, usize)>> {
    if let Some(s) = flag {
        return sweep::parse_shard(s).map(Some);
    }
    let Some(s) = sweep::slurm_shard(|k| std::env::var(k).ok())? else {
        return Ok(None);
    };
    eprintln!(
        "rmflow sweep: running shard {}/{} from SLURM_ARRAY_TASK_ID = {}, SLURM_ARRAY_TASK_COUNT = {} (SLURM_ARRAY_TASK_MIN = {})",
        s.shard.0, s.task_count, s.task_id, s.task_count, s.task_min
    );
    Ok(Some(s.shard))
}

fn merge(shard_dir: &Path, out: &Path, replace: Replace) -> Result<()> {
    check_not_overwriting_input(shard_dir, out)?;
    let dir = AtomicDir::create(out, replace)?;
    let merged = sweep::merge_shards(shard_dir)?;
    print_sweep_table(&merged.rows);
    sweep::write_sweep_into(&dir, &merged.file, &merged.source, &merged.rows)?;
    let written = dir.commit()?;
    outln!(
        "merged {} shards into {} (sweep.csv, sweep.toml)",
        merged.shards,
        written.display()
    );
    Ok(())
}

fn whole(file: &SweepFile, config: &Path, out: &Path, replace: Replace) -> Result<()> {
    let dir = AtomicDir::create(out, replace)?;
    let bar = progress_bar("sweep", file.units().len() as u64, "runs");
    let rows = sweep::run_sweep(file, &|| bar.inc("run done"))?;
    bar.finish();
    print_sweep_table(&rows);
    sweep::write_sweep_into(&dir, file, &config.display().to_string(), &rows)?;
    let written = dir.commit()?;
    outln!("wrote {} (sweep.csv, sweep.toml)", written.display());
    Ok(())
}

fn one_shard(
    file: &SweepFile,
    config: &Path,
    out: &Path,
    (i, n): (usize, usize),
    force: bool,
) -> Result<()> {
    let path = out.join(sweep::shard_file_name(i, n));
    check_not_overwriting_input(config, &path)?;
    let target = AtomicFile::create(&path, Replace::from_flags(force, false))?;
    let ids = sweep::shard_assignment(file, n)?.swap_remove(i);
    let bar = progress_bar(&format!("sweep shard {i}/{n}"), ids.len() as u64, "runs");
    let results = sweep::run_units(file, &ids, &|| bar.inc("run done"))?;
    bar.finish();
    let shard_file = sweep::ShardFile::new(file, config, (i, n), ids, &results)?;
    let written = target.commit(&(serde_json::to_string_pretty(&shard_file)? + "\n"))?;
    outln!(
        "wrote {} ({} of {} runs; merge with: rmflow sweep merge {} --out DIR)",
        written.display(),
        shard_file.units.len(),
        file.units().len(),
        out.display()
    );
    Ok(())
}
