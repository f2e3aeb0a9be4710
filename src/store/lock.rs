//! One owner per model directory: `train` and `train --resume` hold an exclusive `flock` on
//! `DIR/.lock` for the whole run, so a second run on the same directory fails at once, naming
//! the process that holds it, instead of interleaving its files with the first. The kernel
//! releases the lock when the process ends, however it ends. A run that ends normally removes
//! the file; one that was killed leaves it, harmless, to be locked again by the next run.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file's name inside a model directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a model directory, released (and its file removed) when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// Held open for the lock's sake alone: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still locked: a process that opened the file before the removal finds
        // it locked, and one that opens the path after it makes a new file (see `lock_dir`).
        let _ = fs::remove_file(&self.path);
    }
}

/// Takes the lock on `dir` for `what` (e.g. "seq2seq train"), or fails naming its holder.
pub fn lock_dir(dir: &Path, what: &str) -> Result<DirLock> {
    // A lock won on a file that its holder removed meanwhile guards nothing: try again.
    for _ in 0..100 {
        if let Some(lock) = try_lock(dir, what)? {
            return Ok(lock);
        }
    }
    bail!("cannot lock {}: its lock file keeps being replaced", dir.display())
}

/// `None` when the lock was taken on a file that no longer has the lock file's name.
fn try_lock(dir: &Path, what: &str) -> Result<Option<DirLock>> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        // Never block on a FIFO planted under the lock's name.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    if !file.metadata().with_context(|| format!("cannot read {}", path.display()))?.is_file() {
        bail!("{} is not a regular file; remove it to train in {}", path.display(), dir.display());
    }
    // SAFETY: a valid open descriptor; LOCK_NB makes flock return at once instead of waiting.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
        let mut holder = String::new();
        let _ = Read::by_ref(&mut file).take(1000).read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() { "another process".to_owned() } else { holder.to_owned() };
        bail!("{} is in use by {holder}; wait for it to end or choose another directory", dir.display());
    }
    let still_named = fs::symlink_metadata(&path)
        .is_ok_and(|named| file.metadata().is_ok_and(|held| (named.dev(), named.ino()) == (held.dev(), held.ino())));
    if !still_named {
        return Ok(None);
    }
    let description = format!("{what} (process {})", std::process::id());
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(description.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(DirLock { _file: file, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_first_and_succeeds_once_it_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = lock_dir(dir.path(), "seq2seq train").expect("the first lock");
        // flock locks belong to the open file description: a second open in this process
        // conflicts just as another process would.
        let error = lock_dir(dir.path(), "seq2seq train --resume").expect_err("held");
        let message = error.to_string();
        assert!(message.contains("is in use by seq2seq train (process"), "{message}");
        assert!(message.contains(&std::process::id().to_string()), "{message}");
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists(), "the lock file goes with the lock");
        lock_dir(dir.path(), "seq2seq train").expect("free again");
    }
}
