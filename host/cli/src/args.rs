//! The arguments of `aperture`, the build engineers' command line (what `cargo xtask <verb>`
//! runs after its preflight). `cargo xtask` itself parses only its own verbs (`test`, `fuzz`)
//! and the verb's name; everything else is parsed here.

use std::path::PathBuf;

use aperture_repo::Role;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default recipe: fully buildable, bootable and testable on a development machine.
pub const DEFAULT_RECIPE: &str = "recipes/qemu-x86_64.toml";

/// Aperture: build, flash and update secure A/B edge appliances.
#[derive(Debug, Parser)]
#[command(name = "aperture", bin_name = "cargo xtask", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every verb; nouns first where there is a noun (`keys generate`, `vm run`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a recipe into a rootfs commit, slot images, a signed disk image and an update bundle.
    Build(BuildArgs),
    /// Signing keys: a root key and a release key certified by it.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a build's signature, key chain, every artifact's size and hash, and verity roots.
    Verify(VerifyArgs),
    /// List the paths an update between two builds changes (added, removed, modified).
    Diff(DiffArgs),
    /// Run a built image under QEMU.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Make an update bundle from a build.
    Bundle(BundleArgs),
    /// Write images to appliances (block devices or files), verified; or list attached Jetsons.
    Flash(FlashArgs),
    /// Inspect a built image offline against its recipe's security policy.
    Audit(AuditArgs),
    /// The build cache every output folder and the tests share: show it, prune it.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The fleet's TUF release repository: init, status, refresh, rotate-root, sync, keygen.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Releases in the repository: publish a build, halt or resume its rollout.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Detection models for the appliance's runtime: signed model bundles.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// `cargo xtask model ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum ModelCommand {
    /// Sign a model folder (manifest.toml, its model file, golden/) into a model bundle that
    /// `aperture-runtime model install` installs without an OS update.
    Bundle(ModelBundleArgs),
}

/// `model bundle`.
#[derive(Debug, Args, Clone)]
pub struct ModelBundleArgs {
    /// The model folder: manifest.toml, the model file it names, golden/reference.json and the
    /// golden inputs (like models/nanodet-m).
    #[arg(long)]
    pub model: PathBuf,
    /// The keys folder (`keys generate`): its release key signs, under its root-signed
    /// keyring, the same chain as OS bundles.
    #[arg(long)]
    pub keys: PathBuf,
    /// The bundle's version (semver): an appliance refuses one older than its current model.
    #[arg(long)]
    pub version: semver::Version,
    /// The bundle file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Refuse development keys.
    #[arg(long)]
    pub release: bool,
    /// Let a --release bundle use development keys anyway (never for shipping).
    #[arg(long)]
    pub insecure_dev_keys: bool,
}

/// `cargo xtask repo ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum RepoCommand {
    /// Make a TUF repository (root, targets, snapshot, timestamp; consistent snapshots) with the
    /// settings of REPO/repo.toml (written with defaults if absent); missing keys are made as
    /// development keys, loudly.
    Init(RepoInitArgs),
    /// Each role's version and expiry, and the releases per channel.
    Status(RepoStatusArgs),
    /// Re-sign the roles with less than half their validity left (what a cron job runs).
    Refresh(RepoRefreshArgs),
    /// Give roles new keys through a new root version signed by the old and the new root keys
    /// (TUF 5.3.4); roles whose keys changed are re-signed with them.
    RotateRoot(RepoRotateRootArgs),
    /// Copy the repository to a folder a web server serves, or to an S3 bucket: targets first,
    /// timestamp last.
    Sync(RepoSyncArgs),
    /// Make a release signing key (Ed25519, PKCS#8 DER) to list in repo.toml; keep it offline.
    Keygen(RepoKeygenArgs),
    /// Delegate the `rollouts` role (target names `rollouts/*/*`) to the fleet server's online
    /// key (`[rollouts]` in repo.toml; a development key is made, loudly, if missing). Signed
    /// with the targets key, once.
    DelegateRollouts(RepoAtArgs),
}

