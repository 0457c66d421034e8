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

use std::path::Path;

use aperture_slots::Slot;
use aperture_sys::cmd::Cmd;

use crate::UpdateError;

/// Check the UKI at `path`, written for `slot`: its command line is `expected_cmdline`, and it
/// is signed by `db_cert` when the running image has one (images built before Secure Boot
/// signing carry none; they say so in the log).
pub(crate) fn check(
    path: &Path,
    slot: Slot,
    expected_cmdline: &str,
    db_cert: &Path,
) -> Result<(), UpdateError> {
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
