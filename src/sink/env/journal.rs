//! The crash journal of in-place writes: the entry recorded before a file is rewritten in
//! place, cleared once it is done or undone, and the recovery that the next run does first
//! ([`recover_in_place`]): a file that holds the new content is finished, the old content or a
//! torn mix of the two gets the safety copy `<file>.audsync-backup` back, and anything else is
//! someone's later edit, kept and given the AUD edit.
//!
//! The entry is kept with the resource -- in the record beside the `.env`'s lock
//! (`lock::Record::in_place_write`) -- not in one configuration's state file, so whichever run
//! takes that lock next (a config run, a flag run, `watch`) finishes what another
//! configuration's run left half done. Older versions journalled in the state file
//! (`in_place_writes`): those entries are moved into the records, finished, and dropped.
//!
//! This module owns the journal entries and the safety copies. It must never edit or write a
//! `.env` file except to put its saved content back, never remove a safety copy whose content
//! may still be needed, and never put file content into an error or a message: paths only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::lock::InPlaceWrite;

use super::write;

/// Why recovery stopped. Names paths, never content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The state file an older version journalled in could not be read or written (its own
    /// message).
    #[error("{0}")]
    State(crate::state::Error),
    /// The record beside the `.env`'s lock that holds the journal could not be read or written
    /// (its own message).
    #[error("{0}")]
    Record(crate::lock::Error),
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

