//! Advertiser catalogs: which product ids exist. Built for 10 million ids per
//! node: each id is kept as a 64-bit fingerprint (xxh3) in one flat
//! open-addressed table at most 80% full, so a lookup is one hash and usually
//! one cache line, and memory is about 10 bytes per product whatever the id
//! length. Two different ids share a fingerprint with probability 2^-64 per
//! pair; the audit accepts that (a false "known product" at 10M ids is about
//! one in 10^12 lookups).
//!
//! The catalog set is read by workers through an `ArcSwap` and replaced
//! whole by the reloader thread; workers never wait for a reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3DefaultBuilder};

const SEED: u64 = 0x7472_6163_6b70_6c61;

/// A set of product ids, as fingerprints.
#[derive(Debug, Clone)]
pub struct ProductSet {
    slots: Box<[u64]>,
    len: usize,
}

impl ProductSet {
    /// Builds a set from ids; duplicates are stored once.
    pub fn build<'a>(ids: impl IntoIterator<Item = &'a [u8]>) -> ProductSet {
        let ids = ids.into_iter();
        let hint = ids.size_hint().0.max(1);
        let mut set = ProductSet::with_capacity(hint);
        for id in ids {
            if set.len * 5 >= set.slots.len() * 4 {
                set = set.grown();
            }
            set.insert(fingerprint(id));
        }
        set
    }

    fn with_capacity(n: usize) -> ProductSet {
        let slots = (n * 5 / 4 + 1).max(8);
        ProductSet {
            slots: vec![0u64; slots].into_boxed_slice(),
            len: 0,
        }
    }

    fn grown(&self) -> ProductSet {
        let mut bigger = ProductSet::with_capacity(self.slots.len() * 2);
        for &f in self.slots.iter().filter(|&&f| f != 0) {
            bigger.insert(f);
        }
        bigger
    }

    #[inline]
    fn home(&self, f: u64) -> usize {
        ((f as u128 * self.slots.len() as u128) >> 64) as usize
    }

    fn insert(&mut self, f: u64) {
        let n = self.slots.len();
        let mut i = self.home(f);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = f;
                    self.len += 1;
                    return;
                }
                x if x == f => return,
                _ => i = if i + 1 == n { 0 } else { i + 1 },
            }
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: &[u8]) -> bool {
        let f = fingerprint(id);
        let n = self.slots.len();
        let mut i = self.home(f);
        loop {
            match self.slots[i] {
                0 => return false,
                x if x == f => return true,
                _ => i = if i + 1 == n { 0 } else { i + 1 },
            }
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

/// Parses a catalog file: one id per line; blank lines and `#` comments are
/// skipped; surrounding whitespace is trimmed.
pub fn parse_catalog(text: &[u8]) -> ProductSet {
    let lines = text.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.trim_ascii();
        (!line.is_empty() && line[0] != b'#').then_some(line)
    });
    ProductSet::build(lines)
}

/// Watches a catalog directory and rebuilds what changed. Files are
/// `<advertiser>.txt`; names starting with `.` are ignored so that a writer
/// can prepare `.shop.txt.tmp` and rename it into place atomically.
#[derive(Debug)]
pub struct CatalogDir {
    dir: PathBuf,
    seen: HashMap<String, (SystemTime, u64)>,
    current: Catalogs,
}

/// What one scan of the directory changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Advertisers whose catalog was (re)loaded.
    pub loaded: Vec<String>,
    /// Advertisers whose catalog file disappeared.
    pub removed: Vec<String>,
}

impl CatalogDir {
    /// A watcher of `dir`; nothing is read until [`CatalogDir::scan`].
    pub fn new(dir: &Path) -> CatalogDir {
        CatalogDir {
            dir: dir.to_owned(),
            seen: HashMap::new(),
            current: Catalogs::default(),
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

    /// Re-reads files whose size or mtime changed. A missing directory is an
    /// empty one. Returns `None` when nothing changed.
    pub fn scan(&mut self) -> std::io::Result<Option<ScanReport>> {
        let mut report = ScanReport::default();
        let mut present = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut next = self.current.clone();
        for entry in entries.into_iter().flatten() {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(advertiser) = name.strip_suffix(".txt") else {
                continue;
            };
            if name.starts_with('.') || !crate::config::valid_name(advertiser) {
                continue;
            }
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let stamp = (meta.modified()?, meta.len());
            present.push(advertiser.to_owned());
            if self.seen.get(advertiser) == Some(&stamp) {
                continue;
            }
            let text = std::fs::read(entry.path())?;
            next = next.with(advertiser, parse_catalog(&text));
            self.seen.insert(advertiser.to_owned(), stamp);
            report.loaded.push(advertiser.to_owned());
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|a| !present.contains(a))
            .cloned()
            .collect();
        for advertiser in gone {
            self.seen.remove(&advertiser);
            next.by_advertiser.remove(advertiser.as_bytes());
            report.removed.push(advertiser);
        }
        if report.loaded.is_empty() && report.removed.is_empty() {
            return Ok(None);
        }
        report.loaded.sort();
        report.removed.sort();
        self.current = next;
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn set_grows_past_its_hint_and_dedupes() {
        let ids = ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
        let set = ProductSet::build(ids.iter().map(|s| s.as_bytes()).filter(|_| true));
        assert_eq!(set.len(), 11);
        assert!(set.contains(b"k") && !set.contains(b"z"));
        assert!(!ProductSet::build(std::iter::empty()).contains(b""));
    }

    #[test]
    fn catalog_file_skips_comments_and_blanks() {
        let set = parse_catalog(b"# shop\n sku1 \n\nsku2\r\n#sku3\n");
        assert_eq!(set.len(), 2);
        assert!(set.contains(b"sku1") && set.contains(b"sku2") && !set.contains(b"sku3"));
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

    fn tempdir() -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("trackplane-catalog-{}-{nanos}", std::process::id()))
    }
}
