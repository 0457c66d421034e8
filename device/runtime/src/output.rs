//! Where detections go: JSON lines to the clients of a local Unix socket and to a bounded
//! rolling file. Neither may hold up inference: a client that cannot take a whole line at once
//! (slow, or gone) is dropped, and the output thread is fed through a bounded channel whose
//! overflow is counted, not waited for.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The socket's listener and its clients.
#[derive(Debug)]
pub struct SocketOut {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<UnixStream>,
    /// Clients dropped because they were slow or gone.
    pub dropped_clients: u64,
}

impl SocketOut {
    /// Listen at `path`, replacing a stale socket left there (a file of another kind is an
    /// error). Who may connect: the runtime's own user, and with `group` (a gid) that group's
    /// members too (mode 0660); nobody else (connecting needs write permission).
    pub fn bind(path: &Path, group: Option<u32>) -> Result<SocketOut, String> {
        use std::os::unix::fs::FileTypeExt;
        use std::os::unix::fs::PermissionsExt;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| format!("removing the old socket {}: {e}", path.display()))?,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a socket: give another `socket` path in the config",
                    path.display()
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("listening on the Unix socket {}: {e}", path.display()))?;
        // Until these two calls the unit's umask (0027) keeps the socket tighter still.
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                format!(
                    "giving the socket {} to group {gid}: {e} (the runtime's user must be a \
                     member: the unit's SupplementaryGroups=)",
                    path.display()
                )
            })?;
        }
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("setting the mode of the socket {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SocketOut {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
            dropped_clients: 0,
        })
    }

    /// Take the clients waiting to connect.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(stream);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Send one line (with its newline) to every client; a client that cannot take all of it
    /// now is dropped, so no client ever sees half a line.
    pub fn send(&mut self, line: &[u8]) {
        let before = self.clients.len();
        self.clients
            .retain_mut(|c| matches!(c.write(line), Ok(n) if n == line.len()));
        self.dropped_clients += (before - self.clients.len()) as u64;
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

impl Drop for SocketOut {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Two files of at most `limit` bytes each: `detections.jsonl` and, before it,
/// `detections.jsonl.1`. When the first would pass the limit it becomes the second.
#[derive(Debug)]
pub struct RollingFile {
    path: PathBuf,
    old: PathBuf,
    file: File,
    size: u64,
    limit: u64,
}

impl RollingFile {
    /// Open (append to) `dir/detections.jsonl`, creating `dir`.
    pub fn open(dir: &Path, limit: u64) -> Result<RollingFile, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating the output folder {}: {e}", dir.display()))?;
        let path = dir.join("detections.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RollingFile {
            old: dir.join("detections.jsonl.1"),
            path,
            file,
            size,
            limit,
        })
    }

    /// Append a line, rolling over first if it would not fit.
    pub fn write(&mut self, line: &[u8]) -> Result<(), String> {
        if self.size > 0 && self.size + line.len() as u64 > self.limit {
            std::fs::rename(&self.path, &self.old)
                .map_err(|e| format!("rolling {} over: {e}", self.path.display()))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| format!("opening {}: {e}", self.path.display()))?;
            self.size = 0;
        }
        self.file
            .write_all(line)
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn the_rolling_file_keeps_two_files_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RollingFile::open(dir.path(), 100).unwrap();
        let line = [b'x'; 29];
        let mut line = line.to_vec();
        line.push(b'\n');
        for _ in 0..10 {
            f.write(&line).unwrap();
        }
        let now = std::fs::metadata(dir.path().join("detections.jsonl")).unwrap();
        let old = std::fs::metadata(dir.path().join("detections.jsonl.1")).unwrap();
        assert_eq!(
            now.len(),
            30,
            "10 lines of 30 bytes: 3 per file, the 10th alone"
        );
        assert_eq!(old.len(), 90);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_and_the_others_still_get_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let mut out = SocketOut::bind(&path, None).unwrap();
        let reader = UnixStream::connect(&path).unwrap();
        let _stuck = UnixStream::connect(&path).unwrap();
        out.accept();
        assert_eq!(out.clients(), 2);
        let mut lines = BufReader::new(reader);
        let line = vec![b'y'; 1000]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            out.send(&line);
            // The good client reads each line as it comes.
            let mut got = String::new();
            lines.read_line(&mut got).unwrap();
            assert_eq!(got.len(), 1001);
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "never blocked"
        );
        assert_eq!(out.clients(), 1, "the client that never reads is gone");
        assert_eq!(out.dropped_clients, 1);
        drop(out);
        assert!(!path.exists(), "the socket file is removed");
    }

    #[test]
    fn the_socket_is_the_runtimes_alone_or_its_groups_too() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let own_gid = std::fs::metadata(dir.path()).unwrap().gid();
        let path = dir.path().join("d.sock");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let out = SocketOut::bind(&path, None).unwrap();
        assert_eq!(mode(&path), 0o600);
        drop(out);
        let _out = SocketOut::bind(&path, Some(own_gid)).unwrap();
        assert_eq!(mode(&path), 0o660);
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), own_gid);
    }

    #[test]
    fn a_socket_path_that_is_a_plain_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        std::fs::write(&path, "data").unwrap();
        let e = SocketOut::bind(&path, None).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
    }
}
