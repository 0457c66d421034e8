//! Recipes: the TOML description of an appliance, loaded, merged with its `include`, and
//! validated into a [`Recipe`] that the pipeline can trust.
//!
//! Every problem is reported once, with file, line, column and a hint: unknown keys, wrong
//! types, missing overlay folders, packages listed twice, impossible sizes, unknown boards.

mod error;
mod file;
mod policy;
mod size;
#[cfg(test)]
mod tests;
mod update;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::RecipeError;
pub use file::Board;
pub use policy::{is_host_name, BOND, DHCP_RULE, SSH_PACKAGE, SSH_RULE};
pub use size::Size;
pub use update::Update;

use file::{Located, RecipeFile};

pub use aperture_appliance::Arch;

/// `[bsp]`: the Jetson Linux release a Jetson recipe is written for, and the exact file: a
/// `--bsp` tarball must hash to `sha256`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BspPin {
    /// NVIDIA's release name (`R36.4.3`).
    pub release: String,
    /// The "Driver Package (BSP)" file name (`Jetson_Linux_R36.4.3_aarch64.tbz2`).
    pub file: String,
    /// Where NVIDIA publishes it.
    pub url: String,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// `[hardware]`: what the board has that the device programs rely on.
#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    /// The board has a TPM 2.0 that seals the disk keys (default true). `false` is the
    /// explicit statement that it has none: the disk keys are then stored unsealed, which the
    /// audit reports and the appliance logs at every boot.
    pub tpm: bool,
    /// The evdev device name of the board's reset button; no other input device can start a
    /// factory reset. None: the board has no reset button.
    pub reset_button: Option<String>,
}

/// The Debian base of the rootfs.
#[derive(Debug, Clone, Serialize)]
pub struct Base {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Mirror URL.
    pub mirror: String,
    /// Architecture; must be the board's.
    pub architecture: Arch,
    /// Every package, in recipe order (include first), each listed once.
    pub packages: Vec<String>,
    /// The kernel modules the initramfs holds (`MODULES=list`), besides those its hooks add;
    /// empty: initramfs-tools' default, `MODULES=most`. A short list makes the initramfs
    /// smaller and, on an emulated build machine, several minutes quicker to generate.
    pub initramfs_modules: Vec<String>,
    /// The kernel modules the image keeps; the kernel package's others are left out (and so
    /// are out of the initramfs too). Each entry is a folder below the module tree's `kernel/`,
    /// written with a trailing `/` (`"drivers/md/"`), or a module name (`"virtio_net"`); the
    /// modules those depend on, and every `initramfs_modules` entry, are kept as well. Empty:
    /// every module the kernel package ships.
    pub kernel_modules: Vec<String>,
}

/// One of our device programs, built from this workspace for the board's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum DeviceProgram {
    /// The device agent (status, health gate).
    #[serde(rename = "aperture-agent")]
    Agent,
    /// The A/B updater.
    #[serde(rename = "aperture-update")]
    Update,
    /// The reset tool.
    #[serde(rename = "aperture-reset")]
    Reset,
    /// The encrypted config and data partitions.
    #[serde(rename = "aperture-storage")]
    Storage,
    /// The inference runtime (camera streams, the model, detections); needs `[runtime]`.
    #[serde(rename = "aperture-runtime")]
    Runtime,
}

impl DeviceProgram {
    /// All programs.
    pub const ALL: [DeviceProgram; 5] = [
        Self::Agent,
        Self::Update,
        Self::Reset,
        Self::Storage,
        Self::Runtime,
    ];
    /// Binary name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Agent => "aperture-agent",
            Self::Update => "aperture-update",
            Self::Reset => "aperture-reset",
            Self::Storage => "aperture-storage",
            Self::Runtime => "aperture-runtime",
        }
    }
    /// The cargo feature of `aperture-device` (the one binary images ship) that builds it in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Update => "update",
            Self::Reset => "reset",
            Self::Storage => "storage",
            Self::Runtime => "runtime",
        }
    }
    /// Cargo package that builds the binary.
    pub fn package(self) -> &'static str {
        match self {
            Self::Agent => "aperture-agent",
            Self::Update => "aperture-updater",
            Self::Reset => "aperture-reset",
            Self::Storage => "aperture-storage",
            Self::Runtime => "aperture-runtime",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.binary() == s)
    }
}

