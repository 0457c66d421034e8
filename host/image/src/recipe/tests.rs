//! Recipe validation: the shipped recipes load, and every kind of bad recipe gets its own clear
//! error with file, line and hint.

use std::path::{Path, PathBuf};

use super::*;

/// A minimal valid recipe; tests replace one line to break it.
const GOOD: &str = r#"product = "demo"
version = "1.0.0"
security_version = 3
board = "qemu-x86_64"
overlays = ["ov"]

[base]
suite = "bookworm"
mirror = "http://deb.debian.org/debian"
architecture = "amd64"
packages = ["systemd", "linux-image-cloud-amd64"]

[components]
device = ["aperture-agent"]
runtime = ["python3-numpy"]

[services]
enable = ["a.service"]
required = ["a.service"]

[[network.outbound]]
name = "fleet"
proto = "tcp"
port = 443
to = ["10.0.0.0/8", "fleet.example.com"]

[[network.outbound]]
name = "dns"
proto = "udp"
port = 53

[partitions]
disk = "3GiB"
esp = "256MiB"
rootfs = "1GiB"
config = "64MiB"
data = "512MiB"

[keys]
dir = "keys"
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ov/etc")).unwrap();
        std::fs::write(dir.path().join("ov/etc/x"), "x").unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Fixture { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn load(&self, name: &str) -> Result<Recipe, RecipeError> {
        Recipe::load(&self.path(name))
    }
}

/// Load GOOD with `from` replaced by `to` and return the error.
fn broken(from: &str, to: &str) -> RecipeError {
    assert!(GOOD.contains(from), "fixture does not contain {from:?}");
    let f = Fixture::new(&[("r.toml", &GOOD.replacen(from, to, 1))]);
    match f.load("r.toml") {
        Ok(_) => panic!("recipe with {to:?} was accepted"),
        Err(e) => e,
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn assert_mentions(e: &RecipeError, words: &[&str]) {
    let s = e.to_string();
    for w in words {
        assert!(s.contains(w), "error {s:?} does not mention {w:?}");
    }
}

#[test]
fn the_good_fixture_loads() {
    let f = Fixture::new(&[("r.toml", GOOD)]);
    let r = f.load("r.toml").unwrap();
    assert_eq!(r.product, "demo");
    assert_eq!(r.version.to_string(), "1.0.0");
    assert_eq!(r.partitions.rootfs.bytes(), 1 << 30);
    assert_eq!(r.network.outbound[0].port, 443);
    assert_eq!(r.components.device, vec![DeviceProgram::Agent]);
    assert_eq!(r.overlays, vec![f.path("ov")]);
}

#[test]
fn shipped_recipes_validate() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    for (name, board, arch) in [
        ("qemu-x86_64.toml", Board::QemuX86_64, Arch::Amd64),
        ("jetson-orin-agx.toml", Board::JetsonOrinAgx, Arch::Arm64),
        (
            "jetson-xavier-agx.toml",
            Board::JetsonXavierAgx,
            Arch::Arm64,
        ),
    ] {
        let r = Recipe::load(&recipes.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.board, board);
        assert_eq!(r.base.architecture, arch);
        // The include's packages come first, then the board's.
        assert_eq!(r.base.packages[0], "systemd");
    }
}

#[test]
fn shipped_images_are_uncompressed_and_the_vm_tiers_test_images_keep_lz4() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for name in [
        "qemu-x86_64.toml",
        "qemu-arm64.toml",
        "jetson-orin-agx.toml",
    ] {
        let r = Recipe::load(&root.join("recipes").join(name)).unwrap();
        assert_eq!(
            r.outputs.rootfs_compression,
            RootfsCompression::None,
            "{name}"
        );
    }
    // Under TCG an uncompressed slot makes the guest's dm-verity hash about 1.7 times the
    // blocks in emulated code: the hook images trade it for CI time (see vm-hooks.toml).
    for name in ["vm-hooks.toml", "vm-hooks-arm64.toml", "twin-orin.toml"] {
        let r = Recipe::load(&root.join("tests/recipes").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            r.outputs.rootfs_compression,
            RootfsCompression::Lz4,
            "{name}"
        );
    }
}

#[test]
fn unknown_top_level_key_suggests_the_right_one() {
    let e = broken("product = ", "prodcut = ");
    assert_mentions(&e, &["unknown field `prodcut`", "did you mean `product`"]);
    assert_eq!(e.line, 1);
}

