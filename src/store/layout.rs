//! Where things live in a cache directory.
//!
//! ```text
//! <root>/                      0700
//!   mac.key                    32 random bytes, 0600: the key of every entry's MAC
//!   stats                      shared counters (see stats.rs)
//!   evict.lock                 held by the one process evicting at a time
//!   entries/<namespace>/<d0d1>/<digest>.afc
//!   entries/<namespace>/<d0d1>.pack                 small entries of the shard (see pack.rs)
//!   locks/<d0d1>/<digest>-<namespace digest>.lock   single-flight locks
//!   locks/packs/<namespace>/<d0d1>.lock              held by a pack's writer
//! ```
//! One level of 256 shards: 4,000 entries a directory at a million entries, 40,000 at ten million
//! (ext4 and xfs index large directories), while a new cache creates at most 256 directories
//! (a second level made most of the first 65,536 writes pay for a `mkdir`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const ENTRY_SUFFIX: &str = "afc";
pub const TEMP_SUFFIX: &str = "tmp";
pub const PACK_SUFFIX: &str = "pack";

pub fn check_digest(digest: &str) -> Result<()> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "entries are stored by digest, 64 lowercase hex digits, got {digest:?}; pass the key \
             through afml_cache.fingerprint() first"
        )))
    }
}

/// A namespace as a directory name: safe characters kept, others escaped as `%XX`, long names
/// shortened with a digest so that distinct namespaces never share a directory.
pub fn namespace_dir(namespace: &str) -> String {
    let mut out = String::with_capacity(namespace.len());
    for (i, b) in namespace.bytes().enumerate() {
        let safe = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    if out.len() > 120 {
        let digest = blake3::hash(namespace.as_bytes()).to_hex();
        out.truncate(100);
        out.push('~');
        out.push_str(&digest[..16]);
    }
    out
}

pub fn entries_dir(root: &Path) -> PathBuf {
    root.join("entries")
}

pub fn entry_path(root: &Path, namespace: &str, digest: &str) -> PathBuf {
    entries_dir(root).join(namespace_dir(namespace)).join(&digest[..2]).join(format!("{digest}.{ENTRY_SUFFIX}"))
}

/// The pack of small entries of the key's shard (see pack.rs).
pub fn pack_path(root: &Path, namespace: &str, digest: &str) -> PathBuf {
    entries_dir(root).join(namespace_dir(namespace)).join(format!("{}.{PACK_SUFFIX}", &digest[..2]))
}

/// The lock writers of `pack` hold.
pub fn pack_lock_path(root: &Path, pack: &Path) -> PathBuf {
    let namespace = namespace_of(pack).unwrap_or_default();
    let shard = pack.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    root.join("locks").join("packs").join(namespace).join(format!("{shard}.lock"))
}

/// The pack and digest of the key whose entry file is `entry` (None for another path).
pub fn pack_of_entry(entry: &Path) -> Option<(PathBuf, String)> {
    let digest = entry.file_stem()?.to_str()?;
    let shard = entry.parent()?;
    Some((shard.with_extension(PACK_SUFFIX), digest.to_string()))
}

/// The namespace directory name of an entry file (entries/<namespace>/<shard>/<file>) or of a
/// pack (entries/<namespace>/<shard>.pack).
pub fn namespace_of(path: &Path) -> Option<&str> {
    let dir = if is_pack(path) { path.parent()? } else { path.parent()?.parent()? };
    dir.file_name()?.to_str()
}

pub fn is_pack(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == PACK_SUFFIX)
}

pub fn lock_path(root: &Path, namespace: &str, digest: &str) -> PathBuf {
    let ns = blake3::hash(namespace.as_bytes()).to_hex();
    root.join("locks").join(&digest[..2]).join(format!("{digest}-{}.lock", &ns[..16]))
}

/// A temp file beside `path`, named after the writing process so that cleanup can tell a dead
/// writer's leftovers from a live writer's work in progress.
pub fn temp_path(path: &Path, sequence: u64) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    path.with_file_name(format!(".{name}.{}.{sequence}.{TEMP_SUFFIX}", std::process::id()))
}

/// The writer's process id, from a temp file's name.
pub fn temp_writer(file_name: &str) -> Option<u32> {
    let stem = file_name.strip_prefix('.')?.strip_suffix(&format!(".{TEMP_SUFFIX}"))?;
    let mut parts = stem.rsplitn(3, '.');
    let _sequence = parts.next()?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_map_to_distinct_safe_directories() {
        assert_eq!(namespace_dir("features.frac_diff"), "features.frac_diff");
        assert_eq!(namespace_dir("a/b"), "a%2Fb");
        assert_eq!(namespace_dir("../x"), "%2E.%2Fx");
        assert_eq!(namespace_dir(""), "%00");
        let long_a = "n".repeat(200) + "a";
        let long_b = "n".repeat(200) + "b";
        assert_ne!(namespace_dir(&long_a), namespace_dir(&long_b));
        assert!(namespace_dir(&long_a).len() <= 120);
    }

    #[test]
    fn temp_names_carry_the_writer() {
        let t = temp_path(Path::new("/c/entries/ns/ab/abcd.afc"), 7);
        let name = t.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_writer(name), Some(std::process::id()));
        assert_eq!(temp_writer("abcd.afc"), None);
    }

    #[test]
    fn entries_are_stored_by_digest() {
        assert!(check_digest(&"a1".repeat(32)).is_ok());
        assert!(check_digest("../../etc/passwd").is_err());
        assert!(check_digest(&"A1".repeat(32)).is_err());
    }
}