/// What the appliance runs besides Debian.
#[derive(Debug, Clone, Serialize)]
pub struct Components {
    /// Our programs.
    pub device: Vec<DeviceProgram>,
    /// The inference runtime's Debian packages (installed with the base).
    pub runtime: Vec<String>,
}

/// `[runtime]`: what the inference runtime is built with.
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    /// The model folder (its `manifest.toml`, model file and golden inputs).
    pub model: PathBuf,
    /// Cameras the image starts with (a `cameras.toml` on the config partition replaces them).
    pub cameras: Vec<Camera>,
}

/// A camera listed in the recipe.
#[derive(Debug, Clone, Serialize)]
pub struct Camera {
    /// Its name in detections and metrics.
    pub name: String,
    /// Its stream, `rtsp://...`.
    pub url: String,
}

/// systemd units.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Services {
    /// Units enabled in the image.
    pub enable: Vec<String>,
    /// Units masked in the image.
    pub mask: Vec<String>,
    /// Units the health gate requires to be active before a slot is marked good.
    pub required: Vec<String>,
}

/// Transport protocol of a firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One allowed flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// What the rule is for (shown in the ruleset and the audit).
    pub name: String,
    /// Protocol.
    pub proto: Proto,
    /// Destination (outbound) or local (inbound) port.
    pub port: u16,
    /// Outbound destinations: addresses, subnets or host names; empty means any.
    pub to: Vec<String>,
}

/// How the appliance joins its one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Addressing {
    /// DHCP.
    Dhcp,
    /// A fixed address.
    Static {
        /// Address with prefix, e.g. `10.0.0.5/24`.
        address: String,
        /// Default gateway.
        gateway: String,
        /// DNS servers.
        dns: Vec<String>,
    },
}

/// The network policy: one network, and only the flows it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// Addressing of the one network.
    pub addressing: Addressing,
    /// Ethernet ports; with two, they form an active-backup bond on the same network.
    pub interfaces: Vec<String>,
    /// Allowed outbound flows.
    pub outbound: Vec<Rule>,
    /// Allowed inbound flows (none by default).
    pub inbound: Vec<Rule>,
}

/// An SSH server for a debug image: key logins only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ssh {
    /// Public keys allowed to log in as root, one `authorized_keys` line each.
    pub authorized_keys: Vec<String>,
}

/// Partition sizes.
#[derive(Debug, Clone, Serialize)]
pub struct Partitions {
    /// Whole disk image.
    pub disk: Size,
    /// EFI system partition.
    pub esp: Size,
    /// Each rootfs slot.
    pub rootfs: Size,
    /// Optional factory (golden image) partition.
    pub factory: Option<Size>,
    /// Encrypted config partition.
    pub config: Size,
    /// Encrypted data partition (grown on first boot).
    pub data: Size,
}

/// The slot image's erofs compression when the recipe does not choose one: none, so that the
/// bundle's zstd compresses the files once and a delta update carries new files as they are
/// (measured by `cargo xtask bench delta` and `bench sizes`; see ARCHITECTURE.md, "Slot and
/// bundle compression").
pub const DEFAULT_ROOTFS_COMPRESSION: RootfsCompression = RootfsCompression::None;

/// The bundle payloads' zstd level when the recipe does not choose one.
pub const DEFAULT_BUNDLE_LEVEL: i32 = 3;

/// `[outputs]`: optional outputs of a build.
#[derive(Debug, Clone, Serialize)]
pub struct Outputs {
    /// `disk.img.zst` beside `disk.img` (default: yes). The compressed copy is what `flash`
    /// reads by default when the raw image is not there; a build that is only ever booted or
    /// flashed from its raw `disk.img` (the VM tests' images) saves its time and space.
    pub compressed_disk: bool,
    /// How the slot image's erofs compresses its files.
    pub rootfs_compression: RootfsCompression,
    /// The zstd level of the bundle's payloads (1 to 19).
    pub bundle_level: i32,
}

/// `[outputs] rootfs_compression`: the slot image's erofs compressor (Debian 12's erofs-utils
/// 1.5 has lz4 and lz4hc), or none, leaving all compression to the bundle's zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsCompression {
    /// lz4: fast to make and to read, a slot 40% smaller than without; bundles and deltas
    /// larger (zstd compresses lz4's output less than the files).
    Lz4,
    /// lz4hc at level 12: a smaller slot, slower to make, read as fast as lz4.
    Lz4hc,
    /// No compression in the filesystem (the default): the largest slot, the smallest bundle
    /// and delta.
    None,
}

