//! Packed entries (pack.rs) through the store's public API, with two `Store`s on one directory
//! standing for two processes: each keeps its own index of a pack and must see the other's
//! appends, tombstones and compactions.

use std::fs::{self, OpenOptions};
use std::io::Write;

use super::tests::{assert_counters_match_disk, hit, key, new_entry, put, Scratch, GB};
use super::*;

const NS: &str = "labels.triple_barrier";

/// A small value (packed): a pickle stream only.
fn small<'a>(k: &'a str, stream: &'a [u8]) -> NewEntry<'a> {
    static NO_BUFFERS: (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    NewEntry { buffers: Vec::new(), ..new_entry(k, stream, &NO_BUFFERS) }
}

fn stream_of(store: &Store, k: &str) -> Vec<u8> {
    let loaded = hit(store, NS, k);
    loaded.bytes[loaded.opened.stream.clone()].to_vec()
}

fn is_miss(store: &Store, k: &str) -> bool {
    matches!(store.get(NS, k).unwrap(), Lookup::Miss)
}

/// The file holding the entry, where its sealed form starts and its length.
fn located(store: &Store, k: &str) -> (PathBuf, u64, u64) {
    store.locate(NS, k).unwrap().expect("an entry")
}

/// The pack an entry of `k` would be packed in.
fn located_in(store: &Store, k: &str) -> PathBuf {
    layout::pack_path(store.root(), NS, k)
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 1;
    fs::write(path, bytes).unwrap();
}

#[test]
fn small_entries_are_packed_and_two_stores_see_each_others_writes() {
    let scratch = Scratch::new("pack-two");
    let (a, b) = (scratch.store(GB), scratch.store(GB));
    let k = key(1);
    put(&a, small(&k, b"first"));
    let (path, offset, len) = located(&a, &k);
    assert!(layout::is_pack(&path), "{path:?}");
    // After the pack's header (a 48-byte frame and a 16-byte id) and the record's frame.
    assert_eq!((offset, fs::metadata(&path).unwrap().len()), (64 + 48, 64 + 48 + len));
    assert!(!a.entry_path(NS, &k).unwrap().exists());
    assert_eq!(stream_of(&b, &k), b"first");

    // Overwritten by one, read by the other; the newest record wins.
    put(&b, small(&k, b"second"));
    assert_eq!(stream_of(&a, &k), b"second");
    assert_eq!(a.current_mac(NS, &k).unwrap(), b.current_mac(NS, &k).unwrap());
    assert_counters_match_disk(&a);
    assert_eq!(a.counter(Counter::Count), 1);

    // Deleted by one: a miss for both, and the counters follow.
    assert!(a.delete(NS, &k).unwrap());
    assert!(is_miss(&b, &k) && is_miss(&a, &k));
    assert!(!b.contains(NS, &k).unwrap());
    assert!(!b.delete(NS, &k).unwrap());
    assert_eq!((a.counter(Counter::Count), a.counter(Counter::Bytes)), (0, 0));
    assert!(a.scan(None).unwrap().is_empty());
}

#[test]
fn a_value_that_grows_moves_to_a_file_and_back_to_the_pack() {
    let scratch = Scratch::new("pack-grow");
    let (a, b) = (scratch.store(GB), scratch.store(GB));
    let k = key(2);
    let mut noise = vec![0u8; 20_000];
    blake3::Hasher::new().update(b"noise").finalize_xof().fill(&mut noise);
    let large: (Vec<u8>, Vec<u8>) = (noise, Vec::new());
    put(&a, small(&k, b"small"));
    assert_eq!(stream_of(&b, &k), b"small");

    put(&a, NewEntry { buffers: vec![(&large.0, 1)], ..small(&k, b"large") });
    let (path, offset, _) = located(&b, &k);
    assert_eq!((path.clone(), offset), (a.entry_path(NS, &k).unwrap(), 0));
    let loaded = hit(&b, NS, &k);
    assert_eq!(&loaded.bytes[loaded.opened.stream.clone()], b"large");
    assert_eq!(super::tests::decoded(&loaded), vec![large.0.clone()]);
    assert_eq!(a.scan(None).unwrap().len(), 1);

    put(&b, small(&k, b"small again"));
    assert!(layout::is_pack(&located(&a, &k).0));
    assert!(!path.exists());
    assert_eq!(stream_of(&a, &k), b"small again");
    assert_counters_match_disk(&a);
    assert_eq!(a.counter(Counter::Count), 1);
}

/// Keys whose entries share one pack, in the order asked.
fn keys_of_one_pack(store: &Store, n: usize) -> Vec<String> {
    let pack = layout::pack_path(store.root(), NS, &key(0));
    let named = |i: u32| blake3::hash(&i.to_le_bytes()).to_hex().to_string();
    (0..100_000).map(named).filter(|k| layout::pack_path(store.root(), NS, k) == pack).take(n).collect()
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

/// What a power loss can leave of the last record appended: all but its last byte.
fn cut_last_byte(path: &Path) {
    let size = fs::metadata(path).unwrap().len();
    OpenOptions::new().write(true).open(path).unwrap().set_len(size - 1).unwrap();
}

#[test]
fn a_torn_tail_hides_the_key_it_wrote_and_the_next_writer_ends_that_key() {
    let scratch = Scratch::new("pack-torn");
    let a = scratch.store(GB);
    let keys = keys_of_one_pack(&a, 3);
    let (one, two, three) = (&keys[0], &keys[1], &keys[2]);
    put(&a, small(one, b"one"));
    put(&a, small(three, b"three"));
    let (pack, offset, len) = located(&a, one);
    let whole = fs::metadata(&pack).unwrap().len();
    // The first half of a newer record of `one`: its writer was killed, or a power loss cut
    // short an overwrite that had returned. Either way `one`'s older record is not its value.
    let bytes = fs::read(&pack).unwrap();
    let record = &bytes[(offset - 48) as usize..(offset + len) as usize]; // frame and entry
    append_bytes(&pack, &record[..record.len() / 2 + 10]);

    // While a writer holds the pack's lock, the tail is an append under way: until its `set`
    // returns, the older value is the key's value.
    let lock_path = layout::pack_lock_path(a.root(), &pack);
    let appending = lock::acquire(&lock_path, std::time::Duration::ZERO, Trust::Owner).unwrap().unwrap();
    assert_eq!(stream_of(&scratch.store(GB), one), b"one");
    drop(appending);

    let b = scratch.store(GB);
    assert!(is_miss(&b, one) && is_miss(&a, one), "a torn newer record of the key: a miss");
    assert_eq!(stream_of(&b, three), b"three");
    put(&b, small(two, b"two"));
    // The tail is cut off and `one` gets a tombstone: a miss for every store, also later.
    let (_, offset_two, len_two) = located(&a, two);
    assert_eq!(offset_two, whole + 48 + 48, "the torn tail was not cut off (or no tombstone)");
    assert_eq!(fs::metadata(&pack).unwrap().len(), offset_two + len_two);
    for store in [&a, &b, &scratch.store(GB)] {
        assert!(is_miss(store, one));
        assert_eq!((stream_of(store, two), stream_of(store, three)), (b"two".to_vec(), b"three".to_vec()));
    }
    assert!(a.check(false).unwrap().is_empty());
    assert_counters_match_disk(&a);
}

#[test]
fn a_tail_too_short_for_its_frame_ends_every_record_of_its_pack() {
    let scratch = Scratch::new("pack-torn-frame");
    let a = scratch.store(GB);
    let keys = keys_of_one_pack(&a, 4);
    for k in &keys[..3] {
        put(&a, small(k, k.as_bytes()));
    }
    let other = key(7);
    put(&a, small(&other, b"other pack"));
    let (pack, ..) = located(&a, &keys[0]);
    // Twenty bytes of a frame: whose record it began cannot be told.
    append_bytes(&pack, &b"AFPK"[..].repeat(5));

    let b = scratch.store(GB);
    for k in &keys[..3] {
        assert!(is_miss(&a, k) && is_miss(&b, k), "{k}");
    }
    assert_eq!(stream_of(&b, &other), b"other pack");
    put(&b, small(&keys[3], b"new"));
    for store in [&a, &b, &scratch.store(GB)] {
        for k in &keys[..3] {
            assert!(is_miss(store, k), "{k}");
        }
        assert_eq!(stream_of(store, &keys[3]), b"new");
    }
    assert!(a.check(false).unwrap().is_empty());
    assert_counters_match_disk(&a);
    assert_eq!(a.counter(Counter::Count), 2);
}

/// Damage on disk never rolls an overwrite or a delete back: the record it damaged may have
/// been the key's newest, so the key's older record is not served in its place.
#[test]
fn damage_to_a_keys_newest_record_never_brings_an_older_value_back() {
    let scratch = Scratch::new("pack-rollback");
    let a = scratch.store(GB);
    let keys = keys_of_one_pack(&a, 3);
    let (first, second, third) = (&keys[0], &keys[1], &keys[2]);

    // Overwritten, then the newest record cut short by one byte (a power loss): not the old value.
    put(&a, small(first, b"old"));
    put(&a, small(first, b"new"));
    let (pack, ..) = located(&a, first);
    cut_last_byte(&pack);
    assert!(is_miss(&a, first) && is_miss(&scratch.store(GB), first));

    // Deleted, then the tombstone cut short: still deleted.
    put(&a, small(second, b"deleted"));
    assert!(a.delete(NS, second).unwrap());
    cut_last_byte(&pack);
    assert!(is_miss(&a, second) && is_miss(&scratch.store(GB), second));

    // Overwritten, then a bit of the newest record's frame flipped in place, records after it.
    put(&a, small(third, b"old"));
    put(&a, small(third, b"new"));
    let (_, offset, _) = located(&a, third);
    put(&a, small(second, b"after"));
    flip_byte(&pack, offset - 48 + 20);
    let fresh = scratch.store(GB);
    assert!(is_miss(&fresh, third), "the damaged newest record of a key brought its old value back");
    assert_eq!(stream_of(&fresh, second), b"after");
    // A store that read the record before the damage serves it (its entry still verifies).
    assert_eq!(stream_of(&a, third), b"new");
}

#[test]
fn a_damaged_record_is_never_served_and_is_removed_alone() {
    let scratch = Scratch::new("pack-damaged");
    let (a, b) = (scratch.store(GB), scratch.store(GB));
    let keys: Vec<String> = (0..40).map(key).collect();
    for k in &keys {
        put(&a, small(k, k.as_bytes()));
    }
    let (pack, offset, len) = located(&a, &keys[0]);
    // A byte of the value, then one of the MAC: each a miss, never a changed value.
    flip_byte(&pack, offset + len - 40);
    assert!(matches!(b.get(NS, &keys[0]).unwrap(), Lookup::Removed { .. }));
    assert!(is_miss(&a, &keys[0]) && is_miss(&b, &keys[0]));
    let (pack, offset, len) = located(&a, &keys[1]);
    flip_byte(&pack, offset + len - 1);
    assert!(matches!(a.get(NS, &keys[1]).unwrap(), Lookup::Removed { .. }));
    for k in &keys[2..] {
        assert_eq!(stream_of(&b, k), k.as_bytes());
    }
    assert_counters_match_disk(&a);
    assert_eq!(a.counter(Counter::Count), 38);
}

#[test]
fn a_damaged_frame_ends_the_records_before_it_and_the_next_writer_keeps_the_records_after_it() {
    let scratch = Scratch::new("pack-frame");
    let writer = scratch.store(GB);
    // Eight keys of one pack, then others.
    let pack = layout::pack_path(writer.root(), NS, &key(0));
    let mut keys = keys_of_one_pack(&writer, 8);
    keys.extend((0..32).map(key));
    for k in &keys {
        put(&writer, small(k, k.as_bytes()));
    }
    let mut in_pack: Vec<(u64, &String)> = keys
        .iter()
        .map(|k| (located(&writer, k), k))
        .filter(|((p, ..), _)| *p == pack)
        .map(|((_, o, _), k)| (o, k))
        .collect();
    in_pack.sort();
    assert!(in_pack.len() >= 8, "{} records in the pack", in_pack.len());
    // The length in the frame of a record in the middle: its frame no longer checks, so the
    // key it wrote cannot be told, and every record before it may have been superseded by it.
    let middle = in_pack.len() / 2;
    let (offset, _) = in_pack[middle];
    flip_byte(&pack, offset - 48 + 5);
    let lost: Vec<&String> = in_pack[..=middle].iter().map(|(_, k)| *k).collect();
    let kept = |k: &&String| !lost.contains(k);

    let reader = scratch.store(GB);
    for k in &lost {
        assert!(is_miss(&reader, k), "{k}");
    }
    for k in keys.iter().filter(kept) {
        assert_eq!(stream_of(&reader, k), k.as_bytes(), "{k}");
    }
    // A writer appends after the records that follow the damage; it does not cut them off.
    let (_, last) = in_pack[in_pack.len() - 1];
    put(&reader, small(last, b"rewritten"));
    let later = scratch.store(GB);
    assert_eq!(stream_of(&later, last), b"rewritten");
    for &(_, k) in in_pack[middle + 1..].iter().filter(|(_, k)| *k != last) {
        assert_eq!(stream_of(&later, k), k.as_bytes(), "{k}");
    }

    let problems = later.check(false).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path == pack && problems[0].problem.contains("damaged"), "{problems:?}");
    assert!(later.check(true).unwrap().iter().all(|p| p.fixed));
    assert!(later.check(false).unwrap().is_empty());
    assert_counters_match_disk(&later);
    assert_eq!(later.counter(Counter::Count), (keys.len() - lost.len()) as u64);
    for k in keys.iter().filter(kept).filter(|k| *k != last) {
        assert_eq!(stream_of(&scratch.store(GB), k), k.as_bytes(), "{k}");
    }
}

#[test]
fn check_reports_damaged_records_and_tails_and_fix_drops_them() {
    let scratch = Scratch::new("pack-check");
    let a = scratch.store(GB);
    let keys: Vec<String> = (0..20).map(key).collect();
    for k in &keys {
        put(&a, small(k, b"value"));
    }
    assert!(a.check(false).unwrap().is_empty());
    let (pack, offset, _) = located(&a, &keys[3]);
    flip_byte(&pack, offset + 45);
    let (torn, ..) = located(&a, &keys[5]);
    OpenOptions::new().append(true).open(&torn).unwrap().write_all(b"AFPK partial").unwrap();
    let problems = a.check(false).unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| p.path == pack && p.problem.contains(&keys[3])), "{problems:?}");
    assert!(problems.iter().any(|p| p.path == torn && p.problem.contains("after its last whole record")));

    assert!(a.check(true).unwrap().iter().all(|p| p.fixed));
    assert!(a.check(false).unwrap().is_empty());
    assert_counters_match_disk(&a);
    // The tail was too short for a frame: whichever key it wrote, the torn pack's keys end.
    let ended: Vec<&String> = keys.iter().filter(|k| **k == keys[3] || located_in(&a, k) == torn).collect();
    assert_eq!(a.counter(Counter::Count), (keys.len() - ended.len()) as u64);
    for k in &keys {
        if ended.contains(&k) {
            assert!(is_miss(&a, k), "{k}");
        } else {
            assert_eq!(stream_of(&a, k), b"value");
        }
    }
}

