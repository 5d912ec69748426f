//! Streaming compress for sources without a graph to run (safetensors) that no predictor
//! serves ([`super::serve`]): tensors are read from the memory-mapped source (no whole-model
//! copy), measured and encoded in parallel across row chunks and cores, and written section by
//! section ([`StreamWriter`]: a temporary file, header then data, atomic rename).
//!
//! Two passes. Pass 1 measures every group-wise candidate of [`CANDIDATES`] on every eligible
//! tensor and keeps only its bytes and squared error; [`allocate`] picks one per tensor under
//! the weight-error or byte budget. Pass 2 encodes the chosen ones and writes them in tensor
//! order. Chunks are of whole rows, a multiple of 8 values, summed in chunk order, so the output
//! does not depend on the thread count. Memory beyond the map: one tensor's section twice (its
//! content and its zstd frame) plus a chunk per thread, checked against the budget
//! ([`crate::format::budget`]) before any work.

use crate::codec::gptq::Moments;
use crate::codec::group::{self, Part};
use crate::codec::Codec;
use crate::compress::choose::{allocate, Allocation, Assessed, Budget, Candidate, Choice, Retarget};
use crate::compress::report::{AllocationTry, CompressReport, StorageReport, TensorReport};
use crate::compress::tokens::{class_of, Reference, Tokens};
use crate::compress::train::Progress;
use crate::compress::{CompressOptions, ErrorBudget, DEFAULT_FALLBACK_WEIGHT_ERROR};
use crate::error::{Error, Result};
use crate::format::{self, write::StreamWriter, Encoding, SectionKind, Storage, TensorEntry};
use crate::ingest::safetensors::{views, TensorView};
use crate::ingest::{SourceModel, SourceTensor};
use crate::linalg::parallel;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The codecs the LLM path measures per weight matrix, more bytes first: int8 in groups of 128
/// and per row, int6 and int5 in groups of 128, int4 in groups of 128 symmetric and with zero
/// points in groups of 128 and 64, int3 with zero points in groups of 128, 64 and 32, int2 with
/// zero points in groups of 32. int8 in groups fills the gap between f16 and int8 per row,
/// which with token calibration kept the 0.5 B layout's embedding (the tied head, the most
/// sensitive matrix after v and o) at f16.
pub const CANDIDATES: [Codec; 11] = [
    Codec::Group { bits: 8, group: 128, zero: false },
    Codec::Group { bits: 8, group: 0, zero: false },
    Codec::Group { bits: 6, group: 128, zero: false },
    Codec::Group { bits: 5, group: 128, zero: false },
    Codec::Group { bits: 4, group: 128, zero: false },
    Codec::Group { bits: 4, group: 128, zero: true },
    Codec::Group { bits: 4, group: 64, zero: true },
    Codec::Group { bits: 3, group: 128, zero: true },
    Codec::Group { bits: 3, group: 64, zero: true },
    Codec::Group { bits: 3, group: 32, zero: true },
    Codec::Group { bits: 2, group: 32, zero: true },
];

/// The reference of a decoder checkpoint's default budget: int4 in groups of 128 along the
/// input dimension with zero points, rounded to nearest ([`group::round_nearest_zero_point`]),
/// the 4-bit file llama.cpp-class quantizers ship. Matched matrix by matrix, no matrix is worse
/// than the reference's (over the whole model, the allocation could move error anywhere). On
/// the 0.5 B layout: 4.05× against the reference's 3.85×, but 69.89% logits error against its
/// 65.03% (matched over the whole model: 69.96%): at equal weight error that random model's
/// logits vary by ±8% from file to file (docs/results/llm.md).
pub const PARITY: (u8, usize) = (4, 128);

/// Values per chunk of rows (about 256 k: 1 MiB of f32 per thread).
const CHUNK_VALUES: usize = 1 << 18;

/// The memory-mapped source and its tensors.
pub struct Source {
    bytes: crate::mmap::FileBytes,
    pub tensors: Vec<TensorView>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Source {
    /// Maps `path` and reads its header (nothing is copied).
    pub fn open(path: &Path) -> Result<Source> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "opening model", e))?;
        let bytes =
            crate::mmap::FileBytes::map(&file).map_err(|e| Error::io(path, "memory-mapping model", e))?;
        let (tensors, metadata) = views(path, &bytes)?;
        Ok(Source { bytes, tensors, metadata })
    }

    /// Whether `path` is read as safetensors (the rule of [`crate::ingest::load`]).
    pub fn is_safetensors(path: &Path) -> bool {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if ext == "safetensors" {
            return true;
        }
        if ext == "onnx" {
            return false;
        }
        let mut head = [0u8; 9];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head[8] == b'{')
    }

    /// The file's length.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The model without its data (names, dtypes, shapes, roles): what [`super::serve`] judges.
    pub fn shapes(&self) -> SourceModel {
        SourceModel {
            kind: format::SourceKind::Safetensors,
            file_bytes: self.file_bytes(),
            tensors: self
                .tensors
                .iter()
                .map(|v| SourceTensor {
                    name: v.name.clone(),
                    dtype: v.dtype,
                    shape: v.shape.clone(),
                    data: Vec::new(),
                    role: v.role(),
                })
                .collect(),
            skeleton: None,
            metadata: self.metadata.clone(),
        }
    }

    fn data(&self, i: usize) -> &[u8] {
        &self.bytes[self.tensors[i].range.clone()]
    }
}

