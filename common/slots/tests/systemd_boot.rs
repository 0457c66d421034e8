//! The systemd-boot backend on temporary ESP folders: entry names and contents, the loader's
//! order, and full update cycles with the simulated loader (boot, count, fall back, bless).

mod common;

use std::cmp::Ordering;
use std::fs;

use aperture_slots::systemd_boot::entry::{
    compare, set_version, strverscmp_improved, Counter, EntryFields, EntryName, LoaderEntry,
};
use aperture_slots::{
    loader_conf, render_entry, BootControl, Slot, SlotBoot, SlotManager, SlotStatus, SlotsError,
    Step, SystemdBoot,
};
use common::{boot, fresh_esp, names};

fn entries(esp: &SystemdBoot) -> Vec<String> {
    names(&esp.entries_dir())
}

fn version_of(esp: &SystemdBoot, file: &str) -> u64 {
    let text = fs::read_to_string(esp.entries_dir().join(file)).unwrap();
    EntryFields::parse(&text).generation().unwrap()
}

#[test]
fn entry_names_parse_like_systemd_boot() {
    let counted = |slot, l, d| {
        Some(EntryName {
            slot,
            counter: Some(Counter {
                tries_left: l,
                tries_done: d,
            }),
        })
    };
    let cases = [
        ("slot-a.conf", Some(EntryName::plain(Slot::A))),
        ("slot-b.conf", Some(EntryName::plain(Slot::B))),
        ("slot-b+3.conf", counted(Slot::B, 3, 0)),
        ("slot-b+2-1.conf", counted(Slot::B, 2, 1)),
        ("slot-b+0-3.conf", counted(Slot::B, 0, 3)),
        ("slot-a+4-0.conf", counted(Slot::A, 4, 0)),
        ("SLOT-B+1-2.CONF", counted(Slot::B, 1, 2)),
        ("slot-b.conf.off", None),
        ("slot-b+3.conf.tmp", None),
        ("slot-b+3.conf~", None),
        ("slot-c.conf", None),
        ("slot-b+x.conf", None),
        ("slot-b+3-.conf", None),
        ("slot-b+-1.conf", None),
        ("slot-b+3-1-2.conf", None),
        ("slot-a+1+2.conf", None),
        ("slot-b+99999999999.conf", None),
        ("debian-6.1.conf", None),
        ("slot-b", None),
        (".conf", None),
    ];
    for (name, want) in cases {
        assert_eq!(EntryName::parse(name), want, "{name}");
    }
}

#[test]
fn entry_names_round_trip_and_count_down() {
    let mut name = EntryName::armed(Slot::B, 3);
    let mut seen = vec![name.file_name()];
    for _ in 0..4 {
        name = name.after_boot();
        seen.push(name.file_name());
        assert_eq!(EntryName::parse(&name.file_name()), Some(name));
    }
    assert_eq!(
        seen,
        [
            "slot-b+3.conf",
            "slot-b+2-1.conf",
            "slot-b+1-2.conf",
            "slot-b+0-3.conf",
            "slot-b+0-4.conf"
        ]
    );
    assert_eq!(
        EntryName::plain(Slot::A).after_boot(),
        EntryName::plain(Slot::A)
    );
    assert_eq!(EntryName::plain(Slot::A).status(), SlotStatus::Good);
    assert_eq!(
        EntryName::parse("slot-b+2-1.conf").unwrap().status(),
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );
    assert_eq!(
        EntryName::parse("slot-b+0-3.conf").unwrap().status(),
        SlotStatus::Bad
    );
}

#[test]
fn render_and_parse_entry() {
    let text = render_entry(Slot::B, 7, &boot(Slot::B, "1.3.0"));
    let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        body,
        [
            "title Aperture 1.3.0",
            "version 7",
            "sort-key aperture",
            "linux /aperture/b/vmlinuz",
            "initrd /aperture/b/initrd.img",
            "options root=PARTLABEL=rootfs_b ro rootdelay=3 aperture.slot=b",
        ]
    );
    let fields = EntryFields::parse(&text);
    assert_eq!(fields.title.as_deref(), Some("Aperture 1.3.0"));
    assert_eq!(fields.generation(), Some(7));
    assert_eq!(fields.sort_key.as_deref(), Some("aperture"));
    assert_eq!(fields.linux.as_deref(), Some("/aperture/b/vmlinuz"));

    let bumped = set_version(&text, 12);
    assert_eq!(EntryFields::parse(&bumped).generation(), Some(12));
    assert_eq!(
        bumped.lines().count(),
        text.lines().count(),
        "only the version line changes"
    );
    let inserted = set_version("title X\nlinux /k\n", 3);
    assert_eq!(inserted, "title X\nversion 3\nlinux /k\n");
}