impl RootfsCompression {
    /// mkfs.erofs's `-z` argument, if any.
    pub fn mkfs_arg(self) -> Option<&'static str> {
        match self {
            RootfsCompression::Lz4 => Some("-zlz4"),
            RootfsCompression::Lz4hc => Some("-zlz4hc,12"),
            RootfsCompression::None => None,
        }
    }

    /// Every mkfs.erofs argument that shapes the slot image, besides its timestamp and UUID:
    /// the compressor and `-E noinline_data`. Without it, erofs keeps each file's last partial
    /// block inline after its inode, so a file added to one directory moves the tails of
    /// every file after it, and a delta carries them again (on the default recipe plus curl,
    /// `noinline_data` took the rootfs delta from 289,183 to 179,940 bytes uncompressed and
    /// from 381,318 to 302,763 with lz4, for a slot 3.6% and 4.3% larger).
    pub fn mkfs_args(self) -> Vec<&'static str> {
        self.mkfs_arg()
            .into_iter()
            .chain(["-Enoinline_data"])
            .collect()
    }
}

/// Signing keys the build uses.
#[derive(Debug, Clone, Serialize)]
pub struct Keys {
    /// Folder with `root.pub`, `release.key` and `keyring.json`.
    pub dir: PathBuf,
    /// Whether the folder holds development keys, created on first use.
    pub development: bool,
}

/// A validated recipe.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    /// Product name (lowercase letters, digits and dashes).
    pub product: String,
    /// Image version.
    pub version: semver::Version,
    /// Monotonic anti-rollback counter.
    pub security_version: u64,
    /// Board.
    pub board: Board,
    /// Fixed source date, else the last git commit's.
    pub source_date_epoch: Option<u64>,
    /// Debug image (serial getty, optional SSH).
    pub debug: bool,
    /// SSH server with key logins (debug images only).
    pub ssh: Option<Ssh>,
    /// Debian base.
    pub base: Base,
    /// Our programs and the runtime.
    pub components: Components,
    /// Overlay folders, applied in this order.
    pub overlays: Vec<PathBuf>,
    /// The inference runtime's model and cameras (`[runtime]`; required with
    /// `aperture-runtime`).
    pub runtime: Option<Runtime>,
    /// systemd units.
    pub services: Services,
    /// Network policy.
    pub network: Network,
    /// Partition sizes.
    pub partitions: Partitions,
    /// Keys.
    pub keys: Keys,
    /// Setuid files allowed in the image.
    pub setuid_allowlist: Vec<String>,
    /// What the board has that the device programs rely on.
    pub hardware: Hardware,
    /// Optional outputs.
    pub outputs: Outputs,
    /// The Jetson Linux BSP the recipe is written for (Jetson boards).
    pub bsp: Option<BspPin>,
    /// The update loop and the release repository it polls (`[update]`); none: the
    /// appliance is updated by hand only.
    pub update: Option<Update>,
    /// Files the recipe was read from, outermost first.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

impl Recipe {
    /// Load, merge and validate a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let chain = file::load_chain(path)?;
        resolve(chain)
    }

    /// Every package to install: base packages, then the runtime's.
    pub fn all_packages(&self) -> Vec<String> {
        let mut v = self.base.packages.clone();
        v.extend(self.components.runtime.iter().cloned());
        v
    }

    /// sha256 of the canonical JSON of the resolved recipe (paths relative to the recipe).
    pub fn hash(&self) -> String {
        let json = serde_json::to_value(self).unwrap_or_default();
        hex::encode(Sha256::digest(json.to_string().as_bytes()))
    }

    /// `<product>-<board>-<version>`: the output folder's default name.
    pub fn build_name(&self) -> String {
        format!("{}-{}-{}", self.product, self.board.name(), self.version)
    }

    /// `<product>/<board>/<version>`: the build store ref.
    pub fn ostree_ref(&self) -> String {
        format!("{}/{}/{}", self.product, self.board.name(), self.version)
    }
}

