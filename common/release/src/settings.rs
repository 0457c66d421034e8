//! The update loop's settings, as the image ships them (`/etc/aperture/update.toml`, written by
//! the image builder from the recipe's `[update]` section), and the pure timing rules built on
//! them: when the next poll happens (the interval with a per-device jitter) and when an armed
//! update may reboot (the maintenance window).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::waves::SEED_RANGE;

/// The default poll interval: 15 minutes.
pub const DEFAULT_POLL_SECS: u64 = 15 * 60;
/// The shortest poll interval accepted (a fleet of thousands polling faster is a load test).
pub const MIN_POLL_SECS: u64 = 10;

/// The update loop's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The repository's base URL: `metadata/` and `targets/` are below it.
    pub repository: String,
    /// The channel this appliance follows.
    pub channel: String,
    /// Seconds between polls (each with up to a tenth of jitter).
    #[serde(default = "default_poll")]
    pub poll_interval_secs: u64,
    /// When an installed update may reboot the appliance (UTC); none: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<Window>,
    /// Allow a plain `http://` repository (test networks only; loud in the journal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

fn default_poll() -> u64 {
    DEFAULT_POLL_SECS
}

impl Settings {
    /// Parse and check the settings file's text.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let s: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check()?;
        Ok(s)
    }

    /// The rules a recipe and a settings file must both follow.
    pub fn check(&self) -> Result<(), String> {
        let lower = self.repository.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(format!(
                "repository `{}`: use an https:// URL (the folder that holds metadata/ and \
                 targets/)",
                self.repository
            ));
        }
        if lower.starts_with("http://") && !self.insecure_http {
            return Err(format!(
                "repository `{}` is plain http://, which lets anyone on the network withhold \
                 or replay updates: use https://, or set insecure_http = true (test networks \
                 only)",
                self.repository
            ));
        }
        if !crate::ReleaseMeta::valid_channel(&self.channel) {
            return Err(format!(
                "channel `{}`: use lower-case letters, digits, `-` and `_` (at most 64)",
                self.channel
            ));
        }
        if self.poll_interval_secs < MIN_POLL_SECS {
            return Err(format!(
                "poll_interval_secs = {}: at least {MIN_POLL_SECS}",
                self.poll_interval_secs
            ));
        }
        Ok(())
    }

    /// The settings file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// A daily maintenance window in UTC, `HH:MM-HH:MM` (it may cross midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, minutes after midnight.
    start: u32,
    /// End (exclusive), minutes after midnight.
    end: u32,
}

const DAY: u64 = 24 * 3600;

impl Window {
    /// Whether `now` (seconds since the Unix epoch) is inside the window.
    pub fn contains(&self, now: u64) -> bool {
        let minute = ((now % DAY) / 60) as u32;
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// `now` if it is inside the window, else the window's next start.
    pub fn next_open(&self, now: u64) -> u64 {
        if self.contains(now) {
            return now;
        }
        let midnight = now - now % DAY;
        let start = midnight + u64::from(self.start) * 60;
        if start > now {
            start
        } else {
            start + DAY
        }
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(s: &str) -> Result<Window, String> {
        let bad = || {
            format!("maintenance window `{s}`: write it as HH:MM-HH:MM in UTC, e.g. 02:00-04:00")
        };
        let minutes = |t: &str| -> Result<u32, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 || t.trim().len() != 5 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minutes(a)?, minutes(b)?);
        if start == end {
            return Err(format!(
                "maintenance window `{s}` is empty; leave it out to reboot at once"
            ));
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Window, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Seconds from the loop's start to its first poll: a fixed share of the interval that
/// follows from the device's seed, so that a fleet powered on together does not poll together.
pub fn first_delay(seed: u32, interval: u64) -> u64 {
    interval * u64::from(seed % SEED_RANGE) / u64::from(SEED_RANGE)
}

/// Seconds until poll `n + 1` after poll `n`: the interval plus up to a tenth more, varying
/// with the seed and the poll's number (a device's polls do not fall into step with another's).
pub fn next_delay(seed: u32, n: u64, interval: u64) -> u64 {
    // splitmix64: enough to spread; nothing here is secret.
    let mut z = (u64::from(seed) << 32 ^ n).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    interval + (z % (interval / 10 + 1))
}

/// The wait before retry `failures` (1, 2, ...) after a repository could not be reached:
/// 30 s doubling, never more than the poll interval.
pub fn backoff(failures: u32, interval: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    (30u64 << exp).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_defaults_and_refuse_what_is_unsafe_or_malformed() {
        let s = Settings::parse("repository = \"https://u.example/fleet\"\nchannel = \"stable\"\n")
            .unwrap();
        assert_eq!(s.poll_interval_secs, DEFAULT_POLL_SECS);
        assert_eq!(s.maintenance_window, None);
        assert_eq!(Settings::parse(&s.to_toml()).unwrap(), s);

        let http = "repository = \"http://10.0.2.2/r\"\nchannel = \"stable\"\n";
        assert!(Settings::parse(http).unwrap_err().contains("insecure_http"));
        assert!(Settings::parse(&format!("{http}insecure_http = true\n")).is_ok());
        for bad in [
            "repository = \"ftp://x\"\nchannel = \"stable\"\n",
            "repository = \"https://x\"\nchannel = \"Stable!\"\n",
            "repository = \"https://x\"\nchannel = \"s\"\npoll_interval_secs = 1\n",
            "repository = \"https://x\"\nchannel = \"s\"\nmaintenance_window = \"2-4\"\n",
            "repository = \"https://x\"\nchannel = \"s\"\nsurprise = 1\n",
        ] {
            assert!(Settings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_contains_its_minutes_and_opens_next_at_its_start() {
        let w: Window = "02:00-04:00".parse().unwrap();
        assert_eq!(w.to_string(), "02:00-04:00");
        let day = 20_000 * DAY;
        assert!(!w.contains(day + 3600));
        assert!(w.contains(day + 2 * 3600));
        assert!(w.contains(day + 4 * 3600 - 1));
        assert!(!w.contains(day + 4 * 3600));
        assert_eq!(w.next_open(day + 3600), day + 2 * 3600);
        assert_eq!(w.next_open(day + 3 * 3600), day + 3 * 3600);
        assert_eq!(w.next_open(day + 5 * 3600), day + DAY + 2 * 3600);

        let night: Window = "23:30-00:30".parse().unwrap();
        assert!(night.contains(day + 23 * 3600 + 45 * 60));
        assert!(night.contains(day + 10 * 60));
        assert!(!night.contains(day + 3600));
        for bad in [
            "24:00-01:00",
            "02:00-02:00",
            "2:00-4:00",
            "02:00",
            "aa:bb-cc:dd",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn polls_spread_by_seed_within_their_bounds() {
        assert_eq!(first_delay(0, 900), 0);
        assert_eq!(first_delay(1024, 900), 450);
        assert!(first_delay(2047, 900) < 900);
        let delays: Vec<u64> = (0..50).map(|n| next_delay(7, n, 900)).collect();
        assert!(delays.iter().all(|d| (900..=990).contains(d)));
        assert!(delays.iter().any(|d| *d != delays[0]), "{delays:?}");
        assert_ne!(next_delay(7, 1, 900), next_delay(8, 1, 900));
        assert_eq!(backoff(1, 900), 30);
        assert_eq!(backoff(2, 900), 60);
        assert_eq!(backoff(10, 900), 900);
        assert_eq!(backoff(u32::MAX, 900), 900);
    }
}
