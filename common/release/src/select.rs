//! What an appliance installs, and when: the pure rules of the update loop. Given the
//! releases a verified TUF refresh found, the device's own facts and the time, pick the newest
//! release that is for this product, board and channel, newer than the running version, not
//! below the anti-rollback floor, not halted, and whose wave has reached this device's seed;
//! then, where the fleet server signed a rollout of that release, only if the rollout is
//! active, names the device, does not pin it, and its own wave has reached it too (a rollout
//! narrows what the release allows, never widens it: see [`crate::rollout`]). A release gated
//! on a rollout is installed through one only. Every release passed over gets a [`Skip`]
//! reason, for the journal's one line.

use std::fmt;

use crate::meta::ReleaseMeta;
use crate::rollout::{Gate, Rollout, RolloutMeta, State};

/// The device's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Product of the running image.
    pub product: String,
    /// Board.
    pub board: String,
    /// Channel the device follows.
    pub channel: String,
    /// Running version.
    pub version: semver::Version,
    /// Anti-rollback floor: the lowest security version the device accepts.
    pub floor: u64,
    /// The per-device wave seed, in `0..SEED_RANGE`.
    pub seed: u32,
    /// The device's fleet id, once it has enrolled with a fleet server (rollouts name
    /// devices by it).
    pub fleet_id: Option<String>,
}

/// A release the repository lists: its target name and its signed metadata (or why the
/// metadata could not be read).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The TUF target name.
    pub name: String,
    /// Its custom metadata.
    pub meta: Result<ReleaseMeta, String>,
}

/// Why a release was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skip {
    /// Its custom metadata is malformed.
    Malformed(String),
    /// Another product.
    OtherProduct,
    /// Another board.
    OtherBoard,
    /// Another channel.
    OtherChannel,
    /// Not newer than the running version.
    NotNewer,
    /// Its security version is below the device's floor.
    BelowFloor {
        /// The release's security version.
        security_version: u64,
    },
    /// Its rollout is halted.
    Halted,
    /// No wave of its schedule reaches this device's seed.
    NoWave,
    /// Its wave reaches this device later.
    WaveLater {
        /// When (seconds since the Unix epoch).
        at: u64,
    },
    /// A newer eligible release was chosen.
    Superseded,
    /// Gated on a rollout, and the fleet has signed none for it.
    NoRollout,
    /// Its rollout is not active.
    RolloutStopped(State),
    /// Its rollout does not name this device.
    NotInRollout,
    /// Its rollout pins this device where it is.
    Pinned,
    /// Its rollout's metadata is malformed (the release is then not installed: a rollout can
    /// only hold a release back, so an unreadable one holds it back).
    RolloutMalformed(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Malformed(e) => write!(f, "malformed release metadata ({e})"),
            Skip::OtherProduct => f.write_str("another product"),
            Skip::OtherBoard => f.write_str("another board"),
            Skip::OtherChannel => f.write_str("another channel"),
            Skip::NotNewer => f.write_str("not newer than the running version"),
            Skip::BelowFloor { security_version } => {
                write!(f, "security version {security_version} below the floor")
            }
            Skip::Halted => f.write_str("rollout halted"),
            Skip::NoWave => f.write_str("no wave reaches this device"),
            Skip::WaveLater { at } => write!(f, "its wave reaches this device at {at}"),
            Skip::Superseded => f.write_str("a newer release is eligible"),
            Skip::NoRollout => f.write_str("waiting for the fleet to start its rollout"),
            Skip::RolloutStopped(state) => write!(f, "its fleet rollout is {state}"),
            Skip::NotInRollout => f.write_str("its fleet rollout does not include this device"),
            Skip::Pinned => f.write_str("this device is pinned by its fleet rollout"),
            Skip::RolloutMalformed(e) => write!(f, "malformed rollout metadata ({e})"),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The release to install now, if any: (target name, metadata).
    pub install: Option<(String, ReleaseMeta)>,
    /// The earliest time a release for this device that is newer than `install` (or than the
    /// running version) becomes eligible, if one is waiting for its wave.
    pub next_eligible: Option<u64>,
    /// Every other release and why it was passed over, in the repository's order.
    pub skipped: Vec<(String, Skip)>,
}

