//! Files the program writes and reads, made safe against what a path may turn out to be:
//! writes are atomic for regular files, go straight to devices and FIFOs (so `--out /dev/null`
//! stays a device), and follow symlinks to replace their target; reads open only regular files
//! of a sane size, so a FIFO or a link to `/dev/zero` is refused instead of hanging or filling
//! memory; and temporary files left by killed processes are cleared away.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::output::plain_io_message;

/// Symlinks followed before a path is given up on (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// Where a write to a path lands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteTarget {
    /// A regular file (or none yet): replaced atomically through a temporary file beside it.
    Replace(PathBuf),
    /// A device, FIFO or socket: written to directly, since renaming over it would destroy it.
    Direct(PathBuf),
}

/// The file that `path` names once symlinks are followed, even when the last link dangles.
fn follow_symlinks(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_owned();
    for _ in 0..MAX_SYMLINKS {
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let target =
                    fs::read_link(&current).with_context(|| format!("cannot read the link {}", current.display()))?;
                current = match current.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            _ => return Ok(current),
        }
    }
    bail!("{} is a chain of more than {MAX_SYMLINKS} symbolic links", path.display())
}

fn write_target(path: &Path) -> Result<WriteTarget> {
    let target = follow_symlinks(path)?;
    match fs::metadata(&target) {
        Ok(metadata) if metadata.is_dir() => bail!("{} is a directory, not a file", path.display()),
        Ok(metadata) if !metadata.is_file() => Ok(WriteTarget::Direct(target)),
        _ => Ok(WriteTarget::Replace(target)),
    }
}

/// Whether `path` names (through links) a device, FIFO or socket rather than a regular file.
pub fn is_special_file(path: &Path) -> bool {
    matches!(write_target(path), Ok(WriteTarget::Direct(_)))
}

/// Writes a file with `write`, which receives the path to create and fill. For a regular file
/// (or a new one) that is a temporary file beside it, flushed to disk and renamed over it: a
/// crash leaves the old file or the new one, never half of one. A symlink is followed and its
/// target replaced. A device, FIFO or socket is written to directly.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let target = match write_target(path)? {
        WriteTarget::Direct(device) => {
            return write(&device).with_context(|| format!("cannot write {}", path.display()));
        }
        WriteTarget::Replace(target) => target,
    };
    // A bare file name's parent is "", which cannot be opened to sync: it means ".".
    let dir = target.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = dir.join(temporary_name(name, std::process::id()));
    let result = write(&temporary)
        .and_then(|()| {
            let file = File::open(&temporary)?;
            file.sync_all()?;
            fs::rename(&temporary, &target)?;
            // Make the rename itself durable.
            File::open(dir)?.sync_all()?;
            Ok(())
        })
        .with_context(|| format!("cannot write {}", path.display()));
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// `.NAME.tmp-PID`: hidden, and naming the process that writes it.
fn temporary_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp-{pid}")
}

