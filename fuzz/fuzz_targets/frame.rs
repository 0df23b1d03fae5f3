//! Fuzz target `frame`: arbitrary bytes as one connection's receive buffer, split into frames,
//! decoded, executed against a real store and answered; see `percore_fuzz::check_frames`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    percore_fuzz::check_frames(data);
});