#[test]
fn unknown_key_in_a_table() {
    let e = broken("packages = [", "pakages = [");
    assert_mentions(&e, &["unknown field `pakages`", "did you mean `packages`"]);
    assert_eq!(e.line, line_of(GOOD, "packages = ["));
}

#[test]
fn wrong_type() {
    let e = broken("security_version = 3", "security_version = \"three\"");
    assert_mentions(&e, &["invalid type", "hint"]);
    assert_eq!(e.line, 3);
}

#[test]
fn missing_required_key() {
    let e = broken("version = \"1.0.0\"\n", "");
    assert_mentions(
        &e,
        &["missing required key `version`", "version = \"1.0.0\""],
    );
}

#[test]
fn version_is_not_semver() {
    let e = broken("version = \"1.0.0\"", "version = \"1.0\"");
    assert_mentions(&e, &["not a semantic version", "MAJOR.MINOR.PATCH"]);
    assert_eq!(e.line, 2);
}

#[test]
fn unknown_board() {
    let e = broken("board = \"qemu-x86_64\"", "board = \"raspberry-pi\"");
    assert_mentions(&e, &["unknown variant `raspberry-pi`", "qemu-x86_64"]);
    assert_eq!(e.line, 4);
}

#[test]
fn architecture_must_match_board() {
    let e = broken("architecture = \"amd64\"", "architecture = \"arm64\"");
    assert_mentions(
        &e,
        &[
            "does not match board `qemu-x86_64`",
            "architecture = \"amd64\"",
        ],
    );
}

#[test]
fn missing_overlay_folder() {
    let e = broken("overlays = [\"ov\"]", "overlays = [\"ov\", \"nope\"]");
    assert_mentions(
        &e,
        &[
            "overlay folder `nope` does not exist",
            "relative to the recipe",
        ],
    );
    assert_eq!(e.line, 5);
}

#[test]
fn package_listed_twice_in_one_file() {
    let e = broken("\"systemd\", ", "\"systemd\", \"systemd\", ");
    assert_mentions(
        &e,
        &["package `systemd` is listed twice", "first listed at"],
    );
}

#[test]
fn package_listed_twice_across_include() {
    let base = GOOD.replace("version = \"1.0.0\"\n", "");
    let top = "include = \"base.toml\"\nversion = \"2.0.0\"\n[base]\npackages = [\"curl\", \"systemd\"]\n";
    let f = Fixture::new(&[("base.toml", &base), ("top.toml", top)]);
    let e = f.load("top.toml").unwrap_err();
    assert_mentions(&e, &["package `systemd` is listed twice", "base.toml"]);
    assert!(e.file.ends_with("top.toml"), "{:?}", e.file);
    assert_eq!(e.line, 4);
}

#[test]
fn include_merges_lists_and_overrides_scalars() {
    let base = GOOD.replace("version = \"1.0.0\"\n", "");
    let top = "include = \"base.toml\"\nversion = \"2.0.0\"\n[base]\npackages = [\"curl\"]\n";
    let f = Fixture::new(&[("base.toml", &base), ("top.toml", top)]);
    let r = f.load("top.toml").unwrap();
    assert_eq!(r.version.to_string(), "2.0.0");
    assert_eq!(
        r.base.packages,
        vec!["systemd", "linux-image-cloud-amd64", "curl"]
    );
}

#[test]
fn the_compressed_disk_is_made_unless_an_included_recipe_turns_it_off() {
    let f = Fixture::new(&[("r.toml", GOOD)]);
    assert!(f.load("r.toml").unwrap().outputs.compressed_disk);
    let top = "include = \"r.toml\"\n[outputs]\ncompressed_disk = false\n";
    let f = Fixture::new(&[("r.toml", GOOD), ("top.toml", top)]);
    assert!(!f.load("top.toml").unwrap().outputs.compressed_disk);
    let e = broken("[keys]", "[outputs]\ncompressed = false\n[keys]");
    assert_mentions(&e, &["compressed"]);
}