/// A run of whole rows of one tensor: the unit of parallel work.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    tensor: usize,
    /// Value range within the tensor.
    start: usize,
    end: usize,
}

/// Whole-row chunks of a tensor with rows of `row` values and `numel` values, each a multiple
/// of 8 values (but the last), at most about [`CHUNK_VALUES`].
fn chunks(tensor: usize, numel: usize, row: usize) -> Vec<Chunk> {
    let rows = (CHUNK_VALUES / row.max(1)).max(1);
    let rows = rows.div_ceil(8) * 8;
    let step = rows * row;
    (0..numel)
        .step_by(step.max(1))
        .map(|start| Chunk { tensor, start, end: (start + step).min(numel) })
        .collect()
}

/// Whether tensor `v` gets a lossy codec ([`crate::codec::eligible`]).
fn eligible(v: &TensorView) -> bool {
    crate::codec::eligible(v.dtype, &v.shape, v.range.len())
}

fn row_of(v: &TensorView) -> usize {
    format::row_len(&v.shape).unwrap_or(0) as usize
}

/// The candidates of `CANDIDATES` that apply to a tensor with rows of `row` values:
/// (codec, values per group).
fn applicable(row: usize) -> Vec<(Codec, usize)> {
    CANDIDATES
        .iter()
        .filter_map(|&c| {
            let Codec::Group { group: g, .. } = c else { return None };
            group::group_len(g, row as u64).map(|n| (c, n as usize))
        })
        .collect()
}

fn spec(c: Codec) -> (u8, bool) {
    match c {
        Codec::Group { bits, zero, .. } => (bits, zero),
        _ => unreachable!("stream candidates are group codecs"),
    }
}

/// Compresses the safetensors `input` into `output` without a predictor; `why` is the line
/// saying why (reported first among the warnings).
pub fn compress(
    input: &Path,
    output: &Path,
    opts: &CompressOptions,
    why: Option<String>,
    progress: &mut dyn Progress,
) -> Result<CompressReport> {
    compress_on(input, output, opts, why, crate::linalg::threads(), progress)
}