/// The writer's process id of a temporary file name that [`write_atomically`] makes.
fn temporary_owner(file_name: &str) -> Option<u32> {
    let (stem, pid) = file_name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    (!stem.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// Whether `file_name` is one of [`write_atomically`]'s temporary files.
pub fn is_temporary_name(file_name: &str) -> bool {
    temporary_owner(file_name).is_some()
}

fn process_is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only asks whether the process exists; nothing is delivered.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the temporary files in `dir` whose writing process no longer runs (killed in the
/// middle of a write); returns their names.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temporary_owner(&name) else { continue };
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if is_file && pid != std::process::id() && !process_is_alive(pid) {
            fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// What kind of thing a non-regular file is, for messages.
fn describe_kind(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` (through links) for reading only if it is a regular file of at most
/// `max_bytes`; returns it with its size. Opening does not block on a FIFO.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<(File, u64)> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow::anyhow!("{} does not exist", path.display()),
        _ => anyhow::anyhow!("cannot open {}: {}", path.display(), plain_io_message(&e)),
    })?;
    let metadata = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_file() {
        bail!("{} is {}; a regular file was expected", path.display(), describe_kind(metadata.file_type()));
    }
    if metadata.len() > max_bytes {
        bail!(
            "{} is {} bytes, more than the {} that a file of its kind may hold",
            path.display(),
            metadata.len(),
            max_bytes
        );
    }
    Ok((file, metadata.len()))
}

/// The text of a regular file of at most `max_bytes`.
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    let (mut file, size) = open_regular(path, max_bytes)?;
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte more than the limit would reveal a file that grew since it was measured.
    Read::by_ref(&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {}", path.display(), plain_io_message(&e)))?;
    if bytes.len() as u64 > max_bytes {
        bail!("{} grew past {max_bytes} bytes while it was read", path.display());
    }
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
}

/// Largest safetensors file read: far above any model this tool builds within its size limits.
pub const MAX_SAFETENSORS_BYTES: u64 = 64 << 30;
/// Largest safetensors header: its JSON names a few dozen tensors.
const MAX_SAFETENSORS_HEADER: u64 = 16 << 20;

/// Checks that `path` is a regular file whose safetensors header fits inside it, before libtorch
/// reads the whole file into memory.
pub fn check_safetensors(path: &Path) -> Result<()> {
    let (mut file, size) = open_regular(path, MAX_SAFETENSORS_BYTES)?;
    let not_safetensors =
        |reason: String| anyhow::anyhow!("{}: not a readable safetensors file ({reason})", path.display());
    let mut length = [0u8; 8];
    if size < 8 || file.read_exact(&mut length).is_err() {
        return Err(not_safetensors(format!("it is {size} bytes, too short for a header")));
    }
    let header = u64::from_le_bytes(length);
    if header > MAX_SAFETENSORS_HEADER || header > size - 8 {
        return Err(not_safetensors(format!(
            "its header claims {header} bytes, but the file has {} after the length",
            size - 8
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a temp path");
        // SAFETY: a valid NUL-terminated path and mode.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
    }

    #[test]
    fn temporary_names_round_trip_to_their_owner() {
        assert_eq!(temporary_owner(&temporary_name("config.json", 4321)), Some(4321));
        assert_eq!(temporary_owner(".x.tmp-12abc"), None);
        assert_eq!(temporary_owner("config.json"), None);
        assert_eq!(temporary_owner("..tmp-5"), None);
    }

    #[test]
    fn a_symlink_is_followed_and_its_target_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("real.txt");
        fs::write(&target, "old").expect("write");
        let link = dir.path().join("link.txt");
        symlink("real.txt", &link).expect("symlink");
        write_atomically(&link, |path| fs::write(path, "new").map_err(Into::into)).expect("write through the link");
        assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link stays a link");
        assert_eq!(fs::read_to_string(&target).expect("read"), "new");
        // A dangling link creates its target.
        let dangling = dir.path().join("dangling");
        symlink("made.txt", &dangling).expect("symlink");
        write_atomically(&dangling, |path| fs::write(path, "made").map_err(Into::into)).expect("write");
        assert_eq!(fs::read_to_string(dir.path().join("made.txt")).expect("read"), "made");
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 4, "no temporary file is left: {names:?}");
    }

    #[test]
    fn a_fifo_is_written_to_directly_and_stays_a_fifo() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read_to_string(fifo).expect("read the FIFO"))
        };
        write_atomically(&fifo, |path| fs::write(path, "through the pipe").map_err(Into::into)).expect("write");
        assert_eq!(reader.join().expect("reader"), "through the pipe");
        assert!(fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo(), "still a FIFO");
    }

    #[test]
    fn reads_refuse_fifos_devices_and_oversized_files_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("config.json");
        mkfifo(&fifo);
        let error = read_text(&fifo, 1 << 20).expect_err("a FIFO");
        assert!(error.to_string().contains("is a FIFO"), "{error}");
        let zero = dir.path().join("zero");
        symlink("/dev/zero", &zero).expect("symlink");
        let error = read_text(&zero, 1 << 20).expect_err("a device");
        assert!(error.to_string().contains("is a character device"), "{error}");
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; 100]).expect("write");
        let error = read_text(&big, 99).expect_err("too big");
        assert!(error.to_string().contains("100 bytes, more than the 99"), "{error}");
        assert_eq!(read_text(&big, 100).expect("fits").len(), 100);
    }

    #[test]
    fn safetensors_headers_must_fit_their_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.safetensors");
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        fs::write(&path, &bytes).expect("write");
        let error = check_safetensors(&path).expect_err("a lying header");
        assert!(error.to_string().contains("header claims 1099511627776 bytes"), "{error}");
        fs::write(&path, b"abc").expect("write");
        assert!(check_safetensors(&path).is_err());
        let mut good = 2u64.to_le_bytes().to_vec();
        good.extend_from_slice(b"{}");
        fs::write(&path, &good).expect("write");
        check_safetensors(&path).expect("a header that fits");
    }

    #[test]
    fn only_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A process id far above Linux's pid_max (2^22) runs nowhere.
        let dead = temporary_name("training_state.safetensors", 4_000_000_000);
        let alive = temporary_name("config.json", std::process::id());
        for name in [&dead, &alive, &"keep.txt".to_owned()] {
            fs::write(dir.path().join(name), "x").expect("write");
        }
        assert_eq!(remove_stale_temporaries(dir.path()).expect("clean"), vec![dead.clone()]);
        assert!(!dir.path().join(&dead).exists());
        assert!(dir.path().join(&alive).exists() && dir.path().join("keep.txt").exists());
    }
}
