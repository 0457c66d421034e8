//! The reset key: the board's reset button held while the appliance boots.
//! `aperture-reset button` runs early in boot (after `resume`, before aperture-storage),
//! measures how long the button stays down and maps that to a level:
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
//! ## Which device
//! Only the board's own button counts: the one evdev device whose name (as in
//! `/sys/class/input/event*/device/name` or `evtest`) is `reset_button` in the image's
//! facts (`[board] reset_button` in the recipe). A board without one has no key path at all.
//! Round 1 asked every input device for `KEY_RESTART`, so a USB keyboard, a uinput device or an
//! IR receiver held for 15 s wiped the appliance. A device on a bus anyone can plug into (USB,
//! Bluetooth) is never the button even if it carries the name, and two devices with the name
//! make the button ambiguous: no reset starts ([`Button::find`]).
//!
//! ## One press, one reset
//! A press is consumed when its level starts: it is recorded in the reset area of the device
//! state store ([`crate::journal::ResetRecord::button`]) before the level runs, so a key still
//! down at the next boot (stuck, or held through the reboot) starts nothing. The record is
//! cleared at the first boot that sees the key up; after that a new press counts again.
//!
//! The key state is read with `evtest --query DEVICE EV_KEY KEY` (exit code 10 = down), which
//! needs no ioctl of our own (the workspace forbids unsafe code), behind the [`Evdev`] trait
//! so that tests use a fake ([`FakeEvdev`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aperture_appliance::Files;
use aperture_sys::Cmd;

use crate::io::Store;
use crate::journal::{ButtonPress, Level, ResetRecord};
use crate::seams::Clock;
use crate::ResetError;

/// Hold time from which a press means level 2.
pub const LEVEL2_HOLD: Duration = Duration::from_secs(5);
/// Hold time from which a press means level 3.
pub const LEVEL3_HOLD: Duration = Duration::from_secs(15);
/// How often the key is polled.
pub const POLL: Duration = Duration::from_millis(100);
/// The default key code of a reset button: `KEY_RESTART`.
pub const DEFAULT_KEY: &str = "KEY_RESTART";
/// Buses anyone can plug a device into (`BUS_USB`, `BUS_BLUETOOTH` in linux/input.h).
pub const REMOVABLE_BUSES: [u16; 2] = [0x03, 0x05];

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

/// One evdev device as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvdevDevice {
    /// Its node (`/dev/input/event3`).
    pub node: PathBuf,
    /// Its name (`gpio-keys`).
    pub name: String,
    /// Its bus type (`id/bustype`), if the kernel says.
    pub bus: Option<u16>,
}

/// Where input devices and their key state come from.
pub trait Evdev {
    /// Every evdev device.
    fn devices(&self) -> Result<Vec<EvdevDevice>, ResetError>;
    /// Whether `key` (a `KEY_...` name or code) is down on the device at `node`.
    fn key_down(&mut self, node: &Path, key: &str) -> Result<bool, ResetError>;
}

/// The real devices: names from sysfs, key state from `evtest --query`.
#[derive(Debug, Clone)]
pub struct SysEvdev {
    files: Files,
}

impl SysEvdev {
    /// The devices under `files`' root.
    pub fn new(files: Files) -> SysEvdev {
        SysEvdev { files }
    }
}

impl Evdev for SysEvdev {
    fn devices(&self) -> Result<Vec<EvdevDevice>, ResetError> {
        let class = self.files.path("sys/class/input");
        let entries = match std::fs::read_dir(&class) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ResetError::io("listing", &class)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ResetError::io("listing", &class))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !file_name.starts_with("event") {
                continue;
            }
            let device = entry.path().join("device");
            let Ok(name) = std::fs::read_to_string(device.join("name")) else {
                continue;
            };
            let bus = std::fs::read_to_string(device.join("id/bustype"))
                .ok()
                .and_then(|b| u16::from_str_radix(b.trim(), 16).ok());
            out.push(EvdevDevice {
                node: self.files.input_dir().join(&file_name),
                name: name.trim_end_matches('\n').to_string(),
                bus,
            });
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    fn key_down(&mut self, node: &Path, key: &str) -> Result<bool, ResetError> {
        let out = Cmd::new("evtest")
            .arg("--query")
            .arg(node)
            .args(["EV_KEY", key])
            .output()?;
        // 10: down; 0: up; anything else: the device has no such key.
        Ok(out.code == Some(10))
    }
}

/// The board's reset button on an [`Evdev`].
pub struct Button<'e> {
    evdev: &'e mut dyn Evdev,
    node: PathBuf,
    key: String,
}

