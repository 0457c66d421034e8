//! Tier 3, `--full`: the Jetson twin's boots. An AGX Orin build with its disk exactly as built
//! for a real Orin boots under QEMU arm64 (TCG), each boot chosen by L4TLauncher's A/B rules
//! applied to its UEFI variables between boots (`aperture_image::twin`). The first boot formats
//! UDA and config as LUKS2 sealed to the (sw)TPM and prints the status line; three warm reboots
//! of the committed slot boot it every time, the volumes unsealing again. Variables cross the
//! firmware both ways: one the harness puts in the store is read by the guest through efivarfs,
//! and one the guest writes through efivarfs is in the store after it.
//!
//! Its build (the arm64 Debian base under emulation, the aarch64 programs) is made beside the
//! other suites by `examples/twin_prebuild.rs`, which `cargo xtask test --full` starts; this suite
//! runs last and reuses it. Not in CI: with that build beside them the other suites took 49:40
//! in all on a fresh clone. The longer twin scenarios (update and rollback, ten warm
//! reboots, resets) are in `full_twin.rs` (`--full`).

use aperture_image::twin::{nvidia_guid, varstore::VarStore};
use aperture_slots::Slot;
use aperture_tests::powercut::markers;
use aperture_tests::scenario::{after, Script};
use aperture_tests::twin::{storage_show, twin_image, TwinScenario, FIRST_BUILD, TWIN_TIMEOUT};
use aperture_tests::{json_on_line, require_root};

/// What the harness writes into the store and the guest must read through efivarfs.
const PROBE: &str = "ApertureTwinProbe";
/// What the guest writes through efivarfs and the harness must find in the store.
const GUEST: &str = "ApertureTwinGuest";

