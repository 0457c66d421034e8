//! The updater on Jetson boards, against a GPT disk file with NVIDIA's partition names and a
//! folder laid out like efivarfs: the rootfs goes to `APP`/`APP_b`, an Android boot image to the
//! boot chain's kernel partition, the device tree to its kernel-dtb partition, and the Tegra
//! UEFI variables switch slots. A boot-firmware capsule is delivered on the ESP with the
//! `OsIndications` bit, and then the updater leaves the chain switch to the firmware.
//!
//! The firmware is simulated by `Tegra::loader_boot` (retry counts, 0xFF, capsule processing).

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_slots::tegra::bootimg;
use aperture_slots::tegra::capsule::{CapsuleDelivery, CAPSULE_DIR};
use aperture_slots::{BootControl, Slot, SlotLayout, Tegra};
use aperture_trust::manifest::{Role, Sha256Hex};
use aperture_trust::verity::verify_device;
use aperture_updater::disk::{Disk, FileDisk, PartitionReader};
use aperture_updater::io::{FaultIo, Io};
use aperture_updater::{InstallOptions, Paths, UpdateError, Updater};
use common::*;

const ORIN: &str = "jetson-orin-agx";
const XAVIER: &str = "jetson-xavier-agx";
const KERNEL_PART: u64 = 1 << 20;
const DTB_PART: u64 = 1 << 20;
const CAPSULE: &str = "TEGRA_BL.Cap";

/// A Jetson image: rootfs, kernel, initrd, device tree and, if asked, a capsule.
fn jetson(board: &str, version: &str, sv: u64, seed: u64, capsule: bool) -> Image {
    let mut extra = vec![("kernel.dtb", Role::Dtb, random(40_000, seed + 300))];
    if capsule {
        extra.push((CAPSULE, Role::Capsule, random(60_000, seed + 400)));
    }
    image_for(board, version, sv, seed, &keys(), DATA_SIZE, &extra, |m| {
        m.boot = Some(aperture_trust::manifest::BootInfo {
            cmdline: "console=ttyTCU0,115200".into(),
        })
    })
}

fn dtb(image: &Image) -> Vec<u8> {
    payload(image, Role::Dtb)
}

/// The decoded content of an extra payload.
fn payload(image: &Image, role: Role) -> Vec<u8> {
    let a = image
        .manifest
        .artifacts
        .iter()
        .find(|a| a.role == role)
        .unwrap();
    let (_, z) = image
        .payloads
        .iter()
        .find(|(n, _)| n == a.name.as_str())
        .unwrap();
    zstd::decode_all(&z[..]).unwrap()
}

/// A file-backed Jetson in a temp folder, flashed with `factory` in both slots, running A.
struct Jetson {
    _dir: tempfile::TempDir,
    paths: Paths,
    disk_path: PathBuf,
    layout: SlotLayout,
}

impl Jetson {
    fn new(board: &str, factory: &Image) -> Jetson {
        Jetson::with_kernel_partition(board, factory, KERNEL_PART)
    }

    fn with_kernel_partition(board: &str, factory: &Image, kernel_part: u64) -> Jetson {
        let layout = board
            .parse::<aperture_appliance::Board>()
            .unwrap()
            .slot_layout();
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::rooted(dir.path());
        let disk_path = dir.path().join("disk.img");
        let ns = "snakeoil-jetson";
        let mut parts = Vec::new();
        let mut add = |name: String, size: u64| {
            let ty = if name == "esp" {
                Guid::EFI_SYSTEM
            } else {
                Guid::LINUX_FILESYSTEM
            };
            let g = Guid::derive(ns, &name);
            parts.push(PartitionSpec::new(&name, ty, g, size));
        };
        // NVIDIA's order: APP, APP_b, then each chain's kernel and kernel-dtb, then the ESP.
        for slot in Slot::ALL {
            add(layout.rootfs(slot), SLOT_SIZE);
        }
        for slot in Slot::ALL {
            add(layout.kernel(slot).unwrap(), kernel_part);
            add(layout.kernel_dtb(slot).unwrap(), DTB_PART);
        }
        add("esp".into(), 1 << 20);
        parts.push(state_partition(ns));
        let size = 2 * SLOT_SIZE
            + 2 * (kernel_part + DTB_PART)
            + aperture_appliance::store::PARTITION_BYTES
            + (4 << 20);
        let mut f = fs::File::create(&disk_path).unwrap();
        f.set_len(size).unwrap();
        write_gpt(&mut f, size, &Layout::new(Guid::derive(ns, "disk"), parts)).unwrap();
        drop(f);
        let dev = Jetson {
            _dir: dir,
            paths,
            disk_path,
            layout,
        };
        fs::create_dir_all(dev.paths.build_facts.parent().unwrap()).unwrap();
        fs::create_dir_all(dev.paths.cmdline.parent().unwrap()).unwrap();
        fs::create_dir_all(&dev.paths.efivars).unwrap();
        fs::create_dir_all(&dev.paths.esp).unwrap();
        keys().root.public().save(&dev.paths.root_key).unwrap();
        for slot in Slot::ALL {
            dev.flash_slot(slot, factory);
        }
        dev.set_running(Slot::A, factory);
        dev
    }

