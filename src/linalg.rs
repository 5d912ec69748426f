//! The one single-threaded f32 matrix product nerp calls directly (the predictor trainer,
//! the distillation convolution). Callers parallelize over fixed parts of their work, so results
//! do not depend on the number of cores, and gemm's own threads would oversubscribe the cores
//! those parts already occupy.

/// `c (m×n) = op(a) (m×k) · op(b) (k×n)`, or `c += …` when `accumulate`; all row-major.
/// `ta`/`tb`: the operand is stored transposed (`a` as k×m, `b` as n×k).
#[allow(clippy::too_many_arguments)] // the BLAS signature, kept whole
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "sgemm operands too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the assert above guarantees that every element addressed through these strides
    // (row < m / k, column < k / n) lies inside its slice; `c` is exclusively borrowed and does
    // not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Runs `f(part)` for `part in 0..parts` on up to `threads` scoped threads (each thread takes
/// a contiguous run of parts). Which thread runs a part never changes what it computes.
pub fn for_parts<T: Send>(items: &mut [T], threads: usize, f: impl Fn(usize, &mut T) + Sync) {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    if items.len() <= per {
        for (i, it) in items.iter_mut().enumerate() {
            f(i, it);
        }
        return;
    }
    let f = &f;
    std::thread::scope(|s| {
        for (t, chunk) in items.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (k, it) in chunk.iter_mut().enumerate() {
                    f(t * per + k, it);
                }
            });
        }
    });
}

/// Runs `f(job)` for every job in `0..jobs` on `threads` threads, each taking the next job
/// when done; the results in job order.
pub fn parallel<T: Send>(jobs: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<T>>> = (0..jobs).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return;
                }
                let r = f(i);
                *slots[i].lock().expect("no worker panicked") = Some(r);
            });
        }
    });
    slots.into_iter().map(|m| m.into_inner().expect("no worker panicked").expect("every job ran")).collect()
}

/// Makes candle's element-wise thread pool single-threaded (`CANDLE_NUM_THREADS=1`) unless
/// the environment already chooses. Its caller spins until the pool's workers finish, which on
/// 2 busy cores, between nerp's own parallel convolutions, cost more than it saved: one
/// distillation step (ResNet-20, batch 32, h = 64, load ≈ 7) took 2.0 s with one candle thread
/// and 2.9 s with two (`examples/distill_step.rs`). Call it first thing in `main`, before any
/// other thread exists (it sets an environment variable).
pub fn single_threaded_candle() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keeps the memory the training loops free in the process (glibc: blocks under 32 MiB come from
/// the heap, and the heap is not trimmed below 1 GiB), so that each step reuses the last step's
/// activations instead of unmapping and faulting them in again. Measured on ResNet-20
/// `--size-ratio 45 --data` (800 fine-tuning steps of 32 images, 2 cores): system time 46 s → 9 s,
/// fine-tuning 157.7 s → 130.6 s, the same file. Process-wide; called by the loops that run the
/// network ([`crate::compress::finetune`], [`crate::compress::distill`]), never on the
/// streaming LLM path, whose peak memory is measured with glibc's defaults.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called with valid
    // parameters, and its failure (0) leaves the defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Cores available to this process.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `‖a − b‖ / ‖a‖` (0 when both are zero, ∞ when only `a` is).
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut se, mut ss) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        se += (*x as f64 - *y as f64).powi(2);
        ss += (*x as f64).powi(2);
    }
    match (se, ss) {
        (0.0, _) => 0.0,
        (_, 0.0) => f64::INFINITY,
        _ => (se / ss).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_the_norm_of_the_difference_over_the_norm() {
        assert_eq!(relative_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_error(&[3.0, 4.0], &[0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(relative_error(&[0.0], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn sgemm_transposes_and_accumulates() {
        // a = [[1,2,3],[4,5,6]] (2×3), b = [[1,0],[0,1],[1,1]] (3×2): a·b = [[4,5],[10,11]].
        let a = [1f32, 2., 3., 4., 5., 6.];
        let at = [1f32, 4., 2., 5., 3., 6.];
        let b = [1f32, 0., 0., 1., 1., 1.];
        let bt = [1f32, 0., 1., 0., 1., 1.];
        let mut c = [0f32; 4];
        sgemm(2, 2, 3, &a, false, &b, false, &mut c, false);
        assert_eq!(c, [4., 5., 10., 11.]);
        sgemm(2, 2, 3, &at, true, &bt, true, &mut c, true);
        assert_eq!(c, [8., 10., 20., 22.]);
    }
}
