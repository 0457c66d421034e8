//! The agent's side of the fleet server (issue 16): enrollment from a provisioning archive
//! (`aperture-agent enroll`; at first boot `enroll --first-boot`, [`crate::firstboot`]), and
//! the report sent after each poll, built from the updater's status, the loop's last check and
//! the runtime's unit (and its metrics, [`crate::runtime`], added by the update loop). The device key is kept by [`key_store`]: sealed with the TPM where the
//! image says the board has one, else a plain file, both on the encrypted config partition.

use aperture_appliance::{BuildFacts, Files};
use aperture_client::devkey::{self, KeyStore};
use aperture_client::enroll::{self, Enrolled, FleetIdentity};
use aperture_client::report::{ReportError, Reporter};
use aperture_client::{LoopStatus, Outcome, StateDir};
use aperture_fleet_api::{
    HealthResult, Report, SlotState, UpdateResult, MAX_LINE, RESULT_COMMITTED, RESULT_FAILED,
    RESULT_ROLLED_BACK,
};
use aperture_slots::SlotStatus;
use aperture_updater::status::UpdateStatus;

use crate::health::UnitProbe;

/// The vision runtime's unit, whose state is the report's `runtime_alive`.
pub const RUNTIME_UNIT: &str = "aperture-runtime.service";

/// This device's serial: the board's (device tree `serial-number`, else DMI), else the
/// machine id; only `A-Za-z0-9._-`, at most 64.
pub fn serial(files: &Files) -> String {
    let candidates = [
        files.path("proc/device-tree/serial-number"),
        files.path("sys/class/dmi/id/product_serial"),
        files.path("etc/machine-id"),
    ];
    for path in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let s: String = text
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .take(64)
                .collect();
            if !s.is_empty() {
                return s;
            }
        }
    }
    "unknown".into()
}

/// The device key's store on this appliance ([`devkey::choose`] in
/// [`Files::fleet_key_dir`]): the key already stored decides; a device without one seals it
/// with the TPM when the image's facts say the board has one (`tpm`, the recipe's
/// `[hardware] tpm`, the same word by which storage seals the disk keys).
pub fn key_store(files: &Files) -> anyhow::Result<Box<dyn KeyStore>> {
    let facts = BuildFacts::load(&files.build_facts())?;
    Ok(devkey::choose(
        &files.fleet_key_dir(),
        facts.tpm,
        aperture_storage::Tpm2::new(files.run_dir()),
    ))
}

/// Enroll from the first provisioning archive found, unless already enrolled.
pub fn enroll_if_provisioned(files: &Files) -> anyhow::Result<Option<Enrolled>> {
    let state = StateDir(files.agent_state());
    Ok(enroll::enroll_if_provisioned(
        &files.provision_dirs(),
        &state,
        &serial(files),
        key_store(files)?.as_ref(),
    )?)
}

/// `aperture-agent enroll`: enroll now, or say why nothing was done.
pub fn enroll_now(files: &Files) -> anyhow::Result<()> {
    match enroll_if_provisioned(files)? {
        Some(e) => {
            println!("enrolled as {} from {}", e.device_id, e.archive.display());
            if let Err(why) = e.erased {
                println!("the archive was not erased: {why}");
            }
        }
        None => {
            let state = StateDir(files.agent_state());
            let keys = key_store(files)?;
            match FleetIdentity::load(&state.fleet(), keys.as_ref()).map_err(anyhow::Error::msg)? {
                Some(id) => println!("already enrolled with {} as {}", id.url, id.device_id),
                None => anyhow::bail!(
                    "no provisioning archive in {}",
                    files
                        .provision_dirs()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            }
        }
    }
    Ok(())
}

fn short_state(s: &SlotStatus) -> &'static str {
    match s {
        SlotStatus::Good => "good",
        SlotStatus::Trying { .. } => "trial",
        SlotStatus::Bad => "bad",
        _ => "unbootable",
    }
}

fn line(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.len() <= MAX_LINE {
        return clean;
    }
    let mut end = MAX_LINE;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_string()
}

/// A version as the API takes it (1 to 64 of `A-Za-z0-9._-`), or none.
fn version(v: &str) -> Option<String> {
    aperture_fleet_api::check_name("version", v)
        .ok()
        .map(|()| v.to_string())
}

