//! systemd-boot loader entries as files: entry file names with boot counters
//! (`slot-b+2-1.conf`), entry contents (`title`, `version`, `sort-key`, `linux`, ...), and the
//! order in which systemd-boot 252 sorts entries, which decides the default boot when
//! `loader.conf` has no `default` line and no EFI variable overrides it.
//!
//! References: systemd `docs/AUTOMATIC_BOOT_ASSESSMENT.md` (counter names and renames),
//! `src/boot/efi/boot.c` `boot_entry_compare()` (v252 ordering) and
//! `src/fundamental/string-util-fundamental.c` `strverscmp_improved()` (version comparison).

use std::cmp::Ordering;

use crate::state::SlotStatus;
use crate::{Slot, SlotBoot};

/// `sort-key` of every Aperture entry; equal for both slots so that `version` decides.
pub const SORT_KEY: &str = "aperture";

/// The boot counter in an entry file name: `+LEFT` or `+LEFT-DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Boot attempts left.
    pub tries_left: u32,
    /// Boot attempts made.
    pub tries_done: u32,
}

/// A live (`*.conf`) entry file name of one of our slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    /// The slot it boots.
    pub slot: Slot,
    /// Its boot counter, if it is on trial.
    pub counter: Option<Counter>,
}

impl EntryName {
    /// The plain (blessed) name of `slot`'s entry: `slot-a.conf`.
    pub fn plain(slot: Slot) -> EntryName {
        EntryName {
            slot,
            counter: None,
        }
    }

    /// A freshly armed entry with `tries` tries: `slot-b+3.conf`.
    pub fn armed(slot: Slot, tries: u32) -> EntryName {
        EntryName {
            slot,
            counter: Some(Counter {
                tries_left: tries,
                tries_done: 0,
            }),
        }
    }

    /// Parse a file name in `loader/entries/`. `None` for anything that is not a live entry of
    /// slot a or b (other entries, `slot-b.conf.off`, temporary files).
    ///
    /// Like systemd-boot, the counter is the text after the last `+`, and a counter that does
    /// not parse means the name has no counter (so `slot-b+x.conf` is not ours). The `.conf`
    /// suffix and the slot name are matched without regard to case, as on vfat.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let lower = file_name.to_ascii_lowercase();
        let stem = lower.strip_suffix(".conf")?;
        let (prefix, counter) = match stem.rsplit_once('+') {
            Some((prefix, text)) => match parse_counter(text) {
                Some(counter) => (prefix, Some(counter)),
                None => (stem, None),
            },
            None => (stem, None),
        };
        let slot = match prefix {
            "slot-a" => Slot::A,
            "slot-b" => Slot::B,
            _ => return None,
        };
        Some(EntryName { slot, counter })
    }

    /// The file name: `slot-a.conf`, `slot-b+3.conf`, `slot-b+2-1.conf`.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("slot-{}.conf", self.slot),
            Some(Counter {
                tries_left,
                tries_done: 0,
            }) => format!("slot-{}+{tries_left}.conf", self.slot),
            Some(Counter {
                tries_left,
                tries_done,
            }) => {
                format!("slot-{}+{tries_left}-{tries_done}.conf", self.slot)
            }
        }
    }

    /// The slot status this name stands for.
    pub fn status(&self) -> SlotStatus {
        match self.counter {
            None => SlotStatus::Good,
            Some(Counter { tries_left: 0, .. }) => SlotStatus::Bad,
            Some(Counter {
                tries_left,
                tries_done,
            }) => SlotStatus::Trying {
                tries_left,
                tries_done,
            },
        }
    }

    /// The name systemd-boot renames a counted entry to when it boots it (`+3` → `+2-1`, and
    /// `+0-3` → `+0-4`: left stops at zero, done keeps counting). Uncounted names stay.
    pub fn after_boot(&self) -> EntryName {
        let counter = self.counter.map(|c| Counter {
            tries_left: c.tries_left.saturating_sub(1),
            // systemd-boot stops counting at its maximum too; past ours the name would no
            // longer parse as a counter (fuzz target `boot_entry`).
            tries_done: c.tries_done.saturating_add(1).min(MAX_COUNTER),
        });
        EntryName {
            slot: self.slot,
            counter,
        }
    }
}

