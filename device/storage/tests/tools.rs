//! The real implementations against the real tools, where they work without root and without
//! device-mapper: cryptsetup on a plain file (format, label, tokens, repair, key check, erase;
//! `open` needs dm and is left to the VM tier) and tpm2-tools against swtpm over a socket.
//! A missing tool skips the test, or fails it when `APERTURE_REQUIRE_TOOLS=1`.

use std::path::Path;
use std::process::Command;

use aperture_storage::records::{find_token, token_json};
use aperture_storage::setup::repair_header;
use aperture_storage::{
    luks, Access, Crypt, CryptSetup, FilePartition, Key, KeySource, Partition, StorageError, Tpm2,
    Volume,
};
use aperture_sys::tool::Swtpm;

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("APERTURE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("`{tool}` is not installed and APERTURE_REQUIRE_TOOLS=1");
        }
        eprintln!("SKIPPED: `{tool}` is not installed");
    }
    found
}

const UUID: &str = "0f1e2d3c-4b5a-4697-8877-665544332211";

/// A 32 MiB LUKS2 volume in a file, formatted by our CryptSetup with `UUID`.
fn volume(dir: &Path) -> (FilePartition, CryptSetup, Key) {
    let file = dir.join("volume.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let part = FilePartition::whole(&file, "data", Access::Shared).unwrap();
    let crypt = CryptSetup::new(dir.join("mapper"));
    let key = Key::random().unwrap();
    crypt
        .format_as(&part, &key, "aperture-formatting", UUID)
        .unwrap();
    (part, crypt, key)
}

fn luks_dump(file: &Path) -> (bool, String) {
    let out = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn cryptsetup_formats_labels_keeps_tokens_and_erases_a_file() {
    if !have("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (part, crypt, key) = volume(dir.path());
    // Our reader agrees with cryptsetup's header: both copies, checksums, UUID, label.
    let probe = luks::probe(&part).unwrap();
    assert!(!probe.needs_repair(), "{}", probe.describe());
    let current = probe.current().unwrap();
    assert_eq!(current.uuid, UUID);
    assert_eq!(current.keyslots, ["0"]);
    assert_eq!(
        crypt.label(&part).unwrap().as_deref(),
        Some("aperture-formatting")
    );
    crypt.set_label(&part, "data").unwrap();
    assert_eq!(crypt.label(&part).unwrap().as_deref(), Some("data"));
    assert!(crypt.check_key(&part, &key).unwrap());
    assert!(!crypt.check_key(&part, &Key::random().unwrap()).unwrap());

    // Tokens: ours, the key in it never on a command line; replaced in place.
    let plain = aperture_storage::UnsafePlainKey.seal("data", &key).unwrap();
    crypt
        .import_token(&part, &token_json(Volume::Data, "0", &plain), None)
        .unwrap();
    let probe = luks::probe(&part).unwrap();
    let token = find_token(probe.current().unwrap()).unwrap();
    assert_eq!(token.sealed.unwrap(), plain);
    let other = Key::random().unwrap();
    let replaced = aperture_storage::UnsafePlainKey
        .seal("data", &other)
        .unwrap();
    crypt
        .import_token(
            &part,
            &token_json(Volume::Data, "0", &replaced),
            Some(&token.id),
        )
        .unwrap();
    let probe = luks::probe(&part).unwrap();
    assert!(!probe.needs_repair());
    let current = probe.current().unwrap();
    assert_eq!(current.tokens.len(), 1);
    assert_eq!(find_token(current).unwrap().sealed.unwrap(), replaced);

    let header = luks::read_header(&part).unwrap().unwrap();
    assert_eq!(header.version, 2);
    assert_eq!(header.hdr_size, 16384);
    assert_eq!(
        header.metadata_end(),
        16 << 20,
        "cryptsetup's default 16 MiB area"
    );
    assert_eq!(header.keyslot_areas.len(), 1);
    assert_eq!(crypt.mapped("aperture-data").unwrap(), None);
    let (offset, size) = header.keyslot_areas[0];
    let mut before = vec![0u8; size as usize];
    part.read_exact_at(&mut before, offset).unwrap();
    crypt.erase(&part).unwrap();
    assert!(luks::read_header(&part)
        .unwrap()
        .unwrap()
        .keyslot_areas
        .is_empty());
    // cryptsetup 2.6 overwrites the keyslot area with random bytes: no block of it is left.
    let mut after = vec![0u8; size as usize];
    part.read_exact_at(&mut after, offset).unwrap();
    let kept = before
        .chunks(512)
        .zip(after.chunks(512))
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        kept, 0,
        "sectors of the keyslot area survived cryptsetup erase"
    );
    assert!(
        luks::is_luks(&part).unwrap(),
        "erase keeps the header; reset zeroes it after"
    );
    crypt.erase(&part).unwrap();
}

/// What a power cut leaves when it falls while `luksFormat` derives the keyslot's key (seconds,
/// after it has written both header copies and before the keyslot): made here by removing the
/// only keyslot of a real volume. Storage's first-boot recovery relies on reading it as "our
/// header, no keyslot, no key opens it" (found by the VM tier: a cut 2 s into formatting data).
#[test]
fn a_real_header_without_a_keyslot_reads_as_such_and_no_key_opens_it() {
    if !have("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (part, crypt, key) = volume(dir.path());
    let out = Command::new("cryptsetup")
        .args(["luksKillSlot", "--batch-mode"])
        .arg(dir.path().join("volume.img"))
        .arg("0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let probe = luks::probe(&part).unwrap();
    assert!(!probe.needs_repair(), "{}", probe.describe());
    let current = probe.current().unwrap();
    assert_eq!(current.uuid, UUID);
    assert_eq!(current.label.as_deref(), Some("aperture-formatting"));
    assert!(current.keyslots.is_empty(), "{:?}", current.keyslots);
    assert!(!crypt.check_key(&part, &key).unwrap());
}

#[test]
fn a_real_volume_with_its_first_4k_zeroed_is_repaired_with_its_uuid_keyslot_and_key() {
    // Issue 12.3 on cryptsetup's own header.
    if !have("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (part, crypt, key) = volume(dir.path());
    let file = dir.path().join("volume.img");
    crypt.set_label(&part, "data").unwrap();
    let (ok, before) = luks_dump(&file);
    assert!(ok, "{before}");
    part.write_all_at(&[0u8; 4096], 0).unwrap();
    part.sync().unwrap();
    assert!(luks::is_luks(&part).unwrap(), "the secondary header counts");
    let probe = luks::probe(&part).unwrap();
    assert_eq!(probe.primary, luks::CopyState::Missing);
    assert!(probe.needs_repair());
    assert_eq!(probe.current().unwrap().uuid, UUID);

    let after = repair_header(&crypt, Volume::Data, &part, &probe).unwrap();
    assert_eq!(after.primary.valid().unwrap().uuid, UUID);
    assert!(!after.needs_repair());
    let (ok, dump) = luks_dump(&file);
    assert!(ok, "{dump}");
    assert!(dump.contains(&format!("UUID:          \t{UUID}")), "{dump}");
    assert!(dump.contains("Keyslots:\n  0: luks2"), "{dump}");
    assert!(dump.contains("Label:         \tdata"), "{dump}");
    // The secret still opens it, checked by cryptsetup itself.
    assert!(crypt.check_key(&part, &key).unwrap());
    let mut test = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file=-"])
        .arg(&file)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    test.stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    assert!(test.wait().unwrap().success());

    // Both copies torn: repair fails, and the error names the volume and the way out.
    for at in [600u64, 16384 + 600] {
        part.write_all_at(&[0xffu8; 64], at).unwrap();
    }
    let probe = luks::probe(&part).unwrap();
    assert!(probe.any_magic() && probe.current().is_none());
    let err = repair_header(&crypt, Volume::Data, &part, &probe).unwrap_err();
    assert!(matches!(err, StorageError::HeaderDamaged { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("volume.img") && text.contains("wipes this volume"),
        "{text}"
    );
}

#[test]
fn tpm2_seals_and_unseals_with_swtpm_keeping_nothing_on_disk() {
    if !have("swtpm") || !have("tpm2_createprimary") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let source = Tpm2::new(dir.path().to_path_buf()).with_tcti(tpm.tcti());
    let key = Key::random().unwrap();
    let sealed = source.seal("data", &key).unwrap();
    let aperture_storage::SealedKey::Tpm2 {
        tpm2_public,
        tpm2_private,
        noda,
        boot: None,
    } = &sealed
    else {
        panic!("{sealed:?}")
    };
    for blob in [tpm2_public, tpm2_private] {
        assert!(
            !blob.windows(16).any(|w| w == &key.as_bytes()[..16]),
            "the blob holds the key"
        );
    }
    assert_eq!(
        source.unseal("data", &sealed).unwrap().as_bytes(),
        key.as_bytes()
    );
    // Through its JSON form, as the token and the device state keep it.
    let json = serde_json::to_vec(&sealed).unwrap();
    let back: aperture_storage::SealedKey = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        source.unseal("data", &back).unwrap().as_bytes(),
        key.as_bytes()
    );
    let mut damaged = tpm2_public.clone();
    damaged.truncate(10);
    let bad = aperture_storage::SealedKey::Tpm2 {
        tpm2_public: damaged,
        tpm2_private: tpm2_private.clone(),
        noda: *noda,
        boot: None,
    };
    assert!(source.unseal("data", &bad).is_err());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no scratch left"
    );
    assert!(*noda);

    // A TPM in dictionary-attack lockout, as a few power cuts leave one (a TPM counts each
    // shutdown that was not orderly as a failed try): with maxTries 0 every object subject to
    // DA protection is refused (TPM_RC_LOCKOUT). The key still unseals, because neither the
    // primary key nor the sealed object is subject to it; one sealed with the old templates
    // (no `noda`) is refused, which is how the VM tier's fourth power cut lost the data.
    let tpm2 = |program: &str| {
        let mut c = Command::new(program);
        c.env("TPM2TOOLS_TCTI", tpm.tcti());
        c
    };
    let legacy_dir = tempfile::tempdir().unwrap();
    let (legacy_pub, legacy_priv) = (
        legacy_dir.path().join("k.pub"),
        legacy_dir.path().join("k.priv"),
    );
    let primary = legacy_dir.path().join("p.ctx");
    assert!(tpm2("tpm2_createprimary")
        .args(["-Q", "-C", "o", "-c"])
        .arg(&primary)
        .status()
        .unwrap()
        .success());
    assert!(tpm2("tpm2_flushcontext")
        .arg("-t")
        .status()
        .unwrap()
        .success());
    seal_with_tools(
        tpm2("tpm2_create"),
        &primary,
        &legacy_pub,
        &legacy_priv,
        None,
        key.as_bytes(),
    );
    assert!(tpm2("tpm2_flushcontext")
        .arg("-t")
        .status()
        .unwrap()
        .success());
    let legacy = aperture_storage::SealedKey::Tpm2 {
        tpm2_public: std::fs::read(&legacy_pub).unwrap(),
        tpm2_private: std::fs::read(&legacy_priv).unwrap(),
        noda: false,
        boot: None,
    };
    assert_eq!(
        source.unseal("data", &legacy).unwrap().as_bytes(),
        key.as_bytes(),
        "a key sealed with the old templates still unseals outside lockout"
    );
    // One failed try allowed, then one: a password-protected object opened with a wrong one.
    let lockout = tpm2("tpm2_dictionarylockout")
        .args(["-s", "-n", "1", "-t", "1000", "-l", "1000"])
        .output()
        .unwrap();
    assert!(lockout.status.success(), "{lockout:?}");
    let (w_pub, w_priv, w_ctx) = (
        legacy_dir.path().join("w.pub"),
        legacy_dir.path().join("w.priv"),
        legacy_dir.path().join("w.ctx"),
    );
    seal_with_tools(
        tpm2("tpm2_create"),
        &primary,
        &w_pub,
        &w_priv,
        Some("secret"),
        b"guarded",
    );
    assert!(tpm2("tpm2_flushcontext")
        .arg("-t")
        .status()
        .unwrap()
        .success());
    assert!(tpm2("tpm2_load")
        .args(["-Q", "-C"])
        .arg(&primary)
        .arg("-u")
        .arg(&w_pub)
        .arg("-r")
        .arg(&w_priv)
        .arg("-c")
        .arg(&w_ctx)
        .status()
        .unwrap()
        .success());
    assert!(tpm2("tpm2_flushcontext")
        .arg("-t")
        .status()
        .unwrap()
        .success());
    let wrong = tpm2("tpm2_unseal")
        .arg("-c")
        .arg(&w_ctx)
        .args(["-p", "wrong"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let cap = tpm2("tpm2_getcap")
        .arg("properties-variable")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&cap.stdout).contains("inLockout:                 1"),
        "the TPM is not in lockout: {}",
        String::from_utf8_lossy(&cap.stdout)
    );
    assert_eq!(
        source.unseal("data", &sealed).unwrap().as_bytes(),
        key.as_bytes(),
        "in lockout"
    );
    let refused = source.unseal("data", &legacy).unwrap_err().to_string();
    assert!(
        refused.contains("0x921") || refused.to_lowercase().contains("lockout"),
        "{refused}"
    );
    let resealed = source.seal("config", &key).unwrap();
    assert_eq!(
        source.unseal("config", &resealed).unwrap().as_bytes(),
        key.as_bytes(),
        "sealing works in lockout too"
    );
}

/// `tpm2_create` of a sealed data object holding `data` under `primary`, with tpm2-tools'
/// default attributes (no `noda`), guarded by `auth` if given; the blobs to `public`, `private`.
fn seal_with_tools(
    mut create: Command,
    primary: &Path,
    public: &Path,
    private: &Path,
    auth: Option<&str>,
    data: &[u8],
) {
    create.args(["-Q", "-C"]).arg(primary);
    if let Some(auth) = auth {
        create.args(["-p", auth]);
    }
    let mut child = create
        .args(["-i", "-", "-u"])
        .arg(public)
        .arg("-r")
        .arg(private)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// A UKI (synthetic stub, the sections the stub measures) carrying a `.apolicy` for security
/// version `sv`, signed with the RSA key `key` by openssl as the builder signs it.
fn uki_with_policy(dir: &Path, key: &Path, cmdline: &str, sv: u64) -> Vec<u8> {
    use aperture_uefi::{apolicy, assemble_uki, testpe, SignedPolicy};
    let stub = testpe::synthetic_stub();
    let sections = |policy: Option<&[u8]>| {
        let mut s: Vec<(&str, &[u8])> = vec![
            (".osrel", b"ID=aperture-test\n"),
            (".cmdline", cmdline.as_bytes()),
        ];
        s.extend(policy.map(|p| (apolicy::SECTION, p)));
        s.push((".linux", b"a kernel"));
        assemble_uki(&stub, &s).unwrap()
    };
    let pcr11 = aperture_uefi::predict_pcr11(&sections(None)).unwrap();
    let mut policy = SignedPolicy::unsigned(pcr11, sv);
    let msg = dir.join("msg");
    std::fs::write(&msg, policy.message()).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl dgst -sign");
    policy.signature = out.stdout;
    sections(Some(&policy.encode()))
}

/// What firmware and the stub leave in the TPM for a boot of `uki` with Secure Boot in
/// `state` (a word standing for firmware's PCR 7 events).
fn boot(tpm: &Swtpm, state: &str, uki: &[u8]) {
    use sha2::{Digest, Sha256};
    tpm.power_cycle();
    let extend = |pcr: u32, digest: &[u8]| {
        let ok = Command::new("tpm2_pcrextend")
            .arg(format!("{pcr}:sha256={}", hex::encode(digest)))
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .status()
            .unwrap();
        assert!(ok.success());
    };
    extend(7, &Sha256::digest(state.as_bytes()));
    for event in aperture_uefi::pcr::pcr11_events(uki).unwrap() {
        extend(11, &event.digest);
    }
}

fn efivars(dir: &Path, secure_boot: u8) -> std::path::PathBuf {
    let vars = dir.join(format!("efivars-{secure_boot}"));
    std::fs::create_dir_all(&vars).unwrap();
    let guid = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    std::fs::write(
        vars.join(format!("SecureBoot-{guid}")),
        [6, 0, 0, 0, secure_boot],
    )
    .unwrap();
    std::fs::write(vars.join(format!("SetupMode-{guid}")), [6, 0, 0, 0, 0]).unwrap();
    vars
}

/// Issue 18's policy end to end on swtpm: a key sealed to the boot chain unseals in the boot
/// it was sealed in and after an update to another signed UKI, with nothing re-sealed; it
/// does not unseal after the barrier, below the floor, with Secure Boot off, with a policy
/// another key signed, or without a policy at all; sealing with Secure Boot off is refused.
/// Each refusal says why.
#[test]
fn keys_sealed_to_the_boot_chain_unseal_only_for_our_signed_ukis_with_secure_boot_on() {
    let test = "keys_sealed_to_the_boot_chain_unseal_only_for_our_signed_ukis_with_secure_boot_on";
    let tools = [
        "tpm2_createprimary",
        "tpm2_loadexternal",
        "tpm2_verifysignature",
        "tpm2_policynv",
        "swtpm_ioctl",
    ];
    let Some(tpm) = Swtpm::for_test(&tools, test) else {
        return;
    };
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        assert!(Command::new("openssl")
            .args(args)
            .current_dir(d)
            .status()
            .unwrap()
            .success())
    };
    openssl(&["genrsa", "-out", "policy.key", "2048"]);
    openssl(&[
        "rsa",
        "-in",
        "policy.key",
        "-pubout",
        "-out",
        "policy.pub.pem",
    ]);
    openssl(&["genrsa", "-out", "other.key", "2048"]);
    let v1 = uki_with_policy(
        d,
        &d.join("policy.key"),
        "root=PARTLABEL=rootfs_a aperture.slot=a",
        1,
    );
    let v2 = uki_with_policy(
        d,
        &d.join("policy.key"),
        "root=PARTLABEL=rootfs_b aperture.slot=b",
        2,
    );
    let forged = uki_with_policy(
        d,
        &d.join("other.key"),
        "root=PARTLABEL=rootfs_b aperture.slot=b",
        2,
    );
    for (name, bytes) in [("v1.efi", &v1), ("v2.efi", &v2), ("forged.efi", &forged)] {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let (on, off) = (efivars(d, 1), efivars(d, 0));
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let tpm2 = |uki: &str, vars: &Path| {
        Tpm2::new(run.clone())
            .with_tcti(tpm.tcti())
            .with_boot_chain(aperture_storage::BootChain {
                policy_key: d.join("policy.pub.pem"),
                uki: Some(d.join(uki)),
                efivars: vars.to_path_buf(),
            })
    };
    let key = Key::random().unwrap();
    let refused = |source: &Tpm2, sealed: &aperture_storage::SealedKey, want: &[&str]| {
        let err = source.unseal("data", sealed).unwrap_err();
        assert!(matches!(err, StorageError::BootChain { .. }), "{err:?}");
        let text = err.to_string();
        for w in want {
            assert!(text.contains(w), "wanted {w:?} in: {text}");
        }
    };

    // First boot of v1, Secure Boot off: nothing is sealed.
    boot(&tpm, "secure-boot-off", &v1);
    let err = tpm2("v1.efi", &off)
        .seal("data", &key)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Secure Boot is off") && err.contains("nothing was written"),
        "{err}"
    );

    // First boot of v1 with Secure Boot on: sealed (and unsealed once, inside seal).
    boot(&tpm, "secure-boot-on-our-db", &v1);
    let source = tpm2("v1.efi", &on);
    let sealed = source.seal("data", &key).unwrap();
    let aperture_storage::SealedKey::Tpm2 {
        boot: Some(binding),
        ..
    } = &sealed
    else {
        panic!("not bound: {sealed:?}")
    };
    assert_eq!(binding.pcr7.len(), 64);
    // Kept as JSON in the token and the device state.
    let sealed: aperture_storage::SealedKey =
        serde_json::from_slice(&serde_json::to_vec(&sealed).unwrap()).unwrap();
    assert_eq!(
        source.unseal("data", &sealed).unwrap().as_bytes(),
        key.as_bytes()
    );

    // No password opens it without the policy (no `userwithauth`).
    let aperture_storage::SealedKey::Tpm2 {
        tpm2_public,
        tpm2_private,
        ..
    } = &sealed
    else {
        unreachable!()
    };
    let unbound = aperture_storage::SealedKey::Tpm2 {
        tpm2_public: tpm2_public.clone(),
        tpm2_private: tpm2_private.clone(),
        noda: true,
        boot: None,
    };
    assert!(Tpm2::new(run.clone())
        .with_tcti(tpm.tcti())
        .unseal("data", &unbound)
        .is_err());

    // After storage's barrier, nothing in this boot unseals it.
    source.barrier().unwrap();
    refused(&source, &sealed, &["PCR 11", "barrier"]);

    // An update: v2 boots with its own signed policy; nothing was re-sealed.
    boot(&tpm, "secure-boot-on-our-db", &v2);
    assert_eq!(
        tpm2("v2.efi", &on)
            .unseal("data", &sealed)
            .unwrap()
            .as_bytes(),
        key.as_bytes()
    );
    // v1's UKI on the ESP presented while v2 booted: PCR 11 is not what it approves.
    refused(&tpm2("v1.efi", &on), &sealed, &["PCR 11"]);

    // v2 commits: the floor rises to 2; v2 still unseals, v1 no longer does.
    assert!(Command::new("tpm2_nvincrement")
        .args(["-C", "o", "0x1500a70"])
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .status()
        .unwrap()
        .success());
    assert_eq!(source.floor(), Some(2));
    boot(&tpm, "secure-boot-on-our-db", &v2);
    assert_eq!(
        tpm2("v2.efi", &on)
            .unseal("data", &sealed)
            .unwrap()
            .as_bytes(),
        key.as_bytes()
    );
    boot(&tpm, "secure-boot-on-our-db", &v1);
    refused(
        &tpm2("v1.efi", &on),
        &sealed,
        &["security version 1", "below the anti-rollback floor (2)"],
    );

    // Secure Boot off (or another db): PCR 7 differs.
    boot(&tpm, "secure-boot-off", &v2);
    refused(
        &tpm2("v2.efi", &off),
        &sealed,
        &[
            "Secure Boot is off",
            "PCR 7 is",
            "changed since the first boot",
        ],
    );
    boot(&tpm, "secure-boot-on-another-db", &v2);
    refused(
        &tpm2("v2.efi", &on),
        &sealed,
        &["PCR 7 is", "key databases"],
    );

    // A policy signed by another key, for the very UKI that booted.
    boot(&tpm, "secure-boot-on-our-db", &forged);
    refused(
        &tpm2("forged.efi", &on),
        &sealed,
        &["not signed by this image's TPM policy key"],
    );

    // A key sealed before the boot chain was is sealed to it by `rebind`, and then unseals
    // only through the policy.
    boot(&tpm, "secure-boot-on-our-db", &v2);
    let plain = Tpm2::new(run.clone())
        .with_tcti(tpm.tcti())
        .seal("data", &key)
        .unwrap();
    let rebound = tpm2("v2.efi", &on)
        .rebind("data", &key, &plain)
        .unwrap()
        .expect("rebound");
    assert!(matches!(
        rebound,
        aperture_storage::SealedKey::Tpm2 { boot: Some(_), .. }
    ));
    assert_eq!(
        tpm2("v2.efi", &on)
            .unseal("data", &rebound)
            .unwrap()
            .as_bytes(),
        key.as_bytes()
    );
    assert!(tpm2("v2.efi", &on)
        .rebind("data", &key, &rebound)
        .unwrap()
        .is_none());
    assert!(
        tpm2("v2.efi", &off)
            .rebind("data", &key, &plain)
            .unwrap()
            .is_none(),
        "not with Secure Boot off"
    );

    // A board without the boot chain cannot unseal a bound key, and says so.
    let err = Tpm2::new(run.clone())
        .with_tcti(tpm.tcti())
        .unseal("data", &sealed)
        .unwrap_err();
    assert!(
        err.to_string().contains("sealed to the signed boot chain"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&run).unwrap().next().is_none(),
        "no scratch left"
    );
}
