//! Command-line interface: argument types and one function per subcommand. Option defaults
//! come from the `Default` impls of [`CompressOptions`](crate::compress::CompressOptions) and
//! [`DistillOptions`](crate::compress::distill::DistillOptions), the one place they are written.

use crate::data::{self, DataSource, Preprocess, Split};
use crate::error::{Error, Result};
use crate::format::{self, NerpFile, Storage};
#[cfg(feature = "compress")]
use crate::{compress::distill::DistillOptions, compress::CompressOptions};
use crate::{data::npy, eval, runtime, runtime::device, runtime::regen};
use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// nerp: store a network's weights as a small predictor network.
#[derive(Debug, Parser)]
#[command(name = "nerp", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Most memory a command may allocate for what a file declares (tensors, sections,
    /// training), e.g. 8G or 512M; checked before allocating [default: half the machine's memory].
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_memory: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compress an ONNX or safetensors model into a .nerp file.
    #[cfg(feature = "compress")]
    Compress(Box<CompressArgs>),
    /// Print a .nerp file's header: tensors, sections, predictor, ratios (reads no data).
    Inspect {
        file: PathBuf,
        /// Print the header as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a .nerp file completely (exit 0 valid, 1 invalid, 2 usage error).
    Verify { file: PathBuf },
    /// Regenerate the weights and write a plain .onnx or .safetensors file.
    Decompress {
        file: PathBuf,
        /// Output path; its extension (.onnx or .safetensors) picks the format.
        #[arg(short, long)]
        output: PathBuf,
        /// Where to regenerate the weights: auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Run the model of a .nerp file on an input array (.npy).
    Run {
        file: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Save the first output as .npy instead of printing it.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Where to regenerate the weights: auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Accuracy on a labelled dataset, or, with --inputs (ONNX) or for a safetensors source,
    /// label-free fidelity against --original.
    Eval(EvalArgs),
    /// Compress the bundled ResNet-20 (Fashion-MNIST), reload it and evaluate it.
    #[cfg(feature = "compress")]
    Demo(DemoArgs),
}

#[cfg(feature = "compress")]
#[derive(Debug, Args)]
pub struct CompressArgs {
    /// Input model (.onnx or .safetensors).
    pub input: PathBuf,
    /// Output .nerp file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Hidden width of the predictor [default: 180; with --size-ratio, the widest that fits].
    #[arg(long, conflicts_with = "target_ratio")]
    pub hidden: Option<usize>,
    /// Choose the hidden width for this ratio of represented weights to predictor parameters.
    #[arg(long, conflicts_with = "size_ratio")]
    pub target_ratio: Option<f64>,
    /// Make the file at most 1/R of the source file's bytes with the smallest output error: a
    /// storage per tensor (predicted, with a residual, or a codec) around a predictor of
    /// --hidden width (default: the widest that fits alone).
    #[arg(long, value_name = "R")]
    pub size_ratio: Option<f64>,
    /// Training steps.
    #[arg(long, default_value_t = CompressOptions::default().steps)]
    pub steps: usize,
    /// Kernels per training step.
    #[arg(long, default_value_t = CompressOptions::default().batch)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = CompressOptions::default().lr)]
    pub lr: f64,
    /// Kernel ordering: `channels` reorders an ONNX model's channels without changing its
    /// function and stores no permutation (a safetensors source falls back to `crossfilter`);
    /// the others store a permutation per layer (see docs/results/permutations.md).
    #[arg(long, value_enum, default_value_t = default_ordering())]
    pub ordering: OrderingArg,
    /// Positional-embedding base (frequencies π·base^k).
    #[arg(long, default_value_t = CompressOptions::default().embedding.base)]
    pub pe_base: f64,
    /// Positional-embedding levels.
    #[arg(long, default_value_t = CompressOptions::default().embedding.levels)]
    pub pe_levels: u32,
    /// Storage precision of the predictor weights (int8/int4: per-output-unit quantization,
    /// format 3).
    #[arg(long, value_enum, default_value_t = CompressOptions::default().predictor_dtype)]
    pub predictor_dtype: format::WeightDtype,
    /// With --predictor-dtype int8/int4: fraction of the final training steps that compute
    /// with the quantized predictor (straight-through); 0 rounds after training only.
    #[arg(long, value_name = "F", default_value_t = CompressOptions::default().qat_fraction)]
    pub qat_fraction: f64,
    /// Element type of the per-filter scales (f16 needs format 3).
    #[arg(long, value_enum, default_value_t = CompressOptions::default().scale_dtype)]
    pub scale_dtype: format::ScaleDtype,
    /// How float tensors that are not predicted are stored: raw (lossless), f16/bf16 (cast),
    /// int8/6/5/4/3/2 (quantized per row or row group); all but raw need format 3.
    #[arg(long, default_value_t = CompressOptions::default().raw_codec)]
    pub raw_codec: crate::codec::Codec,
    /// Residuals (value − prediction, quantized per row group) of predicted tensors: by
    /// default a budget (--size-ratio, a failed --max-error check) tries 2, 3 and 4 bits per
    /// tensor; BITS (2..=8) gives every predicted tensor one where no budget chooses; `off`
    /// never stores one.
    #[arg(long, value_name = "BITS|off", value_parser = parse_residual)]
    pub residual: Option<crate::compress::ResidualMode>,
    /// Keep the model's outputs within this relative error (e.g. 0.05) with the smallest file:
    /// a storage per tensor (predicted, raw, f16, int8/6/5/4/3/2) from errors measured on
    /// calibration inputs (weights' errors without them). By default the predictor's file is
    /// checked against 0.05 and tensors it cannot keep get other codecs; a decoder checkpoint
    /// (Qwen2/Llama config.json beside it) gets each matrix within int4 g128 rounded to
    /// nearest instead; `off` skips the check.
    #[arg(long, value_name = "E|off", value_parser = parse_max_error)]
    pub max_error: Option<crate::compress::ErrorBudget>,
    /// Training images of --data run to measure output errors (with --preprocess).
    #[arg(long, value_name = "N", default_value_t = CompressOptions::default().calibration_images)]
    pub calibration: usize,
    /// Input arrays (.npy) run to measure output errors instead of images (repeatable). For a
    /// Qwen2-layout safetensors with its config.json beside it: token ids [sequences, tokens],
    /// and the budget keeps the logits' error.
    #[arg(long, value_name = "NPY")]
    pub calibration_inputs: Vec<PathBuf>,
    /// Inputs held back from the choice, the file's error measured on them: N of the
    /// --calibration-inputs [default: a quarter, at least 4], or the N training images after
    /// the --calibration ones [default: 64].
    #[arg(long, value_name = "N")]
    pub check: Option<usize>,
    /// Input arrays (.npy) the file's error is measured on instead of held-back inputs
    /// (repeatable; at least 4 inputs, none of them a calibration input).
    #[arg(long, value_name = "NPY")]
    pub check_inputs: Vec<PathBuf>,
    /// Versions of each tensor (codecs, step sizes, residuals) whose output error is measured by
    /// running the model; the others' errors are estimated from them by each one's change of
    /// the layer's outputs (0: measure all, about 5x slower).
    #[arg(long, value_name = "N", default_value_t = CompressOptions::default().measured_candidates)]
    pub measured_candidates: usize,
    /// Round quantized tensors to the nearest step even with calibration images or tokens
    /// (default: data-aware rounding, GPTQ, weighted by each layer's inputs).
    #[arg(long)]
    pub nearest_rounding: bool,
    /// Do not normalize each filter by its RMS before fitting.
    #[arg(long)]
    pub no_filter_scales: bool,
    /// Tensors with fewer values are stored raw instead of predicted.
    #[arg(long, default_value_t = CompressOptions::default().selection.min_values)]
    pub min_values: usize,
    /// Predict only tensors whose name matches PATTERN (`*` any run, `?` one character; whole
    /// name; repeatable). Overrides the size thresholds; see "Which tensors are predicted".
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Store tensors whose name matches PATTERN raw (repeatable; wins over --include).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Random seed (same input, options and seed give the same bytes).
    #[arg(long, default_value_t = CompressOptions::default().seed)]
    pub seed: u64,
    /// Input preprocessing stored for `nerp eval`, e.g. "mean=0.286,std=0.353".
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Concrete f32 input shape for models with dynamic dimensions, e.g. 1,3,48,320 (one per
    /// input, in order); stored in the file for `run` and `eval`.
    #[arg(long, value_name = "DIMS")]
    pub input_shape: Vec<String>,
    /// No progress bar and no per-tensor report.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the report as one JSON object (instead of the table).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub distill: DistillArgs,
}

/// Training schedule and knowledge distillation (docs/distillation.md).
#[cfg(feature = "compress")]
#[derive(Debug, Args)]
pub struct DistillArgs {
    /// recon (data-free), joint (NeRN: recon + distillation on evenly spaced steps) or
    /// decoupled (recon, then distillation). --steps is the total for every schedule.
    #[arg(long, value_enum, default_value_t = DistillOptions::default().schedule, help_heading = "Distillation")]
    pub schedule: crate::compress::distill::Schedule,
    /// Decoupled: repeat recon → distillation this many times (steps split evenly).
    #[arg(long, default_value_t = DistillOptions::default().rounds, help_heading = "Distillation")]
    pub rounds: usize,
    /// Steps (of --steps) with a distillation term.
    #[arg(long, default_value_t = DistillOptions::default().kd_steps, help_heading = "Distillation")]
    pub kd_steps: usize,
    /// Training images per distillation step.
    #[arg(long, default_value_t = DistillOptions::default().kd_batch, help_heading = "Distillation")]
    pub kd_batch: usize,
    /// Peak learning rate of the decoupled distillation stage.
    #[arg(long, default_value_t = DistillOptions::default().kd_lr, help_heading = "Distillation")]
    pub kd_lr: f64,
    /// Softmax temperature of the KL divergence.
    #[arg(long, default_value_t = DistillOptions::default().temperature, help_heading = "Distillation")]
    pub temperature: f64,
    /// Weight of the output KL divergence (× T²).
    #[arg(long, default_value_t = DistillOptions::default().kl_weight, help_heading = "Distillation")]
    pub kl_weight: f64,
    /// Weight of the feature-map loss (only with the original network as teacher).
    #[arg(long, default_value_t = DistillOptions::default().feature_weight, help_heading = "Distillation")]
    pub feature_weight: f64,
    /// Joint: weight of the reconstruction loss.
    #[arg(long, default_value_t = DistillOptions::default().recon_weight, help_heading = "Distillation")]
    pub recon_weight: f64,
    /// Teacher network (ONNX) for distillation [default: the model being compressed].
    #[arg(long, help_heading = "Distillation")]
    pub teacher: Option<PathBuf>,
    /// Training images (train split): fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR
    /// [default: fashion-mnist]. Given with a budget (--size-ratio, --max-error), the chosen
    /// file is also fine-tuned on them (--finetune-steps).
    #[arg(long, help_heading = "Distillation")]
    pub data: Option<String>,
    /// Distillation steps of the chosen file's coded tensors [default: 800 when --data is given
    /// with --size-ratio or --max-error, else 0].
    #[arg(long, help_heading = "Distillation")]
    pub finetune_steps: Option<usize>,
    /// Peak learning rate of that fine-tuning, in quantization steps.
    #[arg(long, default_value_t = crate::compress::DEFAULT_FINETUNE_LR, help_heading = "Distillation")]
    pub finetune_lr: f64,
    /// Peak learning rate of the row scales and biases of that fine-tuning, relative to their
    /// size (0: they stay as chosen).
    #[arg(long, default_value_t = crate::compress::DEFAULT_FINETUNE_SCALE_LR, help_heading = "Distillation")]
    pub finetune_scale_lr: f64,
    /// Use only the first N training images.
    #[arg(long, help_heading = "Distillation")]
    pub data_limit: Option<usize>,
    /// Write the distillation losses of every step as JSON to this file.
    #[arg(long, help_heading = "Distillation")]
    pub kd_log: Option<PathBuf>,
}

#[cfg(feature = "compress")]
impl DistillArgs {
    fn options(&self) -> Result<crate::compress::distill::DistillOptions> {
        if let Some(t) = &self.teacher {
            existing(t)?;
        }
        Ok(crate::compress::distill::DistillOptions {
            schedule: self.schedule,
            rounds: self.rounds,
            kd_steps: self.kd_steps,
            kd_batch: self.kd_batch,
            kd_lr: self.kd_lr,
            temperature: self.temperature,
            kl_weight: self.kl_weight,
            feature_weight: self.feature_weight,
            recon_weight: self.recon_weight,
            teacher: self.teacher.clone(),
            data: DataSource::parse(self.data.as_deref().unwrap_or("fashion-mnist"))?,
            data_limit: self.data_limit,
        })
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    pub file: PathBuf,
    /// The original model (.onnx, or .safetensors for a safetensors source), to compare against.
    #[arg(long)]
    pub original: Option<PathBuf>,
    /// Input arrays (.npy, one per run; single-input ONNX models): compare the outputs of the
    /// regenerated and the original model on them instead of using a dataset.
    #[arg(long, value_name = "NPY")]
    pub inputs: Vec<PathBuf>,
    /// With --inputs, what the first output is: outputs (relative error only), classifier
    /// (top-1 agreement over the last axis), detector (IoU of maps > --threshold) or ctc
    /// (equality of greedy CTC decodings, blank 0).
    #[arg(long, value_enum, default_value_t = TaskName::Outputs)]
    pub task: TaskName,
    /// Probability threshold of --task detector.
    #[arg(long, default_value_t = 0.3)]
    pub threshold: f32,
    /// With --inputs, compare an output computed by a final Softmax before it (the logits):
    /// the relative error `nerp compress` measures and prints.
    #[arg(long)]
    pub logits: bool,
    /// Dataset: fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Preprocessing, e.g. "mean=0.286,std=0.353" [default: stored in the file].
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Where to regenerate the weights: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Evaluation threads.
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

#[cfg(feature = "compress")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the .nerp and decompressed files go.
    #[arg(long, default_value = "nerp-demo")]
    pub out_dir: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = crate::compress::DEMO_STEPS)]
    pub steps: usize,
    /// Predictor hidden width.
    #[arg(long, default_value_t = crate::compress::DEFAULT_HIDDEN)]
    pub hidden: usize,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `eval --task`: what the first output of a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskName {
    /// Relative error only.
    Outputs,
    /// Top-1 agreement over the last axis.
    Classifier,
    /// IoU of the maps thresholded at --threshold.
    Detector,
    /// Equality of greedy CTC decodings (blank 0).
    Ctc,
}

impl TaskName {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TaskName::Outputs => "outputs",
            TaskName::Classifier => "classifier",
            TaskName::Detector => "detector",
            TaskName::Ctc => "ctc",
        }
    }
}

/// The command line's default ordering: the library's ([`CompressOptions::default`]).
fn default_ordering() -> OrderingArg {
    OrderingArg::of(&CompressOptions::default())
}

/// `--ordering`: the format's stored orderings (spec section 3), or `channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderingArg {
    Stored(format::Ordering),
    /// Function-preserving channel order ([`crate::compress::permute`]), nothing stored.
    Channels,
}