#[test]
fn loader_conf_has_no_default() {
    let conf = loader_conf();
    for line in ["timeout 0", "editor no", "console-mode keep"] {
        assert!(conf.lines().any(|l| l == line), "{line} in {conf}");
    }
    assert!(!conf.lines().any(|l| l.starts_with("default")));
}

#[test]
fn strverscmp_matches_systemd() {
    use Ordering::*;
    let cases = [
        ("1", "2", Less),
        ("10", "9", Greater),
        ("002", "2", Equal),
        ("1.0", "1.0", Equal),
        ("1.0~rc1", "1.0", Less),
        ("1.0", "1.0.1", Less),
        ("123-9", "123.1-1", Less),
        ("1.a", "1.1", Less),
        ("abc", "abcde", Less),
        ("a", "b", Less),
        ("1.0^", "1.0", Greater),
        ("", "1", Less),
        ("slot-b+3.conf", "slot-a.conf", Greater),
        ("slot-b.conf", "slot-b+2-1.conf", Less),
    ];
    for (a, b, want) in cases {
        assert_eq!(strverscmp_improved(a, b), want, "{a} vs {b}");
        assert_eq!(strverscmp_improved(b, a), want.reverse(), "{b} vs {a}");
    }
}

fn loader_entry(file: &str, version: &str) -> LoaderEntry {
    LoaderEntry {
        file: file.into(),
        name: EntryName::parse(file).unwrap(),
        id: file.to_ascii_lowercase(),
        fields: EntryFields::parse(&format!(
            "title t\nversion {version}\nsort-key aperture\nlinux /k\n"
        )),
    }
}

#[test]
fn loader_order_follows_systemd_boot_252() {
    let first = |a: LoaderEntry, b: LoaderEntry| {
        if compare(&a, &b) == Ordering::Greater {
            b.file
        } else {
            a.file
        }
    };
    // Higher generation first.
    assert_eq!(
        first(
            loader_entry("slot-a.conf", "2"),
            loader_entry("slot-b.conf", "1")
        ),
        "slot-a.conf"
    );
    assert_eq!(
        first(
            loader_entry("slot-a.conf", "2"),
            loader_entry("slot-b+3.conf", "3")
        ),
        "slot-b+3.conf"
    );
    assert_eq!(
        first(
            loader_entry("slot-a.conf", "9"),
            loader_entry("slot-b+3.conf", "10")
        ),
        "slot-b+3.conf"
    );
    // No tries left: last, whatever the generation.
    assert_eq!(
        first(
            loader_entry("slot-a.conf", "2"),
            loader_entry("slot-b+0-3.conf", "3")
        ),
        "slot-a.conf"
    );
    // Equal generations: the id decides, newest first.
    assert_eq!(
        first(
            loader_entry("slot-a.conf", "1"),
            loader_entry("slot-b+3.conf", "1")
        ),
        "slot-b+3.conf"
    );
    // Entries with a sort key before entries without one.
    let mut foreign = loader_entry("slot-b.conf", "99");
    foreign.fields.sort_key = None;
    assert_eq!(
        first(loader_entry("slot-a.conf", "1"), foreign),
        "slot-a.conf"
    );
}

#[test]
fn initial_esp_has_both_slots_good_and_a_first() {
    let (dir, esp) = fresh_esp();
    assert_eq!(
        names(&dir.path().join("loader")),
        ["entries", "loader.conf"]
    );
    assert_eq!(entries(&esp), ["slot-a.conf", "slot-b.conf"]);
    assert_eq!(
        fs::read_to_string(esp.loader_conf_path()).unwrap(),
        loader_conf()
    );
    let a = fs::read_to_string(esp.entries_dir().join("slot-a.conf")).unwrap();
    assert_eq!(a, render_entry(Slot::A, 2, &boot(Slot::A, "1.0.0")));
    let state = esp.read().unwrap();
    assert_eq!(
        (state.a.status, state.b.status, state.next),
        (SlotStatus::Good, SlotStatus::Good, Slot::A)
    );
    assert_eq!(state.a.label.as_deref(), Some("Aperture 1.0.0"));
    // Rewriting replaces stale entries instead of adding to them.
    fs::write(esp.entries_dir().join("slot-b+2-1.conf"), "linux /x\n").unwrap();
    aperture_slots::write_initial_esp(dir.path(), &boot(Slot::A, "1.1.0"), &boot(Slot::B, "1.1.0"))
        .unwrap();
    assert_eq!(entries(&esp), ["slot-a.conf", "slot-b.conf"]);
    // Invalid boot descriptions are refused before anything is written.
    let err =
        aperture_slots::write_initial_esp(dir.path(), &boot(Slot::B, "x"), &boot(Slot::B, "x"))
            .unwrap_err();
    assert!(
        matches!(err, SlotsError::InvalidBoot { slot: Slot::A, .. }),
        "{err}"
    );
}

