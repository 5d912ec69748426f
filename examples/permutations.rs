//! What the stored permutations of a model cost under several codings, against the information
//! bound log2(n!), and the smoothness each ordering gives the predictor's target (issue 13;
//! docs/results/permutations.md).
//!
//! `cargo run --release --example permutations -- [MODEL.onnx]` (default: the shared ResNet-20)

use nerp::compress::plan::{blocks, normalized, smoothness};
use nerp::compress::{make_plan, CompressOptions};
use nerp::format::codec::{bytegroup, pack_permutation};
use nerp::format::Ordering;

fn zstd19(b: &[u8]) -> usize {
    zstd::encode_all(b, 19).expect("in-memory zstd").len()
}

/// log2(n!) in bits.
fn log2_factorial(n: usize) -> f64 {
    (2..=n).map(|k| (k as f64).log2()).sum()
}

/// A stored order over a coarser unit: each layer's rows chained (greedy, on whole rows) and
/// its columns chained (on whole columns); position `r·B + c` holds block `rows[r]·B + cols[c]`.
fn row_col_order(blocks: &[f32], rows: usize, cols: usize) -> Vec<u32> {
    let row_vecs = blocks.to_vec();
    let mut col_vecs = Vec::with_capacity(blocks.len());
    for c in 0..cols {
        for r in 0..rows {
            col_vecs.extend_from_slice(&blocks[(r * cols + c) * 9..][..9]);
        }
    }
    let rp = nerp::compress::plan::chain(
        &normalized(&row_vecs, cols * 9),
        cols * 9,
        &(0..rows as u32).collect::<Vec<_>>(),
    );
    let cp = nerp::compress::plan::chain(
        &normalized(&col_vecs, rows * 9),
        rows * 9,
        &(0..cols as u32).collect::<Vec<_>>(),
    );
    rp.iter().flat_map(|&r| cp.iter().map(move |&c| r * cols as u32 + c)).collect()
}

fn main() -> nerp::Result<()> {
    let path = std::env::args().nth(1).unwrap_or("../shared/models/resnet20_fashion_mnist.onnx".into());
    let model = nerp::ingest::load(std::path::Path::new(&path))?;
    let opts = |ordering| CompressOptions { ordering, ..Default::default() };
    let cross = make_plan(&model, &opts(Ordering::Crossfilter))?;
    let natural = make_plan(&model, &opts(Ordering::None))?;
    let mut permuted = model.clone();
    let report = nerp::compress::permute::permute_model(&mut permuted)?;
    let channels = make_plan(&permuted, &opts(Ordering::None))?;
    let (mut packed, mut packed_z, mut ident_z, mut delta_z, mut var_bits, mut bound) =
        (0, 0, 0, 0, 0u64, 0.0);
    for p in &cross.layers {
        let n = p.perm.len();
        let pk = pack_permutation(&p.perm);
        packed += pk.len();
        packed_z += zstd19(&pk);
        ident_z += zstd19(&pack_permutation(&(0..n as u32).collect::<Vec<_>>()));
        // Position deltas of the chain, 4-byte little-endian, bytes grouped, zstd.
        let deltas: Vec<u8> = std::iter::once(p.perm[0] as i32)
            .chain(p.perm.windows(2).map(|w| w[1] as i32 - w[0] as i32))
            .flat_map(|d| d.to_le_bytes())
            .collect();
        delta_z += zstd19(&bytegroup(&deltas, 4));
        // Lehmer code, digit i in ceil(log2(n − i)) bits.
        var_bits += (1..=n as u64).map(|k| 64 - (k - 1).leading_zeros() as u64).sum::<u64>();
        bound += log2_factorial(n);
    }
    let blocks_total: usize = cross.layers.iter().map(|p| p.perm.len()).sum();
    println!("{path}: {} predicted layers, {blocks_total} blocks", cross.layers.len());
    println!("| coding of the crossfilter chains | bytes |");
    println!("|---|---|");
    println!("| bit-packed (format 2) | {packed} |");
    println!("| bit-packed + zstd 19 (what the file stores) | {packed_z} |");
    println!("| position deltas, i32, byte-grouped + zstd 19 | {delta_z} |");
    println!("| Lehmer code, ceil(log2(n−i)) bits per digit | {} |", var_bits.div_ceil(8));
    println!("| bound log2(n!) | {:.0} ({:.1} KiB) |", bound / 8.0, bound / 8.0 / 1024.0);
    println!("| identity, bit-packed + zstd 19 | {ident_z} |");
    println!();
    println!("channel groups permuted: {}", report.groups.len());
    for (g, _) in &report.groups {
        let names: Vec<String> = g
            .members
            .iter()
            .filter(|&&(t, _)| permuted.tensors[t].shape.len() >= 2)
            .map(|&(t, a)| format!("{}:{a}", permuted.tensors[t].name))
            .collect();
        println!("  {} channels, {} tensors: {}", g.size, g.members.len(), names.join(" "));
    }
    println!();
    // Channels, then a stored row × column order per layer.
    let mut rowcol = channels.clone();
    let (mut rc_packed_z, mut rc_bits) = (0, 0.0);
    for (p, v) in rowcol.layers.iter_mut().zip(&rowcol.values) {
        let b = blocks(v, &p.grid, p.scales.as_deref());
        p.perm = row_col_order(&b, p.grid.rows, p.grid.cols);
        rc_packed_z += zstd19(&pack_permutation(&p.perm));
        rc_bits += log2_factorial(p.grid.rows) + log2_factorial(p.grid.cols);
    }
    println!(
        "channels + stored row × column order: bit-packed + zstd 19 {rc_packed_z} bytes, bound {:.0} bytes",
        rc_bits / 8.0
    );
    println!();
    println!("mean over layers of the cosine between the scaled blocks at neighbouring coordinates:");
    println!("| ordering | along the chain (same row, b and b+1) | across rows (r and r+1) |");
    println!("|---|---|---|");
    for (name, plan) in [
        ("none", &natural),
        ("channels", &channels),
        ("channels + row×col", &rowcol),
        ("crossfilter", &cross),
    ] {
        let (mut along, mut across) = (0.0, 0.0);
        for (p, v) in plan.layers.iter().zip(&plan.values) {
            let b = blocks(v, &p.grid, p.scales.as_deref());
            along += smoothness(&b, 9, &p.perm);
            // Pairs (p, p + B): the block below in the coordinate grid.
            let unit = normalized(&b, 9);
            let cols = p.grid.cols;
            let v = |k: u32| &unit[k as usize * 9..][..9];
            let pairs = p.perm.len().saturating_sub(cols);
            let s: f64 = (0..pairs)
                .map(|i| v(p.perm[i]).iter().zip(v(p.perm[i + cols])).map(|(x, y)| x * y).sum::<f32>() as f64)
                .sum();
            let pair_mean = s / pairs.max(1) as f64;
            across += pair_mean;
        }
        let l = plan.layers.len() as f64;
        println!("| {name} | {:.4} | {:.4} |", along / l, across / l);
    }
    Ok(())
}
