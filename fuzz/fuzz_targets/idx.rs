//! Fuzzes the MNIST IDX reader (`scorefield_data::idx`): any byte string, raw or gzip, must
//! give an array or a typed error, never a panic, an abort or unbounded memory; an array must
//! hold exactly the values its dimensions announce and encode back to the raw input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/scorefield-data/src/idx.rs"]
#[allow(dead_code)]
mod idx;

fuzz_target!(|bytes: &[u8]| {
    let Ok(array) = idx::parse(bytes) else { return };
    let count: usize = array.dims.iter().product();
    assert_eq!(array.data.len(), count);
    assert!((1..=4).contains(&array.dims.len()));
    let raw = idx::encode(&array);
    assert_eq!(idx::parse_raw(&raw).as_ref(), Ok(&array));
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        assert_eq!(raw, bytes);
    }
});
