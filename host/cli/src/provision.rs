//! `flash --provision DIR`: one provisioning archive (issue 16) onto each flashed disk's ESP,
//! under `aperture/provision/`, where the appliance's first boot enrolls from it.
//!
//! DIR is what `aperture-fleet provision --out DIR` wrote: `DIR/1`, `DIR/2`, ... each an
//! archive with a single-use token. Every archive is checked (as the device reads it) and
//! counted before anything is flashed: fewer unused archives than targets is refused up
//! front. After a target is written and verified, the next unused archive is first **claimed**
//! by moving it to `DIR/used/N` (a rename, so two runs sharing DIR cannot take the same one),
//! then copied onto the target's ESP with mtools (the host cannot mount vfat here; the image
//! builder writes the ESP the same way), and `DIR/used/N/flashed-to` records where it went.
//! A claimed archive whose copy failed stays in `used/`: its token may have been written in
//! part, so it is never handed to a second disk; make another with `aperture-fleet provision`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_appliance::board::Role;
use aperture_appliance::files::rel::ESP_PROVISION;
use aperture_appliance::Board;
use aperture_fleet_api::provision::{self, Archive};
use aperture_sys::Cmd;

/// The folder of used archives inside DIR.
pub const USED: &str = "used";
/// The file in a used archive naming the disk it went to.
pub const FLASHED_TO: &str = "flashed-to";

/// The unused archives of `dir` (`dir/1`, `dir/2`, ... in number order), each checked.
pub fn unused(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(n) = name.parse::<u32>() {
            if e.file_type()?.is_dir() {
                found.push((n, e.path()));
            }
        }
    }
    found.sort();
    let mut out = Vec::new();
    for (_, p) in found {
        Archive::read(&p).with_context(|| {
            format!(
                "{} is not a usable provisioning archive (remove it, or make new ones with \
                 aperture-fleet provision)",
                p.display()
            )
        })?;
        out.push(p);
    }
    Ok(out)
}

/// Refuse before flashing when `dir` holds fewer unused archives than `targets`.
pub fn preflight(dir: &Path, targets: usize) -> Result<usize> {
    let n = unused(dir)?.len();
    if n < targets {
        bail!(
            "--provision {}: {n} unused provisioning archive(s) for {targets} target(s); make \
             more with `aperture-fleet provision --out {} --count {}` (each token goes to one \
             disk only)",
            dir.display(),
            dir.display(),
            targets - n
        );
    }
    Ok(n)
}

/// Claim the next unused archive of `dir` (moved to `dir/used/N`); its new path.
pub fn claim(dir: &Path) -> Result<PathBuf> {
    let used = dir.join(USED);
    std::fs::create_dir_all(&used).with_context(|| format!("creating {}", used.display()))?;
    for candidate in unused(dir)? {
        let name = candidate.file_name().context("an archive without a name")?;
        let dest = used.join(name);
        if dest.exists() {
            bail!(
                "{} and {} both exist: an archive was copied back by hand; remove one",
                candidate.display(),
                dest.display()
            );
        }
        match std::fs::rename(&candidate, &dest) {
            Ok(()) => return Ok(dest),
            // Another run took it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("claiming {}", candidate.display())),
        }
    }
    bail!("{}: no unused provisioning archive left", dir.display())
}

/// mtools with the settings of a script (no drive checks, C locale).
fn mtools(program: &str) -> Cmd {
    Cmd::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
}

/// Byte offset of the ESP on `disk` (a block device or an image file).
pub fn esp_offset(disk: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let size = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?;
    let gpt = aperture_gpt::read_gpt(&mut f, size)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    // The ESP's label is the same on every board.
    let label = Board::ALL[0].partition(Role::Esp);
    let esp = gpt
        .find(label)
        .with_context(|| format!("{} has no partition labelled {label}", disk.display()))?;
    Ok(esp.offset())
}

/// Copy the archive in `archive` onto the ESP of `disk` (`aperture/provision/`, replacing an
/// older archive there).
pub fn write_to_esp(archive: &Path, disk: &Path) -> Result<()> {
    let image = format!("{}@@{}", disk.display(), esp_offset(disk)?);
    let mut folder = String::from("::");
    for part in ESP_PROVISION.split('/') {
        folder.push('/');
        folder.push_str(part);
        // mmd fails on a folder that exists (aperture/ holds the slots' boot files).
        let exists = mtools("mdir")
            .args(["-b", "-i", &image, &folder])
            .run()
            .is_ok();
        if !exists {
            mtools("mmd").args(["-i", &image, &folder]).run()?;
        }
    }
    for name in provision::FILES {
        let src = archive.join(name);
        if src.is_file() {
            mtools("mcopy")
                .args(["-o", "-i", &image])
                .arg(&src)
                .arg(format!("{folder}/{name}"))
                .run()?;
        }
    }
    Ok(())
}

