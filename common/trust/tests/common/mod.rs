//! Shared fixtures for the bundle tests: a signed snakeoil release, a reader that collects
//! payloads, and `RawTar`, which writes tar archives byte by byte, including malicious ones
//! that the tar crate refuses to produce.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use aperture_trust::bundle::{write_bundle, BundleReader, PayloadSource};
use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::{
    Artifact, ArtifactName, BuildInfo, Manifest, Payload, PayloadEncoding, Role, Sha256Hex,
};
use aperture_trust::signing::sign_manifest;
use aperture_trust::TrustError;
use std::io::Read;

pub const NOW: u64 = 1_800_000_000;
pub const EPOCH: u64 = 1_700_000_000;

pub struct Fixture {
    pub root: SigningKeyPair,
    pub release: SigningKeyPair,
    pub keyring: SignedKeyring,
    pub manifest: Manifest,
    /// (artifact name, raw bytes, zstd bytes) for every payload artifact, in order.
    pub payloads: Vec<(String, Vec<u8>, Vec<u8>)>,
    pub manifest_json: Vec<u8>,
    pub sig_json: Vec<u8>,
}

pub fn snakeoil(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_secret_bytes(&[seed; 32])
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Half random, half repetitive so zstd has something to do.
            if i % 2 == 0 {
                s as u8
            } else {
                0x55
            }
        })
        .collect()
}

pub fn artifact(name: &str, role: Role, data: &[u8], zst: Option<&[u8]>) -> Artifact {
    Artifact {
        name: ArtifactName::new(name).unwrap(),
        role,
        size: data.len() as u64,
        sha256: Sha256Hex::digest(data),
        verity: None,
        payload: zst.map(|z| Payload {
            encoding: PayloadEncoding::Zstd,
            size: z.len() as u64,
            sha256: Sha256Hex::digest(z),
            base: None,
        }),
    }
}

pub fn fixture_with(edit: impl FnOnce(&mut Manifest)) -> Fixture {
    let root = snakeoil(1);
    let release = snakeoil(2);
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(
            release.public(),
            "release-snakeoil",
            NOW + 1000,
        )],
    )
    .unwrap();
    let rootfs = pseudo_random(300_000, 7);
    let kernel = pseudo_random(20_000, 8);
    let rootfs_zst = zstd::encode_all(&rootfs[..], 3).unwrap();
    let kernel_zst = zstd::encode_all(&kernel[..], 3).unwrap();
    let mut manifest = Manifest {
        format: 1,
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: "1.2.3".parse().unwrap(),
        security_version: 1,
        build: BuildInfo {
            source_date_epoch: EPOCH,
            recipe_sha256: Sha256Hex::digest(b"recipe"),
            ostree_commit: None,
            ostree_ref: None,
        },
        boot: None,
        artifacts: vec![
            artifact("rootfs.img", Role::Rootfs, &rootfs, Some(&rootfs_zst)),
            artifact("sbom.json", Role::Sbom, b"{}", None),
            artifact("vmlinuz", Role::Kernel, &kernel, Some(&kernel_zst)),
        ],
    };
    edit(&mut manifest);
    let (manifest_json, sig_json) = sign_manifest(&manifest, &release, &keyring).unwrap();
    Fixture {
        root,
        release,
        keyring,
        manifest,
        payloads: vec![
            ("rootfs.img".into(), rootfs, rootfs_zst),
            ("vmlinuz".into(), kernel, kernel_zst),
        ],
        manifest_json,
        sig_json,
    }
}

pub fn fixture() -> Fixture {
    fixture_with(|_| {})
}

impl Fixture {
    pub fn sources(&self) -> Vec<PayloadSource<'_>> {
        self.payloads
            .iter()
            .map(|(name, _, zst)| PayloadSource {
                name: ArtifactName::new(name.clone()).unwrap(),
                size: zst.len() as u64,
                reader: Box::new(&zst[..]),
            })
            .collect()
    }

    pub fn bundle(&self) -> Vec<u8> {
        write_bundle(
            Vec::new(),
            &self.manifest_json,
            &self.sig_json,
            self.sources(),
        )
        .unwrap()
    }

    pub fn zst(&self, i: usize) -> &[u8] {
        &self.payloads[i].2
    }
}

/// Reads a whole bundle; returns (artifact name, bytes) per payload.
pub fn read_all(
    bundle: &[u8],
    f: &Fixture,
    now: u64,
) -> Result<Vec<(String, Vec<u8>)>, TrustError> {
    read_all_with(bundle, f, now, |_| Ok(()))
}

/// [`read_all`], with `before` run on the reader once its header is read.
pub fn read_all_with<'b>(
    bundle: &'b [u8],
    f: &Fixture,
    now: u64,
    before: impl FnOnce(&mut BundleReader<&'b [u8]>) -> Result<(), TrustError>,
) -> Result<Vec<(String, Vec<u8>)>, TrustError> {
    let mut reader = BundleReader::new(bundle, &f.root.public(), now);
    reader.read_header()?;
    before(&mut reader)?;
    let mut out = Vec::new();
    reader.for_each_payload(|a: &Artifact, r: &mut dyn Read| {
        let mut data = Vec::new();
        r.read_to_end(&mut data).map_err(|e| TrustError::Io {
            context: "test".into(),
            source: e,
        })?;
        out.push((a.name.to_string(), data));
        Ok::<(), TrustError>(())
    })?;
    Ok(out)
}

/// Writes tar archives byte by byte, including ones no sane tool would write.
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> Self {
        RawTar(Vec::new())
    }

    pub fn header(
        &mut self,
        name: &[u8],
        typeflag: u8,
        size: u64,
        linkname: &[u8],
        prefix: &[u8],
    ) -> &mut Self {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(format!("{EPOCH:011o}\0").as_bytes());
        h[156] = typeflag;
        h[157..157 + linkname.len()].copy_from_slice(linkname);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        self
    }

    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.header(name.as_bytes(), b'0', data.len() as u64, b"", b"")
            .data(data)
    }

    pub fn special(&mut self, name: &str, typeflag: u8, linkname: &str) -> &mut Self {
        self.header(name.as_bytes(), typeflag, 0, linkname.as_bytes(), b"")
    }

    /// manifest.json and manifest.sig of `f`.
    pub fn signed(&mut self, f: &Fixture) -> &mut Self {
        self.file("manifest.json", &f.manifest_json)
            .file("manifest.sig", &f.sig_json)
    }

    pub fn end(&mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        std::mem::take(&mut self.0)
    }
}

/// Offset of the data of entry `name` in a well-formed tar.
pub fn data_offset(bundle: &[u8], name: &str) -> usize {
    let mut archive = tar::Archive::new(bundle);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(name) {
            return entry.raw_file_position() as usize;
        }
    }
    panic!("no entry {name}");
}
