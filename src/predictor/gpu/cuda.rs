//! The GPU backend: cudarc (driver + cuBLAS, loaded at run time) and the PTX of `kernels.cu`.

use crate::error::{Error, Result};
use crate::format::predictor::{frequencies, ParamLayout, DEPTH, OUTPUTS};
use crate::format::Embedding;
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::fmt::Display;
use std::sync::Arc;

use super::{KERNELS_CU, KERNELS_PTX};
const THREADS: u32 = 256;

/// An opened NVIDIA GPU with nerp's kernels loaded.
pub struct Gpu {
    ordinal: usize,
    name: String,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    embed: CudaFunction,
    bias_act: CudaFunction,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{}, {})", self.ordinal, self.name)
    }
}

/// Why the CUDA libraries cannot be loaded, if they cannot.
fn missing_library() -> Option<&'static str> {
    // SAFETY: both functions only try to dlopen the libraries under their usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("the NVIDIA driver (libcuda.so.1) was not found on this machine");
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Some(
            "cuBLAS (libcublas.so) was not found: install the CUDA toolkit's cuBLAS (or the \
             nvidia-cublas wheel) and add its directory to LD_LIBRARY_PATH",
        );
    }
    None
}

/// The NVRTC release that made `kernels.ptx` (tools/gen_ptx.sh pins it).
pub const NVRTC_VERSION: (i32, i32) = (12, 4);

/// Compiles [`KERNELS_CU`] to PTX as tools/gen_ptx.sh does; `None` unless NVRTC
/// [`NVRTC_VERSION`] can be loaded (other releases write different PTX, and 13.x no longer
/// targets `compute_70`).
pub fn compile_kernels() -> Option<std::result::Result<String, String>> {
    // SAFETY: only tries to dlopen libnvrtc under its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS || (major, minor) != NVRTC_VERSION {
        return None;
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some("compute_70"),
        name: Some("kernels.cu".into()),
        fmad: Some(false),
        ..Default::default()
    };
    Some(
        cudarc::nvrtc::compile_ptx_with_opts(KERNELS_CU, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}")),
    )
}

fn launch_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

impl Gpu {
    /// Why `open(0)` would fail, or `None` when a GPU can be used.
    pub fn unavailable_reason() -> Option<String> {
        if let Some(why) = missing_library() {
            return Some(why.into());
        }
        match CudaContext::device_count() {
            Ok(0) => Some("the NVIDIA driver reports no CUDA device".into()),
            Ok(_) => None,
            Err(e) => Some(format!("the CUDA driver failed to start: {e}")),
        }
    }

