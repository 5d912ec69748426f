//! Image datasets for evaluation and distillation.
//!
//! Fashion-MNIST and MNIST are read from IDX files (raw or gzipped), CIFAR-10/100 from their
//! binary versions. Every count and size read from a file is checked before use (magic, exact
//! lengths via checked arithmetic, label ranges); a failed check is an [`Error::Dataset`] that
//! names the file and what was expected.
//!
//! The first 1,000 Fashion-MNIST test images ship with nerp (`examples/data/fashion-mnist-1k`,
//! made by `tools/make_fashion_subset.py`) and are also embedded in the binary, so
//! `--data fashion-mnist` works without a download; see [`resolve_fashion_mnist`].

pub mod npy;

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The bundled 1,000-image Fashion-MNIST test subset in the source tree.
pub const BUNDLED_FASHION_MNIST_DIR: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/fashion-mnist-1k");
/// The same subset, embedded in the binary: the last fallback.
const EMBEDDED_IMAGES: &[u8] =
    include_bytes!("../../examples/data/fashion-mnist-1k/t10k-images-idx3-ubyte.gz");
const EMBEDDED_LABELS: &[u8] =
    include_bytes!("../../examples/data/fashion-mnist-1k/t10k-labels-idx1-ubyte.gz");
/// What messages call the embedded subset.
const EMBEDDED_ORIGIN: &str = "<fashion-mnist-1k embedded in nerp>";

/// Largest file, after decompression, any loader reads.
const MAX_FILE_BYTES: u64 = 1 << 31;
/// Classes of MNIST and Fashion-MNIST.
const MNIST_CLASSES: usize = 10;
/// Pixel bytes of one CIFAR record: 3 channels of 32×32, channel-major.
const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// Input preprocessing: `x = (pixel * scale - mean[c]) / std[c]`, layout NCHW.
///
/// `mean` and `std` hold one value per channel, or a single value for all channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Default for Preprocess {
    /// Pixels scaled to [0, 1], not normalized.
    fn default() -> Self {
        Self { scale: 1.0 / 255.0, mean: vec![0.0], std: vec![1.0] }
    }
}

impl Preprocess {
    /// The preprocessing a file records (metadata `preprocess`, spec section 3), checked;
    /// `None` if it records none.
    pub fn stored(file: &crate::format::NerpFile) -> Result<Option<Self>> {
        let Some(json) = file.header().metadata.get(crate::format::metadata::PREPROCESS_KEY) else {
            return Ok(None);
        };
        let bad =
            |what: String| Error::Rebuild(format!("{}: metadata preprocess {what}", file.path().display()));
        let pre: Preprocess = serde_json::from_str(json).map_err(|e| bad(format!("is not valid: {e}")))?;
        pre.validate().map_err(|e| bad(format!("is not usable: {e}")))?;
        Ok(Some(pre))
    }

