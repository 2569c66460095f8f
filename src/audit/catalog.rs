//! Advertiser catalogs: which product ids exist. Built for 10 million ids per
//! node: each id is kept as a 64-bit fingerprint (xxh3) in one flat
//! open-addressed table 80% full, laid out in fingerprint order, so a lookup,
//! hit or miss, is one hash and usually one cache line, and memory is about
//! 10 bytes per product whatever the id length (`cargo bench --bench
//! catalog`: 65-73 ns a hit or a miss at 10M ids, each missing the caches).
//! Two different ids share a fingerprint with probability 2^-64 per pair;
//! the audit accepts that (a false "known product" at 10M ids is about one
//! in 10^12 lookups).
//!
//! The catalog set is read by workers through an `ArcSwap` and replaced
//! whole by the reloader thread; workers never wait for a reload.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3DefaultBuilder};

use rustix::fs::{open, Mode, OFlags, RawDir};
use rustix::io::Errno;

use crate::sched::Breather;

const SEED: u64 = 0x7472_6163_6b70_6c61;

/// A set of product ids, as fingerprints, in an ordered hash table: a
/// fingerprint's home slot grows with the fingerprint (its top bits scaled
/// to the table), and the table is laid out in fingerprint order, each at
/// its home or just after the one before. A lookup scans from its home and
/// stops at the first slot that is empty or holds a fingerprint not below
/// its own, so a miss stops as soon as a hit would have (about three slots
/// at 80% full) instead of running to the next empty slot (about thirteen
/// with plain linear probing). Runs that pass the last home slot spill into
/// a tail beyond it, which ends with an empty slot, so no scan wraps.
#[derive(Debug, Clone)]
pub struct ProductSet {
    slots: Box<[u64]>,
    /// Home slots: a fingerprint's home is in `0..homes`.
    homes: usize,
    len: usize,
}

impl ProductSet {
    /// Builds a set from ids; duplicates are stored once. The table is
    /// sized from the exact count of distinct ids: 80% of its home slots.
    pub fn build<'a>(ids: impl IntoIterator<Item = &'a [u8]>) -> ProductSet {
        ProductSet::from_fingerprints(ids.into_iter().map(fingerprint).collect())
    }

    /// Builds a set from fingerprints (none of them 0).
    fn from_fingerprints(mut prints: Vec<u64>) -> ProductSet {
        prints.sort_unstable();
        prints.dedup();
        let homes = (prints.len() * 5 / 4 + 1).max(8);
        // A first pass finds where the last one lands; at least one empty
        // slot after it ends every scan.
        let end = places(&prints, homes).last().map_or(0, |(i, _)| i + 1);
        let mut slots = vec![0u64; homes.max(end + 1)].into_boxed_slice();
        for (i, f) in places(&prints, homes) {
            slots[i] = f;
        }
        ProductSet {
            slots,
            homes,
            len: prints.len(),
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: &[u8]) -> bool {
        self.contains_fingerprint(fingerprint(id))
    }

    #[inline]
    fn contains_fingerprint(&self, f: u64) -> bool {
        let mut i = home(f, self.homes);
        // Slots from the home on hold, in order, the fingerprints below `f`
        // placed there, then `f` if present; empty slots hold 0, which no
        // fingerprint is. The table ends with an empty slot.
        loop {
            let x = self.slots[i];
            if x == 0 || x >= f {
                return x == f;
            }
            i += 1;
        }
    }

    /// Distinct ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * 8
    }
}

/// Where each of the sorted fingerprints `prints` goes: its home, or just
/// after the one before.
fn places(prints: &[u64], homes: usize) -> impl Iterator<Item = (usize, u64)> + '_ {
    let mut next = 0;
    prints.iter().map(move |&f| {
        let i = home(f, homes).max(next);
        next = i + 1;
        (i, f)
    })
}

