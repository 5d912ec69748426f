//! Compiles src/predictor/gpu/kernels.cu to src/predictor/gpu/kernels.ptx with NVRTC (no GPU needed).
//! Run through tools/gen_ptx.sh, which fetches NVRTC from PyPI.

fn main() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/predictor/gpu/kernels.ptx");
    let result = match nerp::predictor::gpu::compile_kernels() {
        None => Err("NVRTC 12.4 (libnvrtc.so.12) not found; run tools/gen_ptx.sh".to_string()),
        Some(Ok(ptx)) => nerp::format::write_atomic(&out, ptx.as_bytes()).map_err(|e| e.to_string()),
        Some(Err(e)) => Err(format!("NVRTC could not compile src/predictor/gpu/kernels.cu: {e}")),
    };
    match result {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