/// The report of this appliance: the updater's status, the loop's last check, the runtime.
/// Bounded by construction (lines cut at [`MAX_LINE`], states short words).
pub fn build_report(st: &UpdateStatus, last: Option<&LoopStatus>, runtime_alive: bool) -> Report {
    let slots = st
        .slots
        .iter()
        .map(|s| SlotState {
            slot: s.slot.to_string(),
            state: short_state(&s.status).into(),
            version: s.record.as_ref().and_then(|r| version(&r.version)),
        })
        .collect();
    let on_trial = st.committed != Some(st.booted);
    let (last_update, health) = if let Some(rb) = &st.rollback {
        (
            Some(UpdateResult {
                result: RESULT_ROLLED_BACK.into(),
                version: rb.failed_version.as_deref().and_then(version),
                journal: line(&rb.to_string()),
            }),
            Some(HealthResult {
                passed: false,
                detail: line(&rb.to_string()),
            }),
        )
    } else {
        let from_loop = last.and_then(|l| match l.result? {
            Outcome::InstallFailed => Some(UpdateResult {
                result: RESULT_FAILED.into(),
                version: l.tried.as_deref().and_then(version),
                journal: line(&l.message),
            }),
            Outcome::Installed => Some(UpdateResult {
                result: "installed".into(),
                version: l.tried.as_deref().and_then(version),
                journal: line(&l.message),
            }),
            _ => None,
        });
        let health = (!on_trial).then(|| HealthResult {
            passed: true,
            detail: format!("slot {} committed", st.booted),
        });
        // A slot that was installed and now runs committed: the update is done. Known from
        // the slots themselves, which outlive the loop's last check (a reboot's first check,
        // or an install the resume service finished, names no version): the running slot is
        // committed and newer than the other one, which an install never makes older (the
        // updater refuses downgrades) and a flashed appliance does not have (both slots hold
        // the same version).
        let committed = || {
            if on_trial {
                return None;
            }
            let record = |slot| {
                st.slots
                    .iter()
                    .find(|s| s.slot == slot)
                    .and_then(|s| s.record.as_ref())
                    .map(|r| r.version.clone())
            };
            let running = record(st.booted)?;
            let other = record(st.booted.other())?;
            let newer = match (
                semver::Version::parse(&running),
                semver::Version::parse(&other),
            ) {
                (Ok(r), Ok(o)) => r > o,
                _ => false,
            };
            newer.then(|| UpdateResult {
                result: RESULT_COMMITTED.into(),
                version: version(&running),
                journal: format!(
                    "{running} runs in slot {} and passed its health gate",
                    st.booted
                ),
            })
        };
        (from_loop.or_else(committed), health)
    };
    Report {
        version: version(&st.running.version).unwrap_or_else(|| "unknown".into()),
        slot: st.booted.to_string(),
        slots,
        floor: st.security_floor,
        last_update,
        health,
        runtime_alive,
        // The update loop adds the metrics' summary ([`crate::runtime::summary`]).
        runtime: None,
    }
}

/// The reports of the update loop: the identity is loaded when the first report is due (the
/// device may enroll while the loop runs), and errors are logged, never returned.
pub struct Reports {
    state: StateDir,
    keys: Box<dyn KeyStore>,
    reporter: Option<Reporter>,
}

impl Reports {
    /// Reports of the device whose state is in `state` and whose key is kept by `keys`.
    pub fn new(state: StateDir, keys: Box<dyn KeyStore>) -> Self {
        Reports {
            state,
            keys,
            reporter: None,
        }
    }

    /// Send `report` at `now`; logs what went wrong.
    pub fn send(&mut self, report: impl FnOnce() -> Option<Report>, now: u64) {
        if self.reporter.is_none() {
            match FleetIdentity::load(&self.state.fleet(), self.keys.as_ref()) {
                Ok(None) => return,
                Ok(Some(id)) => match Reporter::new(&id) {
                    Ok(r) => self.reporter = Some(r),
                    Err(e) => {
                        tracing::warn!("fleet report: the identity's TLS settings: {e:#}");
                        return;
                    }
                },
                Err(e) => {
                    tracing::warn!("fleet report: {e}");
                    return;
                }
            }
        }
        let Some(reporter) = self.reporter.as_mut() else {
            return;
        };
        let Some(report) = report() else { return };
        match reporter.send(&report, now) {
            Ok(()) => tracing::debug!("fleet report sent"),
            Err(ReportError::HeldBack(_)) => {}
            Err(e) => tracing::warn!("fleet report: {e}"),
        }
    }
}

