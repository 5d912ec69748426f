//! Regeneration on an NVIDIA GPU (`cuda` feature): the predictor's forward pass with cuBLAS for
//! the matrix products and two small kernels (`kernels.cu`, shipped as PTX) for the embedding and
//! bias + ReLU. cudarc loads the driver and cuBLAS when a GPU is first opened, so building needs
//! no CUDA toolkit. Without the feature a stand-in with the same API reports that the build has
//! no GPU support, so callers need no `#[cfg]`.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub use cuda::{compile_kernels, Gpu};

#[cfg(not(feature = "cuda"))]
mod dummy;
#[cfg(not(feature = "cuda"))]
pub use dummy::Gpu;

/// The kernels' CUDA source.
pub const KERNELS_CU: &str = include_str!("kernels.cu");
/// [`KERNELS_CU`] compiled for `compute_70` by tools/gen_ptx.sh: it runs on Volta and every later
/// GPU through the driver's JIT, so no CUDA compiler is needed to build or run nerp.
pub const KERNELS_PTX: &str = include_str!("kernels.ptx");