    /// Parses "mean=0.286,std=0.353" or "mean=0.49/0.48/0.45,std=0.25/0.24/0.26[,scale=0.00392]"
    /// (scale defaults to 1/255). Errors name the flag `--preprocess`.
    pub fn parse(s: &str) -> Result<Self> {
        let err = |what: String| Error::usage("--preprocess", what);
        let (mut mean, mut std, mut scale) = (None, None, None);
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                err(format!("`{part}` is not KEY=VALUE; expected e.g. mean=0.286,std=0.353"))
            })?;
            let values = value
                .split('/')
                .map(|v| {
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| err(format!("`{v}` in `{part}` is not a finite number")))
                })
                .collect::<Result<Vec<_>>>()?;
            let slot = match key.trim() {
                "mean" => &mut mean,
                "std" => &mut std,
                "scale" => &mut scale,
                other => {
                    return Err(err(format!(
                        "unknown key `{other}`; expected mean=..., std=... and optionally scale=..."
                    )))
                }
            };
            if slot.replace(values).is_some() {
                return Err(err(format!("`{}` is given twice", key.trim())));
            }
        }
        let missing = |key| err(format!("{key}=... is missing; expected e.g. mean=0.286,std=0.353"));
        let mean = mean.ok_or_else(|| missing("mean"))?;
        let std = std.ok_or_else(|| missing("std"))?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(err(format!("std values must be positive, got {std:?}")));
        }
        let scale = match scale.as_deref() {
            None => 1.0 / 255.0,
            Some(&[s]) if s > 0.0 => s,
            Some(s) => return Err(err(format!("scale must be one positive number, got {s:?}"))),
        };
        let pre = Self { scale, mean, std };
        pre.validate()?;
        Ok(pre)
    }

    /// Checks that every normalized pixel is a finite number: `scale` and each `std` positive
    /// normal f32 values (`std=1e-45`, a subnormal, divides pixels into infinities), each mean
    /// finite, and `(255·scale + |mean|) / std` finite. Errors name `--preprocess`.
    pub fn validate(&self) -> Result<()> {
        let err = |what: String| Error::usage("--preprocess", what);
        if !(self.scale.is_normal() && self.scale > 0.0 && (255.0 * self.scale).is_finite()) {
            return Err(err(format!("scale {} must be a positive normal number", self.scale)));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_normal() && **s > 0.0)) {
            return Err(err(format!(
                "std {s} must be a positive normal number (at least {:e}); normalized pixels would not be finite",
                f32::MIN_POSITIVE
            )));
        }
        if self.mean.is_empty() || self.std.is_empty() || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(err(format!("mean {:?} and std {:?} need finite values", self.mean, self.std)));
        }
        let widest = 255.0 * self.scale + self.mean.iter().fold(0f32, |a, m| a.max(m.abs()));
        if let Some(s) = self.std.iter().find(|&&s| !(widest / s).is_finite()) {
            return Err(err(format!("a pixel of up to {widest} divided by std {s} is not a finite number")));
        }
        Ok(())
    }

    /// The per-channel parameters for images of `shape`, broadcasting a single mean or std.
    fn normalizer(&self, shape: [usize; 3], origin: &Path) -> Result<Normalizer> {
        let [channels, h, w] = shape;
        let expand = |name: &str, values: &[f32]| match values {
            [v] => Ok(vec![*v; channels]),
            v if v.len() == channels => Ok(v.to_vec()),
            v => Err(Error::usage(
                "--preprocess",
                format!(
                    "{} {name} values given, but {} has {channels}-channel images; \
                     give 1 or {channels}",
                    v.len(),
                    origin.display()
                ),
            )),
        };
        let std = expand("std", &self.std)?;
        if !self.scale.is_finite() || std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(Error::usage(
                "--preprocess",
                format!("scale {} and std {:?} must be finite, std positive", self.scale, self.std),
            ));
        }
        Ok(Normalizer { scale: self.scale, mean: expand("mean", &self.mean)?, std, plane: h * w })
    }
}

/// [`Preprocess`] expanded to one mean and std per channel.
struct Normalizer {
    scale: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
    plane: usize,
}

impl Normalizer {
    /// Appends one CHW image of bytes, normalized.
    fn push(&self, out: &mut Vec<f32>, image: &[u8]) {
        for ((plane, &m), &s) in image.chunks_exact(self.plane).zip(&self.mean).zip(&self.std) {
            out.extend(plane.iter().map(|&p| (f32::from(p) * self.scale - m) / s));
        }
    }
}

/// Which part of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// A dataset named by `--data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// Fashion-MNIST IDX files in a directory; `None` means the default, see
    /// [`resolve_fashion_mnist`].
    FashionMnist(Option<PathBuf>),
    /// MNIST IDX files in a directory.
    Mnist(PathBuf),
    /// The CIFAR-10 binary version: the directory holding `cifar-10-batches-bin/`, or that one.
    Cifar10(PathBuf),
    /// The CIFAR-100 binary version: the directory holding `cifar-100-binary/`, or that one.
    Cifar100(PathBuf),
}

impl DataSource {
    /// Parses `--data` values: "fashion-mnist" (the default location, see
    /// [`resolve_fashion_mnist`]), "fashion-mnist:DIR", "mnist:DIR", "cifar10:DIR",
    /// "cifar100:DIR".
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, dir) = match s.split_once(':') {
            Some((_, "")) => return Err(Error::usage("--data", format!("`{s}` has an empty directory"))),
            Some((kind, dir)) => (kind, Some(PathBuf::from(dir))),
            None => (s, None),
        };
        match (kind, dir) {
            ("fashion-mnist", dir) => Ok(Self::FashionMnist(dir)),
            ("mnist", Some(dir)) => Ok(Self::Mnist(dir)),
            ("cifar10", Some(dir)) => Ok(Self::Cifar10(dir)),
            ("cifar100", Some(dir)) => Ok(Self::Cifar100(dir)),
            ("mnist" | "cifar10" | "cifar100", None) => {
                Err(Error::usage("--data", format!("`{kind}` needs the directory it is in: {kind}:DIR")))
            }
            _ => Err(Error::usage(
                "--data",
                format!(
                    "unknown dataset `{kind}`; expected fashion-mnist, fashion-mnist:DIR, \
                     mnist:DIR, cifar10:DIR or cifar100:DIR"
                ),
            )),
        }
    }
}