#[test]
fn the_slot_and_bundle_compression_come_from_the_recipe_within_their_bounds() {
    use crate::recipe::{RootfsCompression, DEFAULT_BUNDLE_LEVEL, DEFAULT_ROOTFS_COMPRESSION};
    let f = Fixture::new(&[("r.toml", GOOD)]);
    let o = f.load("r.toml").unwrap().outputs;
    assert_eq!(
        (o.rootfs_compression, o.bundle_level),
        (DEFAULT_ROOTFS_COMPRESSION, DEFAULT_BUNDLE_LEVEL)
    );
    let top =
        "include = \"r.toml\"\n[outputs]\nrootfs_compression = \"lz4hc\"\nbundle_level = 12\n";
    let f = Fixture::new(&[("r.toml", GOOD), ("top.toml", top)]);
    let o = f.load("top.toml").unwrap().outputs;
    assert_eq!(
        (o.rootfs_compression, o.bundle_level),
        (RootfsCompression::Lz4hc, 12)
    );
    assert_eq!(RootfsCompression::None.mkfs_arg(), None);

    let e = broken("[keys]", "[outputs]\nbundle_level = 22\n[keys]");
    assert_mentions(&e, &["bundle_level 22", "1 to 19"]);
    assert!(e.line > 0, "the error names the line: {e}");
    let e = broken("[keys]", "[outputs]\nrootfs_compression = \"xz\"\n[keys]");
    assert_mentions(&e, &["xz", "lz4hc"]);
}

#[test]
fn invalid_package_name() {
    let e = broken("\"systemd\", ", "\"--force-yes\", ");
    assert_mentions(&e, &["not a valid Debian package name", "policy"]);
}

#[test]
fn partitions_larger_than_the_disk() {
    let e = broken("disk = \"3GiB\"", "disk = \"2GiB\"");
    assert_mentions(
        &e,
        &[
            "the partitions need",
            "but the disk is 2GiB",
            "rootfs counts twice",
        ],
    );
    assert_eq!(e.line, line_of(GOOD, "disk = "));
}

#[test]
fn partition_too_small() {
    let e = broken("esp = \"256MiB\"", "esp = \"8MiB\"");
    assert_mentions(
        &e,
        &["partitions.esp = 8MiB is too small", "at least 64MiB"],
    );
}

#[test]
fn size_with_unknown_unit() {
    let e = broken("data = \"512MiB\"", "data = \"512 parsecs\"");
    assert_mentions(&e, &["unknown unit", "256MiB"]);
}

#[test]
fn size_not_whole_mib() {
    let e = broken("config = \"64MiB\"", "config = 67108865");
    assert_mentions(&e, &["not a whole number of MiB"]);
}

#[test]
fn include_cycle() {
    let f = Fixture::new(&[
        ("a.toml", "include = \"b.toml\"\n"),
        ("b.toml", "include = \"a.toml\"\n"),
    ]);
    let e = f.load("a.toml").unwrap_err();
    assert_mentions(&e, &["include cycle"]);
}

#[test]
fn include_missing_file() {
    let f = Fixture::new(&[("a.toml", "include = \"gone.toml\"\n")]);
    let e = f.load("a.toml").unwrap_err();
    assert_mentions(&e, &["cannot read included recipe", "gone.toml"]);
    assert_eq!(e.line, 1);
}

#[test]
fn toml_syntax_error() {
    let e = broken("port = 443", "port = = 443");
    assert_eq!(e.line, line_of(GOOD, "port = 443"));
}

#[test]
fn port_out_of_range() {
    let e = broken("port = 443", "port = 70000");
    assert_mentions(&e, &["port 70000 is out of range", "1..=65535"]);
}

#[test]
fn bad_destination() {
    let e = broken("\"10.0.0.0/8\"", "\"10.0.0.0/40\"");
    assert_mentions(&e, &["invalid prefix length"]);
}

#[test]
fn unknown_device_program() {
    let e = broken(
        "device = [\"aperture-agent\"]",
        "device = [\"aperture-agent\", \"aperture-cam\"]",
    );
    assert_mentions(
        &e,
        &["unknown device program `aperture-cam`", "aperture-update"],
    );
}

#[test]
fn required_unit_must_be_enabled() {
    let e = broken("required = [\"a.service\"]", "required = [\"b.service\"]");
    assert_mentions(
        &e,
        &[
            "required unit `b.service` is not enabled",
            "services.enable",
        ],
    );
}