#[test]
fn compaction_keeps_the_live_records_and_other_stores_follow_it() {
    let scratch = Scratch::new("pack-compact");
    let (a, b) = (scratch.store(GB), scratch.store(GB));
    // One shard's keys, overwritten and deleted until the pack is mostly dead.
    let keys: Vec<String> = (0..20_000u32)
        .map(|n| blake3::hash(&n.to_le_bytes()).to_hex().to_string())
        .filter(|k| k.starts_with("ab"))
        .collect();
    let value = |k: &str, round: u8| [k.as_bytes(), &[round; 1500]].concat();
    for k in &keys {
        put(&a, small(k, &value(k, 0)));
    }
    let (pack, ..) = located(&a, &keys[0]);
    let before = file_identity(&pack).unwrap();
    assert_eq!(stream_of(&b, &keys[0]), value(&keys[0], 0)); // b has indexed the old pack
    for round in [2, 1] {
        for k in &keys[..keys.len() / 2] {
            put(&b, small(k, &value(k, round)));
        }
    }
    for k in &keys[keys.len() / 2..keys.len() * 3 / 4] {
        assert!(a.delete(NS, k).unwrap());
    }
    assert_ne!(file_identity(&pack).unwrap(), before, "the pack was not compacted");
    let live: u64 = a.scan(None).unwrap().iter().map(|s| s.bytes + 48).sum();
    assert!(fs::metadata(&pack).unwrap().len() < 2 * live + (64 << 10));
    let (half, three_quarters) = (keys.len() / 2, keys.len() * 3 / 4);
    for (n, k) in keys.iter().enumerate() {
        for store in [&a, &b] {
            if n < half {
                assert_eq!(stream_of(store, k), value(k, 1));
            } else if n < three_quarters {
                assert!(is_miss(store, k));
            } else {
                assert_eq!(stream_of(store, k), value(k, 0));
            }
        }
    }
    assert_counters_match_disk(&b);
}