/// A repository command that takes only the folder and `--release`.
#[derive(Debug, Args, Clone)]
pub struct RepoAtArgs {
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Refuse development keys (and never make one).
    #[arg(long)]
    pub release: bool,
}

/// `repo init`.
#[derive(Debug, Args, Clone)]
pub struct RepoInitArgs {
    /// The repository folder to make.
    #[arg(long)]
    pub out: PathBuf,
    /// A repository for a real fleet: never make development keys, refuse any.
    #[arg(long)]
    pub release: bool,
}

/// `repo status`.
#[derive(Debug, Args, Clone)]
pub struct RepoStatusArgs {
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Print JSON on stdout instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// `repo refresh`.
#[derive(Debug, Args, Clone)]
pub struct RepoRefreshArgs {
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Re-sign every role, due or not.
    #[arg(long)]
    pub force: bool,
    /// Refuse development keys.
    #[arg(long)]
    pub release: bool,
}

/// `repo rotate-root`.
#[derive(Debug, Args, Clone)]
pub struct RepoRotateRootArgs {
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// The roles given new keys, comma-separated: root, targets, snapshot, timestamp.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "root",
        value_name = "ROLES"
    )]
    pub rotate: Vec<Role>,
    /// A new key of a rotated role, ROLE=FILE (made with `repo keygen` and kept offline);
    /// repeat it for a role with several keys. A rotated role without one gets new development
    /// keys in REPO/keys, made loudly.
    #[arg(long = "key", value_name = "ROLE=FILE", value_parser = parse_role_key)]
    pub keys: Vec<(Role, PathBuf)>,
    /// Refuse development keys, old or new, and never make any.
    #[arg(long)]
    pub release: bool,
}

fn parse_role_key(s: &str) -> Result<(Role, PathBuf), String> {
    let (role, file) = s.split_once('=').ok_or_else(|| {
        format!("`{s}`: give a new key as ROLE=FILE, e.g. root=/media/keys/root-2.pk8")
    })?;
    Ok((role.parse()?, PathBuf::from(file)))
}

/// `repo sync`.
#[derive(Debug, Args, Clone)]
pub struct RepoSyncArgs {
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Where it is served: a folder, or s3://BUCKET/PREFIX. For S3, credentials and region come
    /// from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_REGION.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub to: String,
    /// An S3-compatible server to sync to instead of AWS (overrides AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
}

/// `repo keygen`.
#[derive(Debug, Args, Clone)]
pub struct RepoKeygenArgs {
    /// Where to write the key (never over an existing file).
    pub path: PathBuf,
}

/// `cargo xtask release ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum ReleaseCommand {
    /// Verify a build folder, then publish its update bundle to a channel with a wave schedule.
    Publish(ReleasePublishArgs),
    /// Halt a release's rollout: devices that have not started installing it do not.
    Halt(ReleaseHaltArgs),
    /// Resume a halted rollout.
    Resume(ReleaseHaltArgs),
}

/// `release publish`.
#[derive(Debug, Args, Clone)]
pub struct ReleasePublishArgs {
    /// The build output folder (verified first).
    #[arg(long)]
    pub image: PathBuf,
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// The channel (lower-case letters, digits, `-`, `_`).
    #[arg(long)]
    pub channel: String,
    /// The staged rollout: cumulative share of the fleet @ time after publication, for example
    /// `1%@0h,10%@4h,50%@24h,100%@48h` [default: all devices at once].
    #[arg(long, default_value = "all")]
    pub waves: String,
    /// Devices install it only through an active fleet rollout that names them (the
    /// repository's `rollouts` role: `repo delegate-rollouts`); older devices never install it.
    #[arg(long)]
    pub gate_on_rollout: bool,
    /// Refuse development keys (the repository's, and the image keys that sign deltas).
    #[arg(long)]
    pub release: bool,
    /// The image keys folder that signs the delta bundles made from earlier releases (the
    /// build's release keys; `[deltas] from_last` in repo.toml says how many).
    #[arg(long, default_value = "keys/dev")]
    pub keys: PathBuf,
}

