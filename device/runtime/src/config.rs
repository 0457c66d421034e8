//! The runtime's config file (TOML; unknown keys are errors):
//!
//! ```toml
//! model = "/usr/share/aperture/models/nanodet-m/manifest.toml"
//! onnxruntime = "/usr/lib/aperture/libonnxruntime.so.1.31.1"
//! socket = "/run/aperture-runtime/detections.sock"
//! output_dir = "/var/lib/aperture/detections"
//! metrics = "/run/aperture-runtime/runtime.json"
//! # optional: the group (in /etc/group) whose members may read detections from the socket
//! # (mode 0660); without it only the runtime's own user may (0600)
//! socket_group = "aperture-detections"
//! # optional: each rolling file's size (two files), the stall and connect timeouts
//! rolling_file_mib = 8
//! stall_after_ms = 5000
//! connect_timeout_ms = 10000
//! # optional: a file of [[camera]] entries that replaces the ones below when it exists
//! cameras_file = "/config/runtime/cameras.toml"
//! # optional: accelerators, most wanted first (the CPU is the loud last resort), and where
//! # TensorRT caches the engines it builds on the first start
//! execution_providers = ["tensorrt", "cuda"]
//! engine_cache_dir = "/var/cache/aperture-runtime/tensorrt"
//! # optional: the model store (signed model bundles, `aperture-runtime model install`); when
//! # it has a current model, that one is loaded instead of `model`
//! models_dir = "/var/lib/aperture-runtime/models"
//! # optional: the root key model bundles are verified against (default: the updater's)
//! root_key = "/etc/aperture/root.pub"
//!
//! [[camera]]
//! name = "door"
//! url = "rtsp://192.0.2.10:554/stream1"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::camera::Timing;

/// The config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The model's manifest.
    pub model: PathBuf,
    /// The ONNX Runtime library.
    pub onnxruntime: PathBuf,
    /// The Unix socket detections are served on.
    pub socket: PathBuf,
    /// The group whose members may connect to the socket, by name (`/etc/group`).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// The folder of the rolling detection files.
    pub output_dir: PathBuf,
    /// The metrics file, rewritten every half second.
    pub metrics: PathBuf,
    /// Each rolling file's size limit, in MiB.
    #[serde(default = "default_rolling")]
    pub rolling_file_mib: u64,
    /// A streaming camera with no frame for this long is stalled.
    #[serde(default = "default_stall")]
    pub stall_after_ms: u64,
    /// A connecting camera with no frame for this long is stalled.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// The model store; when it has a current model, that one replaces `model`.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// The root public key model bundles are verified against (default: the device's, as
    /// the updater uses, `/etc/aperture/root.pub`).
    #[serde(default)]
    pub root_key: Option<PathBuf>,
    /// The cameras.
    #[serde(rename = "camera", default)]
    pub cameras: Vec<CameraConfig>,
    /// Accelerators to run the model on, most wanted first (`"tensorrt"`, `"cuda"`); the CPU is
    /// the last resort, taken loudly (metrics: `fallback`) when none of them is available.
    #[serde(default)]
    pub execution_providers: Vec<crate::Provider>,
    /// Where TensorRT keeps the engines it builds on the first start (the unit's persistent
    /// state); none: rebuilt at every start.
    #[serde(default)]
    pub engine_cache_dir: Option<PathBuf>,
    /// A file of `[[camera]]` entries that, when it exists, replaces [`Config::cameras`] (the
    /// image names one on the config partition, so an administrator can change cameras
    /// without an OS update).
    #[serde(default)]
    pub cameras_file: Option<PathBuf>,
}

/// The system's group file, where [`Config::socket_group`] is looked up.
pub const GROUP_FILE: &str = "/etc/group";

