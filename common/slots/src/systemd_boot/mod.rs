//! [`SystemdBoot`]: boot control for the qemu-x86_64 board, on an ESP mounted at a folder.
//!
//! Layout under the ESP root:
//! * `loader/loader.conf` ([`loader_conf`]): no `default` line, so systemd-boot boots the first
//!   entry in its own order (see [`entry::compare`]).
//! * `loader/entries/slot-a.conf`, `slot-b.conf`: one entry per slot, kernel and initrd under
//!   `aperture/a/` and `aperture/b/` (written by the updater, only referenced here).
//!
//! Mapping of the slot state (systemd Automatic Boot Assessment):
//! * good: `slot-b.conf` (no counter; `systemd-bless-boot` or [`Step::Bless`] renamed it so);
//! * on trial: `slot-b+3.conf`, renamed by the loader on each attempt to `slot-b+2-1.conf` ...;
//! * bad: `slot-b+0-3.conf` (the loader sorts entries with no tries left last);
//! * unbootable: no `slot-b*.conf` (invalidating renames it to `slot-b.conf.off`).
//!
//! The next boot: both entries have `sort-key aperture`, so the higher `version` wins. `version`
//! holds a *generation* number: [`Step::SetNext`] rewrites the slot's entry with the highest
//! generation plus one, so one file write decides the next boot. An armed entry is written with
//! generation 0 and only becomes preferred with the following [`Step::SetNext`]. The human image
//! version is in `title`. No EFI variable is used (`bootctl set-default` would override all this).

pub mod entry;

use std::fs;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir_all, read_optional, rename_durable, write_atomic};
use crate::manager::BootControl;
use crate::state::{BootState, SlotState, SlotStatus, Step};
use crate::{Slot, SlotBoot, SlotsError};
use entry::{compare, render_entry, set_version, EntryFields, EntryName, LoaderEntry};

/// Generation of the initially preferred slot (A) on a fresh ESP; B gets one less.
const INITIAL_GENERATION: u64 = 2;

/// The content of `loader/loader.conf`: boot at once, no command-line editor (it would let
/// anyone at the console change the kernel command line), keep the firmware's console mode.
pub fn loader_conf() -> String {
    "# Written by aperture-slots. No `default` line on purpose: the entries' sort-key and\n\
     # version (a boot generation) choose the slot to boot.\n\
     timeout 0\neditor no\nconsole-mode keep\n"
        .to_string()
}

/// Write `loader/loader.conf` and both slots' entries for a freshly built disk under `esp_root`
/// (a folder the image builder copies onto the ESP): both slots good, A boots first. Entries of
/// our slots already in the folder are removed first, so the result is exactly two entries.
pub fn write_initial_esp(esp_root: &Path, a: &SlotBoot, b: &SlotBoot) -> Result<(), SlotsError> {
    a.validate(Slot::A)?;
    b.validate(Slot::B)?;
    let esp = SystemdBoot::new(esp_root.to_path_buf());
    let dir = esp.entries_dir();
    create_dir_all(&dir)?;
    write_atomic(&esp.loader_conf_path(), loader_conf().as_bytes())?;
    for (name, _) in esp.live_entries()? {
        let path = dir.join(name);
        fs::remove_file(&path).map_err(SlotsError::io("removing old entry", &path))?;
    }
    for (slot, boot, generation) in [
        (Slot::A, a, INITIAL_GENERATION),
        (Slot::B, b, INITIAL_GENERATION - 1),
    ] {
        let path = dir.join(EntryName::plain(slot).file_name());
        write_atomic(&path, render_entry(slot, generation, boot).as_bytes())?;
    }
    Ok(())
}

/// systemd-boot backend on an ESP mounted at a folder.
#[derive(Debug, Clone)]
pub struct SystemdBoot {
    esp_root: PathBuf,
}

impl SystemdBoot {
    /// Work on the ESP mounted (or staged) at `esp_root`.
    pub fn new(esp_root: PathBuf) -> SystemdBoot {
        SystemdBoot { esp_root }
    }

    /// The ESP root.
    pub fn esp_root(&self) -> &Path {
        &self.esp_root
    }

    /// `loader/entries` under the ESP root.
    pub fn entries_dir(&self) -> PathBuf {
        self.esp_root.join("loader").join("entries")
    }

    /// `loader/loader.conf` under the ESP root.
    pub fn loader_conf_path(&self) -> PathBuf {
        self.esp_root.join("loader").join("loader.conf")
    }

    /// File names of our live entries, parsed. Temporary and `.off` files are skipped.
    fn live_entries(&self) -> Result<Vec<(String, EntryName)>, SlotsError> {
        let dir = self.entries_dir();
        let mut found = Vec::new();
        let listing =
            fs::read_dir(&dir).map_err(SlotsError::io("listing boot entries in", &dir))?;
        for item in listing {
            let item = item.map_err(SlotsError::io("listing boot entries in", &dir))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(parsed) = EntryName::parse(&name) {
                found.push((name, parsed));
            }
        }
        found.sort_by(|x, y| x.0.cmp(&y.0));
        Ok(found)
    }

    /// Our live entries as the loader sees them, in the loader's order (first boots).
    fn loader_entries(&self) -> Result<Vec<LoaderEntry>, SlotsError> {
        let dir = self.entries_dir();
        let mut entries = Vec::new();
        for (file, name) in self.live_entries()? {
            let path = dir.join(&file);
            let text = read_optional(&path)?.ok_or_else(|| SlotsError::Malformed {
                path: path.clone(),
                reason: "the entry vanished while being read".into(),
            })?;
            let fields = EntryFields::parse(&text);
            if fields.linux.is_none() && fields.efi.is_none() {
                return Err(SlotsError::Malformed {
                    path,
                    reason: "no `linux` or `efi` line, so systemd-boot ignores it".into(),
                });
            }
            entries.push(LoaderEntry {
                id: file.to_ascii_lowercase(),
                file,
                name,
                fields,
            });
        }
        entries.sort_by(compare);
        Ok(entries)
    }