#[test]
fn unit_names_are_checked() {
    let e = broken(
        "enable = [\"a.service\"]",
        "enable = [\"a.service\", \"../../etc/passwd\"]",
    );
    assert_mentions(&e, &["is not a systemd unit name"]);
}

#[test]
fn mirror_must_be_a_url() {
    let e = broken(
        "mirror = \"http://deb.debian.org/debian\"",
        "mirror = \"deb.debian.org\"",
    );
    assert_mentions(&e, &["is not an http(s) URL"]);
}

#[test]
fn product_names_become_paths_so_are_checked() {
    let e = broken("product = \"demo\"", "product = \"../demo\"");
    assert_mentions(&e, &["product name `../demo` is not allowed"]);
}

#[test]
fn the_recipe_hash_is_stable_and_sensitive() {
    let f = Fixture::new(&[
        ("r.toml", GOOD),
        (
            "s.toml",
            &GOOD.replace("security_version = 3", "security_version = 4"),
        ),
    ]);
    let a = f.load("r.toml").unwrap().hash();
    assert_eq!(a, f.load("r.toml").unwrap().hash());
    assert_ne!(a, f.load("s.toml").unwrap().hash());
}

// The security keys: `ssh`, `setuid_allowlist`, interfaces, addresses and flows.

const SNAKEOIL_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f snakeoil@aperture";

/// GOOD as a debug recipe with the SSH server installed and `ssh` set to `keys`.
fn with_ssh(debug: bool, package: bool, keys: &str) -> Result<Recipe, RecipeError> {
    let mut text = GOOD.replacen(
        "overlays = [\"ov\"]\n",
        &format!("overlays = [\"ov\"]\ndebug = {debug}\nssh = {{ authorized_keys = [{keys}] }}\n"),
        1,
    );
    if package {
        text = text.replacen("\"systemd\", ", "\"systemd\", \"openssh-server\", ", 1);
    }
    Fixture::new(&[("r.toml", &text)]).load("r.toml")
}

#[test]
fn ssh_in_a_debug_recipe_loads() {
    let r = with_ssh(true, true, &format!("\"{SNAKEOIL_KEY}\"")).unwrap();
    assert!(r.debug);
    assert_eq!(
        r.ssh.unwrap().authorized_keys,
        vec![SNAKEOIL_KEY.to_string()]
    );
}

#[test]
fn ssh_needs_a_debug_recipe() {
    let e = with_ssh(false, true, &format!("\"{SNAKEOIL_KEY}\"")).unwrap_err();
    assert_mentions(
        &e,
        &[
            "`ssh` is set but the recipe is not a debug recipe",
            "debug = true",
        ],
    );
    assert_eq!(e.line, 7);
}

#[test]
fn ssh_needs_the_server_package() {
    let e = with_ssh(true, false, &format!("\"{SNAKEOIL_KEY}\"")).unwrap_err();
    assert_mentions(
        &e,
        &["needs the `openssh-server` package", "[base] packages"],
    );
    assert_eq!(e.line, 7);
}

#[test]
fn ssh_keys_are_checked() {
    let e = with_ssh(true, true, "").unwrap_err();
    assert_mentions(&e, &["`ssh` has no authorized_keys"]);
    let e = with_ssh(true, true, "\"ssh-dss AAAAB3NzaC1kc3MAAACBAP snakeoil\"").unwrap_err();
    assert_mentions(&e, &["key type `ssh-dss` is not accepted"]);
    assert_eq!(e.line, 7);
    let e = with_ssh(
        true,
        true,
        "\"ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAACQAAAAAAAAAAAA== wrongtype\"",
    )
    .unwrap_err();
    assert_mentions(&e, &["is not a `ssh-ed25519` key"]);
    let e = with_ssh(
        true,
        true,
        &format!("\"command=\\\"/bin/sh\\\" {SNAKEOIL_KEY}\""),
    )
    .unwrap_err();
    assert_mentions(&e, &["options such as command= are not accepted"]);
    let e = with_ssh(
        true,
        true,
        &format!("\"{SNAKEOIL_KEY}\", \"{SNAKEOIL_KEY}\""),
    )
    .unwrap_err();
    assert_mentions(&e, &["this key is listed twice", "first listed at"]);
}