impl OrderingArg {
    /// The ordering `opts` asks for.
    pub fn of(opts: &CompressOptions) -> Self {
        if opts.channels {
            OrderingArg::Channels
        } else {
            OrderingArg::Stored(opts.ordering)
        }
    }

    /// Sets `opts.ordering` and `opts.channels`.
    pub fn apply(self, opts: &mut CompressOptions) {
        (opts.ordering, opts.channels) = match self {
            OrderingArg::Stored(o) => (o, false),
            OrderingArg::Channels => (format::Ordering::None, true),
        };
    }
}

impl std::fmt::Display for OrderingArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.to_possible_value().expect("named").get_name())
    }
}

impl ValueEnum for OrderingArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            OrderingArg::Stored(format::Ordering::None),
            OrderingArg::Stored(format::Ordering::Infilter),
            OrderingArg::Stored(format::Ordering::Crossfilter),
            OrderingArg::Channels,
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            OrderingArg::Stored(o) => o.to_possible_value(),
            OrderingArg::Channels => Some(PossibleValue::new("channels")),
        }
    }
}

/// The format's names of the stored orderings (spec section 3).
impl ValueEnum for format::Ordering {
    fn value_variants<'a>() -> &'a [Self] {
        &[format::Ordering::None, format::Ordering::Infilter, format::Ordering::Crossfilter]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            format::Ordering::None => "none",
            format::Ordering::Infilter => "infilter",
            format::Ordering::Crossfilter => "crossfilter",
        }))
    }
}

