//! The store through its public API, on real directories: put, get, replace, delete, expire,
//! evict, lock and check, with the shared counters held equal to the files on disk. Entries here
//! are files of their own (larger than packed entries) unless a test says otherwise; packed
//! entries have their own tests (pack_tests.rs).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// A fresh, empty directory for one test; removed when the test ends.
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    pub(super) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("afml-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    pub(super) fn store(&self, size_limit: u64) -> Store {
        Store::open(&self.0, size_limit, Policy::Lru, Trust::Owner).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) const GB: u64 = 1 << 30;

pub(super) fn key(n: u8) -> String {
    blake3::hash(&[n]).to_hex().to_string()
}

/// Float-like bytes that the default compression shuffles (random: too large to pack), and an
/// odd-sized byte buffer.
fn buffers(seed: u8) -> (Vec<u8>, Vec<u8>) {
    let mut floats = vec![0u8; 4096 * 8];
    blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut floats);
    let bytes: Vec<u8> = (0..1001u32).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
    (floats, bytes)
}

pub(super) fn new_entry<'a>(key: &'a str, stream: &'a [u8], buffers: &'a (Vec<u8>, Vec<u8>)) -> NewEntry<'a> {
    NewEntry {
        namespace: "labels.triple_barrier",
        key,
        stream,
        buffers: vec![(&buffers.0, 8), (&buffers.1, 1)],
        compression: Compression::Default,
        expires: None,
        compute_time: 1.5,
        protected: false,
        tags: vec!["features".into()],
        time_range: Some((10, 20)),
        metadata: "{\"run\": 1}".into(),
    }
}

pub(super) fn put(store: &Store, new: NewEntry<'_>) -> u64 {
    match store.put(new).unwrap() {
        Stored::Written { bytes, .. } => bytes,
        other => panic!("not written: {other:?}"),
    }
}

pub(super) fn hit(store: &Store, namespace: &str, key: &str) -> Box<Loaded> {
    match store.get(namespace, key).unwrap() {
        Lookup::Hit(loaded) => loaded,
        Lookup::Miss => panic!("a miss for {key}"),
        Lookup::Removed { reason, .. } => panic!("removed {key}: {reason}"),
    }
}

pub(super) fn decoded(loaded: &Loaded) -> Vec<Vec<u8>> {
    let frames = &loaded.opened.frames;
    frames
        .iter()
        .map(|range| {
            let frame = &loaded.bytes[range.clone()];
            let mut out = vec![0u8; codec::decoded_len(frame).unwrap()];
            codec::decode_into(frame, &mut out).unwrap();
            out
        })
        .collect()
}

/// Entries on disk: entry files, and the live records of packs.
pub(super) fn files_on_disk(store: &Store) -> (u64, u64) {
    let mut files = Vec::new();
    collect_files(&layout::entries_dir(store.root()), &mut files, &mut Vec::new()).unwrap();
    let entries: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == layout::ENTRY_SUFFIX)).collect();
    let packed: Vec<Scanned> = files.iter().filter(|p| layout::is_pack(p)).flat_map(|p| store.scan_pack(p)).collect();
    let file_bytes: u64 = entries.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    ((entries.len() + packed.len()) as u64, file_bytes + packed.iter().map(|s| s.bytes).sum::<u64>())
}

pub(super) fn assert_counters_match_disk(store: &Store) {
    let (count, bytes) = files_on_disk(store);
    assert_eq!((store.counter(Counter::Count), store.counter(Counter::Bytes)), (count, bytes));
}

#[test]
fn a_put_entry_reads_back_exactly_with_its_header() {
    let scratch = Scratch::new("roundtrip");
    let store = scratch.store(GB);
    let (k, data) = (key(1), buffers(1));
    let written = put(&store, new_entry(&k, b"pickle stream", &data));

    let loaded = hit(&store, "labels.triple_barrier", &k);
    assert_eq!(&loaded.bytes[loaded.opened.stream.clone()], b"pickle stream");
    assert_eq!(decoded(&loaded), vec![data.0.clone(), data.1.clone()]);
    let header = &loaded.opened.header;
    assert_eq!((header.namespace.as_str(), header.key.as_str()), ("labels.triple_barrier", k.as_str()));
    assert_eq!((header.compute_time, header.time_range), (1.5, Some((10, 20))));
    assert_eq!((header.tags.clone(), header.metadata.as_str()), (vec!["features".to_string()], "{\"run\": 1}"));
    assert_eq!(header.value_size, (13 + data.0.len() + data.1.len()) as u64);
    assert_eq!(fs::metadata(store.entry_path("labels.triple_barrier", &k).unwrap()).unwrap().len(), written);
    assert_counters_match_disk(&store);
    assert_eq!((store.counter(Counter::Sets), store.counter(Counter::Hits)), (1, 1));
    // The hit was recorded in the entry's own counters (they steer eviction).
    assert_eq!(store.scan(None).unwrap()[0].counters.hits, 1);
}

