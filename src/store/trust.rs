//! Who may write a cache directory. Whoever can write it can make its users unpickle (plant an
//! entry and the key that seals it), so the store refuses a directory, `entries/` or `mac.key`
//! that someone else could change, as ssh refuses a loose key file, and creates everything
//! private whatever the umask. A team cache on one machine opts in to trusting its group
//! ([`Trust::Group`]); a world-writable directory is never trusted.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

const SETGID: u32 = 0o2000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// Only the owner (and root) can change the directory.
    #[default]
    Owner,
    /// Every member of the directory's group can, and is trusted to: each of them can make every
    /// other unpickle.
    Group,
}

impl Trust {
    pub fn dir_mode(self) -> u32 {
        match self {
            Trust::Owner => 0o700,
            Trust::Group => 0o770,
        }
    }

    /// Files written whole, then only read: entries, temp files, `mac.key`, function names.
    pub fn file_mode(self) -> u32 {
        match self {
            Trust::Owner => 0o600,
            Trust::Group => 0o640,
        }
    }

    /// Files every user of the directory opens read-write: the counters (mapped and updated in
    /// place) and the lock files.
    pub fn shared_mode(self) -> u32 {
        match self {
            Trust::Owner => 0o600,
            Trust::Group => 0o660,
        }
    }

    /// Creates a directory and its missing parents, each with exactly [`Trust::dir_mode`]
    /// (keeping the setgid bit a team directory passes on); existing ones are left as they are.
    pub fn create_dir(self, dir: &Path) -> Result<()> {
        let mut created = self.create_one(dir);
        if let (Err(e), Some(parent)) = (&created, dir.parent()) {
            if e.kind() == ErrorKind::NotFound {
                // Once: a parent that exists and still yields NotFound (a dangling symbolic
                // link in its place, /proc) would have this call itself for ever.
                self.create_dir(parent)?;
                created = self.create_one(dir);
            }
        }
        created.map_err(|e| Error::io("cannot create the directory", dir, e))
    }

    fn create_one(self, dir: &Path) -> std::io::Result<()> {
        match fs::DirBuilder::new().mode(self.dir_mode()).create(dir) {
            Ok(()) => {
                // The umask may have taken bits away (the group's, in a team cache).
                let inherited = fs::metadata(dir).map(|m| m.mode() & SETGID).unwrap_or(0);
                fs::set_permissions(dir, Permissions::from_mode(self.dir_mode() | inherited))
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a new file, read-write, with exactly `mode` whatever the umask.
    pub fn create_new(self, path: &Path, mode: u32) -> std::io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(path)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        Ok(file)
    }

    /// Opens a file read-write, creating it (and its directory) with exactly `mode` if missing.
    pub fn open_or_create(self, path: &Path, mode: u32) -> Result<File> {
        let open = || OpenOptions::new().read(true).write(true).open(path);
        match open() {
            Ok(file) => return Ok(file),
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(Error::io("cannot open", path, e)),
            Err(_) => {}
        }
        let created = match self.create_new(path, mode) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.create_dir(path.parent().expect("store files sit in a directory"))?;
                self.create_new(path, mode)
            }
            other => other,
        };
        match created {
            Ok(file) => Ok(file),
            // Another process created it first.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => open().map_err(|e| Error::io("cannot open", path, e)),
            Err(e) => Err(Error::io("cannot create", path, e)),
        }
    }

