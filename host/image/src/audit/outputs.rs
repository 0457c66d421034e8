//! The audit's checks of an output folder: the signed manifest covers every file (or the file
//! is one of the few known unsigned ones), it names the audited commit, and every boot entry
//! on the disk image's ESP pins the rootfs verity root and opens no shell.

use std::path::Path;

use anyhow::{Context, Result};
use aperture_trust::manifest::{Manifest, Role};

use super::{parse, AuditReport, BootEntry, Finding, OutputFile};
use crate::outputs::names;

/// Files an output folder holds that the manifest does not list, and why that is fine.
const KNOWN_UNSIGNED: [(&str, &str); 8] = [
    (names::MANIFEST, "manifest"),
    (names::SIGNATURE, "manifest"),
    // Manifest and signature first, then payloads each hashed against the manifest.
    (
        names::BUNDLE,
        "known unsigned: verified entry by entry against the manifest",
    ),
    (
        names::ROOT_PUB,
        "known unsigned: the trust anchor, compared by key id",
    ),
    (
        names::SECURE_BOOT,
        "known unsigned: the Secure Boot certificates, trust anchors like root.pub (the \
         firmware enrolls them; every boot file is checked against db)",
    ),
    ("build.log", "known unsigned: a log"),
    ("build-report.json", "known unsigned: a log"),
    (super::REPORT, "known unsigned: this audit's report"),
];

