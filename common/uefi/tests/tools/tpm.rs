//! The offline policy digests and names against the research script policy-digest.py and
//! against a software TPM driven by tpm2-tools 5.4 (trial sessions, `loadexternal`,
//! `nvreadpublic`): the approved policy the builder signs must be the digest the appliance's
//! TPM computes, byte for byte, or nothing ever unseals.

use std::path::Path;
use std::process::Command;

use aperture_sys::tool::Swtpm;
use aperture_uefi::pcr::{extend, pcr11_events};
use aperture_uefi::policy::{
    approved_policy, sealed_policy, LOADEXTERNAL_RSA_ATTRIBUTES, TPMA_NV_AUTHREAD,
    TPMA_NV_AUTHWRITE, TPMA_NV_NO_DA, TPMA_NV_OWNERREAD, TPMA_NV_OWNERWRITE,
    TPMA_NV_TPM_NT_COUNTER, TPMA_NV_WRITTEN,
};
use aperture_uefi::{
    assemble_uki, nv_index_name, pcr_values_digest, policy_authorize, policy_pcr,
    rsa_public_key_name,
};
use sha2::{Digest, Sha256};

use crate::support::{fake_sections, pairs, research, run, run_text, tool};

/// device/updater's floor counter (`Counter::SecurityFloor`).
const FLOOR_INDEX: u32 = 0x0150_0A70;
/// device/updater's `ATTRIBUTES`, as tpm2-tools spells them for `nvdefine -a`.
const FLOOR_TOOLS_ATTRIBUTES: &str = "nt=counter|ownerread|ownerwrite|authread|authwrite|no_da";
/// The same, as bits; the index is named with WRITTEN once incremented.
const FLOOR_ATTRIBUTES: u32 = TPMA_NV_TPM_NT_COUNTER
    | TPMA_NV_OWNERREAD
    | TPMA_NV_OWNERWRITE
    | TPMA_NV_AUTHREAD
    | TPMA_NV_AUTHWRITE
    | TPMA_NV_NO_DA;
const POLICY_REF: &[u8] = b"aperture-disk-v1";
/// How storage loads the policy key (REPORT.md Q3), writing its name to pk.name.
const LOADEXTERNAL: [&str; 12] = [
    "loadexternal",
    "-Q",
    "-C",
    "o",
    "-G",
    "rsa",
    "-u",
    "policy.pub.pem",
    "-c",
    "pk.ctx",
    "-n",
    "pk.name",
];

fn floor_name() -> Vec<u8> {
    nv_index_name(FLOOR_INDEX, FLOOR_ATTRIBUTES | TPMA_NV_WRITTEN, &[], 8).unwrap()
}

#[test]
fn policy_digest_py_agrees() {
    let test = "policy_digest_py_agrees";
    let (Some(python), Some(script)) = (
        tool("python3", "python3", test),
        research("policy-digest.py", test),
    ) else {
        return;
    };
    let name = run_text(
        Command::new(&python)
            .arg(&script)
            .args(["nvname", "0x01500A70"]),
    );
    assert_eq!(name.trim(), hex::encode(floor_name()));
    for (pcr11, sv) in [([0x81u8; 32], 1u64), ([0x5e; 32], 2), ([0; 32], 40_000)] {
        let out = run(Command::new(&python).arg(&script).args([
            "approved",
            &hex::encode(pcr11),
            "0x01500A70",
            &sv.to_string(),
        ]));
        assert_eq!(
            out.stdout,
            approved_policy(pcr11, &floor_name(), sv),
            "sv {sv}"
        );
    }
}

/// tpm2-tools against the test's swtpm.
fn tpm2(tpm: &Swtpm, dir: &Path, args: &[&str]) -> String {
    run_text(
        Command::new("tpm2")
            .args(args)
            .current_dir(dir)
            .env("TPM2TOOLS_TCTI", tpm.tcti()),
    )
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap()
}