    /// Write `image` into `slot` as NVIDIA's flashing tools would (boot image made here).
    fn flash_slot(&self, slot: Slot, image: &Image) {
        let disk = self.disk();
        let write = |name: String, bytes: &[u8]| {
            let mut p = disk.open(&name).unwrap();
            p.write_all_at(bytes, 0).unwrap();
            p.sync().unwrap();
        };
        write(self.layout.rootfs(slot), &image.rootfs);
        let l = bootimg::Layout::new(image.kernel.len() as u64, image.initrd.len() as u64).unwrap();
        let mut boot = vec![0u8; l.image_size() as usize];
        let h = bootimg::header(l.kernel_size, l.ramdisk_size, &cmdline(image, slot)).unwrap();
        boot[..h.len()].copy_from_slice(&h);
        let k = l.kernel_offset() as usize;
        boot[k..k + image.kernel.len()].copy_from_slice(&image.kernel);
        let r = l.ramdisk_offset() as usize;
        boot[r..r + image.initrd.len()].copy_from_slice(&image.initrd);
        let kernel = self.layout.kernel(slot).unwrap();
        // The refusal test's too-small kernel partition cannot hold the factory boot image
        // either; it needs only the partition's size.
        if (boot.len() as u64) <= disk.open(&kernel).unwrap().size() {
            write(kernel, &boot);
        }
        write(self.layout.kernel_dtb(slot).unwrap(), &dtb(image));
        let mut store = open_store(&disk, self.board());
        aperture_updater::store::write_slot(&mut store, slot, &image.installed()).unwrap();
    }

    fn board(&self) -> aperture_appliance::Board {
        match self.layout {
            SlotLayout::Tegra(aperture_appliance::ChainNaming::Prefix) => {
                aperture_appliance::Board::JetsonOrinAgx
            }
            _ => aperture_appliance::Board::JetsonXavierAgx,
        }
    }

    fn disk(&self) -> FileDisk {
        FileDisk::new(&self.disk_path)
    }

    fn set_running(&self, slot: Slot, image: &Image) {
        fs::write(&self.paths.cmdline, cmdline(image, slot)).unwrap();
        let json = serde_json::to_vec_pretty(&image.facts()).unwrap();
        fs::write(&self.paths.build_facts, json).unwrap();
    }

    fn backend(&self) -> Tegra {
        let ledger = open_store(&self.disk(), self.board());
        Tegra::new(self.paths.efivars.clone(), Box::new(ledger))
            .with_capsules(self.paths.esp.clone())
            .with_simulated_retry_reset()
    }

    fn updater(&self, booted: Slot) -> Updater {
        Updater::new(
            self.paths.clone(),
            Box::new(self.disk()),
            Box::new(self.backend()),
            booted,
        )
        .with_clock(|| NOW)
    }

    fn updater_with_io(&self, booted: Slot, io: Arc<dyn Io>) -> Updater {
        self.updater(booted).with_io(io)
    }

    /// Power on: the simulated Jetson firmware picks a slot.
    fn boot(&self) -> Slot {
        self.backend().loader_boot().unwrap()
    }

    fn var(&self, name: &str) -> Option<u32> {
        let p = self.backend().variable_path(name);
        fs::read(p)
            .ok()
            .map(|b| u32::from_le_bytes(b[4..8].try_into().unwrap()))
    }