/// `--predictor-dtype`: the format's names (spec section 3).
impl ValueEnum for format::WeightDtype {
    fn value_variants<'a>() -> &'a [Self] {
        use format::WeightDtype::*;
        &[F32, F16, Bf16, Int8, Int4]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// `--scale-dtype`: the format's names (spec section 3).
impl ValueEnum for format::ScaleDtype {
    fn value_variants<'a>() -> &'a [Self] {
        &[format::ScaleDtype::F32, format::ScaleDtype::F16]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            format::ScaleDtype::F32 => "f32",
            format::ScaleDtype::F16 => "f16",
        }))
    }
}

/// `--schedule`.
#[cfg(feature = "compress")]
impl ValueEnum for crate::compress::distill::Schedule {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::compress::distill::Schedule;
        &[Schedule::Recon, Schedule::Joint, Schedule::Decoupled]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        use crate::compress::distill::Schedule;
        Some(PossibleValue::new(match self {
            Schedule::Recon => "recon",
            Schedule::Joint => "joint",
            Schedule::Decoupled => "decoupled",
        }))
    }
}

/// An input file that must exist (a missing one is a usage error, exit code 2).
fn existing(path: &Path) -> Result<&Path> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::usage("input file", format!("{} does not exist or is not a file", path.display())))
    }
}

/// Whether to draw progress bars: on a terminal and not asked to be quiet.
fn show_progress(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    if let Some(size) = &cli.max_memory {
        format::budget::set_limit(format::budget::parse_size(size)?);
    }
    crate::format::output::install_interrupt_cleanup();
    match cli.command {
        #[cfg(feature = "compress")]
        Command::Compress(a) => compress(*a).map(|_| 0),
        Command::Inspect { file, json } => inspect(existing(&file)?, json).map(|_| 0),
        Command::Verify { file } => verify(existing(&file)?),
        Command::Decompress { file, output, device } => {
            decompress(existing(&file)?, &output, &device).map(|_| 0)
        }
        Command::Run { file, input, output, device } => {
            run_model(existing(&file)?, existing(&input)?, output.as_deref(), &device).map(|_| 0)
        }
        Command::Eval(a) => eval_any(a).map(|_| 0),
        #[cfg(feature = "compress")]
        Command::Demo(a) => demo(a).map(|_| 0),
    }
}

