//! The device a run computes on (`--device cpu|cuda`).

use anyhow::{Context, Result};
use candle_core::Device;

/// The device of `--device cpu|cuda`; the error says why CUDA could not be opened.
pub fn open_device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" if !cfg!(feature = "cuda") => {
            return Err(crate::error::InputError(
                "--device cuda: this binary was built without CUDA support (rebuild with --features cuda; see the README's GPU section)".into(),
            )
            .into())
        }
        "cuda" => Device::new_cuda(0).context(
            "--device cuda: CUDA device 0 could not be opened (is a GPU visible, and libcuda.so.1 from its driver on the library path?)",
        )?,
        other => {
            return Err(crate::error::InputError(format!(
                "--device must be cpu or cuda, got {other:?}"
            ))
            .into())
        }
    })
}