#[test]
fn loadexternal_gives_the_key_name_we_compute() {
    let test = "loadexternal_gives_the_key_name_we_compute";
    let Some(openssl) = tool("openssl", "openssl", test) else {
        return;
    };
    let Some(tpm) = Swtpm::for_test(&["tpm2"], test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for _ in 0..2 {
        run(Command::new(&openssl)
            .args(["genrsa", "-out", "snakeoil-policy.key", "2048"])
            .current_dir(d));
        run(Command::new(&openssl)
            .args([
                "rsa",
                "-in",
                "snakeoil-policy.key",
                "-pubout",
                "-out",
                "policy.pub.pem",
            ])
            .current_dir(d));
        let modulus = run_text(
            Command::new(&openssl)
                .args([
                    "rsa",
                    "-pubin",
                    "-in",
                    "policy.pub.pem",
                    "-noout",
                    "-modulus",
                ])
                .current_dir(d),
        );
        let modulus = hex::decode(modulus.trim().strip_prefix("Modulus=").unwrap()).unwrap();
        tpm2(&tpm, d, &LOADEXTERNAL);
        tpm2(&tpm, d, &["flushcontext", "-t"]);
        let ours = rsa_public_key_name(&modulus, 65537, LOADEXTERNAL_RSA_ATTRIBUTES).unwrap();
        assert_eq!(hex::encode(read(d, "pk.name")), hex::encode(&ours));
        // The TPM's shorthand exponent 0 is another name: tpm2-tools writes 65537.
        assert_ne!(
            rsa_public_key_name(&modulus, 0, LOADEXTERNAL_RSA_ATTRIBUTES).unwrap(),
            ours
        );
    }
}

#[test]
fn nvreadpublic_gives_the_index_name_we_compute() {
    let test = "nvreadpublic_gives_the_index_name_we_compute";
    let Some(tpm) = Swtpm::for_test(&["tpm2"], test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let index = format!("{FLOOR_INDEX:#x}");
    let tpm_name = || {
        let out = tpm2(&tpm, d, &["nvreadpublic", &index]);
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("name:"))
            .unwrap();
        line.split_whitespace().last().unwrap().to_string()
    };
    tpm2(
        &tpm,
        d,
        &[
            "nvdefine",
            &index,
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            FLOOR_TOOLS_ATTRIBUTES,
        ],
    );
    let unwritten = nv_index_name(FLOOR_INDEX, FLOOR_ATTRIBUTES, &[], 8).unwrap();
    assert_eq!(tpm_name(), hex::encode(unwritten));
    tpm2(&tpm, d, &["nvincrement", "-C", "o", &index]);
    assert_eq!(tpm_name(), hex::encode(floor_name()));
    // And the number evidence-policy-authorize-nv.log recorded from another swtpm.
    assert!(tpm_name().starts_with("000b90d526a02ef9"));
}

/// The PCR 11 events of a UKI from the real stub (or, without it, a few fixed digests),
/// replayed with `tpm2 pcrextend` as the stub would extend them.
fn pcr11_digests() -> Vec<[u8; 32]> {
    match std::fs::read(Path::new("/").join(aperture_uefi::STUB_X86_64)) {
        Ok(stub) => {
            let uki = assemble_uki(&stub, &pairs(&fake_sections(10_000))).unwrap();
            pcr11_events(&uki)
                .unwrap()
                .iter()
                .map(|e| e.digest)
                .collect()
        }
        Err(e) => {
            eprintln!("no systemd stub ({e}): replaying fixed digests into PCR 11");
            (0..4u8).map(|i| Sha256::digest([i]).into()).collect()
        }
    }
}

#[test]
fn trial_sessions_give_the_digests_we_compute() {
    let test = "trial_sessions_give_the_digests_we_compute";
    let Some(openssl) = tool("openssl", "openssl", test) else {
        return;
    };
    let Some(tpm) = Swtpm::for_test(&["tpm2"], test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = |args: &[&str]| tpm2(&tpm, d, args);
    let trial = |steps: &[&[&str]]| -> Vec<u8> {
        t(&["startauthsession", "-Q", "-S", "trial.ctx"]);
        for step in steps {
            let mut args = step.to_vec();
            args.extend(["-Q", "-S", "trial.ctx", "-L", "out.policy"]);
            t(&args);
        }
        t(&["flushcontext", "trial.ctx"]);
        read(d, "out.policy")
    };

    // PCR 11 as the stub leaves it; PCR 7 as firmware might.
    let mut pcr11 = [0u8; 32];
    for digest in pcr11_digests() {
        t(&["pcrextend", &format!("11:sha256={}", hex::encode(digest))]);
        pcr11 = extend(pcr11, digest);
    }
    t(&["pcrread", "-Q", "sha256:11", "-o", "pcr11.bin"]);
    assert_eq!(
        read(d, "pcr11.bin"),
        pcr11,
        "the TPM extended what predict_pcr11 does"
    );
    let pcr7 = extend([0; 32], Sha256::digest(b"secureboot-on-our-db").into());
    t(&[
        "pcrextend",
        &format!(
            "7:sha256={}",
            hex::encode(Sha256::digest(b"secureboot-on-our-db"))
        ),
    ]);
    std::fs::write(d.join("pcr7.bin"), pcr7).unwrap();

    // The approved policy: PolicyPCR(11), then PolicyNV(floor <= sv 3).
    let index = format!("{FLOOR_INDEX:#x}");
    t(&[
        "nvdefine",
        &index,
        "-C",
        "o",
        "-s",
        "8",
        "-a",
        FLOOR_TOOLS_ATTRIBUTES,
    ]);
    t(&["nvincrement", "-C", "o", &index]);
    std::fs::write(d.join("sv.bin"), 3u64.to_be_bytes()).unwrap();
    let approved = trial(&[
        &["policypcr", "-l", "sha256:11"],
        &["policynv", "-C", "o", "-i", "sv.bin", &index, "ule"],
    ]);
    assert_eq!(approved, approved_policy(pcr11, &floor_name(), 3));

    // Two PCRs: their values concatenated in ascending order.
    let both = trial(&[&["policypcr", "-l", "sha256:7,11"]]);
    let ours = policy_pcr([0; 32], &[11, 7], pcr_values_digest(&[pcr7, pcr11])).unwrap();
    assert_eq!(both, ours);

    // The sealed object's policy: PolicyAuthorize(policy key, ref), then PolicyPCR(7).
    run(Command::new(&openssl)
        .args(["genrsa", "-out", "snakeoil-policy.key", "2048"])
        .current_dir(d));
    run(Command::new(&openssl)
        .args([
            "rsa",
            "-in",
            "snakeoil-policy.key",
            "-pubout",
            "-out",
            "policy.pub.pem",
        ])
        .current_dir(d));
    t(&LOADEXTERNAL);
    t(&["flushcontext", "-t"]);
    std::fs::write(d.join("ref.bin"), POLICY_REF).unwrap();
    let key_name = read(d, "pk.name");
    let authorize: &[&str] = &["policyauthorize", "-n", "pk.name", "-q", "ref.bin"];
    let sealed = trial(&[
        authorize,
        &["policypcr", "-l", "sha256:7", "-f", "pcr7.bin"],
    ]);
    assert_eq!(sealed, sealed_policy(&key_name, POLICY_REF, pcr7));

    // PolicyAuthorize resets the digest: a PolicyPCR before it leaves no trace.
    let alone = trial(&[authorize]);
    let after_pcr = trial(&[&["policypcr", "-l", "sha256:11"], authorize]);
    assert_eq!(alone, policy_authorize(&key_name, POLICY_REF));
    assert_eq!(after_pcr, alone);
}
