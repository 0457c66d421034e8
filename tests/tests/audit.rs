//! Tier 2: the security baseline and the offline audit on real builds. The default build
//! passes its audit; a build whose overlay gives root a password, or enables a socket unit
//! that listens on a port the policy does not open, fails its last step naming the finding and
//! the fix, and `cargo xtask audit` (the same library call) names it on the folder too. An
//! overlay's setuid file or nftables.conf is refused while the layer is made; a commit that
//! gets a setuid file past the build is named by the audit.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;
use aperture_image::audit::{self, Severity};
use aperture_image::pipeline::{self, BuildOptions, BuildReport};
use aperture_image::progress::Reporter;
use aperture_image::store::{Node, Store, TreeView};
use aperture_tests::{default_image, derived_recipe, require_root, test_root, workspace};

/// Where this suite's recipes and overlays go.
fn recipes() -> PathBuf {
    test_root().join("main/recipes-audit")
}

/// A build with the audit on or skipped (`--insecure-skip-audit`).
/// Where this suite's builds go: scratch of this suite (`cargo xtask test` removes it after),
/// not the shared store the VM tier boots from.
fn audit_out() -> PathBuf {
    test_root().join("audit/out")
}

fn build(recipe: &Path, name: &str, rootfs_only: bool, skip_audit: bool) -> Result<BuildReport> {
    let opts = BuildOptions {
        workspace: workspace(),
        recipe: recipe.to_path_buf(),
        out: Some(audit_out().join(name)),
        cache: None,
        rootfs_only,
        release: false,
        insecure_dev_keys: false,
        insecure_skip_audit: skip_audit,
        bsp: None,
    };
    pipeline::build(&opts, &Reporter::new(None)?)
}

/// An overlay folder `name` under [`recipes`] with one file, and a recipe that adds it.
fn overlay_recipe(name: &str, file: &str, data: &[u8], mode: u32, extra: &str) -> PathBuf {
    let ov = recipes().join(format!("ov-{name}"));
    let _ = std::fs::remove_dir_all(&ov);
    let path = ov.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    derived_recipe(
        &recipes(),
        &format!("{name}.toml"),
        "qemu-x86_64.toml",
        // Only audited, never flashed: no disk.img.zst (about 15 s and 740 MiB a build).
        &format!("overlays = [\"ov-{name}\"]\n{extra}\n[outputs]\ncompressed_disk = false\n"),
    )
    .unwrap()
}

fn read_from_commit(store: &Store, commit: &str, path: &str) -> Vec<u8> {
    let view = TreeView::new(store, commit).unwrap();
    match view.lookup(Path::new(path), true).unwrap().map(|f| f.node) {
        Some(Node::File(ck)) => store.read_file(&ck, 64 << 20).unwrap(),
        other => panic!("{path} in {commit}: {other:?}"),
    }
}