impl Config {
    /// The gid of [`Config::socket_group`] in [`GROUP_FILE`], if one is named.
    pub fn socket_gid(&self) -> Result<Option<u32>, String> {
        let Some(name) = &self.socket_group else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(GROUP_FILE)
            .map_err(|e| format!("reading {GROUP_FILE} for socket_group {name:?}: {e}"))?;
        group_id(name, &text, Path::new(GROUP_FILE)).map(Some)
    }
}

/// The gid of group `name` in `text`, a group(5) file read from `file`.
pub fn group_id(name: &str, text: &str, file: &Path) -> Result<u32, String> {
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            continue;
        }
        return fields
            .nth(1)
            .and_then(|gid| gid.parse().ok())
            .ok_or_else(|| format!("{}: the line of group {name:?} has no gid", file.display()));
    }
    Err(format!(
        "socket_group {name:?} is not a group in {}: add it to the image (the build adds \
         aperture-detections for the runtime) or remove socket_group from the config",
        file.display()
    ))
}

/// The systemd credential the unit hands the cameras file over as (`LoadCredential=cameras:...`):
/// camera URLs may hold passwords, so the file on the config partition can be root's alone and
/// still reach the runtime's dynamic user.
pub const CAMERAS_CREDENTIAL: &str = "cameras";

/// What the unit's `SetCredential=cameras:...` puts in the credential when the config partition
/// has no cameras file (systemd then uses it instead of failing the start).
pub const NO_CAMERAS_FILE: &str = "absent";

/// The cameras file's text, or `None` when there is none. Under systemd
/// (`credentials`: `$CREDENTIALS_DIRECTORY`) it comes from the unit's `cameras` credential,
/// which holds [`NO_CAMERAS_FILE`] when `file` did not exist; elsewhere (an administrator's
/// `aperture-runtime model ...`) from `file` itself.
fn cameras_text(file: &Path, credentials: Option<&Path>) -> Result<Option<String>, String> {
    let (read, what) = match credentials {
        Some(dir) if dir.join(CAMERAS_CREDENTIAL).exists() => (
            dir.join(CAMERAS_CREDENTIAL),
            format!(
                "the cameras file {} (credential {CAMERAS_CREDENTIAL})",
                file.display()
            ),
        ),
        _ => (
            file.to_path_buf(),
            format!("the cameras file {}", file.display()),
        ),
    };
    match std::fs::read_to_string(&read) {
        Ok(text) if read != file && text.trim() == NO_CAMERAS_FILE => Ok(None),
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {what}: {e}")),
    }
}

/// The cameras file: `[[camera]]` entries and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CamerasFile {
    #[serde(rename = "camera", default)]
    cameras: Vec<CameraConfig>,
}

fn default_rolling() -> u64 {
    8
}
fn default_stall() -> u64 {
    5000
}
fn default_connect() -> u64 {
    10000
}

/// One camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Its name in detections and metrics.
    pub name: String,
    /// Its stream: `rtsp://...` (RTSP over TCP, H.264).
    pub url: String,
}

impl Config {
    /// Read and check the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the runtime config {}: {e}", path.display()))?;
        let mut c = Config::parse(&text, path)?;
        if let Some(file) = c.cameras_file.clone() {
            let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
            if let Some(text) = cameras_text(&file, credentials.as_deref())? {
                let f: CamerasFile = toml::from_str(&text)
                    .map_err(|e| format!("the cameras file {}: {e}", file.display()))?;
                check_cameras(&f.cameras, &file)?;
                c.cameras = f.cameras;
            }
        }
        Ok(c)
    }

    /// Parse and check a config's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let c: Config = toml::from_str(text)
            .map_err(|e| format!("the runtime config {}: {e}", path.display()))?;
        let bad = |why: String| Err(format!("the runtime config {}: {why}", path.display()));
        check_cameras(&c.cameras, path)?;
        if c.rolling_file_mib == 0 {
            return bad("rolling_file_mib must be at least 1".into());
        }
        if c.stall_after_ms == 0 || c.connect_timeout_ms == 0 {
            return bad("stall_after_ms and connect_timeout_ms must be above 0".into());
        }
        Ok(c)
    }

    /// The root key model bundles are verified against.
    pub fn root_key(&self) -> PathBuf {
        self.root_key
            .clone()
            .unwrap_or_else(|| aperture_appliance::files::Files::default().root_key())
    }

    /// The cameras' timing.
    pub fn timing(&self) -> Timing {
        Timing {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            stall_after: Duration::from_millis(self.stall_after_ms),
            ..Timing::default()
        }
    }
}