    fn delivery(&self) -> CapsuleDelivery {
        CapsuleDelivery::new(self.paths.esp.clone(), self.paths.efivars.clone())
    }

    fn read(&self, name: &str, offset: u64, len: usize) -> Vec<u8> {
        let p = self.disk().open(name).unwrap();
        let mut buf = vec![0u8; len];
        p.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    fn whole(&self, name: &str) -> Sha256Hex {
        let size = self.disk().open(name).unwrap().size() as usize;
        Sha256Hex::digest(&self.read(name, 0, size))
    }

    /// Hashes of slot `slot`'s three partitions.
    fn slot_hashes(&self, slot: Slot) -> [Sha256Hex; 3] {
        [
            self.whole(&self.layout.rootfs(slot)),
            self.whole(&self.layout.kernel(slot).unwrap()),
            self.whole(&self.layout.kernel_dtb(slot).unwrap()),
        ]
    }

    /// `slot` holds `image`: verity over the rootfs partition, a boot image whose header names
    /// the slot, its partition and root hash, with the image's kernel and initrd, and the
    /// device tree.
    fn assert_slot_holds(&self, slot: Slot, image: &Image) {
        let part = self.disk().open(&self.layout.rootfs(slot)).unwrap();
        verify_device(
            PartitionReader::new(&*part, image.rootfs.len() as u64),
            &image.verity,
        )
        .unwrap_or_else(|e| panic!("slot {slot} does not verify: {e}"));
        let kernel = self.layout.kernel(slot).unwrap();
        let h = bootimg::parse_header(&self.read(&kernel, 0, 2048))
            .unwrap_or_else(|| panic!("{kernel} holds no boot image"));
        assert_eq!(h.cmdline, cmdline(image, slot), "{kernel}");
        let l = h.layout();
        assert_eq!(
            self.read(&kernel, l.kernel_offset(), image.kernel.len()),
            image.kernel,
            "{kernel}: kernel"
        );
        assert_eq!(
            self.read(&kernel, l.ramdisk_offset(), image.initrd.len()),
            image.initrd,
            "{kernel}: initrd"
        );
        let d = dtb(image);
        assert_eq!(
            self.read(&self.layout.kernel_dtb(slot).unwrap(), 0, d.len()),
            d,
            "device tree of slot {slot}"
        );
    }
}

/// The kernel command line of `slot` for `image`, as the image builder makes it.
fn cmdline(image: &Image, slot: Slot) -> String {
    let layout = image
        .board
        .parse::<aperture_appliance::Board>()
        .unwrap()
        .slot_layout();
    aperture_slots::cmdline::slot_boot(
        PRODUCT,
        &image.version,
        "console=ttyTCU0,115200",
        layout,
        slot,
        image.verity.root_hash.as_str(),
        image.verity.hash_offset,
    )
    .options
    .unwrap_or_default()
}

#[test]
fn orin_install_writes_app_b_its_boot_image_and_device_tree_then_commits() {
    let v1 = jetson(ORIN, "1.0.0", 1, 1, false);
    let v2 = jetson(ORIN, "2.0.0", 2, 2, false);
    let dev = Jetson::new(ORIN, &v1);
    let a_before = dev.slot_hashes(Slot::A);

    let done = dev
        .updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(done.target, Slot::B);
    dev.assert_slot_holds(Slot::B, &v2);
    assert_eq!(
        dev.slot_hashes(Slot::A),
        a_before,
        "APP, A_kernel and A_kernel-dtb are never written"
    );
    let c = cmdline(&v2, Slot::B);
    assert!(
        c.contains("aperture.verity.data=PARTLABEL=APP_b ") && c.contains("aperture.slot=b"),
        "{c}"
    );
    // NVIDIA's variables: B normal again, tries set, B boots next.
    assert_eq!(dev.var("RootfsStatusSlotB"), Some(0));
    assert_eq!(dev.var("RootfsRetryCountMax"), Some(3));
    assert_eq!(dev.var("BootChainFwNext"), Some(1));
    assert!(!dev.delivery().requested().unwrap());
    // The boot ledger is in the state store, not on the ESP.
    let ledger: serde_json::Value = open_store(&dev.disk(), dev.board())
        .read_json(aperture_appliance::Area::Boot)
        .unwrap()
        .expect("the Tegra ledger is in the store");
    assert_eq!(ledger["b"]["phase"], "trying", "{ledger}");
    assert!(!dev.paths.esp.join("aperture/tegra-slots.json").exists());

    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    let mut on_b = dev.updater(Slot::B);
    on_b.commit().unwrap();
    let st = on_b.status().unwrap();
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["committed"], "b", "{json}");
    assert_eq!(json["security_floor"], 2, "{json}");
    assert_eq!(dev.boot(), Slot::B, "a committed slot keeps booting");
}

