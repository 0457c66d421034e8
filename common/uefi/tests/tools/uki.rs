//! UKIs assembled from the real systemd 252 stub, checked by the tools the field trusts:
//! `objdump -h/-p` reads the sections and headers we wrote, `sbsign` signs and `sbverify`
//! verifies the result, objcopy (through build-uki.sh) places the same sections at the same
//! VMAs with the same bytes, and pcr11-predict.py predicts the same PCR 11.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use aperture_uefi::pe::{stored_checksum, timestamp};
use aperture_uefi::{
    assemble_uki, checksum, is_signed, pcr, predict_pcr11, section_data, sections, Machine,
};

use crate::support::{fake_sections, pairs, research, run, run_text, stub, tool};

/// The VMAs build-uki.sh computes: SizeOfImage rounded up to 4 KiB, then each section at
/// the previous end rounded up to 4 KiB.
fn expected_vmas(stub: &[u8], lens: &[usize]) -> Vec<u32> {
    let align = |v: u64| v.div_ceil(4096) * 4096;
    let size_of_image = {
        let pe = u32::from_le_bytes(stub[0x3c..0x40].try_into().unwrap()) as usize;
        u32::from_le_bytes(stub[pe + 24 + 56..pe + 24 + 60].try_into().unwrap())
    };
    let mut off = align(size_of_image.into());
    lens.iter()
        .map(|&len| {
            let vma = off as u32;
            off = align(off + len as u64);
            vma
        })
        .collect()
}

#[test]
fn the_stubs_own_checksum_is_reproduced() {
    let Some(stub) = stub("the_stubs_own_checksum_is_reproduced") else {
        return;
    };
    // 0x1aa6c in Debian's 252.39 stub; whatever the version, our sum must equal the linker's.
    assert_eq!(checksum(&stub).unwrap(), stored_checksum(&stub).unwrap());
}

#[test]
fn sections_land_at_the_build_uki_sh_vmas() {
    let Some(stub) = stub("sections_land_at_the_build_uki_sh_vmas") else {
        return;
    };
    let fake = fake_sections(123_457);
    let uki = assemble_uki(&stub, &pairs(&fake)).unwrap();
    assert_eq!(
        uki,
        assemble_uki(&stub, &pairs(&fake)).unwrap(),
        "deterministic"
    );

    let old = sections(&stub).unwrap();
    let new = sections(&uki).unwrap();
    assert_eq!(
        new[..old.len()],
        old[..],
        "the stub's sections are unchanged"
    );
    let lens: Vec<usize> = fake.iter().map(|(_, d)| d.len()).collect();
    let vmas: Vec<u32> = new[old.len()..].iter().map(|s| s.virtual_address).collect();
    assert_eq!(vmas, expected_vmas(&stub, &lens));
    assert_eq!(vmas[0], 0x1a000, "252's SizeOfImage 0x19300, rounded up");
    for (s, (name, data)) in new[old.len()..].iter().zip(&fake) {
        assert_eq!(s.name, *name);
        assert_eq!(s.virtual_size as usize, data.len());
        assert_eq!(s.pointer_to_raw_data % 0x200, 0);
        assert_eq!(section_data(&uki, name).unwrap(), Some(&data[..]));
    }
    for s in &old {
        assert_eq!(
            section_data(&uki, &s.name).unwrap(),
            section_data(&stub, &s.name).unwrap()
        );
    }
    assert_eq!(timestamp(&uki).unwrap(), 0);
    assert_eq!(stored_checksum(&uki).unwrap(), checksum(&uki).unwrap());
    assert_eq!(aperture_uefi::pe::machine(&uki).unwrap(), Machine::X86_64);
    // Nothing after the last section: the symbol table is gone.
    let last = new.last().unwrap();
    assert_eq!(
        uki.len(),
        (last.pointer_to_raw_data + last.size_of_raw_data) as usize
    );
}

/// `objdump -h` rows: (name, size, VMA, file offset).
fn objdump_sections(objdump: &Path, file: &Path) -> Vec<(String, u32, u32, u32)> {
    let text = run_text(Command::new(objdump).arg("-h").arg(file));
    let hex = |s: &str| u32::from_str_radix(s, 16).unwrap();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() == 7 && f[0].parse::<u32>().is_ok())
                .then(|| (f[1].to_string(), hex(f[2]), hex(f[3]), hex(f[5])))
        })
        .collect()
}