#[cfg(feature = "compress")]
fn compress(a: CompressArgs) -> Result<crate::compress::CompressReport> {
    existing(&a.input)?;
    let mut opts = CompressOptions {
        hidden: a.hidden,
        target_ratio: a.target_ratio,
        size_ratio: a.size_ratio,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        ordering: CompressOptions::default().ordering,
        embedding: format::Embedding { base: a.pe_base, levels: a.pe_levels },
        predictor_dtype: a.predictor_dtype,
        qat_fraction: a.qat_fraction,
        scale_dtype: a.scale_dtype,
        raw_codec: a.raw_codec,
        residual: a.residual.unwrap_or(crate::compress::ResidualMode::Auto),
        error_budget: a.max_error.unwrap_or(CompressOptions::default().error_budget),
        calibration_images: a.calibration,
        calibration_inputs: a.calibration_inputs,
        check: a.check,
        check_inputs: a.check_inputs,
        measured_candidates: a.measured_candidates,
        data_aware_rounding: !a.nearest_rounding,
        finetune: crate::compress::finetune::Finetune {
            steps: a.distill.finetune_steps.unwrap_or(
                match a.distill.data.is_some() && (a.size_ratio.is_some() || a.max_error.is_some()) {
                    true => crate::compress::DEFAULT_FINETUNE_STEPS,
                    false => 0,
                },
            ),
            lr: a.distill.finetune_lr,
            scale_lr: a.distill.finetune_scale_lr,
        },
        filter_scales: !a.no_filter_scales,
        selection: crate::compress::select::Selection {
            include: a.include,
            exclude: a.exclude,
            min_values: a.min_values,
        },
        seed: a.seed,
        distill: a.distill.options()?,
        ..CompressOptions::default()
    };
    a.ordering.apply(&mut opts);
    opts.preprocess = a.preprocess.as_deref().map(Preprocess::parse).transpose()?;
    opts.input_shapes = a.input_shape.iter().map(|s| runtime::parse_shape(s)).collect::<Result<Vec<_>>>()?;
    let report = compress_with_progress(&a.input, &a.output, &opts, a.quiet || a.json)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(path) = &a.distill.kd_log {
        let json = serde_json::to_vec_pretty(&report.kd_losses).expect("serializes");
        format::write_atomic(path, &json)?;
    }
    if a.json {
        println!("{}", serde_json::to_value(&report).expect("serializes"));
    } else if !a.quiet {
        print_compress_report(&report);
    }
    Ok(report)
}

pub use crate::format::metadata::PREPROCESS_KEY;

#[cfg(feature = "compress")]
fn compress_with_progress(
    input: &Path,
    output: &Path,
    opts: &crate::compress::CompressOptions,
    quiet: bool,
) -> Result<crate::compress::CompressReport> {
    let bar = training_bar(opts.steps, quiet);
    let mut bars = Bars { bar: &bar, steps: opts.steps, stage: String::new() };
    let report = crate::compress::compress(input, output, opts, &mut bars);
    bar.finish_and_clear();
    report
}

/// The training progress bar (hidden with `--quiet` or when stderr is not a terminal).
#[cfg(feature = "compress")]
fn training_bar(steps: usize, quiet: bool) -> indicatif::ProgressBar {
    use indicatif::ProgressBar;
    if !show_progress(quiet) {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(steps as u64);
    b.set_style(training_style());
    b
}

/// The training bar's look.
#[cfg(feature = "compress")]
fn training_style() -> indicatif::ProgressStyle {
    let style = "training {bar:30} {pos}/{len} steps, loss {msg}, {per_sec}, ETA {eta}";
    indicatif::ProgressStyle::with_template(style).expect("valid template")
}

/// Compression's progress, drawn on one bar: training steps with their loss, and the stages of
/// other long work (the streaming compress, token calibration) with their counts.
#[cfg(feature = "compress")]
struct Bars<'a> {
    bar: &'a indicatif::ProgressBar,
    steps: usize,
    /// The stage drawn now (empty: training).
    stage: String,
}

#[cfg(feature = "compress")]
impl crate::compress::train::Progress for Bars<'_> {
    fn step(&mut self, step: usize, loss: f64) {
        if step == 0 {
            if !self.stage.is_empty() {
                self.stage.clear();
                self.bar.set_style(training_style());
                self.bar.set_length(self.steps as u64);
            }
            // Ingest and ordering happened before: start the rate and ETA from here.
            self.bar.reset();
        }
        if step.is_multiple_of(10) || step + 1 == self.steps {
            self.bar.set_position(step as u64 + 1);
            self.bar.set_message(format!("{loss:.5}"));
        }
    }

    fn stage(&mut self, what: &str, done: usize, total: usize) {
        if self.stage != what {
            self.stage = what.to_string();
            let style = "{msg} {bar:30} {pos}/{len}, {elapsed}, ETA {eta}";
            self.bar.set_style(indicatif::ProgressStyle::with_template(style).expect("valid template"));
            self.bar.set_message(what.to_string());
            self.bar.reset();
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }
}

/// `--max-error`: a relative error in (0, ∞), or `off`.
#[cfg(feature = "compress")]
fn parse_max_error(s: &str) -> std::result::Result<crate::compress::ErrorBudget, String> {
    use crate::compress::ErrorBudget;
    if s == "off" {
        return Ok(ErrorBudget::Off);
    }
    match s.parse::<f64>() {
        Ok(e) if e.is_finite() && e >= 0.0 => Ok(ErrorBudget::Target(e)),
        _ => Err(format!("{s:?} is not a relative error (a number such as 0.05) or `off`")),
    }
}

#[cfg(feature = "compress")]
fn parse_residual(s: &str) -> std::result::Result<crate::compress::ResidualMode, String> {
    use crate::compress::ResidualMode;
    match s {
        "off" => Ok(ResidualMode::Off),
        _ => s
            .parse::<u8>()
            .map(ResidualMode::Every)
            .map_err(|_| format!("{s:?} is not a number of bits or `off`")),
    }
}