/// `release halt` and `release resume`.
#[derive(Debug, Args, Clone)]
pub struct ReleaseHaltArgs {
    /// The repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// The release's version.
    #[arg(long)]
    pub version: String,
    /// Its channel.
    #[arg(long)]
    pub channel: String,
    /// Refuse development keys.
    #[arg(long)]
    pub release: bool,
}

/// `cargo xtask build`.
#[derive(Debug, Args, Clone)]
pub struct BuildArgs {
    /// Recipe to build.
    #[arg(long, default_value = DEFAULT_RECIPE)]
    pub recipe: PathBuf,
    /// Output folder [default: out/<product>-<board>-<version>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The build cache: the ostree build store and the caches of Debian base trees and
    /// packages, shared by every output folder [default: $APERTURE_CACHE, else
    /// ~/.cache/aperture]. `cargo xtask cache` shows and prunes it.
    #[arg(long, env = "APERTURE_CACHE")]
    pub cache: Option<PathBuf>,
    /// Jetson Linux (L4T) BSP for Jetson boards (kernel, device trees, boot firmware): the
    /// `.tbz2` NVIDIA publishes (checked against the recipe's `[bsp] sha256`, unpacked into the
    /// build cache once), or an unpacked `Linux_for_Tegra` folder (not checked).
    #[arg(long)]
    pub bsp: Option<PathBuf>,
    /// Stop after the rootfs commit (no slot or disk images).
    #[arg(long)]
    pub rootfs_only: bool,
    /// Build a release: refuses development keys.
    #[arg(long)]
    pub release: bool,
    /// Let a release build use development keys anyway (never for shipping).
    #[arg(long)]
    pub insecure_dev_keys: bool,
    /// Skip the final security audit (to test the audit on images that break the policy;
    /// never for shipping). `cargo xtask audit DIR` audits the result later.
    #[arg(long)]
    pub insecure_skip_audit: bool,
    /// Print machine-readable results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cargo xtask keys ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum KeysCommand {
    /// Make a root key, a release key, the keyring in which the root key certifies it, and the
    /// Secure Boot keys (PK, KEK, db) and TPM policy key in `secure-boot/`.
    Generate(KeysGenerateArgs),
    /// Revoke a release key: write a new keyring without it, its sequence one higher, signed
    /// by the root key. Appliances refuse bundles under older keyrings once they commit an
    /// image installed from a bundle under the new one.
    Revoke(KeysRevokeArgs),
}

/// `cargo xtask keys revoke`.
#[derive(Debug, Args, Clone)]
pub struct KeysRevokeArgs {
    /// Key id of the release key to revoke (16 hex characters, as `keys generate` prints).
    #[arg(long, value_name = "ID")]
    pub key_id: String,
    /// Keys folder holding root.key (the root's secret key) and keyring.json.
    #[arg(long, default_value = "keys/release")]
    pub dir: PathBuf,
    /// Also make a new release key (the folder's release.key; the old file is kept as
    /// release.key.<its id>.old) and list it in the new keyring.
    #[arg(long)]
    pub replace: bool,
    /// Days until the new release key expires (with --replace).
    #[arg(long, default_value_t = 365)]
    pub valid_days: u64,
}

/// `cargo xtask keys generate`.
#[derive(Debug, Args, Clone)]
pub struct KeysGenerateArgs {
    /// Folder for the keys (secret keys are written mode 0600).
    #[arg(long, default_value = "keys/release")]
    pub out: PathBuf,
    /// Days until the release key expires.
    #[arg(long, default_value_t = 365)]
    pub valid_days: u64,
    /// Replace keys that already exist in the folder.
    #[arg(long)]
    pub force: bool,
    /// Add only the Secure Boot keys (PK, KEK, db) and the TPM policy key to a folder that
    /// already holds image keys (`secure-boot/`).
    #[arg(long)]
    pub secure_boot_only: bool,
}

