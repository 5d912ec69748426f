//! all-MiniLM-L6-v2 from a `.nerp` file through candle-transformers' BERT: the sentence
//! embeddings of the regenerated weights against the original's, per sentence.
//!
//! ```sh
//! tools/fetch_models.sh
//! cargo run --release -- compress target/models/minilm/model.safetensors -o target/models/minilm/model.nerp --size-ratio 4
//! cargo run --release --example minilm_candle -- [FILE.nerp [model.safetensors [vocab.txt [config.json]]]]
//! ```
//! The defaults are those paths under `target/models/minilm/`.

mod minilm;

use minilm::BoxResult;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> BoxResult<()> {
    let dir = PathBuf::from("target/models/minilm");
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let mut arg = |default: &str| args.next().unwrap_or_else(|| dir.join(default));
    let (nerp_path, original, vocab, config) =
        (arg("model.nerp"), arg("model.safetensors"), arg("vocab.txt"), arg("config.json"));
    for p in [&original, &vocab, &config] {
        if !p.is_file() {
            return Err(format!("{} is absent: run tools/fetch_models.sh", p.display()).into());
        }
    }
    if !nerp_path.is_file() {
        return Err(format!(
            "{} is absent: make it with `nerp compress {} -o {} --size-ratio 4`",
            nerp_path.display(),
            original.display(),
            nerp_path.display()
        )
        .into());
    }
    let (tok, config) = (minilm::Tokenizer::from_file(&vocab)?, minilm::config(&config)?);

    let start = Instant::now();
    let want = minilm::original_embeddings(&original, &config, &tok)?;
    let original_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let file = nerp::open(&nerp_path)?;
    let got = minilm::nerp_embeddings(&file, &config, &tok)?;
    let nerp_s = start.elapsed().as_secs_f64();

    let cos = minilm::cosines(&want, &got);
    for (s, c) in minilm::sentences().iter().zip(&cos) {
        let short: String = s.chars().take(60).collect();
        println!("{c:.6}  {short}");
    }
    let mean = cos.iter().sum::<f32>() / cos.len() as f32;
    let min = cos.iter().copied().fold(f32::INFINITY, f32::min);
    let (src_bytes, file_bytes) = (std::fs::metadata(&original)?.len(), file.file_len());
    println!("cosine to the original's embeddings: mean {mean:.6}, min {min:.6} ({} sentences)", cos.len());
    println!(
        "original {src_bytes} bytes, {} {file_bytes} bytes: {:.2}x smaller than the original, {:.3}x the fp16 size",
        nerp_path.display(),
        src_bytes as f64 / file_bytes as f64,
        file_bytes as f64 / (src_bytes as f64 / 2.0)
    );
    println!(
        "convention check (original): largest gap to sentence-transformers' documented similarities {:.4}",
        minilm::documented_gap(&original, &config, &tok)?
    );
    println!("time: original load + embed {original_s:.2} s, .nerp open + regenerate + embed {nerp_s:.2} s");
    Ok(())
}