    /// The one live entry of `slot`, if any; two are an error (which one would boot?).
    fn slot_entry<'e>(
        &self,
        entries: &'e [LoaderEntry],
        slot: Slot,
    ) -> Result<Option<&'e LoaderEntry>, SlotsError> {
        let mut mine = entries.iter().filter(|e| e.name.slot == slot);
        let first = mine.next();
        if let (Some(a), Some(b)) = (first, mine.next()) {
            return Err(SlotsError::Malformed {
                path: self.entries_dir(),
                reason: format!(
                    "slot {slot} has two live entries, {} and {}; remove the stale one",
                    a.file, b.file
                ),
            });
        }
        Ok(first)
    }

    fn generation(&self, e: &LoaderEntry) -> Result<u64, SlotsError> {
        e.fields.generation().ok_or_else(|| SlotsError::Malformed {
            path: self.path_of(e),
            reason: format!(
                "`version` is {:?}, not a boot generation number",
                e.fields.version
            ),
        })
    }

    fn require_entry<'e>(
        &self,
        entries: &'e [LoaderEntry],
        slot: Slot,
    ) -> Result<&'e LoaderEntry, SlotsError> {
        self.slot_entry(entries, slot)?
            .ok_or_else(|| SlotsError::MissingEntry {
                slot,
                dir: self.entries_dir(),
            })
    }

    /// Arming an entry whose kernel or initrd is missing would only waste the slot's tries:
    /// the updater writes them first (invalidate, write, verify, then validate).
    fn require_boot_files(&self, slot: Slot, boot: &SlotBoot) -> Result<(), SlotsError> {
        for (what, rel) in [("kernel", &boot.linux), ("initrd", &boot.initrd)] {
            let path = self.esp_root.join(rel.trim_start_matches('/'));
            if !path.is_file() {
                return Err(SlotsError::InvalidBoot {
                    slot,
                    reason: format!("{what} {rel} is not on the ESP ({} missing); write the slot's boot files before arming", path.display()),
                });
            }
        }
        Ok(())
    }

    fn path_of(&self, e: &LoaderEntry) -> PathBuf {
        self.entries_dir().join(&e.file)
    }
}

impl BootControl for SystemdBoot {
    fn name(&self) -> &'static str {
        "systemd-boot"
    }

    fn read(&self) -> Result<BootState, SlotsError> {
        let entries = self.loader_entries()?;
        let mut state = BootState::fresh();
        for slot in Slot::ALL {
            *state.slot_mut(slot) = match self.slot_entry(&entries, slot)? {
                Some(e) => SlotState {
                    status: e.name.status(),
                    label: e.fields.title.clone(),
                },
                None => SlotState {
                    status: SlotStatus::Unbootable,
                    label: None,
                },
            };
        }
        // The loader boots the first entry; with no entry at all nothing boots and A is shown.
        state.next = entries.first().map_or(Slot::A, |e| e.name.slot);
        Ok(state.normalized())
    }

    fn persist(&mut self, step: &Step) -> Result<(), SlotsError> {
        let entries = self.loader_entries()?;
        let dir = self.entries_dir();
        match step {
            Step::Invalidate { slot } => {
                // Every live entry of the slot goes, even stray duplicates.
                for e in entries.iter().filter(|e| e.name.slot == *slot) {
                    let off = dir.join(format!("{}.off", EntryName::plain(*slot).file_name()));
                    rename_durable(&self.path_of(e), &off)?;
                }
            }
            Step::Arm { slot, tries, boot } => {
                boot.validate(*slot)?;
                if let Some(e) = self.slot_entry(&entries, *slot)? {
                    return Err(SlotsError::InvalidTransition {
                        event: "arm",
                        slot: *slot,
                        from: e.name.status(),
                        fix: "its entry must be removed (begin the install) before it is armed",
                    });
                }
                self.require_boot_files(*slot, boot)?;
                let path = dir.join(EntryName::armed(*slot, *tries).file_name());
                write_atomic(&path, render_entry(*slot, 0, boot).as_bytes())?;
            }
            Step::Bless { slot } => {
                let e = self.require_entry(&entries, *slot)?;
                let plain = EntryName::plain(*slot);
                if e.name != plain {
                    rename_durable(&self.path_of(e), &dir.join(plain.file_name()))?;
                }
            }
            Step::SetNext { slot } => {
                let e = self.require_entry(&entries, *slot)?;
                let mut top = 0;
                for other in &entries {
                    top = top.max(self.generation(other)?);
                }
                let path = self.path_of(e);
                let text = read_optional(&path)?.unwrap_or_default();
                write_atomic(&path, set_version(&text, top + 1).as_bytes())?;
            }
        }
        Ok(())
    }

    /// SIMULATION of systemd-boot 252 at power-on: sort the entries, boot the first, and rename
    /// a counted entry as the loader does (`+3` → `+2-1`). An entry with no tries left still
    /// boots if it is the only choice, as in the real loader.
    fn loader_boot(&mut self) -> Result<Slot, SlotsError> {
        let entries = self.loader_entries()?;
        let Some(first) = entries.first() else {
            return Err(SlotsError::NoBootableSlot {
                a: SlotStatus::Unbootable,
                b: SlotStatus::Unbootable,
            });
        };
        let after = first.name.after_boot();
        if after != first.name {
            rename_durable(
                &self.path_of(first),
                &self.entries_dir().join(after.file_name()),
            )?;
        }
        Ok(first.name.slot)
    }
}