#[test]
fn every_compression_round_trips() {
    let scratch = Scratch::new("compressions");
    let store = scratch.store(GB);
    for (n, compression) in [Compression::None, Compression::Fast, Compression::Default].into_iter().enumerate() {
        let (k, data) = (key(n as u8), buffers(n as u8));
        put(&store, NewEntry { compression, ..new_entry(&k, b"s", &data) });
        let loaded = hit(&store, "labels.triple_barrier", &k);
        assert_eq!(decoded(&loaded), vec![data.0, data.1], "{compression:?}");
    }
}

#[test]
fn absent_keys_and_other_namespaces_miss_and_bad_keys_are_refused() {
    let scratch = Scratch::new("misses");
    let store = scratch.store(GB);
    let (k, data) = (key(1), buffers(1));
    assert!(matches!(store.get("labels.triple_barrier", &k).unwrap(), Lookup::Miss));
    put(&store, new_entry(&k, b"s", &data));
    assert!(matches!(store.get("labels.other", &k).unwrap(), Lookup::Miss));
    assert!(!store.contains("labels.other", &k).unwrap());
    assert!(store.contains("labels.triple_barrier", &k).unwrap());
    assert_eq!(store.counter(Counter::Misses), 2);
    for bad in ["", "ABC", &k[..63], &k.to_uppercase(), "../../etc/passwd"] {
        let err = store.get("labels.triple_barrier", bad).err().expect("a bad key was accepted");
        assert!(err.to_string().contains("64 lowercase hex digits"), "{err}");
    }
}

#[test]
fn replacing_and_deleting_keep_the_counters_equal_to_the_files() {
    let scratch = Scratch::new("replace");
    let store = scratch.store(GB);
    let (k, small, large) = (key(1), buffers(1), (vec![7u8; 100_000], vec![1u8; 3]));
    put(&store, new_entry(&k, b"first", &small));
    put(&store, NewEntry { compression: Compression::None, ..new_entry(&k, b"second", &large) });
    assert_counters_match_disk(&store);
    assert_eq!(store.counter(Counter::Count), 1);
    let loaded = hit(&store, "labels.triple_barrier", &k);
    assert_eq!(&loaded.bytes[loaded.opened.stream.clone()], b"second");

    assert!(store.delete("labels.triple_barrier", &k).unwrap());
    assert!(!store.delete("labels.triple_barrier", &k).unwrap());
    assert_eq!((store.counter(Counter::Count), store.counter(Counter::Bytes)), (0, 0));
    assert!(matches!(store.get("labels.triple_barrier", &k).unwrap(), Lookup::Miss));
}

#[test]
fn an_expired_entry_is_a_miss_and_is_removed() {
    let scratch = Scratch::new("expired");
    let store = scratch.store(GB);
    let (old, fresh, data) = (key(1), key(2), buffers(1));
    put(&store, NewEntry { expires: Some(now() - 1.0), ..new_entry(&old, b"s", &data) });
    put(&store, NewEntry { expires: Some(now() + 3600.0), ..new_entry(&fresh, b"s", &data) });
    assert!(!store.contains("labels.triple_barrier", &old).unwrap());
    assert!(matches!(store.get("labels.triple_barrier", &old).unwrap(), Lookup::Miss));
    assert!(!store.entry_path("labels.triple_barrier", &old).unwrap().exists());
    hit(&store, "labels.triple_barrier", &fresh);
    assert!(store.touch("labels.triple_barrier", &fresh, Some(now() - 1.0)).unwrap());
    assert_eq!(store.expire().unwrap(), 1);
    assert_counters_match_disk(&store);
    assert_eq!(store.counter(Counter::Count), 0);
}

