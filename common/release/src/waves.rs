//! Staged rollouts: a schedule of waves, each a share of the fleet and the time after
//! publication at which that share may install, as Bottlerocket's updog reads its repository's
//! waves. Each appliance draws a seed in `0..SEED_RANGE` once, at first boot; the schedule,
//! signed in the release's target metadata, maps seeds to times:
//!
//! | wave | share | after | seeds |
//! |------|-------|-------|-------|
//! | 1 | 1 % | 0 h | `0..21` |
//! | 2 | 10 % | 4 h | `21..205` |
//! | 3 | 50 % | 24 h | `205..1024` |
//! | 4 | 100 % | 48 h | `1024..2048` |
//!
//! A wave's seeds are those below `ceil(share * SEED_RANGE / 100)` and not in an earlier wave;
//! a device becomes eligible at the start of its wave (not spread within it: the poll jitter
//! spreads the requests). A schedule whose last wave is below 100 % leaves the other devices
//! out of the release until it is republished with more.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Seeds are drawn uniformly in `0..SEED_RANGE` (Bottlerocket's `MAX_SEED` + 1).
pub const SEED_RANGE: u32 = 2048;

/// One wave: `percent` of the fleet may install `after_secs` after publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Cumulative share of the fleet, 1..=100.
    pub percent: u8,
    /// Seconds after the release's publication.
    pub after_secs: u64,
}

impl Wave {
    /// The first seed past this wave: seeds below it are in this wave or an earlier one.
    pub fn seed_bound(&self) -> u32 {
        (u32::from(self.percent) * SEED_RANGE).div_ceil(100)
    }
}

/// A wave schedule: shares strictly rising, times strictly rising. An empty schedule means
/// every device at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Waves(Vec<Wave>);

/// A wave schedule that cannot be used, naming the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WavesError {
    /// A part is not `PERCENT%@DURATION`.
    #[error(
        "wave `{part}` is not PERCENT%@DURATION (for example `10%@4h`; durations in s, m, h or d)"
    )]
    Syntax {
        /// The part.
        part: String,
    },
    /// A share outside 1..=100.
    #[error("wave `{part}`: the share must be 1 to 100 percent")]
    Percent {
        /// The part.
        part: String,
    },
    /// Shares or times that do not rise from one wave to the next.
    #[error("wave `{part}` must reach more of the fleet ({percent}% after {after}) than the wave before it, and later")]
    NotRising {
        /// The part.
        part: String,
        /// The previous wave's share.
        percent: u8,
        /// The previous wave's time, as written.
        after: String,
    },
}

impl Waves {
    /// Every device at once.
    pub fn all_at_once() -> Self {
        Waves(Vec::new())
    }

    /// Build from waves, checking that they rise.
    pub fn new(waves: Vec<Wave>) -> Result<Self, WavesError> {
        for pair in waves.windows(2) {
            if pair[1].percent <= pair[0].percent || pair[1].after_secs <= pair[0].after_secs {
                return Err(WavesError::NotRising {
                    part: format_wave(&pair[1]),
                    percent: pair[0].percent,
                    after: duration(pair[0].after_secs),
                });
            }
        }
        for w in &waves {
            if w.percent == 0 || w.percent > 100 {
                return Err(WavesError::Percent {
                    part: format_wave(w),
                });
            }
        }
        Ok(Waves(waves))
    }

    /// The waves, in order.
    pub fn waves(&self) -> &[Wave] {
        &self.0
    }

    /// Check a schedule read from (signed) metadata: the same rules as [`Waves::new`].
    pub fn validate(&self) -> Result<(), WavesError> {
        Waves::new(self.0.clone()).map(|_| ())
    }

    /// Seconds after publication at which a device with `seed` may install, or `None` when
    /// no wave reaches it. Seeds at or past [`SEED_RANGE`] are taken modulo it.
    pub fn offset_for_seed(&self, seed: u32) -> Option<u64> {
        if self.0.is_empty() {
            return Some(0);
        }
        let seed = seed % SEED_RANGE;
        self.0
            .iter()
            .find(|w| seed < w.seed_bound())
            .map(|w| w.after_secs)
    }
}

