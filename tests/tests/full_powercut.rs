//! Tier 3, `cargo xtask test --full` only: twenty power cuts (QEMU killed) spread over the
//! first boot, installs (streaming, read-back, arming) and factory resets (levels 2 and 3), on
//! four appliances. After every cut a verified slot boots, the encrypted data opens with its
//! canary intact (a level 3 reset instead finishes its wipe), and the interrupted work
//! completes. The table of cuts and outcomes is printed at the end. About an hour under TCG.

use aperture_tests::powercut::{markers as m, print_table, Appliance, Cut, Op};
use aperture_tests::{require_root, vm_v1, vm_v2};

fn chain(name: &str, cuts: Vec<Cut>) -> Vec<aperture_tests::powercut::Outcome> {
    let v1 = vm_v1().unwrap();
    let v2 = vm_v2().unwrap();
    let mut a = Appliance::new(
        name,
        &v1.paths.out.join("disk.img"),
        "1.0.0",
        &v2.paths.out.join("update.bundle"),
        "1.1.0",
    )
    .unwrap();
    for cut in cuts {
        if let Err(e) = a.cut(cut.clone()) {
            print_table(&a.outcomes);
            panic!("{name}: after the cut {cut:?}: {e:#}");
        }
    }
    a.outcomes
}

#[test]
#[ignore = "VM tier, --full: needs root, QEMU, swtpm and built images (cargo xtask test --full)"]
fn twenty_power_cuts_in_first_boot_install_and_reset_leave_a_working_appliance() {
    require_root("twenty_power_cuts_in_first_boot_install_and_reset_leave_a_working_appliance");
    let mut all = Vec::new();
    all.extend(chain(
        "powercut-a",
        vec![
            Cut::new(Op::FirstBoot, m::FORMAT_CONFIG, 500),
            Cut::new(Op::Install, m::INSTALLING, 2_000),
            Cut::new(Op::Reset2, m::RESET2, 3_000),
            Cut::new(Op::Install, m::STREAMED, 1_000),
            Cut::new(Op::Reset3, m::RESET3, 2_000),
        ],
    ));
    all.extend(chain(
        "powercut-b",
        vec![
            Cut::new(Op::FirstBoot, m::FORMAT_CONFIG, 3_000),
            Cut::new(Op::Install, m::INSTALLING, 8_000),
            Cut::new(Op::Reset2, m::RESET2, 15_000),
            Cut::new(Op::Install, m::READ_BACK, 200),
            Cut::new(Op::Reset3, m::RESET3, 10_000),
        ],
    ));
    all.extend(chain(
        "powercut-c",
        vec![
            Cut::new(Op::FirstBoot, m::FORMAT_DATA, 1_000),
            Cut::new(Op::Install, m::INSTALLING, 20_000),
            Cut::new(Op::Reset2, m::RESET2, 40_000),
            Cut::new(Op::Install, m::INSTALLING, 3_000),
            Cut::new(Op::Reset3, m::RESET3, 5_000),
        ],
    ));
    all.extend(chain(
        "powercut-d",
        vec![
            Cut::new(Op::FirstBoot, m::FORMAT_DATA, 5_000),
            Cut::new(Op::Install, m::INSTALLING, 40_000),
            Cut::new(Op::Reset3, m::RESET3, 30_000),
            Cut::new(Op::Install, m::STREAMED, 500),
            Cut::new(Op::Reset2, m::RESET2, 60_000),
        ],
    ));
    print_table(&all);
    assert!(all.len() >= 20, "{} cuts", all.len());
}