    /// Opens GPU `ordinal`, loads the kernels and creates a cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let fail = |what: String| Error::Device { device: format!("cuda:{ordinal}"), what };
        if let Some(why) = missing_library() {
            return Err(fail(format!("{why}; use --device cpu")));
        }
        let count =
            CudaContext::device_count().map_err(|e| fail(format!("the CUDA driver failed to start: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(fail(format!(
                "this machine has {count} CUDA device(s); use cuda:0 … or --device cpu"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| fail(format!("cannot open the GPU: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let module = ctx
            .load_module(Ptx::from_src(KERNELS_PTX))
            .map_err(|e| fail(format!("the driver cannot load nerp's kernels (PTX for compute_70): {e}")))?;
        let function = |n: &str| module.load_function(n).map_err(|e| fail(format!("kernel {n}: {e}")));
        let (embed, bias_act) = (function("nerp_embed")?, function("nerp_bias_act")?);
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| fail(format!("cannot start cuBLAS: {e}")))?;
        Ok(Gpu { ordinal, name, stream, blas, embed, bias_act })
    }

    /// The ordinal this GPU was opened with.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's name as the driver reports it (e.g. "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the predictor with `hidden` units, `embedding` and flat f32 parameters (storage
    /// order, [`ParamLayout`]) over flat `N×3` coordinates, `batch` rows at a time; returns `N×9`
    /// values.
    pub fn predict(
        &self,
        hidden: usize,
        embedding: Embedding,
        flat: &[f32],
        coords: &[f32],
        batch: usize,
    ) -> Result<Vec<f32>> {
        crate::predictor::flat_layout(hidden, embedding, flat)?;
        self.forward(hidden, embedding, flat, coords, batch.max(1))
            .map_err(|what| Error::Gpu { device: format!("cuda:{}", self.ordinal), what })
    }

    fn forward(
        &self,
        hidden: usize,
        embedding: Embedding,
        flat: &[f32],
        coords: &[f32],
        batch: usize,
    ) -> std::result::Result<Vec<f32>, String> {
        fn ctx<E: Display>(what: &'static str) -> impl FnOnce(E) -> String {
            move |e| format!("{what}: {e}")
        }
        let s = &self.stream;
        let levels = embedding.levels as usize;
        let layout = ParamLayout::new(hidden, levels);
        let dims = layout.dims;
        let mut layers = Vec::with_capacity(DEPTH);
        for l in 0..DEPTH {
            let w = s.clone_htod(&flat[layout.weight(l)]).map_err(ctx("upload weights"))?;
            let b = s.clone_htod(&flat[layout.bias(l)]).map_err(ctx("upload biases"))?;
            layers.push((w, b));
        }
        let freqs = s.clone_htod(&frequencies(embedding)).map_err(ctx("upload frequencies"))?;
        let n = coords.len() / 3;
        let coords = s.clone_htod(coords).map_err(ctx("upload coordinates"))?;
        let width = dims.iter().map(|&(i, o)| i.max(o)).max().unwrap_or(OUTPUTS);
        let buffer = n.clamp(1, batch) * width;
        let mut a: CudaSlice<f32> = s.alloc_zeros(buffer).map_err(ctx("allocate activations"))?;
        let mut b: CudaSlice<f32> = s.alloc_zeros(buffer).map_err(ctx("allocate activations"))?;
        let mut out = Vec::with_capacity(n * OUTPUTS);
        for start in (0..n).step_by(batch) {
            let rows = (start + batch).min(n) - start;
            let chunk = coords.slice(start * 3..(start + rows) * 3);
            let mut launch = s.launch_builder(&self.embed);
            let (rows_i, levels_i) = (rows as i32, levels as i32);
            launch.arg(&chunk).arg(&freqs).arg(&mut a).arg(&rows_i).arg(&levels_i);
            // SAFETY: the kernel writes rows·6·levels values into `a`, which holds
            // batch·width ≥ rows·input_dim(levels); it reads rows·3 coordinates and `levels` frequencies.
            unsafe { launch.launch(launch_config(rows * 3 * levels)) }.map_err(ctx("embedding kernel"))?;
            let (mut x, mut y) = (&mut a, &mut b);
            for (l, ((i, o), (w, bias))) in dims.iter().zip(&layers).enumerate() {
                // Row-major x (rows×i) · w (i×o) = y (rows×o) is, column-major, yᵀ = wᵀ·xᵀ.
                let cfg = GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_N,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: *o as i32,
                    n: rows as i32,
                    k: *i as i32,
                    alpha: 1.0f32,
                    lda: *o as i32,
                    ldb: *i as i32,
                    beta: 0.0f32,
                    ldc: *o as i32,
                };
                // SAFETY: w is i×o, x holds ≥ rows·i values and y ≥ rows·o (both batch·width).
                unsafe { self.blas.gemm(cfg, w, &*x, &mut *y) }.map_err(ctx("cuBLAS sgemm"))?;
                let (total, cols, relu) = ((rows * o) as i64, *o as i32, i32::from(l + 1 < DEPTH));
                let mut launch = s.launch_builder(&self.bias_act);
                launch.arg(&mut *y).arg(bias).arg(&total).arg(&cols).arg(&relu);
                // SAFETY: the kernel touches y[0..total] and bias[0..cols], both allocated.
                unsafe { launch.launch(launch_config(rows * o)) }.map_err(ctx("bias kernel"))?;
                std::mem::swap(&mut x, &mut y);
            }
            let values = s.clone_dtoh(&x.slice(0..rows * OUTPUTS)).map_err(ctx("download weights"))?;
            out.extend(values);
        }
        Ok(out)
    }
}