#[test]
fn install_boot_and_mark_good() {
    let (_dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    assert_eq!(entries(on_a.backend()), ["slot-a.conf", "slot-b.conf.off"]);
    assert_eq!(on_a.state().unwrap().b.status, SlotStatus::Unbootable);

    let planned = on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    assert_eq!(
        entries(on_a.backend()),
        ["slot-a.conf", "slot-b+3.conf", "slot-b.conf.off"]
    );
    assert!(
        version_of(on_a.backend(), "slot-b+3.conf") > version_of(on_a.backend(), "slot-a.conf")
    );
    assert_eq!(on_a.state().unwrap(), planned);
    assert_eq!(planned.next, Slot::B);

    let booted = on_a.backend_mut().loader_boot().unwrap();
    assert_eq!(booted, Slot::B);
    let mut on_b = SlotManager::new(on_a.into_backend(), booted);
    assert!(entries(on_b.backend()).contains(&"slot-b+2-1.conf".to_string()));
    assert_eq!(
        on_b.state().unwrap().b.status,
        SlotStatus::Trying {
            tries_left: 2,
            tries_done: 1
        }
    );

    let after = on_b.mark_good().unwrap();
    assert_eq!(
        entries(on_b.backend()),
        ["slot-a.conf", "slot-b.conf", "slot-b.conf.off"]
    );
    assert_eq!(on_b.state().unwrap(), after);
    assert_eq!((after.b.status, after.next), (SlotStatus::Good, Slot::B));
    assert_eq!(after.b.label.as_deref(), Some("Aperture 1.1.0"));
    for _ in 0..3 {
        assert_eq!(
            on_b.backend_mut().loader_boot().unwrap(),
            Slot::B,
            "good entries are not counted"
        );
    }

    let report = on_b.status_report().unwrap();
    assert_eq!(report.backend, "systemd-boot");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["slots"][1]["status"]["state"], "good");
    assert_eq!(json["slots"][1]["booted"], true);
    assert!(
        report
            .to_string()
            .contains("slot b: good (Aperture 1.1.0) [running, next boot]"),
        "{report}"
    );
}

#[test]
fn three_failed_boots_fall_back_then_reinstall() {
    let (_dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(on_a.backend_mut().loader_boot().unwrap());
    }
    assert_eq!(seen, [Slot::B, Slot::B, Slot::B, Slot::A]);
    assert_eq!(
        entries(on_a.backend()),
        ["slot-a.conf", "slot-b+0-3.conf", "slot-b.conf.off"]
    );
    let state = on_a.state().unwrap();
    assert_eq!((state.b.status, state.next), (SlotStatus::Bad, Slot::A));
    assert_eq!(
        state.b.label.as_deref(),
        Some("Aperture 1.1.0"),
        "the failed version stays visible"
    );

    let err = on_a.rollback().unwrap_err();
    assert!(
        matches!(
            err,
            SlotsError::NoGoodSlot {
                slot: Slot::B,
                status: SlotStatus::Bad
            }
        ),
        "{err}"
    );
    on_a.mark_good().unwrap();
    assert_eq!(
        entries(on_a.backend()),
        ["slot-a.conf", "slot-b+0-3.conf", "slot-b.conf.off"],
        "A was good: no write"
    );

    on_a.begin_install(Slot::B).unwrap();
    assert_eq!(entries(on_a.backend()), ["slot-a.conf", "slot-b.conf.off"]);
    on_a.arm(Slot::B, 2, &boot(Slot::B, "1.1.1")).unwrap();
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
}

