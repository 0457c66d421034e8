//! The twin's power-on rules on a small Jetson-named disk made here (no QEMU): the boot image of
//! the chosen chain, retry counts running out and the other chain booting, capsules consumed
//! from the FAT ESP, and what a kernel partition without a bootable image gives.

use std::path::Path;

use aperture_appliance::store::StateStore;
use aperture_gpt::{Guid, Layout, PartitionSpec};
use aperture_slots::tegra::capsule::CapsuleDelivery;
use aperture_slots::{BootControl, SlotBoot, Step};

use super::*;

const MIB: u64 = 1 << 20;

fn tools(test: &str) -> bool {
    aperture_sys::tool::for_test("mcopy", "mtools", test).is_some()
        && aperture_sys::tool::for_test("mkfs.vfat", "dosfstools", test).is_some()
}

/// A kernel with the arm64 Image magic the twin checks for, then `tag`.
fn fake_kernel(tag: &str) -> Vec<u8> {
    let mut k = vec![0u8; 4096];
    k[..2].copy_from_slice(b"MZ");
    k[56..60].copy_from_slice(b"ARM\x64");
    k[64..64 + tag.len()].copy_from_slice(tag.as_bytes());
    k
}

/// A disk with the partitions the twin reads, in NVIDIA's names; each kernel partition holds
/// a boot image whose command line names its slot.
fn make_disk(dir: &Path) -> std::path::PathBuf {
    let parts = [
        ("A_kernel", 4 * MIB),
        ("B_kernel", 4 * MIB),
        ("esp", 40 * MIB),
        ("aperture_state", aperture_appliance::store::PARTITION_BYTES),
    ]
    .iter()
    .map(|(n, s)| PartitionSpec::new(n, Guid::MICROSOFT_BASIC_DATA, Guid::derive("t", n), *s))
    .collect();
    let layout = Layout::new(Guid::derive("t", "disk"), parts);
    let disk = dir.join(DISK);
    let (f, placed) = crate::disk::create(&disk, 64 * MIB, &layout).unwrap();
    for slot in Slot::ALL {
        let k = dir.join(format!("k-{slot}"));
        let r = dir.join(format!("r-{slot}"));
        std::fs::write(&k, fake_kernel(&format!("kernel {slot}"))).unwrap();
        std::fs::write(&r, format!("initrd {slot}")).unwrap();
        let img = dir.join(format!("boot-{slot}.img"));
        crate::jetson::bootimg::write(
            &img,
            &k,
            &r,
            &format!("console=ttyTCU0 aperture.slot={slot}"),
        )
        .unwrap();
        let part = crate::disk::find(&placed, &format!("{}_kernel", slot.letter().to_uppercase()))
            .unwrap();
        crate::disk::write_at(&f, part.offset(), &img, crate::disk::Zeros::Write).unwrap();
    }
    let esp = dir.join("esp.img");
    crate::esp::make(&esp, 40 * MIB, 0x1234, &[], 1, &dir.join("scratch")).unwrap();
    let part = crate::disk::find(&placed, "esp").unwrap();
    crate::disk::write_at(&f, part.offset(), &esp, crate::disk::Zeros::FollowSource).unwrap();
    f.sync_all().unwrap();
    disk
}

/// A twin of an AGX Orin on that disk, with a blank variable store.
fn twin(dir: &Path) -> Twin {
    make_disk(dir);
    std::fs::write(dir.join(VARS), vec![0u8; 4 << 18]).unwrap();
    let info = TwinInfo {
        board: Board::JetsonOrinAgx,
        build: dir.to_path_buf(),
        disk_sha256: "test".into(),
    };
    std::fs::write(dir.join(INFO), serde_json::to_vec(&info).unwrap()).unwrap();
    Twin::open(dir).unwrap()
}

/// What the guest does through efivarfs and the state partition between two power-ons: the
/// device's Tegra backend on the store's variables, then the changes written into the store
/// as the firmware's `SetVariable` would.
fn guest(t: &Twin, f: impl FnOnce(&mut Tegra)) {
    let mut store = varstore::VarStore::open(&t.vars()).unwrap();
    let ex = efivarfs::export(
        &store,
        &t.dir().join("guest-efivars"),
        &[nvidia_guid(), global_guid()],
    )
    .unwrap();
    let disk = disk::TwinDisk::open(&t.disk()).unwrap();
    let ledger = StateStore::new(disk.medium("aperture_state").unwrap(), "state").unwrap();
    let mut tegra = Tegra::new(ex.dir().to_path_buf(), Box::new(ledger));
    f(&mut tegra);
    drop(tegra);
    ex.import(&mut store).unwrap();
    store.save(&t.vars()).unwrap();
}