/// [`compress`] on `threads` threads (the file does not depend on them).
pub fn compress_on(
    input: &Path,
    output: &Path,
    opts: &CompressOptions,
    why: Option<String>,
    threads: usize,
    progress: &mut dyn Progress,
) -> Result<CompressReport> {
    let start = Instant::now();
    let src = Source::open(input)?;
    let n = src.tensors.len();
    let largest = src.tensors.iter().map(|v| v.range.len() as u64).max().unwrap_or(0);
    // A chunk per thread: its f32 values, codes and encoded part (about 12 bytes a value).
    let most = src.tensors.iter().map(|v| (v.range.len() / v.dtype.size()) as u64).max().unwrap_or(0);
    let chunk = (CHUNK_VALUES as u64).min(most);
    let need = largest.saturating_mul(3).saturating_add((threads as u64).saturating_mul(chunk * 12));
    format::budget::current().check(
        || {
            format!(
                "compressing {} tensor by tensor (its largest tensor is {largest} bytes)",
                input.display()
            )
        },
        need,
    )?;
    let mut warnings: Vec<String> = why.into_iter().collect();
    let rows: Vec<usize> = src.tensors.iter().map(row_of).collect();

    // Token-id calibration: the original model's logits, before anything is measured (a model
    // candle cannot run fails here, not after pass 1).
    let (reference, gptq) = match opts.calibration_inputs.is_empty() {
        true => (None, None),
        false => {
            let tokens = Tokens::read(input, opts)?;
            let params: u64 = src.tensors.iter().map(|v| (v.range.len() / v.dtype.size()) as u64).sum();
            format::budget::current().check(
                || format!("running {} on its calibration tokens (f32)", input.display()),
                need.saturating_add(params.saturating_mul(4)).saturating_add(tokens.memory()),
            )?;
            let original = vec![Codec::Raw; n];
            progress.stage("running the original", 0, 1);
            let (reference, moments) =
                tokens.reference(regenerated(&src, &original, &rows, threads, None)?)?;
            // `--nearest-rounding` turns GPTQ off, as on the ONNX path.
            let gptq = match opts.data_aware_rounding {
                true => Some(Gptq::new(&src, moments, reference.fit_tokens(), threads, progress)?),
                false => None,
            };
            if let Some(g) = &gptq {
                warnings.push(g.summary(&src));
            }
            (Some(reference), gptq)
        }
    };
    let gptq = gptq.as_ref();

    // Pass 1: every candidate's squared error, chunk by chunk; the sum of squares.
    let cands: Vec<Vec<(Codec, usize)>> = src
        .tensors
        .iter()
        .zip(&rows)
        .map(|(v, &r)| if eligible(v) { applicable(r) } else { Vec::new() })
        .collect();
    let jobs: Vec<Chunk> = (0..n)
        .filter(|&i| eligible(&src.tensors[i]))
        .flat_map(|i| chunks(i, src.tensors[i].range.len() / src.tensors[i].dtype.size(), rows[i]))
        .collect();
    // The default budget of a decoder checkpoint: each matrix no farther from the original than
    // int4 rounded to nearest ([`PARITY`]), measured in pass 1 and set after it.
    let parity = parity_default(input, opts);
    let budget = match (opts.size_ratio, opts.error_budget) {
        (Some(r), _) => Some(Budget::Bytes((src.file_bytes() as f64 / r).floor() as u64)),
        (None, ErrorBudget::Check(_)) if parity => None,
        (None, ErrorBudget::Target(e)) => Some(Budget::Error(e)),
        // With token calibration the logits' error is aimed at ([`aim`]), else the weights'.
        (None, ErrorBudget::Check(e)) if reference.is_none() => {
            warnings.push(format!(
                "the default budget keeps the weights within {}% (about 5% of the outputs); --size-ratio 4 \
                 gives a 4-bit-level file, and for a Qwen2-layout model --calibration-inputs with token ids \
                 keeps the logits' error instead",
                100.0 * DEFAULT_FALLBACK_WEIGHT_ERROR
            ));
            Some(Budget::Error(e.min(DEFAULT_FALLBACK_WEIGHT_ERROR)))
        }
        (None, ErrorBudget::Check(e)) => Some(Budget::Error(e)),
        (None, ErrorBudget::Off) => None,
    };
    let measure_all = budget.is_some() || parity;
    // In windows of chunks, in order, so that progress shows (the sums do not change).
    let window = 8 * threads.max(1);
    let mut measured = Vec::with_capacity(jobs.len());
    for first in (0..jobs.len()).step_by(window) {
        progress.stage("measuring candidates", first, jobs.len());
        let last = (first + window).min(jobs.len());
        measured.extend(parallel(last - first, threads, |j| {
            measure(&src, jobs[first + j], rows[jobs[first + j].tensor], &cands, measure_all, parity)
        }));
    }
    let mut sq = vec![0f64; n];
    let mut nearest = vec![0f64; n];
    let mut sse: Vec<Vec<f64>> = cands.iter().map(|c| vec![0.0; c.len()]).collect();
    for (c, m) in jobs.iter().zip(measured) {
        let (s, errs, r) = m?;
        sq[c.tensor] += s;
        nearest[c.tensor] += r;
        for (a, e) in sse[c.tensor].iter_mut().zip(errs) {
            *a += e;
        }
    }
    let total_norm = sq.iter().sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    let measure_secs = start.elapsed().as_secs_f64();

    // The choice: one codec per tensor under the budget.
    let fixed: u64 = 1024
        + 64 * n as u64
        + src.tensors.iter().filter(|v| !eligible(v)).map(|v| v.range.len() as u64).sum::<u64>();
    let mut candidates: Vec<Vec<Candidate>> = Vec::new();
    let mut index: Vec<usize> = Vec::new(); // tensor → row of `candidates`
    for i in 0..n {
        if !eligible(&src.tensors[i]) {
            index.push(usize::MAX);
            continue;
        }
        let raw = Candidate {
            choice: Choice::Stored(Codec::Raw),
            encoded: None,
            bytes: src.tensors[i].range.len() as u64,
            error: 0.0,
            estimated: false,
        };
        let numel = (src.tensors[i].range.len() / src.tensors[i].dtype.size()) as u64;
        let mut list = vec![raw];
        for (&(codec, g), &e) in cands[i].iter().zip(&sse[i]) {
            let (bits, zero) = spec(codec);
            if !e.is_finite() {
                continue;
            }
            let bytes = group::section_len(numel, g as u64, bits, zero).expect("in-memory tensor");
            list.push(Candidate {
                choice: Choice::Stored(codec),
                encoded: None,
                bytes,
                error: e.sqrt() / total_norm,
                estimated: false,
            });
        }
        index.push(candidates.len());
        candidates.push(list);
    }
    // With token calibration, each class of matrices (the same matrix of every layer) has its
    // candidates' errors scaled by the logits' error per unit of its weight error, measured once
    // per class: the allocation then estimates the logits' error, which the weights' error alone
    // misjudged by class (see `sensitivities`).
    if let Some(r) = &reference {
        let scale = sensitivities(&src, r, &rows, &cands, &sse, total_norm, threads, gptq, progress)?;
        // The probes' encodings are seldom a try's: keep the cache to what the tries make.
        if let Some(g) = gptq {
            g.cache.lock().expect("no encoder panics").clear();
        }
        for (i, &k) in index.iter().enumerate().filter(|(_, &k)| k != usize::MAX) {
            let s = scale.get(&class_of(&src.tensors[i].name)).copied().unwrap_or(1.0);
            candidates[k].iter_mut().for_each(|c| c.error *= s);
        }
        let line: Vec<String> = scale.iter().map(|(c, s)| format!("{c} {s:.2}")).collect();
        warnings.push(format!("logits error per unit of weight error, by class: {}", line.join(", ")));
    }
    // Parity: a matrix keeps the candidates no farther from the original than the reference
    // (raw always); the fewest bytes, within the reference's error over the whole model. (Its
    // bytes are no budget: the candidates' are counted before zstd, which takes 7% off int4's.)
    let budget = match parity {
        true => {
            for (i, &k) in index.iter().enumerate().filter(|(_, &k)| k != usize::MAX) {
                let limit = nearest[i].sqrt() / total_norm;
                candidates[k].retain(|c| c.error <= limit);
            }
            let reference = nearest.iter().sum::<f64>().sqrt() / total_norm;
            warnings.push(format!(
                "the default budget of a decoder checkpoint: each matrix no farther from the original \
                 than int{} in groups of {} with zero points rounded to nearest (the 4-bit files \
                 llama.cpp-class tools ship; {:.2}% of the weights in all), in the fewest bytes; \
                 --max-error 0.01 keeps 1%, and --calibration-inputs with token ids keeps the logits' error",
                PARITY.0,
                PARITY.1,
                100.0 * reference
            ));
            Some(Budget::Error(reference))
        }
        false => budget,
    };
    let codecs_of = |picks: &[usize]| -> Vec<Codec> {
        (0..n)
            .map(|i| match index[i] {
                usize::MAX => Codec::Raw,
                k => match candidates[k][picks[k]].choice {
                    Choice::Stored(c) => c,
                    _ => unreachable!("codecs only"),
                },
            })
            .collect()
    };
    let mut aimed = None;
    let chosen: Vec<Codec> = match (budget, &reference) {
        (Some(Budget::Error(limit)), Some(r)) => {
            let a = aim(limit, r, progress, |t| {
                let alloc = allocate(&candidates, fixed, Budget::Error(t));
                let codecs = codecs_of(&alloc.picks);
                Ok((regenerated(&src, &codecs, &rows, threads, gptq)?, codecs, alloc))
            })?;
            if !a.met {
                warnings.push(format!(
                    "the budget (logits error <= {limit}) could not be met: the closest file changes the \
                     held-back logits by up to {:.2}% (95% bound)",
                    100.0 * a.assessed.error()
                ));
            }
            let codecs = a.codecs.clone();
            aimed = Some(a);
            codecs
        }
        (Some(b), _) => {
            let alloc = allocate(&candidates, fixed, b);
            if !alloc.feasible {
                warnings.push(format!(
                    "the budget ({}) is not met: the closest file is about {} bytes at {:.2}% estimated {} error",
                    budget_name(b),
                    alloc.bytes,
                    100.0 * alloc.error,
                    if reference.is_some() { "logits" } else { "weight" }
                ));
            }
            let codecs = codecs_of(&alloc.picks);
            if let Some(r) = &reference {
                // A byte budget: the logits' error is measured and reported, not aimed at.
                let assessed = r.assess(regenerated(&src, &codecs, &rows, threads, gptq)?)?;
                let met = alloc.feasible;
                let tries = vec![AllocationTry {
                    with_predictor: false,
                    target: b,
                    bytes: alloc.bytes,
                    error: assessed.error(),
                    met,
                }];
                if let (ErrorBudget::Check(e) | ErrorBudget::Target(e), Some(h)) =
                    (opts.error_budget, assessed.held_back)
                {
                    if h.bound > e {
                        warnings.push(format!(
                            "the file changes the held-back logits by up to {:.2}% (95% bound; more than {:.2}%): \
                             the size budget cannot keep the error budget; a smaller --size-ratio can",
                            100.0 * h.bound,
                            100.0 * e
                        ));
                    }
                }
                aimed = Some(Aimed { codecs: codecs.clone(), alloc, assessed, tries, met });
            }
            codecs
        }
        (None, _) => (0..n)
            .map(|i| if eligible(&src.tensors[i]) { off_codec(opts.raw_codec) } else { Codec::Raw })
            .collect(),
    };

    // Pass 2: encode the chosen codecs and write, in tensor order.
    let mut w = StreamWriter::create(output)?;
    let mut entries = Vec::with_capacity(n);
    let mut reports = Vec::with_capacity(n);
    let mut total_sse = 0f64;
    for i in 0..n {
        progress.stage("writing", i, n);
        let v = &src.tensors[i];
        let data = src.data(i);
        let (storage, sse_i, stored, section) = match chosen[i] {
            Codec::Group { bits, group: named, zero }
                if group::group_len(named, rows[i] as u64).is_some() =>
            {
                let g = group::group_len(named, rows[i] as u64).expect("checked");
                let done = encoded(&src, i, rows[i], chosen[i], threads, gptq)?;
                let section = w.add(SectionKind::Quantized, Encoding::Zstd, &done.0)?;
                let storage = Storage::Quantized { bits, group: g, zero_point: zero, section };
                let name = match gptq.is_some_and(|g| g.moments.contains_key(&i)) {
                    true => format!("{} (GPTQ)", chosen[i].name()),
                    false => chosen[i].name(),
                };
                (storage, done.1, name, section)
            }
            _ => {
                let encoding = match v.dtype.size() {
                    1 => Encoding::Zstd,
                    s => Encoding::ZstdBytegroup { element: s as u8 },
                };
                let section = w.add(SectionKind::Tensor, encoding, data)?;
                let why = if eligible(v) { "raw".to_string() } else { "raw: not a matrix".to_string() };
                (Storage::Raw { section }, 0.0, why, section)
            }
        };
        total_sse += sse_i;
        let numel = (data.len() / v.dtype.size()).max(1) as f64;
        let rms = (sq[i] / numel).sqrt();
        let rmse = (sse_i / numel).sqrt();
        reports.push(TensorReport {
            name: v.name.clone(),
            shape: v.shape.clone(),
            predicted: false,
            stored,
            rmse,
            rel_error: if rms > 0.0 { rmse / rms } else { 0.0 },
            bytes_before: data.len() as u64,
            bytes_after: w.stored_len(section),
            error_alone: index[i].ne(&usize::MAX).then(|| sse_i.sqrt() / total_norm),
        });
        entries.push(TensorEntry { name: v.name.clone(), dtype: v.dtype, shape: v.shape.clone(), storage });
    }
    let mut metadata = src.metadata.clone();
    metadata.extend(opts.file_metadata());
    let source = format::Source {
        kind: format::SourceKind::Safetensors,
        file_bytes: src.file_bytes(),
        skeleton: None,
    };
    let file_bytes = w.finish(source, None, entries, metadata)?;
    let estimated = total_sse.sqrt() / total_norm;
    let storage = budget.map(|b| {
        let mut report = StorageReport {
            budget: budget_name(b),
            measure: "weights",
            fit_inputs: 0,
            check_inputs: 0,
            predictor_only_error: None,
            with_predictor: false,
            estimated_error: estimated,
            fitted_error: None,
            measured_error: None,
            error_bound: None,
            tries: Vec::new(),
            top1_agreement: None,
            input_agreement: None,
            met: match b {
                Budget::Bytes(max) => file_bytes <= max,
                Budget::Error(e) => estimated <= e,
            },
        };
        if let (Some(a), Some(r)) = (&aimed, &reference) {
            (report.fit_inputs, report.check_inputs) = r.counts();
            report.measure = "output";
            report.estimated_error = a.alloc.error;
            a.assessed.report_into(&mut report);
            report.tries = a.tries.clone();
            report.met = match b {
                Budget::Bytes(max) => file_bytes <= max,
                Budget::Error(_) => a.met,
            };
            if let Budget::Error(e) = b {
                report.budget = format!("logits error <= {e}");
            }
        }
        report
    });
    let seconds = start.elapsed().as_secs_f64();
    warnings.push(format!(
        "streamed: measured {} candidates per matrix in {measure_secs:.1} s, wrote in {:.1} s on {threads} threads",
        CANDIDATES.len(),
        seconds - measure_secs
    ));
    Ok(CompressReport {
        tensors: reports,
        hidden: 0,
        predictor_params: 0,
        represented: 0,
        source_bytes: src.file_bytes(),
        file_bytes,
        seconds,
        steps: 0,
        final_loss: f64::NAN,
        weight_rmse: 0.0,
        qat_steps: 0,
        kd_losses: Vec::new(),
        warnings,
        storage,
        finetune: None,
        probe: None,
    })
}