#[test]
fn objdump_reads_what_we_wrote() {
    let test = "objdump_reads_what_we_wrote";
    let (Some(stub), Some(objdump)) = (stub(test), tool("objdump", "binutils", test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uki.efi");
    let uki = assemble_uki(&stub, &pairs(&fake_sections(50_000))).unwrap();
    std::fs::write(&path, &uki).unwrap();

    let ours: Vec<_> = sections(&uki)
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.name,
                s.virtual_size,
                s.virtual_address,
                s.pointer_to_raw_data,
            )
        })
        .collect();
    assert_eq!(objdump_sections(&objdump, &path), ours);

    let p = run_text(Command::new(&objdump).arg("-p").arg(&path));
    let field = |name: &str| {
        let line = p.lines().find(|l| l.starts_with(name)).unwrap();
        u32::from_str_radix(line.split_whitespace().last().unwrap(), 16).unwrap()
    };
    assert_eq!(field("CheckSum"), checksum(&uki).unwrap());
    let last = ours.last().unwrap();
    assert_eq!(
        field("SizeOfImage"),
        (last.2 + last.1).div_ceil(0x200) * 0x200
    );
    assert!(
        p.contains("Thu Jan  1 00:00:00 1970"),
        "TimeDateStamp 0:\n{p}"
    );
}

#[test]
fn sbsign_signs_and_sbverify_verifies() {
    let test = "sbsign_signs_and_sbverify_verifies";
    let (Some(stub), Some(openssl), Some(sbsign), Some(sbverify)) = (
        stub(test),
        tool("openssl", "openssl", test),
        tool("sbsign", "sbsigntool", test),
        tool("sbverify", "sbsigntool", test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f);
    run(Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=snakeoil",
        ])
        .args(["-days", "1", "-keyout"])
        .arg(d("snakeoil.key"))
        .arg("-out")
        .arg(d("snakeoil.crt")));
    let uki = assemble_uki(&stub, &pairs(&fake_sections(200_000))).unwrap();
    std::fs::write(d("uki.efi"), &uki).unwrap();
    assert!(!is_signed(&uki).unwrap());

    let out = run(Command::new(sbsign)
        .arg("--key")
        .arg(d("snakeoil.key"))
        .arg("--cert")
        .arg(d("snakeoil.crt"))
        .arg("--output")
        .arg(d("signed.efi"))
        .arg(d("uki.efi")));
    let warnings = String::from_utf8_lossy(&out.stderr).to_string();
    // objcopy's output made sbsign warn about the kept symbol table; ours has nothing to warn about.
    assert!(!warnings.contains("gaps"), "sbsign warned: {warnings}");
    run(Command::new(sbverify)
        .arg("--cert")
        .arg(d("snakeoil.crt"))
        .arg(d("signed.efi")));

    let signed = std::fs::read(d("signed.efi")).unwrap();
    assert!(is_signed(&signed).unwrap());
    let table = aperture_uefi::certificate_table(&signed).unwrap().unwrap();
    // WIN_CERTIFICATE: dwLength, wRevision 0x0200, wCertificateType 0x0002 (PKCS#7
    // SignedData), PE/COFF spec section 4.7.
    let length = u32::from_le_bytes(table[..4].try_into().unwrap()) as usize;
    assert!(
        length <= table.len() && table.len() - length < 8,
        "{length} / {}",
        table.len()
    );
    assert_eq!(table[4..8], [0x00, 0x02, 0x02, 0x00]);
    // Signing appends a table; what the stub measures is unchanged.
    assert_eq!(
        predict_pcr11(&signed).unwrap(),
        predict_pcr11(&uki).unwrap()
    );
    assert_eq!(
        stored_checksum(&signed).unwrap(),
        checksum(&signed).unwrap()
    );
}

/// build-uki.sh (objcopy) and assemble_uki on the same inputs: the same sections at the same
/// VMAs with the same bytes, so the same PCR 11. The files differ where we chose to: objcopy
/// keeps the symbol table and stamps the time.
#[test]
fn objcopy_and_we_place_the_same_bytes_at_the_same_vmas() {
    let test = "objcopy_and_we_place_the_same_bytes_at_the_same_vmas";
    let (Some(stub), Some(_), Some(_), Some(script)) = (
        stub(test),
        tool("objcopy", "binutils", test),
        tool("objdump", "binutils", test),
        research("build-uki.sh", test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_sections(300_001);
    for (name, data) in &fake {
        std::fs::write(dir.path().join(&name[1..]), data).unwrap();
    }
    let stub_path = Path::new("/").join(aperture_uefi::STUB_X86_64);
    run(Command::new("sh")
        .arg(&script)
        .args(["linux", "initrd", "cmdline", "osrel", "objcopy.efi"])
        .current_dir(dir.path())
        .env("STUB", &stub_path));
    let theirs = std::fs::read(dir.path().join("objcopy.efi")).unwrap();
    let ours = assemble_uki(&stub, &pairs(&fake)).unwrap();

    let view = |pe: &[u8]| -> Vec<(String, u32, u32, Vec<u8>)> {
        sections(pe)
            .unwrap()
            .into_iter()
            .map(|s| {
                let data = section_data(pe, &s.name).unwrap().unwrap().to_vec();
                (s.name, s.virtual_address, s.virtual_size, data)
            })
            .collect()
    };
    let (a, b) = (view(&theirs), view(&ours));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, x.1, x.2), (&y.0, y.1, y.2), "section header");
        assert!(x.3 == y.3, "contents of {} differ", x.0);
    }
    assert_eq!(
        predict_pcr11(&theirs).unwrap(),
        predict_pcr11(&ours).unwrap()
    );
    eprintln!(
        "objcopy UKI {} bytes (symbol table kept), ours {} bytes",
        theirs.len(),
        ours.len()
    );
}

