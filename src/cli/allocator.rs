//! glibc's allocator tuned for candle's tensors: a tensor of a few MiB is above glibc's default
//! mmap threshold, so every op's output was a fresh `mmap` whose pages fault in one by one and go
//! back to the kernel when dropped (a quarter of a Hamiltonian-cycle pretraining step was spent in
//! page faults). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold keeps
//! freed blocks in the heap for the next op: 13.9 → 9.9 s for 60 pretraining steps
//! (docs/performance.md). Memory is returned when the process exits; the peak is unchanged.
//! A user's own `GLIBC_TUNABLES` / `MALLOC_*` settings win (nothing is changed when one is set).

/// Applies the settings (glibc on Linux; a no-op elsewhere).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || k.starts_with("MALLOC_")
        });
        if !user_set {
            // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}
