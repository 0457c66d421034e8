//! `aperture-client`: the appliance's side of the fleet: the update loop, which finds
//! releases in a TUF repository (tough's client workflow) and installs them through the
//! updater; enrollment with the fleet server and reports to it (issue 16).
//!
//! * [`transport`]: tough's transport over the updater's HTTPS client (or files), caching the
//!   immutable versioned metadata so that a poll that finds nothing new costs two small
//!   requests; counts requests and bytes.
//! * [`refresh`]: one TUF refresh from the newest trusted root (tough's workflow, with our
//!   corrections: an equal-version timestamp, target URLs), and the releases it lists.
//! * [`target`]: a target's bytes checked against the length and sha256 the targets role
//!   signed.
//! * [`check`]: the loop: refresh, decide ([`aperture_release::select`]), install, reboot in
//!   the maintenance window; its status file.
//! * [`enroll`]: first boot: the provisioning archive, the device key and CSR, enrollment
//!   trusting only the archive's CA, the stored identity, the archive erased.
//! * [`devkey`]: where the device key is kept: sealed with the TPM ([`devkey::TpmSealedKey`])
//!   or a plain file ([`devkey::PlainKeyFile`]), on the encrypted config partition.
//! * [`report`]: a bounded report over mutual TLS after each poll; a 429 holds reports back.
//! * [`recorder`]: an installer that records, for tests of the loop.
//! * [`conformance`]: the `aperture-tuf-client` program's work: the same client code behind
//!   the command line the TUF conformance suite drives.

pub mod check;
pub mod conformance;
pub mod devkey;
pub mod enroll;
pub mod recorder;
pub mod refresh;
pub mod report;
pub mod target;
pub mod transport;

use std::io::Read;

use aperture_sys::Cmd;
use aperture_updater::{InstallOptions, Updater};

pub use check::{Installer, LoopStatus, Outcome, Running, StateDir, UpdateLoop};

/// The real [`Installer`]: the updater library on the device, `systemctl reboot`.
pub struct UpdaterInstaller {
    /// The updater.
    pub updater: Updater,
    /// The extra CA a download trusted, recorded in the install journal for a restart.
    pub ca: Option<std::path::PathBuf>,
    /// Whether plain http:// was allowed, recorded likewise.
    pub insecure_http: bool,
}

impl Installer for UpdaterInstaller {
    fn floor(&mut self) -> Result<u64, String> {
        self.updater.security_floor().map_err(|e| e.to_string())
    }

    fn ready(&mut self) -> Result<(), String> {
        let st = self.updater.status().map_err(|e| e.to_string())?;
        if st.committed != Some(st.booted) {
            return Err(format!(
                "slot {} is on trial until the health gate commits it",
                st.booted
            ));
        }
        if st.next != st.booted {
            return Err(format!(
                "slot {} is armed and boots next; waiting for the reboot",
                st.next
            ));
        }
        if let Some(j) = &st.interrupted {
            return Err(format!(
                "an interrupted install is being resumed ({j:?}); aperture-update-resume \
                 finishes it"
            ));
        }
        Ok(())
    }

    fn install(&mut self, bundle: &mut dyn Read, source: &str) -> Result<String, String> {
        let opts = InstallOptions {
            source: Some(aperture_updater::source::redact(source)),
            ca: self.ca.clone(),
            insecure_http: self.insecure_http,
            lock_wait: std::time::Duration::from_secs(60),
            ..InstallOptions::default()
        };
        let done = self
            .updater
            .install(bundle, &opts)
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "slot {} armed, {} MiB written and read back",
            done.target,
            done.rootfs_bytes >> 20
        ))
    }

    fn reboot(&mut self) -> Result<(), String> {
        Cmd::new("systemctl")
            .arg("reboot")
            .run()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
