//! The Jetson Linux (L4T) BSP a build takes its kernel, device tree and boot firmware from (and
//! the rootfs its `nvbootctrl`, [`super::tools`]): found, checked for every file the board
//! needs (all missing files named at once), and fingerprinted so that a changed BSP is a
//! changed input.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::recipe::BspPin;

use super::board::JetsonBoard;
use super::error::JetsonError;
use super::nvidia::files;

/// The marker the synthetic test BSP carries at its root (see
/// `image/fixtures/make-synthetic-bsp.sh`). A build from such a tree says so loudly.
pub const SYNTHETIC_MARKER: &str = "SYNTHETIC-BSP.txt";

/// Where NVIDIA's trees keep their partition layout files.
pub const LAYOUT_DIR: &str = "bootloader/t186ref/cfg";

/// A checked BSP for one board.
#[derive(Debug, Clone)]
pub struct Bsp {
    /// The `Linux_for_Tegra/` folder.
    pub root: PathBuf,
    /// The board it is used for.
    pub board: &'static JetsonBoard,
    /// The boot-firmware capsule, when the tree has one.
    pub capsule: Option<PathBuf>,
    /// The tree's own release string (`nv_tegra/bsp_version`), when it has one.
    pub release: Option<String>,
    /// Whether this is the synthetic test tree rather than NVIDIA's.
    pub synthetic: bool,
}

