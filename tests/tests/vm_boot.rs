//! Tier 3, booting: the product image as flashed boots slot A with a verity root, and the
//! firewall in a running guest is the policy and closes every port. (QEMU under TCG; one QEMU
//! process per boot.)

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use aperture_image::audit::{firewall, nft, Severity};
use aperture_image::recipe::{Arch, Recipe};
use aperture_image::security::Policy;
use aperture_tests::http::{FileServer, GUEST_SERVER_PORT};
use aperture_tests::scenario::{Scenario, Script};
use aperture_tests::{default_image, require_root, vm_image, vm_recipe, BOOT_TIMEOUT};

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn default_image_flashed_to_a_file_boots_slot_a_with_a_verity_root() {
    use aperture_flash::{flash, FileTarget, NoProgress, VerifiedImage};
    require_root("default_image_flashed_to_a_file_boots_slot_a_with_a_verity_root");
    let image = default_image().unwrap();
    let out = &image.paths.out;
    // The flash tool writes from disk.img.zst and the bmap, verified and read back; the
    // scenario boots what it wrote.
    let mut sc = Scenario::new("boot-flashed", &out.join("disk.img"), Arch::Amd64).unwrap();
    let verified = VerifiedImage::open(out, None, aperture_trust::now_unix()).unwrap();
    std::fs::remove_file(&sc.disk).unwrap();
    let target = FileTarget::open(&sc.disk, verified.image_size()).unwrap();
    let report = flash(&verified, &target, &NoProgress).unwrap();
    assert_eq!(report.bytes_written, verified.mapped_bytes());
    drop(target);

    let vm = sc.boot("flashed", None).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("status line: {line}");
    assert!(line.contains("slot=a"), "{line}");
    assert!(line.contains("version=1.0.0"), "{line}");
    assert!(line.contains("root=/dev/mapper/aperture-root"), "{line}");
    assert!(line.contains("fstype=erofs ro verity=yes"), "{line}");
    // The board's kernel arguments reached the kernel with the slot's.
    let cmdline = vm.wait_for("Kernel command line:", BOOT_TIMEOUT).unwrap();
    assert!(
        cmdline.contains("console=ttyS0") && cmdline.contains("panic=10"),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("aperture.verity.data=PARTLABEL=rootfs_a"),
        "{cmdline}"
    );
}

/// Guest ports the firewall test listens on and probes: every privileged port and the usual
/// service ports above them.
fn probed_ports() -> Vec<u16> {
    let mut v: Vec<u16> = (1..=1024).collect();
    v.extend([
        1883, 2375, 3000, 5000, 5353, 5355, 8000, 8080, 8443, 8554, 9000, 9090, 9100,
    ]);
    v
}

/// Connect to 127.0.0.1:`port` (a QEMU forward) and report whether the guest's listener
/// answered with its banner within `wait`.
fn banner(port: u16, wait: Duration) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"OPEN") {
            return true;
        }
    }
    false
}

