//! NVIDIA's programs the image takes from the BSP: `/usr/sbin/nvbootctrl`, which the health
//! gate's commit runs (`nvbootctrl verify`) to reset the firmware's boot retry count
//! (`aperture_slots::tegra::retry`, [`NVBOOTCTRL`]).
//!
//! NVIDIA ships it in the BSP's `nv_tegra/l4t_deb_packages/nvidia-l4t-tools_<version>_arm64.deb`
//! (Jetson Linux R35 and R36). OE4T/meta-tegra installs that file from that deb
//! (`recipes-bsp/tegra-binaries/tegra-redundant-boot-base_36.4.3.bb`: `L4T_DEB_TRANSLATED_BPN =
//! "nvidia-l4t-tools"`, `install -m 0755 ${S}/usr/sbin/nvbootctrl ${D}${sbindir}`); from R38 on
//! the same recipe takes it from `nvidia-l4t-bootloader-utils` instead, which this build does
//! not follow yet.
//!
//! Our rootfs is Debian, not NVIDIA's Ubuntu sample rootfs, so the deb is not installed with
//! dpkg (its maintainer scripts expect NVIDIA's image): the one file is taken out of it
//! (`dpkg-deb --fsys-tarfile`, read with the `tar` crate) and checked before it goes into the
//! build's layer:
//! - an ELF must be a 64-bit little-endian aarch64 program (`e_machine` 183, `EM_AARCH64`), its
//!   program interpreter must be in the rootfs, and every shared library it needs (`DT_NEEDED`)
//!   must be in the rootfs's library folders ([`LIBRARY_DIRS`]) or in one of the BSP's debs;
//!   one taken from a deb is installed too, into [`LIBRARY_DEST`], and checked the same way
//!   (architecture, and the libraries it needs in turn);
//! - a `#!` script is accepted only from the synthetic test BSP (the Jetson twin's stand-in,
//!   `host/image/fixtures/make-synthetic-bsp.sh`), with a loud note, and only if its
//!   interpreter is in the rootfs;
//! - anything else is refused, with an error that names the file, the deb and the fix.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use aperture_slots::tegra::retry::NVBOOTCTRL;
use goblin::elf::header::{machine_to_str, EM_AARCH64};
use goblin::elf::Elf;

use super::bsp::Bsp;
use super::error::JetsonError;
use crate::rootfs::layer::Layer;

/// NVIDIA's package that ships `nvbootctrl` in Jetson Linux R35/R36.
pub const TOOLS_PACKAGE: &str = "nvidia-l4t-tools";

/// The rootfs folders a library counts as present in: Debian arm64's multiarch folders, which
/// the dynamic loader searches without configuration, and the plain ones.
pub const LIBRARY_DIRS: [&str; 4] = [
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib",
    "usr/lib",
];

/// Where a library taken from a BSP deb is installed: Debian arm64's multiarch folder, on the
/// loader's default path. (NVIDIA's images keep theirs in `.../nvidia/` or `.../tegra/` and
/// add an `ld.so.conf.d` entry; one folder the loader always searches needs none.)
pub const LIBRARY_DEST: &str = "usr/lib/aarch64-linux-gnu";

/// How many symlinks inside a deb are followed to reach a file.
const MAX_LINKS: usize = 8;

/// The image path of nvbootctrl, relative to the image root: where the device runs it from.
pub fn nvbootctrl_path() -> &'static str {
    NVBOOTCTRL.trim_start_matches('/')
}

/// What the rootfs holds, as far as these checks need to know: the build's layer over its
/// Debian base in a build, a list of paths in tests.
pub trait Rootfs {
    /// Whether `path` (relative to the image root; symlinks inside the image followed) exists.
    fn exists(&self, path: &str) -> Result<bool>;
}

impl Rootfs for Layer<'_> {
    fn exists(&self, path: &str) -> Result<bool> {
        Layer::exists(self, Path::new(path))
    }
}

/// What nvbootctrl turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An aarch64 ELF program.
    Elf {
        /// Its program interpreter (`PT_INTERP`), if it is dynamically linked.
        interpreter: Option<String>,
        /// The shared libraries it needs (`DT_NEEDED`), in its order.
        needed: Vec<String>,
    },
    /// A `#!` script: the synthetic test BSP's stand-in, never NVIDIA's.
    StandIn {
        /// The interpreter its `#!` line names.
        interpreter: String,
    },
}

