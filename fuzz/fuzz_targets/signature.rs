//! `manifest.sig` (release key id, signature, root-signed keyring) and `verify_manifest` with
//! the snakeoil root key. Input: two files (see `aperture_fuzz::parts`), `manifest.json` and
//! `manifest.sig`. The signature file round-trips through its writer; a keyring the root
//! verifies lists only keys whose ids match; a verified manifest validates.
#![no_main]

use aperture_fuzz::{parts, snakeoil};
use aperture_trust::signing::{verify_manifest, ManifestSignature};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [Some(manifest), Some(sig)] = parts::<2>(data) else {
        return;
    };
    let root = snakeoil::root().public();
    if let Ok(parsed) = serde_json::from_slice::<ManifestSignature>(sig) {
        let again = serde_json::to_vec(&parsed).expect("a signature file serializes");
        let back: ManifestSignature = serde_json::from_slice(&again).expect("and parses again");
        assert_eq!(back, parsed);
        if let Ok(keyring) = parsed.keyring.verify(&root) {
            assert!(keyring.keys.iter().all(|k| k.public.key_id() == k.key_id));
        }
    }
    if let Ok(verified) = verify_manifest(manifest, sig, &root, snakeoil::NOW) {
        assert!(verified.manifest().validate().is_ok());
        assert_eq!(verified.key_id(), &snakeoil::release().key_id());
    }
});