#[test]
fn unknown_ssh_key_is_an_error() {
    let e = with_ssh(
        true,
        true,
        &format!("\"{SNAKEOIL_KEY}\"], passwords = [\"x\""),
    )
    .unwrap_err();
    assert_mentions(&e, &["unknown field `passwords`", "authorized_keys"]);
}

#[test]
fn setuid_allowlist_paths_are_checked() {
    let ok = Fixture::new(&[(
        "r.toml",
        &GOOD.replacen(
            "overlays = [\"ov\"]\n",
            "overlays = [\"ov\"]\nsetuid_allowlist = [\"/usr/bin/ping\"]\n",
            1,
        ),
    )]);
    assert_eq!(
        ok.load("r.toml").unwrap().setuid_allowlist,
        vec!["/usr/bin/ping"]
    );
    let e = broken(
        "overlays = [\"ov\"]\n",
        "overlays = [\"ov\"]\nsetuid_allowlist = [\"usr/bin/su\"]\n",
    );
    assert_mentions(
        &e,
        &[
            "`usr/bin/su` is not an absolute, normalised path",
            "/usr/bin/ping",
        ],
    );
    assert_eq!(e.line, 6);
    let e = broken(
        "overlays = [\"ov\"]\n",
        "overlays = [\"ov\"]\nsetuid_allowlist = [\"/usr/bin/../bin/su\"]\n",
    );
    assert_mentions(&e, &["not an absolute, normalised path"]);
    let e = broken(
        "overlays = [\"ov\"]\n",
        "overlays = [\"ov\"]\nsetuid_allowlist = [\"/usr/bin/su\", \"/usr/bin/su\"]\n",
    );
    assert_mentions(&e, &["lists `/usr/bin/su` twice", "first listed at"]);
}

#[test]
fn interfaces_are_checked() {
    let ok = Fixture::new(&[(
        "r.toml",
        &GOOD.replacen(
            "[[network.outbound]]",
            "[network]\ninterfaces = [\"eth0\", \"enp1s0\"]\n\n[[network.outbound]]",
            1,
        ),
    )]);
    assert_eq!(
        ok.load("r.toml").unwrap().network.interfaces,
        vec!["eth0", "enp1s0"]
    );
    let e = broken(
        "[[network.outbound]]",
        "[network]\ninterfaces = [\"eth0\", \"eth0\"]\n\n[[network.outbound]]",
    );
    assert_mentions(&e, &["interface `eth0` is listed twice"]);
    assert_eq!(e.line, line_of(GOOD, "[[network.outbound]]") + 1);
    let e = broken(
        "[[network.outbound]]",
        "[network]\ninterfaces = [\"eth0/../x\"]\n\n[[network.outbound]]",
    );
    assert_mentions(&e, &["is not a network interface name"]);
    let e = broken(
        "[[network.outbound]]",
        "[network]\ninterfaces = [\"bond0\"]\n\n[[network.outbound]]",
    );
    assert_mentions(&e, &["`bond0` is the bond the image creates"]);
    let e = broken(
        "[[network.outbound]]",
        "[network]\ninterfaces = [\"a\", \"b\", \"c\"]\n\n[[network.outbound]]",
    );
    assert_mentions(&e, &["more than two interfaces", "active-backup"]);
}

#[test]
fn static_addresses_are_ip_addresses() {
    let net = |body: &str| {
        broken(
            "[[network.outbound]]",
            &format!("[network]\nmode = \"static\"\n{body}\n\n[[network.outbound]]"),
        )
    };
    let e = net("address = \"appliance.example.com\"\ngateway = \"10.0.0.1\"");
    assert_mentions(
        &e,
        &["`appliance.example.com` is not an address with a prefix length"],
    );
    let e = net("address = \"10.0.0.5\"\ngateway = \"10.0.0.1\"");
    assert_mentions(
        &e,
        &[
            "`10.0.0.5` is not an address with a prefix length",
            "10.0.0.5/24",
        ],
    );
    let e = net("address = \"10.0.0.5/24\"\ngateway = \"gw.example.com\"");
    assert_mentions(&e, &["`gw.example.com` is not an IP address"]);
    let e = net("address = \"10.0.0.5/24\"\ngateway = \"10.0.0.1\"\ndns = [\"10.0.0.1\", \"dns.example.com\"]");
    assert_mentions(&e, &["`dns.example.com` is not an IP address"]);
    assert_eq!(e.line, line_of(GOOD, "[[network.outbound]]") + 4);
}