/// `cargo xtask verify`.
#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Build output folder (holds manifest.json, manifest.sig and the artifacts).
    pub dir: PathBuf,
    /// Root public key to trust [default: the one the recipe named at build time, recorded in
    /// the output folder as root.pub].
    #[arg(long)]
    pub root_key: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cargo xtask diff`.
#[derive(Debug, Args, Clone)]
pub struct DiffArgs {
    /// Older build: an ostree ref (`product/board/version`), a version, or a commit checksum.
    pub from: String,
    /// Newer build, in the same forms.
    pub to: String,
    /// The build store [default: the build cache's, $APERTURE_CACHE/repo or
    /// ~/.cache/aperture/repo].
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cargo xtask vm ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum VmCommand {
    /// Boot a build's disk.img under QEMU with UEFI; the serial console is on stdout.
    Run(VmRunArgs),
}

/// How QEMU should execute the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when it works here, else TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// `cargo xtask vm run`.
#[derive(Debug, Args, Clone)]
pub struct VmRunArgs {
    /// Build output folder [default: the default recipe's output folder].
    pub dir: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Discard this run's writes when QEMU exits (the kept overlay stays as it was).
    #[arg(long)]
    pub snapshot: bool,
    /// Start from the build's disk again: a new overlay, UEFI variables and TPM.
    #[arg(long)]
    pub fresh: bool,
    /// Memory in MiB [default: 1024; 2048 for the twin].
    #[arg(long)]
    pub memory: Option<u32>,
    /// Forward a host TCP port to a guest port (HOST:GUEST); may be repeated.
    #[arg(long = "forward")]
    pub forwards: Vec<String>,
    /// Start the firmware without Secure Boot (plain OVMF, no keys enrolled). By default an
    /// x86-64 image boots OVMF with Secure Boot on and only the build's keys (its
    /// `secure-boot/` certificates) enrolled, as an appliance's firmware is. Its disk keys are
    /// sealed to Secure Boot, so without it `config` and `data` are neither formatted nor
    /// unlocked: the boot stops at storage, saying why.
    #[arg(long)]
    pub insecure_no_secure_boot: bool,
    /// Boot a Jetson build as the Jetson twin: QEMU arm64 with the board's disk as built, each
    /// boot chosen by L4TLauncher's A/B rules applied to the twin's UEFI variables between boots
    /// (a guest reboot ends QEMU and the next boot starts). Without DIR, the twin build of
    /// --twin-recipe is made (or reused) in out/<product>-<board>-<version>-twin first.
    #[arg(long, conflicts_with = "snapshot")]
    pub twin: bool,
    /// The Jetson recipe the twin build is made from when no DIR is given (with the twin BSP,
    /// whose nvidia-l4t-tools deb holds the twin's stand-in nvbootctrl)
    /// [default: recipes/jetson-orin-agx.toml].
    #[arg(long, requires = "twin")]
    pub twin_recipe: Option<PathBuf>,
}

/// The recipe `vm run --twin` builds when no folder is given: the AGX Orin recipe as it is; the
/// twin BSP (`aperture_image::twin::bsp`) brings the twin's stand-in `nvbootctrl`.
pub const TWIN_RECIPE: &str = "recipes/jetson-orin-agx.toml";

/// `cargo xtask bundle`.
#[derive(Debug, Args, Clone)]
pub struct BundleArgs {
    /// Build output folder to bundle.
    #[arg(long)]
    pub image: PathBuf,
    /// Where to write the bundle [default: <image>/update.bundle].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Root public key to trust [default: the build folder's root.pub].
    #[arg(long, conflicts_with = "from")]
    pub root_key: Option<PathBuf>,
    /// Make a delta bundle instead: the update from this older build folder, whose rootfs is
    /// the base appliances rebuild the new one from [default out:
    /// <image>/update-from-<old version>.bundle].
    #[arg(long, value_name = "OLD_BUILD")]
    pub from: Option<PathBuf>,
    /// With --from: the keys folder that signs the delta bundle (the new build's release
    /// keys).
    #[arg(long, requires = "from", default_value = "keys/dev")]
    pub keys: PathBuf,
    /// With --from: refuse development keys.
    #[arg(long, requires = "from")]
    pub release: bool,
    /// Let a --release delta bundle use development keys anyway (never for shipping).
    #[arg(long, requires = "release")]
    pub insecure_dev_keys: bool,
}

/// `cargo xtask flash`.
#[derive(Debug, Args, Clone)]
pub struct FlashArgs {
    /// Build output folder with manifest.json, manifest.sig, disk.img.zst and disk.img.bmap.
    #[arg(long, required_unless_present = "list")]
    pub image: Option<PathBuf>,
    /// Target: a block device, a file, `serial:SERIAL` (the disk a Jetson's flashing initrd
    /// exposes), `jetson:all` (every Jetson in recovery mode) or `jetson:usb:<bus-port>` (the
    /// one at that USB port, as `--list` shows it). Repeat to flash several in parallel.
    /// Jetsons named with `jetson:` are flashed end to end: NVIDIA's tools boot each into its
    /// flashing initrd, disk.img is written and read back, NVIDIA's tools write the boot
    /// firmware (QSPI); they cannot be mixed with other targets in one run.
    #[arg(long = "to", required_unless_present = "list")]
    pub to: Vec<String>,
    /// List Jetsons in recovery mode and the disks flashing initrds expose, then exit.
    #[arg(long)]
    pub list: bool,
    /// Which copy of the disk to write from: `raw` (disk.img, only the ranges the signed bmap
    /// maps, each checked against its checksum), `zst` (disk.img.zst, decompressed and checked
    /// against the signed manifest's sha256), or `auto`: `raw` when the folder holds disk.img,
    /// else `zst`. Either way every range is read back from the target before the partition
    /// table is written.
    #[arg(long, value_enum, default_value = "auto")]
    pub input: FlashInput,
    /// Root public key to trust [default: the build folder's root.pub, the key the build was
    /// made for].
    #[arg(long)]
    pub root_key: Option<PathBuf>,
    /// Allow a non-removable disk as a target (a disk that holds the running system, a mount,
    /// swap or a dm device is refused even so).
    #[arg(long)]
    pub force: bool,
    /// Provisioning archives (`aperture-fleet provision --out DIR`): each flashed disk gets the
    /// next unused one on its ESP (aperture/provision/), which is then moved to DIR/used/ so
    /// its single-use token never goes to a second disk. Refused before writing when DIR holds
    /// fewer archives than targets.
    #[arg(long, value_name = "DIR")]
    pub provision: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    /// What only `jetson:` targets use.
    #[command(flatten)]
    pub jetson: Box<FlashJetsonArgs>,
}

/// Which copy of the disk `flash` writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlashInput {
    /// disk.img when the folder has it, else disk.img.zst.
    Auto,
    /// The raw disk.img.
    Raw,
    /// The compressed disk.img.zst.
    Zst,
}

/// The options of `cargo xtask flash` that only `jetson:` targets use.
#[derive(Debug, Args, Clone)]
pub struct FlashJetsonArgs {
    /// With `jetson:` targets: the Jetson Linux tree whose tools to run, the unpacked
    /// `Linux_for_Tegra` folder the build used or the `.tbz2` it took (its unpacked copy in
    /// the build cache) [default: the tree the build recorded in build-report.json]. Its boot
    /// firmware must be the build's, byte for byte.
    #[arg(long, value_name = "PATH")]
    pub bsp: Option<PathBuf>,
    /// With `jetson:` targets: NVIDIA's board configuration (`<NAME>.conf` in the BSP)
    /// instead of the board's developer kit, for a custom carrier.
    #[arg(long, value_name = "NAME")]
    pub board_config: Option<String>,
    /// With several Jetsons in recovery mode: the modules' board id for NVIDIA's offline
    /// mode (BOARDID; the values are in the BSP's tools/kernel_flash/README_initrd_flash.txt).
    #[arg(long, env = "BOARDID", value_name = "ID")]
    pub board_id: Option<String>,
    /// With several Jetsons in recovery mode: the modules' FAB (NVIDIA's offline mode).
    #[arg(long, env = "FAB")]
    pub fab: Option<String>,
    /// With several Jetsons in recovery mode: the modules' BOARDSKU (NVIDIA's offline mode).
    #[arg(long, env = "BOARDSKU", value_name = "SKU")]
    pub board_sku: Option<String>,
    /// With several Jetsons in recovery mode: the modules' BOARDREV (NVIDIA's offline mode).
    #[arg(long, env = "BOARDREV", value_name = "REV")]
    pub board_rev: Option<String>,
    /// With `jetson:` targets: seconds a booted flashing initrd may take to expose its eMMC.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub initrd_timeout: u64,
    /// With `jetson:` targets: folder for the logs of NVIDIA's tools, one per module
    /// [default: flash-logs/<unix time> in the current folder].
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Testing only: the sysfs root to find Jetsons in (a fixture tree) [default: /sys].
    #[arg(long, hide = true, value_name = "DIR")]
    pub sysfs: Option<PathBuf>,
    /// Testing only: where exposed disks' device nodes are (a fixture tree, whose regular
    /// files stand in for disks) [default: /dev].
    #[arg(long, hide = true, value_name = "DIR")]
    pub dev_dir: Option<PathBuf>,
    /// Testing only: the sshpass to reach flashing initrds with (the synthetic BSP's fake)
    /// [default: sshpass on PATH].
    #[arg(long, hide = true, value_name = "PATH")]
    pub sshpass: Option<PathBuf>,
}

/// `cargo xtask audit`.
#[derive(Debug, Args, Clone)]
pub struct AuditArgs {
    /// Build output folder.
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cargo xtask cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// What the cache holds: the build store's refs and each folder's size.
    Show(CacheShowArgs),
    /// Free what no build needs again (scratch files, old slot images, superseded Debian
    /// base trees, unreachable store objects); `--all` empties it.
    Prune(CachePruneArgs),
}

/// `cache show`.
#[derive(Debug, Args, Clone)]
pub struct CacheShowArgs {
    /// The cache [default: $APERTURE_CACHE, else ~/.cache/aperture].
    #[arg(long, env = "APERTURE_CACHE")]
    pub cache: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cache prune`.
