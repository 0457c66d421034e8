//! Rollouts as the fleet server signs them. The offline targets key signs releases
//! ([`ReleaseMeta`](crate::ReleaseMeta)); the fleet server, which must halt a rollout the
//! moment devices fail and so cannot wait for an offline key, holds the key of one delegated
//! role, [`ROLE`], limited by the delegation to target names under [`PATH_PREFIX`]. Each of
//! its targets is one rollout, [`RolloutMeta`] in its `custom` object under [`CUSTOM_KEY`]:
//! which release (channel and version), its state, which devices, its own waves and the
//! devices pinned where they are.
//!
//! What that key can do is bounded by the rules in [`select`](crate::select()): a rollout only
//! ever *narrows* what the release's own signed metadata allows. It cannot name a release
//! (devices take releases from the top-level targets role only), change one, or make one newer
//! than the device's floor allows; its waves count in addition to the release's (a device
//! waits for the later of the two), so it can slow a release down or stop it, never hurry it.
//! A release published with [`Gate::Rollout`] is installed only through an active rollout
//! that names the device: publishing it reaches nobody until an administrator starts one.
//! A stolen server key can therefore halt or pause updates (denial of service, which a
//! compromised server could cause anyway by not serving), and start the rollout of a release
//! the offline keys signed, to devices of the release's channel, at the release's own pace.

use serde::{Deserialize, Serialize};

use crate::waves::Waves;

/// The delegated role the fleet server signs.
pub const ROLE: &str = "rollouts";

/// Every rollout target's name starts with this (the delegation's path pattern is
/// `rollouts/*`).
pub const PATH_PREFIX: &str = "rollouts/";

/// The key of [`RolloutMeta`] inside a rollout target's `custom` object.
pub const CUSTOM_KEY: &str = "aperture-rollout";

/// The most devices one rollout may name: the rollouts role's metadata stays well inside the
/// device's size limit for targets metadata (8 MiB) with several rollouts.
pub const MAX_DEVICES: usize = 50_000;

/// Whether a release waits for a rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// Devices of its channel install it by its own waves (a rollout, if one exists, can
    /// still pause or halt it).
    #[default]
    None,
    /// Only devices an active rollout names install it.
    Rollout,
}

impl Gate {
    /// True for the default, which is left out of the metadata (so that releases without a
    /// gate stay readable by devices older than gates, and gated ones are not: an older
    /// device refuses metadata with a field it does not know, so it never installs a release
    /// whose gate it cannot honour).
    pub fn is_none(&self) -> bool {
        *self == Gate::None
    }
}

/// A rollout's state, as the server last signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Devices it names install the release when their wave comes.
    Active,
    /// Stopped by an administrator; may be resumed.
    Paused,
    /// Stopped by its failure policy (or an administrator); may be resumed.
    Halted,
    /// Ended for good.
    Cancelled,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Active => "active",
            State::Paused => "paused",
            State::Halted => "halted",
            State::Cancelled => "cancelled",
        })
    }
}

/// Which devices a rollout names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Selection {
    /// Every device of the release's channel.
    All,
    /// These fleet device ids (the server resolves tags and lists into ids).
    Devices(Vec<String>),
}

/// One rollout: the signed custom metadata of a target of the rollouts role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutMeta {
    /// The server's id of the rollout (devices report against it).
    pub id: u64,
    /// The release's channel.
    pub channel: String,
    /// The release's version.
    pub version: semver::Version,
    /// Its state.
    pub state: State,
    /// When it started, seconds since the Unix epoch: its waves count from it.
    pub started_at: u64,
    /// Its waves, in addition to the release's.
    #[serde(default)]
    pub waves: Waves,
    /// The devices it names.
    pub devices: Selection,
    /// Devices pinned where they are: never moved by this rollout.
    #[serde(default)]
    pub pinned: Vec<String>,
}

impl RolloutMeta {
    /// The target name of the rollout of `version` on `channel`: one per release, so that a
    /// new state replaces the old.
    pub fn target_name_for(channel: &str, version: &semver::Version) -> String {
        format!("{PATH_PREFIX}{channel}/{version}.json")
    }

    /// This rollout's target name.
    pub fn target_name(&self) -> String {
        Self::target_name_for(&self.channel, &self.version)
    }

