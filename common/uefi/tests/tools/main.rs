//! Tier-1 cross-checks against external tools and the research scripts, one test binary
//! (one link on a 2-core machine): [`uki`] with the real systemd stub, objdump, sbsign,
//! sbverify, objcopy and pcr11-predict.py; [`tpm`] with policy-digest.py and a swtpm driven by
//! tpm2-tools. No root needed. A missing stub or tool prints `SKIPPED: <why>` and the test
//! returns; under `APERTURE_REQUIRE_TOOLS=1` it fails instead.

mod support;
mod tpm;
mod uki;