impl Decision {
    /// One line for the journal: what was found and why it is or is not installed.
    pub fn summary(&self, device: &Device) -> String {
        let mut line = match &self.install {
            Some((name, m)) => format!("installing {} ({name}) over {}", m.version, device.version),
            None => format!("nothing to install over {}", device.version),
        };
        if let Some(at) = self.next_eligible {
            line.push_str(&format!("; next eligible at {at}"));
        }
        let mine: Vec<String> = self
            .skipped
            .iter()
            .filter(|(_, s)| {
                !matches!(
                    s,
                    Skip::OtherProduct | Skip::OtherBoard | Skip::OtherChannel
                )
            })
            .map(|(n, s)| format!("{n}: {s}"))
            .collect();
        let others = self.skipped.len() - mine.len();
        if !mine.is_empty() {
            line.push_str(&format!("; passed over {}", mine.join(", ")));
        }
        if others > 0 {
            line.push_str(&format!(
                "; {others} for other products, boards or channels"
            ));
        }
        line
    }
}

/// The rollout the fleet signed for `release`, by its target name: `None` when there is none,
/// an error when one is there but unreadable or names another release than its name says.
fn rollout_of<'a>(
    rollouts: &'a [Rollout],
    release: &ReleaseMeta,
) -> Option<Result<&'a RolloutMeta, String>> {
    let name = RolloutMeta::target_name_for(&release.channel, &release.version);
    let r = rollouts.iter().find(|r| r.name == name)?;
    Some(match &r.meta {
        Err(e) => Err(e.clone()),
        Ok(m) if m.target_name() != name => Err(format!(
            "target {name} holds the rollout of {} on {}",
            m.version, m.channel
        )),
        Ok(m) => Ok(m),
    })
}

/// Choose what `device` installs at time `now` among `candidates`, under the fleet's
/// `rollouts` (empty when the repository has no rollouts role).
pub fn select(
    candidates: &[Candidate],
    rollouts: &[Rollout],
    device: &Device,
    now: u64,
) -> Decision {
    let mut skipped = Vec::new();
    let mut eligible: Vec<(String, ReleaseMeta)> = Vec::new();
    let mut waiting: Vec<(semver::Version, u64)> = Vec::new();
    for c in candidates {
        let m = match &c.meta {
            Ok(m) => m,
            Err(e) => {
                skipped.push((c.name.clone(), Skip::Malformed(e.clone())));
                continue;
            }
        };
        let skip = if m.product != device.product {
            Some(Skip::OtherProduct)
        } else if m.board != device.board {
            Some(Skip::OtherBoard)
        } else if m.channel != device.channel {
            Some(Skip::OtherChannel)
        } else if m.version <= device.version {
            Some(Skip::NotNewer)
        } else if m.security_version < device.floor {
            Some(Skip::BelowFloor {
                security_version: m.security_version,
            })
        } else if m.halted {
            Some(Skip::Halted)
        } else {
            match wave_time(m, rollout_of(rollouts, m), device) {
                Err(skip) => Some(skip),
                Ok(at) if at > now => {
                    waiting.push((m.version.clone(), at));
                    Some(Skip::WaveLater { at })
                }
                Ok(_) => None,
            }
        };
        match skip {
            Some(s) => skipped.push((c.name.clone(), s)),
            None => eligible.push((c.name.clone(), m.clone())),
        }
    }
    eligible.sort_by(|a, b| a.1.version.cmp(&b.1.version));
    let install = eligible.pop();
    for (name, _) in eligible {
        skipped.push((name, Skip::Superseded));
    }
    let floor_version = install
        .as_ref()
        .map(|(_, m)| m.version.clone())
        .unwrap_or_else(|| device.version.clone());
    let next_eligible = waiting
        .iter()
        .filter(|(v, _)| *v > floor_version)
        .map(|(_, at)| *at)
        .min();
    Decision {
        install,
        next_eligible,
        skipped,
    }
}