#[test]
fn success_on_the_last_try_is_kept() {
    let (_dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 1, &boot(Slot::B, "1.1.0")).unwrap();
    assert_eq!(on_a.backend_mut().loader_boot().unwrap(), Slot::B);
    let mut on_b = SlotManager::new(on_a.into_backend(), Slot::B);
    assert_eq!(entries(on_b.backend())[1], "slot-b+0-1.conf");
    let after = on_b.mark_good().unwrap();
    assert_eq!(on_b.state().unwrap(), after);
    assert_eq!(after.next, Slot::B);
    assert_eq!(on_b.backend_mut().loader_boot().unwrap(), Slot::B);
}

#[test]
fn rollback_to_the_previous_good_slot() {
    let (_dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let booted = on_a.backend_mut().loader_boot().unwrap();
    let mut on_b = SlotManager::new(on_a.into_backend(), booted);
    on_b.mark_good().unwrap();
    let before = version_of(on_b.backend(), "slot-b.conf");

    let after = on_b.rollback().unwrap();
    assert_eq!(after.next, Slot::A);
    assert!(
        version_of(on_b.backend(), "slot-a.conf") > before,
        "one write of A's entry decides"
    );
    assert_eq!(on_b.state().unwrap(), after);
    assert_eq!(on_b.backend_mut().loader_boot().unwrap(), Slot::A);
}

#[test]
fn mark_good_after_systemd_bless_boot_is_a_no_op() {
    let (_dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    on_a.backend_mut().loader_boot().unwrap();
    let dir = on_a.backend().entries_dir();
    fs::rename(dir.join("slot-b+2-1.conf"), dir.join("slot-b.conf")).unwrap(); // systemd-bless-boot
    let before = fs::read_to_string(dir.join("slot-b.conf")).unwrap();
    let mut on_b = SlotManager::new(on_a.into_backend(), Slot::B);
    assert_eq!(on_b.mark_good().unwrap().b.status, SlotStatus::Good);
    assert_eq!(fs::read_to_string(dir.join("slot-b.conf")).unwrap(), before);
    // Persisting Bless again directly is idempotent too.
    on_b.backend_mut()
        .persist(&Step::Bless { slot: Slot::B })
        .unwrap();
    assert_eq!(
        entries(on_b.backend()),
        ["slot-a.conf", "slot-b.conf", "slot-b.conf.off"]
    );
}

#[test]
fn upper_case_names_from_vfat_are_handled() {
    let (_dir, mut esp) = fresh_esp();
    let dir = esp.entries_dir();
    fs::remove_file(dir.join("slot-b.conf")).unwrap();
    fs::write(
        dir.join("SLOT-B+1-2.CONF"),
        render_entry(Slot::B, 5, &boot(Slot::B, "2.0")),
    )
    .unwrap();
    assert_eq!(
        esp.read().unwrap().b.status,
        SlotStatus::Trying {
            tries_left: 1,
            tries_done: 2
        }
    );
    assert_eq!(esp.loader_boot().unwrap(), Slot::B);
    assert!(entries(&esp).contains(&"slot-b+0-3.conf".to_string()));
    esp.persist(&Step::Bless { slot: Slot::B }).unwrap();
    assert_eq!(entries(&esp), ["slot-a.conf", "slot-b.conf"]);
}

#[test]
fn stray_files_are_ignored_and_a_second_entry_reads_as_the_less_bootable_one() {
    let (_dir, esp) = fresh_esp();
    let dir = esp.entries_dir();
    fs::write(dir.join("memtest.conf"), "title memtest\nlinux /memtest\n").unwrap();
    fs::write(dir.join("slot-b+3.conf.tmp"), "half a file").unwrap();
    fs::write(dir.join("slot-a.conf.off"), "old").unwrap();
    assert_eq!(esp.read().unwrap(), {
        let mut s = aperture_slots::BootState::fresh();
        s.a.label = Some("Aperture 1.0.0".into());
        s.b.label = Some("Aperture 1.0.0".into());
        s
    });
    fs::write(
        dir.join("slot-b+3.conf"),
        render_entry(Slot::B, 9, &boot(Slot::B, "2.0")),
    )
    .unwrap();
    // slot-b.conf (good) and slot-b+3.conf (on trial): B is on trial, and its entry is the
    // newest, so it boots next, as the loader would boot it.
    let state = esp.read().unwrap();
    assert_eq!(
        (state.b.status, state.next),
        (
            SlotStatus::Trying {
                tries_left: 3,
                tries_done: 0
            },
            Slot::B
        )
    );
    // The next change removes the good duplicate and the temporary file, nothing else.
    let mut esp = esp;
    assert_eq!(esp.tidy().unwrap(), ["slot-b.conf", "slot-b+3.conf.tmp"]);
    assert_eq!(
        entries(&esp),
        [
            "memtest.conf",
            "slot-a.conf",
            "slot-a.conf.off",
            "slot-b+3.conf"
        ]
    );
    assert_eq!(esp.read().unwrap(), state);
}

#[test]
fn malformed_entries_are_ignored_or_reported() {
    let (_dir, mut esp) = fresh_esp();
    let dir = esp.entries_dir();
    // An entry the loader ignores (no kernel: an empty file a cut left, say) is no entry.
    for text in ["title no kernel\nversion 1\n", ""] {
        fs::write(dir.join("slot-b.conf"), text).unwrap();
        let state = esp.read().unwrap();
        assert_eq!(
            (state.b.status, state.next),
            (SlotStatus::Unbootable, Slot::A)
        );
    }
    assert_eq!(esp.tidy().unwrap(), ["slot-b.conf"]);

    fs::write(
        dir.join("slot-b.conf"),
        "title t\nversion one\nsort-key aperture\nlinux /k\n",
    )
    .unwrap();
    let err = esp.persist(&Step::SetNext { slot: Slot::B }).unwrap_err();
    assert!(err.to_string().contains("not a boot generation"), "{err}");

    fs::remove_file(dir.join("slot-b.conf")).unwrap();
    let err = esp.persist(&Step::SetNext { slot: Slot::B }).unwrap_err();
    assert!(
        matches!(err, SlotsError::MissingEntry { slot: Slot::B, .. }),
        "{err}"
    );

    let missing = SystemdBoot::new(dir.join("nowhere"));
    let err = missing.read().unwrap_err();
    assert!(matches!(err, SlotsError::Io { .. }), "{err}");
    assert!(err.to_string().contains("loader/entries"), "{err}");
}

#[test]
fn arm_refuses_bad_entries_and_existing_entries() {
    let (_dir, esp) = fresh_esp();
    let mut on_a = SlotManager::new(esp, Slot::A);
    on_a.begin_install(Slot::B).unwrap();
    let mut wrong = boot(Slot::B, "1.1.0");
    wrong.options = Some("root=PARTLABEL=rootfs_b ro".into());
    let err = on_a.arm(Slot::B, 3, &wrong).unwrap_err();
    assert!(
        matches!(err, SlotsError::InvalidBoot { slot: Slot::B, .. }),
        "{err}"
    );
    assert_eq!(
        on_a.state().unwrap().b.status,
        SlotStatus::Unbootable,
        "nothing written"
    );

    let crossed = SlotBoot {
        linux: "/aperture/a/vmlinuz".into(),
        ..boot(Slot::B, "1.1.0")
    };
    assert!(
        on_a.arm(Slot::B, 3, &crossed).is_err(),
        "other slot's kernel"
    );

    let esp_root = on_a.backend().esp_root().to_path_buf();
    std::fs::remove_file(esp_root.join("aperture/b/initrd.img")).unwrap();
    let err = on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap_err();
    assert!(
        err.to_string()
            .contains("initrd /aperture/b/initrd.img is not on the ESP"),
        "{err}"
    );
    common::put_boot_files(&esp_root);

    on_a.arm(Slot::B, 3, &boot(Slot::B, "1.1.0")).unwrap();
    let err = on_a
        .backend_mut()
        .persist(&Step::Arm {
            slot: Slot::B,
            tries: 3,
            boot: boot(Slot::B, "x"),
        })
        .unwrap_err();
    assert!(
        matches!(err, SlotsError::InvalidTransition { event: "arm", .. }),
        "{err}"
    );
}

#[test]
fn loader_boots_an_exhausted_entry_when_it_is_the_only_one() {
    let (_dir, mut esp) = fresh_esp();
    let dir = esp.entries_dir();
    fs::remove_file(dir.join("slot-a.conf")).unwrap();
    fs::rename(dir.join("slot-b.conf"), dir.join("slot-b+0-3.conf")).unwrap();
    assert_eq!(esp.loader_boot().unwrap(), Slot::B);
    assert_eq!(entries(&esp), ["slot-b+0-4.conf"]);
    fs::remove_file(dir.join("slot-b+0-4.conf")).unwrap();
    assert!(matches!(
        esp.loader_boot(),
        Err(SlotsError::NoBootableSlot { .. })
    ));
}
