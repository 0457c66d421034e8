//! Writing bundles on the build host: compress artifacts into payloads, then lay out the tar.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::ustar::{self, BLOCK};
use super::{MANIFEST_ENTRY, MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE, SIGNATURE_ENTRY};
use crate::digest::{limit_exceeded, HashingReader, HashingWriter, LimitedReader};
use crate::manifest::{ArtifactName, Manifest, Payload, PayloadEncoding};
use crate::signing::ManifestSignature;
use crate::TrustError;

/// One payload handed to [`write_bundle`]: the encoded bytes of an artifact.
pub struct PayloadSource<'a> {
    /// The artifact name (the entry is `<name>.zst`).
    pub name: ArtifactName,
    /// Number of bytes `reader` yields; must equal the manifest's `payload.size`.
    pub size: u64,
    /// The encoded bytes, for example an open `.zst` file.
    pub reader: Box<dyn Read + 'a>,
}

/// Writes a bundle to `out` and returns `out` (the caller flushes and syncs it).
///
/// `manifest_json` and `sig_json` are the bytes from [`crate::signing::sign_manifest`];
/// `payloads` must yield one source per payload artifact, in manifest order. Every payload is
/// checked while it is copied: name, size and sha256 must match the manifest, so a bundle that
/// an appliance would refuse is not produced. On error `out` holds a partial bundle; delete it.
pub fn write_bundle<'a, W: Write>(
    mut out: W,
    manifest_json: &[u8],
    sig_json: &[u8],
    payloads: impl IntoIterator<Item = PayloadSource<'a>>,
) -> Result<W, TrustError> {
    check_limit(MANIFEST_ENTRY, manifest_json.len(), MAX_MANIFEST_SIZE)?;
    check_limit(SIGNATURE_ENTRY, sig_json.len(), MAX_SIGNATURE_SIZE)?;
    let manifest = Manifest::from_json_unverified(manifest_json)?;
    serde_json::from_slice::<ManifestSignature>(sig_json)
        .map_err(|e| TrustError::malformed(SIGNATURE_ENTRY, e))?;
    let mtime = manifest.build.source_date_epoch;
    let write_err = |e| TrustError::io("writing the bundle", e);

    for (name, data) in [(MANIFEST_ENTRY, manifest_json), (SIGNATURE_ENTRY, sig_json)] {
        out.write_all(&ustar::build(name, data.len() as u64, mtime)?)
            .and_then(|()| out.write_all(data))
            .and_then(|()| write_padding(&mut out, data.len() as u64))
            .map_err(write_err)?;
    }

    let mut sources = payloads.into_iter();
    for artifact in manifest.payload_artifacts() {
        let (entry, payload) = match (artifact.payload_entry_name(), &artifact.payload) {
            (Some(entry), Some(payload)) => (entry, payload),
            _ => continue,
        };
        let source = sources.next().ok_or_else(|| TrustError::MissingEntry {
            name: entry.clone(),
        })?;
        if source.name != artifact.name {
            let known = manifest.payload_artifacts().any(|a| a.name == source.name);
            let found = format!("{}{}", source.name, payload.encoding.suffix());
            return Err(if known {
                TrustError::Reordered {
                    entry: found,
                    expected: entry,
                }
            } else {
                TrustError::UnexpectedEntry {
                    expected: entry,
                    found,
                }
            });
        }
        if source.size != payload.size {
            return Err(TrustError::SizeMismatch {
                artifact: entry,
                expected: payload.size,
                actual: source.size,
            });
        }
        out.write_all(&ustar::build(&entry, payload.size, mtime)?)
            .map_err(write_err)?;
        copy_payload(source.reader, &mut out, &entry, payload)?;
        write_padding(&mut out, payload.size).map_err(write_err)?;
    }
    if let Some(extra) = sources.next() {
        return Err(TrustError::UnexpectedEntry {
            expected: "end of bundle".into(),
            found: extra.name.to_string(),
        });
    }
    out.write_all(&[0u8; 2 * BLOCK])
        .and_then(|()| out.flush())
        .map_err(write_err)?;
    Ok(out)
}