/// A good boot's `nvbootctrl verify`, as the twin image's stand-in does it: the variable the
/// harness clears SR_RF for at the next power-on.
fn verify(t: &Twin) {
    let mut store = varstore::VarStore::open(&t.vars()).unwrap();
    store.set(VERIFY_VAR, nvidia_guid(), 7, &[1]).unwrap();
    store.save(&t.vars()).unwrap();
}

fn arm(tegra: &mut Tegra, slot: Slot, switch: bool) {
    tegra.persist(&Step::Invalidate { slot }).unwrap();
    let boot = SlotBoot::for_slot(slot, "v2", &format!("aperture.slot={slot}"));
    tegra
        .persist(&Step::Arm {
            slot,
            tries: 3,
            boot,
        })
        .unwrap();
    if switch {
        tegra.persist(&Step::SetNext { slot }).unwrap();
    }
}

#[test]
fn a_fresh_twin_boots_chain_a_from_its_kernel_partition() {
    if !tools("a_fresh_twin_boots_chain_a_from_its_kernel_partition") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut t = twin(d.path());
    let p = t.power_on().unwrap();
    assert_eq!((p.number, p.slot, p.partition), (1, Slot::A, "A_kernel"));
    assert_eq!(
        p.boot.cmdline,
        "console=ttyTCU0 aperture.slot=a console=ttyAMA0"
    );
    assert_eq!(
        std::fs::read(&p.boot.kernel).unwrap(),
        fake_kernel("kernel a")
    );
    assert_eq!(std::fs::read(&p.boot.initrd).unwrap(), b"initrd a");
    assert!(p.changed.is_empty() && p.capsules.is_empty(), "{p}");
    // The blank store was formatted and written, so the firmware finds it as it left it.
    let bytes = std::fs::read(t.vars()).unwrap();
    assert!(!varstore::VarStore::is_blank(&bytes));
    varstore::VarStore::parse(bytes).unwrap();
    let cfg = t.vm_config(&p);
    let line = aperture_sys::cmd::command_line(&cfg.command().unwrap());
    for want in ["-kernel", "-initrd", "-append", "-no-reboot", "virt"] {
        assert!(line.contains(want), "{want}: {line}");
    }
}

#[test]
fn an_armed_chain_is_tried_until_its_retries_run_out_then_the_other_boots() {
    if !tools("an_armed_chain_is_tried_until_its_retries_run_out_then_the_other_boots") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut t = twin(d.path());
    assert_eq!(t.power_on().unwrap().slot, Slot::A);
    guest(&t, |tegra| arm(tegra, Slot::B, true));
    assert_eq!(
        t.nvidia_variable("BootChainFwNext").unwrap(),
        Some(1u32.to_le_bytes().to_vec())
    );
    // B never commits: three tries, each a power-on of chain B.
    for n in 1..=3 {
        let p = t.power_on().unwrap();
        assert_eq!((p.slot, p.partition), (Slot::B, "B_kernel"), "try {n}: {p}");
        assert!(p.boot.cmdline.contains("aperture.slot=b"));
        let after = p.after.as_ref().unwrap();
        assert!(
            matches!(after.b.status, aperture_slots::SlotStatus::Trying { tries_done, .. } if tries_done == n)
                || (n == 3 && after.b.status == aperture_slots::SlotStatus::Bad),
            "try {n}: {p}"
        );
    }
    // Retries used up: B is marked unbootable in the store and chain A boots.
    let p = t.power_on().unwrap();
    assert_eq!(p.slot, Slot::A, "{p}");
    assert!(
        p.changed.contains(&"RootfsStatusSlotB=0xff".to_string()),
        "{p}"
    );
    assert!(
        p.changed.contains(&"BootChainFwNext=0x0".to_string()),
        "{p}"
    );
    assert_eq!(
        t.nvidia_variable("RootfsStatusSlotB").unwrap(),
        Some(0xffu32.to_le_bytes().to_vec())
    );
    assert_eq!(t.power_on().unwrap().slot, Slot::A);

    // A good boot of A (its `nvbootctrl verify` resets the tries) arms B again; B's good boot
    // commits it, and with the reset on every good boot it then boots every time.
    verify(&t);
    guest(&t, |tegra| arm(tegra, Slot::B, true));
    assert_eq!(t.power_on().unwrap().slot, Slot::B);
    guest(&t, |tegra| {
        tegra.persist(&Step::Bless { slot: Slot::B }).unwrap()
    });
    for _ in 0..5 {
        verify(&t);
        let p = t.power_on().unwrap();
        assert_eq!(p.slot, Slot::B, "{p}");
        assert_eq!(
            p.after.as_ref().unwrap().b.status,
            aperture_slots::SlotStatus::Good
        );
    }
}

