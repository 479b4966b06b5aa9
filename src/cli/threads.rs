//! The thread count: `RAYON_NUM_THREADS` is honoured up to [`OVERSUBSCRIPTION`] times the
//! available parallelism, so that a typo (`RAYON_NUM_THREADS=100000`) does not spend minutes
//! starting threads. Results do not depend on the count (same seed, bit-identical output).

/// The most threads per available core.
pub const OVERSUBSCRIPTION: usize = 4;

/// Builds rayon's global pool with the requested count, capped, and warns when it caps.
pub fn cap_rayon_threads() {
    let Some(asked) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = OVERSUBSCRIPTION * cores;
    if asked > cap {
        eprintln!(
            "warning: RAYON_NUM_THREADS = {asked} is more than {OVERSUBSCRIPTION} × the {cores} available cores; using {cap} threads"
        );
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(cap)
            .build_global();
    }
}