/// nvbootctrl as the BSP ships it: read from its deb and checked on its own ([`read`]); what it
/// needs from the rootfs is checked by [`plan`].
#[derive(Debug, Clone)]
pub struct Tool {
    /// The deb it came from.
    pub deb: PathBuf,
    /// Its path in the deb (after any symlink there).
    pub member: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// What it is.
    pub kind: Kind,
}

impl Tool {
    /// Whether this is the synthetic BSP's stand-in script.
    pub fn is_stand_in(&self) -> bool {
        matches!(self.kind, Kind::StandIn { .. })
    }

    /// One line for the build log: what was found where.
    pub fn note(&self, bsp: &Bsp) -> String {
        let what = match &self.kind {
            Kind::Elf { needed, .. } if needed.is_empty() => {
                "aarch64 ELF, no shared libraries".to_string()
            }
            Kind::Elf { needed, .. } => format!("aarch64 ELF needing {}", needed.join(", ")),
            Kind::StandIn { interpreter } => {
                format!("the synthetic BSP's stand-in script (#!{interpreter})")
            }
        };
        format!(
            "{NVBOOTCTRL} in {} ({what}), from the Jetson Linux BSP {} ({})",
            file_name(&self.deb),
            bsp.root.display(),
            bsp.release.as_deref().unwrap_or("release unknown")
        )
    }
}

/// One file the BSP puts into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Its path in the image, relative to the root.
    pub path: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its mode (owner and group are root).
    pub mode: u32,
    /// The deb it came from.
    pub deb: PathBuf,
    /// Its path in the deb.
    pub member: String,
}

