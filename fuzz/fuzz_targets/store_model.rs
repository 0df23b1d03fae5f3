//! Fuzz target `store_model`: arbitrary operation sequences on a small `Store` with a controlled
//! clock, checked against a `HashMap` model; see `percore_fuzz::check_store_model_bytes`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The bytes are decoded with `arbitrary` inside the check, so the regression test that
    // replays a saved crash input takes exactly the same path.
    percore_fuzz::check_store_model_bytes(data);
});
