//! A small HTTP/1.1 file server on 127.0.0.1 for the VM tier: guests fetch update bundles from
//! the host through QEMU's user-mode gateway (10.0.2.2). GET and HEAD, single `Range: bytes=N-`
//! or `N-M` requests (so resumed downloads are exercised), one thread per connection.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The host port the VM tier's test images may reach (their recipe opens it to 10.0.2.2 only).
pub const GUEST_SERVER_PORT: u16 = 18080;

/// A running server; stops when dropped.
pub struct FileServer {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
}

impl FileServer {
    /// Serve the files of `root` (no subfolders, no `..`) on an ephemeral port.
    pub fn start(root: &Path) -> std::io::Result<FileServer> {
        Self::start_on(root, 0)
    }

    /// Serve on [`GUEST_SERVER_PORT`], the one port the VM tier's test images let their
    /// firewall reach on the host (tests/recipes/vm-hooks.toml).
    pub fn start_for_guests(root: &Path) -> std::io::Result<FileServer> {
        Self::start_on(root, GUEST_SERVER_PORT).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "serving on 127.0.0.1:{GUEST_SERVER_PORT}, the port test images may reach: \
                     {e} (is another VM-tier test run going on?)"
                ),
            )
        })
    }

    fn start_on(root: &Path, port: u16) -> std::io::Result<FileServer> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (s, r, root) = (stop.clone(), requests.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let root = root.clone();
                        r.fetch_add(1, Ordering::Relaxed);
                        std::thread::spawn(move || {
                            let _ = serve(conn, &root);
                        });
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        });
        Ok(FileServer {
            port,
            stop,
            requests,
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL a QEMU user-mode guest uses for `name`.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://10.0.2.2:{}/{name}", self.port)
    }

    /// Connections served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    conn.write_all(h.as_bytes())
}

fn serve(mut conn: TcpStream, root: &Path) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
            if let Some(spec) = v.trim().strip_prefix("bytes=") {
                let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
                if let Ok(start) = a.trim().parse() {
                    range = Some((start, b.trim().parse().ok()));
                }
            }
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let name = target.trim_start_matches('/');
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return respond(
            &mut conn,
            "404 Not Found",
            &[("Content-Length".into(), "0".into())],
        );
    }
    let path: PathBuf = root.join(name);
    let Ok(mut file) = std::fs::File::open(&path) else {
        return respond(
            &mut conn,
            "404 Not Found",
            &[("Content-Length".into(), "0".into())],
        );
    };
    let size = file.metadata()?.len();
    let (status, start, end) = match range {
        Some((s, e)) if s < size => (
            "206 Partial Content",
            s,
            e.unwrap_or(size - 1).min(size - 1),
        ),
        Some(_) => {
            return respond(
                &mut conn,
                "416 Range Not Satisfiable",
                &[("Content-Range".into(), format!("bytes */{size}"))],
            );
        }
        None => ("200 OK", 0, size.saturating_sub(1)),
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut headers = vec![
        ("Content-Length".to_string(), len.to_string()),
        ("Accept-Ranges".into(), "bytes".into()),
    ];
    if range.is_some() {
        headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{end}/{size}"),
        ));
    }
    respond(&mut conn, status, &headers)?;
    if method == "HEAD" {
        return Ok(());
    }
    file.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut file.take(len), &mut conn)?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, path: &str, range: Option<&str>) -> (String, Vec<u8>) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let extra = range
            .map(|r| format!("Range: bytes={r}\r\n"))
            .unwrap_or_default();
        write!(c, "GET /{path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&all[..split]).into_owned(),
            all[split + 4..].to_vec(),
        )
    }

    #[test]
    fn serves_whole_files_ranges_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b"), b"0123456789").unwrap();
        let s = FileServer::start(d.path()).unwrap();
        let (h, body) = get(s.port(), "b", None);
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(body, b"0123456789");
        let (h, body) = get(s.port(), "b", Some("4-"));
        assert!(
            h.starts_with("HTTP/1.1 206") && h.contains("bytes 4-9/10"),
            "{h}"
        );
        assert_eq!(body, b"456789");
        let (h, _) = get(s.port(), "..%2Fetc", None);
        assert!(h.starts_with("HTTP/1.1 404"), "{h}");
        assert!(s.guest_url("b").starts_with("http://10.0.2.2:"));
    }
}