#[test]
fn xavier_install_uses_the_suffix_names() {
    let v1 = jetson(XAVIER, "1.0.0", 1, 1, false);
    let v2 = jetson(XAVIER, "2.0.0", 2, 2, false);
    let dev = Jetson::new(XAVIER, &v1);
    let a_before = dev.slot_hashes(Slot::A);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.layout.kernel(Slot::B).unwrap(), "kernel_b");
    dev.assert_slot_holds(Slot::B, &v2);
    assert_eq!(dev.slot_hashes(Slot::A), a_before);
    assert_eq!(dev.boot(), Slot::B);
}

#[test]
fn a_capsule_is_delivered_on_the_esp_and_the_firmware_switches_the_chain() {
    let v1 = jetson(ORIN, "1.0.0", 1, 1, false);
    let v2 = jetson(ORIN, "2.0.0", 2, 2, true);
    let dev = Jetson::new(ORIN, &v1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    dev.assert_slot_holds(Slot::B, &v2);
    let capsule = dev.paths.esp.join(CAPSULE_DIR).join(CAPSULE);
    assert_eq!(fs::read(&capsule).unwrap(), payload(&v2, Role::Capsule));
    assert!(dev.delivery().requested().unwrap(), "OsIndications bit 2");
    // Armed (B normal, tries set) but the next boot chain is left to the firmware.
    assert_eq!(dev.var("RootfsStatusSlotB"), Some(0));
    assert_eq!(
        dev.var("BootChainFwNext"),
        None,
        "the updater must not set the next boot chain when it delivers a capsule"
    );
    assert!(
        !dev.paths
            .slot_dir(Slot::B)
            .join("TEGRA_BL.Cap.tmp")
            .exists(),
        "the staged capsule moved"
    );

    // Power on: the firmware applies the capsule, switches to chain B and boots it.
    assert_eq!(dev.boot(), Slot::B);
    assert!(!capsule.exists());
    assert!(!dev.delivery().requested().unwrap());
    dev.set_running(Slot::B, &v2);
    dev.updater(Slot::B).commit().unwrap();
    assert_eq!(dev.boot(), Slot::B);
}

#[test]
fn failed_boots_leave_b_unbootable_a_boots_and_a_reinstall_clears_0xff() {
    let v1 = jetson(ORIN, "1.0.0", 1, 1, false);
    let v2 = jetson(ORIN, "2.0.0", 2, 2, false);
    let dev = Jetson::new(ORIN, &v1);
    let opts = InstallOptions {
        source: None,
        ..InstallOptions::update(2)
    };
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &opts)
        .unwrap();
    // v2 never passes its health gate: two tries, then the firmware gives up on B.
    assert_eq!(dev.boot(), Slot::B);
    assert_eq!(dev.boot(), Slot::B);
    assert_eq!(dev.boot(), Slot::A, "after its tries B is skipped");
    assert_eq!(dev.var("RootfsStatusSlotB"), Some(0xFF));
    assert_eq!(dev.var("BootChainFwNext"), Some(0));
    dev.set_running(Slot::A, &v1);
    let status = serde_json::to_value(dev.updater(Slot::A).status().unwrap()).unwrap();
    assert!(status.to_string().contains("2.0.0"), "{status}");
    // A's health gate passes: committed again, the firmware's count reset.
    dev.updater(Slot::A).commit().unwrap();

    // Nothing but the updater clears 0xFF: a fixed v3 installs into B and boots.
    let v3 = jetson(ORIN, "3.0.0", 2, 3, false);
    dev.updater(Slot::A)
        .install(&mut &v3.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.var("RootfsStatusSlotB"), Some(0));
    assert_eq!(dev.boot(), Slot::B);
    dev.assert_slot_holds(Slot::B, &v3);
}

