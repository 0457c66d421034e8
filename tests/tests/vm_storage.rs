//! Tier 3, data at rest and factory reset, on one appliance through its life: the first boot
//! formats and seals config and data (after a power cut in the middle of it); a boot without
//! its TPM opens nothing and touches nothing, nor does a boot with Secure Boot turned off (the
//! keys are sealed to the signed boot chain, issue 18; `--full` adds a firmware with another
//! db); level 1 re-verifies the running slot, then
//! refuses a corrupted one (and a zeroed primary LUKS2 header is repaired on the way). With
//! `--full`: level 2 (cut in the middle too) puts the factory image back into both slots and
//! keeps the data; level 3 leaves no trace of the customer's data anywhere on the disk.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use aperture_image::recipe::Arch;
use aperture_image::secure_boot::VarsMode;
use aperture_tests::http::{FileServer, GUEST_SERVER_PORT};
use aperture_tests::powercut::markers;
use aperture_tests::scenario::{
    after, cut_after, file_contains, line_of, random_hex, Scenario, Script,
};
use aperture_tests::{require_root, stop_unless_full, vm_v1, BOOT_TIMEOUT};

/// The offset and size of partition `name` in the disk image `disk`.
fn partition(disk: &std::path::Path, name: &str) -> (u64, u64) {
    let mut f = std::fs::File::open(disk).unwrap();
    let size = f.metadata().unwrap().len();
    let gpt = aperture_gpt::read_gpt(&mut f, size).unwrap();
    let p = gpt
        .find(name)
        .unwrap_or_else(|| panic!("no partition {name} in {}", disk.display()));
    (p.offset(), p.size())
}

/// Whether partition `name` of `disk` starts with exactly the bytes of `image`.
fn partition_holds(disk: &std::path::Path, name: &str, image: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let (offset, _) = partition(disk, name);
    let mut d = std::fs::File::open(disk).unwrap();
    d.seek(SeekFrom::Start(offset)).unwrap();
    let mut i = std::fs::File::open(image).unwrap();
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = i.read(&mut a).unwrap();
        if n == 0 {
            return true;
        }
        d.read_exact(&mut b[..n]).unwrap();
        if a[..n] != b[..n] {
            return false;
        }
    }
}

/// sha256 of partition `name` of `disk`.
fn partition_sha256(disk: &std::path::Path, name: &str) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let (offset, size) = partition(disk, name);
    let mut f = std::fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut r = aperture_trust::digest::HashingReader::new(f.take(size));
    std::io::copy(&mut r, &mut std::io::sink()).expect("hashing a partition");
    r.digest().to_string()
}

/// The hashes of what a refused boot must not touch: config, data and the device state.
fn encrypted_partitions_sha256(disk: &std::path::Path) -> [String; 3] {
    ["config", "data", "aperture_state"].map(|p| partition_sha256(disk, p))
}

/// After a boot whose storage refused to open anything: power off, and check that the test
/// hook never ran and that config, data and the device state hash as `before`.
fn stopped_with_nothing_touched(
    mut vm: aperture_image::qemu::Vm,
    disk: &std::path::Path,
    before: &[String; 3],
    what: &str,
) {
    std::thread::sleep(Duration::from_secs(3));
    vm.kill();
    assert!(
        !vm.console().contains("APERTURE-CRYPT-"),
        "{what}: the hook must not have run with storage down"
    );
    assert_eq!(
        before,
        &encrypted_partitions_sha256(disk),
        "a boot {what} changed the encrypted partitions or the device state"
    );
}