/// Merge a chain of recipe files (the included base first) and validate the result.
fn resolve(chain: Vec<(PathBuf, String, RecipeFile)>) -> Result<Recipe, RecipeError> {
    let files: Vec<PathBuf> = chain.iter().rev().map(|(p, _, _)| p.clone()).collect();
    let top = &files[0];
    // Scalars: the last file that sets them wins. Lists: concatenated, include first.
    let mut m = file::Merged::default();
    for (path, text, f) in chain {
        m.absorb(&path, &text, f);
    }
    let required = |what: &str, hint: &str| RecipeError::missing(top, what, hint);

    let product = m
        .product
        .ok_or_else(|| required("product", "product = \"aperture-vision\""))?;
    validate_product(&product)?;
    let version = m
        .version
        .ok_or_else(|| required("version", "version = \"1.0.0\""))?;
    let version = semver::Version::parse(&version.value).map_err(|e| {
        version.error(
            format!("`{}` is not a semantic version: {e}", version.value),
            "use MAJOR.MINOR.PATCH, e.g. \"1.2.0\"",
        )
    })?;
    let bundle_level = match &m.bundle_level {
        Some(l) if !(1..=19).contains(&l.value) => {
            return Err(l.error(
                format!("bundle_level {} is not a zstd level from 1 to 19", l.value),
                "bundle_level = 19 makes the smallest bundles; levels above 19 need decoding \
                 windows larger than appliances are given",
            ))
        }
        Some(l) => l.value,
        None => DEFAULT_BUNDLE_LEVEL,
    };
    let security_version = m
        .security_version
        .ok_or_else(|| required("security_version", "security_version = 1"))?;
    let board = m
        .board
        .ok_or_else(|| required("board", "board = \"qemu-x86_64\""))?;

    let arch_l = m
        .architecture
        .ok_or_else(|| required("base.architecture", "[base] architecture = \"amd64\""))?;
    let architecture = match arch_l.value.as_str() {
        "amd64" => Arch::Amd64,
        "arm64" => Arch::Arm64,
        other => {
            return Err(arch_l.error(
                format!("unknown architecture `{other}`"),
                "use \"amd64\" or \"arm64\"",
            ))
        }
    };
    if architecture != board.value.arch() {
        return Err(arch_l.error(
            format!(
                "architecture `{}` does not match board `{}`, which is {}",
                architecture.debian(),
                board.value.name(),
                board.value.arch().debian()
            ),
            &format!("set architecture = \"{}\"", board.value.arch().debian()),
        ));
    }

    // Packages: each once, across the whole chain and the runtime list.
    let mut seen: BTreeMap<String, Located<String>> = BTreeMap::new();
    for p in m.packages.iter().chain(m.runtime.iter()) {
        validate_package(p)?;
        if let Some(first) = seen.get(&p.value) {
            return Err(p.error(
                format!("package `{}` is listed twice", p.value),
                &format!("remove one; it is first listed at {}", first.location()),
            ));
        }
        seen.insert(p.value.clone(), p.clone());
    }

    // Kernel module names: what modprobe takes, each once.
    let mut initramfs_modules: Vec<String> = Vec::new();
    for module in &m.initramfs_modules {
        let v = &module.value;
        if !module_name_is_valid(v) {
            return Err(module.error(
                format!("`{v}` is not a kernel module name"),
                "use the name modprobe takes (lower-case letters, digits, `_` and `-`), e.g. \"virtio_blk\"",
            ));
        }
        if initramfs_modules.contains(v) {
            return Err(module.error(
                format!("kernel module `{v}` is listed twice in initramfs_modules"),
                "remove one",
            ));
        }
        initramfs_modules.push(v.clone());
    }

    let mut kernel_modules: Vec<String> = Vec::new();
    for module in &m.kernel_modules {
        let v = &module.value;
        let valid = match v.strip_suffix('/') {
            Some(folder) => {
                !folder.is_empty()
                    && folder.len() <= 200
                    && folder.split('/').all(|seg| {
                        !seg.is_empty()
                            && seg.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
                            })
                            && seg != "."
                            && seg != ".."
                    })
            }
            None => module_name_is_valid(v),
        };
        if !valid {
            return Err(module.error(
                format!("`{v}` is neither a kernel module name nor a module folder"),
                "write a folder below the kernel's module tree with a trailing `/` (\"drivers/md/\") \
                 or the name modprobe takes (\"virtio_net\")",
            ));
        }
        if kernel_modules.contains(v) {
            return Err(module.error(
                format!("`{v}` is listed twice in kernel_modules"),
                "remove one",
            ));
        }
        kernel_modules.push(v.clone());
    }

    let mut device = Vec::new();
    for d in &m.device {
        let prog = DeviceProgram::parse(&d.value).ok_or_else(|| {
            d.error(
                format!("unknown device program `{}`", d.value),
                "known programs: aperture-agent, aperture-update, aperture-reset, aperture-storage, \
                 aperture-runtime",
            )
        })?;
        if device.contains(&prog) {
            return Err(d.error(
                format!("device program `{}` is listed twice", d.value),
                "remove one",
            ));
        }
        device.push(prog);
    }

    let mut overlays = Vec::new();
    for o in &m.overlays {
        let dir = o.relative_path();
        if !dir.is_dir() {
            return Err(o.error(
                format!(
                    "overlay folder `{}` does not exist ({})",
                    o.value,
                    dir.display()
                ),
                "overlay paths are relative to the recipe file that lists them",
            ));
        }
        if overlays.contains(&dir) {
            return Err(o.error(
                format!("overlay `{}` is listed twice", o.value),
                "remove one",
            ));
        }
        overlays.push(dir);
    }

    let runtime = validate_runtime(m.runtime_model.as_ref(), &m.cameras, &device, top)?;
    let debug = m.debug.as_ref().map(|d| d.value).unwrap_or(false);
    let ssh = policy::validate_ssh(m.ssh.as_ref(), debug, &m.packages)?;
    let setuid_allowlist = policy::validate_allowlist(&m.setuid_allowlist)?;
    let services = m.services.validate()?;
    let network = m.network.validate(top)?;
    let update = update::validate(m.update, &network, &required)?;
    let partitions = m.partitions.validate(top, board.value)?;
    let keys = m
        .keys_dir
        .map(|k| Keys {
            dir: k.relative_path(),
            development: m.keys_development.unwrap_or(false),
        })
        .ok_or_else(|| required("keys.dir", "[keys] dir = \"../keys/dev\""))?;
    let hardware = Hardware {
        tpm: m.tpm.as_ref().map(|t| t.value).unwrap_or(true),
        reset_button: match m.reset_button {
            Some(b) if b.value.trim().is_empty() || b.value.chars().any(char::is_control) => {
                return Err(b.error(
                    "reset_button must be the evdev name of the button's input device",
                    "e.g. reset_button = \"gpio-keys\" (see /sys/class/input/*/name on the board)",
                ))
            }
            Some(b) => Some(b.value),
            None => None,
        },
    };
    let bsp = match (m.bsp_release, m.bsp_file, m.bsp_url, m.bsp_sha256) {
        (None, None, None, None) => None,
        (Some(release), Some(file), Some(url), Some(sha256)) => {
            if sha256.value.len() != 64
                || !sha256.value.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(sha256.error(
                    "sha256 must be 64 lowercase hex digits",
                    "copy it from the release's checksum file (sha256sum of the .tbz2)",
                ));
            }
            if file.value.contains('/') || !file.value.ends_with(".tbz2") {
                return Err(file.error(
                    "file must be the BSP tarball's name, ending in .tbz2",
                    "e.g. file = \"Jetson_Linux_R36.4.3_aarch64.tbz2\"",
                ));
            }
            Some(BspPin {
                release: release.value,
                file: file.value,
                url: url.value,
                sha256: sha256.value,
            })
        }
        _ => {
            return Err(required(
                "bsp.release, bsp.file, bsp.url and bsp.sha256",
                "[bsp] release = \"R36.4.3\", file = \"Jetson_Linux_R36.4.3_aarch64.tbz2\", url = \"https://...\", sha256 = \"...\"",
            ))
        }
    };
    let suite = m
        .suite
        .ok_or_else(|| required("base.suite", "[base] suite = \"bookworm\""))?;
    let mirror = m.mirror.ok_or_else(|| {
        required(
            "base.mirror",
            "[base] mirror = \"http://deb.debian.org/debian\"",
        )
    })?;
    if !(mirror.value.starts_with("http://") || mirror.value.starts_with("https://")) {
        return Err(mirror.error(
            format!("mirror `{}` is not an http(s) URL", mirror.value),
            "e.g. mirror = \"http://deb.debian.org/debian\"",
        ));
    }

    Ok(Recipe {
        product: product.value,
        version,
        security_version: security_version.value,
        board: board.value,
        source_date_epoch: m.source_date_epoch.map(|s| s.value),
        debug,
        ssh,
        base: Base {
            suite: suite.value,
            mirror: mirror.value,
            architecture,
            packages: m.packages.into_iter().map(|p| p.value).collect(),
            initramfs_modules,
            kernel_modules,
        },
        components: Components {
            device,
            runtime: m.runtime.into_iter().map(|p| p.value).collect(),
        },
        overlays,
        runtime,
        services,
        network,
        partitions,
        keys,
        setuid_allowlist,
        hardware,
        outputs: Outputs {
            compressed_disk: m.compressed_disk.as_ref().map(|c| c.value).unwrap_or(true),
            rootfs_compression: m
                .rootfs_compression
                .as_ref()
                .map(|c| c.value)
                .unwrap_or(DEFAULT_ROOTFS_COMPRESSION),
            bundle_level,
        },
        bsp,
        update,
        files,
    })
}

