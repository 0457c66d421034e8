//! `verify`: check a build folder the way an appliance or a release engineer would. The
//! signature and key chain first, then every artifact's size and hash in manifest order, the
//! verity tree of the rootfs image and of both slot partitions inside `disk.img`, and the update
//! bundle read end to end. The first failure is named.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_trust::bundle::BundleReader;
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Artifact, Role};
use aperture_trust::{signing, verity};
use serde::Serialize;

use aperture_appliance::store::{Area, StateStore};
use aperture_appliance::{Board, Role as PartRole, Slot};
use aperture_trust::record::{InstalledSlot, SlotRecord};

use crate::outputs::names;

/// One check and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (an artifact, or `signature`).
    pub what: String,
    /// Passed.
    pub ok: bool,
    /// Details.
    pub detail: String,
}

/// The result of verifying a build folder.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The folder.
    pub dir: PathBuf,
    /// Root key id trusted.
    pub root_key_id: String,
    /// Where the root key came from.
    pub root_key_path: PathBuf,
    /// Release key id that signed.
    pub signed_by: Option<String>,
    /// Checks in order; verification stops at the first failure.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
    /// The first failed check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }
}

/// A window of a file, for checking a partition in place.
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    /// `len` bytes of `file` from `start`.
    pub fn new(file: File, start: u64, len: u64) -> Self {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(left as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::Current(d) => self.pos as i64 + d,
            SeekFrom::End(d) => self.len as i64 + d,
        };
        if new < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

fn check_artifact(dir: &Path, a: &Artifact) -> Result<String> {
    let path = dir.join(a.name.as_str());
    let (sha, size) = aperture_trust::digest::sha256_file(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    if size != a.size {
        bail!("size is {size} bytes, the manifest says {}", a.size);
    }
    if sha != a.sha256 {
        bail!("sha256 is {sha}, the manifest says {}", a.sha256);
    }
    Ok(format!("{size} bytes, sha256 {}", &a.sha256.as_str()[..16]))
}

/// A slot's UKI: signed by the Secure Boot db certificate the build folder names
/// (`secure-boot/db.crt`), with the command line that boots its own slot with the release's
/// verity root; its signed disk-key policy (`.apolicy`: its own PCR 11 and the release's
/// security version, signed by `secure-boot/tpm-policy.pub.pem`); and the PCR 11 value it
/// leaves.
fn check_uki(dir: &Path, a: &Artifact, m: &aperture_trust::manifest::Manifest) -> Result<String> {
    let path = dir.join(a.name.as_str());
    let slot = Slot::of_uki_artifact(a.name.as_str())
        .with_context(|| format!("{} names no slot (uki-a.efi or uki-b.efi)", a.name))?;
    let db = dir.join(crate::outputs::names::SECURE_BOOT).join("db.crt");
    crate::uki::verify(&path, &db)?;
    let bytes = std::fs::read(&path)?;
    let cmdline =
        aperture_uefi::section_data(&bytes, ".cmdline")?.context("it has no .cmdline section")?;
    let rootfs = m
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .and_then(|a| a.verity.as_ref())
        .context("the manifest has no rootfs with verity parameters")?;
    let board: Board = m.board.parse()?;
    let want = aperture_slots::cmdline::verity_cmdline(
        m.boot.as_ref().map_or("", |b| b.cmdline.as_str()),
        board.slot_layout(),
        slot,
        rootfs.root_hash.as_str(),
        rootfs.hash_offset,
    );
    if cmdline != want.as_bytes() {
        bail!(
            "its command line is {:?}, but slot {slot} of this release boots with {want:?}",
            String::from_utf8_lossy(cmdline)
        );
    }
    let pcr11 = aperture_uefi::predict_pcr11(&bytes)?;
    let policy_key = dir
        .join(crate::outputs::names::SECURE_BOOT)
        .join(crate::sbkeys::POLICY_PUBLIC_FILE);
    let policy = crate::uki::verify_policy(&path, &policy_key, m.security_version)?;
    Ok(format!(
        "signed by {}; boots slot {slot} with the release's verity root; PCR 11 {}; disk-key \
         policy for security version {} signed by {}",
        db.display(),
        &hex::encode(pcr11)[..16],
        policy.security_version,
        policy_key.display()
    ))
}

fn read_gpt(disk: &Path) -> Result<aperture_gpt::Gpt> {
    let mut f = File::open(disk)?;
    let size = aperture_gpt::disk_size_of(&mut f)?;
    aperture_gpt::read_gpt(&mut f, size)
        .with_context(|| format!("reading the partition table of {}", disk.display()))
}

fn check_slot_partitions(disk: &Path, board: Board, rootfs: &Artifact) -> Result<String> {
    let info = rootfs
        .verity
        .as_ref()
        .context("the rootfs artifact has no verity parameters")?;
    let gpt = read_gpt(disk)?;
    let mut done = Vec::new();
    for slot in Slot::ALL {
        let name = board.slot_layout().rootfs(slot);
        let Some(p) = gpt.find(&name) else { continue };
        let w = Window::new(File::open(disk)?, p.offset(), p.size());
        verity::verify_device(w, info).with_context(|| {
            format!(
                "partition {name} does not match the rootfs verity root hash {}",
                info.root_hash
            )
        })?;
        done.push(name);
    }
    if done.is_empty() {
        bail!("has no rootfs partitions");
    }
    Ok(format!(
        "{} verified against root hash {}",
        done.join(" and "),
        &info.root_hash.as_str()[..16]
    ))
}

/// Length of the tar stream (through its end marker) at the start of `r`, walking the ustar
/// headers; the bundle reader checks every entry again.
fn tar_len(r: &mut impl Read, limit: u64) -> Result<u64> {
    let mut header = [0u8; 512];
    let mut at = 0u64;
    while at + 1024 <= limit {
        r.read_exact(&mut header)?;
        if header.iter().all(|b| *b == 0) {
            r.read_exact(&mut header)?;
            if header.iter().all(|b| *b == 0) {
                return Ok(at + 1024);
            }
            bail!("a lone zero block at byte {at}");
        }
        if &header[257..262] != b"ustar" {
            bail!("no ustar header at byte {at}");
        }
        let field =
            std::str::from_utf8(&header[124..136])?.trim_matches(|c: char| c == '\0' || c == ' ');
        let size = if field.is_empty() {
            0
        } else {
            u64::from_str_radix(field, 8).with_context(|| format!("entry size at byte {at}"))?
        };
        let skip = size.div_ceil(512) * 512;
        std::io::copy(&mut r.by_ref().take(skip), &mut std::io::sink())?;
        at += 512 + skip;
    }
    bail!("no tar end marker inside the partition")
}

/// The factory image in `disk`'s `factory` partition, if it has one: a bundle signed under
/// `root` whose slot artifacts are the release's (`artifacts`), every payload verified.
fn check_factory_partition(
    disk: &Path,
    board: Board,
    artifacts: &[Artifact],
    root: &PublicKey,
    now: u64,
) -> Result<Option<String>> {
    let gpt = read_gpt(disk)?;
    let Some(p) = gpt.find(board.partition(PartRole::Factory)) else {
        return Ok(None);
    };
    let len = tar_len(
        &mut std::io::BufReader::new(Window::new(File::open(disk)?, p.offset(), p.size())),
        p.size(),
    )
    .context("the factory partition holds no bundle")?;
    let w = Window::new(File::open(disk)?, p.offset(), len);
    let mut r = BundleReader::new(std::io::BufReader::new(w), root, now);
    let m = r.read_header().context("the factory image")?;
    for a in m.payload_artifacts() {
        let Some(release) = artifacts.iter().find(|r| r.name == a.name) else {
            bail!(
                "the factory image holds {}, which the release does not",
                a.name
            );
        };
        if release.sha256 != a.sha256 || release.size != a.size {
            bail!("the factory image's {} is not the release's", a.name);
        }
    }
    r.verify_payloads().context("the factory image")?;
    Ok(Some(format!(
        "factory image {} {} ({} MiB) verified",
        m.product,
        m.version,
        len >> 20
    )))
}

/// The device state partition of `disk`: each slot's record holds a manifest signed under
/// `root` whose slot artifacts are the release's, and agrees with it.
fn check_state_partition(
    disk: &Path,
    board: Board,
    artifacts: &[Artifact],
    root: &PublicKey,
    now: u64,
) -> Result<String> {
    let gpt = read_gpt(disk)?;
    let label = board.partition(PartRole::State);
    let p = gpt
        .find(label)
        .with_context(|| format!("{} has no {label} partition", disk.display()))?;
    let mut bytes = vec![0u8; usize::try_from(p.size())?];
    std::io::Read::read_exact(
        &mut Window::new(File::open(disk)?, p.offset(), p.size()),
        &mut bytes,
    )?;
    let store = StateStore::new(
        aperture_appliance::store::mem::MemMedium::from_bytes(bytes),
        format!("{} partition {label}", disk.display()),
    )?;
    for slot in Slot::ALL {
        let installed: InstalledSlot = store
            .read_json(Area::slot(slot))?
            .with_context(|| format!("the state partition has no record of slot {slot}"))?;
        let m = signing::verify_manifest(
            installed.manifest.as_bytes(),
            installed.signature.as_bytes(),
            root,
            now,
        )
        .with_context(|| format!("the record of slot {slot} in the state partition"))?;
        if SlotRecord::from_manifest(&m)? != installed.record {
            bail!("the record of slot {slot} disagrees with its signed manifest");
        }
        for a in m.payload_artifacts() {
            if !artifacts
                .iter()
                .any(|r| r.name == a.name && r.sha256 == a.sha256 && r.size == a.size)
            {
                bail!(
                    "slot {slot}'s record names {}, which is not the release's",
                    a.name
                );
            }
        }
    }
    Ok(format!(
        "{label}: both slots' records signed and the release's"
    ))
}

/// Verify a build folder against `root_key` (default: the folder's `root.pub`) at time `now`.
pub fn verify(dir: &Path, root_key: Option<&Path>, now: u64) -> Result<Report> {
    let key_path = root_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(names::ROOT_PUB));
    let root = PublicKey::load(&key_path)
        .with_context(|| format!("loading the root key {}", key_path.display()))?;
    let mut report = Report {
        dir: dir.to_path_buf(),
        root_key_id: root.key_id().to_string(),
        root_key_path: key_path,
        signed_by: None,
        checks: Vec::new(),
    };
    let manifest_json = std::fs::read(dir.join(names::MANIFEST))
        .with_context(|| format!("reading {}", dir.join(names::MANIFEST).display()))?;
    let sig_json = std::fs::read(dir.join(names::SIGNATURE))
        .with_context(|| format!("reading {}", dir.join(names::SIGNATURE).display()))?;
    let verified = match signing::verify_manifest(&manifest_json, &sig_json, &root, now) {
        Ok(v) => v,
        Err(e) => {
            report.checks.push(Check {
                what: names::SIGNATURE.into(),
                ok: false,
                detail: e.to_string(),
            });
            return Ok(report);
        }
    };
    report.signed_by = Some(verified.key_id().to_string());
    report.checks.push(Check {
        what: names::SIGNATURE.into(),
        ok: true,
        detail: format!(
            "{} {} for {}, signed by release key {} certified by root {}",
            verified.product,
            verified.version,
            verified.board,
            verified.key_id(),
            report.root_key_id
        ),
    });
    let rootfs = verified
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .cloned();
    for a in &verified.artifacts {
        let result = (|| -> Result<String> {
            let mut notes = Vec::new();
            if a.role == Role::Disk {
                let disk = dir.join(a.name.as_str());
                let board: Board = verified.board.parse()?;
                if let Some(r) = &rootfs {
                    notes.push(check_slot_partitions(&disk, board, r)?);
                }
                notes.push(check_state_partition(
                    &disk,
                    board,
                    &verified.artifacts,
                    &root,
                    now,
                )?);
                if let Some(n) =
                    check_factory_partition(&disk, board, &verified.artifacts, &root, now)?
                {
                    notes.push(n);
                }
            }
            notes.push(check_artifact(dir, a)?);
            if a.role == Role::Uki {
                notes.push(check_uki(dir, a, &verified)?);
            }
            if let Some(info) = &a.verity {
                let f = File::open(dir.join(a.name.as_str()))?;
                verity::verify_device(f, info)
                    .context("the verity tree does not match the manifest's root hash")?;
                notes.push(format!("verity root {}", &info.root_hash.as_str()[..16]));
            }
            Ok(notes.join("; "))
        })();
        let failed = result.is_err();
        report.checks.push(match result {
            Ok(d) => Check {
                what: a.name.to_string(),
                ok: true,
                detail: d,
            },
            Err(e) => Check {
                what: a.name.to_string(),
                ok: false,
                detail: format!("{e:#}"),
            },
        });
        if failed {
            return Ok(report);
        }
    }
    let bundle = dir.join(names::BUNDLE);
    if bundle.exists() {
        let result = (|| -> Result<String> {
            let mut r =
                BundleReader::new(std::io::BufReader::new(File::open(&bundle)?), &root, now);
            let m = r.read_header()?;
            if m.manifest() != verified.manifest() {
                bail!("its manifest differs from {}", names::MANIFEST);
            }
            r.verify_payloads()?;
            Ok(format!(
                "{} payloads verified",
                m.payload_artifacts().count()
            ))
        })();
        report.checks.push(match result {
            Ok(d) => Check {
                what: names::BUNDLE.into(),
                ok: true,
                detail: d,
            },
            Err(e) => Check {
                what: names::BUNDLE.into(),
                ok: false,
                detail: format!("{e:#}"),
            },
        });
    }
    Ok(report)
}

/// Verify the build folder `dir` (as `verify` does, trusting the root key recorded in it) and
/// describe it as a release for `channel` with the rollout `waves`: what `release publish`
/// puts in the TUF repository. Nothing is read from an unverified manifest.
pub fn verified_release(
    dir: &Path,
    channel: &str,
    waves: aperture_release::Waves,
    now: u64,
) -> Result<aperture_release::ReleaseMeta> {
    let report = verify(dir, None, now)?;
    if let Some(f) = report.first_failure() {
        anyhow::bail!(
            "{} failed verification at {}: {}; nothing was published",
            dir.display(),
            f.what,
            f.detail
        );
    }
    let path = dir.join(crate::outputs::names::MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: aperture_trust::manifest::Manifest =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    Ok(aperture_release::ReleaseMeta {
        product: m.product,
        board: m.board,
        version: m.version,
        security_version: m.security_version,
        channel: channel.to_string(),
        published_at: 0,
        waves,
        halted: false,
        gate: Default::default(),
    })
}
