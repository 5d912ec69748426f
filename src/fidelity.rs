//! Fidelity metrics that need no labels: how close the regenerated model's outputs (or
//! weights) are to the original's.

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
