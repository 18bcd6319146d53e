//! Files in and out of a sandbox: binary-safe, streamed, confined.

use paddock_sandbox::ErrorKind;
use paddock_types::Limits;

use crate::util::{sandbox, sandbox_with, sh};

fn pattern(len: usize) -> Vec<u8> {
    // Every byte value, in an order that is not a simple repeat.
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_files_round_trip() {
    let sb = sandbox().await;
    let all: Vec<u8> = (0..=255u8).collect();
    let info = sb.write_file("bytes.bin", &all).await.unwrap();
    assert_eq!((info.size, info.kind.as_str()), (256, "file"));
    assert_eq!(sb.read_file("/home/user/bytes.bin").await.unwrap(), all);
    // The sandbox sees the same bytes.
    assert_eq!(
        sh(&sb, "od -An -tu1 -N4 -j252 bytes.bin | tr -s ' '").await,
        " 252 253 254 255\n"
    );
    // Empty files too.
    sb.write_file("/tmp/empty", b"").await.unwrap();
    assert_eq!(sb.read_file("/tmp/empty").await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_file_streams_in_and_out() {
    let sb = sandbox().await;
    let data = pattern(50 << 20);
    let info = sb.write_file("big.bin", &data).await.unwrap();
    assert_eq!(info.size, 50 << 20);
    let size = sh(&sb, "stat -c %s big.bin").await;
    assert_eq!(size.trim(), (50u64 << 20).to_string());
    let back = sb.read_file("big.bin").await.unwrap();
    assert!(back == data, "the 50 MB file came back different");
    // Streaming into a writer works the same.
    let mut sink = Vec::new();
    sb.read_file_to("big.bin", &mut sink).await.unwrap();
    assert_eq!(sink.len(), data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_list_make_remove_rename() {
    let sb = sandbox().await;
    sb.mkdir("a/b/c", true).await.unwrap();
    sb.write_file("a/b/c/f.txt", b"hello").await.unwrap();
    sh(&sb, "chmod 600 a/b/c/f.txt; ln -s f.txt a/b/c/link").await;
    let list = sb.list_dir("a/b/c").await.unwrap();
    let names: Vec<(&str, &str, u64)> = list
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str(), e.size))
        .collect();
    assert_eq!(names, [("f.txt", "file", 5), ("link", "symlink", 5)]);
    assert_eq!(list[0].mode, 0o600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((list[0].mtime - now).abs() < 600, "mtime {}", list[0].mtime);

    // mkdir without parents, on an existing path, fails clearly.
    let e = sb.mkdir("x/y", false).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{e}");
    let e = sb.mkdir("a", false).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::AlreadyExists), "{e}");

    sb.rename("a/b/c/f.txt", "a/g.txt").await.unwrap();
    assert_eq!(sb.read_file("a/g.txt").await.unwrap(), b"hello");
    let e = sb.remove("a", false).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::InvalidRequest), "{e}");
    assert!(e.to_string().contains("not empty"), "{e}");
    sb.remove("a", true).await.unwrap();
    let e = sb.stat("a").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{e}");
    let e = sb.read_file("missing").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{e}");
    let e = sb.read_file("/home/user").await.unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_reach_the_host() {
    let sb = sandbox().await;
    let marker = crate::common::unique("files-escape");
    let host_file = std::env::temp_dir().join(&marker);
    std::fs::write(&host_file, "host secret").unwrap();
    let host_path = host_file.to_str().unwrap().to_string();

    // The host's own files are not there, however they are named.
    for path in [
        host_path.clone(),
        format!("../../..{host_path}"),
        format!("/tmp/../..{host_path}"),
    ] {
        let e = sb.read_file(&path).await.unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{path}: {e}");
    }
    // `..` ends at the sandbox's root: this is the sandbox's passwd.
    let passwd = sb.read_file("../../../../etc/passwd").await.unwrap();
    let passwd = String::from_utf8(passwd).unwrap();
    assert!(passwd.contains("user:x:1000"), "{passwd}");
    assert!(
        !passwd.contains("daemon:"),
        "the host's passwd leaked: {passwd}"
    );
    // A symlink to / shows the sandbox's root, not the host's.
    sh(&sb, "ln -s / root-link; ln -s /root root-home").await;
    let root: Vec<String> = sb
        .list_dir("root-link")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(root.contains(&"usr".to_string()), "{root:?}");
    for host_only in ["root", "work", "var", "opt", "srv"] {
        assert!(
            !root.contains(&host_only.to_string()),
            "{host_only} visible: {root:?}"
        );
    }
    let e = sb.list_dir("root-home").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{e}");
    // Writing "through" the link lands in the sandbox's own /tmp.
    sb.write_file(&format!("root-link{host_path}"), b"x")
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host secret");
    assert_eq!(sb.read_file(&host_path).await.unwrap(), b"x");
    // Read-only parts of the tree stay read-only.
    let e = sb.write_file("/usr/bin/evil", b"x").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::PermissionDenied), "{e}");
    let e = sb.write_file("/etc/passwd", b"x").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::PermissionDenied), "{e}");
    std::fs::remove_file(&host_file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_give_clear_errors() {
    let sb = sandbox_with(Limits {
        disk_bytes: 32 << 20,
        ..Limits::default()
    })
    .await;
    // Known to be too big before sending.
    let e = sb.write_file("big", &pattern(40 << 20)).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::TooLarge), "{e}");
    // Too big only once streamed: the disk fills up.
    sb.write_file("filler", &pattern(20 << 20)).await.unwrap();
    let data = pattern(20 << 20);
    let e = sb
        .write_file_from("more", &data[..], None, None)
        .await
        .unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::TooLarge), "{e}");
    assert!(
        e.to_string().contains("space") || e.to_string().contains("large"),
        "{e}"
    );
    // The failed write left nothing behind and the sandbox works on.
    let names: Vec<String> = sb
        .list_dir(".")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["filler"]);
    assert_eq!(sh(&sb, "echo ok").await, "ok\n");
}