#[test]
fn a_delivered_capsule_is_consumed_and_switches_the_chain() {
    if !tools("a_delivered_capsule_is_consumed_and_switches_the_chain") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut t = twin(d.path());
    t.power_on().unwrap();
    // The updater arms B without switching and delivers a capsule on the ESP.
    guest(&t, |tegra| {
        arm(tegra, Slot::B, false);
        CapsuleDelivery::new(
            d.path().join("unused-esp"),
            tegra.efivars_dir().to_path_buf(),
        )
        .request()
        .unwrap();
    });
    let disk = disk::TwinDisk::open(&t.disk()).unwrap();
    let esp = disk.partition("esp").unwrap().offset;
    let img = format!("{}@@{esp}", t.disk().display());
    let cap = d.path().join("TEGRA_BL.Cap");
    std::fs::write(&cap, b"capsule").unwrap();
    for (program, args) in [
        (
            "mmd",
            vec!["::/EFI".to_string(), "::/EFI/UpdateCapsule".into()],
        ),
        (
            "mcopy",
            vec![
                cap.display().to_string(),
                "::/EFI/UpdateCapsule/TEGRA_BL.Cap".into(),
            ],
        ),
    ] {
        aperture_sys::Cmd::new(program)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .args(args)
            .run()
            .unwrap();
    }
    let p = t.power_on().unwrap();
    assert_eq!(p.capsules, ["TEGRA_BL.Cap"], "{p}");
    assert_eq!(p.slot, Slot::B, "the capsule switched the chain: {p}");
    let left = crate::esp::list(&t.disk(), esp).unwrap();
    assert!(
        !left.iter().any(|f| f.ends_with("TEGRA_BL.Cap")),
        "{left:?}"
    );
    let store = varstore::VarStore::open(&t.vars()).unwrap();
    let ind = store.get("OsIndications", global_guid()).unwrap();
    assert_eq!(u64::from_le_bytes(ind.data[..8].try_into().unwrap()) & 4, 0);
    // Nothing left to apply: the next power-on changes nothing about capsules.
    assert!(t.power_on().unwrap().capsules.is_empty());
}

#[test]
fn a_kernel_partition_without_a_bootable_image_is_named() {
    if !tools("a_kernel_partition_without_a_bootable_image_is_named") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut t = twin(d.path());
    let disk = disk::TwinDisk::open(&t.disk()).unwrap();
    let b = disk.partition("B_kernel").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(t.disk())
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0u8; 4096], b.offset).unwrap();
    guest(&t, |tegra| arm(tegra, Slot::B, true));
    let e = t.power_on().unwrap_err();
    assert!(matches!(e, TwinError::NoBootImage { .. }), "{e}");
    assert!(e.to_string().contains("B_kernel"), "{e}");

    // A placeholder kernel (the synthetic BSP's) is refused with what to do.
    let a = disk.partition("A_kernel").unwrap();
    let k = d.path().join("k");
    std::fs::write(&k, b"SYNTHETIC placeholder kernel").unwrap();
    let img = d.path().join("bad.img");
    crate::jetson::bootimg::write(&img, &k, &k, "x").unwrap();
    crate::disk::write_at(&f, a.offset, &img, crate::disk::Zeros::Write).unwrap();
    guest(&t, |tegra| {
        tegra.persist(&Step::SetNext { slot: Slot::A }).unwrap()
    });
    let e = t.power_on().unwrap_err();
    assert!(matches!(e, TwinError::NotAKernel { .. }), "{e}");
    assert!(e.to_string().contains("twin"), "{e}");
}

#[test]
fn sr_rf_survives_warm_reboots_until_nvbootctrl_verify_or_a_power_cut() {
    if !tools("sr_rf_survives_warm_reboots_until_nvbootctrl_verify_or_a_power_cut") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut t = twin(d.path());
    // Without the reset, warm reboots of the committed slot A use up its tries; the fourth
    // power-on marks A unbootable and boots B (the bug NVIDIA's service exists for).
    for n in 1..=3 {
        assert_eq!(t.power_on().unwrap().slot, Slot::A, "boot {n}");
    }
    let p = t.power_on().unwrap();
    assert_eq!(p.slot, Slot::B, "{p}");
    assert!(
        p.changed.contains(&"RootfsStatusSlotA=0xff".to_string()),
        "{p}"
    );

    // The same with a verify on every good boot: A boots ten times, and the variable the
    // stand-in writes is gone after each power-on.
    let d = tempfile::tempdir().unwrap();
    let mut t = twin(d.path());
    for n in 1..=10 {
        let p = t.power_on().unwrap();
        assert_eq!(p.slot, Slot::A, "boot {n}: {p}");
        assert!(t.nvidia_variable(VERIFY_VAR).unwrap().is_none());
        verify(&t);
    }

    // A power cut loses the register: three more warm boots of A without any verify.
    t.power_cut().unwrap();
    for n in 1..=3 {
        assert_eq!(
            t.power_on().unwrap().slot,
            Slot::A,
            "after the cut, boot {n}"
        );
    }
    assert_eq!(t.power_on().unwrap().slot, Slot::B);
}