fn violations(r: &audit::AuditReport) -> Vec<&audit::Finding> {
    r.findings
        .iter()
        .filter(|f| f.severity == Severity::Violation)
        .collect()
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn audit_passes_on_the_default_build() {
    if !require_root("audit_passes_on_the_default_build") {
        return;
    }
    let report = default_image().unwrap();
    let out = &report.paths.out;
    let step = report
        .steps
        .iter()
        .find(|s| s.name == "audit")
        .expect("an audit step");
    assert!(step.note.starts_with("passed"), "{step:?}");
    assert!(
        out.join(audit::REPORT).exists(),
        "the build writes audit.json"
    );

    let a = audit::audit_build(out, None).unwrap();
    assert!(a.passed(), "{}", a.to_text());
    assert!(
        a.policy_source.contains("security.json"),
        "{}",
        a.policy_source
    );
    let fw = a.firewall.as_ref().unwrap();
    assert_eq!(fw.policies, ["input drop", "forward drop", "output drop"]);
    assert!(
        fw.inbound.is_empty(),
        "the default policy opens no inbound port: {fw:?}"
    );
    assert!(fw.counters.iter().any(|c| c == "output_dropped"));
    assert!(a.setid_files.is_empty(), "{:?}", a.setid_files);
    assert!(a
        .accounts
        .iter()
        .all(|x| x.password == audit::parse::Password::Locked && !x.login_shell));
    assert_eq!(a.boot_entries.len(), 2, "{:?}", a.boot_entries);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let root = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["role"] == "rootfs")
        .unwrap()["verity"]["root_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(a
        .boot_entries
        .iter()
        .all(|e| e.verity_root.as_deref() == Some(root.as_str())));
    assert!(
        a.outputs.iter().all(|o| o.status != "unsigned"),
        "{:?}",
        a.outputs
    );

    // An unsigned file dropped into the folder is named.
    let stray = out.join("notes.txt");
    std::fs::write(&stray, "not signed\n").unwrap();
    let b = audit::audit_build(out, None).unwrap();
    std::fs::remove_file(&stray).unwrap();
    assert!(
        violations(&b)
            .iter()
            .any(|f| f.check == "artifacts" && f.subject == "notes.txt"),
        "{}",
        b.to_text()
    );

    // The image itself: the generated firewall, locked accounts, masked consoles.
    let store = Store::open(&report.paths.repo).unwrap();
    let c = &report.rootfs.commit;
    let nft = String::from_utf8(read_from_commit(&store, c, "etc/nftables.conf")).unwrap();
    assert!(nft.contains("type filter hook input priority filter; policy drop;"));
    let passwd = String::from_utf8(read_from_commit(&store, c, "etc/passwd")).unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/usr/sbin/nologin\n"),
        "{passwd}"
    );
    let view = TreeView::new(&store, c).unwrap();
    let getty = view
        .lookup(Path::new("etc/systemd/system/serial-getty@.service"), false)
        .unwrap()
        .unwrap();
    let Node::File(ck) = getty.node else {
        panic!("not a file")
    };
    assert_eq!(
        store.symlink_target(&ck).unwrap().as_deref(),
        Some("/dev/null")
    );
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn a_password_for_root_fails_the_build_and_the_audit() {
    if !require_root("a_password_for_root_fails_the_build_and_the_audit") {
        return;
    }
    let base = default_image().unwrap();
    let store = Store::open(&base.paths.repo).unwrap();
    let shadow =
        String::from_utf8(read_from_commit(&store, &base.rootfs.commit, "etc/shadow")).unwrap();
    let hashed = shadow.replacen("root:*:", "root:$6$snakeoil$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ./0123456789abcd:", 1);
    assert_ne!(shadow, hashed, "the base's root entry changed: {shadow}");
    let recipe = overlay_recipe("root-password", "etc/shadow", hashed.as_bytes(), 0o640, "");
    chown(
        recipes().join("ov-root-password/etc/shadow"),
        Some(0),
        Some(42),
    )
    .unwrap();

    // With the audit skipped (loudly) the build completes; `cargo xtask audit` names it.
    let r = build(&recipe, "audit-root-password", false, true).unwrap();
    let step = r.steps.iter().find(|s| s.name == "audit").unwrap();
    assert!(step.note.contains("SKIPPED"), "{step:?}");
    let a = audit::audit_build(&r.paths.out, None).unwrap();
    let v = violations(&a);
    assert_eq!(v.len(), 1, "{}", a.to_text());
    assert_eq!(
        (v[0].check.as_str(), v[0].subject.as_str()),
        ("accounts", "root")
    );
    assert!(v[0].problem.contains("has a password"), "{:?}", v[0]);
    assert!(v[0].fix.contains("root:*:"), "{:?}", v[0]);

    // With the audit on (the default), the build fails at its last step, naming it.
    let err = format!(
        "{:#}",
        build(&recipe, "audit-root-password", false, false).unwrap_err()
    );
    assert!(err.contains("build step `audit`"), "{err}");
    assert!(
        err.contains("VIOLATION [accounts] root: has a password"),
        "{err}"
    );
    assert!(err.contains("fix: lock it"), "{err}");
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn a_socket_on_a_port_the_policy_does_not_open_fails_the_build() {
    if !require_root("a_socket_on_a_port_the_policy_does_not_open_fails_the_build") {
        return;
    }
    default_image().unwrap();
    let socket = "[Unit]\nDescription=A debug shell nobody asked for\n\n[Socket]\nListenStream=0.0.0.0:2222\nAccept=yes\n\n[Install]\nWantedBy=sockets.target\n";
    let recipe = overlay_recipe(
        "open-port",
        "usr/lib/systemd/system/debug-shell.socket",
        socket.as_bytes(),
        0o644,
        "[services]\nenable = [\"debug-shell.socket\"]\n",
    );
    std::fs::write(
        recipes().join("ov-open-port/usr/lib/systemd/system/debug-shell@.service"),
        "[Service]\nExecStart=/bin/sh\nStandardInput=socket\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        build(&recipe, "audit-open-port", false, false).unwrap_err()
    );
    assert!(
        err.contains("VIOLATION [listeners] debug-shell.socket: listens on tcp 0.0.0.0:2222"),
        "{err}"
    );
    assert!(
        err.contains("[[network.inbound]]"),
        "the fix names the recipe key: {err}"
    );

    // The folder is complete (the audit is the last step), so `cargo xtask audit` names the
    // same single finding; the firewall itself still opens nothing.
    let a = audit::audit_build(&audit_out().join("audit-open-port"), None).unwrap();
    let v = violations(&a);
    assert_eq!(v.len(), 1, "{}", a.to_text());
    assert!(a
        .listeners
        .iter()
        .any(|l| l.unit == "debug-shell.socket" && l.state == "enabled"));
    assert!(a.firewall.as_ref().unwrap().inbound.is_empty());
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn setuid_files_are_refused_cleared_or_named() {
    if !require_root("setuid_files_are_refused_cleared_or_named") {
        return;
    }
    let base = default_image().unwrap();
    let tool = b"#!/bin/sh\necho I run as root\n";

    // An overlay's setuid file is refused while the layer is made, naming the key to set.
    let recipe = overlay_recipe("setuid", "usr/local/bin/evil", tool, 0o4755, "");
    let err = format!(
        "{:#}",
        build(&recipe, "audit-setuid", true, false).unwrap_err()
    );
    assert!(
        err.contains("/usr/local/bin/evil is setuid or setgid (mode 4755)"),
        "{err}"
    );
    assert!(err.contains("setuid_allowlist"), "{err}");

    // Allowlisted, it is kept, and the audit agrees.
    let recipe = overlay_recipe(
        "setuid-allowed",
        "usr/local/bin/evil",
        tool,
        0o4755,
        "setuid_allowlist = [\"/usr/local/bin/evil\"]\n",
    );
    let r = build(&recipe, "audit-setuid-allowed", true, false).unwrap();
    let a = audit::audit_build(&r.paths.out, None).unwrap();
    assert!(a.passed(), "{}", a.to_text());
    assert!(a
        .setid_files
        .iter()
        .any(|f| f.path == "/usr/local/bin/evil" && f.allowed && f.mode == 0o4755));

    // A commit that got a setuid file past the build (written straight into the store) is
    // judged against the policy it carries: exactly that file is named.
    let store = Store::open(&base.paths.repo).unwrap();
    let layer = tempfile::tempdir_in(test_root()).unwrap();
    let bin = layer.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in [
        layer.path().to_path_buf(),
        layer.path().join("usr"),
        layer.path().join("usr/local"),
        bin.clone(),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(bin.join("evil"), tool).unwrap();
    std::fs::set_permissions(bin.join("evil"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tampered = store
        .commit_layer(
            &base.rootfs.commit,
            layer.path(),
            "audit-test/tampered",
            "tampered",
            &Default::default(),
            base.rootfs.source_date_epoch,
        )
        .unwrap();
    let a = audit::audit_commit(&store, &tampered, None).unwrap();
    let v = violations(&a);
    assert_eq!(v.len(), 1, "{}", a.to_text());
    assert_eq!(
        (v[0].check.as_str(), v[0].subject.as_str()),
        ("setuid", "/usr/local/bin/evil")
    );
    assert!(v[0].fix.contains("setuid_allowlist"), "{:?}", v[0]);
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn an_overlay_cannot_replace_the_generated_firewall() {
    if !require_root("an_overlay_cannot_replace_the_generated_firewall") {
        return;
    }
    default_image().unwrap();
    let smuggled = "flush ruleset\ntable inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n";
    let recipe = overlay_recipe(
        "nftables",
        "etc/nftables.conf",
        smuggled.as_bytes(),
        0o644,
        "",
    );
    let err = format!(
        "{:#}",
        build(&recipe, "audit-nftables", true, false).unwrap_err()
    );
    assert!(
        err.contains("an overlay provides /etc/nftables.conf"),
        "{err}"
    );
    assert!(err.contains("[[network.inbound]]"), "{err}");
}

#[test]
#[ignore = "privileged tier: needs root and the network (run by `cargo xtask test` as root)"]
fn a_debug_image_logs_root_in_on_the_serial_console_and_passes() {
    if !require_root("a_debug_image_logs_root_in_on_the_serial_console_and_passes") {
        return;
    }
    default_image().unwrap();
    let recipe = derived_recipe(
        &recipes(),
        "debug.toml",
        "qemu-x86_64.toml",
        "debug = true\n",
    )
    .unwrap();
    let r = build(&recipe, "audit-debug", true, false).unwrap();
    let a = audit::audit_build(&r.paths.out, None).unwrap();
    assert!(a.passed(), "{}", a.to_text());
    let store = Store::open(&r.paths.repo).unwrap();
    let c = &r.rootfs.commit;
    let passwd = String::from_utf8(read_from_commit(&store, c, "etc/passwd")).unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n"),
        "{passwd}"
    );
    let dropin = String::from_utf8(read_from_commit(
        &store,
        c,
        "etc/systemd/system/serial-getty@ttyS0.service.d/aperture-autologin.conf",
    ))
    .unwrap();
    assert!(dropin.contains("--autologin root"));
    let view = TreeView::new(&store, c).unwrap();
    assert!(view
        .lookup(
            Path::new("etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"),
            false
        )
        .unwrap()
        .is_some());
    // Only the serial console: the VT gettys stay masked.
    let vt = view
        .lookup(Path::new("etc/systemd/system/getty@.service"), false)
        .unwrap()
        .unwrap();
    let Node::File(ck) = vt.node else { panic!() };
    assert_eq!(
        store.symlink_target(&ck).unwrap().as_deref(),
        Some("/dev/null")
    );
}
