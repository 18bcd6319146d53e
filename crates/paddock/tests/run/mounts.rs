//! `--mount SRC:DST[:ro|rw]`.

use std::os::unix::fs::symlink;

use crate::common::{run, setup, sh_ok, shared_tempdir, unique, write_file};

#[test]
fn mounts_are_read_only_by_default() {
    let _g = setup();
    let dir = shared_tempdir(true);
    write_file(&dir.path().join("hello.txt"), "hello from the host\n");
    for spec in [
        format!("{}:/data", dir.path().display()),
        format!("{}:/data:ro", dir.path().display()),
    ] {
        let out = run(
            &["--mount", &spec],
            &[
                "sh",
                "-c",
                "cat /data/hello.txt; touch /data/new 2>&1; echo rc=$?; echo x >> /data/hello.txt; echo rc=$?",
            ],
        );
        out.expect_code(0, &format!("--mount {spec}"));
        let text = out.stdout_str();
        assert!(
            text.starts_with("hello from the host\n"),
            "the mounted file is readable\n{}",
            out.describe()
        );
        assert!(
            text.contains("Read-only file system")
                && text.contains("rc=1\n")
                && text.ends_with("rc=2\n"),
            "writes to a read-only mount fail with EROFS\n{}",
            out.describe()
        );
        assert!(
            !dir.path().join("new").exists(),
            "a file appeared on the host through a read-only mount"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hello.txt")).expect("read back"),
            "hello from the host\n",
            "the host file changed through a read-only mount"
        );
    }
}

#[test]
fn rw_mounts_are_writable_and_the_host_sees_the_result() {
    let _g = setup();
    let dir = shared_tempdir(true);
    let spec = format!("{}:/home/user/data:rw", dir.path().display());
    let out = run(
        &["--mount", &spec],
        &[
            "sh",
            "-c",
            "echo written-inside > /home/user/data/out.txt && mkdir /home/user/data/sub && echo ok",
        ],
    );
    out.expect_code(0, "writing through an rw mount");
    assert_eq!(out.stdout_str(), "ok\n", "{}", out.describe());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).expect("the host sees out.txt"),
        "written-inside\n"
    );
    assert!(dir.path().join("sub").is_dir(), "the host sees sub/");
    // The file is owned by an unprivileged host uid, never by host root.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir.path().join("out.txt")).expect("stat");
    assert!(
        meta.uid() >= 0x4000_0000,
        "a file written in the sandbox is owned by host uid {} (expected the sandbox's unprivileged range)",
        meta.uid()
    );
}

#[test]
fn a_single_file_can_be_mounted() {
    let _g = setup();
    let dir = shared_tempdir(false);
    let file = dir.path().join("input.txt");
    write_file(&file, "single file\n");
    let spec = format!("{}:/home/user/input.txt", file.display());
    let out = run(&["--mount", &spec], &["cat", "/home/user/input.txt"]);
    out.expect_code(0, "cat a mounted file");
    assert_eq!(out.stdout_str(), "single file\n", "{}", out.describe());
}

/// Symlinks inside a mounted directory resolve inside the sandbox, so they
/// can never reach a host file outside the mount.
#[test]
fn symlinks_in_a_mount_cannot_lead_out_of_it() {
    let _g = setup();
    let secret_dir = shared_tempdir(false);
    let secret_text = unique("secret");
    let secret = secret_dir.path().join("secret.txt");
    write_file(&secret, &format!("{secret_text}\n"));
    let dir = shared_tempdir(false);
    write_file(&dir.path().join("plain.txt"), "plain\n");
    // Absolute link to a host-only file, relative link climbing out of the
    // mount to the same file, links to host-only paths and to the host root.
    symlink(&secret, dir.path().join("abs")).expect("symlink abs");
    let climb = format!("../../../../../../..{}", secret.display());
    symlink(&climb, dir.path().join("rel")).expect("symlink rel");
    symlink("/root/.bashrc", dir.path().join("rootrc")).expect("symlink rootrc");
    symlink("/", dir.path().join("hostroot")).expect("symlink hostroot");
    symlink(secret_dir.path(), dir.path().join("secretdir")).expect("symlink dir");

    let spec = format!("{}:/data", dir.path().display());
    let script = format!(
        "cat /data/plain.txt; \
         for l in abs rel rootrc; do cat /data/$l 2>&1; done; \
         cat /data/hostroot{s} 2>&1; cat /data/secretdir/secret.txt 2>&1; \
         ls /data/hostroot/ 2>&1; true",
        s = secret.display()
    );
    let out = run(&["--mount", &spec], &["sh", "-c", &script]);
    out.expect_code(0, "following symlinks in a mount");
    let text = out.stdout_str();
    assert!(
        text.starts_with("plain\n"),
        "the mount works\n{}",
        out.describe()
    );
    assert!(
        !text.contains(&secret_text),
        "a symlink in the mount led to a host file outside it\n{}",
        out.describe()
    );
    let bashrc = std::fs::read_to_string("/root/.bashrc").unwrap_or_default();
    if let Some(line) = bashrc.lines().find(|l| l.trim().len() > 12) {
        assert!(
            !text.contains(line.trim()),
            "a symlink in the mount led to /root/.bashrc\n{}",
            out.describe()
        );
    }
    // `hostroot` is the sandbox's own root: it has no /root, /work.
    assert!(
        !text.lines().any(|l| l == "root" || l == "work"),
        "a symlink to / showed the host root\n{}",
        out.describe()
    );
}

#[test]
fn several_mounts() {
    let _g = setup();
    let a = shared_tempdir(false);
    let b = shared_tempdir(false);
    write_file(&a.path().join("a"), "A\n");
    write_file(&b.path().join("b"), "B\n");
    let sa = format!("{}:/data", a.path().display());
    let sb = format!("{}:/home/user/deep/inner:ro", b.path().display());
    let out = sh_ok(
        &["--mount", &sa, "--mount", &sb],
        "cat /data/a /home/user/deep/inner/b",
    );
    assert_eq!(out, "A\nB\n");
}