/// What [`install`] put into the image, in one line for the build log.
pub fn installed_note(files: &[Install]) -> String {
    files
        .iter()
        .map(|f| format!("/{} from {}", f.path, file_name(&f.deb)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The BSP's `nvidia-l4t-tools_<version>_arm64.deb`: exactly one.
pub fn tools_deb(bsp: &Bsp) -> Result<PathBuf> {
    let prefix = format!("{TOOLS_PACKAGE}_");
    let found: Vec<PathBuf> = bsp
        .debs()
        .with_context(|| format!("listing {}", bsp.debs_dir().display()))?
        .into_iter()
        .filter(|d| {
            let n = file_name(d);
            n.starts_with(&prefix) && n.ends_with("_arm64.deb")
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(JetsonError::NoToolsDeb {
            dir: bsp.debs_dir(),
            release: bsp.board.l4t_release,
        }
        .into()),
        several => Err(JetsonError::SeveralToolsDebs {
            dir: bsp.debs_dir(),
            found: several.iter().map(|d| file_name(d)).collect(),
        }
        .into()),
    }
}

/// Read nvbootctrl from the BSP's tools deb and check what can be checked without the rootfs:
/// an aarch64 ELF, or a script from the synthetic BSP only.
pub fn read(bsp: &Bsp) -> Result<Tool> {
    let deb = tools_deb(bsp)?;
    let member = nvbootctrl_path();
    let listing = Listing::read(&deb)?;
    let not_in_deb = || JetsonError::ToolNotInDeb {
        deb: deb.clone(),
        member: member.to_string(),
    };
    let resolved = listing.resolve(member).ok_or_else(not_in_deb)?;
    let bytes = read_member(&deb, &resolved)?.ok_or_else(not_in_deb)?;
    let what = NVBOOTCTRL.to_string();
    let kind = if bytes.starts_with(b"\x7fELF") {
        let info = check_elf(&bytes, &what, &deb)?;
        Kind::Elf {
            interpreter: info.interpreter,
            needed: info.needed,
        }
    } else if let Some(interpreter) = shebang(&bytes) {
        if !bsp.synthetic {
            return Err(JetsonError::ScriptTool {
                what,
                deb,
                interpreter,
            }
            .into());
        }
        Kind::StandIn { interpreter }
    } else {
        return Err(JetsonError::NotAProgram { what, deb }.into());
    };
    Ok(Tool {
        deb,
        member: resolved,
        bytes,
        kind,
    })
}

/// The files `tool` brings into `rootfs`: itself (0755), then every library it needs that the
/// rootfs lacks, from the BSP's debs (the tools deb first, then the others by name), each
/// checked like the tool and followed into the libraries it needs in turn.
pub fn plan(bsp: &Bsp, tool: &Tool, rootfs: &dyn Rootfs) -> Result<Vec<Install>> {
    let path = nvbootctrl_path();
    if rootfs.exists(path)? {
        return Err(JetsonError::ToolShadowed {
            path: path.to_string(),
        }
        .into());
    }
    let mut out = vec![Install {
        path: path.to_string(),
        bytes: tool.bytes.clone(),
        mode: 0o755,
        deb: tool.deb.clone(),
        member: tool.member.clone(),
    }];
    let (interpreter, needed) = match &tool.kind {
        Kind::StandIn { interpreter } => (Some(interpreter), &Vec::new()),
        Kind::Elf {
            interpreter,
            needed,
        } => (interpreter.as_ref(), needed),
    };
    if let Some(i) = interpreter {
        if !rootfs.exists(i.trim_start_matches('/'))? {
            return Err(JetsonError::MissingInterpreter {
                what: NVBOOTCTRL.to_string(),
                deb: tool.deb.clone(),
                interpreter: i.clone(),
            }
            .into());
        }
    }
    let mut search = Search::new(bsp, &tool.deb)?;
    let mut queue: VecDeque<(String, String)> = needed
        .iter()
        .map(|n| (n.clone(), NVBOOTCTRL.to_string()))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((soname, needed_by)) = queue.pop_front() {
        if !seen.insert(soname.clone()) || in_rootfs(rootfs, &soname)? {
            continue;
        }
        let Some((deb, member, bytes)) = search.find(&soname)? else {
            return Err(JetsonError::UnresolvedLibrary {
                soname,
                needed_by,
                tool: NVBOOTCTRL.to_string(),
                bsp: bsp.root.clone(),
            }
            .into());
        };
        let dest = format!("{LIBRARY_DEST}/{soname}");
        let info = check_elf(&bytes, &format!("{soname} ({member})"), &deb)?;
        queue.extend(info.needed.into_iter().map(|n| (n, format!("/{dest}"))));
        out.push(Install {
            path: dest,
            bytes,
            mode: 0o644,
            deb,
            member,
        });
    }
    Ok(out)
}

/// Check `tool` against the layer ([`plan`]) and write what it brings into it, owned by root.
pub fn install(bsp: &Bsp, tool: &Tool, layer: &Layer<'_>) -> Result<Vec<Install>> {
    let files = plan(bsp, tool, layer)?;
    for f in &files {
        layer
            .write(Path::new(&f.path), &f.bytes, f.mode)
            .with_context(|| format!("installing /{} from {}", f.path, f.deb.display()))?;
    }
    Ok(files)
}

fn in_rootfs(rootfs: &dyn Rootfs, soname: &str) -> Result<bool> {
    for dir in LIBRARY_DIRS {
        if rootfs.exists(&format!("{dir}/{soname}"))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What an ELF file needs at run time.
struct ElfInfo {
    interpreter: Option<String>,
    needed: Vec<String>,
}

/// Parse `bytes` as an ELF object for the appliance: 64-bit little-endian aarch64, every
/// `DT_NEEDED` a plain file name (it becomes a path in the image).
fn check_elf(bytes: &[u8], what: &str, deb: &Path) -> Result<ElfInfo, JetsonError> {
    let bad = |reason: String| JetsonError::BadElf {
        what: what.to_string(),
        deb: deb.to_path_buf(),
        reason,
    };
    let elf = Elf::parse(bytes).map_err(|e| bad(e.to_string()))?;
    let machine = elf.header.e_machine;
    if machine != EM_AARCH64 || !elf.is_64 || !elf.little_endian {
        return Err(JetsonError::WrongArch {
            what: what.to_string(),
            deb: deb.to_path_buf(),
            found: format!(
                "{} (e_machine {machine}), {}-bit {}-endian",
                machine_to_str(machine),
                if elf.is_64 { 64 } else { 32 },
                if elf.little_endian { "little" } else { "big" }
            ),
        });
    }
    let needed: Vec<String> = elf.libraries.iter().map(|s| s.to_string()).collect();
    if let Some(n) = needed
        .iter()
        .find(|n| n.is_empty() || n.contains('/') || n.starts_with('.'))
    {
        return Err(bad(format!("DT_NEEDED `{n}` is not a plain file name")));
    }
    Ok(ElfInfo {
        interpreter: elf.interpreter.map(str::to_string),
        needed,
    })
}

/// The interpreter a `#!` line names (its first word), if `bytes` starts with one.
fn shebang(bytes: &[u8]) -> Option<String> {
    let rest = bytes.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let word = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
    Some(word.to_string())
}

/// A path inside a deb's file archive, without `./`; `None` if it climbs out.
fn normalize(p: &Path) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out.join("/"))
}

/// An entry of a deb's file archive.
#[derive(Debug, Clone)]
enum Entry {
    /// A regular file.
    File,
    /// A symlink or hard link, to this archive path.
    Link(String),
    /// Anything else (folders, devices).
    Other,
}

/// The file list of a deb (its data archive as `dpkg-deb --fsys-tarfile` gives it).
struct Listing {
    entries: BTreeMap<String, Entry>,
}

/// Run `f` on every entry of `deb`'s file archive, with its normalized path, until it says
/// stop (`true`).
fn walk(
    deb: &Path,
    mut f: impl FnMut(String, &mut tar::Entry<'_, &[u8]>) -> std::io::Result<bool>,
) -> Result<(), JetsonError> {
    let data = aperture_sys::Cmd::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .run()
        .map_err(|err| JetsonError::DebRead {
            deb: deb.to_path_buf(),
            err,
        })?
        .stdout;
    let io = |err| JetsonError::DebArchive {
        deb: deb.to_path_buf(),
        err,
    };
    let mut archive = tar::Archive::new(&data[..]);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let Some(name) = normalize(&entry.path().map_err(io)?) else {
            continue;
        };
        if f(name, &mut entry).map_err(io)? {
            break;
        }
    }
    Ok(())
}

impl Listing {
    fn read(deb: &Path) -> Result<Listing, JetsonError> {
        let mut entries = BTreeMap::new();
        walk(deb, |name, e| {
            let kind = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Entry::File,
                t @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let target = e.link_name()?.unwrap_or_default();
                    // A symlink is relative to its folder; a hard link names an archive path.
                    let full = if t == tar::EntryType::Symlink && !target.is_absolute() {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(&target)
                    } else {
                        target.into_owned()
                    };
                    normalize(&full).map_or(Entry::Other, Entry::Link)
                }
                _ => Entry::Other,
            };
            entries.insert(name, kind);
            Ok(false)
        })?;
        Ok(Listing { entries })
    }

    /// The regular file `path` is or leads to through links inside the deb.
    fn resolve(&self, path: &str) -> Option<String> {
        let mut cur = path.to_string();
        for _ in 0..=MAX_LINKS {
            match self.entries.get(&cur)? {
                Entry::File => return Some(cur),
                Entry::Link(target) => cur = target.clone(),
                Entry::Other => return None,
            }
        }
        None
    }
}

/// The bytes of the regular file `member` of `deb`.
fn read_member(deb: &Path, member: &str) -> Result<Option<Vec<u8>>, JetsonError> {
    let mut found = None;
    walk(deb, |name, e| {
        if name != member || e.header().entry_type() != tar::EntryType::Regular {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes)?;
        found = Some(bytes);
        Ok(true)
    })?;
    Ok(found)
}

/// The BSP's debs searched for libraries: the tools deb first, then the others by name, each
/// listed once and only when a library is not found before it.
struct Search {
    debs: Vec<PathBuf>,
    listings: BTreeMap<PathBuf, Listing>,
}

impl Search {
    fn new(bsp: &Bsp, tools_deb: &Path) -> Result<Search> {
        let mut debs = vec![tools_deb.to_path_buf()];
        debs.extend(
            bsp.debs()
                .with_context(|| format!("listing {}", bsp.debs_dir().display()))?
                .into_iter()
                .filter(|d| d != tools_deb),
        );
        Ok(Search {
            debs,
            listings: BTreeMap::new(),
        })
    }

    /// The first library file named `soname` in the debs: (deb, path in it, bytes).
    fn find(&mut self, soname: &str) -> Result<Option<(PathBuf, String, Vec<u8>)>, JetsonError> {
        for deb in &self.debs {
            if !self.listings.contains_key(deb) {
                self.listings.insert(deb.clone(), Listing::read(deb)?);
            }
            let listing = &self.listings[deb];
            let hit = listing
                .entries
                .keys()
                .filter(|p| p.rsplit('/').next() == Some(soname))
                .find_map(|p| listing.resolve(p));
            if let Some(member) = hit {
                if let Some(bytes) = read_member(deb, &member)? {
                    return Ok(Some((deb.clone(), member, bytes)));
                }
            }
        }
        Ok(None)
    }
}
