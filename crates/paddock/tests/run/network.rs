//! `--network none|loopback`: only the sandbox's own loopback.

use std::net::TcpListener;

use crate::common::{run, setup};

const MODES: [&[&str]; 3] = [&[], &["--network", "none"], &["--network", "loopback"]];

#[test]
fn host_loopback_services_are_unreachable() {
    let _g = setup();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a host listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let code = format!(
        "import socket\n\
         for host in ('127.0.0.1', 'localhost'):\n\
         \x20   try:\n\
         \x20       socket.create_connection((host, {port}), timeout=3)\n\
         \x20       print('CONNECTED', host)\n\
         \x20   except OSError as e:\n\
         \x20       print(type(e).__name__, e.errno)\n"
    );
    for mode in MODES {
        let out = run(mode, &["python3", "-c", &code]);
        out.expect_code(0, &format!("connecting to the host listener with {mode:?}"));
        let text = out.stdout_str();
        assert!(
            !text.contains("CONNECTED"),
            "the sandbox ({mode:?}) reached a service on the host's 127.0.0.1:{port}\n{}",
            out.describe()
        );
        assert!(
            text.contains("ConnectionRefusedError"),
            "connecting to 127.0.0.1:{port} is refused (nothing listens in the sandbox's own \
             loopback)\n{}",
            out.describe()
        );
        match listener.accept() {
            Ok((_, peer)) => panic!("the host listener accepted a connection from {peer}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "accept: {e}"),
        }
    }
}

#[test]
fn only_lo_exists() {
    let _g = setup();
    for mode in MODES {
        let out = run(mode, &["cat", "/proc/net/dev"]);
        out.expect_code(0, "cat /proc/net/dev");
        let text = out.stdout_str();
        let ifaces: Vec<&str> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, vec!["lo"], "interfaces with {mode:?}:\n{text}");
    }
}

#[test]
fn the_sandboxs_own_loopback_works() {
    let _g = setup();
    let code = "import socket\n\
                s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n\
                c = socket.create_connection(s.getsockname(), timeout=5)\n\
                a, _ = s.accept(); c.sendall(b'ping'); print(a.recv(4).decode())\n\
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))\n\
                v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v.sendto(b'dgram', u.getsockname())\n\
                print(u.recv(5).decode())\n";
    for mode in MODES {
        let out = run(mode, &["python3", "-c", code]);
        out.expect_code(0, &format!("loopback with {mode:?}"));
        assert_eq!(out.stdout_str(), "ping\ndgram\n", "{}", out.describe());
    }
}

#[test]
fn outside_addresses_are_unreachable() {
    let _g = setup();
    let code = "import socket\n\
                for addr in [('10.0.0.1', 80), ('192.0.2.1', 80), ('8.8.8.8', 53)]:\n\
                \x20   try:\n\
                \x20       socket.create_connection(addr, timeout=2); print('CONNECTED', addr)\n\
                \x20   except OSError as e:\n\
                \x20       print('failed', e.errno)\n";
    for mode in MODES {
        let out = run(mode, &["python3", "-c", code]);
        out.expect_code(0, "connecting out");
        assert!(
            !out.stdout_str().contains("CONNECTED"),
            "the sandbox reached an outside address\n{}",
            out.describe()
        );
        // Network unreachable (101), not a timeout: there is no route at all.
        assert_eq!(
            out.stdout_str().matches("failed 101").count(),
            3,
            "outside addresses are unreachable (ENETUNREACH)\n{}",
            out.describe()
        );
    }
}

#[test]
fn raw_and_packet_sockets_fail() {
    let _g = setup();
    let code = "import socket\n\
                for name, fam, typ, proto in [\n\
                \x20   ('inet-raw', socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),\n\
                \x20   ('inet-raw-tcp', socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),\n\
                \x20   ('inet6-raw', socket.AF_INET6, socket.SOCK_RAW, 58),\n\
                \x20   ('packet-raw', socket.AF_PACKET, socket.SOCK_RAW, 0),\n\
                \x20   ('packet-dgram', socket.AF_PACKET, socket.SOCK_DGRAM, 0)]:\n\
                \x20   try:\n\
                \x20       socket.socket(fam, typ, proto); print(name, 'OPENED')\n\
                \x20   except PermissionError as e:\n\
                \x20       print(name, 'PermissionError')\n\
                \x20   except OSError as e:\n\
                \x20       print(name, 'OSError', e.errno)\n";
    for mode in MODES {
        let out = run(mode, &["python3", "-c", code]);
        out.expect_code(0, "opening raw sockets");
        let text = out.stdout_str();
        assert_eq!(
            text.lines()
                .filter(|l| l.ends_with(" PermissionError"))
                .count(),
            5,
            "raw and packet sockets must fail with PermissionError ({mode:?})\n{}",
            out.describe()
        );
    }
}
