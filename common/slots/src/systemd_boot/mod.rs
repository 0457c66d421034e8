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
//!
//! ## What a power cut on vfat can leave, and how it is read
//! Every write goes through [`EspOps`] (vfat-safe: the renamed file is fsynced again under its
//! new name, then the folder). But a vfat rename of a long name is two directory operations,
//! create the new entry then delete the old one, in Linux and in the firmware's FAT driver
//! alike, so a cut between them leaves two live entries of one slot: `slot-b+3.conf` and
//! `slot-b+2-1.conf` (the loader counting a try), `slot-b+2-1.conf` and `slot-b.conf` (a bless),
//! or a temporary `*.conf.tmp` beside its target. Such a slot is read as its LEAST bootable
//! entry (bad before on trial before good; fewer tries left first), so a leftover entry can never
//! make a failed slot good or bootable again; an entry the loader ignores (no `linux` or `efi`
//! line, such as an empty file) is ignored here too. The next change of the boot state
//! ([`BootControl::tidy`], run by [`crate::SlotManager`] before every event, and by each
//! [`BootControl::persist`]) removes the other entries and the temporary files, so the disk
//! then says exactly what was read.

pub mod entry;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aperture_sys::fs::{create_dir_all, read_optional};

use crate::esp::{EspOps, RealEsp};
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
    create_dir_all(&dir, 0o755)?;
    esp.ops
        .write_atomic(&esp.loader_conf_path(), loader_conf().as_bytes())?;
    for name in esp.listing()?.live.into_keys() {
        esp.ops.remove_durable(&dir.join(name))?;
    }
    for (slot, boot, generation) in [
        (Slot::A, a, INITIAL_GENERATION),
        (Slot::B, b, INITIAL_GENERATION - 1),
    ] {
        let path = dir.join(EntryName::plain(slot).file_name());
        esp.ops
            .write_atomic(&path, render_entry(slot, generation, boot).as_bytes())?;
    }
    Ok(())
}

/// The entries folder as listed: our live entry names and the temporary files.
struct Listing {
    /// File name to parsed name, sorted by file name.
    live: std::collections::BTreeMap<String, EntryName>,
    /// `*.tmp` files a cut write left behind.
    tmp: Vec<String>,
}

/// The entries as read: per slot the one entry that counts, and the files to remove.
struct View {
    /// The counted entry of each slot that has one, in the loader's order.
    chosen: Vec<LoaderEntry>,
    /// Other live entries of a slot, entries the loader ignores, and temporary files.
    stale: Vec<String>,
}

/// How bootable an entry is, least first: bad, then on trial with fewer tries left and more
/// done, then good.
fn bootability(name: &EntryName) -> (u8, u32, std::cmp::Reverse<u32>) {
    match name.counter {
        None => (2, 0, std::cmp::Reverse(0)),
        Some(c) if c.tries_left == 0 => (0, 0, std::cmp::Reverse(c.tries_done)),
        Some(c) => (1, c.tries_left, std::cmp::Reverse(c.tries_done)),
    }
}

/// systemd-boot backend on an ESP mounted at a folder.
#[derive(Debug, Clone)]
pub struct SystemdBoot {
    esp_root: PathBuf,
    ops: Arc<dyn EspOps>,
}

impl SystemdBoot {
    /// Work on the ESP mounted (or staged) at `esp_root`.
    pub fn new(esp_root: PathBuf) -> SystemdBoot {
        SystemdBoot {
            esp_root,
            ops: Arc::new(RealEsp),
        }
    }

