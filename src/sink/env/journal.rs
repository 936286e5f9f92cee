//! The crash journal of in-place writes: the entry recorded in the state file before a file is
//! rewritten in place, cleared once it is done or undone, and the recovery that the next run
//! does first ([`recover_in_place`]): a file that holds the new content is finished, anything
//! else gets the safety copy `<file>.audsync-backup` back.
//!
//! This module owns the journal entries and the safety copies. It must never edit or write a
//! `.env` file except to put its saved content back, never remove a safety copy whose content
//! may still be needed, and never put file content into an error or a message: paths only.

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
#[cfg(test)]
pub(super) fn backup_path(target: &Path) -> PathBuf {
    target.with_file_name(backup_name(target.file_name().unwrap_or_default()))
}

/// The safety copy's name beside the file `name`.
pub(super) fn backup_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut b = name.to_os_string();
    b.push(".audsync-backup");
    b
}

/// What an interrupted in-place write's file holds now.
#[derive(Debug, PartialEq)]
enum Found {
    /// The new content: the write completed.
    New,
    /// The old content: the write had not started.
    Old,
    /// The new bytes up to some offset, the old after it (a rewrite is: from offset 0, write
    /// the new bytes, truncate): the write was cut short.
    Torn,
    /// Anything else: someone edited the file since.
    Edited,
}

fn classify(now: &[u8], old: &[u8], w: &crate::state::InPlaceWrite) -> Found {
    if now.len() as u64 == w.new_len && content_hash(now) == w.new_hash {
        return Found::New;
    }
    if now == old {
        return Found::Old;
    }
    // The new content is the edit of the old one by the values written (schema 2 entries).
    let new = std::str::from_utf8(old).ok().and_then(|old| {
        w.values.iter().try_fold(old.to_string(), |c, (k, v)| {
            super::edit::checked_edit(&c, k, v).ok()
        })
    });
    let Some(new) = new.filter(|n| content_hash(n.as_bytes()) == w.new_hash) else {
        // An entry of an older version (no values): torn and edited cannot be told apart; it
        // is put back, as then.
        return Found::Torn;
    };
    if is_torn(now, old, new.as_bytes()) {
        Found::Torn
    } else {
        Found::Edited
    }
}