/// The largest tries-left or tries-done count in a name (systemd's `INT_MAX`).
const MAX_COUNTER: u32 = i32::MAX as u32;

/// `LEFT` or `LEFT-DONE`, decimal digits only (systemd limits each to `INT_MAX`; we to `u32`).
fn parse_counter(text: &str) -> Option<Counter> {
    let (left, done) = match text.split_once('-') {
        Some((left, done)) => (left, Some(done)),
        None => (text, None),
    };
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().filter(|n| *n <= MAX_COUNTER)
    };
    Some(Counter {
        tries_left: number(left)?,
        tries_done: match done {
            Some(d) => number(d)?,
            None => 0,
        },
    })
}

/// The fields of an entry file we use. Unknown keys are kept by [`set_version`] untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFields {
    /// `title`.
    pub title: Option<String>,
    /// `version`: for Aperture entries, the boot generation.
    pub version: Option<String>,
    /// `sort-key`.
    pub sort_key: Option<String>,
    /// `machine-id`.
    pub machine_id: Option<String>,
    /// `linux`.
    pub linux: Option<String>,
    /// `efi` (a UKI or other EFI program instead of `linux`).
    pub efi: Option<String>,
}

impl EntryFields {
    /// Parse `key value` lines the way systemd-boot does (see `key_value`); for repeated keys the
    /// last wins.
    pub fn parse(text: &str) -> EntryFields {
        let mut fields = EntryFields::default();
        for (key, value) in text.lines().filter_map(key_value) {
            let slot = match key {
                "title" => &mut fields.title,
                "version" => &mut fields.version,
                "sort-key" => &mut fields.sort_key,
                "machine-id" => &mut fields.machine_id,
                "linux" => &mut fields.linux,
                "efi" => &mut fields.efi,
                _ => continue,
            };
            *slot = Some(value.to_string());
        }
        fields
    }

    /// The boot generation (`version` as an integer), if it is one.
    pub fn generation(&self) -> Option<u64> {
        self.version.as_deref()?.parse().ok()
    }
}

/// The text of the loader entry for `slot` at boot `generation` (written as `version`; the
/// highest generation boots first, see [`compare`]).
pub fn render_entry(slot: Slot, generation: u64, boot: &SlotBoot) -> String {
    let mut text = format!(
        "# Slot {slot}, written by aperture-slots. `version` is a boot generation, not the image\n\
         # version: with equal sort keys systemd-boot boots the highest version first.\n\
         title {}\nversion {generation}\nsort-key {SORT_KEY}\nlinux {}\n",
        boot.title, boot.linux
    );
    // A UKI's entry has neither line: its initrd and command line are signed inside it.
    if let Some(initrd) = &boot.initrd {
        text.push_str(&format!("initrd {initrd}\n"));
    }
    if let Some(options) = &boot.options {
        text.push_str(&format!("options {options}\n"));
    }
    text
}