/// Whether `input` gets the [`PARITY`] default: a decoder checkpoint ([`is_decoder_checkpoint`])
/// under the default budget, without token calibration, no predictor asked for. Such a model is
/// streamed whatever its size, so that its default does not depend on it: no predictor has paid
/// on a decoder measured (docs/results/probe.md: the 4.8 M Qwen2 layout's probe, 90.9% error).
///
/// [`is_decoder_checkpoint`]: super::tokens::is_decoder_checkpoint
pub fn parity_default(input: &Path, opts: &CompressOptions) -> bool {
    matches!(opts.error_budget, ErrorBudget::Check(_))
        && opts.size_ratio.is_none()
        && opts.hidden.is_none()
        && opts.target_ratio.is_none()
        && opts.calibration_inputs.is_empty()
        && super::tokens::is_decoder_checkpoint(input)
}

/// Chunk `c`'s (rows of `row` values) sum of squares; with `all`, the squared error of each
/// of its tensor's candidates `cands`; with `parity`, that of the [`PARITY`] reference.
fn measure(
    src: &Source,
    c: Chunk,
    row: usize,
    cands: &[Vec<(Codec, usize)>],
    all: bool,
    parity: bool,
) -> Result<(f64, Vec<f64>, f64)> {
    let v = &src.tensors[c.tensor];
    let size = v.dtype.size();
    let mut x = Vec::new();
    group::widen(v.dtype, &src.data(c.tensor)[c.start * size..c.end * size], &mut x);
    if let Some(bad) = x.iter().find(|x| !x.is_finite()) {
        return Err(Error::Training(format!("tensor {} holds {bad}, which cannot be quantized", v.name)));
    }
    let sq = x.iter().map(|&a| (a as f64) * (a as f64)).sum();
    let mut errs = Vec::new();
    if all {
        for &(codec, g) in &cands[c.tensor] {
            let (bits, zero) = spec(codec);
            errs.push(group::error_of(&x, g, bits, zero).unwrap_or(f64::INFINITY));
        }
    }
    let nearest = match parity {
        true => group::nearest_zero_point_error(&x, row, PARITY.1, PARITY.0),
        false => 0.0,
    };
    Ok((sq, errs, nearest))
}

