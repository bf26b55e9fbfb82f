//! Directory snapshots come back with what the index records: setuid/setgid bits under their
//! owner (as root), mtimes before the epoch to the nanosecond, symlinks' own mtimes, hard
//! links (also when only some of their names are restored) and holes in sparse files.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use bulwark_tests::Env;

fn as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn build_tree(src: &Path) {
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::create_dir_all(src.join("shared")).unwrap();

    fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
    if as_root() {
        std::os::unix::fs::chown(src.join("suid"), Some(1234), Some(1234)).unwrap();
        std::os::unix::fs::chown(src.join("shared"), Some(1234), Some(1234)).unwrap();
    }
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::set_permissions(src.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();

    // 1.25 s before the epoch.
    let old = File::create(src.join("old")).unwrap();
    old.set_times(FileTimes::new().set_modified(UNIX_EPOCH - Duration::from_millis(1250)))
        .unwrap();

    std::os::unix::fs::symlink("suid", src.join("link")).unwrap();
    let touched = Command::new("touch")
        .args(["-h", "-d", "@1000000000.5"])
        .arg(src.join("link"))
        .status()
        .unwrap();
    assert!(touched.success());

    fs::write(src.join("a/data"), b"shared by three names").unwrap();
    fs::hard_link(src.join("a/data"), src.join("b/one")).unwrap();
    fs::hard_link(src.join("a/data"), src.join("b/two")).unwrap();

    // 64 MiB with one byte of data in the middle.
    let sparse = File::create(src.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"x", 32 << 20).unwrap();
}

#[test]
fn a_restored_tree_keeps_special_bits_times_hard_links_and_holes() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_tree(&src);
    let src_sparse = fs::metadata(src.join("sparse")).unwrap();
    assert!(
        src_sparse.blocks() * 512 < 1 << 20,
        "the scratch file system does not keep holes; this test cannot say anything here"
    );
    env.ok(&["backup", "--database", "t", "--path", src.to_str().unwrap()]);

    let dst = env.path("dst");
    let out = env.json(&[
        "restore",
        "latest",
        "--database",
        "t",
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(out["hardlinks"], 2, "{out}");

    let suid = fs::metadata(dst.join("suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o6755);
    let shared = fs::metadata(dst.join("shared")).unwrap();
    assert_eq!(shared.mode() & 0o7777, 0o2775);
    if as_root() {
        assert_eq!((suid.uid(), suid.gid()), (1234, 1234));
        assert_eq!((shared.uid(), shared.gid()), (1234, 1234));
    }

    let old = fs::metadata(dst.join("old")).unwrap();
    assert_eq!((old.mtime(), old.mtime_nsec()), (-2, 750_000_000));

    let link = fs::symlink_metadata(dst.join("link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        (link.mtime(), link.mtime_nsec()),
        (1_000_000_000, 500_000_000)
    );

    let data = fs::metadata(dst.join("a/data")).unwrap();
    assert_eq!(data.nlink(), 3);
    for name in ["b/one", "b/two"] {
        let m = fs::metadata(dst.join(name)).unwrap();
        assert_eq!(m.ino(), data.ino(), "{name} is not a link to a/data");
    }
    assert_eq!(
        fs::read(dst.join("b/two")).unwrap(),
        b"shared by three names"
    );

    let sparse = fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "restored sparse file takes {} bytes",
        sparse.blocks() * 512
    );
    let bytes = fs::read(dst.join("sparse")).unwrap();
    assert_eq!(bytes[32 << 20], b'x');
    assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1);
    // A file without holes stays fully allocated.
    assert!(fs::metadata(dst.join("a/data")).unwrap().blocks() > 0);

    // Only b/: its first name gets the data, the second links to it.
    let part = env.path("part");
    env.ok(&[
        "restore",
        "latest",
        "--database",
        "t",
        "--target",
        part.to_str().unwrap(),
        "--include",
        "b",
    ]);
    assert!(!part.join("a").exists());
    let one = fs::metadata(part.join("b/one")).unwrap();
    let two = fs::metadata(part.join("b/two")).unwrap();
    assert_eq!((one.ino(), one.nlink()), (two.ino(), 2));
    assert_eq!(
        fs::read(part.join("b/one")).unwrap(),
        b"shared by three names"
    );
}
