//! `--rootfs DIR`: a template's root filesystem instead of the host's.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::common::{run, setup, shared_tempdir, write_file};

/// A minimal Linux tree: dash, libc and the dynamic loader, merged-/usr
/// links, and a marker file the host does not have.
fn minimal_tree(root: &Path) {
    for dir in [
        "usr/bin",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib64",
        "usr/share",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let copy = |from: &str, to: &str| {
        std::fs::copy(from, root.join(to)).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    };
    copy("/usr/bin/dash", "usr/bin/sh");
    copy(
        "/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
    );
    copy(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib64/ld-linux-x86-64.so.2",
    );
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link)).unwrap();
    }
    write_file(&root.join("usr/share/marker"), "from the template\n");
}

#[test]
fn the_sandbox_sees_the_template_tree_not_the_hosts() {
    let _g = setup();
    let dir = shared_tempdir(false);
    minimal_tree(dir.path());
    let root = dir.path().to_str().unwrap();
    let out = run(
        &["--rootfs", root],
        &[
            "/bin/sh",
            "-c",
            "read l < /usr/share/marker; echo $l; for f in /usr/bin/*; do echo $f; done; \
             echo x > /tmp/w && echo wrote",
        ],
    );
    out.expect_code(0, "a shell from the template");
    assert_eq!(
        out.stdout_str(),
        "from the template\n/usr/bin/sh\nwrote\n",
        "{}",
        out.describe()
    );
    // The host's programs are not there.
    run(&["--rootfs", root], &["python3", "-c", "1"])
        .expect_code(127, "python3 is not in the template");
    // The template stays untouched.
    assert!(!dir.path().join("tmp").exists());
}

#[test]
fn a_bad_rootfs_is_refused_clearly() {
    let _g = setup();
    let dir = shared_tempdir(false);
    let no_usr = dir.path().to_str().unwrap().to_string();
    for (arg, says) in [
        ("/nonexistent-rootfs-dir", "does not exist"),
        ("/etc/passwd", "not a directory"),
        (no_usr.as_str(), "no usr/"),
    ] {
        let out = run(&["--rootfs", arg], &["/bin/true"]);
        out.expect_code(2, &format!("--rootfs {arg}"));
        assert!(out.stderr_str().contains(says), "{}", out.describe());
    }
    run(&["--rootfs", "relative/dir"], &["/bin/true"]).expect_code(2, "a relative --rootfs");
}
