//! The custom metadata of a release target. A TUF repository signs each target's length and
//! hashes and an arbitrary `custom` object; Aperture puts one [`ReleaseMeta`] in it under
//! [`CUSTOM_KEY`], so that everything a device decides on (which product and board, which
//! channel, which version, when its wave starts, whether the rollout is halted) is covered by
//! the targets role's signatures. The bundle inside still carries its own signed manifest:
//! the device checks both, as Uptane keeps two repositories.

use serde::{Deserialize, Serialize};

use crate::rollout::Gate;
use crate::waves::Waves;

/// The key of [`ReleaseMeta`] inside a target's `custom` object.
pub const CUSTOM_KEY: &str = "aperture";

/// What a fleet needs to know of a published release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    /// Product name, as in the bundle's manifest.
    pub product: String,
    /// Board, as in the bundle's manifest.
    pub board: String,
    /// Release version, as in the bundle's manifest.
    pub version: semver::Version,
    /// Anti-rollback counter, as in the bundle's manifest.
    pub security_version: u64,
    /// The channel the release is published to (`stable`, `beta`, ...).
    pub channel: String,
    /// Publication time, seconds since the Unix epoch: the waves count from it.
    pub published_at: u64,
    /// The staged rollout schedule.
    #[serde(default)]
    pub waves: Waves,
    /// A halted rollout: no device that has not started installing it starts.
    #[serde(default)]
    pub halted: bool,
    /// Whether only a fleet rollout installs it ([`Gate::Rollout`]); left out when not.
    #[serde(default, skip_serializing_if = "Gate::is_none")]
    pub gate: Gate,
}

impl ReleaseMeta {
    /// The target name a release is published under: one per channel, product, board and
    /// version, so that publishing the same build again finds it. Flat (no `/`): with
    /// consistent snapshots a target is stored as `HASH.NAME`, and clients differ on where the
    /// hash goes in a name with folders.
    pub fn target_name(&self) -> String {
        format!(
            "{}-{}-{}.{}.bundle",
            self.product, self.board, self.version, self.channel
        )
    }

    /// Read from a target's `custom` object: `None` when the target is not a release of ours
    /// (a repository may hold other targets), an error when it claims to be and is malformed.
    pub fn from_custom<S: std::hash::BuildHasher>(
        custom: &std::collections::HashMap<String, serde_json::Value, S>,
    ) -> Option<Result<Self, String>> {
        let value = custom.get(CUSTOM_KEY)?;
        Some(
            serde_json::from_value::<ReleaseMeta>(value.clone())
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    m.waves.validate().map_err(|e| e.to_string())?;
                    Ok(m)
                }),
        )
    }

    /// As the value to store under [`CUSTOM_KEY`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("ReleaseMeta serialises")
    }

    /// A channel name that is safe in a target path: lower-case letters, digits, `-` and `_`.
    pub fn valid_channel(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ReleaseMeta {
        ReleaseMeta {
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            version: "1.1.0".parse().unwrap(),
            security_version: 2,
            channel: "stable".into(),
            published_at: 1_800_000_000,
            waves: "1%@0h,100%@1d".parse().unwrap(),
            halted: false,
            gate: Gate::None,
        }
    }

    #[test]
    fn round_trips_through_a_custom_object_and_names_its_target() {
        let m = meta();
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.into(), m.to_value());
        assert_eq!(ReleaseMeta::from_custom(&custom).unwrap().unwrap(), m);
        assert_eq!(
            m.target_name(),
            "aperture-edge-qemu-x86_64-1.1.0.stable.bundle"
        );
        assert!(ReleaseMeta::from_custom(&std::collections::HashMap::new()).is_none());
    }

    #[test]
    fn malformed_or_unknown_fields_and_falling_waves_are_errors() {
        let mut v = meta().to_value();
        v["surprise"] = true.into();
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.into(), v);
        let e = ReleaseMeta::from_custom(&custom).unwrap().unwrap_err();
        assert!(e.contains("surprise"), "{e}");
        let mut v = meta().to_value();
        v["waves"] = serde_json::json!([{"percent": 50, "after_secs": 10}, {"percent": 20, "after_secs": 20}]);
        custom.insert(CUSTOM_KEY.into(), v);
        let e = ReleaseMeta::from_custom(&custom).unwrap().unwrap_err();
        assert!(e.contains("20%"), "{e}");
    }

    #[test]
    fn a_gate_is_written_only_when_there_is_one() {
        let plain = meta().to_value();
        assert!(plain.get("gate").is_none(), "{plain}");
        let gated = ReleaseMeta {
            gate: Gate::Rollout,
            ..meta()
        };
        let v = gated.to_value();
        assert_eq!(v["gate"], "rollout");
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.into(), v);
        assert_eq!(ReleaseMeta::from_custom(&custom).unwrap().unwrap(), gated);
    }

    #[test]
    fn channel_names_are_path_safe() {
        assert!(ReleaseMeta::valid_channel("stable"));
        assert!(ReleaseMeta::valid_channel("beta-2_x"));
        for bad in ["", "../x", "Stable", "a/b", "a b", &"x".repeat(65)] {
            assert!(!ReleaseMeta::valid_channel(bad), "{bad}");
        }
    }
}
