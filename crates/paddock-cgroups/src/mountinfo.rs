//! Parsers for `/proc/self/mountinfo` and `/proc/self/cgroup`.
//!
//! Both parsers are pure functions over text so that detection can be tested
//! against fake files. Paths in the parsed values are kept as the kernel shows
//! them (mountinfo octal escapes such as `\040` are decoded).

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, reduced to what cgroup detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 4: the path inside the mounted filesystem that is the root of
    /// this mount (for cgroup mounts, the cgroup path that appears at the
    /// mount point; `/` unless a sub-tree was bind-mounted).
    pub root: PathBuf,
    /// Field 5: where the filesystem is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (first field after the ` - ` separator).
    pub fstype: String,
    /// Super-block options (third field after the separator); for cgroup v1
    /// mounts these name the controllers, e.g. `rw,cpu,cpuacct`.
    pub super_options: Vec<String>,
}

impl Mount {
    /// Whether `option` is one of the comma-separated super options.
    pub fn has_option(&self, option: &str) -> bool {
        self.super_options.iter().any(|o| o == option)
    }
}

/// Parses the full text of a mountinfo file.
///
/// Returns an error message naming the 1-based line number for a malformed
/// line. Empty lines are skipped.
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let separator = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| format!("line {}: no ' - ' separator", index + 1))?;
        // id, parent id, major:minor, root, mount point, options are mandatory.
        if separator < 6 {
            return Err(format!(
                "line {}: expected at least 6 fields before ' - ', found {separator}",
                index + 1
            ));
        }
        let after = &fields[separator + 1..];
        let (fstype, super_options) = match after {
            [fstype, _source, options, ..] => (*fstype, *options),
            [fstype, _source] => (*fstype, ""),
            _ => {
                return Err(format!(
                    "line {}: expected filesystem type and source after ' - '",
                    index + 1
                ));
            }
        };
        mounts.push(Mount {
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            fstype: unescape(fstype),
            super_options: super_options
                .split(',')
                .filter(|o| !o.is_empty())
                .map(unescape)
                .collect(),
        });
    }
    Ok(mounts)
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash) the kernel uses in mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (u32::from(bytes[i + 1] - b'0') << 6)
                | (u32::from(bytes[i + 2] - b'0') << 3)
                | u32::from(bytes[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Hierarchy id; `0` for the cgroup2 unified hierarchy.
    pub hierarchy_id: u32,
    /// Controllers bound to the hierarchy (empty for cgroup2). Named
    /// hierarchies appear as `name=systemd`.
    pub controllers: Vec<String>,
    /// The process's cgroup path relative to the hierarchy root, starting
    /// with `/`.
    pub path: PathBuf,
}

/// Parses the full text of a `/proc/<pid>/cgroup` file.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, String> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "line {}: expected 'id:controllers:path', got {line:?}",
                index + 1
            ));
        };
        let hierarchy_id = id
            .parse::<u32>()
            .map_err(|e| format!("line {}: bad hierarchy id {id:?}: {e}", index + 1))?;
        // A cgroup removed while we are in it shows as "/path (deleted)".
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(format!(
                "line {}: cgroup path {path:?} is not absolute",
                index + 1
            ));
        }
        entries.push(ProcCgroup {
            hierarchy_id,
            controllers: controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            path: PathBuf::from(path),
        });
    }
    Ok(entries)
}

/// Maps a cgroup path (as shown in `/proc/self/cgroup`) to a directory under
/// the mount point of a hierarchy whose mount root (mountinfo field 4) is
/// `mount_root`.
///
/// Returns `None` when `cgroup_path` is not inside `mount_root`, i.e. the
/// process's cgroup is not visible through this mount.
pub fn cgroup_dir(mount: &Mount, cgroup_path: &Path) -> Option<PathBuf> {
    let relative = cgroup_path.strip_prefix(&mount.root).ok()?;
    Some(mount.mount_point.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 master:2 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 /docker/abc /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 31 0:39 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
";
        let mounts = parse_mountinfo(text).expect("valid mountinfo");
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[1].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[1].fstype, "cgroup");
        assert!(mounts[1].has_option("cpu"));
        assert!(mounts[1].has_option("cpuacct"));
        assert!(!mounts[1].has_option("memory"));
        assert_eq!(mounts[2].root, Path::new("/docker/abc"));
        assert_eq!(mounts[2].fstype, "cgroup2");
        assert_eq!(mounts[3].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn rejects_malformed_mountinfo() {
        assert!(parse_mountinfo("1 2 3 / /x rw cgroup cgroup rw\n").is_err());
        assert!(parse_mountinfo("1 2 / - cgroup cgroup rw\n").is_err());
        assert!(parse_mountinfo("1 2 0:1 / /x rw -\n").is_err());
    }

    #[test]
    fn parses_proc_cgroup() {
        let text = "\
9:name=systemd:/
4:memory:/process_api/b9be
2:cpu,cpuacct:/x:y
0::/user.slice/a (deleted)
";
        let entries = parse_proc_cgroup(text).expect("valid");
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].controllers, vec!["name=systemd"]);
        assert_eq!(entries[1].path, Path::new("/process_api/b9be"));
        assert_eq!(entries[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(entries[2].path, Path::new("/x:y"));
        assert_eq!(entries[3].hierarchy_id, 0);
        assert!(entries[3].controllers.is_empty());
        assert_eq!(entries[3].path, Path::new("/user.slice/a"));
        assert!(parse_proc_cgroup("x:memory:/\n").is_err());
        assert!(parse_proc_cgroup("4:memory\n").is_err());
        assert!(parse_proc_cgroup("4:memory:relative\n").is_err());
    }

    #[test]
    fn strips_mount_root() {
        let mount = Mount {
            root: PathBuf::from("/docker/abc"),
            mount_point: PathBuf::from("/sys/fs/cgroup/memory"),
            fstype: "cgroup".into(),
            super_options: vec!["rw".into(), "memory".into()],
        };
        assert_eq!(
            cgroup_dir(&mount, Path::new("/docker/abc/inner")),
            Some(PathBuf::from("/sys/fs/cgroup/memory/inner"))
        );
        assert_eq!(
            cgroup_dir(&mount, Path::new("/docker/abc")),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(cgroup_dir(&mount, Path::new("/docker/abcd")), None);
        assert_eq!(cgroup_dir(&mount, Path::new("/other")), None);
    }
}