#[test]
fn a_damaged_entry_is_removed_and_never_returned() {
    let scratch = Scratch::new("damaged");
    let store = scratch.store(GB);
    let (k, data) = (key(1), buffers(1));
    put(&store, new_entry(&k, b"s", &data));
    let path = store.entry_path("labels.triple_barrier", &k).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&path, &bytes).unwrap();

    assert!(matches!(store.get("labels.triple_barrier", &k).unwrap(), Lookup::Removed { .. }));
    assert!(!path.exists());
    assert!(matches!(store.get("labels.triple_barrier", &k).unwrap(), Lookup::Miss));
    assert_counters_match_disk(&store);
}

#[test]
fn an_entry_moved_to_another_keys_path_is_never_that_keys_hit() {
    let scratch = Scratch::new("moved");
    let store = scratch.store(GB);
    let (one, two, data) = (key(1), key(2), buffers(1));
    put(&store, new_entry(&one, b"the value of one", &data));
    put(&store, NewEntry { namespace: "labels.other", ..new_entry(&one, b"one elsewhere", &data) });
    // Its MAC is intact: only the header says whose entry it is.
    let target = store.entry_path("labels.triple_barrier", &two).unwrap();
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(store.entry_path("labels.triple_barrier", &one).unwrap(), &target).unwrap();
    assert!(matches!(store.get("labels.triple_barrier", &two).unwrap(), Lookup::Removed { .. }));
    assert!(!target.exists());
    // The same key in another namespace: another entry, also refused.
    fs::copy(store.entry_path("labels.other", &one).unwrap(), store.entry_path("labels.triple_barrier", &one).unwrap())
        .unwrap();
    assert!(matches!(store.get("labels.triple_barrier", &one).unwrap(), Lookup::Removed { .. }));
    let loaded = hit(&store, "labels.other", &one);
    assert_eq!(&loaded.bytes[loaded.opened.stream.clone()], b"one elsewhere");
}

#[test]
fn an_entry_larger_than_the_limit_is_not_written() {
    let scratch = Scratch::new("too-large");
    let store = scratch.store(4096);
    let (k, data) = (key(1), buffers(1));
    let stored = store.put(NewEntry { compression: Compression::None, ..new_entry(&k, b"s", &data) }).unwrap();
    assert!(matches!(stored, Stored::TooLarge { limit: 4096, .. }), "{stored:?}");
    assert!(matches!(store.get("labels.triple_barrier", &k).unwrap(), Lookup::Miss));
    assert_eq!(files_on_disk(&store), (0, 0));
}

#[test]
fn a_write_over_the_limit_evicts_the_least_recently_used_but_never_a_protected_entry() {
    let scratch = Scratch::new("evict");
    let data = (vec![5u8; 2000], vec![0u8; 1]);
    fn entry<'a>(k: &'a str, protected: bool, data: &'a (Vec<u8>, Vec<u8>)) -> NewEntry<'a> {
        NewEntry { compression: Compression::None, tags: Vec::new(), protected, ..new_entry(k, b"s", data) }
    }
    // Every entry has the same size: measure one, then allow ten and a half.
    let size = put(&scratch.store(GB), entry(&key(200), false, &data));
    let store = scratch.store(size * 21 / 2);
    assert!(store.delete("labels.triple_barrier", &key(200)).unwrap());
    let keys: Vec<String> = (0..11).map(key).collect();
    for (n, k) in keys[..10].iter().enumerate() {
        // key 1 is the oldest unused entry, but protected.
        assert_eq!(put(&store, entry(k, n == 1, &data)), size);
    }
    hit(&store, "labels.triple_barrier", &keys[0]);
    assert_eq!(store.counter(Counter::Evictions), 0);

    // Eleven entries are over the limit: down to 90% of it (9 entries) goes the least recently
    // used: keys 2 and 3, since 0 was just read and 1 is protected.
    put(&store, entry(&keys[10], false, &data));
    let present: Vec<bool> = keys.iter().map(|k| store.contains("labels.triple_barrier", k).unwrap()).collect();
    let mut expected = vec![true; 11];
    (expected[2], expected[3]) = (false, false);
    assert_eq!(present, expected);
    assert_eq!(store.counter(Counter::Evictions), 2);
    assert_counters_match_disk(&store);
    assert!(store.counter(Counter::Bytes) <= store.size_limit());
}

