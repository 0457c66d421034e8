//! The custom metadata of a delta target: the bundle that updates an appliance running one
//! release (`from`, named by its rootfs's dm-verity root hash) to another (`version`). It sits
//! beside the release's full target under its own key, [`DELTA_KEY`], so a device that knows
//! nothing of deltas never takes one for a release. A device picks a delta only for the
//! release [`crate::select()`] chose, and only when it booted exactly the delta's base; it
//! falls back to the full target when the delta fails.

use serde::{Deserialize, Serialize};

/// The key of [`DeltaMeta`] inside a target's `custom` object.
pub const DELTA_KEY: &str = "aperture-delta";

/// What a device needs to know of a published delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaMeta {
    /// Product name, as in the bundle's manifest.
    pub product: String,
    /// Board, as in the bundle's manifest.
    pub board: String,
    /// The release it installs.
    pub version: semver::Version,
    /// The channel of that release.
    pub channel: String,
    /// The release it updates from.
    pub from: semver::Version,
    /// The dm-verity root hash of that release's rootfs: what a device running it booted with.
    pub from_root_hash: String,
}

impl DeltaMeta {
    /// The target name: the release's, with the base version before the suffix.
    pub fn target_name(&self) -> String {
        format!(
            "{}-{}-{}.{}.from-{}.bundle",
            self.product, self.board, self.version, self.channel, self.from
        )
    }

    /// Read from a target's `custom` object: `None` when the target is not a delta.
    pub fn from_custom<S: std::hash::BuildHasher>(
        custom: &std::collections::HashMap<String, serde_json::Value, S>,
    ) -> Option<Result<Self, String>> {
        let value = custom.get(DELTA_KEY)?;
        Some(serde_json::from_value::<DeltaMeta>(value.clone()).map_err(|e| e.to_string()))
    }

    /// As the value to store under [`DELTA_KEY`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("DeltaMeta serialises")
    }

    /// Whether this delta installs `release` (product, board, version and channel) on a device
    /// booted with the rootfs root hash `running_root`.
    pub fn serves(&self, release: &crate::ReleaseMeta, running_root: &str) -> bool {
        self.product == release.product
            && self.board == release.board
            && self.version == release.version
            && self.channel == release.channel
            && self.from_root_hash == running_root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_round_trips_names_its_target_and_serves_only_its_base() {
        let d = DeltaMeta {
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            version: "1.1.0".parse().unwrap(),
            channel: "stable".into(),
            from: "1.0.0".parse().unwrap(),
            from_root_hash: "ab12".into(),
        };
        let mut custom = std::collections::HashMap::new();
        custom.insert(DELTA_KEY.into(), d.to_value());
        assert_eq!(DeltaMeta::from_custom(&custom).unwrap().unwrap(), d);
        assert_eq!(
            d.target_name(),
            "aperture-edge-qemu-x86_64-1.1.0.stable.from-1.0.0.bundle"
        );
        let release = crate::ReleaseMeta {
            product: d.product.clone(),
            board: d.board.clone(),
            version: d.version.clone(),
            security_version: 1,
            channel: "stable".into(),
            published_at: 0,
            waves: Default::default(),
            halted: false,
            gate: Default::default(),
        };
        assert!(d.serves(&release, "ab12"));
        assert!(!d.serves(&release, "cd34"));
        let other = crate::ReleaseMeta {
            channel: "beta".into(),
            ..release
        };
        assert!(!d.serves(&other, "ab12"));
        let mut v = d.to_value();
        v["surprise"] = true.into();
        custom.insert(DELTA_KEY.into(), v);
        assert!(DeltaMeta::from_custom(&custom).unwrap().is_err());
    }
}
