#![no_main]

use libfuzzer_sys::fuzz_target;
use nerp::format::{DType, Encoding, FileBuilder, SectionKind, Source, SourceKind, Storage, TensorEntry};
use nerp::Device;

// A format-4 file whose one tensor is `coded` with arbitrary section content: the first byte
// gives the shape ([1 + b % 7, 1 + b / 7 % 9]), the next two `max_code` (u16), the third bit of
// the first byte whether it has row scales; the rest is the section (step, scales, stream).
// Opening, verifying and regenerating return Ok or a typed error, never a panic, and whatever
// regenerates is finite.
fuzz_target!(|data: &[u8]| {
    let Some((head, content)) = data.split_first_chunk::<3>() else { return };
    let (rows, cols) = (1 + head[0] as u64 % 7, 1 + (head[0] as u64 / 7) % 9);
    let max_code = u16::from_le_bytes([head[1], head[2]]) as u32;
    let mut b = FileBuilder::new();
    let section = b.add(SectionKind::Coded, Encoding::Plain, content);
    let storage = Storage::Coded { max_code, row_scales: head[0] & 4 == 4, section };
    let tensors = vec![TensorEntry { name: "w".into(), dtype: DType::F32, shape: vec![rows, cols], storage }];
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None };
    let bytes = b.finish(source, None, tensors, Default::default());
    let Ok(file) = nerp::format::NerpFile::from_bytes(bytes, "fuzz.nerp") else { return };
    let _ = nerp::runtime::verify::verify(&file);
    if let Ok(w) = nerp::runtime::regen::regenerate(&file, &Device::Cpu) {
        assert!(w[0].to_f32().unwrap().iter().all(|v| v.is_finite()));
    }
});