fn classify(now: &[u8], old: &[u8], w: &InPlaceWrite) -> Found {
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

/// Record an in-place write about to start in `record`, the record beside the `.env`'s lock
/// (replacing any entry: one `.env`, one record).
pub(super) fn record(record: &Path, entry: InPlaceWrite) -> Result<(), Error> {
    crate::lock::update_record(record, |r| r.in_place_write = Some(entry)).map_err(Error::Record)
}

/// Forget the in-place write of `target` (done, or put back).
pub(super) fn clear(record: &Path, target: &Path) -> Result<(), Error> {
    crate::lock::update_record(record, |r| {
        if r.in_place_write
            .as_ref()
            .is_some_and(|w| w.target == target)
        {
            r.in_place_write = None;
        }
    })
    .map_err(Error::Record)
}

/// Finish or undo the in-place writes journalled for the `.env` files of a pass (a run killed
/// mid-write, of this configuration or any other): `records` maps each `.env`'s real path to
/// the record beside its lock, which the pass holds. A file that holds the new content is
/// finished, the old or a torn mix of the two gets the safety copy back; a file someone edited
/// since is kept, and the values the write was for are written into it (a journalled in-place
/// write again). Then the copy and the journal entry go. `legacy`: this configuration's state
/// file, where older versions journalled; its entries are first moved into the records (and
/// dropped from it). Runs before anything else of a pass. Returns what was done, for the log
/// and the report.
pub(crate) fn recover_in_place(
    records: &BTreeMap<PathBuf, PathBuf>,
    legacy: Option<&Path>,
) -> Result<Vec<String>, Error> {
    if let Some(state) = legacy {
        migrate(records, state)?;
    }
    let mut done = Vec::new();
    for record in records.values() {
        let pending = crate::lock::read_record(record)
            .map_err(Error::Record)?
            .and_then(|r| r.in_place_write);
        if let Some(w) = pending {
            recover_one(record, w, &mut done)?;
        }
    }
    for d in &done {
        tracing::warn!("{d}");
    }
    Ok(done)
}

/// Whether an in-place write is journalled for any of `records` or, by an older version, in
/// the state file `legacy` (a dry run only says so).
pub(crate) fn pending_in_place(
    records: &BTreeMap<PathBuf, PathBuf>,
    legacy: Option<&Path>,
) -> bool {
    records.values().any(|r| {
        crate::lock::read_record(r).is_ok_and(|r| r.is_some_and(|r| r.in_place_write.is_some()))
    }) || legacy.is_some_and(|s| {
        crate::state::StateFile::load(s, true).is_ok_and(|f| !f.state.in_place_writes.is_empty())
    })
}

/// Move the entries an older version journalled in the state file `state` into the records
/// beside the locks of their `.env`s, then drop them from the state file. Moved first, dropped
/// after: a run killed in between finds the entry in both, and the record's wins (one `.env`
/// has one safety copy, so two entries for it cannot both be pending). An entry for a `.env`
/// this pass does not hold is left for a run that does.
fn migrate(records: &BTreeMap<PathBuf, PathBuf>, state: &Path) -> Result<(), Error> {
    let pending = crate::state::StateFile::load(state, true)
        .map_err(Error::State)?
        .state
        .in_place_writes;
    for w in pending {
        let Some(record) = records.get(&crate::lock::Resource::real_path(&w.target)) else {
            tracing::warn!(file = %w.target.display(), "an in-place write an older version journalled is for a .env this run does not write; a run that writes it finishes it");
            continue;
        };
        crate::lock::update_record(record, |r| {
            if r.in_place_write.is_none() {
                r.in_place_write = Some(w.clone());
            }
        })
        .map_err(Error::Record)?;
        crate::state::StateFile::update(state, |s| {
            s.in_place_writes.retain(|x| x.target != w.target)
        })
        .map_err(Error::State)?;
        tracing::info!(file = %w.target.display(), "moved the in-place write journal of an older version from the state file to the record beside the .env's lock");
    }
    Ok(())
}

/// Finish or undo the one in-place write `w` journalled in `record`, then clear it (unless
/// the previous content could not be put back: the entry and the copy stay for the next run).
/// The entry is cleared before the safety copy is removed: a run killed in between leaves a
/// copy no entry names, which the next run removes (`EnvFileSink::remove_leftovers`).
fn recover_one(record: &Path, w: InPlaceWrite, done: &mut Vec<String>) -> Result<(), Error> {
    let shown = w.target.display().to_string();
    let forget = || clear(record, &w.target);
    let place = match super::place::resolve(&w.target) {
        Ok(p) => p,
        Err(e) => {
            done.push(format!(
                "{shown}: an in-place write was cut short and the file cannot be reached safely ({e}); its safety copy {} is left: check the file by hand",
                w.backup.display()
            ));
            return forget();
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
            if now
                .as_ref()
                .is_ok_and(|b| b.len() as u64 == w.new_len && content_hash(b) == w.new_hash) =>
        {
            done.push(format!(
                "{shown}: an in-place write cut short by an earlier run had completed"
            ));
            return forget();
        }
        Err(e) => {
            tracing::warn!(file = %shown, backup = %w.backup.display(), error = %e, "an in-place write was cut short and its safety copy cannot be read; check the file by hand");
            done.push(format!(
                "{shown}: an in-place write was cut short and its safety copy {} is gone ({e}); check the file by hand",
                w.backup.display()
            ));
            return forget();
        }
    };
    let found = match &now {
        Ok(b) => classify(b, &old, &w),
        Err(_) => Found::Torn,
    };
    match found {
        Found::New => {
            forget()?;
            let _ = place.unlink(&backup);
            done.push(format!(
                "{shown}: an in-place write cut short by an earlier run had completed; its safety copy was removed"
            ));
            Ok(())
        }
        Found::Old => {
            forget()?;
            let _ = place.unlink(&backup);
            done.push(format!(
                "{shown}: an in-place write cut short by an earlier run had not started; its safety copy was removed"
            ));
            Ok(())
        }
        Found::Edited => {
            // Someone's edit made since: kept, and the values written into it (journalled
            // anew in the same record).
            forget()?;
            let _ = place.unlink(&backup);
            let sink = super::EnvFileSink {
                path: w.target.clone(),
                mode: super::WriteMode::InPlace,
                create: false,
                journal: Some(record.to_path_buf()),
                project_dir: None,
                dry_run: false,
            };
            done.push(match sink.write_all(&w.values) {
                Ok(_) => format!(
                    "{shown}: changed by someone else since an in-place write of an earlier run was cut short: their content is kept and the AUD edit applied to it"
                ),
                Err(e) => format!(
                    "{shown}: changed by someone else since an in-place write of an earlier run was cut short: their content is kept; the AUD edit could not be applied to it ({e}); this run tries again"
                ),
            });
            Ok(())
        }
        Found::Torn => {
            let put_back = place
                .open(true)
                .map_err(write::Error::Reopen)
                .and_then(|mut f| write::rewrite(&mut f, &old, &mut true));
            match put_back {
                Ok(()) => {
                    forget()?;
                    let _ = place.unlink(&backup);
                    done.push(format!(
                        "{shown}: an in-place write cut short by an earlier run was undone (the previous content put back); this run writes it again"
                    ));
                    Ok(())
                }
                Err(source) => Err(Error::PutBack {
                    target: w.target,
                    backup: w.backup,
                    source,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const OLD: &str = "A=1\nCLOUDFLARE_AUD_TAG=old\n";
    const NEW: &str = "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n";

    fn entry(target: &Path) -> InPlaceWrite {
        InPlaceWrite {
            target: target.to_path_buf(),
            backup: backup_path(target),
            new_len: NEW.len() as u64,
            new_hash: content_hash(NEW.as_bytes()),
            values: [("CLOUDFLARE_AUD_TAG".to_string(), "newvalue".to_string())].into(),
        }
    }

    /// The `.env` in `dir` and the record beside its lock (a lock directory of its own).
    fn env_and_record(dir: &Path) -> (PathBuf, PathBuf, BTreeMap<PathBuf, PathBuf>) {
        let target = dir.join(".env");
        fs::create_dir_all(dir.join("locks")).unwrap();
        let record = dir.join("locks/env.json");
        let records = BTreeMap::from([(crate::lock::Resource::real_path(&target), record.clone())]);
        (target, record, records)
    }

    fn journalled(record: &Path) -> Option<InPlaceWrite> {
        crate::lock::read_record(record)
            .unwrap()
            .and_then(|r| r.in_place_write)
    }

    #[test]
    fn a_write_cut_short_is_finished_or_undone_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let (target, record, records) = env_and_record(dir.path());
        let journal = |content: &str| {
            fs::write(backup_path(&target), OLD).unwrap();
            fs::write(&target, content).unwrap();
            super::record(&record, entry(&target)).unwrap();
        };
        // Torn (the new bytes up to an offset, the old after it; or the new ones in full,
        // not yet truncated; or a block never written): undone.
        let torn = [
            format!("{}{}", &NEW[..25], &OLD[25..]),
            NEW[..28].to_string(),
            format!("{}\0\0\0\0{}", &NEW[..20], &NEW[24..]),
        ];
        for t in torn {
            journal(&t);
            let done = recover_in_place(&records, None).unwrap();
            assert!(done[0].contains("undone"), "{t:?}: {done:?}");
            assert_eq!(fs::read_to_string(&target).unwrap(), OLD);
            assert!(!backup_path(&target).exists());
            assert_eq!(journalled(&record), None);
        }
        // Complete: finished.
        journal(NEW);
        let done = recover_in_place(&records, None).unwrap();
        assert!(done[0].contains("completed"), "{done:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), NEW);
        assert!(!backup_path(&target).exists());
        assert_eq!(journalled(&record), None, "the journal is cleared");
        // Nothing pending: nothing done.
        assert!(recover_in_place(&records, None).unwrap().is_empty());
    }

    /// Issue 24 #3: killed while the journal was pending, then the user appended a line. The
    /// next run must keep their line (never put the safety copy over it), write the AUD into
    /// their content, clear the journal, and say so.
    #[test]
    fn a_file_edited_after_a_write_was_cut_short_is_kept_and_gets_the_edit() {
        let dir = tempfile::tempdir().unwrap();
        let (target, record, records) = env_and_record(dir.path());
        // Both ways a kill can leave it: before the write began (the file still old) and
        // after it ended (new, the journal not yet cleared); then the user appends a line.
        for before in [OLD, NEW] {
            fs::write(backup_path(&target), OLD).unwrap();
            fs::write(&target, format!("{before}USER_LINE=secret-value\n")).unwrap();
            super::record(&record, entry(&target)).unwrap();
            let done = recover_in_place(&records, None).unwrap();
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
            assert_eq!(journalled(&record), None, "the journal is cleared");
        }
    }

    /// An older version journalled in the configuration's state file: the entry is moved into
    /// the record beside the `.env`'s lock, finished there, and dropped from the state file.
    #[test]
    fn an_entry_an_older_version_left_in_the_state_file_is_migrated_and_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (target, record, records) = env_and_record(dir.path());
        let state = dir.path().join("state.json");
        let legacy_entries = |s: &Path| {
            crate::state::StateFile::load(s, true)
                .unwrap()
                .state
                .in_place_writes
        };
        // Torn, journalled by an older version: undone.
        fs::write(backup_path(&target), OLD).unwrap();
        fs::write(&target, &NEW[..28]).unwrap();
        crate::state::StateFile::update(&state, |s| s.in_place_writes = vec![entry(&target)])
            .unwrap();
        assert!(pending_in_place(&records, Some(&state)));
        let done = recover_in_place(&records, Some(&state)).unwrap();
        assert!(done[0].contains("undone"), "{done:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), OLD);
        assert!(!backup_path(&target).exists());
        assert!(
            legacy_entries(&state).is_empty(),
            "dropped from the state file"
        );
        assert_eq!(journalled(&record), None, "finished in the record");
        assert!(!pending_in_place(&records, Some(&state)));
        // Killed between moving it and dropping it: in both; finished once, both cleared.
        fs::write(backup_path(&target), OLD).unwrap();
        fs::write(&target, NEW).unwrap();
        crate::state::StateFile::update(&state, |s| s.in_place_writes = vec![entry(&target)])
            .unwrap();
        super::record(&record, entry(&target)).unwrap();
        let done = recover_in_place(&records, Some(&state)).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].contains("completed"), "{done:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), NEW);
        assert!(legacy_entries(&state).is_empty());
        assert_eq!(journalled(&record), None);
        // An entry for a .env this run does not hold stays for a run that does.
        let other = dir.path().join("other.env");
        crate::state::StateFile::update(&state, |s| s.in_place_writes = vec![entry(&other)])
            .unwrap();
        assert!(recover_in_place(&records, Some(&state)).unwrap().is_empty());
        assert_eq!(legacy_entries(&state).len(), 1);
    }
}
