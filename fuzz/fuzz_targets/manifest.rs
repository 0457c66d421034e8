//! Canonical JSON and the manifest: the canonical form is a fixed point; a manifest the host
//! accepts has a canonical form (the appliance verifies that), and round-trips through the
//! canonical writer to an equal manifest.
#![no_main]

use aperture_trust::canonical::{canonicalize_json, to_canonical_bytes};
use aperture_trust::manifest::Manifest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let canonical = canonicalize_json(data);
    if let Ok(c) = &canonical {
        assert_eq!(&canonicalize_json(c).expect("canonical JSON parses"), c);
    }
    if let Ok(manifest) = Manifest::from_json_unverified(data) {
        assert!(
            canonical.is_ok(),
            "a manifest the host accepts has a canonical form"
        );
        let bytes = to_canonical_bytes(&manifest).expect("a valid manifest serializes");
        let back = Manifest::from_json_unverified(&bytes).expect("the writer's output parses");
        assert_eq!(back, manifest);
        assert_eq!(canonicalize_json(&bytes).expect("canonical"), bytes);
    }
});
