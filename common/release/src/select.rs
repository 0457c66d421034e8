//! What an appliance installs, and when: the pure rules of the update loop. Given the
//! releases a verified TUF refresh found, the device's own facts and the time, pick the newest
//! release that is for this product, board and channel, newer than the running version, not
//! below the anti-rollback floor, not halted, and whose wave has reached this device's seed.
//! Every release passed over gets a [`Skip`] reason, for the journal's one line.

use std::fmt;

use crate::meta::ReleaseMeta;

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

/// Choose what `device` installs at time `now` among `candidates`.
pub fn select(candidates: &[Candidate], device: &Device, now: u64) -> Decision {
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
            match m.waves.offset_for_seed(device.seed) {
                None => Some(Skip::NoWave),
                Some(offset) => {
                    let at = m.published_at.saturating_add(offset);
                    if at > now {
                        waiting.push((m.version.clone(), at));
                        Some(Skip::WaveLater { at })
                    } else {
                        None
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
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
        let d = select(&c, &device(5), T0);
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
        let before = select(&c, &device(100), T0 + 4 * 3600 - 1);
        assert_eq!(installed(&before), None);
        assert_eq!(before.next_eligible, Some(T0 + 4 * 3600));
        assert_eq!(before.skipped[0].1, Skip::WaveLater { at: T0 + 4 * 3600 });
        let at = select(&c, &device(100), T0 + 4 * 3600);
        assert_eq!(installed(&at).as_deref(), Some("1.1.0"));
        assert_eq!(at.next_eligible, None);
        // Seed 20 in the first wave at once; seed 2047 only after 48 h.
        assert!(select(&c, &device(20), T0).install.is_some());
        assert!(select(&c, &device(2047), T0 + 48 * 3600 - 1)
            .install
            .is_none());
        assert!(select(&c, &device(2047), T0 + 48 * 3600).install.is_some());
    }

    #[test]
    fn an_older_eligible_release_is_installed_while_a_newer_one_waits_for_its_wave() {
        let mut newer = release("1.2.0", "100%@1d");
        newer.published_at = T0 + 10;
        let c = cands(vec![release("1.1.0", "all"), newer]);
        let d = select(&c, &device(7), T0 + 100);
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
        let d = select(&c, &device(0), T0 + 1_000_000);
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
        let d = select(&c, &device(1500), T0 + 1_000_000);
        assert_eq!(d.install, None);
        assert_eq!(d.skipped[0].1, Skip::NoWave);
        assert!(matches!(d.skipped[1].1, Skip::Malformed(_)));
        // A device in the 10 % gets it.
        assert!(select(&c, &device(10), T0).install.is_some());
    }

    #[test]
    fn the_same_version_is_not_reinstalled_and_a_prerelease_is_older_than_its_release() {
        let c = cands(vec![release("1.0.0", "all"), release("1.0.0-rc.1", "all")]);
        let d = select(&c, &device(0), T0);
        assert_eq!(d.install, None);
        assert!(d.skipped.iter().all(|(_, s)| *s == Skip::NotNewer));
    }
}
