//! The release manifest: what a build produced, for which board and version, with the size and
//! hash of every artifact. It is the document that gets signed (see [`crate::signing`]).
//!
//! Every struct refuses unknown fields: a field this build does not understand could carry a
//! meaning that the signer intended and the appliance would silently ignore.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub use crate::digest::Sha256Hex;
pub use crate::names::ArtifactName;
use crate::verity::VerityInfo;
use crate::TrustError;

/// The manifest format this crate reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// Longest name of an artifact that travels in a bundle: `<name>.zst` must fit the 100-byte
/// ustar name field, because bundles use no tar extensions.
pub const MAX_PAYLOAD_NAME_LEN: usize = 96;

/// A release manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version, 1.
    pub format: u32,
    /// Product name, such as "aperture-edge".
    pub product: String,
    /// Board the image is for, such as "qemu-x86_64" or "jetson-orin-agx".
    pub board: String,
    /// Release version.
    pub version: semver::Version,
    /// Anti-rollback counter: an appliance refuses releases below its stored floor.
    pub security_version: u64,
    /// How the release was built.
    pub build: BuildInfo,
    /// Boot settings for the slot the release is installed into.
    pub boot: Option<BootInfo>,
    /// Every artifact of the release.
    pub artifacts: Vec<Artifact>,
}

/// Build facts, for reproducing and auditing a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// `SOURCE_DATE_EPOCH` of the build; also the mtime of every bundle entry.
    pub source_date_epoch: u64,
    /// sha256 of the recipe file.
    pub recipe_sha256: Sha256Hex,
    /// The ostree commit the rootfs was made from.
    pub ostree_commit: Option<String>,
    /// The ostree ref of that commit.
    pub ostree_ref: Option<String>,
}

/// Boot settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInfo {
    /// Extra kernel command-line arguments for the slot.
    pub cmdline: String,
}

/// One file the build produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name.
    pub name: ArtifactName,
    /// What it is for.
    pub role: Role,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the bytes.
    pub sha256: Sha256Hex,
    /// dm-verity parameters; rootfs images only.
    pub verity: Option<VerityInfo>,
    /// How the artifact travels in an update bundle; absent when it is not in bundles.
    pub payload: Option<Payload>,
}

/// What an artifact is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A slot's root filesystem image (erofs + dm-verity tree).
    Rootfs,
    /// A slot's kernel (or UKI).
    Kernel,
    /// A slot's initrd.
    Initrd,
    /// A signed unified kernel image (kernel, initrd and the command line that names its slot,
    /// signed for UEFI Secure Boot), for the one slot its name says: `uki-a.efi`, `uki-b.efi`.
    /// Releases for boards that boot them carry one per slot.
    Uki,
    /// A slot's device tree.
    Dtb,
    /// Boot firmware installed with the slot.
    Firmware,
    /// A UEFI capsule update installed with the slot.
    Capsule,
    /// The whole-disk image for flashing.
    Disk,
    /// The zstd-compressed whole-disk image.
    DiskZst,
    /// The bmap of the disk image.
    Bmap,
    /// The software bill of materials.
    Sbom,
    /// Anything else.
    Other,
}

impl Role {
    /// Whether artifacts of this role are installed into an A/B slot, and so may travel as a
    /// bundle payload: rootfs, kernel, initrd, UKI, dtb, firmware and capsule.
    pub fn is_slot_content(self) -> bool {
        matches!(
            self,
            Role::Rootfs
                | Role::Kernel
                | Role::Initrd
                | Role::Uki
                | Role::Dtb
                | Role::Firmware
                | Role::Capsule
        )
    }

    /// Whether artifacts of this role may travel as deltas: rootfs, kernel, initrd and UKI.
    pub fn may_be_delta(self) -> bool {
        matches!(self, Role::Rootfs | Role::Kernel | Role::Initrd | Role::Uki)
    }
}

/// How an artifact travels in an update bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// How the bytes are encoded.
    pub encoding: PayloadEncoding,
    /// Size of the encoded bytes in the bundle.
    pub size: u64,
    /// sha256 of the encoded bytes.
    pub sha256: Sha256Hex,
    /// For a delta: the image the appliance's running slot must hold to rebuild this artifact
    /// from it. Absent for every other encoding (and then not written, so a full manifest's
    /// bytes are what they were before deltas existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<DeltaBase>,
}