#[derive(Debug, Args, Clone)]
pub struct CachePruneArgs {
    /// The cache [default: $APERTURE_CACHE, else ~/.cache/aperture].
    #[arg(long, env = "APERTURE_CACHE")]
    pub cache: Option<PathBuf>,
    /// Keep cached slot images used in the last DAYS days.
    #[arg(long, default_value_t = 14)]
    pub days: u64,
    /// Remove everything: the next build starts cold.
    #[arg(long)]
    pub all: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn model_bundle_takes_its_folder_keys_version_and_out() {
        let cli = Cli::try_parse_from([
            "aperture",
            "model",
            "bundle",
            "--model",
            "m",
            "--keys",
            "k",
            "--version",
            "1.2.3",
            "--out",
            "b.tar",
            "--release",
        ])
        .unwrap();
        match cli.command {
            Command::Model(ModelCommand::Bundle(a)) => {
                assert_eq!(a.version.to_string(), "1.2.3");
                assert!(a.release);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from([
            "aperture",
            "model",
            "bundle",
            "--model",
            "m",
            "--keys",
            "k",
            "--version",
            "one",
            "--out",
            "b.tar",
        ])
        .is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flash_takes_jetson_targets_and_their_options() {
        let cli = Cli::parse_from([
            "cargo xtask",
            "flash",
            "--image",
            "out/x",
            "--to",
            "jetson:usb:1-2",
            "--to",
            "jetson:usb:1-4",
            "--bsp",
            "/bsp",
            "--board-id",
            "3701",
            "--initrd-timeout",
            "60",
        ]);
        let Command::Flash(f) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(f.to, ["jetson:usb:1-2", "jetson:usb:1-4"]);
        assert_eq!(f.jetson.bsp, Some(PathBuf::from("/bsp")));
        assert_eq!(f.jetson.board_id.as_deref(), Some("3701"));
        assert_eq!(f.jetson.initrd_timeout, 60);
        assert!(Cli::try_parse_from(["cargo xtask", "flash", "--to", "jetson:all"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "flash", "--list"]).is_ok());
        // The disk's copy to write from: auto by default, raw or zst when asked.
        assert_eq!(f.input, FlashInput::Auto);
        let input = |v: &str| {
            let cli = Cli::try_parse_from([
                "cargo xtask",
                "flash",
                "--image",
                "o",
                "--to",
                "/dev/sdx",
                "--input",
                v,
            ])?;
            let Command::Flash(f) = cli.command else {
                panic!("not flash");
            };
            Ok::<_, clap::Error>(f.input)
        };
        assert_eq!(input("raw").unwrap(), FlashInput::Raw);
        assert_eq!(input("zst").unwrap(), FlashInput::Zst);
        assert!(input("bz2").is_err());
    }

    #[test]
    fn repo_rotate_root_takes_roles_and_keys_and_sync_takes_s3() {
        let cli = Cli::parse_from(["cargo xtask", "repo", "rotate-root", "--repo", "r"]);
        let Command::Repo(RepoCommand::RotateRoot(r)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(r.rotate, [Role::Root]);
        assert!(r.keys.is_empty() && !r.release);
        let cli = Cli::parse_from([
            "cargo xtask",
            "repo",
            "rotate-root",
            "--repo",
            "r",
            "--rotate",
            "root,timestamp",
            "--key",
            "root=/media/root-2.pk8",
            "--release",
        ]);
        let Command::Repo(RepoCommand::RotateRoot(r)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(r.rotate, [Role::Root, Role::Timestamp]);
        assert_eq!(r.keys, [(Role::Root, PathBuf::from("/media/root-2.pk8"))]);
        for bad in [
            vec![
                "cargo xtask",
                "repo",
                "rotate-root",
                "--repo",
                "r",
                "--rotate",
                "mirrors",
            ],
            vec![
                "cargo xtask",
                "repo",
                "rotate-root",
                "--repo",
                "r",
                "--key",
                "root",
            ],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let cli = Cli::parse_from([
            "cargo xtask",
            "repo",
            "sync",
            "--repo",
            "r",
            "--to",
            "s3://fleet/prod",
            "--endpoint",
            "http://127.0.0.1:9000",
        ]);
        let Command::Repo(RepoCommand::Sync(s)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(s.to, "s3://fleet/prod");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn build_defaults_to_the_qemu_recipe() {
        let cli = Cli::parse_from(["cargo xtask", "build"]);
        match cli.command {
            Command::Build(b) => assert_eq!(b.recipe, PathBuf::from(DEFAULT_RECIPE)),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn vm_run_twin_takes_a_folder_or_a_recipe_and_no_snapshot() {
        let cli = Cli::parse_from(["cargo xtask", "vm", "run", "--twin"]);
        match cli.command {
            Command::Vm(VmCommand::Run(r)) => {
                assert!(r.twin && r.dir.is_none() && r.twin_recipe.is_none());
                assert_eq!(r.memory, None);
            }
            other => panic!("parsed {other:?}"),
        }
        let cli = Cli::parse_from([
            "cargo xtask",
            "vm",
            "run",
            "--twin",
            "--twin-recipe",
            "recipes/jetson-orin-agx.toml",
        ]);
        assert!(matches!(
            cli.command,
            Command::Vm(VmCommand::Run(VmRunArgs {
                twin_recipe: Some(_),
                ..
            }))
        ));
        for bad in [
            vec!["cargo xtask", "vm", "run", "--twin", "--snapshot"],
            vec!["cargo xtask", "vm", "run", "--twin-recipe", "x.toml"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
