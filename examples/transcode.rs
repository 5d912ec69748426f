//! Re-stores a `.nerp` file's predictor and scales in other dtypes without retraining: the
//! predictor is decoded to f32 and stored as `--predictor-dtype` (through the format's one
//! quantizer), the per-row scales as `--scale-dtype`; every other section is kept. Used to
//! compare storage precisions on one trained predictor (docs/results/format3.md): storing an
//! f32-trained predictor as X gives the bytes `nerp compress --predictor-dtype X` writes.
//!
//! Usage: `cargo run --release --example transcode -- IN.nerp OUT.nerp PREDICTOR_DTYPE SCALE_DTYPE [maxabs]`
//! (dtypes: f32 f16 bf16 int8 int4; f32 f16).

use nerp::format::{Encoding, FileBuilder, ScaleDtype, SectionKind, Storage, WeightDtype};
use nerp::{predictor, Error, NerpFile, Result};
use std::collections::HashMap;

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(&format!("\"{s}\"")).map_err(|e| Error::usage("dtype", format!("{s}: {e}")))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output, pd, sd) = match &args[..] {
        [i, o, p, s] | [i, o, p, s, _] => (i, o, p, s),
        _ => return Err(Error::usage("arguments", "IN.nerp OUT.nerp PREDICTOR_DTYPE SCALE_DTYPE [maxabs]")),
    };
    // A fifth argument `maxabs` quantizes with max-abs scales instead of the MSE clip search.
    let rule = match args.get(4).map(String::as_str) {
        Some("maxabs") => nerp::format::quant::ScaleRule::MaxAbs,
        _ => nerp::format::quant::ScaleRule::Mse,
    };
    let (pdtype, sdtype): (WeightDtype, ScaleDtype) = (parse(pd)?, parse(sd)?);
    let file = NerpFile::open(input)?;
    let mut h = file.header().clone();
    let mut spec = h.predictor.clone().ok_or_else(|| Error::usage("IN", "the file has no predictor"))?;
    let (hidden, levels) = (spec.hidden as usize, spec.embedding.levels as usize);
    let flat = predictor::decode_weights(spec.dtype, hidden, levels, &file.decode_section(spec.section)?)?;
    let mut scale_of = HashMap::new();
    for t in &mut h.tensors {
        if let Storage::Predicted { scales: Some(s), scale_dtype, .. } = &mut t.storage {
            scale_of.insert(*s, *scale_dtype);
            *scale_dtype = sdtype;
        }
    }
    let mut b = FileBuilder::new();
    for (i, s) in h.sections.iter().enumerate() {
        let content = file.decode_section(i)?;
        match s.kind {
            SectionKind::Predictor => {
                let bytes = nerp::format::predictor::encode_params_with(pdtype, hidden, levels, &flat, rule)
                    .map_err(Error::Training)?;
                b.add(s.kind, Encoding::Plain, &bytes)
            }
            SectionKind::Scales => {
                let values = nerp::format::codec::to_f32(scale_of[&i].dtype(), &content).expect("float");
                b.add(
                    s.kind,
                    s.encoding,
                    &nerp::format::codec::from_f32(sdtype.dtype(), &values).expect("float"),
                )
            }
            _ => b.add(s.kind, s.encoding, &content),
        };
    }
    spec.dtype = pdtype;
    let bytes = b.finish(h.source.clone(), Some(spec), h.tensors.clone(), h.metadata.clone());
    NerpFile::from_bytes(bytes.clone(), output)?;
    nerp::format::write_atomic(std::path::Path::new(output), &bytes)?;
    println!("{output}: {} bytes (predictor {pd}, scales {sd})", bytes.len());
    Ok(())
}