/// Audit the output folder of a build of `commit`.
pub(super) fn audit(dir: &Path, commit: &str, r: &mut AuditReport) -> Result<()> {
    let f = &mut r.findings;
    let mpath = dir.join(names::MANIFEST);
    let Ok(json) = std::fs::read(&mpath) else {
        f.push(Finding::violation(
            "artifacts",
            names::MANIFEST,
            "is missing: nothing in this folder is signed",
            "rebuild; the build signs a manifest of every artifact",
        ));
        return Ok(());
    };
    let manifest = match Manifest::from_json_unverified(&json) {
        Ok(m) => m,
        Err(e) => {
            f.push(Finding::violation(
                "artifacts",
                names::MANIFEST,
                format!("does not parse: {e}"),
                "rebuild",
            ));
            return Ok(());
        }
    };
    match (
        std::fs::read(dir.join(names::SIGNATURE)),
        aperture_trust::keys::PublicKey::load(&dir.join(names::ROOT_PUB)),
    ) {
        (Ok(sig), Ok(root)) => {
            if let Err(e) = aperture_trust::signing::verify_manifest(
                &json,
                &sig,
                &root,
                aperture_trust::now_unix(),
            ) {
                f.push(Finding::violation(
                    "artifacts",
                    names::SIGNATURE,
                    format!("does not verify against {}: {e}", names::ROOT_PUB),
                    "rebuild, or run `cargo xtask verify DIR` for the details",
                ));
            }
        }
        (Err(_), _) => f.push(Finding::violation(
            "artifacts",
            names::SIGNATURE,
            "is missing: the manifest is unsigned",
            "rebuild; the build signs the manifest with the release key",
        )),
        (_, Err(e)) => f.push(Finding::note(
            "artifacts",
            names::ROOT_PUB,
            format!("cannot be read ({e}), so the signature was not checked here"),
            "run `cargo xtask verify DIR --root-key FILE`",
        )),
    }
    if manifest.build.ostree_commit.as_deref() != Some(commit) {
        f.push(Finding::violation(
            "artifacts",
            names::MANIFEST,
            format!(
                "names the commit {}, not the audited {commit}",
                manifest.build.ostree_commit.as_deref().unwrap_or("(none)")
            ),
            "audit the folder the build wrote, or rebuild",
        ));
    }

    let mut names_here: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names_here.sort();
    for name in &names_here {
        let status = if let Some(a) = manifest.artifacts.iter().find(|a| a.name.as_str() == name) {
            let size = std::fs::metadata(dir.join(name))
                .map(|m| m.len())
                .unwrap_or(0);
            if size != a.size {
                f.push(Finding::violation(
                    "artifacts",
                    name,
                    format!("is {size} bytes; the signed manifest says {}", a.size),
                    "rebuild; `cargo xtask verify DIR` checks every hash",
                ));
            }
            "signed".to_string()
        } else if let Some((_, why)) = KNOWN_UNSIGNED.iter().find(|(n, _)| n == name) {
            why.to_string()
        } else if name.starts_with('.') && !name.ends_with(".tmp") {
            "known unsigned: the build's bookkeeping".to_string()
        } else {
            f.push(Finding::violation("artifacts", name, "is in the output folder but not in the signed manifest", "delete it, or make the build add it to the manifest; anything shipped must be signed"));
            "unsigned".to_string()
        };
        r.outputs.push(OutputFile {
            name: name.clone(),
            status,
        });
    }
    for a in &manifest.artifacts {
        if !names_here.iter().any(|n| n == a.name.as_str()) {
            f.push(Finding::violation(
                "artifacts",
                a.name.as_str(),
                "is in the signed manifest but missing from the folder",
                "rebuild",
            ));
        }
    }

    let disk = dir.join(names::DISK);
    if !disk.exists() {
        f.push(Finding::note(
            "boot",
            names::DISK,
            "no disk image (a board whose boot files come from a BSP): boot entries not checked",
            "audit the flashed image's boot configuration separately",
        ));
        return Ok(());
    }
    let root_hash = manifest
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .and_then(|a| a.verity.as_ref())
        .map(|v| v.root_hash.to_string());
    // Jetson boards boot the Android boot image in each chain's kernel partition, not entries
    // on the ESP; its command line is held to the same rules.
    let layout = manifest
        .board
        .parse::<aperture_appliance::Board>()
        .map(|b| b.slot_layout())
        .ok();
    let entries = match layout {
        Some(l @ aperture_appliance::SlotLayout::Tegra(_)) => kernel_partitions(&disk, l)?,
        _ => boot_entries(&disk, &dir.join(names::SECURE_BOOT).join("db.crt"), f)?,
    };
    if entries.is_empty() {
        f.push(Finding::violation(
            "boot",
            names::DISK,
            if layout.is_some_and(|l| l.kernel(aperture_appliance::Slot::A).is_some()) {
                "the kernel partitions hold no boot image"
            } else {
                "the ESP has no boot entries"
            },
            "rebuild",
        ));
    }
    for (e, editor) in entries {
        let subject = format!("{} {}", names::DISK, e.file);
        match (&e.verity_root, &root_hash) {
            (None, _) => f.push(Finding::violation("boot", &subject, "boots without a verity root on the kernel command line: the root would not be verified", "rebuild; entries are made by aperture_slots::cmdline::slot_boot")),
            (Some(got), Some(want)) if got != want => f.push(Finding::violation("boot", &subject, format!("pins the verity root {got}, not the signed rootfs's {want}"), "rebuild")),
            _ => {}
        }
        if parse::cmdline_value(&e.options, "root") != Some("/dev/mapper/aperture-root")
            || !e.options.split_whitespace().any(|w| w == "ro")
        {
            f.push(Finding::violation(
                "boot",
                &subject,
                "does not mount the verified root read-only (root=/dev/mapper/aperture-root ro)",
                "rebuild",
            ));
        }
        let bad = parse::insecure_args(&e.options);
        if !bad.is_empty() {
            f.push(Finding::violation(
                "boot",
                &subject,
                format!(
                    "has kernel arguments that bypass the normal boot: {}",
                    bad.join(" ")
                ),
                "remove them from the manifest's boot command line",
            ));
        }
        if editor.as_deref() != Some("no") && editor.is_some() {
            f.push(Finding::violation(
                "boot",
                "loader/loader.conf",
                "lets the boot menu edit the kernel command line (editor is not `no`)",
                "rebuild; aperture-slots writes `editor no`",
            ));
        }
        r.boot_entries.push(e);
    }
    Ok(())
}