#[test]
#[ignore = "VM tier: needs root, QEMU (arm64), swtpm and a twin build (run by `cargo xtask test` as root)"]
fn twin_first_boot_seals_storage_then_three_warm_reboots_boot_the_committed_slot() {
    require_root("twin_first_boot_seals_storage_then_three_warm_reboots_boot_the_committed_slot");
    let v1 = twin_image(FIRST_BUILD.0, FIRST_BUILD.1, "").unwrap();
    let mut sc = TwinScenario::new("twin-first-boot", &v1.paths.out).unwrap();

    // A variable put in the store before the firmware ever ran: the firmware must take our
    // formatting of the blank store as its own and hand the variable to the guest.
    let vars = sc.twin.vars();
    let mut store = VarStore::open(&vars).unwrap();
    store
        .set(PROBE, nvidia_guid(), 7, &0x2au32.to_le_bytes())
        .unwrap();
    store.save(&vars).unwrap();
    let guid = nvidia_guid().to_string();
    let efivars = |s: Script| {
        s.line(&format!(
            "echo \"APERTURE-PROBE $(od -An -tx1 /sys/firmware/efi/efivars/{PROBE}-{guid} | tr -d ' \\n')\""
        ))
        .line(&format!(
            "printf '\\007\\000\\000\\000\\052\\000\\000\\000' > /sys/firmware/efi/efivars/{GUEST}-{guid} && echo APERTURE-GUEST-WROTE"
        ))
    };

    // Boot 1: the first boot formats config and UDA, seals their keys to the TPM, mounts them.
    let s = efivars(storage_show())
        .piece("status", &[])
        .and_then(|s| s.piece("reboot", &[]))
        .unwrap();
    let boot = sc.boot("first", Some(&s)).unwrap();
    assert_eq!(
        (boot.power_on.slot, boot.power_on.partition),
        (Slot::A, "A_kernel"),
        "{}",
        boot.power_on
    );
    let (status, took) = boot.status().unwrap();
    eprintln!("first boot: status line {took:.0?} after power-on: {status}");
    sc.record(&boot, Some(took));
    for want in [
        "board=jetson-orin-agx",
        "slot=a",
        "version=1.0.0",
        "fstype=erofs ro verity=yes",
    ] {
        assert!(status.contains(want), "{want}: {status}");
    }
    let console = boot.vm.console();
    for m in [markers::FORMAT_CONFIG, markers::FORMAT_DATA] {
        assert!(
            console.contains(m),
            "the first boot must format both volumes (`{m}` missing)"
        );
    }
    let cmdline = boot
        .vm
        .wait_for("Kernel command line:", TWIN_TIMEOUT)
        .unwrap();
    assert!(
        cmdline.contains("aperture.verity.data=PARTLABEL=APP ")
            && cmdline.contains("aperture.slot=a"),
        "the boot image's command line from A_kernel: {cmdline}"
    );
    for v in ["config", "data"] {
        let line = boot
            .vm
            .wait_for(&format!("APERTURE-CRYPT-{v} "), TWIN_TIMEOUT)
            .unwrap();
        assert!(
            line.contains(&format!("/dev/mapper/aperture-{v} is active"))
                && line.contains("type: LUKS2"),
            "{line}"
        );
    }
    let uuid = after(
        &boot.vm.wait_for("APERTURE-UUID ", TWIN_TIMEOUT).unwrap(),
        "APERTURE-UUID ",
    );
    assert!(!uuid.is_empty(), "UDA must hold a LUKS2 volume");
    let keys = boot.vm.wait_for("APERTURE-KEYS ", TWIN_TIMEOUT).unwrap();
    assert!(
        keys.contains("tpm2"),
        "the keys must be sealed by the TPM: {keys}"
    );
    let mounts = boot.vm.wait_for("APERTURE-MOUNTS ", TWIN_TIMEOUT).unwrap();
    assert!(
        mounts.contains("/dev/mapper/aperture-data /data")
            && mounts.contains("/dev/mapper/aperture-config /config"),
        "{mounts}"
    );
    let probe = boot.vm.wait_for("APERTURE-PROBE", TWIN_TIMEOUT).unwrap();
    assert!(
        probe.ends_with("070000002a000000"),
        "the guest must read the harness's variable through efivarfs: {probe}"
    );
    boot.vm
        .wait_for("APERTURE-GUEST-WROTE", TWIN_TIMEOUT)
        .unwrap();
    let st = json_on_line(&boot.vm.wait_for("APERTURE-STATUS", TWIN_TIMEOUT).unwrap()).unwrap();
    assert_eq!(st["booted"], "a", "{st}");
    let mut vm = boot.vm;
    vm.wait_exit(TWIN_TIMEOUT).unwrap();

    // The guest's efivarfs write went through UEFI runtime services into the store file, next
    // to the firmware's own variables and the harness's.
    let store = VarStore::open(&vars).unwrap();
    assert_eq!(
        store.get(GUEST, nvidia_guid()).map(|v| v.data.clone()),
        Some(42u32.to_le_bytes().to_vec()),
        "the guest's variable must be in the store"
    );
    assert!(store.get(PROBE, nvidia_guid()).is_some());
    let names: Vec<&str> = store.variables().iter().map(|v| v.name.as_str()).collect();
    assert!(
        names.contains(&"PlatformLang") || names.iter().any(|n| n.starts_with("Boot0")),
        "the firmware's own variables must be there too: {names:?}"
    );

    // Boots 2..4: warm reboots of the committed slot A; the volumes open with the same keys.
    for n in 1..=3 {
        let s = storage_show()
            .piece("status", &[])
            .and_then(|s| s.piece("reboot", &[]))
            .unwrap();
        let boot = sc.boot(&format!("warm{n}"), Some(&s)).unwrap();
        assert_eq!(boot.power_on.slot, Slot::A, "{}", boot.power_on);
        let (status, took) = boot.status().unwrap();
        eprintln!("warm reboot {n}: status line {took:.0?} after power-on");
        sc.record(&boot, Some(took));
        assert!(
            status.contains("slot=a") && status.contains("verity=yes"),
            "{status}"
        );
        let line = boot
            .vm
            .wait_for("APERTURE-CRYPT-data ", TWIN_TIMEOUT)
            .unwrap();
        assert!(line.contains("is active"), "{line}");
        let again = after(
            &boot.vm.wait_for("APERTURE-UUID ", TWIN_TIMEOUT).unwrap(),
            "APERTURE-UUID ",
        );
        assert_eq!(again, uuid, "the same volume must open after a reboot");
        assert!(
            !boot.vm.console().contains(markers::FORMAT_DATA),
            "a warm reboot must not format again"
        );
        let mut vm = boot.vm;
        vm.wait_exit(TWIN_TIMEOUT).unwrap();
    }
    eprintln!("twin boot times:\n{}", sc.time_table());
}
