//! all-MiniLM-L6-v2 sentence embeddings with candle-transformers' BERT, shared by the
//! `minilm_candle` example and its real-model test: a BERT WordPiece tokenizer (uncased),
//! mean pooling over the attention mask and L2 normalisation (the sentence-transformers
//! convention for this model).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::collections::HashMap;
use std::path::Path;

pub type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Varied English sentences, one per line: pairs of paraphrases, unrelated topics, a question,
/// numbers, punctuation, a rare word (split into word pieces) and a long sentence. Shared with
/// `tools/minilm_cosine.py`.
const SENTENCES_TXT: &str = include_str!("../data/minilm_sentences.txt");

/// The sentences of [`SENTENCES_TXT`].
pub fn sentences() -> Vec<&'static str> {
    SENTENCES_TXT.lines().filter(|l| !l.is_empty()).collect()
}

/// Longest input, in tokens with `[CLS]` and `[SEP]` (sentence-transformers' limit for this model).
pub const MAX_TOKENS: usize = 256;

/// An uncased BERT WordPiece tokenizer over a `vocab.txt` (one token per line, id = line).
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> BoxResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vocab: HashMap<String, u32> =
            text.lines().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| format!("{}: no {t} token", path.display()));
        Ok(Tokenizer { unk: id("[UNK]")?, cls: id("[CLS]")?, sep: id("[SEP]")?, pad: id("[PAD]")?, vocab })
    }

    /// Token ids of `text`: `[CLS]`, the word pieces, `[SEP]`, at most [`MAX_TOKENS`].
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.cls];
        for word in basic_split(text) {
            self.word_pieces(&word, &mut ids);
        }
        ids.truncate(MAX_TOKENS - 1);
        ids.push(self.sep);
        ids
    }

    /// Greedy longest-match-first WordPiece; a word with a piece not in the vocabulary is `[UNK]`.
    fn word_pieces(&self, word: &str, ids: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > 100 {
            ids.push(self.unk);
            return;
        }
        let (mut pieces, mut start) = (Vec::new(), 0);
        while start < chars.len() {
            let found = (start + 1..=chars.len()).rev().find_map(|end| {
                let s: String = chars[start..end].iter().collect();
                let key = if start > 0 { format!("##{s}") } else { s };
                self.vocab.get(&key).map(|&id| (id, end))
            });
            match found {
                Some((id, end)) => {
                    pieces.push(id);
                    start = end;
                }
                None => {
                    ids.push(self.unk);
                    return;
                }
            }
        }
        ids.extend(pieces);
    }
}

/// Lowercased words: split on whitespace, each punctuation character a word of its own;
/// control characters dropped.
fn basic_split(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() || is_punctuation(c) {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            if is_punctuation(c) {
                words.push(c.to_string());
            }
        } else if !c.is_control() {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// ASCII punctuation and symbols, and any other character that is neither a letter, a digit,
/// whitespace nor a control character.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || (!c.is_ascii() && !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control())
}

/// Reads a BERT `config.json`.
pub fn config(path: &Path) -> BoxResult<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// Sentence embeddings of `sentences` (one batch, padded): BERT's last hidden states averaged
/// over the attention mask, L2-normalised.
pub fn embed(
    vb: VarBuilder,
    config: &Config,
    tok: &Tokenizer,
    sentences: &[&str],
) -> BoxResult<Vec<Vec<f32>>> {
    let device = vb.device().clone();
    let model = BertModel::load(vb, config)?;
    let encoded: Vec<Vec<u32>> = sentences.iter().map(|s| tok.encode(s)).collect();
    let len = encoded.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for e in &encoded {
        ids.extend(e.iter().copied().chain(std::iter::repeat(tok.pad)).take(len));
        mask.extend((0..len).map(|i| u32::from(i < e.len())));
    }
    let n = sentences.len();
    let ids = Tensor::from_vec(ids, (n, len), &device)?;
    let mask = Tensor::from_vec(mask, (n, len), &device)?;
    let hidden = model.forward(&ids, &ids.zeros_like()?, Some(&mask))?.to_dtype(DType::F32)?;
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let pooled = hidden.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
    let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(pooled.broadcast_div(&norm)?.to_vec2::<f32>()?)
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The original's embeddings from its safetensors file, on the CPU in f32.
pub fn original_embeddings(model: &Path, config: &Config, tok: &Tokenizer) -> BoxResult<Vec<Vec<f32>>> {
    let bytes = std::fs::read(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
    embed(vb, config, tok, &sentences())
}

/// The embeddings of the weights regenerated from a `.nerp` file (the candle hand-off).
pub fn nerp_embeddings(file: &nerp::NerpFile, config: &Config, tok: &Tokenizer) -> BoxResult<Vec<Vec<f32>>> {
    let vb = nerp::runtime::candle::var_builder(file, &nerp::Device::Cpu, &Device::Cpu, DType::F32)?;
    embed(vb, config, tok, &sentences())
}

/// Per-sentence cosines between two sets of embeddings.
pub fn cosines(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).collect()
}

/// Sentence pairs with the cosine similarity sentence-transformers documents for
/// all-MiniLM-L6-v2 (sbert.net, "Semantic Textual Similarity"): a check that this tokenizer
/// and pooling follow its convention.
pub const DOCUMENTED: [(&str, &str, f32); 3] = [
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
];

/// The largest difference between the original's similarities of [`DOCUMENTED`] and the
/// documented values.
pub fn documented_gap(model: &Path, config: &Config, tok: &Tokenizer) -> BoxResult<f32> {
    let bytes = std::fs::read(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
    let sentences: Vec<&str> = DOCUMENTED.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    let e = embed(vb, config, tok, &sentences)?;
    Ok(DOCUMENTED
        .iter()
        .enumerate()
        .map(|(i, d)| (cosine(&e[2 * i], &e[2 * i + 1]) - d.2).abs())
        .fold(0.0, f32::max))
}
