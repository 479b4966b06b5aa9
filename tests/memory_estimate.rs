//! `dynamics`' memory estimate against the peak resident memory of a run where the ρ matrices
//! and velocity blocks dominate (the issue: a run estimated to fit passed 14 GiB). Alone in its
//! test binary, so that the children's peak (`getrusage(RUSAGE_CHILDREN)`) is this run's.

use rmflow::config::Config;
use rmflow::io::resources::{estimate, human_bytes, Workload};
use std::process::Command;

const CONFIG: &str = "seed = 5\n[setup]\ndim = 8\ngood_seen = 2\ngood_unseen = 2\nbad_seen = 2\nbad_unseen = 2\nfiller_tokens = 8\ntrain_pairs = 1500\neval_pairs = 300\n[train]\nt_max = 1e2\nobservations_per_decade = 1\n";

#[test]
fn the_dynamics_estimate_covers_the_measured_peak_and_errs_high_by_less_than_4x() {
    let dir = std::env::temp_dir().join(format!("rmflow-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg_path = dir.join("dyn.toml");
    std::fs::write(&cfg_path, CONFIG).unwrap();
    let config = Config::from_file(&cfg_path).unwrap();
    let est = estimate(&config, Workload::Dynamics);
    let o = Command::new(env!("CARGO_BIN_EXE_rmflow"))
        .args(["dynamics", "--config", cfg_path.to_str().unwrap()])
        .args(["--out", dir.join("run").to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // SAFETY: getrusage writes the struct it is given.
    let peak = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u.ru_maxrss as f64 * 1024.0
    };
    eprintln!(
        "estimate {}, measured peak {}",
        est.describe(),
        human_bytes(peak)
    );
    assert!(
        est.bytes >= peak,
        "estimate {} below the measured peak {}",
        est.describe(),
        human_bytes(peak)
    );
    assert!(
        est.bytes <= 4.0 * peak,
        "estimate {} more than 4 × the measured peak {}",
        est.describe(),
        human_bytes(peak)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