/// When `device` may install release `m` under its rollout (if any): the later of the
/// release's wave and the rollout's, or why never.
fn wave_time(
    m: &ReleaseMeta,
    rollout: Option<Result<&RolloutMeta, String>>,
    device: &Device,
) -> Result<u64, Skip> {
    let release_at = m
        .waves
        .offset_for_seed(device.seed)
        .map(|offset| m.published_at.saturating_add(offset))
        .ok_or(Skip::NoWave)?;
    let r = match rollout {
        None if m.gate == Gate::Rollout => return Err(Skip::NoRollout),
        None => return Ok(release_at),
        Some(Err(e)) => return Err(Skip::RolloutMalformed(e)),
        Some(Ok(r)) => r,
    };
    let id = device.fleet_id.as_deref();
    if r.state != State::Active {
        return Err(Skip::RolloutStopped(r.state));
    }
    if r.pins(id) {
        return Err(Skip::Pinned);
    }
    if !r.names(id) {
        return Err(Skip::NotInRollout);
    }
    let rollout_at = r
        .waves
        .offset_for_seed(device.seed)
        .map(|offset| r.started_at.saturating_add(offset))
        .ok_or(Skip::NoWave)?;
    Ok(release_at.max(rollout_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Selection;
    use crate::waves::Waves;

    const T0: u64 = 1_800_000_000;

    fn device(seed: u32) -> Device {
        Device {
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            channel: "stable".into(),
            version: "1.0.0".parse().unwrap(),
            floor: 1,
            seed,
            fleet_id: Some(format!("dev-{seed}")),
        }
    }

    fn release(version: &str, waves: &str) -> ReleaseMeta {
        ReleaseMeta {
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            version: version.parse().unwrap(),
            security_version: 1,
            channel: "stable".into(),
            published_at: T0,
            waves: waves.parse::<Waves>().unwrap(),
            halted: false,
            gate: Gate::None,
        }
    }

    fn cands(ms: Vec<ReleaseMeta>) -> Vec<Candidate> {
        ms.into_iter()
            .map(|m| Candidate {
                name: m.target_name(),
                meta: Ok(m),
            })
            .collect()
    }

    fn installed(d: &Decision) -> Option<String> {
        d.install.as_ref().map(|(_, m)| m.version.to_string())
    }

    #[test]
    fn the_newest_eligible_release_wins_and_older_ones_are_superseded() {
        let c = cands(vec![
            release("1.1.0", "all"),
            release("1.2.0", "all"),
            release("0.9.0", "all"),
        ]);
        let d = select(&c, &[], &device(5), T0);
        assert_eq!(installed(&d).as_deref(), Some("1.2.0"));
        assert!(d.skipped.contains(&(c[0].name.clone(), Skip::Superseded)));
        assert!(d.skipped.contains(&(c[2].name.clone(), Skip::NotNewer)));
        let line = d.summary(&device(5));
        assert!(line.starts_with("installing 1.2.0"), "{line}");
    }

    #[test]
    fn a_device_becomes_eligible_exactly_when_its_wave_starts() {
        let c = cands(vec![release("1.1.0", "1%@0h,10%@4h,50%@24h,100%@48h")]);
        // Seed 100 is in the second wave (21..205): eligible at T0 + 4 h, not a second before.
        let before = select(&c, &[], &device(100), T0 + 4 * 3600 - 1);
        assert_eq!(installed(&before), None);
        assert_eq!(before.next_eligible, Some(T0 + 4 * 3600));
        assert_eq!(before.skipped[0].1, Skip::WaveLater { at: T0 + 4 * 3600 });
        let at = select(&c, &[], &device(100), T0 + 4 * 3600);
        assert_eq!(installed(&at).as_deref(), Some("1.1.0"));
        assert_eq!(at.next_eligible, None);
        // Seed 20 in the first wave at once; seed 2047 only after 48 h.
        assert!(select(&c, &[], &device(20), T0).install.is_some());
        assert!(select(&c, &[], &device(2047), T0 + 48 * 3600 - 1)
            .install
            .is_none());
        assert!(select(&c, &[], &device(2047), T0 + 48 * 3600)
            .install
            .is_some());
    }

    #[test]
    fn an_older_eligible_release_is_installed_while_a_newer_one_waits_for_its_wave() {
        let mut newer = release("1.2.0", "100%@1d");
        newer.published_at = T0 + 10;
        let c = cands(vec![release("1.1.0", "all"), newer]);
        let d = select(&c, &[], &device(7), T0 + 100);
        assert_eq!(installed(&d).as_deref(), Some("1.1.0"));
        assert_eq!(d.next_eligible, Some(T0 + 10 + 86_400));
    }

    #[test]
    fn halted_other_channel_board_product_and_below_floor_are_never_installed() {
        let mut halted = release("1.5.0", "all");
        halted.halted = true;
        let mut beta = release("1.4.0", "all");
        beta.channel = "beta".into();
        let mut xavier = release("1.3.0", "all");
        xavier.board = "jetson-xavier-nx".into();
        let mut other = release("1.2.0", "all");
        other.product = "another".into();
        let mut old_security = release("1.1.0", "all");
        old_security.security_version = 0;
        let c = cands(vec![halted, beta, xavier, other, old_security]);
        let d = select(&c, &[], &device(0), T0 + 1_000_000);
        assert_eq!(d.install, None);
        let reasons: Vec<&Skip> = d.skipped.iter().map(|(_, s)| s).collect();
        assert_eq!(
            reasons,
            vec![
                &Skip::Halted,
                &Skip::OtherChannel,
                &Skip::OtherBoard,
                &Skip::OtherProduct,
                &Skip::BelowFloor {
                    security_version: 0
                }
            ]
        );
        let line = d.summary(&device(0));
        assert!(
            line.contains("rollout halted") && line.contains("below the floor"),
            "{line}"
        );
        assert!(
            line.contains("3 for other products, boards or channels"),
            "{line}"
        );
    }

    #[test]
    fn a_seed_past_a_partial_schedule_and_malformed_metadata_are_passed_over() {
        let mut c = cands(vec![release("1.1.0", "10%@0h")]);
        c.push(Candidate {
            name: "stable/broken.bundle".into(),
            meta: Err("missing field `board`".into()),
        });
        let d = select(&c, &[], &device(1500), T0 + 1_000_000);
        assert_eq!(d.install, None);
        assert_eq!(d.skipped[0].1, Skip::NoWave);
        assert!(matches!(d.skipped[1].1, Skip::Malformed(_)));
        // A device in the 10 % gets it.
        assert!(select(&c, &[], &device(10), T0).install.is_some());
    }

    #[test]
    fn the_same_version_is_not_reinstalled_and_a_prerelease_is_older_than_its_release() {
        let c = cands(vec![release("1.0.0", "all"), release("1.0.0-rc.1", "all")]);
        let d = select(&c, &[], &device(0), T0);
        assert_eq!(d.install, None);
        assert!(d.skipped.iter().all(|(_, s)| *s == Skip::NotNewer));
    }

    fn rollout(version: &str, state: State, devices: Selection, waves: &str) -> Rollout {
        let meta = RolloutMeta {
            id: 1,
            channel: "stable".into(),
            version: version.parse().unwrap(),
            state,
            started_at: T0 + 100,
            waves: waves.parse().unwrap(),
            devices,
            pinned: vec!["dev-9".into()],
        };
        Rollout {
            name: meta.target_name(),
            meta: Ok(meta),
        }
    }

    fn gated(version: &str) -> ReleaseMeta {
        ReleaseMeta {
            gate: Gate::Rollout,
            ..release(version, "all")
        }
    }

    fn ids(list: &[&str]) -> Selection {
        Selection::Devices(list.iter().map(|s| s.to_string()).collect())
    }

    fn why(d: &Decision) -> Skip {
        assert_eq!(d.install, None, "{d:?}");
        d.skipped[0].1.clone()
    }

    #[test]
    fn a_gated_release_is_installed_only_through_an_active_rollout_naming_the_device() {
        let c = cands(vec![gated("1.1.0")]);
        let late = T0 + 1_000_000;
        assert_eq!(why(&select(&c, &[], &device(1), late)), Skip::NoRollout);
        let named = [rollout(
            "1.1.0",
            State::Active,
            ids(&["dev-1", "dev-9"]),
            "all",
        )];
        assert!(select(&c, &named, &device(1), late).install.is_some());
        assert_eq!(
            why(&select(&c, &named, &device(2), late)),
            Skip::NotInRollout
        );
        // Pinned wins over being named; an unenrolled device is named by no list.
        assert_eq!(why(&select(&c, &named, &device(9), late)), Skip::Pinned);
        let mut unenrolled = device(1);
        unenrolled.fleet_id = None;
        assert_eq!(
            why(&select(&c, &named, &unenrolled, late)),
            Skip::NotInRollout
        );
        let everyone = [rollout("1.1.0", State::Active, Selection::All, "all")];
        assert!(select(&c, &everyone, &unenrolled, late).install.is_some());
        for state in [State::Paused, State::Halted, State::Cancelled] {
            let stopped = [rollout("1.1.0", state, Selection::All, "all")];
            let d = select(&c, &stopped, &device(1), late);
            assert_eq!(why(&d), Skip::RolloutStopped(state));
            assert!(d
                .summary(&device(1))
                .contains(&format!("rollout is {state}")));
        }
        // A rollout of another version does not open this one.
        let other = [rollout("1.2.0", State::Active, Selection::All, "all")];
        assert_eq!(why(&select(&c, &other, &device(1), late)), Skip::NoRollout);
    }

    #[test]
    fn a_rollout_only_narrows_what_the_release_allows() {
        // It halts or pauses an ungated release too.
        let c = cands(vec![release("1.1.0", "all")]);
        let halted = [rollout("1.1.0", State::Halted, Selection::All, "all")];
        assert_eq!(
            why(&select(&c, &halted, &device(1), T0 + 1000)),
            Skip::RolloutStopped(State::Halted)
        );
        // It cannot resume a release the offline key halted.
        let mut offline_halted = gated("1.1.0");
        offline_halted.halted = true;
        let c = cands(vec![offline_halted]);
        let active = [rollout("1.1.0", State::Active, Selection::All, "all")];
        assert_eq!(
            why(&select(&c, &active, &device(1), T0 + 1000)),
            Skip::Halted
        );
        // Nor bring a release below the floor or of another channel to a device.
        let mut low = gated("1.1.0");
        low.security_version = 0;
        let c = cands(vec![low]);
        assert!(matches!(
            why(&select(&c, &active, &device(1), T0 + 1000)),
            Skip::BelowFloor { .. }
        ));
        // Its waves count after the release's: the later of the two.
        let c = cands(vec![release("1.1.0", "100%@1h")]);
        let slow = [rollout("1.1.0", State::Active, Selection::All, "100%@2h")];
        let d = select(&c, &slow, &device(1), T0 + 3600);
        assert_eq!(
            why(&d),
            Skip::WaveLater {
                at: T0 + 100 + 7200
            }
        );
        assert_eq!(d.next_eligible, Some(T0 + 100 + 7200));
        let fast = [rollout("1.1.0", State::Active, Selection::All, "all")];
        let d = select(&c, &fast, &device(1), T0 + 200);
        assert_eq!(why(&d), Skip::WaveLater { at: T0 + 3600 });
        assert!(select(&c, &fast, &device(1), T0 + 3600).install.is_some());
        // A rollout whose last wave leaves this seed out.
        let part = [rollout("1.1.0", State::Active, Selection::All, "1%@0h")];
        assert_eq!(
            why(&select(&c, &part, &device(2000), T0 + 9999)),
            Skip::NoWave
        );
    }

    #[test]
    fn an_unreadable_rollout_holds_its_release_back() {
        let c = cands(vec![release("1.1.0", "all")]);
        let broken = [Rollout {
            name: RolloutMeta::target_name_for("stable", &"1.1.0".parse().unwrap()),
            meta: Err("unknown field `surprise`".into()),
        }];
        assert!(matches!(
            why(&select(&c, &broken, &device(1), T0)),
            Skip::RolloutMalformed(_)
        ));
        // A rollout stored under this release's name but naming another release.
        let mut wrong = rollout("1.2.0", State::Active, Selection::All, "all");
        wrong.name = RolloutMeta::target_name_for("stable", &"1.1.0".parse().unwrap());
        match why(&select(&c, &[wrong], &device(1), T0)) {
            Skip::RolloutMalformed(e) => assert!(e.contains("1.2.0"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
