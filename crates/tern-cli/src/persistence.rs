//! `tern broker --data DIR`: the store is opened here, before the server
//! starts, so that a store that cannot be opened stops startup with a
//! clear error rather than a silent empty start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_store::{Store, StoreError};
use tern_tokio::Persistence;

use crate::config::{Durability, File};

/// The persistence of `tern broker`: from `--data` or the file's
/// `[persistence]`, or none (with the one line that says so).
pub fn open(
    data: Option<&Path>,
    start_anyway: bool,
    file: &File,
) -> Result<Option<Persistence>, String> {
    let p = &file.persistence;
    let Some(dir) = data.map(Path::to_path_buf).or_else(|| p.dir.clone()) else {
        tracing::warn!("no data directory (--data DIR): sessions, queued messages and retained messages will be lost on restart");
        return Ok(None);
    };
    let store = match tern_store::open(&dir) {
        Ok(s) => s,
        Err(StoreError::Damaged(why)) if start_anyway => {
            let aside = set_aside(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            tracing::error!(%why, kept = %aside.display(), "the store cannot be opened: starting with an empty one (--start-anyway)");
            tern_store::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?
        }
        Err(StoreError::Damaged(why)) => {
            return Err(format!(
                "the store cannot be opened ({why}). Nothing was changed: move {} aside, or start with --start-anyway to keep it there under another name and begin with an empty store",
                dir.join(tern_store::FILE).display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    if store.engine().repaired() {
        tracing::error!(file = %store.engine().path().display(), "the store was damaged: it was repaired by going back to its last intact commit, and what was written after that is lost");
    }
    let relaxed = (p.mode == Durability::Relaxed)
        .then(|| Duration::from_millis(p.flush_ms.unwrap_or(100).max(1)));
    match relaxed {
        Some(every) => {
            tracing::info!(dir = %dir.display(), ?every, "persistence: relaxed: messages are acknowledged before they are on disk, which is synced every interval: a power loss loses up to that much")
        }
        None => {
            tracing::info!(dir = %dir.display(), "persistence: a QoS 1/2 message is acknowledged once it is on disk")
        }
    }
    let store: Box<dyn Store> = Box::new(store);
    Ok(Some(Persistence {
        store: Arc::new(Mutex::new(store)),
        relaxed,
    }))
}

/// Renames a damaged store file, so that a new one can start; returns the
/// new name.
fn set_aside(dir: &Path) -> std::io::Result<PathBuf> {
    let file = dir.join(tern_store::FILE);
    let mut n = 0u32;
    loop {
        let aside = dir.join(format!("{}.damaged-{n}", tern_store::FILE));
        if !aside.exists() {
            std::fs::rename(&file, &aside)?;
            return Ok(aside);
        }
        n += 1;
    }
}