impl fmt::Display for DataSource {
    /// The `--data` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FashionMnist(None) => write!(f, "fashion-mnist"),
            Self::FashionMnist(Some(dir)) => write!(f, "fashion-mnist:{}", dir.display()),
            Self::Mnist(dir) => write!(f, "mnist:{}", dir.display()),
            Self::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            Self::Cifar100(dir) => write!(f, "cifar100:{}", dir.display()),
        }
    }
}

/// Where `--data fashion-mnist` reads from; its `Display` says so for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FashionMnistLocation {
    /// The full dataset, installed by `dataset-fashion-mnist` in [`FASHION_MNIST_DIR`].
    Installed(PathBuf),
    /// The bundled 1,000-image test subset in the source tree ([`BUNDLED_FASHION_MNIST_DIR`]).
    Bundled(PathBuf),
    /// The same subset, embedded in the binary.
    Embedded,
}

impl FashionMnistLocation {
    /// The directory, or a descriptive name for the embedded copy.
    pub fn origin(&self) -> PathBuf {
        match self {
            Self::Installed(dir) | Self::Bundled(dir) => dir.clone(),
            Self::Embedded => PathBuf::from(EMBEDDED_ORIGIN),
        }
    }
}

impl fmt::Display for FashionMnistLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Installed(dir) => write!(f, "Fashion-MNIST in {}", dir.display()),
            Self::Bundled(dir) => {
                write!(f, "bundled Fashion-MNIST subset (first 1,000 test images) in {}", dir.display())
            }
            Self::Embedded => {
                write!(f, "bundled Fashion-MNIST subset (first 1,000 test images), embedded in nerp")
            }
        }
    }
}

/// Resolves `--data fashion-mnist`: [`FASHION_MNIST_DIR`] if its test files exist, else the
/// bundled subset in the source tree, else the copy embedded in the binary.
pub fn resolve_fashion_mnist() -> FashionMnistLocation {
    let has_test_files = |dir: &Path| {
        ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
            .iter()
            .all(|name| dir.join(name).is_file() || dir.join(format!("{name}.gz")).is_file())
    };
    [FASHION_MNIST_DIR, BUNDLED_FASHION_MNIST_DIR]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| has_test_files(dir))
        .map_or(FashionMnistLocation::Embedded, |dir| {
            if dir == Path::new(FASHION_MNIST_DIR) {
                FashionMnistLocation::Installed(dir)
            } else {
                FashionMnistLocation::Bundled(dir)
            }
        })
}

/// Images with their labels, preprocessed.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// N×C×H×W values, preprocessed.
    pub images: Vec<f32>,
    /// N class indices, each below `classes`.
    pub labels: Vec<u32>,
    /// C, H, W of one image.
    pub shape: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// The directory or file the data came from, for messages.
    pub origin: PathBuf,
}

