//! Parameter sweeps over seeds: accuracy of both reward models as a function of one parameter,
//! mean and 95 % interval (Student t) over seeds. One code path for the CLI and the figures.
//! [`file`](mod@file) reads a sweep, [`run`](mod@run) runs and aggregates it, [`shard`] splits it into slices and
//! merges them.

pub mod file;
pub mod run;
pub mod shard;

pub use file::{SweepFile, SweepParameter, SweepSpec, Unit};
pub use run::{
    aggregate, estimated_cost, mean_ci95, run_sweep, run_unit, run_units, student_t975, sweep_csv,
    write_sweep_into, SweepRow, UnitResult,
};
pub use shard::{
    merge_shards, parse_shard, shard_assignment, shard_file_name, slurm_shard, Merged, ShardFile,
    ShardUnit, SlurmShard, SHARD_FORMAT,
};
