//! Arbitrary bytes as a segment file, the way `trackplane tail`, the
//! shipper and crash recovery meet a damaged one: reading never panics,
//! every error names an offset, and recovery never fails on the contents
//! (only on I/O).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| trackplane_fuzz::check_segment_file(data));