#[cfg(feature = "compress")]
fn print_compress_report(r: &crate::compress::CompressReport) {
    println!(
        "{:<40} {:>18} {:>9} {:>10} {:>8} {:>10} -> {:>9}",
        "tensor", "shape", "stored", "rmse", "rel", "bytes", "bytes"
    );
    let mut raw_reasons: Vec<String> = Vec::new();
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        let (kind, rmse, rel) = if t.predicted {
            (t.stored.as_str(), format!("{:.5}", t.rmse), format!("{:.2}%", 100.0 * t.rel_error))
        } else if t.stored.starts_with("raw") {
            if t.stored.len() > 4 && !raw_reasons.contains(&t.stored) {
                raw_reasons.push(t.stored.clone());
            }
            ("raw", "-".into(), "-".into())
        } else {
            (t.stored.as_str(), "-".into(), "-".into())
        };
        let rel = match t.error_alone {
            Some(e) => format!("{rel} e={:.2}%", 100.0 * e),
            None => rel,
        };
        println!(
            "{:<40} {:>18} {:>9} {:>10} {:>8} {:>10} -> {:>9}",
            truncate(&t.name, 40),
            shape,
            kind,
            rmse,
            rel,
            t.bytes_before,
            t.bytes_after
        );
    }
    for why in raw_reasons {
        let n = r.tensors.iter().filter(|t| t.stored == why).count();
        println!("{n} tensor(s) {why}");
    }
    if r.predictor_params == 0 {
        println!("predictor: none stored");
    } else {
        println!(
        "predictor: hidden {}, {} parameters for {} weights ({:.2}x); weight RMSE {:.5}; final loss {:.5}",
        r.hidden,
        r.predictor_params,
        r.represented,
        r.param_ratio(),
        r.weight_rmse,
        r.final_loss
    );
    }
    // Where the probe did not stop the training (its warning says so), its line is news here.
    let said = r.warnings.iter().any(|w| w.starts_with("predictor probe"));
    if let Some(p) = r.probe.as_ref().filter(|_| !said) {
        println!("{}", p.line());
    }
    println!("storage: {}", r.storage_summary());
    if let Some(s) = &r.storage {
        let pct = |e: f64| format!("{:.2}%", 100.0 * e);
        let mut measured = String::new();
        if let Some(f) = s.fitted_error {
            measured += &format!(", on the {} fit inputs {}", s.fit_inputs, pct(f));
        }
        if let Some(m) = s.measured_error {
            measured +=
                &format!(", on the {} held-back inputs {} (the file's error)", s.check_inputs, pct(m));
        }
        if let Some(b) = s.error_bound {
            // An error budget is checked against the bound; a byte budget only reports it.
            measured += &format!(", at most {} on inputs like them (95% bound)", pct(b));
        }
        if let Some(t) = s.top1_agreement {
            measured += &format!("; held back: top-1 agreement {}", pct(t));
        }
        if let Some(a) = s.input_agreement {
            measured += &format!(", inputs agreeing in every row {}", pct(a));
        }
        println!(
            "storage chosen per tensor under {} ({} errors): {}; error estimated {}{measured}; budget {}",
            s.budget,
            s.measure,
            if s.with_predictor { "predictor and codecs" } else { "codecs only" },
            pct(s.estimated_error),
            match (s.met, s.measured_error.is_some()) {
                (true, true) => "met on the fit and the held-back inputs",
                (true, false) => "met",
                (false, _) => "NOT met",
            },
        );
        let tries: Vec<String> = s
            .tries
            .iter()
            .map(|t| {
                let aim = match t.target {
                    crate::compress::choose::Budget::Bytes(b) => format!("{b} B"),
                    crate::compress::choose::Budget::Error(e) => format!("error {}", pct(e)),
                };
                let what = if t.with_predictor { "with predictor " } else { "" };
                let met = if t.met { "met" } else { "not met" };
                format!("{what}aimed at {aim}: {} B, {} ({met})", t.bytes, pct(t.error))
            })
            .collect();
        if !tries.is_empty() {
            println!("allocations tried: {}", tries.join("; "));
        }
    }
    if let Some(f) = &r.finetune {
        let pct = |e: Option<f64>| e.map_or("-".into(), |e| format!("{:.2}%", 100.0 * e));
        println!(
            "fine-tuned {} coded tensors by distillation: {} steps of {} images (of {}), KL {:.4} -> {:.4}, \
             {} codes changed, error {} -> {}{}, {:.1} s",
            f.tensors,
            f.steps,
            f.batch,
            f.images,
            f.first_loss,
            f.last_loss,
            f.changed,
            pct(f.error_before),
            pct(f.error_after),
            if f.kept { "" } else { " (not kept: the warnings say why)" },
            f.seconds
        );
    }
    if r.qat_steps > 0 {
        println!(
            "quantization-aware: the last {} of {} steps trained on the stored predictor",
            r.qat_steps, r.steps
        );
    }
    println!(
        "file: {} -> {} bytes ({:.2}x) in {:.1} s",
        r.source_bytes,
        r.file_bytes,
        r.byte_ratio(),
        r.seconds
    );
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s.chars().rev().take(n - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}

/// Stored bytes of a file by what they hold: predictor, permutations, scales, header
/// (preamble, header and padding), raw tensors, quantized (and cast) tensors, skeleton.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ByteBreakdown {
    pub predictor: u64,
    pub permutations: u64,
    pub scales: u64,
    pub header: u64,
    pub raw: u64,
    pub quantized: u64,
    pub skeleton: u64,
}

