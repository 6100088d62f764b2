//! Names held by registrations, each distinct name counted once against a bound on how many
//! there are and on their encoded bytes: the core of the method ledger (`methods.rs`) and the
//! HTTP-backend ledger (`backends.rs`), which keep what a status carries within its frame.
//! Plain data; each ledger holds one behind its lock.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A name's CBOR text header: at most 3 bytes for names under 64 KiB (the names counted here
/// are at most 255 bytes: 2).
pub const NAME_OVERHEAD_BYTES: usize = 3;

/// Which bound a new name would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Count,
    Bytes,
}

/// Registrations by id, and how many hold each name (sorted by name).
#[derive(Debug)]
pub struct CountedNames<Id> {
    by_id: HashMap<Id, String>,
    count: BTreeMap<String, usize>,
    /// Encoded bytes of the distinct names.
    bytes: usize,
}

impl<Id> Default for CountedNames<Id> {
    fn default() -> Self {
        CountedNames {
            by_id: HashMap::new(),
            count: BTreeMap::new(),
            bytes: 0,
        }
    }
}

impl<Id: Hash + Eq> CountedNames<Id> {
    /// Register `id` under `name`. A name held already costs nothing more, and an id
    /// registered already is left as it is. `Ok(true)` when the set of names grew.
    ///
    /// # Errors
    /// [`Full`] when a new name would make more than `max_names` names or more than
    /// `budget_bytes` encoded bytes.
    pub fn add(
        &mut self,
        id: Id,
        name: &str,
        max_names: usize,
        budget_bytes: usize,
    ) -> Result<bool, Full> {
        if self.by_id.contains_key(&id) {
            return Ok(false);
        }
        let new = !self.count.contains_key(name);
        if new {
            if self.count.len() >= max_names {
                return Err(Full::Count);
            }
            let cost = name.len() + NAME_OVERHEAD_BYTES;
            if self.bytes + cost > budget_bytes {
                return Err(Full::Bytes);
            }
            self.bytes += cost;
        }
        *self.count.entry(name.to_owned()).or_default() += 1;
        self.by_id.insert(id, name.to_owned());
        Ok(new)
    }

    /// Forget registration `id` (unknown ids are ignored: removal is idempotent). True when
    /// its name left the set (it was the last to hold it).
    pub fn remove(&mut self, id: &Id) -> bool {
        let Some(name) = self.by_id.remove(id) else {
            return false;
        };
        let gone = match self.count.get_mut(&name) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if gone {
            self.count.remove(&name);
            self.bytes = self.bytes.saturating_sub(name.len() + NAME_OVERHEAD_BYTES);
        }
        gone
    }

    /// The distinct names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.count.keys().cloned().collect()
    }

    /// Encoded bytes of the distinct names.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