/// After `disk` was flashed: claim an archive of `dir` and put it on its ESP. Returns the
/// archive's path in `used/`.
pub fn provision_disk(dir: &Path, disk: &Path) -> Result<PathBuf> {
    let claimed = claim(dir)?;
    write_to_esp(&claimed, disk).with_context(|| {
        format!(
            "copying {} onto the ESP of {} (the archive stays in used/: its token is not \
             handed to another disk)",
            claimed.display(),
            disk.display()
        )
    })?;
    std::fs::write(claimed.join(FLASHED_TO), format!("{}\n", disk.display()))
        .with_context(|| format!("recording where {} went", claimed.display()))?;
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use aperture_fleet_api::provision::Token;
    use aperture_gpt::{Guid, Layout, PartitionSpec};

    use super::*;

    const TEST: &str = "flash_provision";

    fn archives(dir: &Path, n: u32) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&key).unwrap().pem();
        std::fs::create_dir_all(dir).unwrap();
        for i in 1..=n {
            let token =
                format!("{}{}", provision::ENROLL_TOKEN_PREFIX, "A".repeat(42)) + &i.to_string();
            Archive {
                url: "https://fleet.example:8443".parse().unwrap(),
                ca_pem: ca_pem.clone(),
                token: Token::parse(&token).unwrap(),
                network: None,
            }
            .write(&dir.join(i.to_string()))
            .unwrap();
        }
    }

    /// A 40 MiB disk image: GPT with a 32 MiB vfat ESP holding `aperture/` (as a qemu board's
    /// ESP holds the slots' boot files) and a second partition.
    fn disk(dir: &Path) -> PathBuf {
        let disk = dir.join("disk.img");
        let esp = dir.join("esp.img");
        Cmd::new("mkfs.vfat")
            .arg("-C")
            .arg(&esp)
            .arg("32768")
            .run()
            .unwrap();
        mtools("mmd")
            .arg("-i")
            .arg(&esp)
            .arg("::/aperture")
            .run()
            .unwrap();
        let layout = Layout::new(
            Guid::derive("test", "disk"),
            vec![
                PartitionSpec::new(
                    "esp",
                    Guid::EFI_SYSTEM,
                    Guid::derive("test", "esp"),
                    32 << 20,
                ),
                PartitionSpec::new("data", Guid::LINUX_FILESYSTEM, Guid::derive("test", "d"), 0),
            ],
        );
        let mut f = std::fs::File::create(&disk).unwrap();
        f.set_len(40 << 20).unwrap();
        let placed = aperture_gpt::write_gpt(&mut f, 40 << 20, &layout).unwrap();
        f.seek(SeekFrom::Start(placed[0].first_lba * 512)).unwrap();
        f.write_all(&std::fs::read(&esp).unwrap()).unwrap();
        disk
    }

    #[test]
    fn too_few_archives_are_refused_before_flashing_and_a_bad_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prov");
        archives(&dir, 1);
        assert_eq!(preflight(&dir, 1).unwrap(), 1);
        let e = format!("{:#}", preflight(&dir, 2).unwrap_err());
        assert!(e.contains("1 unused") && e.contains("--count 1"), "{e}");
        std::fs::write(dir.join("1/token"), "not a token\n").unwrap();
        let e = format!("{:#}", preflight(&dir, 1).unwrap_err());
        assert!(e.contains("1/token") || e.contains("prov/1"), "{e}");
    }

    #[test]
    fn each_disk_gets_its_own_archive_on_its_esp_and_a_used_one_is_never_given_again() {
        if aperture_sys::tool::for_test("mcopy", "mtools", TEST).is_none()
            || aperture_sys::tool::for_test("mkfs.vfat", "dosfstools", TEST).is_none()
        {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prov");
        archives(&dir, 2);
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (disk_a, disk_b) = (disk(&a), disk(&b));

        let used_a = provision_disk(&dir, &disk_a).unwrap();
        let used_b = provision_disk(&dir, &disk_b).unwrap();
        assert_eq!(used_a, dir.join("used/1"));
        assert_eq!(used_b, dir.join("used/2"));
        assert!(unused(&dir).unwrap().is_empty());
        assert!(std::fs::read_to_string(used_a.join(FLASHED_TO))
            .unwrap()
            .contains("a/disk.img"));
        // A third disk gets nothing: every token went to one disk.
        let e = format!("{:#}", provision_disk(&dir, &disk_a).unwrap_err());
        assert!(e.contains("no unused provisioning archive"), "{e}");

        // What the appliance reads: each ESP holds its own archive, byte for byte.
        for (disk, used, token_end) in [(&disk_a, &used_a, "1"), (&disk_b, &used_b, "2")] {
            let image = format!("{}@@{}", disk.display(), esp_offset(disk).unwrap());
            let out = tmp.path().join(format!("out{token_end}"));
            std::fs::create_dir_all(&out).unwrap();
            for name in [provision::FLEET_TOML, provision::CA_PEM, provision::TOKEN] {
                mtools("mcopy")
                    .args(["-i", &image])
                    .arg(format!("::/{ESP_PROVISION}/{name}"))
                    .arg(out.join(name))
                    .run()
                    .unwrap();
                assert_eq!(
                    std::fs::read(out.join(name)).unwrap(),
                    std::fs::read(used.join(name)).unwrap(),
                    "{name}"
                );
            }
            let read = Archive::read(&out).unwrap();
            assert!(read.token.expose().ends_with(token_end));
        }
    }
}