/// Whether the runtime's unit is active.
pub fn runtime_alive(probe: &mut dyn UnitProbe) -> bool {
    probe
        .active_state(RUNTIME_UNIT)
        .is_ok_and(|s| s == "active")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_appliance::Slot;
    use aperture_updater::status::{RecordSummary, Rollback, RunningImage, SlotInfo};

    fn slot(slot: Slot, status: SlotStatus, version: &str, booted: bool) -> SlotInfo {
        SlotInfo {
            slot,
            status,
            label: None,
            booted,
            next: booted,
            record: Some(RecordSummary {
                version: version.into(),
                security_version: 1,
                rootfs_sha256: String::new(),
                root_hash: String::new(),
            }),
        }
    }

    fn status(committed: Option<Slot>, rollback: Option<Rollback>) -> UpdateStatus {
        UpdateStatus {
            backend: "fake".into(),
            booted: Slot::B,
            next: Slot::B,
            running: RunningImage {
                product: "p".into(),
                version: "1.1.0".into(),
                security_version: 1,
                board: "qemu-x86_64".into(),
            },
            security_floor: 1,
            keyring_sequence: 1,
            trusted_time: 0,
            committed,
            slots: vec![
                slot(Slot::A, SlotStatus::Good, "1.0.0", false),
                slot(
                    Slot::B,
                    SlotStatus::Trying {
                        tries_left: 2,
                        tries_done: 1,
                    },
                    "1.1.0",
                    true,
                ),
            ],
            interrupted: None,
            rollback,
            secure_boot: aperture_updater::status::SecureBoot::On,
        }
    }

    fn last(result: Outcome, tried: Option<&str>) -> LoopStatus {
        serde_json::from_value(serde_json::json!({
            "repository": "https://r", "channel": "stable", "seed": 1, "last_check": 1,
            "result": result, "message": format!("journal\nline {}", "x".repeat(600)),
            "next_eligible": null, "next_check": null, "requests": 0, "bytes": 0,
            "pending": null, "failures": 0, "tried": tried,
        }))
        .unwrap()
    }

    #[test]
    fn a_slot_on_trial_reports_no_verdict_and_short_states() {
        let r = build_report(&status(Some(Slot::A), None), None, true);
        r.validate().unwrap();
        assert_eq!(
            (r.version.as_str(), r.slot.as_str(), r.floor),
            ("1.1.0", "b", 1)
        );
        assert_eq!(r.slots[1].state, "trial");
        assert_eq!(r.slots[0].version.as_deref(), Some("1.0.0"));
        assert_eq!((r.health, r.last_update), (None, None));
    }

    #[test]
    fn a_failed_install_names_the_tried_version_with_a_bounded_line() {
        let st = status(Some(Slot::B), None);
        let r = build_report(
            &st,
            Some(&last(Outcome::InstallFailed, Some("1.2.0"))),
            false,
        );
        r.validate().unwrap();
        let u = r.last_update.unwrap();
        assert_eq!(
            (u.result.as_str(), u.version.as_deref()),
            (RESULT_FAILED, Some("1.2.0"))
        );
        assert!(u.journal.len() <= MAX_LINE && !u.journal.contains('\n'));
        assert!(r.health.unwrap().passed);
        assert!(!r.runtime_alive);
    }

    #[test]
    fn a_committed_update_is_reported_after_the_reboot_whatever_the_last_check_said() {
        // The first check on the new slot installs nothing and names no version; the slots
        // still say what happened.
        for last_check in [None, Some(last(Outcome::UpToDate, None))] {
            let r = build_report(&status(Some(Slot::B), None), last_check.as_ref(), true);
            let u = r.last_update.expect("a committed update");
            assert_eq!(
                (u.result.as_str(), u.version.as_deref()),
                (RESULT_COMMITTED, Some("1.1.0"))
            );
        }
        // A flashed appliance (both slots the same version) has no update to report, and
        // neither has one that runs the older slot while the newer waits for its reboot.
        let mut flashed = status(Some(Slot::B), None);
        flashed.slots[0].record.as_mut().unwrap().version = "1.1.0".into();
        assert_eq!(build_report(&flashed, None, true).last_update, None);
        let mut waiting = status(Some(Slot::A), None);
        waiting.booted = Slot::A;
        waiting.running.version = "1.0.0".into();
        assert_eq!(build_report(&waiting, None, true).last_update, None);
    }

    #[test]
    fn a_committed_update_and_a_rollback_use_the_servers_words() {
        let r = build_report(
            &status(Some(Slot::B), None),
            Some(&last(Outcome::UpToDate, Some("1.1.0"))),
            true,
        );
        let u = r.last_update.unwrap();
        assert_eq!(
            (u.result.as_str(), u.version.as_deref()),
            (RESULT_COMMITTED, Some("1.1.0"))
        );

        let rb = Rollback {
            failed_slot: Slot::A,
            failed_version: Some("1.2.0".into()),
            running_slot: Slot::B,
        };
        let r = build_report(&status(Some(Slot::B), Some(rb)), None, true);
        r.validate().unwrap();
        let u = r.last_update.unwrap();
        assert_eq!(
            (u.result.as_str(), u.version.as_deref()),
            (RESULT_ROLLED_BACK, Some("1.2.0"))
        );
        assert!(!r.health.unwrap().passed);
    }
}