    /// Refuses a directory (the cache directory, `entries/`) that someone this trust does not
    /// cover could write.
    pub fn check_dir(self, dir: &Path) -> Result<()> {
        let meta = fs::metadata(dir).map_err(|e| Error::io("cannot stat", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io("cannot use", dir, std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        self.check_owner(dir, &meta)?;
        let mode = meta.mode() & 0o7777;
        let shown = format!("(mode {:o})", mode & 0o777);
        if mode & 0o002 != 0 {
            let fix = match self {
                Trust::Owner => format!("run `chmod 700 {}`", dir.display()),
                Trust::Group => format!("run `chmod 2770 {}`; world-writable is never accepted", dir.display()),
            };
            let problem = format!("is world-writable {shown}: anyone on this machine could make this process unpickle what they put there");
            return Err(untrusted(dir, problem, fix));
        }
        if mode & 0o020 != 0 && self == Trust::Owner {
            let problem = format!(
                "is group-writable {shown}: every member of its group could make this process unpickle what they put there"
            );
            let fix = format!(
                "run `chmod 700 {}`, or, for a team cache on this machine, trust the group: \
                 afml_cache.configure(trust_group=True), Cache(..., trust_group=True) or AFML_CACHE_TRUST_GROUP=1",
                dir.display()
            );
            return Err(untrusted(dir, problem, fix));
        }
        Ok(())
    }

    /// Refuses a MAC key that someone this trust does not cover could read (and forge entries
    /// with) or write.
    pub fn check_key(self, key: &Path) -> Result<()> {
        let meta = fs::metadata(key).map_err(|e| Error::io("cannot stat", key, e))?;
        self.check_owner(key, &meta)?;
        let (forbidden, fix) = match self {
            Trust::Owner => (0o077, 600),
            Trust::Group => (0o027, 640),
        };
        if meta.mode() & forbidden != 0 {
            let problem = format!(
                "is readable or writable by others (mode {:o}): whoever reads it can seal entries this process will unpickle",
                meta.mode() & 0o777
            );
            return Err(untrusted(key, problem, format!("run `chmod {fix} {}`", key.display())));
        }
        Ok(())
    }

    /// Refuses a file every user of the directory writes in place (a pack of small entries)
    /// that someone this trust does not cover could write.
    pub fn check_shared_file(self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        self.check_owner(path, meta)?;
        let (forbidden, fix) = match self {
            Trust::Owner => (0o022, 600),
            Trust::Group => (0o002, 660),
        };
        let mode = meta.mode() & 0o777;
        if mode & forbidden != 0 {
            let who = if mode & 0o002 != 0 { "world-writable" } else { "group-writable" };
            let problem =
                format!("is {who} (mode {mode:o}): others could make this process unpickle what they put there");
            return Err(untrusted(path, problem, format!("run `chmod {fix} {}`", path.display())));
        }
        Ok(())
    }

    fn check_owner(self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        // root can change anything anyway; a team directory may belong to another member.
        if meta.uid() == me || meta.uid() == 0 || (self == Trust::Group && in_my_groups(meta.gid())) {
            return Ok(());
        }
        let problem = format!(
            "is owned by another user (uid {}), who could make this process unpickle what they put there",
            meta.uid()
        );
        let fix = "use a cache directory of your own (afml_cache.configure(directory=...) or Cache(directory))";
        Err(untrusted(path, problem, fix.into()))
    }
}

fn untrusted(path: &Path, problem: String, fix: String) -> Error {
    Error::Untrusted { path: path.to_path_buf(), problem, fix }
}

/// Whether this process is a member of group `gid`.
fn in_my_groups(gid: u32) -> bool {
    // SAFETY: getegid cannot fail; getgroups writes at most `groups.len()` ids.
    unsafe {
        if libc::getegid() == gid {
            return true;
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let n = libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr());
        n > 0 && groups[..n as usize].contains(&gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("afml-trust-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn created_directories_and_files_have_exactly_their_mode() {
        let dir = scratch("modes");
        for trust in [Trust::Owner, Trust::Group] {
            let nested = dir.join(format!("{trust:?}")).join("a").join("b");
            trust.create_dir(&nested).unwrap();
            assert_eq!(mode(&nested), trust.dir_mode());
            assert_eq!(mode(nested.parent().unwrap()), trust.dir_mode());
            let shared = nested.join("c").join("counters");
            drop(trust.open_or_create(&shared, trust.shared_mode()).unwrap());
            assert_eq!(mode(&shared), trust.shared_mode());
            drop(trust.open_or_create(&shared, trust.shared_mode()).unwrap()); // reopens
            let file = nested.join("entry");
            drop(trust.create_new(&file, trust.file_mode()).unwrap());
            assert_eq!(mode(&file), trust.file_mode());
            assert!(trust.create_new(&file, trust.file_mode()).is_err(), "a new file replaced an old one");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loose_directories_and_keys_are_refused_with_the_fix() {
        let dir = scratch("loose");
        Trust::Owner.create_dir(&dir).unwrap();
        Trust::Owner.check_dir(&dir).unwrap();
        let refused = |trust: Trust, mode: u32| {
            fs::set_permissions(&dir, Permissions::from_mode(mode)).unwrap();
            trust.check_dir(&dir).err().map(|e| e.to_string())
        };
        assert!(refused(Trust::Owner, 0o770).unwrap().contains("group-writable"));
        assert!(refused(Trust::Owner, 0o755).is_none());
        assert!(refused(Trust::Group, 0o2770).is_none());
        let world = refused(Trust::Group, 0o2777).unwrap();
        assert!(world.contains("world-writable") && world.contains("chmod 2770"), "{world}");
        assert!(refused(Trust::Owner, 0o777).unwrap().contains(&format!("chmod 700 {}", dir.display())));
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        let key = dir.join("mac.key");
        drop(Trust::Owner.create_new(&key, 0o640).unwrap());
        assert!(Trust::Owner.check_key(&key).unwrap_err().to_string().contains("chmod 600"));
        Trust::Group.check_key(&key).unwrap();
        fs::set_permissions(&key, Permissions::from_mode(0o660)).unwrap();
        assert!(Trust::Group.check_key(&key).unwrap_err().to_string().contains("chmod 640"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
