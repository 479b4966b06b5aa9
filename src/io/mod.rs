//! Output and resources: atomic folders and files, CSV fields, what they may replace, their temporaries,
//! bounded reads of input files, the on-disk layout of a run, and the memory estimate checked
//! before a run starts.

pub mod atomic;
pub mod csv;
pub mod destination;
pub mod input;
pub mod layout;
pub mod resources;
mod temporary;