#[test]
fn scans_evict_touch_and_access_counters_work_on_packed_entries() {
    let scratch = Scratch::new("pack-evict");
    let a = scratch.store(GB);
    let keys: Vec<String> = (0..10).map(key).collect();
    let size = put(&a, small(&keys[0], b"x"));
    let b = scratch.store(size * 21 / 2);
    for k in &keys[1..] {
        put(&b, small(k, b"x"));
    }
    hit(&b, NS, &keys[0]);
    a.record_access(NS, &keys[1], 5, now_ns()).unwrap();
    let scanned = a.scan(Some(NS)).unwrap();
    assert_eq!(scanned.len(), 10);
    let hits = |k: &str| scanned.iter().find(|s| s.header.key == k).unwrap().counters.hits;
    assert_eq!((hits(&keys[0]), hits(&keys[1]), hits(&keys[2])), (1, 5, 0));
    assert!(b.touch(NS, &keys[2], Some(now() + 60.0)).unwrap());
    assert!(b.touch(NS, &keys[3], Some(now() - 1.0)).unwrap());
    assert_eq!(stream_of(&a, &keys[2]), b"x");
    assert_eq!(a.expire().unwrap(), 1);

    // Eleven entries are over the limit: down to nine, the least recently used first.
    put(&b, small(&key(10), b"x"));
    put(&b, small(&key(11), b"x"));
    let present: Vec<bool> = (0..12).map(|n| a.contains(NS, &key(n)).unwrap()).collect();
    assert_eq!(present.iter().filter(|p| **p).count(), 9, "{present:?}");
    assert!(present[0] && present[1] && !present[3], "{present:?}");
    assert_counters_match_disk(&a);
    assert_eq!(a.clear().unwrap(), 9);
    assert_eq!((a.counter(Counter::Count), a.counter(Counter::Bytes)), (0, 0));
}

