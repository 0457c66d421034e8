//! The check of a slot's signed unified kernel image once it is written and its hash matched:
//! before the slot can be armed, its `.cmdline` section must boot exactly this slot's
//! partition with the manifest's verity root, and its Authenticode signature must verify
//! against the Secure Boot db certificate the running image carries
//! (`/etc/aperture/secure-boot/db.crt`), which is the one the firmware has enrolled.
//!
//! The manifest's signature already covers the UKI's bytes, so for a well-built release these
//! checks cannot fail; they stop a release whose builder signed the wrong thing (another db
//! key, no signature, the other slot's command line) from costing the slot its tries, or,
//! under Secure Boot, from being refused by the firmware on every try. The signature is
//! checked with `sbverify` (sbsigntool), as the build host checks it.
//!
//! Its signed disk-key policy (`.apolicy`, [`aperture_uefi::apolicy`]) is checked too, when
//! the running image carries the TPM policy key: it must approve this UKI's own PCR 11 and the
//! release's security version, signed by that key (`openssl dgst -verify`). Storage presents
//! it to the TPM at every boot of the slot to unseal the disk keys; a release whose policy
//! does not hold would boot and then stay locked, so it is refused here instead.

use std::path::Path;

use aperture_slots::Slot;
use aperture_sys::cmd::Cmd;

use crate::UpdateError;

/// What a slot's UKI must be.
pub(crate) struct Expected<'a> {
    /// The command line of the slot in this release.
    pub cmdline: &'a str,
    /// The release's security version, which its disk-key policy must name.
    pub security_version: u64,
    /// The running image's Secure Boot db certificate.
    pub db_cert: &'a Path,
    /// The running image's TPM policy key (public, PEM).
    pub policy_key: &'a Path,
}

/// Check the UKI at `path`, written for `slot`, against `want`: its command line; its
/// signature, by the db certificate when the running image has one; its disk-key policy, by
/// the policy key when the running image has one (images built before either carry none; they
/// say so in the log).
pub(crate) fn check(path: &Path, slot: Slot, want: &Expected<'_>) -> Result<(), UpdateError> {
    let (expected_cmdline, db_cert) = (want.cmdline, want.db_cert);
    let fail = |reason: String| UpdateError::Verify {
        slot,
        what: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("reading it: {e}")))?;
    let cmdline = aperture_uefi::section_data(&bytes, ".cmdline")
        .map_err(|e| fail(format!("it is not a unified kernel image: {e}")))?
        .ok_or_else(|| {
            fail("it has no .cmdline section, so it is not a unified kernel image".into())
        })?;
    // systemd-stub passes the section as is; ukify and our builder end it with no NUL, but a
    // trailing NUL or newline would not change the kernel's view.
    let cmdline = String::from_utf8_lossy(cmdline);
    let cmdline = cmdline.trim_end_matches(['\0', '\n']);
    if cmdline != expected_cmdline {
        return Err(fail(format!(
            "its command line is {cmdline:?}, but slot {slot} of this release must boot with \
             {expected_cmdline:?}"
        )));
    }
    if !aperture_uefi::is_signed(&bytes).map_err(|e| fail(e.to_string()))? {
        return Err(fail(
            "it carries no Authenticode signature: under Secure Boot the firmware would refuse it"
                .into(),
        ));
    }
    check_policy(path, &bytes, want, &fail)?;
    if !db_cert.is_file() {
        tracing::warn!(
            "the running image has no Secure Boot db certificate ({}): the signature of {} \
             is not checked against it",
            db_cert.display(),
            path.display()
        );
        return Ok(());
    }
    Cmd::new("sbverify")
        .arg("--cert")
        .arg(db_cert)
        .arg(path)
        .run()
        .map_err(|e| {
            fail(format!(
                "its signature does not verify against the Secure Boot db certificate {} that \
                 the firmware trusts ({e}); the release was signed with other keys",
                db_cert.display()
            ))
        })?;
    Ok(())
}

/// The UKI's signed disk-key policy: present, for its own PCR 11 and the release's security
/// version, signed by the running image's policy key.
fn check_policy(
    path: &Path,
    bytes: &[u8],
    want: &Expected<'_>,
    fail: &dyn Fn(String) -> UpdateError,
) -> Result<(), UpdateError> {
    if !want.policy_key.is_file() {
        tracing::warn!(
            "the running image has no TPM policy key ({}): the disk-key policy of {} is not \
             checked",
            want.policy_key.display(),
            path.display()
        );
        return Ok(());
    }
    let policy = aperture_uefi::SignedPolicy::of_uki(bytes)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| {
            fail(format!(
                "it carries no signed disk-key policy (section {}): the disk keys, sealed to \
                 the boot chain, would not unseal in it",
                aperture_uefi::apolicy::SECTION
            ))
        })?;
    let pcr11 = aperture_uefi::predict_pcr11(bytes).map_err(|e| fail(e.to_string()))?;
    if policy.pcr11 != pcr11 {
        return Err(fail(format!(
            "its disk-key policy approves PCR 11 {}, but this UKI leaves {}: the policy was \
             made for another UKI",
            hex::encode(policy.pcr11),
            hex::encode(pcr11)
        )));
    }
    if policy.security_version != want.security_version {
        return Err(fail(format!(
            "its disk-key policy is for security version {}, the release's is {}",
            policy.security_version, want.security_version
        )));
    }
    let dir = tempfile::tempdir().map_err(|e| fail(format!("a scratch folder: {e}")))?;
    let (msg, sig) = (dir.path().join("msg"), dir.path().join("sig"));
    std::fs::write(&msg, policy.message())
        .and_then(|()| std::fs::write(&sig, &policy.signature))
        .map_err(|e| fail(format!("writing scratch files: {e}")))?;
    Cmd::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(want.policy_key)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .run()
        .map_err(|e| {
            fail(format!(
                "its disk-key policy is not signed by the TPM policy key {} this appliance's \
                 disk keys are sealed to ({e}); the release was signed with other keys",
                want.policy_key.display()
            ))
        })?;
    Ok(())
}
