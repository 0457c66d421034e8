//! systemd-boot loader entries: entry file names with boot counters, entry contents, and
//! systemd-boot's ordering. Input: four files (`aperture_fuzz::parts`): a file name, an entry
//! text, two version strings. Names round-trip through `file_name`; `set_version` changes what
//! `EntryFields` reads of an entry in its version only; both orderings are antisymmetric.
#![no_main]

use aperture_fuzz::parts;
use aperture_slots::systemd_boot::entry::{
    compare, set_version, strverscmp_improved, EntryFields, EntryName, LoaderEntry,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [name, text, a, b] = parts::<4>(data).map(|p| String::from_utf8_lossy(p.unwrap_or(b"")));
    if let Some(entry) = EntryName::parse(&name) {
        assert_eq!(EntryName::parse(&entry.file_name()), Some(entry));
        let booted = entry.after_boot();
        assert_eq!(EntryName::parse(&booted.file_name()), Some(booted));
    }
    let fields = EntryFields::parse(&text);
    let generation = data.len() as u64;
    let updated = set_version(&text, generation);
    let expected = EntryFields {
        version: Some(generation.to_string()),
        ..fields.clone()
    };
    assert_eq!(EntryFields::parse(&updated), expected);

    assert_eq!(strverscmp_improved(&a, &a), std::cmp::Ordering::Equal);
    assert_eq!(
        strverscmp_improved(&a, &b),
        strverscmp_improved(&b, &a).reverse()
    );
    let entry = |file: &str, fields: EntryFields| {
        let name = EntryName::parse(file)?;
        let id = file.to_ascii_lowercase();
        Some(LoaderEntry {
            file: file.into(),
            name,
            id,
            fields,
        })
    };
    let (x, y) = (
        entry(&a, fields.clone()),
        entry(&b, EntryFields::parse(&updated)),
    );
    if let (Some(x), Some(y)) = (x, y) {
        assert_eq!(compare(&x, &y), compare(&y, &x).reverse());
    }
});
