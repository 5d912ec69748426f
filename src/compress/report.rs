//! What a compression did: per tensor, how the storage was chosen, and the file as a whole.

use crate::compress::distill::{self};

/// One line of the per-tensor report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<u64>,
    pub predicted: bool,
    /// `conv` or `matrix` for a predicted tensor, else why it is raw.
    pub stored: String,
    pub rmse: f64,
    /// RMSE ÷ RMS of the original values.
    pub rel_error: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Under a budget: the error this tensor's storage causes alone (see [`StorageReport`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_alone: Option<f64>,
}

/// How the storage of each tensor was chosen (`--size-ratio`, `--max-error`, or the default
/// check), and what it gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageReport {
    /// What had to be kept: `bytes <= N` or `error <= E`.
    pub budget: String,
    /// `output` (relative output error on calibration inputs) or `weights` (relative weight
    /// error; no calibration inputs).
    pub measure: &'static str,
    /// Inputs the allocation measured its candidates on (0 for `weights`).
    pub fit_inputs: usize,
    /// Inputs held back from the allocation, the file's error measured on them (0 for `weights`).
    pub check_inputs: usize,
    /// The error of the file the predictor alone would have given (the default check).
    pub predictor_only_error: Option<f64>,
    /// Whether a predictor is stored (the alternative: codecs only).
    pub with_predictor: bool,
    /// `√Σ` of the per-tensor errors.
    pub estimated_error: f64,
    /// The chosen model's error on the fit inputs, measured in one run (`output` only).
    pub fitted_error: Option<f64>,
    /// The chosen model's error on the held-back inputs, measured in one run (`output` only):
    /// the file's error.
    pub measured_error: Option<f64>,
    /// A one-sided 95% upper bound on the file's error over inputs like the held-back ones, from
    /// their spread ([`crate::compress::calibrate::upper_bound`]): what an error budget is
    /// checked against.
    pub error_bound: Option<f64>,
    /// Classifiers: top-1 agreement with the original on the held-back inputs (rows of the last
    /// axis).
    pub top1_agreement: Option<f64>,
    /// Classifiers with several rows per input (a CTC recognizer's time steps): the share of
    /// held-back inputs whose rows all agree.
    pub input_agreement: Option<f64>,
    /// Whether the budget is met (an error budget: its bound on the held-back inputs and the
    /// error on the fit inputs).
    pub met: bool,
    /// Every allocation tried, in order ([`AllocationTry`]).
    pub tries: Vec<AllocationTry>,
}

/// One allocation the budget tried: the target it was aimed at (bytes, or the estimated error),
/// and what its file measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AllocationTry {
    pub with_predictor: bool,
    pub target: crate::compress::choose::Budget,
    pub bytes: u64,
    /// The error the budget is checked against (the held-back bound, or the fitted error).
    pub error: f64,
    pub met: bool,
}

/// What a compression did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressReport {
    pub tensors: Vec<TensorReport>,
    pub hidden: usize,
    pub predictor_params: usize,
    /// Values of the predicted tensors.
    pub represented: usize,
    pub source_bytes: u64,
    pub file_bytes: u64,
    pub seconds: f64,
    pub steps: usize,
    pub final_loss: f64,
    /// RMSE over all predicted weights (after storing the predictor in its dtype).
    pub weight_rmse: f64,
    /// Training steps that computed with the stored (int8/int4) predictor, straight-through
    /// (0: the float dtypes, or `--qat-fraction 0`).
    pub qat_steps: usize,
    /// Losses of every distillation step (empty for `--schedule recon`).
    pub kd_losses: Vec<distill::KdLosses>,
    /// What the user should know about the file (e.g. that tract cannot run the model).
    pub warnings: Vec<String>,
    /// How the storage per tensor was chosen; `None`: predicted tensors as planned, the others
    /// with `--raw-codec`.
    pub storage: Option<StorageReport>,
    /// Distillation of the chosen file's codes, when it ran.
    pub finetune: Option<crate::compress::finetune::FinetuneReport>,
    /// What the short training on a sample said before the predictor's training
    /// ([`crate::compress::serve::probe`]); `None` where none ran.
    pub probe: Option<crate::compress::serve::Probe>,
}

impl CompressReport {
    /// Represented weights ÷ predictor parameters.
    pub fn param_ratio(&self) -> f64 {
        self.represented as f64 / self.predictor_params.max(1) as f64
    }

    /// Source file ÷ `.nerp` file.
    pub fn byte_ratio(&self) -> f64 {
        self.source_bytes as f64 / self.file_bytes.max(1) as f64
    }

    /// How many tensors got each storage, e.g. `int8 ×8, int4 ×13, raw ×22`.
    pub fn storage_summary(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for t in &self.tensors {
            let kind = match t.stored.split_once('+') {
                Some((_, bits)) if t.predicted => format!("predicted+{bits}"),
                _ if t.predicted => "predicted".into(),
                _ => t.stored.split(':').next().unwrap_or("raw").into(),
            };
            let kind = kind.as_str();
            match counts.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += 1,
                None => counts.push((kind.to_string(), 1)),
            }
        }
        counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ")
    }
}