/// The boot images in the kernel partitions of a Jetson disk image (`A_kernel`, `kernel_b`,
/// ...), as entries: their header's command line. No boot menu edits them (no `editor`).
fn kernel_partitions(
    disk: &Path,
    layout: aperture_appliance::SlotLayout,
) -> Result<Vec<(BootEntry, Option<String>)>> {
    use std::os::unix::fs::FileExt;
    let mut file =
        std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let size = aperture_gpt::disk_size_of(&mut file)?;
    let gpt = aperture_gpt::read_gpt(&mut file, size)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    let mut out = Vec::new();
    for slot in aperture_appliance::Slot::ALL {
        let Some(name) = layout.kernel(slot) else {
            continue;
        };
        let Some(p) = gpt.find(&name) else {
            continue;
        };
        let mut head = vec![0u8; aperture_slots::tegra::bootimg::PAGE_SIZE as usize];
        file.read_exact_at(&mut head, p.offset())
            .with_context(|| format!("reading {name} of {}", disk.display()))?;
        if let Some(h) = aperture_slots::tegra::bootimg::parse_header(&head) {
            out.push((
                BootEntry {
                    file: format!("{name} (boot image)"),
                    verity_root: parse::cmdline_value(&h.cmdline, "aperture.verity.roothash")
                        .map(str::to_string),
                    options: h.cmdline,
                },
                None,
            ));
        }
    }
    Ok(out)
}

/// The boot entries on the ESP of a disk image, with loader.conf's `editor` (systemd-boot
/// allows editing unless it says `no`). An entry that boots a unified kernel image (no
/// `options`) is judged by the UKI's own `.cmdline`; the UKI and the boot loaders on the ESP
/// must verify against the build's Secure Boot db certificate `db_cert`, or `f` gets a
/// violation.
fn boot_entries(
    disk: &Path,
    db_cert: &Path,
    f: &mut Vec<Finding>,
) -> Result<Vec<(BootEntry, Option<String>)>> {
    let mut file =
        std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let size = aperture_gpt::disk_size_of(&mut file)?;
    let gpt = aperture_gpt::read_gpt(&mut file, size)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    let esp = gpt
        .find(aperture_appliance::Board::QemuX86_64.partition(aperture_appliance::Role::Esp))
        .with_context(|| format!("{} has no `esp` partition", disk.display()))?;
    let offset = esp.offset();
    let files = crate::esp::list(disk, offset)?;
    let loader = String::from_utf8_lossy(
        &crate::esp::read(disk, offset, "loader/loader.conf").unwrap_or_default(),
    )
    .into_owned();
    let editor = Some(
        parse::loader_conf_value(&loader, "editor").unwrap_or_else(|| "yes (the default)".into()),
    );
    // Every EFI program the firmware may start from the ESP: the loaders.
    for p in files
        .iter()
        .filter(|p| p.starts_with("EFI/") && p.to_ascii_lowercase().ends_with(".efi"))
    {
        signed(&crate::esp::read(disk, offset, p)?, p, db_cert, f)?;
    }
    let mut out = Vec::new();
    for p in files
        .iter()
        .filter(|p| p.starts_with("loader/entries/") && p.ends_with(".conf"))
    {
        let text = String::from_utf8_lossy(&crate::esp::read(disk, offset, p)?).into_owned();
        let mut options = parse::entry_options(&text).unwrap_or_default();
        let linux = parse::entry_value(&text, "linux").unwrap_or_default();
        if linux.ends_with(".efi") {
            let rel = linux.trim_start_matches('/');
            if !options.is_empty() || parse::entry_value(&text, "initrd").is_some() {
                f.push(Finding::violation(
                    "boot",
                    p,
                    "boots a unified kernel image but adds options or an initrd (the signed \
                     UKI carries both; systemd-boot measures added options into PCR 12)",
                    "rebuild; entries are made by aperture_slots::cmdline::uki_boot",
                ));
            }
            match crate::esp::read(disk, offset, rel) {
                Ok(uki) => {
                    options = aperture_uefi::section_data(&uki, ".cmdline")
                        .ok()
                        .flatten()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .unwrap_or_default();
                    signed(&uki, rel, db_cert, f)?;
                }
                Err(e) => f.push(Finding::violation(
                    "boot",
                    p,
                    format!("boots {linux}, which is not on the ESP: {e:#}"),
                    "rebuild",
                )),
            }
        }
        out.push((
            BootEntry {
                file: p.clone(),
                verity_root: parse::cmdline_value(&options, "aperture.verity.roothash")
                    .map(str::to_string),
                options,
            },
            editor.clone(),
        ));
    }
    Ok(out)
}