/// Tensor `i` (rows of `row` values) encoded group-wise with `(group, bits, zero)`, chunks of
/// rows on `threads` threads, rounded by GPTQ with its layer inputs' moments `m` where given:
/// the section's content and its squared error.
fn encode(
    src: &Source,
    i: usize,
    row: usize,
    (g, bits, zero): (usize, u8, bool),
    threads: usize,
    m: Option<&Moments>,
) -> Result<(Vec<u8>, f64)> {
    let v = &src.tensors[i];
    let data = src.data(i);
    let size = v.dtype.size();
    let cs = chunks(i, data.len() / size, row);
    let parts = parallel(cs.len(), threads, |j| -> std::result::Result<Part, String> {
        let mut x = Vec::new();
        group::widen(v.dtype, &data[cs[j].start * size..cs[j].end * size], &mut x);
        match m.and_then(|m| group::encode_part_gptq(&x, row, g, bits, zero, m)) {
            Some(part) => part,
            None => group::encode_part(&x, g, bits, zero),
        }
    });
    let parts: Vec<Part> = parts
        .into_iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Training(format!("tensor {} cannot be stored as int{bits}: {e}", v.name)))?;
    Ok((group::join(&parts), parts.iter().map(|p| p.sse).sum()))
}

/// Tensor `i` (rows of `row` values) encoded with the group codec `codec`: by GPTQ where
/// `gptq` has its layer inputs (and then kept for the next try), else rounded to nearest.
fn encoded(
    src: &Source,
    i: usize,
    row: usize,
    codec: Codec,
    threads: usize,
    gptq: Option<&Gptq>,
) -> Result<Arc<Section>> {
    let Codec::Group { bits, group: named, zero } = codec else {
        unreachable!("stream candidates are group codecs")
    };
    let g = group::group_len(named, row as u64).expect("a candidate's group divides its rows") as usize;
    let m = gptq.and_then(|q| q.moments.get(&i));
    let key = (i, bits, named, zero);
    if let Some(done) = gptq.and_then(|q| q.cache.lock().expect("no encoder panics").get(&key).cloned()) {
        return Ok(done);
    }
    let done = Arc::new(encode(src, i, row, (g, bits, zero), threads, m.map(|m| &**m))?);
    if let (Some(q), Some(_)) = (gptq, m) {
        q.cache.lock().expect("no encoder panics").insert(key, done.clone());
    }
    Ok(done)
}

