#[test]
fn dump() {
    for r in paddock_jail::seccomp::POLICY {
        println!("| `{}` | {:?} | {:?} | {} |", r.syscall, r.when, r.action, r.reason);
    }
    println!("LEN {}", paddock_jail::seccomp::sandbox_filter().unwrap().len());
}