/// Copies exactly `payload.size` bytes and checks their sha256.
fn copy_payload(
    reader: Box<dyn Read + '_>,
    out: &mut impl Write,
    entry: &str,
    payload: &Payload,
) -> Result<(), TrustError> {
    let mut reader = HashingReader::new(LimitedReader::new(reader, payload.size));
    let copied = io::copy(&mut reader, out).map_err(|e| match limit_exceeded(&e) {
        Some(l) => TrustError::Oversized {
            entry: entry.into(),
            limit: l.limit,
        },
        None => TrustError::io(format!("copying payload {entry} into the bundle"), e),
    })?;
    if copied != payload.size {
        return Err(TrustError::Truncated {
            entry: entry.into(),
        });
    }
    let (_, digest, _) = reader.finish();
    if digest != payload.sha256 {
        return Err(TrustError::HashMismatch {
            artifact: entry.into(),
            expected: payload.sha256.to_string(),
            actual: digest.to_string(),
        });
    }
    Ok(())
}

fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
    let pad = ustar::padding(size) as usize;
    out.write_all(&[0u8; BLOCK][..pad])
}

fn check_limit(entry: &str, len: usize, limit: u64) -> Result<(), TrustError> {
    if len as u64 > limit {
        return Err(TrustError::Oversized {
            entry: entry.into(),
            limit,
        });
    }
    Ok(())
}

/// Compresses `src` into `dst` with zstd at `level` (1 to 19; 3 is a good default) and returns
/// the manifest's [`Payload`] for it. Single-threaded, so the output depends only on the input,
/// the level and the zstd version. The frame records the content size and a checksum.
pub fn compress_payload(src: &Path, dst: &Path, level: i32) -> Result<Payload, TrustError> {
    if !(1..=19).contains(&level) {
        return Err(TrustError::malformed(
            format!("zstd level {level}"),
            "use a level from 1 to 19; higher levels need windows larger than appliances decode",
        ));
    }
    let input =
        File::open(src).map_err(|e| TrustError::io(format!("opening {}", src.display()), e))?;
    let len = input
        .metadata()
        .map_err(|e| TrustError::io(format!("reading {}", src.display()), e))?
        .len();
    let output =
        File::create(dst).map_err(|e| TrustError::io(format!("creating {}", dst.display()), e))?;
    let write_err = |e| {
        TrustError::io(
            format!("compressing {} into {}", src.display(), dst.display()),
            e,
        )
    };

    let mut encoder =
        zstd::stream::write::Encoder::new(HashingWriter::new(BufWriter::new(output)), level)
            .map_err(write_err)?;
    encoder.include_checksum(true).map_err(write_err)?;
    encoder.set_pledged_src_size(Some(len)).map_err(write_err)?;
    let copied = io::copy(&mut input.take(len), &mut encoder).map_err(write_err)?;
    if copied != len {
        return Err(TrustError::Truncated {
            entry: src.display().to_string(),
        });
    }
    let hashing = encoder.finish().map_err(write_err)?;
    let (buffered, sha256, size) = hashing.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    Ok(Payload {
        encoding: PayloadEncoding::Zstd,
        size,
        sha256,
        base: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_file;

    #[test]
    fn compress_payload_is_deterministic_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("rootfs.img");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let a = compress_payload(&src, &dir.path().join("a.zst"), 3).unwrap();
        let b = compress_payload(&src, &dir.path().join("b.zst"), 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            sha256_file(&dir.path().join("a.zst")).unwrap(),
            (a.sha256.clone(), a.size)
        );
        let back = zstd::stream::decode_all(File::open(dir.path().join("a.zst")).unwrap()).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn compress_payload_refuses_ultra_levels_and_names_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = compress_payload(&dir.path().join("x"), &dir.path().join("y"), 22).unwrap_err();
        assert!(err.to_string().contains("level 22"), "{err}");
        let err =
            compress_payload(&dir.path().join("missing"), &dir.path().join("y"), 3).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