/// GPTQ for the LLM path with token calibration: the input moments of each weight the
/// original's run tapped ([`crate::compress::decoder::Taps`]) on enough tokens
/// ([`MIN_TOKENS_PER_INPUT`]), by tensor, and the encodings made with them so far (a try's
/// allocation repeats most of the last one's, and GPTQ costs O(rows · d²) a tensor against
/// rounding's O(rows · d)).
struct Gptq {
    moments: HashMap<usize, Arc<Moments>>,
    cache: Mutex<Encodings>,
    /// Fit tokens the moments were summed over.
    tokens: usize,
}

/// Fit tokens GPTQ needs per input value of a layer. The moments are shrunk towards their mean
/// variance by `d / tokens` ([`crate::compress::decoder::Taps::moments`]), so with fewer than 2
/// per input GPTQ keeps less than half its data-aware weight, for 1.2-1.4x the CPU time of
/// rounding to nearest (0.5 B layout, 40 sequences). Measured before the shrinkage
/// (docs/results/llm.md): on the 0.5 B layout, 768 tokens for 896 inputs gave 13.4% held-back
/// logits error where rounding to nearest gave 5.3% at the same first target, and a file 1.22x
/// larger at the 5% budget.
const MIN_TOKENS_PER_INPUT: usize = 2;

