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
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
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