#[test]
fn flow_names_are_checked() {
    let e = broken("name = \"fleet\"", "name = \"Fleet Servers\"");
    assert_mentions(
        &e,
        &["flow name `Fleet Servers` is not allowed", "lowercase"],
    );
    assert_eq!(e.line, line_of(GOOD, "name = \"fleet\""));
    let e = broken("name = \"fleet\"", "name = \"dhcp-client\"");
    assert_mentions(&e, &["flow name `dhcp-client` is reserved"]);
}

#[test]
fn inbound_flows_take_no_destinations() {
    let e = broken("[partitions]", "[[network.inbound]]\nname = \"metrics\"\nproto = \"tcp\"\nport = 9100\nto = [\"10.0.0.0/8\"]\n\n[partitions]");
    assert_mentions(
        &e,
        &["inbound rule `metrics` has `to`", "outbound rules only"],
    );
    assert_eq!(e.line, line_of(GOOD, "[partitions]") + 4);
    let ok = Fixture::new(&[(
        "r.toml",
        &GOOD.replacen(
            "[partitions]",
            "[[network.inbound]]\nname = \"metrics\"\nproto = \"tcp\"\nport = 9100\n\n[partitions]",
            1,
        ),
    )]);
    assert_eq!(ok.load("r.toml").unwrap().network.inbound[0].port, 9100);
}

#[test]
fn host_names_need_a_dns_flow() {
    let e = broken("port = 53", "port = 5353");
    assert_mentions(
        &e,
        &[
            "names the host `fleet.example.com`, but no outbound flow allows DNS",
            "port = 53",
        ],
    );
    assert_eq!(e.line, line_of(GOOD, "fleet.example.com"));
}

#[test]
fn the_default_recipe_is_production() {
    let r =
        Recipe::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/qemu-x86_64.toml"))
            .unwrap();
    assert!(!r.debug);
    assert!(r.ssh.is_none());
    assert!(r.setuid_allowlist.is_empty());
    assert!(r.network.inbound.is_empty());
    assert!(r.overlays.iter().any(|o| o.ends_with("overlays/hardening")));
}

#[test]
fn initramfs_modules_are_kernel_module_names_listed_once() {
    let good = GOOD.replacen(
        "packages = [\"systemd\", \"linux-image-cloud-amd64\"]",
        "packages = [\"systemd\", \"linux-image-cloud-amd64\"]\ninitramfs_modules = [\"virtio_blk\", \"dm-verity\"]",
        1,
    );
    let f = Fixture::new(&[("r.toml", &good)]);
    assert_eq!(
        f.load("r.toml").unwrap().base.initramfs_modules,
        vec!["virtio_blk", "dm-verity"]
    );
    // Absent: initramfs-tools' default (MODULES=most).
    let f = Fixture::new(&[("r.toml", GOOD)]);
    assert!(f.load("r.toml").unwrap().base.initramfs_modules.is_empty());

    for (bad, words) in [
        (
            "[\"virtio_blk; rm -rf /\"]",
            &[
                "`virtio_blk; rm -rf /` is not a kernel module name",
                "modprobe",
            ][..],
        ),
        ("[\"\"]", &["is not a kernel module name"][..]),
        (
            "[\"virtio_blk\", \"virtio_blk\"]",
            &[
                "`virtio_blk` is listed twice in initramfs_modules",
                "remove one",
            ][..],
        ),
    ] {
        let text = GOOD.replacen(
            "packages = [\"systemd\", \"linux-image-cloud-amd64\"]",
            &format!(
                "packages = [\"systemd\", \"linux-image-cloud-amd64\"]\ninitramfs_modules = {bad}"
            ),
            1,
        );
        let f = Fixture::new(&[("r.toml", &text)]);
        let e = f.load("r.toml").expect_err(bad);
        assert_mentions(&e, words);
        assert_eq!(e.line, line_of(&text, "initramfs_modules"), "{e}");
    }
}