/// Sections by tensor and group codec (bits, group, zero point).
type Encodings = HashMap<(usize, u8, u16, bool), Arc<Section>>;

/// A group-wise section's content and its squared error.
type Section = (Vec<u8>, f64);

impl Gptq {
    /// The moments of `by_name` for the tensors of `src`, each factored once (in parallel).
    fn new(
        src: &Source,
        by_name: HashMap<String, Arc<Moments>>,
        tokens: usize,
        threads: usize,
        progress: &mut dyn Progress,
    ) -> Result<Gptq> {
        let moments: HashMap<usize, Arc<Moments>> = src
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, v)| eligible(v))
            .filter_map(|(i, v)| by_name.get(&v.name).map(|m| (i, m.clone())))
            .filter(|(_, m)| m.d.saturating_mul(MIN_TOKENS_PER_INPUT) <= tokens)
            .collect();
        // One factor per layer input (q, k and v share theirs).
        let mut distinct: Vec<&Arc<Moments>> = moments.values().collect();
        distinct.sort_by_key(|m| Arc::as_ptr(m));
        distinct.dedup_by_key(|m| Arc::as_ptr(m));
        let window = 4 * threads.max(1);
        for first in (0..distinct.len()).step_by(window) {
            progress.stage("factoring layer inputs", first, distinct.len());
            let last = (first + window).min(distinct.len());
            for r in parallel(last - first, threads, |k| distinct[first + k].prepare()) {
                r?;
            }
        }
        Ok(Gptq { moments, cache: Mutex::new(HashMap::new()), tokens })
    }

    /// One line on what GPTQ rounds.
    fn summary(&self, src: &Source) -> String {
        let mut skipped: Vec<String> = src
            .tensors
            .iter()
            .enumerate()
            .filter(|(i, v)| eligible(v) && !self.moments.contains_key(i))
            .map(|(_, v)| class_of(&v.name))
            .collect();
        skipped.sort();
        skipped.dedup();
        format!(
            "GPTQ rounds {} matrices on their layer inputs ({} fit tokens); rounded to nearest: {} \
             (not a linear layer's weight, inputs wider than {} values, or fewer than {MIN_TOKENS_PER_INPUT} \
             fit tokens per input value: give more calibration tokens for GPTQ)",
            self.moments.len(),
            self.tokens,
            if skipped.is_empty() { "none".to_string() } else { skipped.join(", ") },
            crate::codec::gptq::MAX_DIM
        )
    }
}

/// The model as a file storing tensor `i` with `codecs[i]` gives it back: each float tensor's
/// values, decoded from its encoding where a codec stores it, as an f32 candle tensor.
fn regenerated(
    src: &Source,
    codecs: &[Codec],
    rows: &[usize],
    threads: usize,
    gptq: Option<&Gptq>,
) -> Result<HashMap<String, candle_core::Tensor>> {
    let mut out = HashMap::new();
    for (i, v) in src.tensors.iter().enumerate().filter(|(_, v)| v.dtype.is_float()) {
        let numel = v.range.len() / v.dtype.size();
        let values = match codecs[i] {
            Codec::Group { bits, group: named, zero } => {
                let g =
                    group::group_len(named, rows[i] as u64).expect("a candidate's group divides its rows");
                let done = encoded(src, i, rows[i], codecs[i], threads, gptq)?;
                let x = group::decode(bits, g, zero, &done.0, numel).map_err(|e| {
                    Error::Training(format!("tensor {} does not decode as int{bits}: {e}", v.name))
                })?;
                // The runtime gives the values back in the tensor's own type.
                let own = format::codec::from_f32(v.dtype, &x).ok_or_else(|| {
                    Error::Training(format!("tensor {} is {:?}, not a float type", v.name, v.dtype))
                })?;
                let mut x = Vec::new();
                group::widen(v.dtype, &own, &mut x);
                x
            }
            _ => {
                let mut x = Vec::new();
                group::widen(v.dtype, src.data(i), &mut x);
                x
            }
        };
        let shape: Vec<usize> = v.shape.iter().map(|&d| d as usize).collect();
        out.insert(v.name.clone(), candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu)?);
    }
    Ok(out)
}