/// The home slot of fingerprint `f` among `homes`: its top bits scaled, so
/// homes grow with fingerprints.
#[inline]
fn home(f: u64, homes: usize) -> usize {
    ((f as u128 * homes as u128) >> 64) as usize
}

#[inline]
fn fingerprint(id: &[u8]) -> u64 {
    // 0 marks an empty slot, so no fingerprint may be 0.
    xxh3_64_with_seed(id, SEED).max(1)
}

/// Every advertiser's catalog, as one immutable snapshot.
#[derive(Debug, Default, Clone)]
pub struct Catalogs {
    /// Keyed by the advertiser id each request names. Only catalog files
    /// add keys, so a request cannot grow a collision chain: a fast
    /// unseeded hash is safe here (SipHash was a measurable part of the
    /// audit).
    by_advertiser: HashMap<Vec<u8>, Arc<ProductSet>, Xxh3DefaultBuilder>,
}

impl Catalogs {
    /// The catalog of `advertiser`, if it has one.
    #[inline]
    pub fn get(&self, advertiser: &[u8]) -> Option<&ProductSet> {
        self.by_advertiser.get(advertiser).map(|a| &**a)
    }

    /// Advertisers with a catalog.
    pub fn advertisers(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.by_advertiser.keys().map(Vec::as_slice)
    }

    /// Number of catalogs.
    pub fn len(&self) -> usize {
        self.by_advertiser.len()
    }

    /// Whether no advertiser has a catalog.
    pub fn is_empty(&self) -> bool {
        self.by_advertiser.is_empty()
    }

    /// A snapshot with one catalog added or replaced (tests and tools).
    pub fn with(mut self, advertiser: &str, set: ProductSet) -> Catalogs {
        self.by_advertiser
            .insert(advertiser.as_bytes().to_vec(), Arc::new(set));
        self
    }
}

/// Reads a catalog file: one id per line; blank lines and `#` comments are
/// skipped; surrounding whitespace is trimmed. Line by line, so that only
/// the ids' fingerprints are held, never the file's text (about 17 bytes
/// per id, twice the fingerprints, for a file of 10M ids).
///
/// `breather` steps once a line ([`LINES_PER_BREATH`]), so that a worker
/// sharing the reader's core waits for one stretch at most.
pub fn read_catalog(
    mut input: impl std::io::BufRead,
    breather: &mut Breather,
) -> std::io::Result<ProductSet> {
    let mut prints = Vec::new();
    let mut line = Vec::new();
    while input.read_until(b'\n', &mut line)? > 0 {
        let id = line.trim_ascii();
        if !id.is_empty() && id[0] != b'#' {
            prints.push(fingerprint(id));
        }
        line.clear();
        breather.step();
    }
    Ok(ProductSet::from_fingerprints(prints))
}

/// Watches a catalog directory and rebuilds what changed. Files are
/// `<advertiser>.txt`, or symbolic links to them (a feed kept elsewhere);
/// names starting with `.` are ignored so that a writer can prepare
/// `.shop.txt.tmp` and rename it into place atomically. A file that cannot
/// be read is reported and skipped: its advertiser keeps the catalog it
/// had, and every other file still loads.
#[derive(Debug)]
pub struct CatalogDir {
    dir: PathBuf,
    /// Each loaded file's modification time and size when it was read.
    seen: HashMap<String, Stamp>,
    /// Each unreadable file's stamp when it was reported (`None`: not even
    /// its metadata), so that it is reported again only once it changes.
    unreadable: HashMap<String, Option<Stamp>>,
    current: Catalogs,
    /// Breaths between files of a scan, and between lines of a read
    /// (`sched::Breather`): the reloader shares the workers' cores.
    files: Breather,
    lines: Breather,
    /// Room for the directory entries one `getdents64` returns.
    dirents: Vec<u8>,
}