/// Flip bytes in the middle of slot A's data (which booting does not read) on the host.
fn corrupt_slot_a(disk: &std::path::Path, rootfs: &std::path::Path) {
    let (offset, _) = partition(disk, "rootfs_a");
    let len = std::fs::metadata(rootfs).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(disk)
        .unwrap();
    for k in 3..=5u64 {
        let at = offset + (len * k / 10) / 4096 * 4096 + 1000;
        let mut b = [0u8; 16];
        f.read_exact_at(&mut b, at).unwrap();
        for x in &mut b {
            *x ^= 0xa5;
        }
        f.write_all_at(&b, at).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
#[ignore = "VM tier: needs root, QEMU, swtpm and a built image (run by `cargo xtask test` as root)"]
fn storage_and_reset_through_an_appliances_life() {
    require_root("storage_and_reset_through_an_appliances_life");
    let image = vm_v1().unwrap();
    let rootfs = image.paths.out.join("rootfs.img");
    let mut sc = Scenario::new(
        "storage-reset",
        &image.paths.out.join("disk.img"),
        Arch::Amd64,
    )
    .unwrap();
    let www = sc.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();
    let port = GUEST_SERVER_PORT.to_string();
    // Made here, written only inside the guest onto the encrypted data volume.
    let canary = format!("aperture-canary-{}", random_hex(24));
    assert!(!file_contains(&sc.disk, &canary).unwrap());
    let show = || Script::new().piece("storage-show", &[]).unwrap();

    // Boot 1: the first boot starts formatting and sealing both volumes, and the power is cut
    // two seconds into formatting data.
    let mut vm = sc.boot("first-cut", None).unwrap();
    cut_after(
        &mut vm,
        markers::FORMAT_DATA,
        Duration::from_secs(2),
        BOOT_TIMEOUT,
    )
    .unwrap();
    eprintln!("POWER CUT 2 s into formatting data on the first boot");

    // Boot 2: the first boot's formatting is finished from its journal; the canary goes onto
    // /data; then level 1 re-verifies slot A, the running known-good slot, and boots it again.
    let s = show()
        .piece("canary-write", &[("CANARY", &canary)])
        .and_then(|s| s.piece("reset", &[("LEVEL", "1")]))
        .unwrap();
    let t = Instant::now();
    let mut vm = sc.boot("first-finished", Some(&s)).unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("first boot status line after {:.0?}: {status}", t.elapsed());
    assert!(
        status.contains("slot=a") && status.contains("verity=yes"),
        "{status}"
    );
    for v in ["config", "data"] {
        let line = vm
            .wait_for(&format!("APERTURE-CRYPT-{v} "), BOOT_TIMEOUT)
            .unwrap();
        assert!(
            line.contains(&format!("/dev/mapper/aperture-{v} is active"))
                && line.contains("type: LUKS2"),
            "{line}"
        );
    }
    let uuid1 = after(
        &vm.wait_for("APERTURE-UUID ", BOOT_TIMEOUT).unwrap(),
        "APERTURE-UUID ",
    );
    let keys = vm.wait_for("APERTURE-KEYS ", BOOT_TIMEOUT).unwrap();
    assert!(
        keys.contains("tpm2") && keys.contains("sealed to the signed boot chain"),
        "the keys must be sealed by the TPM, to the signed boot chain: {keys}"
    );
    let mounts = vm.wait_for("APERTURE-MOUNTS ", BOOT_TIMEOUT).unwrap();
    assert!(
        mounts.contains("/dev/mapper/aperture-data /data")
            && mounts.contains("/dev/mapper/aperture-config /config"),
        "{mounts}"
    );
    vm.wait_for("APERTURE-WROTE", BOOT_TIMEOUT).unwrap();
    // The keys are sealed to the boot chain, and storage closed it behind itself.
    assert!(
        vm.console()
            .contains("PCR 11 extended: disk keys cannot be unsealed again"),
        "storage did not extend PCR 11 after unsealing"
    );
    let chose = vm
        .wait_for("aperture-reset: rebooting into slot", BOOT_TIMEOUT)
        .unwrap();
    assert!(chose.ends_with("slot a"), "{chose}");
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    eprintln!("first boot with level 1 took {:.0?}", t.elapsed());
    assert!(
        !file_contains(&sc.disk, &canary).unwrap(),
        "the canary is in the clear on the disk: /data is not encrypted"
    );

    // Boot 3, without the TPM the keys were sealed to: aperture-storage waits for it, then
    // stops with the reason on the console; nothing opens and nothing is written (the disk's
    // partitions hash the same before and after).
    let before = encrypted_partitions_sha256(&sc.disk);
    let t = Instant::now();
    let vm = sc
        .boot_with("no-tpm", None, |c| c.tpm_socket = None)
        .unwrap();
    let why = vm
        .wait_for("no TPM appeared at", Duration::from_secs(600))
        .unwrap();
    eprintln!("without its TPM after {:.0?}: {why}", t.elapsed());
    assert!(why.contains("nothing was changed"), "{why}");
    stopped_with_nothing_touched(vm, &sc.disk, &before, "without the TPM");

    // Issue 18, must-show 4: the same disk with Secure Boot turned off in the firmware (our
    // keys still enrolled). The firmware now starts anything, our UKI included, but PCR 7 says
    // so: the TPM refuses the disk keys, storage says why on the console, and nothing on the
    // partitions changes. `--full` also boots a firmware whose db trusts another certificate
    // beside ours (Secure Boot on, another PCR 7).
    let mut refusals = vec![(
        "secure-boot-off",
        VarsMode::EnrolledOff,
        "Secure Boot is off",
    )];
    if aperture_tests::full() {
        let other = sc.dir.join("other-db.crt");
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=Someone else's db key", "-keyout"])
            .arg(sc.dir.join("other-db.key"))
            .arg("-out")
            .arg(&other)
            .status()
            .unwrap();
        assert!(ok.success(), "openssl req");
        refusals.push(("another-db", VarsMode::ExtraDb(other), "key databases"));
    }
    for (what, mode, reason) in refusals {
        let t = Instant::now();
        let vm = sc.boot_secure_boot(what, None, mode).unwrap();
        let why = vm.wait_for("stays locked", BOOT_TIMEOUT).unwrap();
        eprintln!("{what}: storage refused after {:.0?}: {why}", t.elapsed());
        assert!(why.contains(reason) && why.contains("PCR 7"), "{why}");
        assert!(
            why.contains("Nothing on the partition was changed"),
            "{why}"
        );
        stopped_with_nothing_touched(vm, &sc.disk, &before, &format!("with {what}"));
    }

    // Issue 12.3: the data volume's primary LUKS2 header is damaged (its first 4 KiB zeroed on
    // the host, as a bad sector or a torn write would). It must be repaired from the secondary
    // copy, never formatted again: boot 4 opens it with the same UUID and the canary in it.
    {
        let (offset, _) = partition(&sc.disk, "data");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&sc.disk)
            .unwrap();
        f.write_all_at(&[0u8; 4096], offset).unwrap();
        f.sync_all().unwrap();
    }

    // Boot 4 (the TPM back, slot A): the data header is repaired, the keys unseal, the canary
    // is there; slot A is corrupted on the host while it runs, and level 1 now refuses A and
    // boots B.
    let s = show()
        .piece("canary-check", &[("CANARY", &canary)])
        .and_then(|s| s.piece("wait-control", &[("SERVER_PORT", &port)]))
        .and_then(|s| s.piece("reset", &[("LEVEL", "1")]))
        .unwrap();
    let mut vm = sc.boot("corrupt-a", Some(&s)).unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        status.contains("slot=a"),
        "level 1 must have booted slot A: {status}"
    );
    let uuid2 = after(
        &vm.wait_for("APERTURE-UUID ", BOOT_TIMEOUT).unwrap(),
        "APERTURE-UUID ",
    );
    assert_eq!(
        uuid1, uuid2,
        "the data volume must be the same after a reboot"
    );
    let kept = vm.wait_for("APERTURE-CANARY-", BOOT_TIMEOUT).unwrap();
    assert!(kept.contains("APERTURE-CANARY-KEPT"), "{kept}");
    let console = vm.console();
    assert!(
        console.contains("data: header repaired"),
        "the zeroed primary header must have been repaired"
    );
    assert!(
        !console.contains(markers::FORMAT_DATA),
        "a damaged header must never be formatted again"
    );
    vm.wait_for("APERTURE-WAITING", BOOT_TIMEOUT).unwrap();
    corrupt_slot_a(&sc.disk, &rootfs);
    assert!(!partition_holds(&sc.disk, "rootfs_a", &rootfs));
    std::fs::write(www.join("control"), "go").unwrap();
    let chose = vm
        .wait_for("aperture-reset: rebooting into slot", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        chose.ends_with("slot b"),
        "a corrupted slot A must be refused: {chose}"
    );
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    if stop_unless_full(
        "level 2 cut in the middle and resumed, then level 3 (crypto-erase, scrub, factory \
         image) leaving no canary on the disk",
    ) {
        return;
    }

    // Boot 5 (slot B): level 2 starts writing the factory image into slot A, and the power is
    // cut ten seconds into it; boots 6..: the reset resumes, the factory image boots from slot
    // A, passes its health gate, and the reset writes slot B too.
    let s = Script::new().piece("reset", &[("LEVEL", "2")]).unwrap();
    let mut vm = sc.boot("level2-cut", Some(&s)).unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        status.contains("slot=b") && status.contains("verity=yes"),
        "{status}"
    );
    cut_after(
        &mut vm,
        markers::RESET2,
        Duration::from_secs(10),
        Duration::from_secs(600),
    )
    .unwrap();
    eprintln!("POWER CUT 10 s into reset level 2");
    let s = Script::new()
        .piece("reset-wait", &[])
        .and_then(|s| s.piece("canary-check", &[("CANARY", &canary)]))
        .and_then(|s| s.piece("reset", &[("LEVEL", "3")]))
        .unwrap();
    let t = Instant::now();
    let (console, boots) = sc
        .boot_until(
            "level2-done",
            &s,
            "reboot to wipe the locked partitions",
            4,
            Duration::from_secs(1200),
        )
        .unwrap();
    eprintln!(
        "level 2 finished after {boots} more boots in {:.0?}",
        t.elapsed()
    );
    line_of(&console, "reset level 2 complete").unwrap();
    assert!(
        line_of(&console, "APERTURE-CANARY-")
            .unwrap()
            .contains("KEPT"),
        "level 2 keeps the data"
    );
    for slot in ["rootfs_a", "rootfs_b"] {
        assert!(
            partition_holds(&sc.disk, slot, &rootfs),
            "{slot} does not hold the factory rootfs image"
        );
    }

    // Boots ..: level 3 resumes (scrub, factory image into both slots), and the storage is made
    // new: a new LUKS volume, an empty /data, no canary anywhere on the disk.
    let s = Script::new()
        .piece("reset-wait", &[])
        .and_then(|s| s.piece("storage-show", &[]))
        .and_then(|s| s.piece("canary-gone", &[]))
        .and_then(|s| s.piece("final", &[]))
        .unwrap();
    let t = Instant::now();
    let (console, boots) = sc
        .boot_until(
            "level3-done",
            &s,
            "APERTURE-FINAL",
            5,
            Duration::from_secs(1200),
        )
        .unwrap();
    eprintln!(
        "reset level 3 finished after {boots} more boots in {:.0?}",
        t.elapsed()
    );
    assert!(line_of(&console, "APERTURE-CANARY-")
        .unwrap()
        .contains("APERTURE-CANARY-GONE"));
    let uuid3 = after(
        &line_of(&console, "APERTURE-UUID ").unwrap(),
        "APERTURE-UUID ",
    );
    assert!(!uuid3.is_empty());
    assert_ne!(uuid3, uuid1, "the data volume must be a new LUKS volume");
    for v in ["config", "data"] {
        let l = line_of(&console, &format!("APERTURE-CRYPT-{v} ")).unwrap();
        assert!(l.contains("is active") && l.contains("type: LUKS2"), "{l}");
    }
    assert!(line_of(&console, "aperture-agent: product=")
        .unwrap()
        .contains("verity=yes"));
    assert!(
        !file_contains(&sc.disk, &canary).unwrap(),
        "the canary survived the reset somewhere on the disk"
    );
    assert!(server.requests() >= 1);
}
