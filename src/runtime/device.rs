//! Where weights are regenerated: `auto`, `cpu`, `cuda`, `cuda:N`.

use crate::error::{Error, Result};
use crate::predictor::gpu::Gpu;
use std::sync::Arc;

/// A device that regenerates weights. Training always runs on the CPU.
#[derive(Debug, Clone)]
pub enum Device {
    /// The CPU (candle's CPU backend, all cores).
    Cpu,
    /// An NVIDIA GPU (only constructible with the `cuda` feature).
    Cuda(Arc<Gpu>),
}

impl Device {
    /// A short name for messages: "cpu", "cuda:0 (NVIDIA H200)".
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(g) => format!("cuda:{} ({})", g.ordinal(), g.name()),
        }
    }
}

/// Parses a device name and opens it. `auto` picks the first CUDA GPU when nerp is built with
/// the `cuda` feature and the driver reports one, else the CPU; [`open_auto`] also says why.
pub fn open(name: &str) -> Result<Device> {
    if name == "auto" {
        return Ok(open_auto().0);
    }
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => Some(0),
        Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()),
        None => None,
    };
    let ordinal = ordinal.ok_or_else(|| Error::Device {
        device: name.into(),
        what: "expected auto, cpu, cuda or cuda:N".into(),
    })?;
    Ok(Device::Cuda(Arc::new(Gpu::open(ordinal)?)))
}

/// The `auto` choice and, when it is the CPU, why no GPU was used.
pub fn open_auto() -> (Device, Option<String>) {
    match Gpu::unavailable_reason() {
        Some(why) => (Device::Cpu, Some(why)),
        None => match Gpu::open(0) {
            Ok(g) => (Device::Cuda(Arc::new(g)), None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        },
    }
}
