//! The store on redb: one file, a B-tree per table, copy-on-write commits
//! (a commit is atomic, and with [`Durability::Immediate`] on disk when it
//! returns: one `fdatasync`).
//!
//! Chosen over fjall by measuring both on the development machine
//! (BENCHMARKS.md, "The durable store"): under queue churn redb stays at a
//! few times the live data where fjall's journal held a hundred times it;
//! it restarts in a millisecond after a clean close, uses a few MB of
//! memory, and builds two crates where fjall builds forty-two. fjall wrote
//! faster; both give one real fsync per batch.

use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::format::Table;
use crate::kv::{Engine, Op};
use crate::StoreError;

/// The file in the data directory.
pub const FILE: &str = "tern.redb";

/// The pages redb keeps in memory (its default is 1 GiB, which a broker
/// with millions of queued messages fills): the operating system's page
/// cache holds the rest of the file, outside the broker's memory.
const CACHE: usize = 32 * 1024 * 1024;

/// Files smaller than this are not worth compacting.
const COMPACT_FROM: u64 = 8 * 1024 * 1024;

fn definition(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

/// The store's engine on a redb file.
#[derive(Debug)]
pub struct RedbEngine {
    /// `None` after a write failed: redb then wants the file opened again
    /// (its allocator state is gone), which the next use does.
    db: Option<Database>,
    path: PathBuf,
    repaired: bool,
}

impl RedbEngine {
    /// Opens (or creates) the store in `dir`. A file redb cannot open (not
    /// a redb file, damaged beyond its repair) is
    /// [`StoreError::Damaged`], naming the file.
    pub fn open(dir: &Path) -> Result<RedbEngine, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let (db, repaired) = open_checked(&path)?;
        let tx = db.begin_write().map_err(other)?;
        for t in Table::ALL {
            tx.open_table(definition(t)).map_err(other)?;
        }
        tx.commit().map_err(other)?;
        Ok(RedbEngine {
            db: Some(db),
            path,
            repaired,
        })
    }

    /// The database, opened again if a write failed.
    fn db(&mut self) -> io::Result<&mut Database> {
        if self.db.is_none() {
            let (db, repaired) = open_checked(&self.path).map_err(|e| match e {
                StoreError::Io(io) => io,
                e => other(e),
            })?;
            self.repaired |= repaired;
            self.db = Some(db);
        }
        Ok(self.db.as_mut().expect("opened above"))
    }

    /// Whether the file was damaged when opened and redb repaired it by
    /// going back to its last intact commit: what was committed after it
    /// is gone.
    pub fn repaired(&self) -> bool {
        self.repaired
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file to hold only live pages, giving back to the file
    /// system what churn left free (a store that keeps turning over holds
    /// about three times its live data between compactions: pages freed
    /// by copy-on-write wait for reuse). Returns whether it compacted.
    pub fn compact(&mut self) -> io::Result<bool> {
        self.db()?
            .compact(redb::CompactionMode::Maximum)
            .map_err(other)
    }
}

/// Opens the file and checks every page's checksum before anything is read
/// (redb panics on a page it finds damaged later, and with debug
/// assertions on some it checks): a file that fails is repaired to its
/// last intact commit (`true`), or refused. About 70 ms per GB warm, 500
/// ms cold.
fn open_checked(path: &Path) -> Result<(Database, bool), StoreError> {
    let damaged =
        |e: &dyn std::fmt::Display| StoreError::Damaged(format!("{}: {e}", path.display()));
    // A damaged page is an answer here, not a crash: redb's panic message
    // is kept off the terminal while it checks.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| {
        let mut db = redb::Builder::new().set_cache_size(CACHE).create(path)?;
        let intact = db.check_integrity()?;
        Ok::<_, redb::DatabaseError>((db, !intact))
    });
    std::panic::set_hook(hook);
    match opened {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(io)))) => {
            Err(StoreError::Io(io))
        }
        Ok(Err(e)) => Err(damaged(&e)),
        Err(_) => Err(damaged(&"its pages are damaged")),
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The first key after every key that starts with `prefix` (`None`: there
/// is none, every key from `prefix` on starts with it).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < u8::MAX {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

impl RedbEngine {
    fn write_batch(&mut self, ops: &[Op], sync: bool) -> io::Result<()> {
        let mut tx = self.db()?.begin_write().map_err(other)?;
        let durability = if sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability).map_err(other)?;
        {
            // Each table opened once per batch, on first use.
            let mut open: [Option<redb::Table<&[u8], &[u8]>>; Table::ALL.len()] =
                Default::default();
            for op in ops {
                let t = match op {
                    Op::Put(t, ..)
                    | Op::Delete(t, _)
                    | Op::DeletePrefix(t, _)
                    | Op::DeleteRange(t, ..) => *t,
                };
                let slot = &mut open[t as usize];
                if slot.is_none() {
                    *slot = Some(tx.open_table(definition(t)).map_err(other)?);
                }
                let table = slot.as_mut().expect("opened above");
                match op {
                    Op::Put(_, k, v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(other)?;
                    }
                    Op::Delete(_, k) => {
                        table.remove(k.as_slice()).map_err(other)?;
                    }
                    Op::DeleteRange(_, start, end) => {
                        table
                            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)
                            .map_err(other)?;
                    }
                    Op::DeletePrefix(_, p) => {
                        let start = p.as_slice();
                        let r = match successor(p) {
                            Some(end) => table.retain_in(start..end.as_slice(), |_, _| false),
                            None => table.retain_in(start.., |_, _| false),
                        };
                        r.map_err(other)?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| match e {
            redb::CommitError::Storage(redb::StorageError::Io(io)) => io,
            e => other(e),
        })
    }
}

impl Engine for RedbEngine {
    fn write(&mut self, ops: &[Op], sync: bool) -> io::Result<()> {
        let r = self.write_batch(ops, sync);
        if r.is_err() {
            // A failed commit leaves redb wanting the file opened again.
            self.db = None;
        }
        r
    }

    fn sync(&mut self) -> io::Result<()> {
        // A commit made durable makes every commit before it durable.
        let mut tx = self.db()?.begin_write().map_err(other)?;
        tx.set_durability(Durability::Immediate).map_err(other)?;
        let r = tx.commit().map_err(other);
        if r.is_err() {
            self.db = None;
        }
        r
    }
    fn scan(&mut self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> io::Result<()> {
        let tx = self.db()?.begin_read().map_err(other)?;
        let t = tx.open_table(definition(table)).map_err(other)?;
        for entry in t.iter().map_err(other)? {
            let (k, v) = entry.map_err(other)?;
            f(k.value(), v.value());
        }
        Ok(())
    }

    fn scan_from(
        &mut self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> io::Result<()> {
        let tx = self.db()?.begin_read().map_err(other)?;
        let t = tx.open_table(definition(table)).map_err(other)?;
        for entry in t.range(start..).map_err(other)? {
            let (k, v) = entry.map_err(other)?;
            if !f(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn maintain(&mut self) -> io::Result<bool> {
        let size = self.size();
        if size < COMPACT_FROM {
            return Ok(false);
        }
        let tx = self.db()?.begin_write().map_err(other)?;
        let stats = tx.stats().map_err(other)?;
        tx.abort().map_err(other)?;
        let live = stats.stored_bytes() + stats.metadata_bytes();
        if size <= 2 * live {
            return Ok(false);
        }
        self.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_successor_begins() {
        assert_eq!(successor(&[0, 1, b'a']), Some(vec![0, 1, b'b']));
        assert_eq!(successor(&[0, 1, 0xff]), Some(vec![0, 2]));
        assert_eq!(successor(&[0xff, 0xff]), None);
    }
}
