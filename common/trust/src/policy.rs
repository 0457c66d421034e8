//! Update and reset policy: may this (already verified) manifest be installed on this appliance?
//!
//! Kept apart from signature checking so the rules are plain functions of two values and can be
//! tested exhaustively. Callers run them after [`crate::signing::verify_manifest`] (or
//! [`crate::bundle::BundleReader::read_header`]) and before writing anything.

use crate::manifest::Manifest;
use crate::signing::VerifiedManifest;
use crate::TrustError;

/// What the appliance knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The board this appliance is, as named in recipes.
    pub board: String,
    /// The version installed in the running slot.
    pub version: semver::Version,
    /// The anti-rollback floor: the lowest `security_version` still accepted.
    pub security_floor: u64,
}

/// Checks an update: the board must match, the version must be strictly newer, and the security
/// version must be at or above the floor.
///
/// An older version fails with [`TrustError::Downgrade`]. The installed version itself fails
/// with the separate [`TrustError::NotNewer`], so that an updater can treat a replayed or
/// already installed bundle as "nothing to do" instead of an attack. Semver precedence applies:
/// `1.0.0-rc.1` is older than `1.0.0`, and build metadata (`+...`) is ignored, so versions that
/// differ only in build metadata count as the same version.
pub fn check_update(manifest: &Manifest, device: &DeviceFacts) -> Result<(), TrustError> {
    check_board(manifest, &device.board)?;
    match manifest.version.cmp_precedence(&device.version) {
        std::cmp::Ordering::Less => {
            return Err(TrustError::Downgrade {
                installed: device.version.clone(),
                offered: manifest.version.clone(),
            })
        }
        std::cmp::Ordering::Equal => {
            return Err(TrustError::NotNewer {
                version: manifest.version.clone(),
            })
        }
        std::cmp::Ordering::Greater => {}
    }
    if manifest.security_version < device.security_floor {
        return Err(TrustError::SecurityVersionTooLow {
            floor: device.security_floor,
            offered: manifest.security_version,
        });
    }
    Ok(())
}

/// Checks that `verified` was signed under a keyring at least as new as the newest one the
/// appliance has accepted (`accepted`, its committed keyring sequence): an older keyring may
/// still list a release key that was revoked since, so it is refused with
/// [`TrustError::KeyringTooOld`].
pub fn check_keyring(verified: &VerifiedManifest, accepted: u64) -> Result<(), TrustError> {
    if verified.keyring_sequence() < accepted {
        return Err(TrustError::KeyringTooOld {
            offered: verified.keyring_sequence(),
            accepted,
        });
    }
    Ok(())
}

/// Checks a factory image for reset: only the board must match. A factory image is by design
/// older than what runs; going back to it is the point of a reset.
pub fn check_factory(manifest: &Manifest, board: &str) -> Result<(), TrustError> {
    check_board(manifest, board)
}

fn check_board(manifest: &Manifest, board: &str) -> Result<(), TrustError> {
    if manifest.board != board {
        return Err(TrustError::WrongBoard {
            expected: board.to_owned(),
            found: manifest.board.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn device(version: &str, floor: u64) -> DeviceFacts {
        DeviceFacts {
            board: "qemu-x86_64".into(),
            version: version.parse().unwrap(),
            security_floor: floor,
        }
    }

    fn offered(version: &str, security_version: u64) -> Manifest {
        let mut m = sample();
        m.version = version.parse().unwrap();
        m.security_version = security_version;
        m
    }

    #[test]
    fn newer_version_at_floor_is_accepted() {
        check_update(&offered("1.2.4", 4), &device("1.2.3", 4)).unwrap();
        check_update(&offered("2.0.0", 9), &device("1.9.9", 4)).unwrap();
        check_update(&offered("1.0.0", 0), &device("1.0.0-rc.1", 0)).unwrap();
    }

    #[test]
    fn wrong_board() {
        let mut d = device("1.0.0", 0);
        d.board = "jetson-orin-agx".into();
        let err = check_update(&offered("2.0.0", 0), &d).unwrap_err();
        assert!(
            matches!(err, TrustError::WrongBoard { ref expected, ref found }
                if expected == "jetson-orin-agx" && found == "qemu-x86_64"),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("use the bundle built for jetson-orin-agx"));
    }

    #[test]
    fn older_version_is_downgrade() {
        let err = check_update(&offered("1.2.2", 9), &device("1.2.3", 0)).unwrap_err();
        assert!(matches!(err, TrustError::Downgrade { .. }), "{err}");
        let err = check_update(&offered("1.0.0-rc.1", 9), &device("1.0.0", 0)).unwrap_err();
        assert!(matches!(err, TrustError::Downgrade { .. }), "{err}");
    }

    #[test]
    fn same_version_is_not_newer() {
        let err = check_update(&offered("1.2.3", 4), &device("1.2.3", 4)).unwrap_err();
        assert!(matches!(err, TrustError::NotNewer { .. }), "{err}");
        // Build metadata does not make a release newer.
        let err =
            check_update(&offered("1.2.3+build.2", 4), &device("1.2.3+build.1", 4)).unwrap_err();
        assert!(matches!(err, TrustError::NotNewer { .. }), "{err}");
    }

    #[test]
    fn security_version_below_floor() {
        let err = check_update(&offered("3.0.0", 3), &device("1.0.0", 4)).unwrap_err();
        assert!(
            matches!(
                err,
                TrustError::SecurityVersionTooLow {
                    floor: 4,
                    offered: 3
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn factory_checks_board_only() {
        check_factory(&offered("0.1.0", 0), "qemu-x86_64").unwrap();
        let err = check_factory(&offered("0.1.0", 0), "jetson-xavier-agx").unwrap_err();
        assert!(matches!(err, TrustError::WrongBoard { .. }), "{err}");
    }
}
