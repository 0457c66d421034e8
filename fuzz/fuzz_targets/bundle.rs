//! The bundle reader on arbitrary bytes, trusting the snakeoil root key: the header (manifest,
//! signature, keyring) first, then every payload. Never panics; a bundle that verifies yields
//! exactly `artifact.size` decoded bytes per payload. Seeds are real signed bundles, so
//! mutations of the payloads get past the signature.
#![no_main]

use std::io;

use aperture_fuzz::snakeoil;
use aperture_trust::bundle::BundleReader;
use aperture_trust::TrustError;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut reader = BundleReader::new(data, &snakeoil::root().public(), snakeoil::NOW);
    if reader.read_header().is_err() {
        return;
    }
    // `verify_payloads` is this with the bytes discarded; counting them checks the sizes too.
    let mut read = Vec::new();
    let verified = reader.for_each_payload(|artifact, r| {
        read.push((artifact.size, io::copy(r, &mut io::sink()).ok()));
        Ok::<(), TrustError>(())
    });
    if verified.is_ok() {
        for (size, got) in read {
            assert_eq!(
                Some(size),
                got,
                "a verified payload decodes to its artifact's size"
            );
        }
    }
});
