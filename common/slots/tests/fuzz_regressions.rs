//! Inputs the fuzz targets (`cargo xtask fuzz`, `fuzz/fuzz_targets/`) found breaking a parser of
//! this crate, each kept as a fixture in `fixtures/fuzz/` named after what it exercises, with
//! the invariant it broke.

use aperture_slots::systemd_boot::entry::{set_version, EntryFields};

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
    for text in ["title a\n\tversion \t 5 \r\n", "version\u{a0}7\ntitle b\n", "version\n"] {
        let fields = EntryFields::parse(&set_version(text, 9));
        assert_eq!(fields.generation(), Some(9), "{text:?}");
    }
}
