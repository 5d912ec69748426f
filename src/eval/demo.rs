//! `nerp demo`: compress the bundled ResNet-20, rebuild it from the `.nerp` file and compare it
//! with the original on Fashion-MNIST. The command line only prints the [`DemoReport`].

use crate::compress::{self, CompressOptions, CompressReport};
use crate::data::{self, DataSource, Preprocess, Split};
use crate::error::{Error, Result};
use crate::eval::{self, EvalReport};
use crate::format;
use crate::{runtime, runtime::regen};
use std::path::PathBuf;
use std::time::Instant;

/// The bundled default model of `nerp demo`.
pub const DEMO_MODEL: &[u8] = include_bytes!("../../examples/models/resnet20_fashion_mnist.onnx");
/// Its metadata (test accuracy, preprocessing).
pub const DEMO_MODEL_JSON: &str = include_str!("../../examples/models/resnet20_fashion_mnist.json");

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the ONNX copy and the `.nerp` file go.
    pub out_dir: PathBuf,
    pub steps: usize,
    pub hidden: usize,
    /// Evaluate only the first N test images.
    pub limit: Option<usize>,
    /// Evaluation threads.
    pub threads: usize,
}

/// Paths the demo writes.
#[derive(Debug, Clone)]
pub struct DemoPaths {
    pub onnx: PathBuf,
    pub nerp: PathBuf,
}

impl DemoOptions {
    /// The files the demo writes into `out_dir`.
    pub fn paths(&self) -> DemoPaths {
        DemoPaths {
            onnx: self.out_dir.join("resnet20_fashion_mnist.onnx"),
            nerp: self.out_dir.join("resnet20_fashion_mnist.nerp"),
        }
    }

    /// The compression options: the defaults with this width and step count, and the bundled
    /// model's preprocessing recorded in the file.
    pub fn compress_options(&self) -> Result<CompressOptions> {
        let mut opts = CompressOptions { hidden: Some(self.hidden), steps: self.steps, ..Default::default() };
        opts.validate()?;
        if self.limit == Some(0) {
            return Err(Error::usage("--limit", "must be at least 1"));
        }
        opts.preprocess = Some(bundled_preprocess()?);
        Ok(opts)
    }
}

/// The bundled model's input normalisation.
pub fn bundled_preprocess() -> Result<Preprocess> {
    let meta: serde_json::Value = serde_json::from_str(DEMO_MODEL_JSON).expect("bundled JSON is valid");
    let norm = &meta["normalize"];
    let (mean, std) = (norm["mean"].as_f64().unwrap_or(0.0), norm["std"].as_f64().unwrap_or(1.0));
    Preprocess::parse(&format!("mean={mean},std={std}"))
}

/// Everything the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub paths: DemoPaths,
    pub compress: CompressReport,
    pub eval: EvalReport,
    /// Open + regenerate, seconds.
    pub regen_seconds: f64,
    /// Open + regenerate + build the tract model, seconds.
    pub load_seconds: f64,
    /// The original ONNX into tract, seconds.
    pub original_load_seconds: f64,
    /// Where the test images came from.
    pub data: String,
}

/// The demo up to evaluation: compressed, rebuilt, data loaded.
pub struct Prepared {
    pub paths: DemoPaths,
    pub compress: CompressReport,
    pub regenerated: runtime::Model,
    pub original: runtime::Model,
    pub data: data::Dataset,
    regen_seconds: f64,
    load_seconds: f64,
    original_load_seconds: f64,
    threads: usize,
}

/// Compresses the bundled model (`train` is compression's progress callback), rebuilds it from
/// the `.nerp` file and loads the test images.
pub fn prepare(o: &DemoOptions, train: &mut dyn crate::compress::train::Progress) -> Result<Prepared> {
    let opts = o.compress_options()?;
    let paths = o.paths();
    std::fs::create_dir_all(&o.out_dir).map_err(|e| Error::io(&o.out_dir, "creating output folder", e))?;
    format::write_atomic(&paths.onnx, DEMO_MODEL)?;
    let compress = compress::compress(&paths.onnx, &paths.nerp, &opts, train)?;

    let t = Instant::now();
    let file = crate::open(&paths.nerp)?;
    let weights = regen::regenerate(&file, &crate::Device::Cpu)?;
    let regen_seconds = t.elapsed().as_secs_f64();
    let regenerated = runtime::Model::from_proto(&runtime::rebuild_onnx(&file, &weights)?)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let original = runtime::Model::from_onnx_file(&paths.onnx)?;
    let original_load_seconds = t.elapsed().as_secs_f64();

    let data = data::load(&DataSource::FashionMnist(None), Split::Test, o.limit, &bundled_preprocess()?)?;
    Ok(Prepared {
        paths,
        compress,
        regenerated,
        original,
        data,
        regen_seconds,
        load_seconds,
        original_load_seconds,
        threads: o.threads,
    })
}

impl Prepared {
    /// Images evaluated, counting both models (the length of a progress bar).
    pub fn work(&self) -> usize {
        2 * self.data.len()
    }

    /// Evaluates both models; `tick` is called after each batch with the images done.
    pub fn evaluate(self, tick: &(dyn Fn(usize) + Sync)) -> Result<DemoReport> {
        let eval = eval::evaluate(&self.regenerated, Some(&self.original), &self.data, self.threads, tick)?;
        Ok(DemoReport {
            paths: self.paths,
            compress: self.compress,
            eval,
            regen_seconds: self.regen_seconds,
            load_seconds: self.load_seconds,
            original_load_seconds: self.original_load_seconds,
            data: data::resolve_fashion_mnist().to_string(),
        })
    }
}
