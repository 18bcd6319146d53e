//! The compile cache: bytecode of each distinct code, so the same function
//! is parsed once, not on every call.
//!
//! Keyed by the code itself (hashed by the map; a hit also compares the text,
//! so two codes can never share an entry), bounded by a number of entries and
//! a total of bytes (code + bytecode), least recently used evicted first.
//! Compile errors are cached too, so a broken function is not re-parsed on
//! every call either.

use std::collections::HashMap;
use std::sync::Arc;

use crate::result::FnError;

/// What compiling one code gave.
pub(crate) type Compiled = Result<Arc<Vec<u8>>, FnError>;

struct Entry {
    compiled: Compiled,
    bytes: usize,
    last_used: u64,
}

/// Counters of a [`CompileCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Codes held now.
    pub entries: usize,
    /// Bytes held now (code + bytecode or error text).
    pub bytes: usize,
    /// Lookups that found the code.
    pub hits: u64,
    /// Lookups that had to compile.
    pub misses: u64,
    /// Entries dropped to stay within the bounds.
    pub evictions: u64,
}

/// A bounded LRU map from code to its compiled form.
pub struct CompileCache {
    map: HashMap<Arc<str>, Entry>,
    max_entries: usize,
    max_bytes: usize,
    tick: u64,
    stats: CacheStats,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl CompileCache {
    /// Default bound on the number of codes.
    pub const DEFAULT_ENTRIES: usize = 256;
    /// Default bound on the bytes held.
    pub const DEFAULT_BYTES: usize = 32 << 20;

    /// A cache holding at most `max_entries` codes and `max_bytes` bytes.
    /// A bound of 0 disables caching.
    pub fn new(max_entries: usize, max_bytes: usize) -> CompileCache {
        CompileCache {
            map: HashMap::new(),
            max_entries,
            max_bytes,
            tick: 0,
            stats: CacheStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.map.len(),
            bytes: self.stats.bytes,
            ..self.stats
        }
    }

    /// The compiled form of `code`, compiling it with `compile` on a miss.
    pub(crate) fn get_or_compile(
        &mut self,
        code: &str,
        compile: impl FnOnce() -> Compiled,
    ) -> Compiled {
        self.tick += 1;
        if let Some(entry) = self.map.get_mut(code) {
            entry.last_used = self.tick;
            self.stats.hits += 1;
            return entry.compiled.clone();
        }
        self.stats.misses += 1;
        let compiled = compile();
        let bytes = code.len()
            + match &compiled {
                Ok(bc) => bc.len(),
                Err(e) => e.message.len() + e.stack.as_ref().map_or(0, String::len),
            };
        if self.max_entries == 0 || bytes > self.max_bytes {
            return compiled;
        }
        while !self.map.is_empty()
            && (self.map.len() >= self.max_entries || self.stats.bytes + bytes > self.max_bytes)
        {
            self.evict_oldest();
        }
        self.stats.bytes += bytes;
        self.map.insert(
            Arc::from(code),
            Entry {
                compiled: compiled.clone(),
                bytes,
                last_used: self.tick,
            },
        );
        compiled
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .map
            .iter()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| Arc::clone(k));
        if let Some(key) = oldest
            && let Some(entry) = self.map.remove(&key)
        {
            self.stats.bytes -= entry.bytes;
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bc(n: usize) -> Compiled {
        Ok(Arc::new(vec![0u8; n]))
    }

    #[test]
    fn hits_do_not_compile_again() {
        let mut cache = CompileCache::new(4, 1 << 20);
        let mut compiles = 0;
        for _ in 0..3 {
            let got = cache.get_or_compile("a", || {
                compiles += 1;
                bc(10)
            });
            assert_eq!(got.map(|b| b.len()), Ok(10));
        }
        assert_eq!(compiles, 1);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries, s.bytes), (2, 1, 1, 11));
    }

    #[test]
    fn least_recently_used_is_evicted_at_the_entry_bound() {
        let mut cache = CompileCache::new(2, 1 << 20);
        cache.get_or_compile("a", || bc(1)).ok();
        cache.get_or_compile("b", || bc(1)).ok();
        cache.get_or_compile("a", || bc(1)).ok(); // a is now newer than b
        cache.get_or_compile("c", || bc(1)).ok(); // evicts b
        let mut recompiled = Vec::new();
        for code in ["a", "c", "b"] {
            cache
                .get_or_compile(code, || {
                    recompiled.push(code);
                    bc(1)
                })
                .ok();
        }
        assert_eq!(recompiled, ["b"]);
        assert_eq!(cache.stats().entries, 2);
        assert_eq!(cache.stats().evictions, 2);
    }

    #[test]
    fn byte_bound_holds_and_huge_entries_are_not_kept() {
        let mut cache = CompileCache::new(100, 100);
        for code in ["a", "b", "c", "d"] {
            cache.get_or_compile(code, || bc(39)).ok();
            assert!(cache.stats().bytes <= 100, "{:?}", cache.stats());
        }
        assert_eq!(cache.stats().entries, 2);
        cache.get_or_compile("huge", || bc(1000)).ok();
        assert_eq!(cache.stats().entries, 2);
        assert!(cache.stats().bytes <= 100);
    }

    #[test]
    fn errors_are_cached() {
        let mut cache = CompileCache::new(4, 1 << 20);
        let err = || {
            Err(FnError {
                name: "SyntaxError".into(),
                message: "bad".into(),
                stack: None,
                line: Some(1),
            })
        };
        assert!(cache.get_or_compile("x(", err).is_err());
        let again = cache.get_or_compile("x(", || panic!("compiled twice"));
        assert_eq!(again.err().map(|e| e.name), Some("SyntaxError".to_string()));
    }

    #[test]
    fn zero_bound_disables() {
        let mut cache = CompileCache::new(0, 0);
        cache.get_or_compile("a", || bc(1)).ok();
        assert_eq!(cache.stats().entries, 0);
    }
}