/// Camera names are distinct and plain, URLs are `rtsp://`; `path` names the file in errors.
fn check_cameras(cameras: &[CameraConfig], path: &Path) -> Result<(), String> {
    let bad = |why: String| Err(format!("the runtime config {}: {why}", path.display()));
    let mut names = std::collections::BTreeSet::new();
    for cam in cameras {
        let plain = |ch: char| ch.is_ascii_alphanumeric() || "-_.".contains(ch);
        if cam.name.is_empty() || !cam.name.chars().all(plain) {
            return bad(format!(
                "camera name {:?}: use letters, digits, `-`, `_` and `.`",
                cam.name
            ));
        }
        if !names.insert(cam.name.as_str()) {
            return bad(format!("two cameras are named {:?}", cam.name));
        }
        if !cam.url.starts_with("rtsp://") {
            return bad(format!(
                "camera {:?}: its url {:?} is not rtsp://...",
                cam.name, cam.url
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
model = "/m/manifest.toml"
onnxruntime = "/l/libonnxruntime.so.1.31.1"
socket = "/run/aperture-runtime/detections.sock"
output_dir = "/var/lib/aperture/detections"
metrics = "/run/aperture-runtime/runtime.json"
[[camera]]
name = "door"
url = "rtsp://192.0.2.10:554/stream1"
"#;

    #[test]
    fn the_socket_group_is_looked_up_by_name_and_a_missing_one_is_named() {
        let groups = "root:x:0:\nshadow:x:42:\naperture-detections:x:998:app\nodd:x:\n";
        let f = Path::new("/etc/group");
        assert_eq!(group_id("aperture-detections", groups, f), Ok(998));
        assert_eq!(group_id("shadow", groups, f), Ok(42));
        let e = group_id("aperture", groups, f).unwrap_err();
        assert!(
            e.contains("\"aperture\"") && e.contains("/etc/group"),
            "{e}"
        );
        let e = group_id("odd", groups, f).unwrap_err();
        assert!(e.contains("no gid"), "{e}");
        let c = Config::parse(
            &format!("socket_group = \"aperture-detections\"\n{GOOD}"),
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(c.socket_group.as_deref(), Some("aperture-detections"));
        assert_eq!(
            Config::parse(GOOD, Path::new("r.toml"))
                .unwrap()
                .socket_gid(),
            Ok(None)
        );
    }

    #[test]
    fn a_config_reads_with_defaults() {
        let c = Config::parse(GOOD, Path::new("r.toml")).unwrap();
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.rolling_file_mib, 8);
        assert_eq!(c.timing().stall_after, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_bad_urls_and_twin_names_are_refused_by_name() {
        let e = Config::parse(&format!("{GOOD}port = 8080\n"), Path::new("r.toml")).unwrap_err();
        assert!(e.contains("r.toml") && e.contains("port"), "{e}");
        let e =
            Config::parse(&GOOD.replace("rtsp://", "http://"), Path::new("r.toml")).unwrap_err();
        assert!(e.contains("is not rtsp://"), "{e}");
        let twice = format!("{GOOD}[[camera]]\nname = \"door\"\nurl = \"rtsp://h/x\"\n");
        let e = Config::parse(&twice, Path::new("r.toml")).unwrap_err();
        assert!(e.contains("two cameras are named \"door\""), "{e}");
    }

    #[test]
    fn a_cameras_file_replaces_the_configs_cameras_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let cams = dir.path().join("cameras.toml");
        let cfg = dir.path().join("runtime.toml");
        std::fs::write(
            &cfg,
            format!("cameras_file = {:?}\n{GOOD}", cams.display().to_string()),
        )
        .unwrap();
        // No file: the config's own cameras.
        let c = Config::load(&cfg).unwrap();
        assert_eq!(c.cameras[0].name, "door");
        std::fs::write(
            &cams,
            "[[camera]]\nname = \"gate\"\nurl = \"rtsp://10.0.2.2:554/gate\"\n",
        )
        .unwrap();
        let c = Config::load(&cfg).unwrap();
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.cameras[0].url, "rtsp://10.0.2.2:554/gate");
        // A bad file is an error naming it, not a silent fallback.
        std::fs::write(&cams, "[[camera]]\nname = \"gate\"\nurl = \"http://x\"\n").unwrap();
        let e = Config::load(&cfg).unwrap_err();
        assert!(
            e.contains("cameras.toml") && e.contains("not rtsp://"),
            "{e}"
        );
        std::fs::write(&cams, "camera = 3\n").unwrap();
        let e = Config::load(&cfg).unwrap_err();
        assert!(
            e.contains("the cameras file") && e.contains("cameras.toml"),
            "{e}"
        );
    }

    #[test]
    fn under_systemd_the_cameras_file_comes_from_its_credential() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::create_dir(&creds).unwrap();
        let file = dir.path().join("cameras.toml");
        let cam = "[[camera]]\nname = \"gate\"\nurl = \"rtsp://10.0.2.2:554/gate\"\n";
        // The unit's default when the config partition has none: no cameras file.
        std::fs::write(
            creds.join(CAMERAS_CREDENTIAL),
            format!("{NO_CAMERAS_FILE}\n"),
        )
        .unwrap();
        assert_eq!(cameras_text(&file, Some(&creds)).unwrap(), None);
        // The file systemd loaded as root, whatever its mode on the config partition.
        std::fs::write(creds.join(CAMERAS_CREDENTIAL), cam).unwrap();
        assert_eq!(
            cameras_text(&file, Some(&creds)).unwrap().as_deref(),
            Some(cam)
        );
        // No credential (not started by the unit): the file itself, or none.
        assert_eq!(cameras_text(&file, None).unwrap(), None);
        std::fs::write(&file, cam).unwrap();
        assert_eq!(cameras_text(&file, None).unwrap().as_deref(), Some(cam));
        // A file that holds the marker word is not mistaken for none outside systemd.
        std::fs::write(&file, NO_CAMERAS_FILE).unwrap();
        assert_eq!(
            cameras_text(&file, None).unwrap().as_deref(),
            Some(NO_CAMERAS_FILE)
        );
        // An unreadable credential names the file and the credential.
        std::fs::remove_file(creds.join(CAMERAS_CREDENTIAL)).unwrap();
        std::fs::create_dir(creds.join(CAMERAS_CREDENTIAL)).unwrap();
        let e = cameras_text(&file, Some(&creds)).unwrap_err();
        assert!(
            e.contains("cameras.toml") && e.contains("credential cameras"),
            "{e}"
        );
    }

    #[test]
    fn execution_providers_are_named_and_checked() {
        let c = Config::parse(
            &format!("execution_providers = [\"tensorrt\", \"cuda\"]\n{GOOD}"),
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(
            c.execution_providers,
            [crate::Provider::Tensorrt, crate::Provider::Cuda]
        );
        assert!(Config::parse(GOOD, Path::new("r.toml"))
            .unwrap()
            .execution_providers
            .is_empty());
        let e = Config::parse(
            &format!("execution_providers = [\"rocm\"]\n{GOOD}"),
            Path::new("r.toml"),
        )
        .unwrap_err();
        assert!(e.contains("rocm") && e.contains("r.toml"), "{e}");
    }
}
