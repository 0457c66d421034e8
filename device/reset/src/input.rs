//! The reset input: a board-specific key (evdev `EV_KEY` code) held while the appliance boots.
//! `aperture-reset button` runs early in boot (after `resume`, before aperture-storage),
//! measures how long the key stays down and maps that to a level:
//!
//! | held                                   | level |
//! |----------------------------------------|-------|
//! | not down when the service looks        | none  |
//! | less than [`LEVEL2_HOLD`] (5 s)        | 1     |
//! | [`LEVEL2_HOLD`] up to [`LEVEL3_HOLD`]  | 2     |
//! | [`LEVEL3_HOLD`] (15 s) or more         | 3     |
//!
//! Times count from when the service first sees the key down: keep holding until the console
//! says the level you want was reached. Level 3 is reached without waiting for the release.
//!
//! The key state is read with `evtest --query DEVICE EV_KEY KEY` (exit code 10 = down), which
//! needs no ioctl of our own (the workspace forbids unsafe code) and works on every evdev
//! device; every `/dev/input/event*` is asked, so the board does not have to name the device.

use std::path::PathBuf;
use std::time::Duration;

use aperture_sys::Cmd;

use crate::journal::Level;
use crate::seams::Clock;
use crate::ResetError;

/// Hold time from which a press means level 2.
pub const LEVEL2_HOLD: Duration = Duration::from_secs(5);
/// Hold time from which a press means level 3.
pub const LEVEL3_HOLD: Duration = Duration::from_secs(15);
/// How often the key is polled.
pub const POLL: Duration = Duration::from_millis(100);
/// The default key: `KEY_RESTART` (a dedicated reset button; boards override it).
pub const DEFAULT_KEY: &str = "KEY_RESTART";

/// The level a hold of `held` means (`None`: the key was not down).
pub fn level_for_hold(held: Option<Duration>) -> Option<Level> {
    let held = held?;
    Some(if held >= LEVEL3_HOLD {
        Level::Three
    } else if held >= LEVEL2_HOLD {
        Level::Two
    } else {
        Level::One
    })
}

/// A reset key.
pub trait InputSource {
    /// Whether the key is down now.
    fn is_pressed(&mut self) -> Result<bool, ResetError>;
}

/// How long the key is held, polling every [`POLL`]; `None` if it is not down at the first
/// look. Stops at [`LEVEL3_HOLD`]. `announce` is told each level as it is reached.
pub fn measure_hold(
    input: &mut dyn InputSource,
    clock: &dyn Clock,
    announce: &mut dyn FnMut(Level),
) -> Result<Option<Duration>, ResetError> {
    if !input.is_pressed()? {
        return Ok(None);
    }
    let start = clock.elapsed();
    let mut reached = Level::One;
    announce(reached);
    loop {
        clock.sleep(POLL);
        let held = clock.elapsed().saturating_sub(start);
        let level = level_for_hold(Some(held)).unwrap_or(Level::One);
        if level > reached {
            reached = level;
            announce(level);
        }
        if held >= LEVEL3_HOLD || !input.is_pressed()? {
            return Ok(Some(held));
        }
    }
}

/// The real key: `evtest --query` on every evdev device.
#[derive(Debug, Clone)]
pub struct Evtest {
    devices: Vec<PathBuf>,
    key: String,
}

impl Evtest {
    /// Ask `devices` about `key` (`KEY_RESTART`, or a decimal code).
    pub fn new(devices: Vec<PathBuf>, key: &str) -> Result<Evtest, ResetError> {
        let valid = key.starts_with("KEY_")
            && key[4..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            || (!key.is_empty() && key.chars().all(|c| c.is_ascii_digit()));
        if !valid {
            return Err(ResetError::Input {
                reason: format!("{key:?} is not an evdev key name (KEY_...) or code"),
            });
        }
        Ok(Evtest {
            devices,
            key: key.to_string(),
        })
    }

    /// Every `event*` node in `input_dir`, sorted.
    pub fn devices_in(input_dir: &std::path::Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(input_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("event"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl InputSource for Evtest {
    fn is_pressed(&mut self) -> Result<bool, ResetError> {
        for dev in &self.devices {
            let out = Cmd::new("evtest")
                .arg("--query")
                .arg(dev)
                .args(["EV_KEY", &self.key])
                .output()?;
            // 10: down; 0: up; anything else: this device has no such key.
            if out.code == Some(10) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A key held for a fixed time from the start of the (fake) clock.
pub struct FakeInput<'c> {
    clock: &'c dyn Clock,
    held_for: Option<Duration>,
}

impl<'c> FakeInput<'c> {
    /// Down from time zero for `held_for`; never down if `None`.
    pub fn new(clock: &'c dyn Clock, held_for: Option<Duration>) -> FakeInput<'c> {
        FakeInput { clock, held_for }
    }
}

impl InputSource for FakeInput<'_> {
    fn is_pressed(&mut self) -> Result<bool, ResetError> {
        Ok(self.held_for.is_some_and(|h| self.clock.elapsed() < h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::FakeClock;

    fn press(held: Option<Duration>) -> (Option<Level>, Vec<Level>, Duration) {
        let clock = FakeClock::new(0);
        let mut input = FakeInput::new(&clock, held);
        let mut seen = Vec::new();
        let hold = measure_hold(&mut input, &clock, &mut |l| seen.push(l)).unwrap();
        (level_for_hold(hold), seen, clock.elapsed())
    }

    #[test]
    fn press_durations_map_to_levels() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(press(None).0, None);
        assert_eq!(press(Some(ms(300))).0, Some(Level::One));
        assert_eq!(press(Some(s(2))).0, Some(Level::One));
        assert_eq!(press(Some(ms(4900))).0, Some(Level::One));
        assert_eq!(press(Some(s(5))).0, Some(Level::Two));
        assert_eq!(press(Some(s(9))).0, Some(Level::Two));
        assert_eq!(press(Some(ms(14_900))).0, Some(Level::Two));
        assert_eq!(press(Some(s(15))).0, Some(Level::Three));
        let (level, seen, waited) = press(Some(s(60)));
        assert_eq!(level, Some(Level::Three));
        assert_eq!(seen, vec![Level::One, Level::Two, Level::Three]);
        assert_eq!(waited, LEVEL3_HOLD, "level 3 does not wait for the release");
    }

    #[test]
    fn key_names_are_checked() {
        assert!(Evtest::new(vec![], "KEY_RESTART").is_ok());
        assert!(Evtest::new(vec![], "408").is_ok());
        assert!(Evtest::new(vec![], "KEY_a; rm -rf").is_err());
        assert!(Evtest::new(vec![], "").is_err());
        let mut none = Evtest::new(vec![], "KEY_RESTART").unwrap();
        assert!(!none.is_pressed().unwrap());
    }
}