#[test]
fn the_key_lock_admits_one_holder_at_a_time_per_key_and_namespace() {
    let scratch = Scratch::new("lock");
    let store = scratch.store(GB);
    let (k, other) = (key(1), key(2));
    let held = store.lock("labels.triple_barrier", &k, Duration::ZERO).unwrap().expect("a free lock");
    assert!(store.lock("labels.triple_barrier", &k, Duration::ZERO).unwrap().is_none());
    assert!(store.lock("labels.triple_barrier", &other, Duration::ZERO).unwrap().is_some());
    assert!(store.lock("labels.other", &k, Duration::ZERO).unwrap().is_some());
    drop(held);
    assert!(store.lock("labels.triple_barrier", &k, Duration::ZERO).unwrap().is_some());
    assert!(store.lock("labels.triple_barrier", "not a key", Duration::ZERO).is_err());
}

#[test]
fn check_finds_damaged_misplaced_and_abandoned_files_and_fix_removes_them() {
    let scratch = Scratch::new("check");
    let store = scratch.store(GB);
    let data = buffers(1);
    let keys: Vec<String> = (0..4).map(key).collect();
    for k in &keys {
        put(&store, new_entry(k, b"s", &data));
    }
    assert!(store.check(false).unwrap().is_empty());
    let path = |n: usize| store.entry_path("labels.triple_barrier", &keys[n]).unwrap();

    let mut damaged = fs::read(path(0)).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    fs::write(path(0), damaged).unwrap();
    // Entry 1's file copied to where key 2's entry belongs (its MAC is intact).
    fs::copy(path(1), path(2)).unwrap();
    // A temp file left by a writer that no longer runs (pid_max is below 2^22 on Linux).
    let abandoned = path(3).with_file_name(format!(".x.afc.{}.0.{}", (1u32 << 22) + 1, layout::TEMP_SUFFIX));
    fs::write(&abandoned, b"partial").unwrap();

    let problems = store.check(false).unwrap();
    let mut found: Vec<(PathBuf, bool)> = problems.iter().map(|p| (p.path.clone(), p.fixed)).collect();
    found.sort();
    let mut expected = vec![(path(0), false), (path(2), false), (abandoned.clone(), false)];
    expected.sort();
    assert_eq!(found, expected, "{problems:?}");
    let misplaced = problems.iter().find(|p| p.path == path(2)).unwrap();
    assert!(misplaced.problem.contains("another key"), "{}", misplaced.problem);

    assert!(store.check(true).unwrap().iter().all(|p| p.fixed));
    assert!(!path(0).exists() && !path(2).exists() && !abandoned.exists());
    assert_counters_match_disk(&store);
    assert_eq!(store.counter(Counter::Count), 2);
    assert!(store.check(false).unwrap().is_empty());
    hit(&store, "labels.triple_barrier", &keys[1]);
    hit(&store, "labels.triple_barrier", &keys[3]);
}

#[test]
fn writers_racing_on_new_and_existing_keys_count_each_entry_once() {
    let scratch = Scratch::new("race");
    let store = scratch.store(GB);
    let data = buffers(3);
    let keys: Vec<String> = (0..8).map(key).collect();
    // Four threads put the same keys at once, twice over: each key is new to some of them and
    // existing to the others, with deletes in between, so every rename path runs.
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (store, data, keys) = (&store, &data, &keys);
            s.spawn(move || {
                for round in 0..2 {
                    for k in keys {
                        put(store, new_entry(k, &[t, round], data));
                    }
                    if t == 0 && round == 0 {
                        store.delete("labels.triple_barrier", &keys[0]).unwrap();
                    }
                }
            });
        }
    });
    assert_counters_match_disk(&store);
    assert_eq!(store.counter(Counter::Count), keys.len() as u64);
    for k in &keys {
        let loaded = hit(&store, "labels.triple_barrier", k);
        assert_eq!(decoded(&loaded), vec![data.0.clone(), data.1.clone()]);
    }
}

#[test]
fn a_write_of_many_pieces_keeps_them_in_order() {
    let scratch = Scratch::new("pieces");
    fs::create_dir_all(&scratch.0).unwrap();
    let path = scratch.0.join("pieces");
    let big = vec![9u8; 3 << 20];
    let pieces: Vec<&[u8]> = vec![b"", b"head", &big, b"", b"tail"];
    let mut file = File::create(&path).unwrap();
    write_all_pieces(&mut file, &pieces).unwrap();
    drop(file);
    assert_eq!(fs::read(&path).unwrap(), pieces.concat());
}