impl Dataset {
    fn new(shape: [usize; 3], classes: usize, origin: PathBuf) -> Self {
        Self { images: Vec::new(), labels: Vec::new(), shape, classes, origin }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images `[start, end)` as a flat NCHW slice and their labels. Bounds are clamped to
    /// `len()`, so the last batch of a loop may be shorter.
    pub fn batch(&self, start: usize, end: usize) -> (&[f32], &[u32]) {
        let end = end.min(self.len());
        let start = start.min(end);
        let size: usize = self.shape.iter().product();
        (&self.images[start * size..end * size], &self.labels[start..end])
    }

    /// Appends one image after checking its label; `index` and `path` are for the message.
    fn push(&mut self, norm: &Normalizer, image: &[u8], label: u8, index: usize, path: &Path) -> Result<()> {
        if usize::from(label) >= self.classes {
            return Err(Error::Dataset {
                path: path.into(),
                what: format!("label {label} of image {index} is not a class index below {}", self.classes),
            });
        }
        norm.push(&mut self.images, image);
        self.labels.push(label.into());
        Ok(())
    }
}

/// Loads a split, at most `limit` images (the first ones, in file order), preprocessed.
pub fn load(source: &DataSource, split: Split, limit: Option<usize>, pre: &Preprocess) -> Result<Dataset> {
    match source {
        DataSource::FashionMnist(None) => load_fashion(&resolve_fashion_mnist(), split, limit, pre),
        DataSource::FashionMnist(Some(dir)) | DataSource::Mnist(dir) => load_idx(dir, split, limit, pre),
        DataSource::Cifar10(dir) => load_cifar(dir, false, split, limit, pre),
        DataSource::Cifar100(dir) => load_cifar(dir, true, split, limit, pre),
    }
}

fn load_fashion(
    location: &FashionMnistLocation,
    split: Split,
    limit: Option<usize>,
    pre: &Preprocess,
) -> Result<Dataset> {
    match (location, split) {
        (FashionMnistLocation::Installed(dir), _) => load_idx(dir, split, limit, pre),
        (_, Split::Train) => Err(Error::Dataset {
            path: location.origin(),
            what: format!(
                "the bundled subset has only test images; for the train split install the full \
                 dataset (apt-get install dataset-fashion-mnist, into {FASHION_MNIST_DIR}) or pass \
                 --data fashion-mnist:DIR"
            ),
        }),
        (FashionMnistLocation::Bundled(dir), Split::Test) => load_idx(dir, split, limit, pre),
        (FashionMnistLocation::Embedded, Split::Test) => {
            let origin = location.origin();
            let gunzip = |bytes: &[u8]| read_capped(&origin, MultiGzDecoder::new(bytes), true);
            let images = (origin.clone(), gunzip(EMBEDDED_IMAGES)?);
            let labels = (origin.clone(), gunzip(EMBEDDED_LABELS)?);
            idx_dataset(images, labels, origin, limit, pre)
        }
    }
}

/// Loads MNIST-style IDX files (`train-*`/`t10k-*`, raw or `.gz`) from `dir`.
fn load_idx(dir: &Path, split: Split, limit: Option<usize>, pre: &Preprocess) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let expected = "the IDX files of MNIST or Fashion-MNIST (for Fashion-MNIST: apt-get install \
                    dataset-fashion-mnist)";
    let images = read_either(dir, &format!("{prefix}-images-idx3-ubyte"), expected)?;
    let labels = read_either(dir, &format!("{prefix}-labels-idx1-ubyte"), expected)?;
    idx_dataset(images, labels, dir.into(), limit, pre)
}

/// Builds a dataset from an IDX image file and an IDX label file, each (path, bytes).
fn idx_dataset(
    (image_path, image_bytes): (PathBuf, Vec<u8>),
    (label_path, label_bytes): (PathBuf, Vec<u8>),
    origin: PathBuf,
    limit: Option<usize>,
    pre: &Preprocess,
) -> Result<Dataset> {
    let ([count, h, w], pixels) = parse_idx::<3>(&image_path, &image_bytes)?;
    let ([label_count], labels) = parse_idx::<1>(&label_path, &label_bytes)?;
    if h == 0 || w == 0 {
        return Err(Error::Dataset {
            path: image_path,
            what: format!("expected images of at least 1×1 pixels, found {h}×{w}"),
        });
    }
    if label_count != count {
        return Err(Error::Dataset {
            path: label_path,
            what: format!(
                "has {label_count} labels, expected one per image: {count} ({})",
                image_path.display()
            ),
        });
    }
    let shape = [1, h, w];
    let norm = pre.normalizer(shape, &origin)?;
    let mut data = Dataset::new(shape, MNIST_CLASSES, origin);
    let images = pixels.chunks_exact(h * w).zip(labels);
    for (index, (image, &label)) in images.take(limit.unwrap_or(usize::MAX)).enumerate() {
        data.push(&norm, image, label, index, &label_path)?;
    }
    Ok(data)
}

