use std::time::Instant;
#[test]
#[ignore]
fn tmp_profile() {
    let dir = std::path::Path::new("/work/main/out/aperture-vision-qemu-x86_64-1.0.0");
    let backing = std::path::Path::new("/work/main/target/bench/flash/p.img");
    std::fs::create_dir_all(backing.parent().unwrap()).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let image =
            aperture_flash::VerifiedImage::open(dir, None, aperture_trust::now_unix()).unwrap();
        let opened = t.elapsed();
        let _ = std::fs::remove_file(backing);
        std::fs::File::create(backing)
            .unwrap()
            .set_len(image.image_size())
            .unwrap();
        let dev = aperture_flash::LoopDevice::attach(backing).unwrap();
        let t = Instant::now();
        let target = aperture_flash::BlockTarget::open(dev.path()).unwrap();
        let r = aperture_flash::flash(&image, &target, &aperture_flash::NoProgress).unwrap();
        eprintln!(
            "open {opened:?} flash {:?} (inner {:?})",
            t.elapsed(),
            r.elapsed
        );
        drop(target);
        dev.close().unwrap();
    }
}