/// The base of a delta payload: the same artifact of an earlier release, named by the hashes an
/// appliance recorded when it installed that release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaBase {
    /// The release the base came from (for messages and for choosing a delta to fetch).
    pub version: semver::Version,
    /// Size of the base artifact in bytes.
    pub size: u64,
    /// sha256 of the base artifact.
    pub sha256: Sha256Hex,
    /// The base's dm-verity root hash: an appliance booted with it (its kernel command line
    /// says so) runs exactly the base.
    pub root_hash: Sha256Hex,
}

/// Payload encodings. An appliance that does not know an encoding refuses the manifest at parse
/// time instead of misreading the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// One or more zstd frames of the whole artifact. The bundle entry is `<name>.zst`.
    Zstd,
    /// A zstd stream of the operations that rebuild the artifact from `payload.base`, the same
    /// artifact of the release the appliance runs ([`crate::delta`]). The entry is
    /// `<name>.dlt`.
    Delta,
}

impl PayloadEncoding {
    /// The suffix of the bundle entry for this encoding.
    pub fn suffix(self) -> &'static str {
        match self {
            PayloadEncoding::Zstd => ".zst",
            PayloadEncoding::Delta => ".dlt",
        }
    }
}

impl Artifact {
    /// The bundle entry name of this artifact's payload, if it has one.
    pub fn payload_entry_name(&self) -> Option<String> {
        self.payload
            .as_ref()
            .map(|p| format!("{}{}", self.name, p.encoding.suffix()))
    }
}