/// The BSP tree a `--bsp` argument names: a folder is taken as it is (it cannot be checked
/// against the recipe's pinned checksum, which the returned note says); a `.tbz2` file must
/// hash to the recipe's `[bsp] sha256` and is unpacked once into `cache/bsp/<sha256>/`.
/// Returns the folder, a note for the build log, and the tarball's sha256 (none for a folder).
pub fn unpack(
    given: &Path,
    pin: Option<&BspPin>,
    cache: &Path,
) -> anyhow::Result<(PathBuf, String, Option<String>)> {
    if given.is_dir() {
        let note = match pin {
            Some(p) => format!(
                "{} is a folder: taken as Jetson Linux {} without checking it (pass the {} itself to check its sha256)",
                given.display(),
                p.release,
                p.file
            ),
            None => format!("{} (a folder)", given.display()),
        };
        return Ok((given.to_path_buf(), note, None));
    }
    let (actual, _) = aperture_trust::digest::sha256_file(given)
        .with_context(|| format!("reading the BSP {}", given.display()))?;
    let actual = actual.to_string();
    if let Some(p) = pin {
        if actual != p.sha256 {
            return Err(JetsonError::BspChecksum {
                file: given.to_path_buf(),
                actual,
                expected: p.sha256.clone(),
                release: p.release.clone(),
                url: p.url.clone(),
            }
            .into());
        }
    }
    let dest = cache.join("bsp").join(&actual);
    if dest.join(".complete").exists() {
        let note = format!(
            "{} (sha256 {}, unpacked before)",
            given.display(),
            &actual[..16]
        );
        return Ok((dest, note, Some(actual)));
    }
    let tmp = cache.join("bsp").join(format!("{actual}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // Owners and modes as NVIDIA's tools expect them (its flashing scripts run as root).
    aperture_sys::Cmd::new("tar")
        .arg("-xpf")
        .arg(given)
        .arg("-C")
        .arg(&tmp)
        .run()
        .with_context(|| format!("unpacking the BSP {}", given.display()))?;
    std::fs::write(tmp.join(".complete"), &actual)?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    let note = format!(
        "{} checked (sha256 {}{}) and unpacked into the build cache",
        given.display(),
        &actual[..16],
        pin.map(|p| format!(", Jetson Linux {}", p.release))
            .unwrap_or_default()
    );
    Ok((dest, note, Some(actual)))
}

impl Bsp {
    /// Find the L4T tree in `dir` (the folder that contains `Linux_for_Tegra/`, or that folder
    /// itself) and check that it has every file `board` needs.
    pub fn open(dir: &Path, board: &'static JetsonBoard) -> Result<Bsp, JetsonError> {
        let root = if dir.join("Linux_for_Tegra").is_dir() {
            dir.join("Linux_for_Tegra")
        } else if dir.join("kernel").is_dir() && dir.join("bootloader").is_dir() {
            dir.to_path_buf()
        } else {
            return Err(JetsonError::NotABsp {
                dir: dir.to_path_buf(),
            });
        };
        let missing: Vec<String> = board
            .required_files()
            .into_iter()
            .filter(|f| !root.join(f).is_file())
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(JetsonError::MissingFiles {
                dir: root,
                board: board.board.name(),
                release: board.l4t_release,
                missing,
            });
        }
        let capsule = Some(root.join(files::CAPSULE)).filter(|p| p.is_file());
        let release = std::fs::read_to_string(root.join("nv_tegra/bsp_version"))
            .ok()
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty());
        let synthetic = root.join(SYNTHETIC_MARKER).is_file();
        Ok(Bsp {
            root,
            board,
            capsule,
            release,
            synthetic,
        })
    }

    /// A file of the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The kernel image.
    pub fn kernel(&self) -> PathBuf {
        self.path(files::KERNEL)
    }

    /// The board's kernel device tree.
    pub fn dtb(&self) -> PathBuf {
        self.path(self.board.kernel_dtb)
    }

    /// L4TLauncher, for the ESP.
    pub fn l4t_launcher(&self) -> PathBuf {
        self.path(files::L4T_LAUNCHER)
    }

    /// The boot-firmware files: (path in the tree, file on disk).
    pub fn firmware(&self) -> Vec<(&'static str, PathBuf)> {
        self.board
            .firmware_files()
            .into_iter()
            .map(|f| (f, self.path(f)))
            .collect()
    }

    /// NVIDIA's rootfs A/B layout file of this board in the tree, when it has one.
    pub fn nvidia_layout(&self) -> Option<PathBuf> {
        Some(self.path(&format!("{LAYOUT_DIR}/{}", self.board.nvidia_layout)))
            .filter(|p| p.is_file())
    }

    /// The folder of the tree's Debian packages (`nv_tegra/l4t_deb_packages`).
    pub fn debs_dir(&self) -> PathBuf {
        self.path(files::L4T_DEBS)
    }

    /// The tree's Debian packages (`nv_tegra/l4t_deb_packages/*.deb`), sorted by name; none
    /// when the tree has no such folder. The rootfs takes `nvbootctrl` (and any library it
    /// needs that Debian lacks) from them ([`super::tools`]).
    pub fn debs(&self) -> std::io::Result<Vec<PathBuf>> {
        let dir = self.debs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut debs = Vec::new();
        for e in entries {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "deb") && path.is_file() {
                debs.push(path);
            }
        }
        debs.sort();
        Ok(debs)
    }

    /// sha256 over the path and bytes of every file the build takes from the tree (the kernel,
    /// device tree and firmware for the outputs, every deb for the rootfs's `nvbootctrl` and
    /// the libraries it may need, JetPack's ONNX Runtime and its links): two trees with the
    /// same fingerprint give the same outputs.
    pub fn fingerprint(&self) -> std::io::Result<String> {
        let mut h = Sha256::new();
        let mut files: Vec<String> = self
            .board
            .required_files()
            .into_iter()
            .map(str::to_string)
            .collect();
        if self.capsule.is_some() {
            files.push(files::CAPSULE.to_string());
        }
        for deb in self.debs()? {
            if let Ok(rel) = deb.strip_prefix(&self.root) {
                files.push(rel.to_string_lossy().into_owned());
            }
        }
        if let Some(gpu) = crate::rootfs::runtime::GpuRuntime::find(&self.root)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?
        {
            for (name, target) in gpu.files {
                let rel = format!("{}/{name}", crate::rootfs::runtime::JETPACK_ORT_DIR);
                match target {
                    Some(t) => h.update(format!("{rel} -> {t}\0").as_bytes()),
                    None => files.push(rel),
                }
            }
        }
        for f in files {
            h.update(f.as_bytes());
            h.update([0]);
            let (sha, _) = aperture_trust::digest::sha256_file(&self.path(&f))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            h.update(sha.as_str().as_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }
}
