//! The machine a run's steps ran on, as far as it decides their bits. A resumed or replayed run
//! equals an uninterrupted one bit for bit on the same kernels; the CPU kernels are picked at run
//! time (`gemm`'s AVX-512 or AVX2/FMA ones, `rten-vecmath`'s, rmflow's own lanes), and `gemm`
//! splits a matmul's inner dimension by the data cache's geometry, so another CPU can round
//! differently. A checkpoint records each machine its run went on, from the step where it took
//! over, so that a `--replay` that departs from its record names both machines.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What of a machine can change a run's bits (and its thread count, which does not: recorded
/// as provenance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU's model name (Linux: `/proc/cpuinfo`), else the architecture.
    pub cpu: String,
    /// The SIMD extensions present among those the kernels pick between (`avx512f`, `avx2`,
    /// `fma` on x86-64; `neon` on AArch64).
    pub simd: Vec<String>,
    /// The L1 data, L2 and L3 caches as `gemm` reads them (it blocks its matmuls by them):
    /// `[bytes, associativity, line bytes]` each.
    pub caches: Vec<[usize; 3]>,
    /// candle's CPU threads.
    pub threads: usize,
}

/// A machine a run went on, from its step `from_step` (1-based: the first step it ran, or the
/// one after the last step when it took over for an evaluation only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpan {
    pub from_step: usize,
    pub machine: Machine,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        let caches = gemm_common::cache::CACHE_INFO
            .iter()
            .map(|c| [c.cache_bytes, c.associativity, c.cache_line_bytes])
            .collect();
        Machine {
            cpu: cpu_name(),
            simd: simd(),
            caches,
            threads: candle_core::utils::get_num_threads(),
        }
    }
}

/// `spans` with `this` taking over from step `from_step`, where it is not the last one.
pub fn took_over(spans: &mut Vec<MachineSpan>, this: Machine, from_step: usize) {
    if spans.last().map(|s| &s.machine) != Some(&this) {
        spans.push(MachineSpan {
            from_step,
            machine: this,
        });
    }
}

/// The machines of a record, from the first step they were recorded at (none where the record
/// predates them).
pub struct Spans<'a>(pub &'a [MachineSpan]);

impl fmt::Display for Spans<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(
                f,
                "on machines not recorded (a checkpoint older than the record of them)"
            );
        }
        let first = self.0[0].from_step;
        if first > 1 {
            // A run that went on with a build recording machines from a checkpoint without.
            write!(f, "on machines not recorded up to step {}; ", first - 1)?;
        }
        for (k, s) in self.0.iter().enumerate() {
            let sep = if k == 0 { "" } else { "; " };
            write!(f, "{sep}on {} from step {}", s.machine, s.from_step)?;
        }
        Ok(())
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.cpu, self.simd.join(" "))?;
        for (name, [bytes, ways, line]) in ["L1d", "L2", "L3"].iter().zip(&self.caches) {
            write!(f, "; {name} {} KiB {ways}-way {line} B", bytes / 1024)?;
        }
        write!(f, "; {} threads)", self.threads)
    }
}

fn cpu_name() -> String {
    let from_proc = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    from_proc.unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(target_arch = "x86_64")]
fn simd() -> Vec<String> {
    let found = [
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
    ];
    found
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n.to_string())
        .collect()
}

#[cfg(target_arch = "aarch64")]
fn simd() -> Vec<String> {
    if std::arch::is_aarch64_feature_detected!("neon") {
        vec!["neon".to_string()]
    } else {
        Vec::new()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd() -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cpu: &str, threads: usize) -> Machine {
        Machine {
            cpu: cpu.to_string(),
            simd: vec!["avx2".into()],
            caches: vec![[32768, 8, 64]],
            threads,
        }
    }

    #[test]
    fn a_machine_takes_over_only_where_it_is_another() {
        let mut spans = Vec::new();
        took_over(&mut spans, machine("A", 2), 1);
        took_over(&mut spans, machine("A", 2), 9);
        assert_eq!(spans.len(), 1);
        took_over(&mut spans, machine("B", 2), 12);
        took_over(&mut spans, machine("B", 4), 15);
        let from: Vec<usize> = spans.iter().map(|s| s.from_step).collect();
        assert_eq!(from, [1, 12, 15]);
        let shown = Spans(&spans).to_string();
        let first = "on A (avx2; L1d 32 KiB 8-way 64 B; 2 threads) from step 1; on B";
        assert!(shown.starts_with(first), "{shown}");
        assert!(shown.contains("2 threads) from step 12; on B"), "{shown}");
        assert!(shown.ends_with("4 threads) from step 15"), "{shown}");
        let later = Spans(&spans[1..]).to_string();
        assert!(
            later.starts_with("on machines not recorded up to step 11; on B"),
            "{later}"
        );
    }

    #[test]
    fn this_machine_names_its_caches() {
        let m = Machine::this();
        assert!(!m.cpu.is_empty());
        assert_eq!(m.caches.len(), 3);
        assert!(m.caches.iter().all(|c| c[0] > 0 && c[2] > 0), "{m}");
        assert!(m.threads >= 1);
    }
}