#[test]
fn kernel_modules_are_folders_or_module_names_listed_once() {
    let with = |list: &str| {
        GOOD.replacen(
            "packages = [\"systemd\", \"linux-image-cloud-amd64\"]",
            &format!(
                "packages = [\"systemd\", \"linux-image-cloud-amd64\"]\nkernel_modules = {list}"
            ),
            1,
        )
    };
    let f = Fixture::new(&[(
        "r.toml",
        &with("[\"drivers/md/\", \"virtio_net\", \"drivers/usb/host/\"]"),
    )]);
    assert_eq!(
        f.load("r.toml").unwrap().base.kernel_modules,
        vec!["drivers/md/", "virtio_net", "drivers/usb/host/"]
    );
    // Absent: every module of the kernel package.
    let f = Fixture::new(&[("r.toml", GOOD)]);
    assert!(f.load("r.toml").unwrap().base.kernel_modules.is_empty());

    for (bad, words) in [
        (
            "[\"../../etc/\"]",
            &[
                "`../../etc/` is neither a kernel module name nor a module folder",
                "trailing `/`",
            ][..],
        ),
        (
            "[\"/\"]",
            &["is neither a kernel module name nor a module folder"][..],
        ),
        ("[\"drivers//md/\"]", &["is neither"][..]),
        (
            "[\"drivers/md\"]",
            &["`drivers/md` is neither", "\"drivers/md/\""][..],
        ),
        ("[\"dm' x\"]", &["is neither"][..]),
        (
            "[\"drivers/md/\", \"drivers/md/\"]",
            &[
                "`drivers/md/` is listed twice in kernel_modules",
                "remove one",
            ][..],
        ),
    ] {
        let text = with(bad);
        let f = Fixture::new(&[("r.toml", &text)]);
        let e = f.load("r.toml").expect_err(bad);
        assert_mentions(&e, words);
        assert_eq!(e.line, line_of(&text, "kernel_modules"), "{e}");
    }
}

#[test]
fn every_board_lists_its_initramfs_modules() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    for name in [
        "qemu-x86_64.toml",
        "qemu-arm64.toml",
        "jetson-orin-agx.toml",
        "jetson-xavier-agx.toml",
    ] {
        let r = Recipe::load(&recipes.join(name)).unwrap();
        assert!(
            r.base.initramfs_modules.contains(&"virtio_blk".to_string()),
            "{name}: the VMs and the twin boot from a virtio disk"
        );
    }
}

#[test]
fn every_board_builds_the_inference_runtime_and_arm64_ones_need_the_cross_sysroot() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    for (name, arch) in [
        ("qemu-x86_64.toml", Arch::Amd64),
        ("qemu-arm64.toml", Arch::Arm64),
        ("jetson-orin-agx.toml", Arch::Arm64),
        ("jetson-xavier-agx.toml", Arch::Arm64),
    ] {
        let r = Recipe::load(&recipes.join(name)).unwrap();
        assert_eq!(r.base.architecture, arch, "{name}");
        assert!(
            r.components.device.contains(&DeviceProgram::Runtime),
            "{name}: no aperture-runtime"
        );
        let rt = r.runtime.as_ref().expect("a [runtime] model");
        assert!(rt.model.ends_with("models/nanodet-m"), "{name}");
        // Camera streams are decoded inside the program: no GStreamer (nor libav) in the image.
        assert!(
            !r.all_packages()
                .iter()
                .any(|q| q.starts_with("gstreamer") || q.starts_with("libav")),
            "{name}: {:?}",
            r.all_packages()
        );
        assert!(
            r.overlays.iter().any(|o| o.ends_with("overlays/runtime")),
            "{name}: no overlays/runtime"
        );
    }
}

