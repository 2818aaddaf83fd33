//! decode -> encode -> decode. Every packet the decoder accepts must encode
//! in the version it was read in (no encode error), to at most as many bytes
//! as its frame, and decode back to an equal packet; encoded in any other
//! version, it must decode and re-encode to the same bytes. See `src/lib.rs`
//! for the meaning of the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{check_other_versions, check_roundtrip, run_decode, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let role = input.decoder.role();
    let trace = run_decode(input.decoder, input.stream, None);
    for step in &trace.steps {
        let Ok(p) = &step.result else {
            continue;
        };
        let version = step.version.expect("a decoded packet sets the version");
        let wire = check_roundtrip(role, p, version, true).expect("strict round trip");
        assert!(
            wire.len() <= step.consumed,
            "{} byte frame re-encodes to {} bytes: {p:?}",
            step.consumed,
            wire.len()
        );
        check_other_versions(p, version);
    }
});