    /// Do every file operation through `ops` (the updater's fault-injection seam).
    pub fn with_ops(mut self, ops: Arc<dyn EspOps>) -> SystemdBoot {
        self.ops = ops;
        self
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

    /// Our live entry names and the temporary files in the entries folder.
    fn listing(&self) -> Result<Listing, SlotsError> {
        let dir = self.entries_dir();
        let mut live = std::collections::BTreeMap::new();
        let mut tmp = Vec::new();
        let listing =
            fs::read_dir(&dir).map_err(SlotsError::io("listing boot entries in", &dir))?;
        for item in listing {
            let item = item.map_err(SlotsError::io("listing boot entries in", &dir))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(parsed) = EntryName::parse(&name) {
                live.insert(name, parsed);
            } else if name.to_ascii_lowercase().ends_with(".tmp") {
                tmp.push(name);
            }
        }
        Ok(Listing { live, tmp })
    }

    /// Every live entry the loader would consider, in the loader's order (first boots). An
    /// entry without a `linux` or `efi` line is skipped, as the loader skips it.
    fn loader_entries(&self) -> Result<(Vec<LoaderEntry>, Listing), SlotsError> {
        let dir = self.entries_dir();
        let listing = self.listing()?;
        let mut entries = Vec::new();
        for (file, name) in &listing.live {
            let path = dir.join(file);
            let Some(text) = read_optional(&path)? else {
                continue;
            };
            let fields = EntryFields::parse(&String::from_utf8_lossy(&text));
            if fields.linux.is_none() && fields.efi.is_none() {
                continue;
            }
            entries.push(LoaderEntry {
                id: file.to_ascii_lowercase(),
                file: file.clone(),
                name: *name,
                fields,
            });
        }
        entries.sort_by(compare);
        Ok((entries, listing))
    }

    /// The entries as read (see the module documentation): per slot its least bootable
    /// entry, and what the next change removes.
    fn view(&self) -> Result<View, SlotsError> {
        let (entries, listing) = self.loader_entries()?;
        let mut chosen: Vec<LoaderEntry> = Vec::new();
        for slot in Slot::ALL {
            if let Some(e) = entries
                .iter()
                .filter(|e| e.name.slot == slot)
                .min_by_key(|e| bootability(&e.name))
            {
                chosen.push(e.clone());
            }
        }
        chosen.sort_by(compare);
        let mut stale: Vec<String> = listing
            .live
            .into_keys()
            .filter(|f| !chosen.iter().any(|c| &c.file == f))
            .collect();
        stale.extend(listing.tmp);
        Ok(View { chosen, stale })
    }

    /// Remove what a cut write or rename left: extra entries of a slot (keeping the one that
    /// is read), entries the loader ignores, and temporary files. Returns the names removed.
    fn clean(&self, view: &View) -> Result<Vec<String>, SlotsError> {
        let dir = self.entries_dir();
        for name in &view.stale {
            self.ops.remove_durable(&dir.join(name))?;
        }
        Ok(view.stale.clone())
    }

    /// The counted entry of `slot`, if any.
    fn slot_entry(entries: &[LoaderEntry], slot: Slot) -> Option<&LoaderEntry> {
        entries.iter().find(|e| e.name.slot == slot)
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
        Self::slot_entry(entries, slot).ok_or_else(|| SlotsError::MissingEntry {
            slot,
            dir: self.entries_dir(),
        })
    }

    /// Arming an entry whose kernel or initrd is missing would only waste the slot's tries:
    /// the updater writes them first (invalidate, write, verify, then validate).
    fn require_boot_files(&self, slot: Slot, boot: &SlotBoot) -> Result<(), SlotsError> {
        for (what, rel) in boot.files() {
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
        let entries = self.view()?.chosen;
        let mut state = BootState::fresh();
        for slot in Slot::ALL {
            *state.slot_mut(slot) = match Self::slot_entry(&entries, slot) {
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

    fn tidy(&mut self) -> Result<Vec<String>, SlotsError> {
        let view = self.view()?;
        self.clean(&view)
    }

    fn persist(&mut self, step: &Step) -> Result<(), SlotsError> {
        let view = self.view()?;
        self.clean(&view)?;
        let entries = view.chosen;
        let dir = self.entries_dir();
        match step {
            Step::Invalidate { slot } => {
                if let Some(e) = Self::slot_entry(&entries, *slot) {
                    let off = dir.join(format!("{}.off", EntryName::plain(*slot).file_name()));
                    self.ops.rename_durable(&self.path_of(e), &off)?;
                }
            }
            Step::Arm { slot, tries, boot } => {
                boot.validate(*slot)?;
                if let Some(e) = Self::slot_entry(&entries, *slot) {
                    return Err(SlotsError::InvalidTransition {
                        event: "arm",
                        slot: *slot,
                        from: e.name.status(),
                        fix: "begin the install (which invalidates it) before arming it",
                    });
                }
                self.require_boot_files(*slot, boot)?;
                let path = dir.join(EntryName::armed(*slot, *tries).file_name());
                self.ops
                    .write_atomic(&path, render_entry(*slot, 0, boot).as_bytes())?;
            }
            Step::Bless { slot } => {
                let e = self.require_entry(&entries, *slot)?;
                let plain = EntryName::plain(*slot);
                if e.name != plain {
                    self.ops
                        .rename_durable(&self.path_of(e), &dir.join(plain.file_name()))?;
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
                let text = set_version(&String::from_utf8_lossy(&text), top + 1);
                self.ops.write_atomic(&path, text.as_bytes())?;
            }
        }
        Ok(())
    }

    /// SIMULATION of systemd-boot 252 at power-on: sort the entries, boot the first, and rename
    /// a counted entry as the loader does (`+3` → `+2-1`). An entry with no tries left still
    /// boots if it is the only choice, as in the real loader.
    fn loader_boot(&mut self) -> Result<Slot, SlotsError> {
        let (entries, _) = self.loader_entries()?;
        let Some(first) = entries.first() else {
            return Err(SlotsError::NoBootableSlot {
                a: SlotStatus::Unbootable,
                b: SlotStatus::Unbootable,
            });
        };
        let after = first.name.after_boot();
        if after != first.name {
            self.ops.rename_durable(
                &self.path_of(first),
                &self.entries_dir().join(after.file_name()),
            )?;
        }
        Ok(first.name.slot)
    }
}