/// A host listener that records what connections send until one says DONE or it is stopped.
fn record(
    l: TcpListener,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut s = String::new();
                    let _ = c.read_to_string(&mut s);
                    got.push(s);
                    if got.iter().any(|s| s.contains("DONE")) {
                        break;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        got
    })
}

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn firewall_in_the_guest_matches_the_policy_and_closes_every_port() {
    require_root("firewall_in_the_guest_matches_the_policy_and_closes_every_port");
    let image = vm_image("vm-v1", "1.0.0", "").unwrap();
    let mut sc = Scenario::new("firewall", &image.paths.out.join("disk.img"), Arch::Amd64).unwrap();

    // Outbound targets on the host, reached by the guest at 10.0.2.2: RTSP (554, allowed to the
    // camera subnet 10.0.0.0/8) and an ephemeral port no flow allows.
    let allowed = TcpListener::bind("127.0.0.1:554").expect("binding 127.0.0.1:554 (root)");
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied_port = denied.local_addr().unwrap().port();
    // The listener threads end with the test (a guard raises the flag even on a panic).
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stop = Stop(Default::default());
    let allowed = record(allowed, stop.0.clone());
    let denied = record(denied, stop.0.clone());

    // The go-ahead for the second phase is a file on the test server.
    let www = sc.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();

    let ports = probed_ports();
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let script = Script::new()
        .piece(
            "firewall",
            &[
                ("PORTS", &list),
                ("DENIED_PORT", &denied_port.to_string()),
                ("SERVER_PORT", &GUEST_SERVER_PORT.to_string()),
            ],
        )
        .unwrap();
    let base = 30000u16;
    let vm = sc
        .boot_with("firewall", Some(&script), |c| {
            c.forwards = ports.iter().map(|p| (base + p, *p)).collect();
        })
        .unwrap();
    vm.wait_for("APERTURE-READY", BOOT_TIMEOUT).unwrap();
    let console = vm.console();

    // 1. The ruleset the kernel holds matches the image's policy, judged as the audit judges
    //    the image's file.
    vm.wait_for("APERTURE-NFT-END", BOOT_TIMEOUT).unwrap();
    let live: String = console
        .lines()
        .filter_map(|l| {
            l.split_once("APERTURE-NFT| ")
                .map(|(_, rule)| format!("{rule}\n"))
        })
        .collect();
    let live = live.as_str();
    assert!(
        live.contains("table inet aperture"),
        "no ruleset on the console"
    );
    let recipe = Recipe::load(&vm_recipe("vm-v1")).unwrap();
    let policy = Policy::from_recipe(&recipe);
    let (summary, findings) = firewall::judge(&nft::parse(live), &policy);
    let violations: Vec<_> = findings
        .iter()
        .filter(|f| f.severity == Severity::Violation)
        .collect();
    assert!(
        violations.is_empty(),
        "live ruleset: {violations:#?}\n{live}"
    );
    assert!(
        summary.inbound.is_empty(),
        "no inbound flow by default: {summary:?}"
    );
    assert!(
        summary.outbound.iter().any(|o| o.contains("tcp/554")),
        "{summary:?}"
    );
    eprintln!("live ruleset: {summary:?}");

    // 2. Every listening socket outside loopback is on a probed port, and each probed port
    //    has a listener in the guest; none of them answers through the forwards.
    for line in console.lines().filter(|l| l.contains("APERTURE-LISTEN ")) {
        let local = line.rsplit(' ').next().unwrap_or_default();
        if local.starts_with("127.") || local.starts_with("[::1]") {
            continue;
        }
        let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
        assert!(ports.contains(&port), "guest listens on unprobed {local}");
    }
    let n: usize = console
        .lines()
        .find_map(|l| l.split("APERTURE-LISTENERS ").nth(1))
        .expect("listener count")
        .trim()
        .parse()
        .unwrap();
    assert!(n + 8 >= ports.len(), "only {n} guest listeners");
    let open: Vec<u16> = std::thread::scope(|sc| {
        let handles: Vec<_> = ports
            .chunks(ports.len().div_ceil(64))
            .map(|chunk| {
                sc.spawn(move || {
                    chunk
                        .iter()
                        .copied()
                        .filter(|p| banner(base + p, Duration::from_secs(3)))
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        open.is_empty(),
        "guest ports answered through the firewall: {open:?}"
    );
    eprintln!("{} guest ports probed, all closed", ports.len());

    // 3. Outbound: the allowed flow reached the host, the other did not.
    let out = vm
        .wait_for(&format!("APERTURE-OUT {denied_port}"), BOOT_TIMEOUT)
        .unwrap();
    assert!(out.contains("blocked"), "{out}");
    let out = vm.wait_for("APERTURE-OUT 554", BOOT_TIMEOUT).unwrap();
    assert!(out.contains(" ok"), "{out}");
    let got = allowed.join().unwrap();
    assert!(got.iter().any(|s| s.contains("guest to 554")), "{got:?}");
    stop.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = denied.join().unwrap();
    assert!(got.is_empty(), "the blocked flow reached the host: {got:?}");

    // 4. The probe can see an open port: with an accept rule added for 8080, it answers.
    std::fs::write(www.join("control"), "go").unwrap();
    vm.wait_for("APERTURE-CONTROL-OPEN", BOOT_TIMEOUT).unwrap();
    let seen = (0..20).any(|_| {
        banner(base + 8080, Duration::from_secs(3)) || {
            std::thread::sleep(Duration::from_secs(1));
            false
        }
    });
    assert!(
        seen,
        "the control port 8080 never answered: the probe cannot see open ports"
    );
    assert!(server.requests() >= 1);
}
