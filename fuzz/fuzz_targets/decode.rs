//! Any bytes through the decoder: whole and in chunks, with `decode` and
//! `decode_bytes`, which must all agree; every packet decoded must encode to
//! `encoded_len` bytes and decode back to itself. See `src/lib.rs` for the
//! meaning of the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{check_roundtrip, run_decode, run_decode_bytes, touch_error, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let role = input.decoder.role();
    let max = input.decoder.max_packet_size() as usize;
    let chunks = input.chunks();

    let whole = run_decode(input.decoder.clone(), input.stream, None);
    let chunked = run_decode(input.decoder.clone(), input.stream, Some(&chunks));
    assert_eq!(
        whole, chunked,
        "whole and chunked decode differ; chunks {chunks:?}"
    );
    let whole_bytes = run_decode_bytes(input.decoder.clone(), input.stream, None);
    assert_eq!(whole, whole_bytes, "decode and decode_bytes differ");
    let chunked_bytes = run_decode_bytes(input.decoder.clone(), input.stream, Some(&chunks));
    assert_eq!(
        whole, chunked_bytes,
        "decode and chunked decode_bytes differ; chunks {chunks:?}"
    );

    for step in &whole.steps {
        match &step.result {
            Ok(p) => {
                assert!(
                    step.consumed <= max,
                    "{} byte packet over the {max} limit",
                    step.consumed
                );
                let _ = format!("{p:?}");
                let version = step.version.expect("a decoded packet sets the version");
                check_roundtrip(role, p, version, false);
            }
            Err(e) => touch_error(e),
        }
    }
});