impl ByteBreakdown {
    /// The breakdown of a file from its header; `data_offset` counts as header. Gaps between
    /// sections (alignment) are counted with the section before them.
    pub fn of(h: &format::Header, data_offset: u64, file_len: u64) -> Self {
        let mut b = ByteBreakdown { header: data_offset, ..Default::default() };
        let mut quantized = vec![false; h.sections.len()];
        for t in &h.tensors {
            if let Storage::Cast { section, .. } = t.storage {
                quantized[section] = true;
            }
        }
        for (i, s) in h.sections.iter().enumerate() {
            let end = h.sections.get(i + 1).map_or(file_len - data_offset, |n| n.offset);
            let len = end.saturating_sub(s.offset);
            let slot = match s.kind {
                format::SectionKind::Skeleton => &mut b.skeleton,
                format::SectionKind::Predictor => &mut b.predictor,
                format::SectionKind::Permutation => &mut b.permutations,
                format::SectionKind::Scales => &mut b.scales,
                format::SectionKind::Quantized | format::SectionKind::Coded => &mut b.quantized,
                format::SectionKind::Tensor if quantized[i] => &mut b.quantized,
                format::SectionKind::Tensor => &mut b.raw,
            };
            *slot += len;
        }
        b
    }
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let info = format::read::read_header_info(path)?;
    let (h, file_len, major) = (&info.header, info.file_len, info.major);
    let data_offset = format::align_up(format::PREAMBLE_LEN + info.header_len).unwrap_or(file_len);
    let bytes = ByteBreakdown::of(h, data_offset, file_len);
    if json {
        let mut v = serde_json::to_value(h).expect("serializes");
        v["major"] = major.into();
        v["file_bytes"] = file_len.into();
        v["header_json_bytes"] = info.json_len.into();
        v["bytes"] = serde_json::to_value(bytes).expect("serializes");
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(());
    }
    println!("{}: nerp format v{major}, {} bytes", path.display(), file_len);
    println!(
        "source: {:?}, {} bytes ({:.2}x)",
        h.source.kind,
        h.source.file_bytes,
        h.source.file_bytes as f64 / file_len as f64
    );
    let compressed =
        if major >= 3 { format!(" (JSON {} bytes, zstd-compressed)", info.json_len) } else { String::new() };
    println!("header: {} bytes{compressed}", info.header_len);
    let ByteBreakdown { predictor, permutations, scales, header, raw, quantized, skeleton } = bytes;
    println!(
        "bytes: predictor {predictor}, permutations {permutations}, scales {scales}, header {header}, \
         raw {raw}, quantized {quantized}, skeleton {skeleton}"
    );
    let mut by_kind: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for s in &h.sections {
        let e = by_kind.entry(s.kind.name()).or_default();
        e.0 += 1;
        e.1 += s.length;
    }
    for (k, (n, bytes)) in &by_kind {
        println!("sections: {n:>5} {k:<12} {bytes:>10} bytes");
    }
    let predicted: u64 = h
        .tensors
        .iter()
        .filter(|t| matches!(t.storage, Storage::Predicted { .. }))
        .map(|t| t.shape.iter().product::<u64>())
        .sum();
    if let Some(p) = &h.predictor {
        let params = crate::predictor::param_count(p.hidden as usize, p.embedding.levels as usize);
        println!(
            "predictor: {} hidden {}, embedding base {} levels {}, {} weights, ordering {:?}; {} parameters for {} weights ({:.2}x)",
            p.arch, p.hidden, p.embedding.base, p.embedding.levels, p.dtype.name(), p.ordering, params, predicted,
            predicted as f64 / params as f64
        );
    }
    println!("{:<40} {:>6} {:>18} {:>10} {:>10}", "tensor", "dtype", "shape", "stored", "bytes");
    for t in &h.tensors {
        let (kind, bytes) = match t.storage {
            Storage::Raw { section }
            | Storage::Cast { section, .. }
            | Storage::Quantized { section, .. }
            | Storage::Coded { section, .. } => {
                (crate::codec::Codec::of(&t.storage).unwrap_or_default().name(), h.sections[section].length)
            }
            Storage::Predicted { permutation, scales, layout, residual, .. } => {
                let name = if layout == format::Layout::Conv { "predicted" } else { "pred:matrix" };
                (
                    crate::codec::Codec::of(&t.storage).map_or(name.to_string(), |r| format!("{name}+{r}")),
                    h.sections[permutation].length
                        + scales.map_or(0, |s| h.sections[s].length)
                        + residual.map_or(0, |r| h.sections[r.section()].length),
                )
            }
        };
        println!(
            "{:<40} {:>6} {:>18} {:>10} {:>10}",
            truncate(&t.name, 40),
            t.dtype.name().to_string(),
            format!("{:?}", t.shape),
            kind,
            bytes
        );
    }
    for (k, v) in &h.metadata {
        println!("metadata: {k} = {}", truncate(v, 80));
    }
    Ok(())
}

fn verify(path: &Path) -> Result<i32> {
    let check = || -> Result<NerpFile> {
        let file = NerpFile::open(path)?;
        crate::runtime::verify::verify(&file)?;
        Ok(file)
    };
    match check() {
        Ok(file) => {
            let h = file.header();
            println!(
                "{}: valid ({} tensors, {} sections, {} bytes)",
                path.display(),
                h.tensors.len(),
                h.sections.len(),
                file.file_len()
            );
            Ok(0)
        }
        // Anything that would make `decompress` or `run` refuse the file makes it invalid;
        // usage errors (a missing file) keep their exit code 2.
        Err(e) if !e.is_usage() => {
            let msg = e.to_string();
            if msg.starts_with(&path.display().to_string()) {
                println!("{msg}");
            } else {
                println!("{}: invalid: {msg}", path.display());
            }
            Ok(1)
        }
        Err(e) => Err(e),
    }
}

/// Opens `--device`; for `auto`, says which device it chose and, for the CPU, why.
fn open_device(name: &str) -> Result<crate::Device> {
    if name != "auto" {
        return device::open(name);
    }
    let (d, why) = device::open_auto();
    match why {
        Some(why) => eprintln!("regenerating on {} (no GPU: {why})", d.describe()),
        None => eprintln!("regenerating on {}", d.describe()),
    }
    Ok(d)
}

fn decompress(path: &Path, output: &Path, device_name: &str) -> Result<()> {
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "onnx" && ext != "safetensors" {
        return Err(Error::usage(
            "--output",
            format!("{} must end in .onnx or .safetensors", output.display()),
        ));
    }
    crate::format::output::check_not_an_input(output, &[path], "--output")?;
    // The options are checked before any work, the device among them.
    let device = open_device(device_name)?;
    let file = crate::open(path)?;
    if ext == "safetensors" && runtime::stream::write_safetensors(&file, output)?.is_some() {
        println!("wrote {}", output.display());
        return Ok(());
    }
    let weights = regen::regenerate(&file, &device)?;
    if ext == "onnx" {
        let proto = runtime::rebuild_onnx(&file, &weights)?;
        format::write_atomic(output, &runtime::onnx_bytes(&proto))?;
    } else {
        runtime::write_safetensors(&file, &weights, output)?;
    }
    println!("wrote {}", output.display());
    Ok(())
}