/// `text` with its `version` line set to `generation` (added after the first line if missing);
/// every other line kept as it was.
pub fn set_version(text: &str, generation: u64) -> String {
    let mut out = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if key_value(line).is_some_and(|(key, _)| key == "version") {
            if !done {
                out.push(format!("version {generation}"));
                done = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    if !done {
        let at = out
            .iter()
            .position(|l| key_value(l).is_some_and(|(key, _)| key == "title"))
            .map_or(0, |i| i + 1);
        out.insert(at, format!("version {generation}"));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// A line's key and value as systemd-boot's `line_get_key_value()` reads them: blanks are
/// spaces and tabs only (and a trailing `\r`), `#` starts a comment, a key without a value is
/// no key at all. One reader for [`EntryFields::parse`] and [`set_version`], so the version
/// this writes is the one read back, whatever other whitespace a line holds (fuzz target
/// `boot_entry` found them disagreeing about `version\u{b}`).
fn key_value(line: &str) -> Option<(&str, &str)> {
    let line = line
        .trim_start_matches([' ', '\t'])
        .trim_end_matches([' ', '\t', '\r']);
    if line.starts_with('#') {
        return None;
    }
    let (key, value) = line.split_once([' ', '\t'])?;
    Some((key, value.trim_start_matches([' ', '\t'])))
}

/// An entry as the loader sees it, for ordering.
#[derive(Debug, Clone)]
pub struct LoaderEntry {
    /// The file name as found in `loader/entries`.
    pub file: String,
    /// Parsed name.
    pub name: EntryName,
    /// The id systemd-boot 252 uses: the file name, lower-cased, counter included.
    pub id: String,
    /// Parsed contents.
    pub fields: EntryFields,
}

/// systemd-boot 252's `boot_entry_compare()`: `Less` means `a` is listed (and preferred) first.
///
/// Entries with no tries left go last; then entries with a sort key before those without;
/// with sort keys, by sort key, machine id, then version newest first; then by id newest first;
/// then, if both are counted, more tries left first and fewer tries done first.
pub fn compare(a: &LoaderEntry, b: &LoaderEntry) -> Ordering {
    let left = |e: &LoaderEntry| e.name.counter.map(|c| c.tries_left);
    let exhausted = |e: &LoaderEntry| left(e) == Some(0);
    exhausted(a)
        .cmp(&exhausted(b))
        .then_with(|| {
            a.fields
                .sort_key
                .is_none()
                .cmp(&b.fields.sort_key.is_none())
        })
        .then_with(|| match (&a.fields.sort_key, &b.fields.sort_key) {
            (Some(ka), Some(kb)) => ka
                .as_bytes()
                .cmp(kb.as_bytes())
                .then_with(|| a.fields.machine_id.cmp(&b.fields.machine_id))
                .then_with(|| {
                    strverscmp_opt(a.fields.version.as_deref(), b.fields.version.as_deref())
                        .reverse()
                }),
            _ => Ordering::Equal,
        })
        .then_with(|| strverscmp_improved(&a.id, &b.id).reverse())
        .then_with(|| match (a.name.counter, b.name.counter) {
            (Some(ca), Some(cb)) => cb
                .tries_left
                .cmp(&ca.tries_left)
                .then_with(|| ca.tries_done.cmp(&cb.tries_done)),
            _ => Ordering::Equal,
        })
}

/// `strverscmp_improved` with systemd's handling of missing (NULL) and empty strings: those
/// compare with `strcmp` semantics, NULL before everything.
fn strverscmp_opt(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => strverscmp_improved(a, b),
        _ => a.cmp(&b),
    }
}

fn is_valid_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// A port of systemd's `strverscmp_improved()` (the version comparison of the Boot Loader
/// Specification): `~` sorts before everything, `-` and `^` and `.` separate segments, numeric
/// segments compare by value, a numeric segment is newer than an alphabetic one.
pub fn strverscmp_improved(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        while at(a, i) != 0 && !is_valid_version_char(at(a, i)) {
            i += 1;
        }
        while at(b, j) != 0 && !is_valid_version_char(at(b, j)) {
            j += 1;
        }
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        if at(a, i) == 0 || at(b, j) == 0 {
            return a[i.min(a.len())..].cmp(&b[j.min(b.len())..]);
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        let (ai, bj);
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let r = at(a, i).is_ascii_digit().cmp(&at(b, j).is_ascii_digit());
            if r != Ordering::Equal {
                return r;
            }
            let mut aa = i;
            while at(a, aa).is_ascii_digit() {
                aa += 1;
            }
            let mut bb = j;
            while at(b, bb).is_ascii_digit() {
                bb += 1;
            }
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            // `i` may have run past `aa` only if the segment was all zeros; clamp.
            i = i.min(aa);
            j = j.min(bb);
            let r = (aa - i)
                .cmp(&(bb - j))
                .then_with(|| a[i..aa].cmp(&b[j..bb]));
            if r != Ordering::Equal {
                return r;
            }
            (ai, bj) = (aa, bb);
        } else {
            let mut aa = i;
            while at(a, aa).is_ascii_alphabetic() {
                aa += 1;
            }
            let mut bb = j;
            while at(b, bb).is_ascii_alphabetic() {
                bb += 1;
            }
            let n = (aa - i).min(bb - j);
            let r = a[i..i + n]
                .cmp(&b[j..j + n])
                .then_with(|| (aa - i).cmp(&(bb - j)));
            if r != Ordering::Equal {
                return r;
            }
            (ai, bj) = (aa, bb);
        }
        i = ai;
        j = bj;
    }
}