#[test]
fn jetson_bundles_missing_a_device_tree_or_too_large_are_refused_before_any_write() {
    let v1 = jetson(ORIN, "1.0.0", 1, 1, false);
    // The qemu-shaped bundle (no device tree) for this board.
    let no_dtb = image_for(ORIN, "2.0.0", 2, 2, &keys(), DATA_SIZE, &[], |_| {});
    let dev = Jetson::new(ORIN, &v1);
    let before = [dev.slot_hashes(Slot::A), dev.slot_hashes(Slot::B)];
    let err = dev
        .updater(Slot::A)
        .install(&mut &no_dtb.bundle[..], &InstallOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Unsupported { .. })
            && aperture_updater::error_chain(&err).contains("Dtb"),
        "{err}"
    );
    assert_eq!([dev.slot_hashes(Slot::A), dev.slot_hashes(Slot::B)], before);
    assert_eq!(
        dev.var("RootfsStatusSlotB"),
        None,
        "B was never invalidated"
    );

    // A kernel partition too small for the boot image (kernel + initrd is 350 kB).
    let v2 = jetson(ORIN, "2.0.0", 2, 2, false);
    let small = Jetson::with_kernel_partition(ORIN, &v1, 256 << 10);
    let err = small
        .updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, UpdateError::TooLarge { slot: Slot::B, .. }) && msg.contains("B_kernel"),
        "{msg}"
    );
    assert_eq!(small.var("RootfsStatusSlotB"), None);
}

#[test]
fn power_cut_at_every_operation_of_a_capsule_install() {
    let v1 = jetson(ORIN, "1.0.0", 1, 1, false);
    let v2 = jetson(ORIN, "2.0.0", 2, 2, true);

    let counting = FaultIo::counting();
    {
        let dev = Jetson::new(ORIN, &v1);
        dev.updater_with_io(Slot::A, Arc::new(counting.clone()))
            .install(&mut &v2.bundle[..], &InstallOptions::default())
            .unwrap();
    }
    let n = counting.ops();
    let log = counting.log();
    eprintln!("crash points: {n}");
    for line in &log {
        eprintln!("  {line}");
    }
    let pos = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {log:#?}"))
    };
    // The documented order: cancel, invalidate, blank header, stream, header, arm, deliver.
    assert!(pos("cancel pending capsule") < pos("mark slot b unbootable"));
    assert!(pos("mark slot b unbootable") < pos("of B_kernel"));
    assert!(pos("arm slot b") < pos(&format!("{CAPSULE}.tmp ->")));
    assert!(pos(&format!("{CAPSULE}.tmp ->")) < pos("request capsule delivery"));
    assert!(
        !log.iter().any(|l| l.contains("boot slot b next")),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("of APP ") || l.contains("A_kernel")),
        "slot A is never written: {log:#?}"
    );

    let mut new_running_after_cut = 0;
    for at in 1..=n {
        for lose_unsynced in [true, false] {
            let case = format!("power cut at operation {at} (lose unsynced: {lose_unsynced})");
            let dev = Jetson::new(ORIN, &v1);
            let fault = FaultIo::crash_at(at);
            let err = dev
                .updater_with_io(Slot::A, Arc::new(fault.clone()))
                .install(&mut &v2.bundle[..], &InstallOptions::default())
                .expect_err(&case);
            assert!(fault.crashed_at().is_some(), "{case}: {err}");
            fault.power_cut(&dev.disk(), lose_unsynced).unwrap();

            // Power on: A with v1, or B fully holding v2.
            let booted = dev.boot();
            let running = match booted {
                Slot::A => {
                    dev.assert_slot_holds(Slot::A, &v1);
                    &v1
                }
                Slot::B => {
                    dev.assert_slot_holds(Slot::B, &v2);
                    new_running_after_cut += 1;
                    &v2
                }
            };
            dev.set_running(booted, running);
            if booted == Slot::A {
                // The health gate of that boot: A is committed again (the firmware's count
                // reset), then the install is restarted.
                dev.updater(Slot::A).commit().unwrap();
                dev.updater(Slot::A)
                    .install(&mut &v2.bundle[..], &InstallOptions::default())
                    .unwrap_or_else(|e| panic!("{case}: the second install failed: {e}"));
                assert_eq!(dev.boot(), Slot::B, "{case}");
                dev.set_running(Slot::B, &v2);
            }
            dev.assert_slot_holds(Slot::B, &v2);
            dev.updater(Slot::B).commit().unwrap();
            assert_eq!(dev.boot(), Slot::B, "{case}");
            assert!(
                dev.delivery().pending().unwrap().is_empty(),
                "{case}: no capsule left behind"
            );
        }
    }
    // Only a cut after the delivery bit was set boots the new slot.
    assert!(new_running_after_cut > 0 && new_running_after_cut < 2 * n);
}

