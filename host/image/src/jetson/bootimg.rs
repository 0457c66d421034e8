//! Writing the Android boot image (header version 0) that NVIDIA's L4TLauncher loads from a
//! Jetson kernel partition (`A_kernel`, `kernel_b`, ...). The format lives in
//! [`aperture_slots::tegra::bootimg`], shared with the updater, which writes the same images
//! into the partitions on the device.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

pub use aperture_slots::tegra::bootimg::{header, parse_header, Header, MAGIC, PAGE_SIZE};

use super::error::JetsonError;

/// Write a boot image of `kernel`, `ramdisk` and `cmdline` to `dest`; returns its size.
pub fn write(dest: &Path, kernel: &Path, ramdisk: &Path, cmdline: &str) -> Result<u64> {
    let size = |p: &Path| -> Result<u32> {
        let n = std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        u32::try_from(n).with_context(|| {
            format!(
                "{} is larger than a boot image can hold (4 GiB)",
                p.display()
            )
        })
    };
    let (ks, rs) = (size(kernel)?, size(ramdisk)?);
    let tmp = dest.with_extension("img.tmp");
    let mut w =
        BufWriter::new(File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    w.write_all(
        &header(ks, rs, cmdline).map_err(|e| JetsonError::BootImageField {
            field: "command line",
            len: e.len,
            max: e.max,
        })?,
    )?;
    let mut total = u64::from(PAGE_SIZE);
    for (src, n) in [(kernel, ks), (ramdisk, rs)] {
        let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let copied = std::io::copy(&mut (&mut f).take(u64::from(n)), &mut w)?;
        let padded = copied.div_ceil(u64::from(PAGE_SIZE)) * u64::from(PAGE_SIZE);
        std::io::copy(&mut std::io::repeat(0).take(padded - copied), &mut w)?;
        total += padded;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_holds_kernel_then_ramdisk_on_page_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let (k, r, out) = (
            d.path().join("Image"),
            d.path().join("initrd"),
            d.path().join("boot.img"),
        );
        std::fs::write(&k, vec![0xAB; 3000]).unwrap();
        std::fs::write(&r, vec![0xCD; 10]).unwrap();
        let n = write(&out, &k, &r, "console=ttyTCU0 aperture.slot=b").unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(bytes.len(), 2048 + 4096 + 2048);
        assert_eq!(&bytes[..8], MAGIC);
        assert!(bytes[2048..5048].iter().all(|&b| b == 0xAB));
        assert!(bytes[5048..6144].iter().all(|&b| b == 0));
        assert!(bytes[6144..6154].iter().all(|&b| b == 0xCD));
        let h = parse_header(&bytes).unwrap();
        assert_eq!(h.cmdline, "console=ttyTCU0 aperture.slot=b");
        assert_eq!(h.image_size(), n);
    }
}
