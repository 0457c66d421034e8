//! The Tegra backend's inputs: NVIDIA's UEFI variable files (attributes + little-endian value)
//! and our slot ledger. Input: five files (`aperture_fuzz::parts`): `RootfsStatusSlotA`,
//! `RootfsStatusSlotB`, `RootfsRetryCountMax`, `BootChainFwNext` and the ledger; an absent file
//! is an unset variable. Never panics; a state that reads, after the firmware simulation
//! writes its variables and ledger, still reads.
#![no_main]

use std::fs;

use aperture_fuzz::{parts, scratch_dir};
use aperture_slots::tegra::{Tegra, VAR_FW_NEXT, VAR_RETRY_COUNT_MAX, VAR_STATUS_A, VAR_STATUS_B};
use aperture_slots::BootControl;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("efivar");
    let mut tegra = Tegra::new(dir.join("efivars"), dir.join("state"));
    let files = [VAR_STATUS_A, VAR_STATUS_B, VAR_RETRY_COUNT_MAX, VAR_FW_NEXT]
        .map(|v| tegra.variable_path(v))
        .into_iter()
        .chain([tegra.state_file()]);
    for (path, content) in files.zip(parts::<5>(data)) {
        let _ = fs::remove_file(&path);
        if let Some(bytes) = content {
            fs::create_dir_all(path.parent().expect("in a folder")).expect("scratch");
            fs::write(&path, bytes).expect("scratch file");
        }
    }
    if tegra.read().is_err() {
        return;
    }
    if tegra.loader_boot().is_ok() {
        tegra
            .read()
            .expect("what the firmware simulation wrote reads back");
    }
});