/// Checks an IDX file of unsigned bytes with `N` dimensions; returns the dimensions and the data.
fn parse_idx<'a, const N: usize>(path: &Path, bytes: &'a [u8]) -> Result<([usize; N], &'a [u8])> {
    let magic = 0x0800 | N as u32;
    let kind = if N == 1 { "label" } else { "image" };
    let bad = |what: String| Error::Dataset {
        path: path.into(),
        what: format!("expected an IDX {kind} file (magic {magic:#010x}, u8, {N}-D), {what}"),
    };
    let (header, data) = bytes
        .split_at_checked(4 + 4 * N)
        .ok_or_else(|| bad(format!("but the file has only {} bytes, less than the header", bytes.len())))?;
    let word =
        |i: usize| header.get(4 * i..4 * i + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    let found = word(0).unwrap_or_default();
    if found != magic {
        return Err(bad(format!("found magic {found:#010x}")));
    }
    let mut dims = [0usize; N];
    for (i, dim) in dims.iter_mut().enumerate() {
        *dim = word(i + 1).unwrap_or_default() as usize;
    }
    let need = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_FILE_BYTES)
        .ok_or_else(|| bad(format!("but its dimensions {dims:?} exceed {MAX_FILE_BYTES} bytes")))?;
    match data.len() {
        len if len < need => Err(bad(format!(
            "but dimensions {dims:?} need {need} data bytes and the file has {len}; it is truncated"
        ))),
        len if len > need => Err(bad(format!(
            "but the file has {} bytes after the {need} its dimensions {dims:?} describe",
            len - need
        ))),
        _ => Ok((dims, data)),
    }
}

/// Loads the CIFAR-10 (`fine == false`) or CIFAR-100 binary version from `dir`.
fn load_cifar(
    dir: &Path,
    fine: bool,
    split: Split,
    limit: Option<usize>,
    pre: &Preprocess,
) -> Result<Dataset> {
    let (subdir, classes, label_bytes, expected) = if fine {
        (
            "cifar-100-binary",
            100,
            2,
            "the CIFAR-100 binary version (cifar-100-binary/ with train.bin and test.bin)",
        )
    } else {
        (
            "cifar-10-batches-bin",
            10,
            1,
            "the CIFAR-10 binary version (cifar-10-batches-bin/ with data_batch_1.bin .. \
             data_batch_5.bin and test_batch.bin)",
        )
    };
    let names: Vec<String> = match (fine, split) {
        (false, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        (false, Split::Test) => vec!["test_batch.bin".into()],
        (true, Split::Train) => vec!["train.bin".into()],
        (true, Split::Test) => vec!["test.bin".into()],
    };
    let dir = Some(dir.join(subdir)).filter(|d| d.is_dir()).unwrap_or_else(|| dir.into());
    let shape = [3, 32, 32];
    let norm = pre.normalizer(shape, &dir)?;
    let mut data = Dataset::new(shape, classes, dir.clone());
    let record = label_bytes + CIFAR_PIXELS;
    let limit = limit.unwrap_or(usize::MAX);
    for name in &names {
        if data.len() >= limit {
            break;
        }
        let (path, bytes) = read_either(&dir, name, expected)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::Dataset {
                path,
                what: format!(
                    "expected whole records of {record} bytes ({label_bytes} label byte(s), then \
                     3×32×32 pixel bytes), found {} bytes; the file is truncated or not \
                     {expected}",
                    bytes.len()
                ),
            });
        }
        for (index, rec) in bytes.chunks_exact(record).enumerate().take(limit - data.len()) {
            // CIFAR-100 records start with the coarse label; the fine one is the last label byte.
            let (head, image) = rec.split_at(label_bytes);
            let label = head.last().copied().unwrap_or_default();
            data.push(&norm, image, label, index, &path)?;
        }
    }
    Ok(data)
}

/// Reads `dir/name`, or else `dir/name.gz` decompressed; returns the path read and its bytes.
fn read_either(dir: &Path, name: &str, expected: &str) -> Result<(PathBuf, Vec<u8>)> {
    if !dir.is_dir() {
        return Err(Error::Dataset {
            path: dir.into(),
            what: format!("is not a directory; expected one with {expected}"),
        });
    }
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let (path, is_gz) = match (raw.is_file(), gz.is_file()) {
        (true, _) => (raw, false),
        (false, true) => (gz, true),
        (false, false) => {
            return Err(Error::Dataset {
                path: dir.into(),
                what: format!("has neither {name} nor {name}.gz; expected {expected}"),
            })
        }
    };
    let file = File::open(&path).map_err(|e| Error::io(&path, "opening", e))?;
    let bytes = if is_gz {
        read_capped(&path, MultiGzDecoder::new(BufReader::new(file)), true)?
    } else {
        read_capped(&path, file, false)?
    };
    Ok((path, bytes))
}

