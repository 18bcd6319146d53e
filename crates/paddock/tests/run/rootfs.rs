//! `--rootfs DIR`: a template's root filesystem instead of the host's.

use crate::common::{minimal_tree, run, setup, shared_tempdir};

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
