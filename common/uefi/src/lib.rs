//! UEFI boot files as data: unified kernel images (PE32+ parsing and assembly, timestamps,
//! checksums, Authenticode certificate tables), the PCR 11 value systemd-stub 252 leaves,
//! and TPM 2.0 policy digests and names computed offline.
//!
//! Shared by the build host (assemble a UKI from the rootfs tree's stub, predict its PCR 11,
//! compute the approved policy to sign) and the appliance (check what is on the ESP), so it
//! stays small: hex, sha2 and thiserror, no unsafe code, no external tools. Signing stays with
//! `sbsign`; this crate writes the unsigned image and reads the signed one.
//! Background and measurements: docs/research/issue-18/REPORT.md.
//!
//! ```
//! use aperture_uefi::{assemble_uki, is_signed, predict_pcr11, section_data, UefiError};
//!
//! /// The unsigned UKI for a slot (sign it with sbsign) and the PCR 11 its policy names.
//! fn build(stub: &[u8], kernel: &[u8], initrd: &[u8]) -> Result<(Vec<u8>, [u8; 32]), UefiError> {
//!     let cmdline = b"root=PARTLABEL=rootfs_a aperture.slot=a";
//!     let uki = assemble_uki(
//!         stub,
//!         &[
//!             (".osrel", b"ID=aperture\n"),
//!             (".cmdline", cmdline),
//!             (".initrd", initrd),
//!             (".linux", kernel), // last, as ukify and build-uki.sh place it
//!         ],
//!     )?;
//!     assert_eq!(section_data(&uki, ".cmdline")?, Some(&cmdline[..]));
//!     assert!(!is_signed(&uki)?);
//!     let pcr11 = predict_pcr11(&uki)?;
//!     Ok((uki, pcr11))
//! }
//! ```
//!
//! Modules: [`pe`] reads images; [`uki`] writes them; [`pcr`] predicts PCR 11; [`policy`]
//! computes TPM policy digests and names; [`apolicy`] is a UKI's signed disk-key policy. The common items are re-exported here.

pub mod apolicy;
mod error;
pub mod pcr;
pub mod pe;
pub mod policy;
#[cfg(any(test, feature = "testing"))]
pub mod testpe;
pub mod uki;

pub use apolicy::SignedPolicy;
pub use error::UefiError;
pub use pcr::{predict_pcr11, PCR11_SECTIONS};
pub use pe::{
    certificate_table, checksum, is_signed, section_data, sections, set_timestamp, Machine,
    SectionInfo,
};
pub use policy::{
    nv_index_name, pcr_values_digest, policy_authorize, policy_nv, policy_pcr, rsa_public_key_name,
};
pub use uki::{assemble_uki, check_section_name};

/// Where Debian's systemd-boot-efi puts the x86-64 stub, relative to a root file system (take
/// it from the image's own rootfs tree, so it changes only with the package snapshot).
pub const STUB_X86_64: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where Debian's systemd-boot-efi puts the AArch64 stub, relative to a root file system.
pub const STUB_AARCH64: &str = "usr/lib/systemd/boot/efi/linuxaa64.efi.stub";
