//! Which key source seals a volume, and waiting for the TPM (issue 12.4).
//!
//! The source is never chosen by a race. What decides, in order:
//!
//! 1. what the volume's own records say (its token's type, its `storage` record): a key sealed
//!    by the TPM is always unsealed by the TPM, and a plain key stays plain;
//! 2. what the appliance's first boot recorded for the device (`source` in the record, or the
//!    other volume's): a volume formatted later is sealed the same way;
//! 3. the image (`BuildFacts::tpm`, the recipe's `[security] tpm`): a board with a TPM seals to
//!    it, and only a recipe that says "this board has no TPM" gets plain keys.
//!
//! When the answer is the TPM, `aperture-storage` waits for its device ([`wait_for`], 90 s by
//! default, saying what it waits for) before it touches anything, and fails with an error that
//! names the partition if it never comes: there is no fallback from the TPM to a plain key.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::keys::KeySourceKind;
use crate::volume::Volume;

/// How long `aperture-storage setup` waits for the TPM by default.
pub const DEFAULT_TPM_WAIT: Duration = Duration::from_secs(90);

/// The key source of one volume and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePlan {
    /// The source.
    pub kind: KeySourceKind,
    /// Why, for logs and errors ("its key was sealed by the TPM at its first boot").
    pub why: String,
    /// Whether it was recorded (as opposed to chosen now, at a first boot).
    pub recorded: bool,
}

/// The key source of a volume: `volume_recorded` (its token or record), else `device_recorded`
/// (the first boot's choice), else the image's word `facts_tpm`.
pub fn plan(
    facts_tpm: bool,
    device_recorded: Option<KeySourceKind>,
    volume_recorded: Option<KeySourceKind>,
) -> SourcePlan {
    if let Some(kind) = volume_recorded {
        return SourcePlan {
            kind,
            why: match kind {
                KeySourceKind::Tpm2 => "its key is sealed to the TPM (recorded at its first boot)",
                _ => "its key is stored unsealed (recorded at its first boot)",
            }
            .into(),
            recorded: true,
        };
    }
    if let Some(kind) = device_recorded {
        return SourcePlan {
            kind,
            why: match kind {
                KeySourceKind::Tpm2 => {
                    "this appliance's keys are sealed to the TPM (recorded at its first boot)"
                }
                _ => "this appliance's keys are stored unsealed (recorded at its first boot)",
            }
            .into(),
            recorded: true,
        };
    }
    if facts_tpm {
        SourcePlan {
            kind: KeySourceKind::Tpm2,
            why: "the image says this board has a TPM (recipe [security] tpm), so its key is to be sealed to it".into(),
            recorded: false,
        }
    } else {
        SourcePlan {
            kind: KeySourceKind::UnsafePlain,
            why: "the image says this board has no TPM (recipe [security] tpm = false)".into(),
            recorded: false,
        }
    }
}

/// What to log loudly at every boot about volumes whose keys are not sealed.
pub fn warnings(facts_tpm: bool, plans: &[(Volume, SourcePlan)]) -> Vec<String> {
    plans
        .iter()
        .filter(|(_, p)| p.kind == KeySourceKind::UnsafePlain)
        .map(|(v, p)| {
            let mut w = format!(
                "DATA AT REST IS NOT PROTECTED AGAINST DISK THEFT: the key of {v} is stored \
                 unsealed in its LUKS2 header and in the device state ({})",
                p.why
            );
            if facts_tpm {
                w.push_str(
                    "; this image says the board has a TPM, but a key source never changes \
                     once recorded: `aperture-reset --level 3` formats the volume afresh, \
                     sealed to the TPM",
                );
            }
            w
        })
        .collect()
}

/// Wait for `device` to exist, polling every `poll` for at most `timeout`; says on standard
/// error (through the log) what it waits for and why. `Ok(waited)` once it exists,
/// `Err(waited)` when the time is up.
pub fn wait_for(
    device: &Path,
    why: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Duration, Duration> {
    let start = Instant::now();
    if device.exists() {
        return Ok(Duration::ZERO);
    }
    tracing::info!(
        "waiting up to {} s for the TPM {} ({why})",
        timeout.as_secs(),
        device.display()
    );
    let mut said = Instant::now();
    loop {
        std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
        if device.exists() {
            tracing::info!(
                "the TPM {} appeared after {:.1} s",
                device.display(),
                start.elapsed().as_secs_f64()
            );
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(start.elapsed());
        }
        if said.elapsed() >= Duration::from_secs(10) {
            tracing::info!(
                "still waiting for the TPM {} ({} s)",
                device.display(),
                start.elapsed().as_secs()
            );
            said = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use KeySourceKind::{Tpm2, UnsafePlain};

    #[test]
    fn recorded_sources_never_change_and_the_image_decides_first_boots() {
        // (image says TPM, device recorded, volume recorded) -> source, recorded
        let table = [
            (true, None, None, Tpm2, false),
            (false, None, None, UnsafePlain, false),
            (false, Some(Tpm2), None, Tpm2, true),
            (false, None, Some(Tpm2), Tpm2, true),
            (true, Some(UnsafePlain), None, UnsafePlain, true),
            (true, None, Some(UnsafePlain), UnsafePlain, true),
            (true, Some(Tpm2), Some(UnsafePlain), UnsafePlain, true),
            (false, Some(UnsafePlain), Some(Tpm2), Tpm2, true),
        ];
        for (facts, device, volume, want, recorded) in table {
            let p = plan(facts, device, volume);
            assert_eq!(
                (p.kind, p.recorded),
                (want, recorded),
                "{facts} {device:?} {volume:?}"
            );
        }
        assert!(plan(true, None, None).why.contains("[security] tpm"));
    }

    #[test]
    fn plain_keys_are_named_loudly_and_the_way_out_is_given() {
        let plain = plan(false, None, None);
        let w = warnings(false, &[(Volume::Data, plain.clone())]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("NOT PROTECTED") && w[0].contains("data"),
            "{}",
            w[0]
        );
        let w = warnings(
            true,
            &[(Volume::Config, plan(true, Some(UnsafePlain), None))],
        );
        assert!(w[0].contains("--level 3"), "{}", w[0]);
        assert!(warnings(true, &[(Volume::Data, plan(true, None, None))]).is_empty());
    }

    #[test]
    fn waits_for_a_late_tpm_and_gives_up_on_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("tpmrm0");
        let waited = wait_for(
            &dev,
            "test",
            Duration::from_millis(150),
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        let late = dev.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(late, b"").unwrap();
        });
        let waited = wait_for(
            &dev,
            "test",
            Duration::from_secs(10),
            Duration::from_millis(20),
        )
        .unwrap();
        t.join().unwrap();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(5));
        assert_eq!(
            wait_for(&dev, "test", Duration::ZERO, Duration::ZERO),
            Ok(Duration::ZERO)
        );
    }
}