fn parse_duration(text: &str) -> Option<u64> {
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn duration(secs: u64) -> String {
    match secs {
        0 => "0h".into(),
        s if s % 86_400 == 0 && s >= 172_800 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn format_wave(w: &Wave) -> String {
    format!("{}%@{}", w.percent, duration(w.after_secs))
}

impl FromStr for Waves {
    type Err = WavesError;

    fn from_str(text: &str) -> Result<Self, WavesError> {
        let text = text.trim();
        if text.is_empty() || text == "all" {
            return Ok(Waves::all_at_once());
        }
        let mut waves = Vec::new();
        for part in text.split(',').map(str::trim) {
            let syntax = || WavesError::Syntax { part: part.into() };
            let (pct, after) = part.split_once('@').ok_or_else(syntax)?;
            let pct = pct.trim().strip_suffix('%').ok_or_else(syntax)?;
            let percent: u32 = pct.parse().map_err(|_| syntax())?;
            let percent = u8::try_from(percent)
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| WavesError::Percent { part: part.into() })?;
            let after_secs = parse_duration(after.trim()).ok_or_else(syntax)?;
            waves.push(Wave {
                percent,
                after_secs,
            });
        }
        Waves::new(waves)
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("all");
        }
        let parts: Vec<String> = self.0.iter().map(format_wave).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_s_schedule_parses_and_prints_back() {
        let w: Waves = "1%@0h,10%@4h,50%@24h,100%@48h".parse().unwrap();
        assert_eq!(w.waves().len(), 4);
        assert_eq!(
            w.waves()[1],
            Wave {
                percent: 10,
                after_secs: 4 * 3600
            }
        );
        assert_eq!(w.to_string(), "1%@0h,10%@4h,50%@24h,100%@2d");
        assert_eq!(w.to_string().parse::<Waves>().unwrap(), w);
    }

    #[test]
    fn each_seed_becomes_eligible_at_the_start_of_its_wave_and_no_other_time() {
        let w: Waves = "1%@0h,10%@4h,50%@24h,100%@48h".parse().unwrap();
        // ceil(1 * 2048 / 100) = 21, ceil(10 * 2048 / 100) = 205, 1024, 2048.
        let expect = |seed: u32| match seed {
            0..=20 => 0,
            21..=204 => 4 * 3600,
            205..=1023 => 24 * 3600,
            _ => 48 * 3600,
        };
        for seed in 0..SEED_RANGE {
            assert_eq!(w.offset_for_seed(seed), Some(expect(seed)), "seed {seed}");
        }
        // The shares come out as written.
        let in_first = (0..SEED_RANGE)
            .filter(|s| w.offset_for_seed(*s) == Some(0))
            .count();
        assert_eq!(in_first, 21);
    }

    #[test]
    fn a_schedule_short_of_100_percent_leaves_the_rest_out() {
        let w: Waves = "5%@0h,25%@1d".parse().unwrap();
        assert_eq!(w.offset_for_seed(0), Some(0));
        assert_eq!(w.offset_for_seed(511), Some(86_400));
        assert_eq!(w.offset_for_seed(512), None);
        assert_eq!(w.offset_for_seed(2047), None);
    }

    #[test]
    fn no_schedule_means_everyone_at_once() {
        for text in ["", "all"] {
            let w: Waves = text.parse().unwrap();
            assert_eq!(w.offset_for_seed(2047), Some(0));
            assert_eq!(w.to_string(), "all");
        }
    }

    #[test]
    fn bad_schedules_name_the_part_at_fault() {
        let cases = [
            ("10%@4h,5%@8h", "`5%@8h`"),
            ("10%@4h,20%@4h", "`20%@4h`"),
            ("0%@0h", "`0%@0h`"),
            ("150%@0h", "`150%@0h`"),
            ("10@4h", "`10@4h`"),
            ("10%@4w", "`10%@4w`"),
            ("10%", "`10%`"),
        ];
        for (text, part) in cases {
            let e = text.parse::<Waves>().unwrap_err().to_string();
            assert!(e.contains(part), "{text}: {e}");
        }
    }
}
