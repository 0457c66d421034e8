//! A target's bytes, checked against what the targets role signed: never more than its
//! length (endless data is cut off at the first byte too many), and at the end exactly its
//! length and its sha256. The check is the TUF chain's; the bundle's own signed manifest is
//! checked again by the updater as it reads (the second, independent chain).
//!
//! The reader fails the read that would reach the end of a target whose hash differs, so a
//! consumer that reads to the end (the updater's bundle reader does, before it arms a slot)
//! never finishes with bytes the repository did not sign.

use std::io::{self, Read};

use aperture_updater::source::{self, FetchOptions};
use sha2::{Digest, Sha256};

use crate::refresh::TargetFile;

/// Open `target` for reading, unchecked (wrap it in [`Checked`]): a `file://` URL from the
/// local folder, `https://` (or `http://` with `fetch.insecure_http`) through the updater's
/// client with `fetch`'s TLS settings, resuming a dropped connection as for a bundle.
pub fn open(target: &TargetFile, fetch: &FetchOptions) -> Result<Box<dyn Read>, String> {
    let url = &target.url;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| format!("target {}: {url} is not a local path", target.name))?;
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("opening target {} at {}: {e}", target.name, path.display()))?;
        return Ok(Box::new(file));
    }
    source::open(url.as_str(), fetch).map_err(|e| format!("target {}: {e}", target.name))
}

/// A reader over a target's bytes that checks its length and sha256.
pub struct Checked<R> {
    inner: R,
    name: String,
    length: u64,
    sha256: [u8; 32],
    read: u64,
    hasher: Sha256,
    done: bool,
}

impl<R: Read> Checked<R> {
    /// Check `inner` against `target`.
    pub fn new(inner: R, target: &TargetFile) -> Checked<R> {
        Checked {
            inner,
            name: target.name.clone(),
            length: target.length,
            sha256: target.sha256,
            read: 0,
            hasher: Sha256::new(),
            done: false,
        }
    }

    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    fn refuse(&self, why: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "target {} refused: {why}; the repository's targets role signed {} bytes with \
                 sha256 {}",
                self.name,
                self.length,
                hex::encode(self.sha256)
            ),
        )
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        // One byte more than is left, so that a longer file is noticed.
        let left = self.length - self.read;
        let want = buf
            .len()
            .min(usize::try_from(left + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            if self.read != self.length {
                return Err(self.refuse(format!("it ended after {} bytes", self.read)));
            }
            let got: [u8; 32] = self.hasher.clone().finalize().into();
            if got != self.sha256 {
                return Err(self.refuse(format!("its sha256 is {}", hex::encode(got))));
            }
            self.done = true;
            return Ok(0);
        }
        if n as u64 > left {
            return Err(self.refuse("it is longer".into()));
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(bytes: &[u8]) -> TargetFile {
        TargetFile {
            name: "t".into(),
            length: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
            url: url::Url::parse("file:///t").unwrap(),
        }
    }

    fn read_all(bytes: &[u8], t: &TargetFile) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Checked::new(bytes, t).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn the_signed_bytes_pass_and_anything_else_fails_at_the_end_or_the_first_extra_byte() {
        let good = b"a bundle".to_vec();
        let t = target(&good);
        assert_eq!(read_all(&good, &t).unwrap(), good);

        let mut other = good.clone();
        other[0] ^= 1;
        let e = read_all(&other, &t).unwrap_err().to_string();
        assert!(
            e.contains("its sha256 is") && e.contains("target t refused"),
            "{e}"
        );

        let e = read_all(&good[..4], &t).unwrap_err().to_string();
        assert!(e.contains("ended after 4 bytes"), "{e}");

        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 100_000]);
        let mut r = Checked::new(&longer[..], &t);
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err().to_string();
        assert!(e.contains("it is longer"), "{e}");
        assert!(r.position() <= good.len() as u64);
    }
}