/// The health gate's commit resets the firmware's retry count on every good boot: ten warm
/// reboots of the committed new slot, each followed by `Updater::commit`, keep booting it, on
/// Orin and Xavier; without the commits the firmware gives up on it after its tries and boots
/// the old slot.
#[test]
fn ten_warm_reboots_each_followed_by_the_commit_keep_booting_the_committed_slot() {
    for board in [ORIN, XAVIER] {
        let v1 = jetson(board, "1.0.0", 1, 1, false);
        let v2 = jetson(board, "2.0.0", 2, 2, false);
        let dev = Jetson::new(board, &v1);
        dev.updater(Slot::A)
            .install(&mut &v2.bundle[..], &InstallOptions::default())
            .unwrap();
        dev.set_running(Slot::B, &v2);
        for reboot in 1..=10 {
            assert_eq!(dev.boot(), Slot::B, "{board}: reboot {reboot}");
            let c = dev.updater(Slot::B).commit().unwrap();
            assert_eq!(c.tries_not_reset, None, "{c}");
        }
        assert_eq!(dev.var("RootfsStatusSlotB"), Some(0));
        // No commit any more: three more boots, then the firmware gives up on B.
        let seen: Vec<Slot> = (0..4).map(|_| dev.boot()).collect();
        assert_eq!(seen, [Slot::B, Slot::B, Slot::B, Slot::A], "{board}");
        assert_eq!(dev.var("RootfsStatusSlotB"), Some(0xFF));
    }
}

/// On the appliance the reset is NVIDIA's `nvbootctrl verify` (under the root the updater is
/// given); when it cannot run, the commit still commits and raises the floor, and says loudly
/// that the tries were not reset.
#[test]
fn the_device_commit_runs_nvbootctrl_verify_and_reports_when_it_cannot() {
    let v1 = jetson(ORIN, "1.0.0", 1, 1, false);
    let v2 = jetson(ORIN, "2.0.0", 2, 2, false);
    let dev = Jetson::new(ORIN, &v1);
    dev.updater(Slot::A)
        .install(&mut &v2.bundle[..], &InstallOptions::default())
        .unwrap();
    assert_eq!(dev.boot(), Slot::B);
    dev.set_running(Slot::B, &v2);
    // No nvbootctrl in the image.
    let mut u = Updater::on_disk(dev.paths.clone(), Box::new(dev.disk()))
        .unwrap()
        .with_clock(|| NOW);
    let c = u.commit().unwrap();
    let why = c.tries_not_reset.clone().expect("reported");
    assert!(why.contains("usr/sbin/nvbootctrl verify"), "{why}");
    assert!(c.to_string().contains("NOT RESET"), "{c}");
    assert_eq!(
        (c.security_floor, c.was),
        (
            2,
            aperture_slots::SlotStatus::Trying {
                tries_left: 2,
                tries_done: 1
            }
        )
    );
    // NVIDIA's tool, as a stand-in that clears the simulated register as `verify` does.
    let tool = dev
        .paths
        .files()
        .path(aperture_slots::tegra::retry::NVBOOTCTRL);
    fs::create_dir_all(tool.parent().unwrap()).unwrap();
    let register = dev.backend().simulated_register();
    let log = dev.paths.files().path("nvbootctrl.log");
    fs::write(
        &tool,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n[ \"$1\" = verify ] && rm -f {}\n",
            log.display(),
            register.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..5 {
        assert_eq!(dev.boot(), Slot::B);
        let c = Updater::on_disk(dev.paths.clone(), Box::new(dev.disk()))
            .unwrap()
            .with_clock(|| NOW)
            .commit()
            .unwrap();
        assert_eq!(c.tries_not_reset, None, "{c}");
    }
    assert_eq!(fs::read_to_string(&log).unwrap(), "verify\n".repeat(5));
}
