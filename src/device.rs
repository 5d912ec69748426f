//! Device selection: `auto`, `cpu`, `cuda`, `cuda:N`.

use crate::error::{Error, Result};
use candle_core::Device;

/// Parses a device name and opens it. `auto` picks the first CUDA GPU when nerp is built with
/// the `cuda` feature and one is present, else the CPU.
pub fn open(name: &str) -> Result<Device> {
    let bad = |what: &str| Error::Device { device: name.into(), what: what.into() };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| bad("expected auto, cpu, cuda or cuda:N"))?,
                None => return Err(bad("expected auto, cpu, cuda or cuda:N")),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad("this nerp was built without CUDA support; rebuild with `--features cuda`, or use --device cpu"));
            }
            Device::new_cuda(ordinal).map_err(|e| bad(&format!("cannot open the GPU: {e}")))
        }
    }
}

/// A short name for messages ("cpu", "cuda:0").
pub fn describe(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match d.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}