    /// Read from a target's `custom` object: `None` when the target holds no rollout, an
    /// error when it claims to and is malformed (unknown fields, bad waves, too many devices,
    /// a channel that is not path-safe).
    pub fn from_custom<S: std::hash::BuildHasher>(
        custom: &std::collections::HashMap<String, serde_json::Value, S>,
    ) -> Option<Result<Self, String>> {
        let value = custom.get(CUSTOM_KEY)?;
        Some(
            serde_json::from_value::<RolloutMeta>(value.clone())
                .map_err(|e| e.to_string())
                .and_then(|m| m.validate().map(|()| m)),
        )
    }

    /// The checks every reader and writer applies.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::ReleaseMeta::valid_channel(&self.channel) {
            return Err(format!("channel `{}` is not path-safe", self.channel));
        }
        self.waves.validate().map_err(|e| e.to_string())?;
        let named = match &self.devices {
            Selection::All => 0,
            Selection::Devices(d) => d.len(),
        };
        if named + self.pinned.len() > MAX_DEVICES {
            return Err(format!(
                "{} devices named or pinned, more than the {MAX_DEVICES} a rollout may hold",
                named + self.pinned.len()
            ));
        }
        Ok(())
    }

    /// As the value to store under [`CUSTOM_KEY`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("RolloutMeta serialises")
    }

    /// Whether the rollout names `device` (a fleet id; `None` for a device not enrolled).
    pub fn names(&self, device: Option<&str>) -> bool {
        match (&self.devices, device) {
            (Selection::All, _) => true,
            (Selection::Devices(ids), Some(id)) => ids.iter().any(|d| d == id),
            (Selection::Devices(_), None) => false,
        }
    }

    /// Whether `device` is pinned.
    pub fn pins(&self, device: Option<&str>) -> bool {
        device.is_some_and(|id| self.pinned.iter().any(|d| d == id))
    }
}

/// A target of the rollouts role: its name and its metadata (or why it could not be read).
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The target name.
    pub name: String,
    /// Its custom metadata.
    pub meta: Result<RolloutMeta, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> RolloutMeta {
        RolloutMeta {
            id: 7,
            channel: "stable".into(),
            version: "1.1.0".parse().unwrap(),
            state: State::Active,
            started_at: 1_800_000_000,
            waves: "10%@0h,100%@1h".parse().unwrap(),
            devices: Selection::Devices(vec!["dev-1".into(), "dev-2".into()]),
            pinned: vec!["dev-2".into()],
        }
    }

    #[test]
    fn round_trips_and_names_its_target_under_the_delegated_path() {
        let r = rollout();
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.into(), r.to_value());
        assert_eq!(RolloutMeta::from_custom(&custom).unwrap().unwrap(), r);
        assert_eq!(r.target_name(), "rollouts/stable/1.1.0.json");
        assert!(r.target_name().starts_with(PATH_PREFIX));
        assert!(RolloutMeta::from_custom(&std::collections::HashMap::new()).is_none());
    }

    #[test]
    fn selection_and_pins_need_the_device_id() {
        let r = rollout();
        assert!(r.names(Some("dev-1")) && r.names(Some("dev-2")));
        assert!(!r.names(Some("dev-3")) && !r.names(None));
        assert!(r.pins(Some("dev-2")) && !r.pins(Some("dev-1")) && !r.pins(None));
        let all = RolloutMeta {
            devices: Selection::All,
            ..rollout()
        };
        assert!(all.names(None) && all.names(Some("dev-9")));
    }

    #[test]
    fn unknown_fields_bad_channels_and_oversized_lists_are_errors() {
        let mut v = rollout().to_value();
        v["surprise"] = true.into();
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.into(), v);
        let e = RolloutMeta::from_custom(&custom).unwrap().unwrap_err();
        assert!(e.contains("surprise"), "{e}");
        let mut bad = rollout();
        bad.channel = "../x".into();
        assert!(bad.validate().unwrap_err().contains("path-safe"));
        let mut big = rollout();
        big.devices = Selection::Devices(vec!["d".into(); MAX_DEVICES]);
        assert!(big.validate().unwrap_err().contains("50000"));
    }
}
