//! Output and resources: atomic folders and files, the on-disk layout of a run, and the memory
//! estimate checked before a run starts.

pub mod atomic;
pub mod layout;
pub mod resources;
