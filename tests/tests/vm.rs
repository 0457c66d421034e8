//! Tier 3: QEMU boots of built images (TCG on this kind of machine; one QEMU process per boot).

use aperture_image::recipe::Arch;
use aperture_tests::http::FileServer;
use aperture_tests::{
    boot, build, copy_disk, default_image, derived_recipe, hook_script, json_on_line, main_out,
    require_root, scenario_dir, test_root, BOOT_TIMEOUT,
};

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn default_image_boots_slot_a_with_a_verity_root() {
    if !require_root("default_image_boots_slot_a_with_a_verity_root") {
        return;
    }
    let image = default_image().unwrap();
    let dir = scenario_dir("boot-default").unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&image.paths.out.join("disk.img"), &disk).unwrap();
    let vm = boot(Arch::Amd64, &disk, &dir, "boot", |_| {}).unwrap();
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

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn default_image_flashed_to_a_file_boots() {
    use aperture_flash::{flash, FileTarget, NoProgress, VerifiedImage};
    if !require_root("default_image_flashed_to_a_file_boots") {
        return;
    }
    let image = default_image().unwrap();
    let dir = scenario_dir("boot-flashed").unwrap();
    let disk = dir.join("flashed.img");
    let _ = std::fs::remove_file(&disk);
    // The flash tool writes from disk.img.zst and the bmap, verified, read back.
    let verified = VerifiedImage::open(&image.paths.out, None, aperture_trust::now_unix()).unwrap();
    let target = FileTarget::open(&disk, verified.image_size()).unwrap();
    let report = flash(&verified, &target, &NoProgress).unwrap();
    assert_eq!(report.bytes_written, verified.mapped_bytes());
    drop(target);
    let vm = boot(Arch::Amd64, &disk, &dir, "boot", |_| {}).unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("status line: {line}");
    assert!(
        line.contains("slot=a") && line.contains("verity=yes"),
        "{line}"
    );
}

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn qemu_arm64_boots_the_arm64_userland_then_updates_v1_to_v2_into_slot_b() {
    if !require_root("qemu_arm64_boots_the_arm64_userland_then_updates_v1_to_v2_into_slot_b") {
        return;
    }
    // The arm64 store is shared with the Jetson rootfs test of the privileged tier; both
    // versions reuse its Debian base.
    let arm64 = |name: &str, version: &str| {
        let r = derived_recipe(
            &test_root().join("arm64/recipes-vm"),
            &format!("{name}.toml"),
            "../tests/recipes/vm-hooks-arm64.toml",
            &format!("version = \"{version}\"\n"),
        )
        .unwrap();
        build(&r, &test_root().join("arm64/out").join(name), false)
            .unwrap()
            .0
    };
    let v1 = arm64("vm-arm64-v1", "1.0.0");
    let v2 = arm64("vm-arm64-v2", "1.1.0");

    let dir = scenario_dir("update-arm64").unwrap();
    let served = dir.join("www");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(v2.paths.out.join("update.bundle"), served.join("v2.bundle")).unwrap();
    let server = FileServer::start_for_guests(&served).unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&v1.paths.out.join("disk.img"), &disk).unwrap();
    let status = "echo \"APERTURE-STATUS $(aperture-update status --json | tr -d '\\n')\"";
    // arm64 under TCG is several times slower than x86-64.
    let timeout = 3 * BOOT_TIMEOUT;

    // Boot 1: v1 on slot A, the aarch64 userland; it installs v2 over HTTP and reboots.
    let s = hook_script(&dir, "boot1", &format!(
        "echo \"APERTURE-ARCH $(uname -m) e_machine=$(od -An -tx1 -j18 -N2 /usr/bin/aperture-update | tr -d ' ')\"\n\
         {status}\n\
         aperture-update install --insecure-http {} && echo APERTURE-INSTALLED\n\
         systemctl reboot",
        server.guest_url("v2.bundle")
    ))
    .unwrap();
    let mut vm = boot(Arch::Arm64, &disk, &dir, "boot1", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let line = vm.wait_for("aperture-agent: product=", timeout).unwrap();
    eprintln!("status line: {line}");
    assert!(
        line.contains("board=qemu-arm64") && line.contains("slot=a"),
        "{line}"
    );
    assert!(line.contains("version=1.0.0"), "{line}");
    assert!(line.contains("fstype=erofs ro verity=yes"), "{line}");
    let arch = vm.wait_for("APERTURE-ARCH", timeout).unwrap();
    // e_machine 0xb7 (EM_AARCH64), little-endian: the updater itself is an arm64 program.
    assert!(
        arch.contains("aarch64") && arch.contains("e_machine=b700"),
        "the guest and its updater must be aarch64: {arch}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", timeout).unwrap()).unwrap();
    assert_eq!(st["booted"], "a", "{st}");
    vm.wait_for("APERTURE-INSTALLED", timeout).unwrap();
    vm.wait_exit(timeout).unwrap();

    // Boot 2: the loader picks slot B (armed, on trial); the health gate commits it.
    let s = hook_script(&dir, "boot2", status).unwrap();
    let mut vm = boot(Arch::Arm64, &disk, &dir, "boot2", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let line = vm.wait_for("aperture-agent: product=", timeout).unwrap();
    eprintln!("status line: {line}");
    assert!(
        line.contains("board=qemu-arm64")
            && line.contains("slot=b")
            && line.contains("version=1.1.0"),
        "v2 must boot from slot B: {line}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", timeout).unwrap()).unwrap();
    assert_eq!(st["booted"], "b", "{st}");
    assert_eq!(
        st["committed"], "b",
        "the health gate must have committed slot B: {st}"
    );
    vm.kill();
    assert!(server.requests() >= 1);
}

