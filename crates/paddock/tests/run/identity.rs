//! Who the program is: uid/gid 1000 `user`, hostname `sandbox`, no
//! capabilities, no_new_privs, seccomp, an unprivileged host uid range.

use std::thread;

use crate::common::{run, setup, sh_ok};

#[test]
fn runs_as_uid_and_gid_1000_named_user() {
    let _g = setup();
    let out = run(&[], &["id", "-u"]);
    out.expect_code(0, "id -u");
    assert_eq!(
        out.stdout_str().trim(),
        "1000",
        "uid inside\n{}",
        out.describe()
    );
    let out = run(&[], &["id", "-g"]);
    out.expect_code(0, "id -g");
    assert_eq!(
        out.stdout_str().trim(),
        "1000",
        "gid inside\n{}",
        out.describe()
    );
    let out = run(&[], &["whoami"]);
    out.expect_code(0, "whoami");
    assert_eq!(
        out.stdout_str().trim(),
        "user",
        "user name\n{}",
        out.describe()
    );
    let groups = sh_ok(&[], "id -G");
    assert_eq!(groups.trim(), "1000", "supplementary groups: only 1000");
}

#[test]
fn hostname_is_sandbox() {
    let _g = setup();
    let out = run(&[], &["hostname"]);
    out.expect_code(0, "hostname");
    assert_eq!(out.stdout_str().trim(), "sandbox", "{}", out.describe());
    let out = run(&[], &["cat", "/proc/sys/kernel/hostname"]);
    out.expect_code(0, "cat /proc/sys/kernel/hostname");
    assert_eq!(out.stdout_str().trim(), "sandbox", "{}", out.describe());
}

#[test]
fn no_capabilities_no_new_privs_seccomp() {
    let _g = setup();
    let status = sh_ok(&[], "cat /proc/self/status");
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} missing from /proc/self/status:\n{status}"))
    };
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            field(cap),
            "0000000000000000",
            "{cap} must be empty inside the sandbox\n{status}"
        );
    }
    assert_eq!(
        field("NoNewPrivs"),
        "1",
        "no_new_privs must be set\n{status}"
    );
    assert_eq!(
        field("Seccomp"),
        "2",
        "a seccomp filter must be installed (mode 2)\n{status}"
    );
    // The same holds for the interpreter the brief cares most about.
    let py = run(
        &[
            "--lang",
            "python",
            "--code",
            "print(open('/proc/self/status').read())",
        ],
        &[],
    );
    py.expect_code(0, "python reading /proc/self/status");
    assert!(
        py.stdout_str().contains("CapEff:\t0000000000000000"),
        "{}",
        py.describe()
    );
}

/// (inside, host, count) triples of a uid_map / gid_map.
fn parse_map(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let n: Vec<u64> = l
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("bad map line {l:?}")))
                .collect();
            assert_eq!(n.len(), 3, "map line {l:?}");
            (n[0], n[1], n[2])
        })
        .collect()
}

fn check_map(map: &[(u64, u64, u64)], what: &str, raw: &str) {
    assert!(!map.is_empty(), "{what} is empty:\n{raw}");
    for &(inside, host, count) in map {
        assert!(
            host >= 0x4000_0000,
            "{what}: inside {inside} maps to host {host} (0x{host:x}), below the unprivileged \
             range 0x40000000:\n{raw}"
        );
        assert!(count >= 1, "{what}: empty range:\n{raw}");
    }
    // Sandbox root and user are mapped, and never to host root.
    for id in [0u64, 1000] {
        let mapped = map
            .iter()
            .find(|&&(i, _, c)| id >= i && id < i + c)
            .map(|&(i, h, _)| h + (id - i));
        let host = mapped.unwrap_or_else(|| panic!("{what}: id {id} is not mapped:\n{raw}"));
        assert_ne!(host, 0, "{what}: id {id} maps to host 0:\n{raw}");
    }
}

#[test]
fn uid_and_gid_map_to_an_unprivileged_host_range() {
    let _g = setup();
    let out = sh_ok(
        &[],
        "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map",
    );
    let (uid, gid) = out
        .split_once("--\n")
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    check_map(&parse_map(uid), "uid_map", uid);
    check_map(&parse_map(gid), "gid_map", gid);
}

#[test]
fn concurrent_sandboxes_get_distinct_host_ranges() {
    let _g = setup();
    let script = "cat /proc/self/uid_map; sleep 1";
    let handles: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || sh_ok(&[], script)))
        .collect();
    let maps: Vec<Vec<(u64, u64, u64)>> = handles
        .into_iter()
        .map(|h| parse_map(&h.join().expect("sandbox thread")))
        .collect();
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            for &(_, ha, ca) in a {
                for &(_, hb, cb) in b {
                    let overlap = ha < hb + cb && hb < ha + ca;
                    assert!(
                        !overlap,
                        "two live sandboxes share host ids: {a:?} vs {b:?} (all: {maps:?})"
                    );
                }
            }
        }
    }
}