/// pcr11-predict.py, whose value equalled PCR 11 in a Secure Boot VM, on the same file.
#[test]
fn pcr11_predict_py_agrees() {
    let test = "pcr11_predict_py_agrees";
    let (Some(stub), Some(python), Some(script)) = (
        stub(test),
        tool("python3", "python3", test),
        research("pcr11-predict.py", test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uki.efi");
    let uki = assemble_uki(&stub, &pairs(&fake_sections(77_777))).unwrap();
    std::fs::write(&path, &uki).unwrap();

    let base = run_text(Command::new(&python).arg(&script).arg(&path));
    let base = base.lines().find_map(|l| l.strip_prefix("base ")).unwrap();
    assert_eq!(base, hex::encode(predict_pcr11(&uki).unwrap()));

    let events = run_text(
        Command::new(&python)
            .arg(&script)
            .arg("--events")
            .arg(&path),
    );
    let ours: Vec<String> = pcr::pcr11_events(&uki)
        .unwrap()
        .iter()
        .map(|e| hex::encode(e.digest))
        .collect();
    assert_eq!(events.lines().collect::<Vec<_>>(), ours);
}

/// pe-fix-timestamp.py (what the research ran after objcopy) and set_timestamp write the same
/// bytes; the stub's odd length (83,297 in 252.39) exercises the last half word.
#[test]
fn pe_fix_timestamp_py_agrees() {
    let test = "pe_fix_timestamp_py_agrees";
    let (Some(stub), Some(python), Some(script)) = (
        stub(test),
        tool("python3", "python3", test),
        research("pe-fix-timestamp.py", test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stub.efi");
    for t in [1_700_000_000u32, 0] {
        std::fs::write(&path, &stub).unwrap();
        run(Command::new(&python)
            .arg(&script)
            .arg(&path)
            .arg(t.to_string()));
        let mut ours = stub.clone();
        aperture_uefi::set_timestamp(&mut ours, t).unwrap();
        assert!(std::fs::read(&path).unwrap() == ours, "time {t}");
    }
}

/// The real stub truncated and its header bytes flipped: errors, never a panic.
#[test]
fn a_damaged_real_stub_gives_errors() {
    let Some(stub) = stub("a_damaged_real_stub_gives_errors") else {
        return;
    };
    let new: &[(&str, &[u8])] = &[(".linux", b"MZ")];
    for len in [
        0, 1, 0x3f, 0x40, 0x84, 0x97, 0x100, 0x2c7, 0x400, 0x11200, 0x113ff,
    ] {
        assert!(assemble_uki(&stub[..len], new).is_err(), "len {len:#x}");
        assert!(sections(&stub[..len]).is_err(), "len {len:#x}");
    }
    for at in 0..0x400 {
        for v in [0x00, 0xff, 0x80] {
            let mut b = stub.clone();
            b[at] = v;
            let _ = assemble_uki(&b, new);
            let _ = predict_pcr11(&b);
            let _ = aperture_uefi::certificate_table(&b);
        }
    }
}

/// Size and time of a realistic UKI: the REPORT's Debian kernel (14,149,568 B) and initrd
/// (13,732,400 B) sizes. Run with `--nocapture` to see the numbers.
#[test]
fn a_full_size_uki_and_its_timing() {
    let Some(stub) = stub("a_full_size_uki_and_its_timing") else {
        return;
    };
    let kernel = vec![0x4du8; 14_149_568];
    let initrd = vec![0x30u8; 13_732_400];
    let sections: &[(&str, &[u8])] = &[
        (".osrel", b"ID=aperture\n"),
        (".cmdline", b"root=PARTLABEL=rootfs_a quiet"),
        (".initrd", &initrd),
        (".linux", &kernel),
    ];
    let start = Instant::now();
    let uki = assemble_uki(&stub, sections).unwrap();
    let assembled = start.elapsed();
    let start = Instant::now();
    let pcr11 = predict_pcr11(&uki).unwrap();
    let predicted = start.elapsed();
    let kernel_only = assemble_uki(&stub, &[(".linux", &kernel)]).unwrap();
    // 70,656 bytes of stub sections, 512 + 512 for .osrel and .cmdline, then the two
    // payloads rounded up to 512.
    let expected = 0x11400 + 512 + 512 + 13_732_864 + 14_149_632;
    assert_eq!(uki.len(), expected);
    eprintln!(
        "UKI {} bytes (kernel-only {} bytes): assemble_uki {:?}, predict_pcr11 {:?} ({})",
        uki.len(),
        kernel_only.len(),
        assembled,
        predicted,
        hex::encode(pcr11)
    );
}