/// A violation unless the EFI program `bytes` (`what` on the ESP) verifies against `db_cert`.
fn signed(bytes: &[u8], what: &str, db_cert: &Path, f: &mut Vec<Finding>) -> Result<()> {
    if !db_cert.is_file() {
        f.push(Finding::violation(
            "boot",
            what,
            format!(
                "cannot be checked: the build folder has no Secure Boot db certificate ({})",
                db_cert.display()
            ),
            "rebuild; the build copies its secure-boot/ certificates into the folder",
        ));
        return Ok(());
    }
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), bytes)?;
    if let Err(e) = crate::uki::verify(tmp.path(), db_cert) {
        f.push(Finding::violation(
            "boot",
            what,
            format!("is not signed by the build's Secure Boot db key: the firmware would refuse it ({e:#})"),
            "rebuild; the build signs every boot file with the recipe's db key",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_gpt::{Guid, Layout, PartitionSpec};

    /// A Jetson-named disk whose kernel partitions hold boot images with these command lines.
    fn disk(dir: &Path, cmdlines: [&str; 2]) -> std::path::PathBuf {
        let parts = ["A_kernel", "B_kernel"]
            .iter()
            .map(|n| {
                PartitionSpec::new(n, Guid::MICROSOFT_BASIC_DATA, Guid::derive("t", n), 1 << 20)
            })
            .collect();
        let path = dir.join("disk.img");
        let (f, placed) =
            crate::disk::create(&path, 8 << 20, &Layout::new(Guid::derive("t", "d"), parts))
                .unwrap();
        let k = dir.join("k");
        std::fs::write(&k, b"kernel").unwrap();
        for (name, cmdline) in ["A_kernel", "B_kernel"].iter().zip(cmdlines) {
            let img = dir.join(format!("{name}.img"));
            crate::jetson::bootimg::write(&img, &k, &k, cmdline).unwrap();
            let p = crate::disk::find(&placed, name).unwrap();
            crate::disk::write_at(&f, p.offset(), &img, crate::disk::Zeros::Write).unwrap();
        }
        path
    }

    #[test]
    fn jetson_boot_images_are_read_from_the_kernel_partitions() {
        let d = tempfile::tempdir().unwrap();
        let path = disk(
            d.path(),
            [
                "root=/dev/mapper/aperture-root ro aperture.verity.roothash=ab aperture.slot=a",
                "root=/dev/sda1 aperture.slot=b",
            ],
        );
        let layout = aperture_appliance::Board::JetsonOrinAgx.slot_layout();
        let entries = kernel_partitions(&path, layout).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0.file, "A_kernel (boot image)");
        assert_eq!(entries[0].0.verity_root.as_deref(), Some("ab"));
        assert_eq!(entries[1].0.verity_root, None, "B pins no verity root");
        assert!(entries.iter().all(|(_, editor)| editor.is_none()));
    }
}
