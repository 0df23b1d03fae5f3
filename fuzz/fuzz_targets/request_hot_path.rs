//! Fuzz target `request_hot_path`: arbitrary bytes as one frame, read by the hot request reader
//! and by the FlatBuffers verifier, which must agree; see `percore_fuzz::check_hot_request`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    percore_fuzz::check_hot_request(data);
});
