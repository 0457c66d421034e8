//! First boot (issue 16): `aperture-agent enroll --first-boot`, what `aperture-enroll.service`
//! runs on an appliance without a fleet identity.
//!
//! 1. A provisioning archive is looked for on the ESP (`/efi/aperture/provision`, from
//!    `aperture flash --provision`), then on a USB stick labelled `APERTURE`, which
//!    `aperture-provision-usb.service` mounted read-only at `/run/aperture/provision-usb`
//!    (started by udev when the stick appears; it starts this unit again). None: nothing to
//!    do, exit 0.
//! 2. The archive is read and checked; a bad archive fails at once with the file named.
//! 3. Its network settings, if any, are kept and applied ([`crate::network`]) before enrolling.
//! 4. Enrollment ([`aperture_client::enroll`]): a server that cannot be reached, or answers
//!    5xx or 429, is tried again after a growing delay (10 s doubling to 5 min), each failure
//!    one journal line; a refusal (a used or expired token) is final.
//! 5. The archive is erased. The stick is mounted read-only, so its erase fails the first time;
//!    the agent then remounts it read-write for the erase alone, syncs and unmounts it (the
//!    stick may be pulled). The token is single-use anyway: erasing only keeps it off a medium
//!    someone may carry away.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use aperture_appliance::Files;
use aperture_client::enroll::{self, EnrollError};
use aperture_client::StateDir;
use aperture_fleet_api::provision::Archive;
use aperture_sys::Cmd;

/// The first delay before trying again.
pub const FIRST_DELAY: Duration = Duration::from_secs(10);
/// The longest delay between tries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// Whether trying again later may succeed: the server was not reached, or was busy or broken;
/// not when it refused the token or the archive is bad.
pub fn retryable(e: &EnrollError) -> bool {
    match e {
        EnrollError::Transport { .. } => true,
        EnrollError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        _ => false,
    }
}

/// The delay after `delay`: doubled, at most [`MAX_DELAY`].
pub fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(MAX_DELAY)
}

/// `aperture-agent enroll --first-boot`; `sleep` waits between tries (the real one sleeps).
pub fn run(files: &Files, sleep: &mut dyn FnMut(Duration)) -> Result<()> {
    let state = StateDir(files.agent_state());
    let keys = crate::fleet::key_store(files)?;
    match enroll::FleetIdentity::load(&state.fleet(), keys.as_ref()) {
        Ok(Some(id)) => {
            println!("already enrolled with {} as {}", id.url, id.device_id);
            return Ok(());
        }
        Ok(None) => {}
        // An identity whose key no longer loads is replaced by the next archive, as
        // `enroll::enroll_if_provisioned` does.
        Err(why) => tracing::warn!("{why}; enrolling again if a provisioning archive is here"),
    }
    let places = files.provision_dirs();
    let Some(dir) = enroll::find_archive(&places) else {
        println!(
            "no provisioning archive in {}: not enrolled (flash with --provision, or insert a \
             USB stick labelled {})",
            places
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or "),
            aperture_appliance::files::PROVISION_USB_LABEL
        );
        return Ok(());
    };
    let archive = Archive::read(&dir).context("the provisioning archive")?;
    if let Some(net) = &archive.network {
        crate::network::persist(files, net)?;
        crate::network::apply(files, net)?;
    }
    let serial = crate::fleet::serial(files);
    let mut delay = FIRST_DELAY;
    let mut attempt = 1u32;
    let enrolled = loop {
        match enroll::enroll(&dir, &state, &serial, keys.as_ref()) {
            Ok(e) => break e,
            Err(e) if retryable(&e) => {
                tracing::warn!(
                    "enrolling with {} failed (try {attempt}), trying again in {} s: {:#}",
                    archive.url,
                    delay.as_secs(),
                    anyhow::Error::new(e)
                );
                sleep(delay);
                delay = next_delay(delay);
                attempt += 1;
            }
            Err(e) => return Err(e).context(format!("enrolling with {}", archive.url)),
        }
    };
    println!(
        "enrolled with {} as {} from {}",
        archive.url,
        enrolled.device_id,
        dir.display()
    );
    if dir == files.provision_usb() {
        match &enrolled.erased {
            Ok(()) => unmount(&dir),
            Err(_) => match erase_on_stick(&dir) {
                Ok(()) => println!("the provisioning archive was erased from the USB stick"),
                Err(e) => tracing::warn!(
                    "the provisioning archive on the USB stick was not erased ({e:#}); its \
                     token is used and worthless now, but wipe the stick"
                ),
            },
        }
    } else if let Err(why) = &enrolled.erased {
        tracing::warn!(
            "the provisioning archive {} could not be erased ({why}); its token is used and \
             worthless now, but wipe the medium",
            dir.display()
        );
    }
    Ok(())
}

/// Remount the stick read-write for the erase alone, erase, flush and unmount.
fn erase_on_stick(dir: &Path) -> Result<()> {
    Cmd::new("mount")
        .args(["-o", "remount,rw,nosuid,nodev,noexec"])
        .arg(dir)
        .run()?;
    let erased = enroll::erase(dir).map_err(anyhow::Error::msg);
    // Unmounting writes the FAT back; the stick may be pulled once it is done.
    let unmounted = Cmd::new("umount").arg(dir).run();
    erased?;
    unmounted?;
    Ok(())
}

fn unmount(dir: &Path) {
    if let Err(e) = Cmd::new("umount").arg(dir).run() {
        tracing::warn!("unmounting the USB stick: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_or_busy_server_is_tried_again() {
        let refused = |status| EnrollError::Refused {
            status,
            message: "x".into(),
        };
        assert!(retryable(&refused(503)) && retryable(&refused(429)));
        assert!(!retryable(&refused(409)) && !retryable(&refused(401)));
        assert!(!retryable(&EnrollError::Answer("garbled".into())));
    }

    #[test]
    fn the_delay_doubles_up_to_five_minutes() {
        let mut d = FIRST_DELAY;
        let mut seen = vec![];
        for _ in 0..8 {
            seen.push(d.as_secs());
            d = next_delay(d);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn no_archive_is_nothing_to_do_and_a_bad_one_fails_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let files = Files::at(tmp.path());
        // The image's facts say which key store a new identity gets (no TPM here).
        let facts = aperture_appliance::BuildFacts {
            product: "aperture-edge".into(),
            version: "1.0.0".into(),
            security_version: 1,
            board: aperture_appliance::Board::QemuX86_64,
            recipe_sha256: "ab".into(),
            source_date_epoch: 1,
            required_services: vec![],
            tpm: false,
            reset_button: None,
        };
        std::fs::create_dir_all(files.build_facts().parent().unwrap()).unwrap();
        std::fs::write(files.build_facts(), serde_json::to_vec(&facts).unwrap()).unwrap();
        let mut slept = 0;
        run(&files, &mut |_| slept += 1).unwrap();
        let esp = files.provision_esp();
        std::fs::create_dir_all(&esp).unwrap();
        std::fs::write(esp.join("fleet.toml"), "url = \"http://fleet.example\"\n").unwrap();
        let e = format!("{:#}", run(&files, &mut |_| slept += 1).unwrap_err());
        assert!(e.contains("fleet.toml") && e.contains("https"), "{e}");
        assert_eq!(slept, 0);
    }
}
