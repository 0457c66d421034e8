//! The `aperture-storage` binary on a fake appliance root (`--root`): `status` prints, and a
//! reader that stops reading (`aperture-storage status | head -1`) is not a crash.

use std::path::Path;
use std::process::{Command, Stdio};

use aperture_appliance::store::PARTITION_BYTES;
use aperture_appliance::{Board, BuildFacts, Files};

fn appliance(root: &Path) {
    let files = Files::at(root);
    let facts = BuildFacts {
        product: "test".into(),
        version: "1.0.0".into(),
        security_version: 1,
        board: Board::QemuX86_64,
        recipe_sha256: "00".into(),
        source_date_epoch: 1,
        required_services: Vec::new(),
        tpm: true,
        reset_button: None,
    };
    std::fs::create_dir_all(files.build_facts().parent().unwrap()).unwrap();
    std::fs::write(files.build_facts(), facts.to_bytes()).unwrap();
    std::fs::create_dir_all(files.partlabel_dir()).unwrap();
    for (label, size) in [
        ("config", 1 << 20),
        ("data", 2 << 20),
        ("aperture_state", PARTITION_BYTES),
    ] {
        let f = std::fs::File::create(files.partition(label)).unwrap();
        f.set_len(size).unwrap();
    }
    std::fs::create_dir_all(files.mountinfo().parent().unwrap()).unwrap();
    std::fs::write(files.mountinfo(), "").unwrap();
}

fn storage(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aperture-storage"));
    c.arg("--root").arg(root);
    c
}

#[test]
fn status_prints_what_it_finds() {
    let dir = tempfile::tempdir().unwrap();
    appliance(dir.path());
    let out = storage(dir.path()).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("key source: none recorded yet (the first boot seals to tpm2)"),
        "{text}"
    );
    assert!(
        text.contains("config: ") && text.contains("luks=no"),
        "{text}"
    );
    let out = storage(dir.path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["board_tpm"], true);
}

#[test]
fn status_into_a_closed_pipe_is_not_a_crash() {
    for json in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        appliance(dir.path());
        // The reader is gone before the first byte is written, as `head -1` is after its line.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = storage(dir.path());
        cmd.arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            out.status.success(),
            "json {json}: {:?}: {stderr}",
            out.status
        );
    }
}
