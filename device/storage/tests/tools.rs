//! The real implementations against the real tools, where they work without root and without
//! device-mapper: cryptsetup on a plain file (format, label, erase; `open` needs dm and is left
//! to the VM tier) and tpm2-tools against swtpm over a socket.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aperture_storage::{luks, Access, Crypt, CryptSetup, FilePartition, Key, KeySource, Tpm2};

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("SKIPPED: `{tool}` is not installed");
    }
    found
}

#[test]
fn cryptsetup_formats_labels_and_erases_a_file() {
    if !have("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("volume.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let part = FilePartition::whole(&file, "data", Access::Shared).unwrap();
    let crypt = CryptSetup::new(dir.path().join("mapper"));
    let key = Key::random().unwrap();
    crypt.format(&part, &key, "aperture-formatting").unwrap();
    assert!(luks::is_luks(&part).unwrap());
    assert_eq!(
        crypt.label(&part).unwrap().as_deref(),
        Some("aperture-formatting")
    );
    crypt.set_label(&part, "data").unwrap();
    assert_eq!(crypt.label(&part).unwrap().as_deref(), Some("data"));
    let header = luks::read_header(&part).unwrap().unwrap();
    assert_eq!(header.version, 2);
    assert_eq!(header.hdr_size, 16384);
    assert_eq!(
        header.metadata_end(),
        16 << 20,
        "cryptsetup's default 16 MiB area"
    );
    assert_eq!(header.keyslot_areas.len(), 1);
    assert_eq!(crypt.mapped("aperture-data").unwrap(), None);
    use aperture_storage::Partition;
    let (offset, size) = header.keyslot_areas[0];
    let mut before = vec![0u8; size as usize];
    part.read_exact_at(&mut before, offset).unwrap();
    crypt.erase(&part).unwrap();
    assert!(luks::read_header(&part)
        .unwrap()
        .unwrap()
        .keyslot_areas
        .is_empty());
    // cryptsetup 2.6 overwrites the keyslot area with random bytes: no block of it is left.
    let mut after = vec![0u8; size as usize];
    part.read_exact_at(&mut after, offset).unwrap();
    let kept = before
        .chunks(512)
        .zip(after.chunks(512))
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        kept, 0,
        "sectors of the keyslot area survived cryptsetup erase"
    );
    assert!(
        luks::is_luks(&part).unwrap(),
        "erase keeps the header; reset zeroes it after"
    );
    crypt.erase(&part).unwrap();
}

/// A swtpm on free local ports, killed on drop.
struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        // The swtpm TCTI finds the control channel at port + 1.
        let (port, ctrl) = (0..100)
            .find_map(|_| {
                let a = TcpListener::bind("127.0.0.1:0").ok()?;
                let port = a.local_addr().ok()?.port();
                let _b = TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
                Some((port, port + 1))
            })
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "swtpm did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Swtpm {
            child,
            port,
            _state: state,
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tpm2_seals_unseals_and_forgets_with_swtpm() {
    if !have("swtpm") || !have("tpm2_createprimary") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let source = Tpm2::new(keys_dir.clone(), dir.path().to_path_buf())
        .with_tcti(format!("swtpm:host=127.0.0.1,port={}", tpm.port));
    let key = Key::random().unwrap();
    source.seal("data", &key).unwrap();
    let files = source.files("data");
    assert!(files.iter().all(|f| f.exists()));
    // The blobs do not contain the key.
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == &key.as_bytes()[..16]),
            "{}",
            f.display()
        );
    }
    assert_eq!(source.unseal("data").unwrap().as_bytes(), key.as_bytes());
    assert_eq!(
        source.unseal("data").unwrap().as_bytes(),
        key.as_bytes(),
        "twice"
    );
    source.forget("data").unwrap();
    assert!(files.iter().all(|f| !f.exists()));
    assert!(source.unseal("data").is_err());
    assert!(no_scratch_left(dir.path()));
}

fn no_scratch_left(run: &Path) -> bool {
    std::fs::read_dir(run).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("aperture-storage-tpm2")
    })
}
