//! Compares `verity::append_hash_tree` with the real `veritysetup format` byte for byte, for
//! data sizes around every level boundary, and has `veritysetup verify` accept our output.
//! Needs veritysetup (cryptsetup-bin) but no root: it works on plain files. Without the tool
//! the tests print SKIPPED; the committed fixture in fixtures/verity-130-blocks still covers
//! compatibility in tier 1.

use aperture_trust::verity::{
    append_hash_tree, compute_root_hash, format_uuid, hash_tree_size, verify_device,
};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const UUID: [u8; 16] = [
    0x5e, 0x0d, 0x1a, 0x2b, 0x3c, 0x4d, 0x4e, 0x5f, 0x86, 0x97, 0xa8, 0xb9, 0xca, 0xdb, 0xec, 0xfd,
];

fn veritysetup() -> Option<PathBuf> {
    [
        "/usr/sbin/veritysetup",
        "/sbin/veritysetup",
        "/usr/bin/veritysetup",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Deterministic, non-repeating data (xorshift64), so every block hashes differently.
fn data(blocks: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ blocks;
    let mut out = Vec::with_capacity((blocks * 4096) as usize);
    while out.len() < (blocks * 4096) as usize {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out
}

fn run(tool: &Path, args: &[String]) -> String {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running veritysetup");
    assert!(
        out.status.success(),
        "veritysetup {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Formats the same data with veritysetup and with us; asserts identical files and root hash.
fn compare(blocks: u64, salt: &[u8]) {
    let Some(tool) = veritysetup() else {
        eprintln!("SKIPPED: veritysetup not installed (apt-get install cryptsetup-bin)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.img");
    let ours = dir.path().join("ours.img");
    let bytes = data(blocks);
    std::fs::write(&theirs, &bytes).unwrap();
    std::fs::write(&ours, &bytes).unwrap();
    let data_size = blocks * 4096;
    let salt_arg = if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    };
    let t = theirs.display().to_string();
    let stdout = run(
        &tool,
        &[
            "format".into(),
            t.clone(),
            t,
            format!("--hash-offset={data_size}"),
            format!("--salt={salt_arg}"),
            format!("--uuid={}", format_uuid(UUID)),
        ],
    );
    let their_root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|s| s.trim().to_string())
        .expect("root hash in veritysetup output");

    let mut file = File::options().read(true).write(true).open(&ours).unwrap();
    let info = append_hash_tree(&mut file, data_size, salt, UUID).unwrap();
    file.flush().unwrap();
    drop(file);

    assert_eq!(
        info.root_hash.as_str(),
        their_root,
        "root hash, {blocks} blocks"
    );
    let their_bytes = std::fs::read(&theirs).unwrap();
    let our_bytes = std::fs::read(&ours).unwrap();
    assert_eq!(
        their_bytes.len(),
        our_bytes.len(),
        "file length, {blocks} blocks"
    );
    assert_eq!(
        our_bytes.len() as u64,
        data_size + hash_tree_size(data_size)
    );
    assert!(
        their_bytes[data_size as usize..] == our_bytes[data_size as usize..],
        "hash area, {blocks} blocks"
    );

    assert_eq!(
        compute_root_hash(&bytes[..], data_size, salt).unwrap(),
        info.root_hash
    );
    verify_device(File::open(&ours).unwrap(), &info).unwrap();
    verify_device(File::open(&theirs).unwrap(), &info).unwrap();

    // And veritysetup accepts what we wrote.
    let o = ours.display().to_string();
    run(
        &tool,
        &[
            "verify".into(),
            o.clone(),
            o,
            info.root_hash.to_string(),
            format!("--hash-offset={data_size}"),
        ],
    );
}

#[test]
fn one_block() {
    compare(1, b"snakeoil");
}

#[test]
fn blocks_127() {
    compare(127, &[0xab; 32]);
}

#[test]
fn blocks_128() {
    compare(128, &[0xcd; 32]);
}

#[test]
fn blocks_129() {
    compare(129, &[0x01, 0x02, 0x03]);
}

#[test]
fn without_salt() {
    compare(300, b"");
}

#[test]
fn longest_salt() {
    compare(5, &[0x5a; 256]);
}

#[test]
fn blocks_20000_three_levels() {
    compare(20_000, &[0x42; 32]);
}
