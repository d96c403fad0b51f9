//! One process at a time per cache directory: an OS file lock on `LOCK`, with the holder's
//! identity in `LOCK.owner` so that a waiting process can say who it waits for.

use crate::{CacheError, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do when another process holds the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPolicy {
    Wait,
    NoWait,
}

/// Who holds a cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub command: String,
    pub started: String,
}

pub(crate) struct CacheLock {
    _file: File,
    owner_path: PathBuf,
}

fn describe(root: &Path) -> String {
    let owner = fs::read(root.join("LOCK.owner"))
        .ok()
        .and_then(|b| serde_json::from_slice::<LockOwner>(&b).ok());
    match owner {
        Some(o) => format!(
            "cache {} is in use by process {} ({}, since {})",
            root.display(),
            o.pid,
            o.command,
            o.started
        ),
        None => format!("cache {} is in use by another process", root.display()),
    }
}

impl CacheLock {
    pub(crate) fn acquire(root: &Path, wait: WaitPolicy, on_wait: &dyn Fn(&str)) -> Result<Self> {
        let path = root.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let msg = describe(root);
                    if wait == WaitPolicy::NoWait {
                        return Err(CacheError::Locked(format!(
                            "{msg}; not waiting (--no-wait)"
                        )));
                    }
                    if !told {
                        on_wait(&format!("{msg}; waiting for it to finish"));
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(fs::TryLockError::Error(e)) => return Err(CacheError::io(&path, e)),
            }
        }
        let owner = LockOwner {
            pid: std::process::id(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started: chrono_like_now(),
        };
        let owner_path = root.join("LOCK.owner");
        let _ = fs::write(&owner_path, serde_json::to_vec(&owner).unwrap_or_default());
        Ok(CacheLock {
            _file: file,
            owner_path,
        })
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.owner_path);
    }
}

/// Seconds since the Unix epoch as text; enough to tell a stale holder from a fresh one.
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix time {secs}")
}