/// Bytes of directory entries read at once: about 130 entries of catalog
/// names. std's `read_dir` asks for 32 KiB, about 1,000 entries, which
/// took 300-380 µs in one system call at 2,000 catalogs, with no breath
/// possible inside it (strace, bench/results/catalog-breath-*.md).
const DIRENT_BYTES: usize = 4096;

/// Files a scan looks at between two breaths: about 30 µs at the 3-4 µs a
/// `statx` and directory entry take (bench/results/catalog-scan-*.md).
pub const FILES_PER_BREATH: u32 = 8;

/// Lines a read parses between two breaths: about 15 µs at the parse's
/// pace (`cargo bench --bench catalog_scan -- catalog_read`: 1M lines read
/// in 33 ms, 21 ms of it the build at the end, which does not breathe;
/// bench/results/catalog-idle-*.md).
pub const LINES_PER_BREATH: u32 = 1024;

type Stamp = (SystemTime, u64);

/// What one scan of the directory changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Advertisers whose catalog was (re)loaded.
    pub loaded: Vec<String>,
    /// Advertisers whose catalog file disappeared.
    pub removed: Vec<String>,
    /// Catalog files newly found unreadable, each with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl ScanReport {
    /// Whether the catalogs changed (not only new unreadable files).
    pub fn changed(&self) -> bool {
        !self.loaded.is_empty() || !self.removed.is_empty()
    }
}

impl CatalogDir {
    /// A watcher of `dir`; nothing is read until [`CatalogDir::scan`].
    pub fn new(dir: &Path) -> CatalogDir {
        CatalogDir {
            dir: dir.to_owned(),
            seen: HashMap::new(),
            unreadable: HashMap::new(),
            current: Catalogs::default(),
            files: Breather::new(FILES_PER_BREATH),
            lines: Breather::new(LINES_PER_BREATH),
            dirents: Vec::with_capacity(DIRENT_BYTES),
        }
    }

    /// The directory watched.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The latest snapshot.
    pub fn catalogs(&self) -> &Catalogs {
        &self.current
    }

    /// Yields the scans and reads have taken so far.
    pub fn breaths(&self) -> u64 {
        self.files.breaths() + self.lines.breaths()
    }