/// Allocations tried against the logits' error, and the one kept.
struct Aimed {
    codecs: Vec<Codec>,
    alloc: Allocation,
    assessed: Assessed,
    tries: Vec<AllocationTry>,
    met: bool,
}

/// Weight-error targets tried before the logits' error is taken as it is.
const AIM_TRIES: usize = 6;

/// The fewest bytes whose logits' error (on the fit sequences, and its 95% bound on the
/// held-back ones: [`Assessed::error`]) is within `limit`: the allocation's target (its estimate
/// of the logits' error, from [`sensitivities`]) starts at the limit and moves by what each try
/// missed ([`Retarget`]). `run(t)` allocates at target `t` and regenerates the model. Keeps the
/// smallest allocation that met, else the last.
fn aim(
    limit: f64,
    reference: &Reference,
    progress: &mut dyn Progress,
    mut run: impl FnMut(f64) -> Result<(HashMap<String, candle_core::Tensor>, Vec<Codec>, Allocation)>,
) -> Result<Aimed> {
    let mut target = limit;
    let mut retarget = Retarget::default();
    let mut tries = Vec::new();
    let (mut best, mut last): (Option<Aimed>, Option<Aimed>) = (None, None);
    for k in 0..AIM_TRIES {
        progress.stage("allocating on the logits", k, AIM_TRIES);
        let (weights, codecs, alloc) = run(target)?;
        let assessed = reference.assess(weights)?;
        let got = assessed.error();
        let (met, next) = retarget.step(target, got, limit);
        tries.push(AllocationTry {
            with_predictor: false,
            target: Budget::Error(target),
            bytes: alloc.bytes,
            error: got,
            met,
        });
        let close = met && got * 10.0 >= limit * 9.0;
        let done = close || next == target;
        let this = Aimed { codecs, alloc, assessed, tries: Vec::new(), met };
        if met && best.as_ref().is_none_or(|b| this.alloc.bytes < b.alloc.bytes) {
            best = Some(this);
        } else {
            last = Some(this);
        }
        if done {
            break;
        }
        target = next;
    }
    let mut kept = best.or(last).expect("one allocation ran");
    kept.tries = tries;
    Ok(kept)
}

/// The logits' error per unit of weight error of each class of matrices ([`class_of`]): the
/// model with every matrix of the class stored by a probe codec (int6 in groups of 128, or
/// the first candidate where that does not apply), the rest as they are, run on the fit
/// sequences, its logits' error divided by the class's weight error.
#[allow(clippy::too_many_arguments)] // pass 1's results, passed once
fn sensitivities(
    src: &Source,
    reference: &Reference,
    rows: &[usize],
    cands: &[Vec<(Codec, usize)>],
    sse: &[Vec<f64>],
    total_norm: f64,
    threads: usize,
    gptq: Option<&Gptq>,
    progress: &mut dyn Progress,
) -> Result<BTreeMap<String, f64>> {
    const PROBE: Codec = Codec::Group { bits: 6, group: 128, zero: false };
    let mut classes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, _) in cands.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
        classes.entry(class_of(&src.tensors[i].name)).or_default().push(i);
    }
    let mut out = BTreeMap::new();
    let total = classes.len();
    for (done, (class, members)) in classes.into_iter().enumerate() {
        progress.stage("measuring class effects", done, total);
        let mut codecs = vec![Codec::Raw; src.tensors.len()];
        let mut sq = 0f64;
        for &i in &members {
            let k = cands[i].iter().position(|&(c, _)| c == PROBE).unwrap_or(0);
            codecs[i] = cands[i][k].0;
            sq += sse[i][k];
        }
        let weight = sq.sqrt() / total_norm;
        let logits = reference.fit_error(regenerated(src, &codecs, rows, threads, gptq)?)?;
        out.insert(class, if weight > 0.0 { logits / weight } else { 1.0 });
    }
    Ok(out)
}

/// `--max-error off`: every eligible tensor with `--raw-codec` (an `intN` is int N in groups
/// of 128 along the row, int8 per row; `raw`, casts and `coded` stay raw here).
fn off_codec(c: Codec) -> Codec {
    match c {
        Codec::Int(8) => Codec::Group { bits: 8, group: 0, zero: false },
        Codec::Int(bits) => Codec::Group { bits, group: 128, zero: false },
        g @ Codec::Group { .. } => g,
        _ => Codec::Raw,
    }
}

fn budget_name(b: Budget) -> String {
    match b {
        Budget::Bytes(max) => format!("bytes <= {max}"),
        Budget::Error(e) => format!("weight error <= {e}"),
    }
}