/// `[runtime]`: a model folder holding a `manifest.toml`, required exactly when the recipe
/// builds `aperture-runtime`; cameras with distinct names and `rtsp://` streams.
fn validate_runtime(
    model: Option<&Located<String>>,
    cameras_in: &[Located<file::CameraFile>],
    device: &[DeviceProgram],
    top: &Path,
) -> Result<Option<Runtime>, RecipeError> {
    let wanted = device.contains(&DeviceProgram::Runtime);
    let Some(model) = model else {
        if wanted {
            return Err(RecipeError::missing(
                top,
                "[runtime] model (aperture-runtime needs a model folder)",
                "[runtime] model = \"../models/nanodet-m\"",
            ));
        }
        if let Some(c) = cameras_in.first() {
            return Err(c.error(
                "cameras are listed but the recipe does not build aperture-runtime",
                "add \"aperture-runtime\" to [components] device, or remove the cameras",
            ));
        }
        return Ok(None);
    };
    if !wanted {
        return Err(model.error(
            "[runtime] model is set but the recipe does not build aperture-runtime",
            "add \"aperture-runtime\" to [components] device, or remove [runtime]",
        ));
    }
    let dir = model.relative_path();
    if !dir.join("manifest.toml").is_file() {
        return Err(model.error(
            format!(
                "model folder `{}` has no manifest.toml ({})",
                model.value,
                dir.display()
            ),
            "give a folder holding a model manifest (see models/nanodet-m); paths are relative \
             to the recipe file",
        ));
    }
    let mut cameras: Vec<Camera> = Vec::new();
    for c in cameras_in {
        let name = &c.value.name;
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !name_ok {
            return Err(c.error(
                format!("camera name {name:?} is not allowed"),
                "use letters, digits, `-`, `_` and `.`",
            ));
        }
        if cameras.iter().any(|k| &k.name == name) {
            return Err(c.error(format!("two cameras are named {name:?}"), "rename one"));
        }
        let url = &c.value.url;
        if !url.starts_with("rtsp://") || url.chars().any(|ch| ch.is_control() || ch == '"') {
            return Err(c.error(
                format!("camera {name:?}: {url:?} is not an rtsp:// URL"),
                "cameras are RTSP over TCP (H.264): url = \"rtsp://192.168.1.20:554/stream1\"",
            ));
        }
        cameras.push(Camera {
            name: name.clone(),
            url: url.clone(),
        });
    }
    Ok(Some(Runtime {
        model: dir,
        cameras,
    }))
}

fn validate_product(p: &Located<String>) -> Result<(), RecipeError> {
    let ok = !p.value.is_empty()
        && p.value.len() <= 64
        && p.value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !p.value.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(p.error(
            format!("product name `{}` is not allowed", p.value),
            "use lowercase letters, digits and dashes (it names output folders and ostree refs)",
        ))
    }
}

/// Debian policy 5.6.1: lowercase letters, digits, `+ - .`, at least two characters, starting
/// with an alphanumeric. Anything else would reach apt as an option or a pattern.
fn validate_package(p: &Located<String>) -> Result<(), RecipeError> {
    let v = &p.value;
    let ok = v.len() >= 2
        && v.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(p.error(
            format!("`{v}` is not a valid Debian package name"),
            "package names are lowercase letters, digits, '+', '-' and '.' (Debian policy 5.6.1)",
        ))
    }
}

/// A kernel module name as modprobe takes it: lower-case letters, digits, `_` and `-`.
fn module_name_is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