impl Manifest {
    /// Parses and validates a manifest WITHOUT checking any signature. For build-host tools
    /// handling a manifest they just made; an appliance uses [`crate::signing::verify_manifest`].
    pub fn from_json_unverified(bytes: &[u8]) -> Result<Self, TrustError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| TrustError::malformed("manifest", e))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks the rules serde cannot: format 1, non-empty product and board, unique artifact
    /// names, payloads only on slot roles (with names short enough for a bundle), verity only on
    /// rootfs and with sane parameters.
    pub fn validate(&self) -> Result<(), TrustError> {
        let bad = |reason: String| Err(TrustError::malformed("manifest", reason));
        if self.format != MANIFEST_FORMAT {
            return bad(format!(
                "format {} is not supported (this build reads format {MANIFEST_FORMAT}); update \
                 the appliance software first",
                self.format
            ));
        }
        if self.product.is_empty() || self.board.is_empty() {
            return bad("product and board must not be empty".into());
        }
        let mut names = BTreeSet::new();
        for a in &self.artifacts {
            if !names.insert(a.name.as_str()) {
                return bad(format!("artifact {} is listed twice", a.name));
            }
            if let Some(p) = &a.payload {
                if !a.role.is_slot_content() {
                    return bad(format!(
                        "artifact {} has role {:?} but only slot contents (rootfs, kernel, \
                         initrd, uki, dtb, firmware, capsule) may travel in bundles",
                        a.name, a.role
                    ));
                }
                match (p.encoding, &p.base) {
                    (PayloadEncoding::Zstd, None) => {}
                    (PayloadEncoding::Delta, Some(_)) if a.role.may_be_delta() => {}
                    (PayloadEncoding::Delta, Some(_)) => {
                        return bad(format!(
                            "artifact {} is a delta but only rootfs, kernel, initrd and UKI \
                             travel as deltas",
                            a.name
                        ))
                    }
                    (PayloadEncoding::Delta, None) => {
                        return bad(format!("delta payload {} names no base", a.name))
                    }
                    (PayloadEncoding::Zstd, Some(_)) => {
                        return bad(format!(
                            "payload {} names a delta base but is encoded zstd",
                            a.name
                        ))
                    }
                }
                if a.name.as_str().len() > MAX_PAYLOAD_NAME_LEN {
                    return bad(format!(
                        "artifact {} travels in bundles, so its name must be at most \
                         {MAX_PAYLOAD_NAME_LEN} characters",
                        a.name
                    ));
                }
            }
            if let Some(verity) = &a.verity {
                if a.role != Role::Rootfs {
                    return bad(format!(
                        "artifact {} has verity parameters but role {:?}; only rootfs images \
                         carry a verity tree",
                        a.name, a.role
                    ));
                }
                verity.validate().map_err(|e| {
                    TrustError::malformed(format!("manifest artifact {}", a.name), e)
                })?;
                let end = verity.hash_offset + crate::verity::hash_tree_size(verity.data_size());
                if end > a.size {
                    return bad(format!(
                        "artifact {} is {} bytes but its verity tree ends at {end}",
                        a.name, a.size
                    ));
                }
            }
        }
        Ok(())
    }

    /// The artifact called `name`.
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name.as_str() == name)
    }

    /// The artifacts that travel in bundles, in manifest (and so bundle) order.
    pub fn payload_artifacts(&self) -> impl Iterator<Item = &Artifact> {
        self.artifacts.iter().filter(|a| a.payload.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid manifest with a rootfs (payload + verity), a kernel (payload) and a disk image.
    pub(crate) fn sample() -> Manifest {
        let h = |s: &[u8]| Sha256Hex::digest(s);
        Manifest {
            format: 1,
            product: "aperture-edge".into(),
            board: "qemu-x86_64".into(),
            version: "1.2.3".parse().unwrap(),
            security_version: 4,
            build: BuildInfo {
                source_date_epoch: 1_700_000_000,
                recipe_sha256: h(b"recipe"),
                ostree_commit: Some("abc".into()),
                ostree_ref: None,
            },
            boot: Some(BootInfo {
                cmdline: "quiet".into(),
            }),
            artifacts: vec![
                Artifact {
                    name: ArtifactName::new("rootfs.img").unwrap(),
                    role: Role::Rootfs,
                    size: 8192,
                    sha256: h(b"rootfs"),
                    verity: Some(VerityInfo {
                        root_hash: h(b"root"),
                        salt: "00ff".into(),
                        hash_offset: 4096,
                        data_blocks: 1,
                        data_block_size: 4096,
                        hash_block_size: 4096,
                        algorithm: "sha256".into(),
                        uuid: "12345678-1234-1234-1234-123456789abc".into(),
                    }),
                    payload: Some(Payload {
                        encoding: PayloadEncoding::Zstd,
                        size: 100,
                        sha256: h(b"rootfs.zst"),
                        base: None,
                    }),
                },
                Artifact {
                    name: ArtifactName::new("vmlinuz").unwrap(),
                    role: Role::Kernel,
                    size: 10,
                    sha256: h(b"kernel"),
                    verity: None,
                    payload: Some(Payload {
                        encoding: PayloadEncoding::Zstd,
                        size: 20,
                        sha256: h(b"kernel.zst"),
                        base: None,
                    }),
                },
                Artifact {
                    name: ArtifactName::new("disk.img").unwrap(),
                    role: Role::Disk,
                    size: 1 << 30,
                    sha256: h(b"disk"),
                    verity: None,
                    payload: None,
                },
            ],
        }
    }

    #[test]
    fn sample_is_valid_and_round_trips() {
        let m = sample();
        m.validate().unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json_unverified(&json).unwrap(), m);
    }

    #[test]
    fn roles_serialize_kebab_case() {
        assert_eq!(
            serde_json::to_string(&Role::DiskZst).unwrap(),
            "\"disk-zst\""
        );
        assert_eq!(serde_json::to_string(&Role::Rootfs).unwrap(), "\"rootfs\"");
        assert!(serde_json::from_str::<Role>("\"Rootfs\"").is_err());
        assert_eq!(
            serde_json::to_string(&PayloadEncoding::Zstd).unwrap(),
            "\"zstd\""
        );
        assert!(serde_json::from_str::<PayloadEncoding>("\"bsdiff\"").is_err());
        let zstd = serde_json::to_string(&sample().artifacts[0].payload).unwrap();
        assert!(
            !zstd.contains("base"),
            "a full payload writes no base: {zstd}"
        );
    }

    #[test]
    fn a_delta_names_its_base_and_only_slot_images_travel_as_one() {
        let mut m = sample();
        let base = DeltaBase {
            version: "1.2.2".parse().unwrap(),
            size: 4096,
            sha256: Sha256Hex::digest(b"old rootfs"),
            root_hash: Sha256Hex::digest(b"old root"),
        };
        let set = |m: &mut Manifest, i: usize, enc, base: Option<DeltaBase>| {
            let p = m.artifacts[i].payload.as_mut().unwrap();
            p.encoding = enc;
            p.base = base;
        };
        set(&mut m, 0, PayloadEncoding::Delta, Some(base.clone()));
        m.validate().unwrap();
        assert_eq!(
            m.artifacts[0].payload_entry_name().as_deref(),
            Some("rootfs.img.dlt")
        );
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json_unverified(&json).unwrap(), m);

        for (i, enc, b, want) in [
            (0, PayloadEncoding::Delta, None, "names no base"),
            (0, PayloadEncoding::Zstd, Some(base.clone()), "encoded zstd"),
            (1, PayloadEncoding::Delta, Some(base.clone()), "only rootfs"),
        ] {
            let mut bad = sample();
            // A device tree (as on Jetson) never travels as a delta.
            bad.artifacts[1].role = Role::Dtb;
            set(&mut bad, i, enc, b);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn lookups_follow_manifest_order() {
        let m = sample();
        assert_eq!(m.artifact("vmlinuz").unwrap().role, Role::Kernel);
        assert!(m.artifact("nope").is_none());
        let names: Vec<_> = m.payload_artifacts().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["rootfs.img", "vmlinuz"]);
        assert_eq!(
            m.artifacts[0].payload_entry_name().unwrap(),
            "rootfs.img.zst"
        );
        assert_eq!(m.artifacts[2].payload_entry_name(), None);
    }

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        let base = serde_json::to_value(sample()).unwrap();
        let paths: [&[&str]; 5] = [
            &[],
            &["build"],
            &["boot"],
            &["artifacts", "0"],
            &["artifacts", "0", "verity"],
        ];
        for path in paths {
            let mut v = base.clone();
            let mut target = &mut v;
            for p in path {
                target = match p.parse::<usize>() {
                    Ok(i) => &mut target[i],
                    Err(_) => &mut target[*p],
                };
            }
            target["surprise"] = serde_json::json!(true);
            let bytes = serde_json::to_vec(&v).unwrap();
            assert!(Manifest::from_json_unverified(&bytes).is_err(), "{path:?}");
        }
        let mut v = base;
        v["artifacts"][0]["payload"]["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Manifest>(v).is_err());
    }

    #[test]
    fn wrong_format_is_refused() {
        let mut m = sample();
        m.format = 2;
        assert!(m.validate().unwrap_err().to_string().contains("format 2"));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut m = sample();
        m.artifacts[1].name = m.artifacts[0].name.clone();
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }

    #[test]
    fn payload_only_on_slot_roles() {
        let mut m = sample();
        m.artifacts[2].payload = m.artifacts[1].payload.clone();
        let err = m.validate().unwrap_err().to_string();
        assert!(
            err.contains("disk.img") && err.contains("slot contents"),
            "{err}"
        );
    }

    #[test]
    fn verity_only_on_rootfs() {
        let mut m = sample();
        m.artifacts[1].verity = m.artifacts[0].verity.clone();
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("vmlinuz") && err.contains("verity"), "{err}");
    }

    #[test]
    fn verity_tree_must_fit_in_artifact() {
        let mut m = sample();
        m.artifacts[0].size = 4096;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("verity tree ends"));
    }

    #[test]
    fn payload_names_must_fit_ustar() {
        let mut m = sample();
        m.artifacts[1].name = ArtifactName::new("k".repeat(97)).unwrap();
        assert!(m.validate().is_err());
        m.artifacts[1].name = ArtifactName::new("k".repeat(96)).unwrap();
        m.validate().unwrap();
    }

    #[test]
    fn unsafe_artifact_name_is_refused_at_parse() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["artifacts"][1]["name"] = serde_json::json!("../../boot/vmlinuz");
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(Manifest::from_json_unverified(&bytes).is_err());
    }
}