/// A test image: the default recipe plus the VM test hook, at a version, with extra TOML.
fn hooked_image(name: &str, version: &str, extra: &str) -> aperture_image::pipeline::BuildReport {
    let dir = test_root().join("main/recipes-vm");
    let r = derived_recipe(
        &dir,
        &format!("{name}.toml"),
        "../tests/recipes/vm-hooks.toml",
        &format!("version = \"{version}\"\n{extra}"),
    )
    .unwrap();
    build(&r, &main_out().join(name), false).unwrap().0
}

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn update_over_http_commits_v2_then_a_failing_v3_rolls_back() {
    if !require_root("update_over_http_commits_v2_then_a_failing_v3_rolls_back") {
        return;
    }
    let v1 = hooked_image("vm-v1", "1.0.0", "");
    let v2 = hooked_image("vm-v2", "1.1.0", "");
    // v3's runtime cannot start, so its health check fails.
    let broken = test_root()
        .join("main/recipes-vm/broken-runtime/usr/lib/systemd/system/aperture-runtime.service.d");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("broken.conf"),
        "[Service]\nExecStart=\nExecStart=/bin/false\nRestart=no\n",
    )
    .unwrap();
    let v3 = hooked_image("vm-v3", "1.2.0", "overlays = [\"broken-runtime\"]\n");

    let dir = scenario_dir("update").unwrap();
    let served = dir.join("www");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(v2.paths.out.join("update.bundle"), served.join("v2.bundle")).unwrap();
    std::fs::copy(v3.paths.out.join("update.bundle"), served.join("v3.bundle")).unwrap();
    let server = FileServer::start_for_guests(&served).unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&v1.paths.out.join("disk.img"), &disk).unwrap();
    let status = "echo \"APERTURE-STATUS $(aperture-update status --json | tr -d '\\n')\"";

    // Boot 1: v1 on slot A installs v2 over HTTP into slot B and reboots.
    let s = hook_script(&dir, "boot1", &format!(
        "{status}\naperture-update install --insecure-http {} && echo APERTURE-INSTALLED\nsystemctl reboot",
        server.guest_url("v2.bundle")
    ))
    .unwrap();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot1", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=a") && line.contains("version=1.0.0"),
        "{line}"
    );
    vm.wait_for("APERTURE-INSTALLED", BOOT_TIMEOUT).unwrap();
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    // Boot 2: the loader picks slot B (armed, on trial); the health gate passes and commits it.
    let s = hook_script(&dir, "boot2", &format!(
        "{status}\naperture-update install --insecure-http {} && echo APERTURE-INSTALLED\nsystemctl reboot",
        server.guest_url("v3.bundle")
    ))
    .unwrap();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot2", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let line = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("slot=b") && line.contains("version=1.1.0"),
        "v2 must boot from slot B: {line}"
    );
    let st = json_on_line(&vm.wait_for("APERTURE-STATUS", BOOT_TIMEOUT).unwrap()).unwrap();
    assert_eq!(st["booted"], "b", "{st}");
    assert_eq!(
        st["committed"], "b",
        "the health gate must have committed slot B: {st}"
    );
    vm.wait_for("APERTURE-INSTALLED", BOOT_TIMEOUT).unwrap();
    vm.wait_exit(BOOT_TIMEOUT).unwrap();

    // Boots 3..: v3 on slot A fails its health check; each failure reboots; when its tries are
    // spent the loader boots slot B again.
    let mut failing = 0;
    loop {
        let mut vm = boot(
            Arch::Amd64,
            &disk,
            &dir,
            &format!("boot{}", 3 + failing),
            |_| {},
        )
        .unwrap();
        let line = vm
            .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
            .unwrap();
        if line.contains("version=1.2.0") {
            assert!(line.contains("slot=a"), "{line}");
            failing += 1;
            assert!(failing <= 3, "v3 booted more times than it had tries");
            vm.wait_exit(BOOT_TIMEOUT)
                .expect("a failed health check must reboot");
            continue;
        }
        assert!(
            line.contains("slot=b") && line.contains("version=1.1.0"),
            "after v3's tries, v2 must boot again: {line}"
        );
        let rollback = vm.wait_for("rollback:", BOOT_TIMEOUT).unwrap();
        assert!(
            rollback.contains("slot a") && rollback.contains("1.2.0"),
            "{rollback}"
        );
        vm.kill();
        break;
    }
    assert_eq!(failing, 3, "v3 should have been tried exactly 3 times");
    assert!(server.requests() >= 2);
    let _ = v1;
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
fn banner(port: u16, wait: std::time::Duration) -> bool {
    use std::io::Read;
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

#[test]
#[ignore = "VM tier: needs root, QEMU and a built image (run by `cargo xtask test` as root)"]
fn firewall_in_the_guest_matches_the_policy_and_closes_every_port() {
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    use aperture_image::audit::{firewall, nft, Severity};
    use aperture_image::recipe::Recipe;
    use aperture_image::security::Policy;

    if !require_root("firewall_in_the_guest_matches_the_policy_and_closes_every_port") {
        return;
    }
    let image = hooked_image("vm-v1", "1.0.0", "");
    let dir = scenario_dir("firewall").unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&image.paths.out.join("disk.img"), &disk).unwrap();

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
    let accepted = |l: TcpListener| {
        l.set_nonblocking(true).unwrap();
        let stop = stop.0.clone();
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
    };
    let allowed = accepted(allowed);
    let denied = accepted(denied);

    // The go-ahead for the second phase is a file on the test server.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let _ = std::fs::remove_file(www.join("control"));
    let server = FileServer::start_for_guests(&www).unwrap();

    let ports = probed_ports();
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        r#"nft list ruleset | awk '{{print "APERTURE" "-NFT| " $0}}'
echo APERTURE-NFT-END
ss -Htln | while read -r _ _ _ local _; do echo "APERTURE-LISTEN $local"; done
cat > /run/listen.py <<'PY'
import resource, selectors, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
n = 0
for p in [{list}]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        continue
    s.listen(8)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    n += 1
print("APERTURE-LISTENERS", n, flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
            c.sendall(b"OPEN\n")
            c.close()
        except OSError:
            pass
PY
python3 /run/listen.py &
sleep 3
echo APERTURE-READY
out() {{ timeout 10 bash -c "exec 3<>/dev/tcp/10.0.2.2/$1 && echo 'guest to $1 DONE' >&3" && echo "APERTURE-OUT $1 ok" || echo "APERTURE-OUT $1 blocked"; }}
out 554
out {denied_port}
until python3 -c "import urllib.request; urllib.request.urlopen('http://10.0.2.2:{srv}/control', timeout=5)" 2>/dev/null; do sleep 1; done
nft insert rule inet aperture input tcp dport 8080 accept
echo APERTURE-CONTROL-OPEN
sleep 600
"#,
        srv = aperture_tests::http::GUEST_SERVER_PORT,
    );
    let s = hook_script(&dir, "firewall", &script).unwrap();
    let base = 30000u16;
    let vm = boot(Arch::Amd64, &disk, &dir, "firewall", |c| {
        c.fw_cfg.push(("script".into(), s));
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
    let recipe = Recipe::load(&test_root().join("main/recipes-vm/vm-v1.toml")).unwrap();
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

/// A random hex string of `bytes` random bytes (the host's /dev/urandom).
fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `needle` occurs anywhere in the raw bytes of `file` (grep reads holes as zeros).
fn file_contains(file: &std::path::Path, needle: &str) -> bool {
    let st = std::process::Command::new("grep")
        .args(["-q", "-a", "-F", "--", needle])
        .arg(file)
        .status()
        .expect("running grep");
    match st.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("grep failed on {}: {st}", file.display()),
    }
}

/// The text after `marker` on the first console line holding it.
fn after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Boot `disk` again and again (a reset reboots on its own, ending QEMU) until the console
/// shows `done`; at most `max` boots. Returns the console of the last boot and the boot count.
fn boot_until(
    disk: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    script: &std::path::Path,
    done: &str,
    max: usize,
) -> (String, usize) {
    use std::time::Duration;
    for n in 1..=max {
        let t = std::time::Instant::now();
        let vm = boot(Arch::Amd64, disk, dir, &format!("{name}-{n}"), |c| {
            c.fw_cfg.push(("script".into(), script.to_path_buf()))
        })
        .unwrap();
        // A reset boot scrubs partitions and writes a slot under emulation: minutes.
        match vm.wait_for(done, Duration::from_secs(1200)) {
            Ok(_) => {
                eprintln!("{name} boot {n}: `{done}` after {:.0?}", t.elapsed());
                let mut vm = vm;
                let _ = vm.wait_exit(BOOT_TIMEOUT);
                return (vm.console(), n);
            }
            Err(e) => {
                let console = vm.console();
                assert!(
                    !console.contains("Kernel panic"),
                    "{name} boot {n} panicked: {e:#}"
                );
                eprintln!(
                    "{name} boot {n} ended after {:.0?} without `{done}` (a reset reboot)",
                    t.elapsed()
                );
            }
        }
    }
    panic!("{name}: `{done}` never appeared in {max} boots");
}

#[test]
#[ignore = "VM tier: needs root, QEMU, swtpm and a built image (run by `cargo xtask test` as root)"]
fn encrypted_partitions_survive_reboot_and_level3_wipes_them() {
    use std::time::Instant;
    if !require_root("encrypted_partitions_survive_reboot_and_level3_wipes_them") {
        return;
    }
    let image = hooked_image("vm-v1", "1.0.0", "");
    let dir = scenario_dir("storage-reset3").unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&image.paths.out.join("disk.img"), &disk).unwrap();
    // Made here, written only inside the guest onto the encrypted data volume.
    let canary = format!("aperture-canary-{}", random_hex(24));
    assert!(!file_contains(&disk, &canary));
    let show = r#"for v in config data; do echo "APERTURE-CRYPT-$v $(cryptsetup status aperture-$v | tr -s ' \n' ' ')"; done
echo "APERTURE-UUID $(cryptsetup luksUUID /dev/disk/by-partlabel/data)"
echo "APERTURE-KEYS $(aperture-storage status | grep 'key source')"
echo "APERTURE-MOUNTS $(findmnt -n -o SOURCE,TARGET /data | tr '\n' ' ') $(findmnt -n -o SOURCE,TARGET /config | tr '\n' ' ')""#;

    // Boot 1: the first boot formats and seals both volumes; the canary goes onto /data.
    let s = hook_script(
        &dir,
        "boot1",
        &format!(
            "{show}\nc='{canary}'\nprintf '%s\\n' \"$c\" > /data/canary.txt && sync && echo APERTURE-WROTE\nsystemctl poweroff"
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot1", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("boot 1 status line after {:.0?}: {status}", t.elapsed());
    assert!(
        status.contains("slot=a") && status.contains("verity=yes"),
        "{status}"
    );
    let mut uuids = Vec::new();
    for v in ["config", "data"] {
        let line = vm
            .wait_for(&format!("APERTURE-CRYPT-{v} "), BOOT_TIMEOUT)
            .unwrap();
        eprintln!("{line}");
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
    uuids.push(uuid1.clone());
    let keys = vm.wait_for("APERTURE-KEYS ", BOOT_TIMEOUT).unwrap();
    eprintln!("{keys}");
    assert!(
        keys.contains("key source: tpm2"),
        "the keys must be sealed by the TPM: {keys}"
    );
    let mounts = vm.wait_for("APERTURE-MOUNTS ", BOOT_TIMEOUT).unwrap();
    assert!(
        mounts.contains("/dev/mapper/aperture-data /data")
            && mounts.contains("/dev/mapper/aperture-config /config"),
        "{mounts}"
    );
    vm.wait_for("APERTURE-WROTE", BOOT_TIMEOUT).unwrap();
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    let console = vm.console();
    if let Some(l) = console
        .lines()
        .find(|l| l.contains("Finished") && l.contains("encrypted config and data"))
    {
        eprintln!("boot 1: {l}");
    }
    eprintln!("boot 1 (first boot, formatting) took {:.0?}", t.elapsed());
    assert!(
        !file_contains(&disk, &canary),
        "the canary is in the clear on the disk: /data is not encrypted"
    );

    // Boot 2: same disk, same TPM: the keys unseal and the canary is still there; then a
    // level 3 reset.
    let s = hook_script(
        &dir,
        "boot2",
        &format!(
            "{show}\nc='{canary}'\nif [ \"$(cat /data/canary.txt 2>/dev/null)\" = \"$c\" ]; then echo APERTURE-CANARY-KEPT; else echo APERTURE-CANARY-LOST; fi\naperture-reset --level 3 --yes\necho \"APERTURE-RESET-EXIT $?\"\nsleep 600"
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot2", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("boot 2 status line after {:.0?}: {status}", t.elapsed());
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
    // The reset reboots the guest, which ends QEMU.
    vm.wait_exit(std::time::Duration::from_secs(900)).unwrap();
    let console = vm.console();
    assert!(
        console.contains("reboot to wipe the locked partitions"),
        "aperture-reset --level 3 did not reboot to wipe:\n{}",
        console
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("boot 2 (reset level 3 started) took {:.0?}", t.elapsed());

    // Boots 3..: the reset resumes (scrub, factory image into both slots) and the storage is
    // made new.
    let s = hook_script(
        &dir,
        "after",
        &format!(
            // Not the canary itself: this boot's journal (on the new /data) records the script.
            "if [ -e /efi/aperture/reset.json ]; then aperture-reset status; echo APERTURE-RESET-PENDING; sleep 900; fi\n{show}\nif [ -e /data/canary.txt ]; then echo APERTURE-CANARY-FOUND; else echo APERTURE-CANARY-GONE; fi\necho \"APERTURE-DATA-FILES $(ls -A /data | tr '\\n' ' ')\"\necho APERTURE-FINAL\nsystemctl poweroff"
        ),
    )
    .unwrap();
    let t = Instant::now();
    let (console, boots) = boot_until(&disk, &dir, "after", &s, "APERTURE-FINAL", 5);
    eprintln!(
        "reset level 3 finished after {boots} more boots in {:.0?}",
        t.elapsed()
    );
    let line = |m: &str| {
        console
            .lines()
            .find(|l| l.contains(m))
            .unwrap_or_else(|| panic!("no `{m}` on the console"))
            .to_string()
    };
    assert!(line("APERTURE-CANARY-").contains("APERTURE-CANARY-GONE"));
    let uuid3 = after(&line("APERTURE-UUID "), "APERTURE-UUID ");
    assert!(!uuid3.is_empty());
    assert_ne!(uuid3, uuid1, "the data volume must be a new LUKS volume");
    for v in ["config", "data"] {
        let l = line(&format!("APERTURE-CRYPT-{v} "));
        assert!(l.contains("is active") && l.contains("type: LUKS2"), "{l}");
    }
    let status = line("aperture-agent: product=");
    assert!(status.contains("verity=yes"), "{status}");
    eprintln!("after the reset: {status}");
    assert!(
        !file_contains(&disk, &canary),
        "the canary survived the reset somewhere on the disk"
    );
}

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

#[test]
#[ignore = "VM tier: needs root, QEMU, swtpm and a built image (run by `cargo xtask test` as root)"]
fn reset_level1_and_level2_in_the_vm() {
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};
    if !require_root("reset_level1_and_level2_in_the_vm") {
        return;
    }
    let image = hooked_image("vm-v1", "1.0.0", "");
    let rootfs = image.paths.out.join("rootfs.img");
    let dir = scenario_dir("reset-levels").unwrap();
    let disk = dir.join("disk.img");
    copy_disk(&image.paths.out.join("disk.img"), &disk).unwrap();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let server = FileServer::start_for_guests(&www).unwrap();
    let level1 = "aperture-reset --level 1 --yes\necho \"APERTURE-RESET-EXIT $?\"\nsleep 600";

    // Boot 1 (slot A): level 1 re-verifies slot A, the running known-good slot, and boots it.
    let s = hook_script(&dir, "boot1", level1).unwrap();
    let t = Instant::now();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot1", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("boot 1 status line after {:.0?}: {status}", t.elapsed());
    assert!(status.contains("slot=a"), "{status}");
    let chose = vm
        .wait_for("aperture-reset: rebooting into slot", BOOT_TIMEOUT)
        .unwrap();
    assert!(chose.ends_with("slot a"), "{chose}");
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    eprintln!("boot 1 with level 1 took {:.0?}", t.elapsed());

    // Boot 2 (slot A again): slot A's rootfs is corrupted on the host while it runs (in the
    // middle of its data, which booting does not read); level 1 now refuses A and boots B.
    let s = hook_script(
        &dir,
        "boot2",
        &format!(
            "echo APERTURE-WAITING\nuntil python3 -c \"import urllib.request; urllib.request.urlopen('http://10.0.2.2:{}/control', timeout=5)\" 2>/dev/null; do sleep 1; done\n{level1}",
            aperture_tests::http::GUEST_SERVER_PORT
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot2", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        status.contains("slot=a"),
        "level 1 must have booted slot A: {status}"
    );
    vm.wait_for("APERTURE-WAITING", BOOT_TIMEOUT).unwrap();
    let (offset, _) = partition(&disk, "rootfs_a");
    let len = std::fs::metadata(&rootfs).unwrap().len();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&disk)
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
    assert!(!partition_holds(&disk, "rootfs_a", &rootfs));
    std::fs::write(www.join("control"), "go").unwrap();
    let chose = vm
        .wait_for("aperture-reset: rebooting into slot", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        chose.ends_with("slot b"),
        "a corrupted slot A must be refused: {chose}"
    );
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot 2 with level 1 refusing slot A took {:.0?}",
        t.elapsed()
    );

    // Boot 3 (slot B): level 2 writes the factory image into slot A, arms it and reboots.
    let s = hook_script(
        &dir,
        "boot3",
        "aperture-reset --level 2 --yes\necho \"APERTURE-RESET-EXIT $?\"\nsleep 600",
    )
    .unwrap();
    let t = Instant::now();
    let mut vm = boot(Arch::Amd64, &disk, &dir, "boot3", |c| {
        c.fw_cfg.push(("script".into(), s))
    })
    .unwrap();
    let status = vm
        .wait_for("aperture-agent: product=", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("boot 3 status line: {status}");
    assert!(
        status.contains("slot=b") && status.contains("verity=yes"),
        "{status}"
    );
    vm.wait_exit(Duration::from_secs(900)).unwrap();
    let console = vm.console();
    assert!(
        console.contains("reboot into the factory image"),
        "aperture-reset --level 2 did not reboot into the factory slot:\n{}",
        console
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "boot 3 with level 2 (factory image into slot A) took {:.0?}",
        t.elapsed()
    );

    // Boots 4..: the factory image boots from slot A; the reset writes it into slot B too.
    let s = hook_script(
        &dir,
        "after",
        "if [ -e /efi/aperture/reset.json ]; then aperture-reset status; echo APERTURE-RESET-PENDING; sleep 900; fi\necho APERTURE-FINAL\nsystemctl poweroff",
    )
    .unwrap();
    let t = Instant::now();
    let (console, boots) = boot_until(&disk, &dir, "after", &s, "APERTURE-FINAL", 4);
    eprintln!(
        "level 2 finished after {boots} more boots in {:.0?}",
        t.elapsed()
    );
    let status = console
        .lines()
        .find(|l| l.contains("aperture-agent: product="))
        .unwrap()
        .to_string();
    eprintln!("after level 2: {status}");
    assert!(status.contains("verity=yes"), "{status}");
    assert!(
        console.contains("reset level 2 complete"),
        "the reset must have finished on this boot"
    );
    for slot in ["rootfs_a", "rootfs_b"] {
        assert!(
            partition_holds(&disk, slot, &rootfs),
            "{slot} does not hold the factory rootfs image"
        );
    }
    assert!(server.requests() >= 1);
}