/// Reads to the end, refusing more than [`MAX_FILE_BYTES`]; `gz` says read errors are gzip errors.
fn read_capped(path: &Path, reader: impl Read, gz: bool) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| {
        if gz {
            Error::Dataset { path: path.into(), what: format!("expected a gzip file: {e}") }
        } else {
            Error::io(path, "reading", e)
        }
    })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Dataset {
            path: path.into(),
            what: format!("is larger than {MAX_FILE_BYTES} bytes, the limit for one dataset file"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| out.extend(d.to_be_bytes()));
        out.extend(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// A directory with a 2-image 2×3 MNIST-style test split: images raw, labels gzipped.
    fn mnist_dir(images: &[u8], labels: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), images).unwrap();
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte.gz"), gzip(labels)).unwrap();
        dir
    }

    fn load_err(source: &DataSource, split: Split) -> String {
        load(source, split, None, &Preprocess::default()).unwrap_err().to_string()
    }

    #[test]
    fn preprocess_parse() {
        let p = Preprocess::parse("mean=0.286,std=0.353").unwrap();
        assert_eq!(p, Preprocess { scale: 1.0 / 255.0, mean: vec![0.286], std: vec![0.353] });
        let p = Preprocess::parse("mean=0.49/0.48/0.45, std=0.25/0.24/0.26,scale=1").unwrap();
        assert_eq!((p.scale, p.mean.len(), p.std.len()), (1.0, 3, 3));
        for (bad, says) in [
            ("", "not KEY=VALUE"),
            ("mean=0.1", "std=... is missing"),
            ("std=0.1", "mean=... is missing"),
            ("mean=0.1,std=0", "positive"),
            ("mean=x,std=1", "not a finite number"),
            ("mean=inf,std=1", "not a finite number"),
            ("mean=0,std=1,mean=0", "given twice"),
            ("mean=0,std=1,shift=2", "unknown key"),
            ("mean=0,std=1,scale=1/2", "scale must be one"),
        ] {
            let e = Preprocess::parse(bad).unwrap_err();
            assert!(e.is_usage() && e.to_string().contains("--preprocess"), "{bad}: {e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn data_source_parse() {
        assert_eq!(DataSource::parse("fashion-mnist").unwrap(), DataSource::FashionMnist(None));
        for s in ["fashion-mnist:/d", "mnist:/d", "cifar10:/d", "cifar100:C:\\d"] {
            assert_eq!(DataSource::parse(s).unwrap().to_string(), s);
        }
        for (bad, says) in [
            ("mnist", "needs the directory"),
            ("cifar10:", "empty directory"),
            ("imagenet:/d", "unknown dataset"),
        ] {
            let e = DataSource::parse(bad).unwrap_err();
            assert!(e.is_usage() && e.to_string().contains("--data"), "{e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn idx_loads_and_preprocesses() {
        let images = idx(0x803, &[2, 2, 3], &[0, 51, 102, 153, 204, 255, 1, 2, 3, 4, 5, 6]);
        let dir = mnist_dir(&images, &idx(0x801, &[2], &[7, 9]));
        let source = DataSource::Mnist(dir.path().into());
        let pre = Preprocess::parse("mean=0.5,std=0.5").unwrap();
        let data = load(&source, Split::Test, None, &pre).unwrap();
        assert_eq!((data.len(), data.shape, data.classes, &data.labels[..]), (2, [1, 2, 3], 10, &[7, 9][..]));
        let expected = [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0];
        assert!(data.batch(0, 1).0.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6));
        assert_eq!(data.batch(1, 5).1, &[9]);
        assert_eq!(load(&source, Split::Test, Some(1), &pre).unwrap().labels, [7]);
        assert!(load_err(&source, Split::Train).contains("neither train-images-idx3-ubyte nor"));
        let pre3 = Preprocess::parse("mean=0/0/0,std=1").unwrap();
        let e = load(&source, Split::Test, None, &pre3).unwrap_err().to_string();
        assert!(e.contains("--preprocess") && e.contains("1-channel"), "{e}");
    }

    #[test]
    fn idx_rejects_malformed_files() {
        let labels = idx(0x801, &[2], &[1, 2]);
        let good = idx(0x803, &[2, 2, 3], &[0; 12]);
        for (images, labels, says) in [
            (idx(0x801, &[2, 2, 3], &[0; 12]), labels.clone(), "magic 0x00000803"),
            (good[..20].to_vec(), labels.clone(), "truncated"),
            (good[..10].to_vec(), labels.clone(), "less than the header"),
            ([good.clone(), vec![0]].concat(), labels.clone(), "1 bytes after"),
            (idx(0x803, &[u32::MAX, u32::MAX, 2], &[]), labels.clone(), "exceed"),
            (idx(0x803, &[2, 0, 3], &[]), labels.clone(), "at least 1×1"),
            (good.clone(), idx(0x801, &[3], &[1, 2, 3]), "has 3 labels"),
            (good.clone(), idx(0x801, &[2], &[1, 10]), "label 10 of image 1"),
        ] {
            let dir = mnist_dir(&images, &labels);
            let e = load_err(&DataSource::Mnist(dir.path().into()), Split::Test);
            assert!(e.contains(says), "expected `{says}` in: {e}");
        }
        // No prefix of a valid file makes the parser panic.
        for end in 0..good.len() {
            assert!(parse_idx::<3>(Path::new("x"), &good[..end]).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte.gz"), b"not gzip").unwrap();
        let e = load_err(&DataSource::Mnist(dir.path().into()), Split::Test);
        assert!(e.contains("expected a gzip file"), "{e}");
        let e = load_err(&DataSource::Mnist(dir.path().join("nope")), Split::Test);
        assert!(e.contains("is not a directory"), "{e}");
    }

    #[test]
    fn cifar_records() {
        let record = |label: &[u8], pixel: u8| [label, &[pixel; CIFAR_PIXELS]].concat();
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("test_batch.bin"), [record(&[3], 255), record(&[9], 0)].concat()).unwrap();
        let pre = Preprocess::parse("mean=0/0.5/1,std=1").unwrap();
        let data = load(&DataSource::Cifar10(dir.path().into()), Split::Test, None, &pre).unwrap();
        assert_eq!(
            (data.len(), data.shape, data.classes, &data.labels[..]),
            (2, [3, 32, 32], 10, &[3, 9][..])
        );
        let first = data.batch(0, 1).0;
        assert_eq!((first[0], first[1024], first[2048], data.batch(1, 2).0[0]), (1.0, 0.5, 0.0, 0.0));
        assert!(load_err(&DataSource::Cifar10(sub.clone()), Split::Train).contains("data_batch_1.bin"));

        std::fs::write(sub.join("test_batch.bin"), [record(&[3], 0), vec![1]].concat()).unwrap();
        assert!(load_err(&DataSource::Cifar10(sub.clone()), Split::Test).contains("whole records of 3073"));
        std::fs::write(sub.join("test_batch.bin"), record(&[10], 0)).unwrap();
        assert!(load_err(&DataSource::Cifar10(sub), Split::Test).contains("label 10 of image 0"));

        // CIFAR-100: coarse label, then the fine one, which is used.
        std::fs::write(dir.path().join("test.bin"), [record(&[1, 42], 0), record(&[2, 99], 0)].concat())
            .unwrap();
        let data = load(&DataSource::Cifar100(dir.path().into()), Split::Test, Some(1), &pre).unwrap();
        assert_eq!((data.labels, data.classes), (vec![42], 100));
    }

    #[test]
    fn bundled_subset() {
        let pre = Preprocess::default();
        let bundled = FashionMnistLocation::Bundled(BUNDLED_FASHION_MNIST_DIR.into());
        let data = load_fashion(&bundled, Split::Test, None, &pre).unwrap();
        assert_eq!((data.len(), data.shape, data.images.len()), (1000, [1, 28, 28], 1000 * 784));
        assert!(data.labels.iter().all(|&l| l < 10));
        let embedded = load_fashion(&FashionMnistLocation::Embedded, Split::Test, None, &pre).unwrap();
        assert_eq!((&embedded.images, &embedded.labels), (&data.images, &data.labels));
        for location in [bundled, FashionMnistLocation::Embedded] {
            let e = load_fashion(&location, Split::Train, None, &pre).unwrap_err().to_string();
            assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
        }
        // When the Debian package is installed, the subset is its first 1,000 test images.
        if let FashionMnistLocation::Installed(dir) = resolve_fashion_mnist() {
            let full = load(&DataSource::FashionMnist(Some(dir)), Split::Test, Some(1000), &pre);
            assert_eq!(full.unwrap().images, data.images);
        }
    }
}