#[test]
fn a_packed_entry_exports_and_imports_like_a_file() {
    let scratch = Scratch::new("pack-export");
    let a = scratch.store(GB);
    let k = key(7);
    put(&a, small(&k, b"exported"));
    let receiver = [9u8; 32];
    let whole = a.export_entry(NS, &k, &receiver).unwrap().unwrap();
    let mut export = a.open_export(NS, &k, &receiver).unwrap().unwrap();
    let mut streamed = vec![0u8; export.next_len(usize::MAX)];
    export.fill(&mut streamed).unwrap();
    let mut mac = vec![0u8; export.next_len(usize::MAX)];
    export.fill(&mut mac).unwrap();
    assert_eq!([streamed, mac].concat(), whole);

    let other = Scratch::new("pack-import");
    let b = other.store(GB);
    put(&b, small(&k, b"older"));
    let staged = b.stage_import(&mut whole.as_slice(), &receiver).unwrap();
    b.commit_import(staged).unwrap();
    assert_eq!(stream_of(&b, &k), b"exported");
    assert!(layout::is_pack(&located(&b, &k).0));
    assert_eq!(b.scan(None).unwrap().len(), 1);
    assert_counters_match_disk(&b);
}

#[test]
fn a_pack_others_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("pack-trust");
    let a = scratch.store(GB);
    let k = key(8);
    put(&a, small(&k, b"private"));
    let (pack, ..) = located(&a, &k);
    assert_eq!(fs::metadata(&pack).unwrap().permissions().mode() & 0o777, 0o600);
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o620)).unwrap();
    let refused = a.get(NS, &k).err().expect("a group-writable pack was read");
    assert!(matches!(refused, Error::Untrusted { .. }), "{refused}");
    assert!(refused.to_string().contains("group-writable") && refused.to_string().contains("chmod 600"), "{refused}");
    assert!(a.put(small(&k, b"other")).is_err());
}

#[test]
fn keys_sharing_an_index_slot_are_misses_never_each_others_values() {
    let scratch = Scratch::new("pack-slot");
    let a = scratch.store(GB);
    // Equal in their first 9 bytes (the shard and the index slot), different after.
    let (one, two) =
        (format!("{}{}", "ab".repeat(9), "01".repeat(23)), format!("{}{}", "ab".repeat(9), "02".repeat(23)));
    put(&a, small(&one, b"one"));
    put(&a, small(&two, b"two"));
    assert!(!matches!(a.get(NS, &one).unwrap(), Lookup::Hit(_)));
    assert_eq!(stream_of(&a, &two), b"two");
    let b = scratch.store(GB);
    assert!(!matches!(b.get(NS, &one).unwrap(), Lookup::Hit(_)));
}