fn run_model(path: &Path, input: &Path, output: Option<&Path>, device_name: &str) -> Result<()> {
    if let Some(o) = output {
        if o.extension().and_then(|e| e.to_str()) != Some("npy") {
            return Err(Error::usage(
                "--output",
                format!("{} must end in .npy (the output is a NumPy array)", o.display()),
            ));
        }
        crate::format::output::check_not_an_input(o, &[path, input], "--output")?;
    }
    let device = open_device(device_name)?;
    let x = npy::read(input)?;
    // The input's own shape fixes dynamic dimensions (f32 inputs; else the stored shapes).
    let model = if x.datum_type() == tract_onnx::prelude::DatumType::F32 {
        let file = crate::open(path)?;
        let weights = regen::regenerate(&file, &device)?;
        runtime::Model::from_proto_shaped(&runtime::rebuild_onnx(&file, &weights)?, &[x.shape().to_vec()])?
    } else {
        crate::load_model(path, &device)?
    };
    let out = model.run(std::iter::once(x.into()).collect())?;
    let first =
        out.first().ok_or_else(|| Error::Rebuild("the model has no outputs".into()))?.cast_to::<f32>()?;
    let plain = first.try_as_plain_ram()?;
    let values = plain.as_slice::<f32>()?;
    crate::error::check_finite(
        || format!("output 0 of {} on {}", path.display(), input.display()),
        values,
        crate::eval::fidelity::NON_FINITE_OUTPUT,
    )?;
    match output {
        Some(o) => {
            npy::write_f32(o, values, first.shape())?;
            println!("wrote {} {:?}", o.display(), first.shape());
        }
        None => println!("output 0 {:?}: {:?}", first.shape(), values),
    }
    Ok(())
}

/// The preprocessing for evaluation: the flag, else the file's metadata.
fn preprocess_for(file: &NerpFile, flag: Option<&str>) -> Result<Preprocess> {
    if let Some(p) = flag {
        return Preprocess::parse(p);
    }
    let stored = Preprocess::stored(file).map_err(|e| {
        Error::usage(
            "--preprocess",
            format!("the file's stored preprocessing is invalid ({e}); pass --preprocess"),
        )
    })?;
    match stored {
        Some(p) => Ok(p),
        None => Err(Error::usage(
            "--preprocess",
            "the file stores no preprocessing; pass e.g. --preprocess mean=0.286,std=0.353 (or compress with --preprocess)",
        )),
    }
}

/// `nerp eval`: weights fidelity (safetensors), output fidelity (--inputs) or a dataset.
fn eval_any(a: EvalArgs) -> Result<()> {
    check_eval_args(&a)?;
    let (h, _) = format::read_header(&a.file)?;
    if h.source.kind == format::SourceKind::Safetensors {
        return eval_weights(a);
    }
    if !a.inputs.is_empty() {
        return eval_outputs(a);
    }
    eval_cmd(a).map(|_| ())
}

fn need_original(a: &EvalArgs, what: &str) -> Result<PathBuf> {
    let o = a.original.clone().ok_or_else(|| {
        Error::usage(
            "--original",
            format!("{what} compares against the original model; pass --original FILE"),
        )
    })?;
    existing(&o)?;
    Ok(o)
}

/// Per-tensor relative error of a safetensors round trip.
fn eval_weights(a: EvalArgs) -> Result<()> {
    let orig_path = need_original(&a, "a safetensors source")?;
    let device = open_device(&a.device)?;
    let r = crate::eval::fidelity::weights_report(&a.file, &orig_path, &device)?;
    if a.json {
        println!("{}", serde_json::to_value(&r).expect("serializes"));
    } else {
        let (all, pred, raw_exact) = (&r.tensors, &r.worst, r.raw_tensors_exact);
        println!("{} tensors, {} predicted; raw tensors exact: {raw_exact}", all.len(), pred.len());
        println!("predicted tensors: mean relative error {:.4}; worst:", r.mean_rel_error);
        for t in pred.iter().take(5) {
            println!(
                "  {:<50} {:>16} rel {:.4} max |diff| {:.4}",
                truncate(&t.name, 50),
                format!("{:?}", t.shape),
                t.rel_error,
                t.max_abs_diff
            );
        }
        println!("load (open + regenerate): {:.3} s", r.load_seconds);
    }
    Ok(())
}

/// Label-free fidelity of an ONNX model on input arrays.
fn eval_outputs(a: EvalArgs) -> Result<()> {
    let orig_path = need_original(&a, "--inputs")?;
    let task = match a.task {
        TaskName::Classifier => crate::eval::fidelity::Task::Classifier,
        TaskName::Detector => crate::eval::fidelity::Task::Detector { threshold: a.threshold },
        TaskName::Ctc => crate::eval::fidelity::Task::Ctc,
        TaskName::Outputs => crate::eval::fidelity::Task::Outputs,
    };
    let device = open_device(&a.device)?;
    for path in &a.inputs {
        existing(path)?;
    }
    let r = crate::eval::fidelity::outputs_report(&a.file, &orig_path, &a.inputs, task, a.logits, &device)?;
    let f = &r.fidelity;
    if a.json {
        let mut v = serde_json::to_value(&r).expect("serializes");
        v["task"] = a.task.name().into();
        println!("{v}");
    } else {
        println!(
            "inputs: {} ({}), task {}",
            f.inputs,
            a.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            a.task.name()
        );
        println!("relative output error: {:.4} (max |diff| {:.4})", f.rel_error, f.max_abs_diff);
        if let Some(v) = f.top1_agreement {
            println!("top-1 agreement:       {:.2}%", 100.0 * v);
        }
        if let Some(v) = f.iou {
            println!("IoU of maps > {}:     {:.4}", a.threshold, v);
        }
        if let (Some(v), Some(s)) = (f.ctc_equal, f.sequences) {
            println!("equal CTC decodings:   {:.2}% of {s}", 100.0 * v);
        }
        println!(
            "load (open + regenerate + rebuild): {:.3} s; run {:.1} ms per input ({:.1} ms original)",
            r.load_seconds, r.ms_per_input, r.ms_per_input_original
        );
    }
    Ok(())
}

/// Checks `eval`'s paths and options before any work; returns the parsed `--data`.
fn check_eval_args(a: &EvalArgs) -> Result<DataSource> {
    existing(&a.file)?;
    if let Some(o) = &a.original {
        existing(o)?;
    }
    if a.threads == 0 || a.threads > 256 {
        return Err(Error::usage("--threads", "must be in 1..=256"));
    }
    if a.limit == Some(0) {
        return Err(Error::usage("--limit", "must be at least 1"));
    }
    DataSource::parse(&a.data)
}