#[test]
fn an_update_section_ships_its_settings_root_and_ca_and_each_mistake_is_named() {
    let root = r#"{"signed":{"_type":"root","version":1},"signatures":[]}"#;
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let section = "\n[update]\nrepository = \"https://updates.example.com/fleet/\"\n\
                   channel = \"stable\"\nroot = \"root.json\"\nca = \"ca.pem\"\n\
                   poll_interval = \"5m\"\nmaintenance_window = \"02:00-04:00\"\n";
    let load = |text: &str| {
        let f = Fixture::new(&[
            ("r.toml", &format!("{GOOD}{text}")),
            ("root.json", root),
            ("ca.pem", ca),
            ("not-root.json", "{\"signed\":{\"_type\":\"targets\"}}"),
        ]);
        f.load("r.toml")
    };
    let r = load(section).unwrap();
    let u = r.update.as_ref().unwrap();
    assert_eq!(u.settings.poll_interval_secs, 300);
    assert_eq!(u.settings.channel, "stable");
    assert_eq!(
        u.settings.maintenance_window.unwrap().to_string(),
        "02:00-04:00"
    );
    assert_eq!(u.root_json, root);
    assert_eq!(u.ca_pem.as_deref(), Some(ca));
    assert!(load("").unwrap().update.is_none());

    for (from, to, words) in [
        (
            "root = \"root.json\"\n",
            "",
            &["update.root", "1.root.json"][..],
        ),
        (
            "root.json\"",
            "missing.json\"",
            &["cannot read the trusted root"][..],
        ),
        (
            "root.json\"",
            "not-root.json\"",
            &["is not TUF root metadata"][..],
        ),
        ("\"5m\"", "\"5 minutes\"", &["not a duration"][..]),
        ("\"02:00-04:00\"", "\"2-4\"", &["HH:MM-HH:MM"][..]),
        (
            "https://updates.example.com/fleet/",
            "http://updates.example.com/fleet/",
            &["insecure_http"][..],
        ),
        (
            "https://updates.example.com/fleet/",
            "https://updates.example.com:8443/fleet/",
            &["no TCP connection out to port 8443", "[[network.outbound]]"][..],
        ),
        (
            "channel = \"stable\"",
            "channel = \"Stable\"",
            &["channel `Stable`"][..],
        ),
    ] {
        assert!(section.contains(from), "{from}");
        let e = load(&section.replacen(from, to, 1)).unwrap_err();
        assert_mentions(&e, words);
    }
}

/// GOOD building the runtime, with a model folder `model/` beside it and `extra` appended.
fn runtime_recipe(extra: &str) -> (Fixture, Result<Recipe, RecipeError>) {
    let text = GOOD.replace(
        "device = [\"aperture-agent\"]",
        "device = [\"aperture-agent\", \"aperture-runtime\"]",
    ) + extra;
    let f = Fixture::new(&[("r.toml", &text)]);
    std::fs::create_dir_all(f.path("model")).unwrap();
    std::fs::write(f.path("model/manifest.toml"), "").unwrap();
    let r = f.load("r.toml");
    (f, r)
}

#[test]
fn the_runtime_needs_its_model_folder_and_takes_cameras() {
    let (f, r) = runtime_recipe(
        "\n[runtime]\nmodel = \"model\"\n\n[[runtime.camera]]\nname = \"door\"\n\
         url = \"rtsp://192.0.2.10:554/s1\"\n",
    );
    let r = r.unwrap();
    assert!(r.components.device.contains(&DeviceProgram::Runtime));
    let rt = r.runtime.unwrap();
    assert_eq!(rt.model, f.path("model"));
    assert_eq!(rt.cameras[0].name, "door");
    assert_eq!(rt.cameras[0].url, "rtsp://192.0.2.10:554/s1");
    assert_eq!(DeviceProgram::Runtime.feature(), "runtime");

    // aperture-runtime without [runtime] model.
    let (_, r) = runtime_recipe("");
    assert_mentions(&r.unwrap_err(), &["[runtime] model", "../models/nanodet-m"]);
    // A folder with no manifest.
    let (_, r) = runtime_recipe("\n[runtime]\nmodel = \"ov\"\n");
    assert_mentions(&r.unwrap_err(), &["model folder `ov` has no manifest.toml"]);
    // A camera that is not RTSP, and two cameras of one name.
    let (_, r) = runtime_recipe(
        "\n[runtime]\nmodel = \"model\"\n[[runtime.camera]]\nname = \"a\"\nurl = \"http://x/\"\n",
    );
    assert_mentions(&r.unwrap_err(), &["camera \"a\"", "not an rtsp:// URL"]);
    let cam = "[[runtime.camera]]\nname = \"a\"\nurl = \"rtsp://x/1\"\n";
    let (_, r) = runtime_recipe(&format!("\n[runtime]\nmodel = \"model\"\n{cam}{cam}"));
    assert_mentions(&r.unwrap_err(), &["two cameras are named \"a\""]);
}

#[test]
fn a_runtime_section_without_the_runtime_program_is_refused() {
    let e = broken("[services]", "[runtime]\nmodel = \"ov\"\n\n[services]");
    assert_mentions(
        &e,
        &["does not build aperture-runtime", "[components] device"],
    );
}