    /// Re-reads files whose size or mtime changed. A missing directory is an
    /// empty one. Returns `None` when there is nothing to report.
    pub fn scan(&mut self) -> std::io::Result<Option<ScanReport>> {
        let mut report = ScanReport::default();
        let mut present = HashSet::new();
        let dir = match open(
            &self.dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e.into()),
        };
        // The directory is read a few entries at a time (`DIRENT_BYTES`).
        // (Taken for the scan, put back at its end; after an error the next
        // scan makes another.)
        let mut dirents = std::mem::take(&mut self.dirents);
        dirents.reserve(DIRENT_BYTES);
        let mut entries = dir.map(|fd| RawDir::new(fd, dirents.spare_capacity_mut()));
        // The sets read in this scan, in `report.loaded`'s order.
        let mut sets = Vec::new();
        while let Some(entry) = entries.as_mut().and_then(RawDir::next) {
            let entry = entry?;
            self.files.step();
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            let Some(advertiser) = name.strip_suffix(".txt") else {
                continue;
            };
            if name.starts_with('.') || !crate::config::valid_name(advertiser) {
                continue;
            }
            let path = self.dir.join(name);
            // Follows a symbolic link.
            let meta = std::fs::metadata(&path);
            if meta.as_ref().is_ok_and(|m| !m.is_file()) {
                continue;
            }
            // A file that cannot be read counts as present: its advertiser
            // keeps what it had.
            present.insert(advertiser.to_owned());
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) => {
                    self.report_unreadable(advertiser, None, path, &e, &mut report);
                    continue;
                }
            };
            let stamp = (meta.modified()?, meta.len());
            if self.seen.get(advertiser) == Some(&stamp) {
                continue;
            }
            let read = std::fs::File::open(&path).and_then(|f| {
                read_catalog(
                    std::io::BufReader::with_capacity(1 << 16, f),
                    &mut self.lines,
                )
            });
            match read {
                Ok(set) => {
                    self.seen.insert(advertiser.to_owned(), stamp);
                    self.unreadable.remove(advertiser);
                    report.loaded.push(advertiser.to_owned());
                    sets.push(set);
                }
                Err(e) => self.report_unreadable(advertiser, Some(stamp), path, &e, &mut report),
            }
        }
        drop(entries);
        self.dirents = dirents;
        self.unreadable.retain(|a, _| present.contains(a));
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|a| !present.contains(*a))
            .cloned()
            .collect();
        for advertiser in gone {
            self.seen.remove(&advertiser);
            report.removed.push(advertiser);
        }
        // A new snapshot (a copy of every advertiser's entry) only when
        // something changed.
        if report.changed() {
            let mut next = self.current.clone();
            for (advertiser, set) in report.loaded.iter().zip(sets) {
                next = next.with(advertiser, set);
            }
            for advertiser in &report.removed {
                next.by_advertiser.remove(advertiser.as_bytes());
            }
            self.current = next;
        }
        if !report.changed() && report.unreadable.is_empty() {
            return Ok(None);
        }
        report.loaded.sort();
        report.removed.sort();
        Ok(Some(report))
    }

    /// Adds an unreadable file to `report` unless it was reported as it is.
    fn report_unreadable(
        &mut self,
        advertiser: &str,
        stamp: Option<Stamp>,
        path: PathBuf,
        e: &std::io::Error,
        report: &mut ScanReport,
    ) {
        if self.unreadable.get(advertiser) != Some(&stamp) {
            self.unreadable.insert(advertiser.to_owned(), stamp);
            report.unreadable.push((path, e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_contains_exactly_what_was_built() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("SKU-{i}")).collect();
        let set = ProductSet::build(ids.iter().map(|s| s.as_bytes()));
        assert_eq!(set.len(), 10_000);
        assert!(ids.iter().all(|id| set.contains(id.as_bytes())));
        assert!((10_000..20_000).all(|i| !set.contains(format!("SKU-{i}").as_bytes())));
        assert!(set.heap_bytes() <= 10_000 * 11);
    }

    #[test]
    fn set_dedupes_without_a_size_hint() {
        let ids = ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
        let set = ProductSet::build(ids.iter().map(|s| s.as_bytes()).filter(|_| true));
        assert_eq!(set.len(), 11);
        assert!(set.contains(b"k") && !set.contains(b"z"));
        assert!(!ProductSet::build(std::iter::empty()).contains(b""));
        // A catalog file's lines give no size hint; the table is still
        // sized to the ids it holds.
        let ids: Vec<String> = (0..10_500).map(|i| format!("SKU-{i}")).collect();
        let set = ProductSet::build(ids.iter().map(|s| s.as_bytes()).filter(|_| true));
        assert!(
            set.heap_bytes() <= 10_500 * 11,
            "{} bytes",
            set.heap_bytes()
        );
    }

    #[test]
    fn crowded_homes_spill_in_order_and_misses_stop_early() {
        // Fingerprints whose homes all fall in the last slots: their run
        // spills past the home slots into the tail, and every lookup
        // between and beyond them must still answer right.
        let top: Vec<u64> = (0..40).map(|k| u64::MAX - 1000 * k).collect();
        let low: Vec<u64> = (1..=5).map(|k| k * 3).collect();
        let set = ProductSet::from_fingerprints(top.iter().chain(&low).copied().collect());
        assert_eq!(set.len(), 45);
        assert_eq!(set.slots.last(), Some(&0));
        for &f in top.iter().chain(&low) {
            assert!(set.contains_fingerprint(f), "{f} present");
            assert!(!set.contains_fingerprint(f - 1), "{} absent", f - 1);
        }
        for f in [1, 2, 4, 16, u64::MAX - 1, u64::MAX - 40_001, u64::MAX / 2] {
            assert!(!set.contains_fingerprint(f), "{f} absent");
        }
    }

    #[test]
    fn set_agrees_with_a_hash_set() {
        // Ids from a small space, so that builds repeat ids and lookups
        // meet both members and strangers.
        proptest!(|(ids in prop::collection::vec(0u32..3000, 0..2000), probes in prop::collection::vec(0u32..3000, 1..200))| {
            let names: Vec<String> = ids.iter().map(|i| format!("p{i}")).collect();
            let set = ProductSet::build(names.iter().map(|s| s.as_bytes()));
            let known: std::collections::HashSet<u32> = ids.iter().copied().collect();
            prop_assert_eq!(set.len(), known.len());
            prop_assert!(set.heap_bytes() <= known.len() * 11 + 128);
            for p in probes {
                prop_assert_eq!(set.contains(format!("p{p}").as_bytes()), known.contains(&p));
            }
        });
    }

    #[test]
    fn catalog_file_skips_comments_and_blanks() {
        let set = read_catalog(
            &b"# shop\n sku1 \n\nsku2\r\n#sku3\nsku4"[..],
            &mut Breather::new(LINES_PER_BREATH),
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        assert!(set.contains(b"sku1") && set.contains(b"sku2") && !set.contains(b"sku3"));
        // The last line needs no newline.
        assert!(set.contains(b"sku4"));
    }

    #[test]
    fn directory_scan_loads_changes_and_removals() {
        let dir = tempdir();
        let mut cd = CatalogDir::new(&dir);
        assert_eq!(cd.scan().unwrap(), None);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("shop.txt"), "a\nb\n").unwrap();
        std::fs::write(dir.join(".other.txt"), "x\n").unwrap();
        std::fs::write(dir.join("notes.md"), "x\n").unwrap();
        let r = cd.scan().unwrap().unwrap();
        assert_eq!(r.loaded, ["shop"]);
        assert!(cd.catalogs().get(b"shop").unwrap().contains(b"b"));
        assert_eq!(cd.scan().unwrap(), None);
        std::fs::write(dir.join("shop.txt"), "a\nb\nc\n").unwrap();
        assert_eq!(cd.scan().unwrap().unwrap().loaded, ["shop"]);
        assert!(cd.catalogs().get(b"shop").unwrap().contains(b"c"));
        std::fs::remove_file(dir.join("shop.txt")).unwrap();
        assert_eq!(cd.scan().unwrap().unwrap().removed, ["shop"]);
        assert!(cd.catalogs().get(b"shop").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The reloader shares the workers' cores: it yields every few files
    /// of a scan and every so many lines of a read (`sched::Breather`).
    #[test]
    fn scans_and_reads_breathe() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).unwrap();
        let files = 5 * FILES_PER_BREATH as usize;
        for i in 0..files {
            std::fs::write(dir.join(format!("adv{i}.txt")), "a\n").unwrap();
        }
        let mut cd = CatalogDir::new(&dir);
        assert_eq!(cd.scan().unwrap().unwrap().loaded.len(), files);
        // Files are a breath each eighth; their one line each adds 40 steps
        // of lines, none a whole stretch yet.
        assert_eq!(cd.breaths(), 5);
        // An unchanged scan looks at every file again, reads none.
        assert_eq!(cd.scan().unwrap(), None);
        assert_eq!(cd.breaths(), 10);
        let ids: String = (0..3 * LINES_PER_BREATH)
            .map(|i| format!("sku{i}\n"))
            .collect();
        std::fs::write(dir.join("big.txt"), ids).unwrap();
        assert_eq!(cd.scan().unwrap().unwrap().loaded, ["big"]);
        // 41 files (5 breaths), 40 + 3 * 1024 lines read (3 breaths).
        assert_eq!(cd.breaths(), 18);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The directory is read a few KiB of entries at a time: one that
    /// takes several reads loads whole.
    #[test]
    fn a_directory_of_many_reads_loads_whole() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).unwrap();
        let files = 1000;
        for i in 0..files {
            std::fs::write(
                dir.join(format!("advertiser-{i:04}.txt")),
                format!("sku{i}\n"),
            )
            .unwrap();
        }
        let mut cd = CatalogDir::new(&dir);
        let mut loaded = cd.scan().unwrap().unwrap().loaded;
        loaded.dedup();
        assert_eq!(loaded.len(), files);
        assert!(cd
            .catalogs()
            .get(b"advertiser-0999")
            .unwrap()
            .contains(b"sku999"));
        assert_eq!(cd.scan().unwrap(), None);
        std::fs::remove_file(dir.join("advertiser-0500.txt")).unwrap();
        assert_eq!(cd.scan().unwrap().unwrap().removed, ["advertiser-0500"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_catalog_may_be_a_symbolic_link() {
        let dir = tempdir();
        let feeds = dir.with_extension("feeds");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&feeds).unwrap();
        std::fs::write(feeds.join("shop.txt"), "a\n").unwrap();
        std::os::unix::fs::symlink(feeds.join("shop.txt"), dir.join("shop.txt")).unwrap();
        let mut cd = CatalogDir::new(&dir);
        assert_eq!(cd.scan().unwrap().unwrap().loaded, ["shop"]);
        assert!(cd.catalogs().get(b"shop").unwrap().contains(b"a"));
        // A change of the file linked to is a change of the catalog.
        std::fs::write(feeds.join("shop.txt"), "a\nb\n").unwrap();
        assert_eq!(cd.scan().unwrap().unwrap().loaded, ["shop"]);
        assert!(cd.catalogs().get(b"shop").unwrap().contains(b"b"));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&feeds).unwrap();
    }

    /// A file the scan cannot read is said once, not at every scan; its
    /// advertiser keeps what it had, and the other files load all the same.
    #[test]
    fn an_unreadable_catalog_is_reported_once_and_blocks_no_other() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("shop.txt"), "a\n").unwrap();
        let mut cd = CatalogDir::new(&dir);
        cd.scan().unwrap();
        // A link to nothing (its metadata fails) and a file whose read
        // fails (the kernel answers EIO for memory not mapped at 0).
        std::fs::remove_file(dir.join("shop.txt")).unwrap();
        std::os::unix::fs::symlink(dir.join("missing"), dir.join("shop.txt")).unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", dir.join("mem.txt")).unwrap();
        std::fs::write(dir.join("other.txt"), "x\n").unwrap();
        let r = cd.scan().unwrap().unwrap();
        assert_eq!(r.loaded, ["other"]);
        assert!(r.removed.is_empty());
        let mut bad: Vec<_> = r
            .unreadable
            .iter()
            .map(|(p, e)| (p.file_name().unwrap().to_owned(), e.clone()))
            .collect();
        bad.sort();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].0, "mem.txt");
        assert!(bad[0].1.contains("os error 5"), "{bad:?}");
        assert_eq!(bad[1].0, "shop.txt");
        assert!(bad[1].1.contains("os error 2"), "{bad:?}");
        assert!(cd.catalogs().get(b"shop").unwrap().contains(b"a"));
        assert!(cd.catalogs().get(b"other").unwrap().contains(b"x"));
        assert_eq!(cd.scan().unwrap(), None, "reported once");
        // Mended, it loads.
        std::fs::remove_file(dir.join("shop.txt")).unwrap();
        std::fs::write(dir.join("shop.txt"), "b\n").unwrap();
        assert_eq!(cd.scan().unwrap().unwrap().loaded, ["shop"]);
        assert!(cd.catalogs().get(b"shop").unwrap().contains(b"b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("trackplane-catalog-{}-{nanos}", std::process::id()))
    }
}
