//! The reset key against a fake evdev source: durations, which device counts, and one press
//! per reset.

use super::*;
use crate::io::tests::mem_store;
use crate::seams::FakeClock;

const BUTTON: &str = "gpio-keys";
/// `BUS_HOST`: a device of the board itself.
const HOST: u16 = 0x19;
const USB: u16 = 0x03;
const VIRTUAL: u16 = 0x06;

fn s(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

/// One boot's button service: a fresh clock, the devices as given.
fn boot(
    store: &mut Store,
    button: Option<&str>,
    devices: &[(&str, u16, Option<Duration>)],
) -> (Press, Vec<PathBuf>) {
    let clock = FakeClock::new(0);
    let mut evdev = FakeEvdev::new(&clock);
    for (name, bus, held) in devices {
        evdev = evdev.with(name, *bus, *held);
    }
    let press = read_press(
        &mut evdev,
        button,
        DEFAULT_KEY,
        &clock,
        store,
        "boot-id",
        &mut |_| {},
    )
    .unwrap();
    (press, evdev.asked)
}

fn press(held: Option<Duration>) -> (Option<Level>, Vec<Level>, Duration) {
    let clock = FakeClock::new(0);
    let mut evdev = FakeEvdev::new(&clock).with(BUTTON, HOST, held);
    let mut input = Button::find(&mut evdev, BUTTON, DEFAULT_KEY)
        .unwrap()
        .unwrap();
    let mut seen = Vec::new();
    let hold = measure_hold(&mut input, &clock, &mut |l| seen.push(l)).unwrap();
    (level_for_hold(hold), seen, clock.elapsed())
}

#[test]
fn press_durations_map_to_levels() {
    let ms = Duration::from_millis;
    assert_eq!(press(None).0, None);
    assert_eq!(press(Some(ms(300))).0, Some(Level::One));
    assert_eq!(press(s(2)).0, Some(Level::One));
    assert_eq!(press(Some(ms(4900))).0, Some(Level::One));
    assert_eq!(press(s(5)).0, Some(Level::Two));
    assert_eq!(press(s(9)).0, Some(Level::Two));
    assert_eq!(press(Some(ms(14_900))).0, Some(Level::Two));
    assert_eq!(press(s(15)).0, Some(Level::Three));
    let (level, seen, waited) = press(s(60));
    assert_eq!(level, Some(Level::Three));
    assert_eq!(seen, vec![Level::One, Level::Two, Level::Three]);
    assert_eq!(waited, LEVEL3_HOLD, "level 3 does not wait for the release");
}

#[test]
fn key_names_are_checked() {
    for good in ["KEY_RESTART", "408", "KEY_F12"] {
        assert!(check_key(good).is_ok(), "{good}");
    }
    for bad in ["KEY_a; rm -rf", "", "KEY_", "restart"] {
        assert!(check_key(bad).is_err(), "{bad:?}");
    }
}

/// Round 1 asked every input device: a USB keyboard or a uinput device holding KEY_RESTART
/// for 15 s started a level 3. Only the board's named button is asked now.
#[test]
fn only_the_boards_named_button_starts_a_reset() {
    let mut store = mem_store();
    let devices = [
        ("USB Keyboard", USB, s(60)),
        ("uinput-attacker", VIRTUAL, s(60)),
        ("IR receiver", HOST, s(60)),
        (BUTTON, HOST, None),
    ];
    let (press, asked) = boot(&mut store, Some(BUTTON), &devices);
    assert_eq!(press, Press::NotPressed);
    assert_eq!(
        asked,
        vec![PathBuf::from("/dev/input/event3")],
        "only the button is asked"
    );
    // The button itself, held 6 s: level 2.
    let (press, _) = boot(
        &mut store,
        Some(BUTTON),
        &[("USB Keyboard", USB, s(60)), (BUTTON, HOST, s(6))],
    );
    assert_eq!(press, Press::Level(Level::Two));
}

#[test]
fn a_board_without_a_button_has_no_key_path() {
    let mut store = mem_store();
    let (press, asked) = boot(&mut store, None, &[("gpio-keys", HOST, s(60))]);
    assert_eq!(press, Press::NoButton);
    assert!(asked.is_empty(), "no device is asked");
    let (press, _) = boot(&mut store, Some(BUTTON), &[("USB Keyboard", USB, s(60))]);
    assert_eq!(press, Press::NoButton, "the named button is not there");
}

/// A device anyone can plug in may call itself by the button's name; so may two devices.
/// Neither starts anything.
#[test]
fn a_spoofed_or_ambiguous_button_starts_nothing() {
    let mut store = mem_store();
    let (press, asked) = boot(&mut store, Some(BUTTON), &[(BUTTON, USB, s(60))]);
    assert_eq!(press, Press::NoButton);
    assert!(asked.is_empty());
    let (press, asked) = boot(
        &mut store,
        Some(BUTTON),
        &[(BUTTON, HOST, None), (BUTTON, VIRTUAL, s(60))],
    );
    assert_eq!(press, Press::NoButton);
    assert!(asked.is_empty());
}

/// Round 1 reran level 3 at every boot while the key stayed down (a stuck key, or a finger
/// held through the reboot). A press is now consumed once its level started: still down at
/// the next boot, it starts nothing; released, then pressed again, it does.
#[test]
fn a_press_is_consumed_once_its_level_ran() {
    let mut store = mem_store();
    let held = [(BUTTON, HOST, s(600))];
    assert_eq!(
        boot(&mut store, Some(BUTTON), &held).0,
        Press::Level(Level::Three)
    );
    let record = ResetRecord::load(&store).unwrap();
    assert_eq!(
        record.button,
        Some(ButtonPress {
            level: Level::Three,
            boot_id: "boot-id".into()
        })
    );
    // The reboot into the factory image, the key still down: twice.
    for _ in 0..2 {
        assert_eq!(
            boot(&mut store, Some(BUTTON), &held).0,
            Press::StillHeld {
                level: Level::Three
            }
        );
    }
    // Released: the record is cleared.
    assert_eq!(
        boot(&mut store, Some(BUTTON), &[(BUTTON, HOST, None)]).0,
        Press::NotPressed
    );
    assert_eq!(ResetRecord::load(&store).unwrap().button, None);
    // A new press counts again.
    assert_eq!(
        boot(&mut store, Some(BUTTON), &[(BUTTON, HOST, s(1))]).0,
        Press::Level(Level::One)
    );
}

/// The press record shares the reset area with a journal in progress; neither loses the other.
#[test]
fn the_press_record_keeps_the_journal() {
    let mut store = mem_store();
    let journal = crate::journal::Journal::new(Level::Three, aperture_slots::Slot::A, false);
    journal.save(&mut store).unwrap();
    boot(&mut store, Some(BUTTON), &[(BUTTON, HOST, s(20))]);
    assert_eq!(
        crate::journal::Journal::load(&store).unwrap(),
        Some(journal.clone())
    );
    boot(&mut store, Some(BUTTON), &[(BUTTON, HOST, None)]);
    assert_eq!(
        crate::journal::Journal::load(&store).unwrap(),
        Some(journal)
    );
}

#[test]
fn sysfs_names_and_buses_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::at(dir.path());
    for (n, name, bus) in [
        (0, "AT Translated Set 2 keyboard", "0011"),
        (4, "gpio-keys", "0019"),
    ] {
        let dev = files.path(format!("sys/class/input/event{n}/device"));
        std::fs::create_dir_all(dev.join("id")).unwrap();
        std::fs::write(dev.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(dev.join("id/bustype"), format!("{bus}\n")).unwrap();
    }
    std::fs::create_dir_all(files.path("sys/class/input/input4")).unwrap();
    let devices = SysEvdev::new(files.clone()).devices().unwrap();
    assert_eq!(
        devices,
        vec![
            EvdevDevice {
                node: files.input_dir().join("event0"),
                name: "AT Translated Set 2 keyboard".into(),
                bus: Some(0x11),
            },
            EvdevDevice {
                node: files.input_dir().join("event4"),
                name: "gpio-keys".into(),
                bus: Some(0x19),
            },
        ]
    );
    assert!(SysEvdev::new(Files::at(dir.path().join("none")))
        .devices()
        .unwrap()
        .is_empty());
}
