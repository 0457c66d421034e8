//! Inputs the fuzz targets (`cargo xtask fuzz`, `fuzz/fuzz_targets/`) found breaking a parser of
//! this crate, each kept as a fixture in `fixtures/fuzz/` named after what it exercises, with
//! the invariant it broke.

use aperture_slots::systemd_boot::entry::{set_version, Counter, EntryFields, EntryName};

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/fuzz/{name}", env!("CARGO_MANIFEST_DIR"));
    String::from_utf8(std::fs::read(&path).unwrap()).unwrap()
}

/// Target `boot_entry`: `set_version` wrote `version 78` but `EntryFields` read the entry's own
/// `version<VT>` line (a key followed by a vertical tab), which it took for a version line
/// and systemd-boot does not: the generation written was not the one read back. Both now read
/// lines as systemd-boot does (blanks are spaces and tabs).
#[test]
fn set_version_is_read_back_whatever_the_whitespace() {
    let text = fixture("entry-version-vertical-tab.conf");
    assert!(text.contains("version\u{b}"));
    assert_eq!(EntryFields::parse(&text).version, None);
    let updated = set_version(&text, 78);
    let fields = EntryFields::parse(&updated);
    assert_eq!(fields.generation(), Some(78), "{updated:?}");
    assert_eq!(fields.title, None, "`titltle x` is no title");
    for text in [
        "title a\n\tversion \t 5 \r\n",
        "version\u{a0}7\ntitle b\n",
        "version\n",
    ] {
        let fields = EntryFields::parse(&set_version(text, 9));
        assert_eq!(fields.generation(), Some(9), "{text:?}");
    }
}

/// Target `boot_entry` (on a hand-made boundary input): booting `slot-a+1-2147483647.conf`
/// counted its tries done past systemd's maximum, to a name (`+0-2147483648`) that no longer
/// parses as ours, so the slot's entry would vanish from the state. The count now stops at
/// the maximum, as systemd-boot's does.
#[test]
fn tries_done_stop_at_the_largest_count_a_name_holds() {
    let entry = EntryName::parse("slot-a+1-2147483647.conf").unwrap();
    let booted = entry.after_boot();
    assert_eq!(
        booted.counter,
        Some(Counter {
            tries_left: 0,
            tries_done: 2147483647
        })
    );
    assert_eq!(EntryName::parse(&booted.file_name()), Some(booted));
    assert_eq!(booted.after_boot(), booted);
}
