#![no_main]

use libfuzzer_sys::fuzz_target;

// Any byte string: opening returns Ok or Err, and an opened file decodes without panicking.
fuzz_target!(|data: &[u8]| {
    if let Ok(file) = nerp::NerpFile::from_bytes(data.to_vec(), "fuzz") {
        for index in 0..file.header().sections.len() {
            let _ = file.decode_section(index);
        }
        let _ = nerp::runtime::regen::layer_plans(&file);
    }
});