impl<'e> Button<'e> {
    /// The one device named `name`, reporting `key` (`KEY_RESTART`, or a decimal code).
    /// `Ok(None)` when there is none, or when the name is ambiguous or on a removable bus
    /// (logged: the key path is off for this boot).
    pub fn find(
        evdev: &'e mut dyn Evdev,
        name: &str,
        key: &str,
    ) -> Result<Option<Button<'e>>, ResetError> {
        check_key(key)?;
        let named: Vec<EvdevDevice> = evdev
            .devices()?
            .into_iter()
            .filter(|d| d.name == name)
            .collect();
        let node = match named.as_slice() {
            [] => {
                tracing::warn!("the reset button {name:?} is not among the input devices");
                return Ok(None);
            }
            [one] if one.bus.is_some_and(|b| REMOVABLE_BUSES.contains(&b)) => {
                tracing::error!(
                    "an input device on a removable bus ({}) calls itself {name:?}, the \
                     reset button: ignored, no reset starts",
                    one.node.display()
                );
                return Ok(None);
            }
            [one] => one.node.clone(),
            many => {
                tracing::error!(
                    "{} input devices call themselves {name:?}, the reset button ({}): \
                     ignored, no reset starts",
                    many.len(),
                    many.iter()
                        .map(|d| d.node.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return Ok(None);
            }
        };
        Ok(Some(Button {
            evdev,
            node,
            key: key.to_string(),
        }))
    }

    /// The device node.
    pub fn node(&self) -> &Path {
        &self.node
    }
}

impl InputSource for Button<'_> {
    fn is_pressed(&mut self) -> Result<bool, ResetError> {
        self.evdev.key_down(&self.node, &self.key)
    }
}

fn check_key(key: &str) -> Result<(), ResetError> {
    let valid = key.strip_prefix("KEY_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    }) || (!key.is_empty() && key.chars().all(|c| c.is_ascii_digit()));
    if valid {
        Ok(())
    } else {
        Err(ResetError::Input {
            reason: format!("{key:?} is not an evdev key name (KEY_...) or code"),
        })
    }
}

/// What the reset button asked for at this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Press {
    /// The board has no reset button (or it was not found): the key path is off.
    NoButton,
    /// The button is up.
    NotPressed,
    /// The button is still down from the press that already ran `level`: nothing starts.
    StillHeld {
        /// The level that press ran.
        level: Level,
    },
    /// A new press asking for a level; it is recorded as consumed.
    Level(Level),
}

/// Reads the board's button (`button`, the device name from the image's facts; `None`: the
/// board has none) and applies the one-press-one-reset rule against the reset record in
/// `store` (see the module documentation). `boot_id` names this boot in the record.
pub fn read_press(
    evdev: &mut dyn Evdev,
    button: Option<&str>,
    key: &str,
    clock: &dyn Clock,
    store: &mut Store,
    boot_id: &str,
    announce: &mut dyn FnMut(Level),
) -> Result<Press, ResetError> {
    let Some(name) = button else {
        return Ok(Press::NoButton);
    };
    let Some(mut input) = Button::find(evdev, name, key)? else {
        return Ok(Press::NoButton);
    };
    let mut record = ResetRecord::load(store)?;
    if !input.is_pressed()? {
        if record.button.take().is_some() {
            // Released since the press that ran: the next press is a new one.
            record.save(store)?;
        }
        return Ok(Press::NotPressed);
    }
    if let Some(press) = &record.button {
        tracing::warn!(
            "the reset button is still down since the press that ran reset level {} (boot {}); \
             release it: a new press after that starts a reset again",
            press.level,
            press.boot_id
        );
        return Ok(Press::StillHeld { level: press.level });
    }
    let Some(level) = level_for_hold(measure_hold(&mut input, clock, announce)?) else {
        return Ok(Press::NotPressed);
    };
    record.button = Some(ButtonPress {
        level,
        boot_id: boot_id.to_string(),
    });
    record.save(store)?;
    Ok(Press::Level(level))
}

/// A fake [`Evdev`]: named devices whose key is down from time zero of a (fake) clock for a
/// fixed time; it records which nodes were asked.
pub struct FakeEvdev<'c> {
    clock: &'c dyn Clock,
    devices: Vec<(EvdevDevice, Option<Duration>)>,
    /// Nodes asked about, in order.
    pub asked: Vec<PathBuf>,
}

impl<'c> FakeEvdev<'c> {
    /// No devices.
    pub fn new(clock: &'c dyn Clock) -> FakeEvdev<'c> {
        FakeEvdev {
            clock,
            devices: Vec::new(),
            asked: Vec::new(),
        }
    }

    /// Adds `/dev/input/eventN` named `name` on `bus`, its key down for `held` (`None`: up).
    pub fn with(mut self, name: &str, bus: u16, held: Option<Duration>) -> FakeEvdev<'c> {
        let node = PathBuf::from(format!("/dev/input/event{}", self.devices.len()));
        self.devices.push((
            EvdevDevice {
                node,
                name: name.into(),
                bus: Some(bus),
            },
            held,
        ));
        self
    }
}

impl Evdev for FakeEvdev<'_> {
    fn devices(&self) -> Result<Vec<EvdevDevice>, ResetError> {
        Ok(self.devices.iter().map(|(d, _)| d.clone()).collect())
    }

    fn key_down(&mut self, node: &Path, key: &str) -> Result<bool, ResetError> {
        check_key(key)?;
        self.asked.push(node.to_path_buf());
        let held = self
            .devices
            .iter()
            .find(|(d, _)| d.node == node)
            .and_then(|(_, h)| *h);
        Ok(held.is_some_and(|h| self.clock.elapsed() < h))
    }
}

#[cfg(test)]
mod tests;