/// Whether `now` can be what an interrupted rewrite of `old` by `new` left: the new bytes up to
/// some offset and the old after it (a rewrite writes from offset 0, then truncates); a crash
/// may also leave blocks unwritten (zeros) or written out of order. So: no longer than the
/// longer of the two, and every byte the old or the new one at its offset, or zero.
fn is_torn(now: &[u8], old: &[u8], new: &[u8]) -> bool {
    now.len() <= old.len().max(new.len())
        && now
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0 || old.get(i) == Some(&b) || new.get(i) == Some(&b))
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
/// mid-write): a file that holds the new content is finished, the old or a torn mix of the two
/// gets the safety copy back; a file someone edited since is kept, and the values the write
/// was for are written into it (a journalled in-place write again). Then the copy and the
/// journal entry go. Runs before anything else of a pass. Returns what was done, for the log
/// and the report.
pub(crate) fn recover_in_place(state_path: &Path) -> Result<Vec<String>, Error> {
    let pending = crate::state::StateFile::load(state_path, true)
        .map_err(Error::State)?
        .state
        .in_place_writes;
    if pending.is_empty() {
        return Ok(vec![]);
    }
    let mut done = Vec::new();
    let mut redo = Vec::new();
    for w in pending {
        let shown = w.target.display().to_string();
        let place = match super::place::resolve(&w.target) {
            Ok(p) => p,
            Err(e) => {
                done.push(format!(
                    "{shown}: an in-place write was cut short and the file cannot be reached safely ({e}); its safety copy {} is left: check the file by hand",
                    w.backup.display()
                ));
                continue;
            }
        };
        let backup = w
            .backup
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| backup_name(&place.name));
        let read = |name: &std::ffi::OsStr| {
            place
                .open_in(name, false)
                .and_then(|f| crate::fsx::read_open(f, crate::fsx::MAX_TEXT))
        };
        let now = read(&place.name);
        let old = match read(&backup) {
            Ok(b) => b,
            Err(_)
                if now.as_ref().is_ok_and(|b| {
                    b.len() as u64 == w.new_len && content_hash(b) == w.new_hash
                }) =>
            {
                done.push(format!(
                    "{shown}: an in-place write cut short by an earlier run had completed"
                ));
                continue;
            }
            Err(e) => {
                tracing::warn!(file = %shown, backup = %w.backup.display(), error = %e, "an in-place write was cut short and its safety copy cannot be read; check the file by hand");
                done.push(format!(
                    "{shown}: an in-place write was cut short and its safety copy {} is gone ({e}); check the file by hand",
                    w.backup.display()
                ));
                continue;
            }
        };
        let found = match &now {
            Ok(b) => classify(b, &old, &w),
            Err(_) => Found::Torn,
        };
        match found {
            Found::New => {
                let _ = place.unlink(&backup);
                done.push(format!(
                    "{shown}: an in-place write cut short by an earlier run had completed; its safety copy was removed"
                ));
                continue;
            }
            Found::Old => {
                let _ = place.unlink(&backup);
                done.push(format!(
                    "{shown}: an in-place write cut short by an earlier run had not started; its safety copy was removed"
                ));
                continue;
            }
            Found::Edited => {
                let _ = place.unlink(&backup);
                redo.push((shown, w.target.clone(), w.values.clone()));
                continue;
            }
            Found::Torn => {}
        }
        let put_back = place
            .open(true)
            .map_err(write::Error::Reopen)
            .and_then(|mut f| write::rewrite(&mut f, &old, &mut true));
        match put_back {
            Ok(()) => {
                let _ = place.unlink(&backup);
                done.push(format!(
                    "{shown}: an in-place write cut short by an earlier run was undone (the previous content put back); this run writes it again"
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
    // Someone's edit made since: kept, and the values written into it (journalled anew).
    for (shown, target, values) in redo {
        let sink = super::EnvFileSink {
            path: target,
            mode: super::WriteMode::InPlace,
            create: false,
            journal: Some(state_path.to_path_buf()),
            project_dir: None,
            dry_run: false,
        };
        done.push(match sink.write_all(&values) {
            Ok(_) => format!(
                "{shown}: changed by someone else since an in-place write of an earlier run was cut short: their content is kept and the AUD edit applied to it"
            ),
            Err(e) => format!(
                "{shown}: changed by someone else since an in-place write of an earlier run was cut short: their content is kept; the AUD edit could not be applied to it ({e}); this run tries again"
            ),
        });
    }
    for d in &done {
        tracing::warn!("{d}");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
                    values: [("CLOUDFLARE_AUD_TAG".to_string(), "newvalue".to_string())].into(),
                }]
            })
            .unwrap();
        };
        // Torn (the new bytes up to an offset, the old after it; or the new ones in full,
        // not yet truncated; or a block never written): undone.
        let torn = [
            format!("{}{}", &new[..25], &old[25..]),
            new[..28].to_string(),
            format!("{}\0\0\0\0{}", &new[..20], &new[24..]),
        ];
        for t in torn {
            journal(&t);
            let done = recover_in_place(&state).unwrap();
            assert!(done[0].contains("undone"), "{t:?}: {done:?}");
            assert_eq!(fs::read_to_string(&target).unwrap(), old);
            assert!(!backup_path(&target).exists());
        }
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

    /// Issue 24 #3: killed while the journal was pending, then the user appended a line. The
    /// next run must keep their line (never put the safety copy over it), write the AUD into
    /// their content, clear the journal, and say so.
    #[test]
    fn a_file_edited_after_a_write_was_cut_short_is_kept_and_gets_the_edit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join(".env");
        let state = dir.path().join("state.json");
        let old = "A=1\nCLOUDFLARE_AUD_TAG=old\n";
        let new = "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n";
        let values = std::collections::BTreeMap::from([(
            "CLOUDFLARE_AUD_TAG".to_string(),
            "newvalue".to_string(),
        )]);
        // Both ways a kill can leave it: before the write began (the file still old) and
        // after it ended (new, the journal not yet cleared); then the user appends a line.
        for before in [old, new] {
            fs::write(backup_path(&target), old).unwrap();
            fs::write(&target, format!("{before}USER_LINE=secret-value\n")).unwrap();
            crate::state::StateFile::update(&state, |s| {
                s.in_place_writes = vec![crate::state::InPlaceWrite {
                    target: target.clone(),
                    backup: backup_path(&target),
                    new_len: new.len() as u64,
                    new_hash: content_hash(new.as_bytes()),
                    values: values.clone(),
                }]
            })
            .unwrap();
            let done = recover_in_place(&state).unwrap();
            assert_eq!(
                fs::read_to_string(&target).unwrap(),
                "A=1\nCLOUDFLARE_AUD_TAG=newvalue\nUSER_LINE=secret-value\n",
                "their line kept, the AUD written into it"
            );
            assert_eq!(done.len(), 1, "{done:?}");
            assert!(
                done[0].contains("changed by someone else") && done[0].contains("kept"),
                "{done:?}"
            );
            assert!(!done[0].contains("secret-value"), "{done:?}");
            assert!(!backup_path(&target).exists());
            assert!(
                crate::state::StateFile::load(&state, true)
                    .unwrap()
                    .state
                    .in_place_writes
                    .is_empty(),
                "the journal is cleared"
            );
        }
    }
}
