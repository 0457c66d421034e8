//! The Tegra backend's inputs: NVIDIA's UEFI variable files (attributes + little-endian value)
//! and our slot ledger. Input: five files (`aperture_fuzz::parts`): `RootfsStatusSlotA`,
//! `RootfsStatusSlotB`, `RootfsRetryCountMax`, `BootChainFwNext` and the ledger (in the state
//! store's `boot` area); an absent file
//! is an unset variable. Never panics; a state that reads, after the firmware simulation
//! writes its variables and ledger, still reads.
#![no_main]

use std::fs;

use aperture_appliance::store::mem::MemMedium;
use aperture_appliance::store::{StateStore, PARTITION_BYTES};
use aperture_appliance::Area;
use aperture_fuzz::{parts, scratch_dir};
use aperture_slots::tegra::{Tegra, VAR_FW_NEXT, VAR_RETRY_COUNT_MAX, VAR_STATUS_A, VAR_STATUS_B};
use aperture_slots::BootControl;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("efivar");
    let [a, b, max, next, ledger] = parts::<5>(data);
    // The ledger lives in the device state store's `boot` area (here in memory).
    let mut store =
        StateStore::new(MemMedium::zeroed(PARTITION_BYTES), "fuzz").expect("an empty store");
    if let Some(bytes) = ledger {
        if store.write(Area::Boot, bytes).is_err() {
            return; // larger than the area holds: refused before any parsing
        }
    }
    let mut tegra = Tegra::new(dir.join("efivars"), Box::new(store));
    let vars = [VAR_STATUS_A, VAR_STATUS_B, VAR_RETRY_COUNT_MAX, VAR_FW_NEXT];
    for (var, content) in vars.into_iter().zip([a, b, max, next]) {
        let path = tegra.variable_path(var);
        let _ = fs::remove_file(&path);
        if let Some(bytes) = content {
            fs::create_dir_all(path.parent().expect("in a folder")).expect("scratch");
            fs::write(&path, bytes).expect("scratch file");
        }
    }
    // A fresh SR_RF each run (the simulation keeps it beside the variables).
    let _ = tegra.simulate_power_loss();
    if tegra.read().is_err() {
        return;
    }
    if tegra.loader_boot().is_ok() {
        tegra
            .read()
            .expect("what the firmware simulation wrote reads back");
    }
});
