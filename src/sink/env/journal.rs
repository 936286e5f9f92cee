//! The crash journal of in-place writes: the entry recorded in the state file before a file is
//! rewritten in place, cleared once it is done or undone, and the recovery that the next run
//! does first ([`recover_in_place`]): a file that holds the new content is finished, anything
//! else gets the safety copy `<file>.audsync-backup` back.
//!
//! This module owns the journal entries and the safety copies. It must never edit or write a
//! `.env` file except to put its saved content back, never remove a safety copy whose content
//! may still be needed, and never put file content into an error or a message: paths only.

use std::fs;
use std::path::{Path, PathBuf};

use super::write;

/// Why recovery stopped. Names paths, never content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The state file that holds the journal could not be read or written (its own message).
    #[error("{0}")]
    State(crate::state::Error),
    /// A write cut short could not be undone; the copy is left for the user.
    #[error(
        "{}: an in-place write was cut short and the previous content cannot be put back ({source}); it is saved in {}: copy it back",
        target.display(),
        backup.display()
    )]
    PutBack {
        target: PathBuf,
        backup: PathBuf,
        source: write::Error,
    },
}

/// `<file>.audsync-backup` next to the file.
pub(super) fn backup_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| ".env".into());
    name.push(".audsync-backup");
    target.with_file_name(name)
}

/// FNV-1a 64 of the bytes, hex: enough to tell the new content from anything else.
pub(super) fn content_hash(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Record an in-place write about to start (replacing any entry for the same file).
pub(super) fn record(state_path: &Path, entry: crate::state::InPlaceWrite) -> Result<(), Error> {
    crate::state::StateFile::update(state_path, |s| {
        s.in_place_writes.retain(|w| w.target != entry.target);
        s.in_place_writes.push(entry);
    })
    .map_err(Error::State)
}

/// Forget the in-place write of `target` (done, or put back).
pub(super) fn clear(state_path: &Path, target: &Path) -> Result<(), Error> {
    crate::state::StateFile::update(state_path, |s| {
        s.in_place_writes.retain(|w| w.target != target)
    })
    .map_err(Error::State)
}

/// Finish or undo the in-place writes the state file at `state_path` journals (a run killed
/// mid-write): a file that holds the new content is finished, anything else gets the safety
/// copy back; then the copy and the journal entry go. Runs before anything else of a pass.
/// Returns what was done, for the log and the report.
pub(crate) fn recover_in_place(state_path: &Path) -> Result<Vec<String>, Error> {
    let pending = crate::state::StateFile::load(state_path, true)
        .map_err(Error::State)?
        .state
        .in_place_writes;
    if pending.is_empty() {
        return Ok(vec![]);
    }
    let mut done = Vec::new();
    for w in pending {
        let now = crate::fsx::read_bounded(&w.target, crate::fsx::MAX_TEXT);
        let finished = now
            .as_ref()
            .is_ok_and(|b| b.len() as u64 == w.new_len && content_hash(b) == w.new_hash);
        if finished {
            let _ = fs::remove_file(&w.backup);
            done.push(format!(
                "{}: an in-place write cut short by an earlier run had completed; its safety copy was removed",
                w.target.display()
            ));
            continue;
        }
        let old = match crate::fsx::read_bounded(&w.backup, crate::fsx::MAX_TEXT) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %w.target.display(), backup = %w.backup.display(), error = %e, "an in-place write was cut short and its safety copy cannot be read; check the file by hand");
                done.push(format!(
                    "{}: an in-place write was cut short and its safety copy {} is gone ({e}); check the file by hand",
                    w.target.display(),
                    w.backup.display()
                ));
                continue;
            }
        };
        if now.as_deref().ok() == Some(old.as_slice()) {
            let _ = fs::remove_file(&w.backup);
            done.push(format!(
                "{}: an in-place write cut short by an earlier run had not started; its safety copy was removed",
                w.target.display()
            ));
            continue;
        }
        let put_back = crate::fsx::open_regular(&w.target, true, None)
            .map_err(write::Error::Reopen)
            .and_then(|mut f| write::rewrite(&mut f, &old, &mut true));
        match put_back {
            Ok(()) => {
                let _ = fs::remove_file(&w.backup);
                done.push(format!(
                    "{}: an in-place write cut short by an earlier run was undone (the previous content put back); this run writes it again",
                    w.target.display()
                ));
            }
            Err(source) => {
                return Err(Error::PutBack {
                    target: w.target,
                    backup: w.backup,
                    source,
                });
            }
        }
    }
    crate::state::StateFile::update(state_path, |s| s.in_place_writes.clear())
        .map_err(Error::State)?;
    for d in &done {
        tracing::warn!("{d}");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_cut_short_is_finished_or_undone_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join(".env");
        let state = dir.path().join("state.json");
        let old = "A=1\nCLOUDFLARE_AUD_TAG=old\n";
        let new = "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n";
        let journal = |content: &str| {
            fs::write(backup_path(&target), old).unwrap();
            fs::write(&target, content).unwrap();
            crate::state::StateFile::update(&state, |s| {
                s.in_place_writes = vec![crate::state::InPlaceWrite {
                    target: target.clone(),
                    backup: backup_path(&target),
                    new_len: new.len() as u64,
                    new_hash: content_hash(new.as_bytes()),
                }]
            })
            .unwrap();
        };
        // Torn: undone.
        journal("A=1\nCLOUDFLARE_AUD_TAG=newvaluold\n");
        let done = recover_in_place(&state).unwrap();
        assert!(done[0].contains("undone"), "{done:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), old);
        assert!(!backup_path(&target).exists());
        // Complete: finished.
        journal(new);
        let done = recover_in_place(&state).unwrap();
        assert!(done[0].contains("completed"), "{done:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), new);
        assert!(!backup_path(&target).exists());
        assert!(
            crate::state::StateFile::load(&state, true)
                .unwrap()
                .state
                .in_place_writes
                .is_empty()
        );
        // Nothing pending: nothing done.
        assert!(recover_in_place(&state).unwrap().is_empty());
    }
}