fn eval_cmd(a: EvalArgs) -> Result<eval::EvalReport> {
    let source = check_eval_args(&a)?;
    let device = open_device(&a.device)?;
    let file = crate::open(&a.file)?;
    let pre = preprocess_for(&file, a.preprocess.as_deref())?;
    let data = data::load(&source, Split::Test, a.limit, &pre)?;
    let t = Instant::now();
    let model = runtime::Model::from_file(&file, &device)?;
    let load_s = t.elapsed().as_secs_f64();
    let original = a.original.as_deref().map(runtime::Model::from_onnx_file).transpose()?;
    let report = run_eval(&model, original.as_ref(), &data, a.threads, a.quiet || a.json)?;
    if a.json {
        let mut v = serde_json::to_value(&report).expect("serializes");
        v["load_seconds"] = load_s.into();
        v["data"] = data.origin.display().to_string().into();
        println!("{v}");
    } else {
        print_eval(&report, &data.origin);
        println!("load (open + regenerate + build): {:.3} s", load_s);
    }
    Ok(report)
}

fn run_eval(
    model: &runtime::Model,
    original: Option<&runtime::Model>,
    data: &data::Dataset,
    threads: usize,
    quiet: bool,
) -> Result<eval::EvalReport> {
    let passes = if original.is_some() { 2 } else { 1 };
    let bar = if show_progress(quiet) {
        let b = indicatif_bar((data.len() * passes) as u64);
        Some(b)
    } else {
        None
    };
    let tick = |n: usize| {
        if let Some(b) = &bar {
            b.inc(n as u64)
        }
    };
    let r = eval::evaluate(model, original, data, threads, &tick);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r
}

#[cfg(feature = "compress")]
fn indicatif_bar(len: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("evaluating {bar:30} {pos}/{len} images, ETA {eta}")
            .expect("valid template"),
    );
    b
}

#[cfg(not(feature = "compress"))]
fn indicatif_bar(_len: u64) -> NoBar {
    NoBar
}

/// Stand-in when built without indicatif.
#[cfg(not(feature = "compress"))]
struct NoBar;

#[cfg(not(feature = "compress"))]
impl NoBar {
    fn inc(&self, _: u64) {}
    fn finish_and_clear(&self) {}
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn print_eval(r: &eval::EvalReport, origin: &Path) {
    println!("data: {} ({} images)", origin.display(), r.images);
    println!("original accuracy:    {}", pct(r.original_accuracy));
    println!("regenerated accuracy: {:.2}%", 100.0 * r.regenerated_accuracy);
    if let Some(d) = r.drop_points() {
        println!("drop:                 {d:.2} points");
    }
    println!("top-1 agreement:      {}", pct(r.agreement));
    if let (Some(m), Some(a)) = (r.max_abs_logit_diff, r.mean_abs_logit_diff) {
        println!("logit |diff|:         max {m:.4}, mean {a:.4}");
    }
    if let Some(e) = r.rel_logit_error {
        println!("relative logit error: {:.2}%", 100.0 * e);
    }
    println!(
        "time per image:       {:.3} ms (regenerated){}",
        r.ms_per_image,
        r.ms_per_image_original.map_or(String::new(), |o| format!(", {o:.3} ms (original)"))
    );
}

#[cfg(feature = "compress")]
fn demo(a: DemoArgs) -> Result<()> {
    let o = crate::eval::demo::DemoOptions {
        out_dir: a.out_dir,
        steps: a.steps,
        hidden: a.hidden,
        limit: a.limit,
        threads: default_threads(),
    };
    o.compress_options()?;
    eprintln!("compressing the bundled ResNet-20 (Fashion-MNIST) into {} ...", o.paths().nerp.display());
    let bar = training_bar(o.steps, a.quiet);
    let prepared =
        crate::eval::demo::prepare(&o, &mut Bars { bar: &bar, steps: o.steps, stage: String::new() });
    bar.finish_and_clear();
    let prepared = prepared?;
    eprintln!("evaluating on {} ...", data::resolve_fashion_mnist());
    let eval_bar = show_progress(a.quiet).then(|| indicatif_bar(prepared.work() as u64));
    let tick = |n: usize| {
        if let Some(b) = &eval_bar {
            b.inc(n as u64)
        }
    };
    let r = prepared.evaluate(&tick);
    if let Some(b) = eval_bar {
        b.finish_and_clear();
    }
    let r = r?;
    let (c, e) = (&r.compress, &r.eval);
    println!();
    println!("| nerp demo: ResNet-20 on Fashion-MNIST ({} test images) | |", e.images);
    println!("|---|---|");
    println!("| original ONNX | {} bytes |", c.source_bytes);
    println!("| .nerp file | {} bytes ({}) |", c.file_bytes, r.paths.nerp.display());
    println!("| byte ratio (ONNX ÷ .nerp) | {:.2}x |", c.byte_ratio());
    println!("| storage | {} |", c.storage_summary());
    if c.predictor_params > 0 {
        println!(
            "| predictor | hidden {}, {} parameters for {} kernel weights |",
            c.hidden, c.predictor_params, c.represented
        );
        println!("| parameter ratio | {:.2}x |", c.param_ratio());
        println!("| weight RMSE | {:.5} |", c.weight_rmse);
    }
    if let Some(s) = &c.storage {
        let measured = s.measured_error.map_or("-".into(), |m| format!("{:.2}%", 100.0 * m));
        let fitted = s.fitted_error.map_or("-".into(), |m| format!("{:.2}%", 100.0 * m));
        let bound = s.error_bound.map_or("-".into(), |m| format!("{:.2}%", 100.0 * m));
        println!(
            "| output error on {} held-back training images | {measured}, 95% bound {bound} (budget {}; on the {} fit images {fitted}) |",
            s.check_inputs, s.budget, s.fit_inputs
        );
    }
    println!("| accuracy, original | {} |", pct(e.original_accuracy));
    println!("| accuracy, regenerated | {:.2}% |", 100.0 * e.regenerated_accuracy);
    println!("| drop | {:.2} points |", e.drop_points().unwrap_or(f64::NAN));
    println!("| top-1 agreement | {} |", pct(e.agreement));
    if let Some(err) = e.rel_logit_error {
        println!("| output error on the test images | {:.2}% |", 100.0 * err);
    }
    let steps = if c.predictor_params > 0 { format!("{} steps, ", c.steps) } else { String::new() };
    println!("| compression time | {:.1} s ({steps}{} threads) |", c.seconds, o.threads);
    println!("| load: open + regenerate | {:.3} s |", r.regen_seconds);
    println!(
        "| load: + build tract model | {:.3} s (original ONNX into tract: {:.3} s) |",
        r.load_seconds, r.original_load_seconds
    );
    println!(
        "| inference per image | {:.3} ms regenerated, {} ms original |",
        e.ms_per_image,
        e.ms_per_image_original.map_or("-".into(), |v| format!("{v:.3}"))
    );
    println!("| data | {} |", r.data);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
