//! A UKI read back from the ESP, as the updater, the audit and `aperture-storage` read it:
//! the PE section table, the PCR 11 events, and the signed disk-key policy (`.apolicy`).
//! Input: a whole PE file. Never panics; a policy that parses encodes to bytes that parse to
//! the same policy.
#![no_main]

use aperture_uefi::SignedPolicy;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = aperture_uefi::sections(data);
    let _ = aperture_uefi::pcr::pcr11_events(data);
    let policies = [
        SignedPolicy::of_uki(data).ok().flatten(),
        SignedPolicy::parse(data).ok(),
    ];
    for p in policies.into_iter().flatten() {
        let again = SignedPolicy::parse(&p.encode()).expect("an encoded policy parses");
        assert_eq!(again, p);
    }
});
