//! What a piece of work looked at on disk, so that its result can be
//! trusted again while none of it has changed.
//!
//! [`Recorded`] wraps a future: while it is being polled, every read,
//! directory listing and existence check made through this crate is noted
//! with the path's metadata ([`Stat`]), taken *before* the content is read.
//! Work that does something this crate cannot vouch for (reads through a
//! symlink, decrypts a secret) calls [`taint`], and its record is dropped.
//!
//! A record is reused only when every path still has the same metadata:
//! kind, size, inode, mode, and the modification and change times to the
//! nanosecond. The change time cannot be set back by any user call, so an
//! edit that keeps size and mtime still shows. A path whose times are
//! within [`SETTLE`] of the recording is not trusted at all (the kernel's
//! clock for file times is coarse: an edit in the same tick would keep
//! them), so the record is kept only for files that had settled.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How old a path's times must be, when recorded, for the record to be
/// kept.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A path's metadata as far as a record compares it. Written compactly:
/// `null` for nothing there, else `[mode, size, inode, device, mtime_ns,
/// ctime_ns]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Compact", into = "Compact")]
pub enum Stat {
    /// Nothing is there.
    Absent,
    /// Something is there (a file, a directory or a symlink: `mode` holds
    /// the type bits).
    Present {
        mode: u32,
        size: u64,
        inode: u64,
        device: u64,
        mtime_ns: i64,
        ctime_ns: i64,
    },
}

type Compact = Option<(u32, u64, u64, u64, i64, i64)>;

impl From<Compact> for Stat {
    fn from(c: Compact) -> Stat {
        match c {
            None => Stat::Absent,
            Some((mode, size, inode, device, mtime_ns, ctime_ns)) => Stat::Present {
                mode,
                size,
                inode,
                device,
                mtime_ns,
                ctime_ns,
            },
        }
    }
}

impl From<Stat> for Compact {
    fn from(s: Stat) -> Compact {
        match s {
            Stat::Absent => None,
            Stat::Present {
                mode,
                size,
                inode,
                device,
                mtime_ns,
                ctime_ns,
            } => Some((mode, size, inode, device, mtime_ns, ctime_ns)),
        }
    }
}

impl Stat {
    /// The metadata of `abs` now, not following a final symlink.
    pub fn of(abs: &Path) -> io::Result<Stat> {
        match std::fs::symlink_metadata(abs) {
            Ok(m) => Ok(Stat::from_metadata(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Stat::Absent),
            Err(e) => Err(e),
        }
    }

    fn from_metadata(m: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat::Present {
            mode: m.mode(),
            size: m.size(),
            inode: m.ino(),
            device: m.dev(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
        }
    }

    /// Whether this was last touched before `cutoff_ns` (nanoseconds since
    /// the epoch). Nothing there is always settled.
    fn settled_before(&self, cutoff_ns: i64) -> bool {
        match self {
            Stat::Absent => true,
            Stat::Present {
                mtime_ns, ctime_ns, ..
            } => *mtime_ns < cutoff_ns && *ctime_ns < cutoff_ns,
        }
    }
}

/// One path a piece of work looked at, relative to the project root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Looked {
    pub path: String,
    pub stat: Stat,
}

#[derive(Debug, Default)]
struct Recording {
    root: std::path::PathBuf,
    looked: Vec<Looked>,
    tainted: bool,
}

/// What a recorded piece of work looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// Every path, with its metadata, when the result can be trusted again
    /// later: nothing tainted it and every path had settled.
    pub reusable: Option<Vec<Looked>>,
    /// Every project-relative path it looked at (files and directories),
    /// tainted or not: what a change must touch to affect the work.
    pub read: Vec<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Notes that the work being recorded looked at `abs` (no-op when nothing
/// is recorded on this thread). The metadata is taken now: call it before
/// reading.
pub fn note(abs: &Path) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(rec) = c.as_mut() else {
            return;
        };
        let Some(rel) = abs
            .strip_prefix(&rec.root)
            .ok()
            .and_then(|r| r.to_str())
            .and_then(|r| crate::clean_relative("", r))
            .filter(|r| !r.is_empty())
        else {
            // Outside the project (or not UTF-8): nothing to vouch for.
            rec.tainted = true;
            return;
        };
        match Stat::of(abs) {
            Ok(stat) => {
                if let Stat::Present { mode, .. } = stat
                    && mode & 0o170000 == 0o120000
                {
                    // A symlink's target can change without it.
                    rec.tainted = true;
                }
                match rec.looked.iter().find(|l| l.path == rel) {
                    // Changed while the work ran: what it read is mixed.
                    Some(l) if l.stat != stat => rec.tainted = true,
                    Some(_) => {}
                    None => rec.looked.push(Looked { path: rel, stat }),
                }
            }
            Err(_) => rec.tainted = true,
        }
    });
}

/// Marks the work being recorded as not reusable (no-op when nothing is
/// recorded on this thread).
pub fn taint() {
    CURRENT.with(|c| {
        if let Some(rec) = c.borrow_mut().as_mut() {
            rec.tainted = true;
        }
    });
}

/// `inner`, with what it looks at recorded while it runs.
#[derive(Debug)]
pub struct Recorded<F> {
    inner: Pin<Box<F>>,
    recording: Option<Recording>,
    started_ns: i64,
}

impl<F: Future> Recorded<F> {
    pub fn new(root: &Path, inner: F) -> Self {
        Recorded {
            inner: Box::pin(inner),
            recording: Some(Recording {
                root: root.to_path_buf(),
                ..Recording::default()
            }),
            started_ns: now_ns(),
        }
    }
}

impl<F: Future> Future for Recorded<F> {
    /// The inner output, and what it looked at.
    type Output = (F::Output, Watched);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mine = this.recording.take();
        let outer = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), mine));
        let polled = this.inner.as_mut().poll(cx);
        this.recording = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(out) => {
                let rec = this.recording.take().unwrap_or_default();
                let cutoff = this.started_ns.saturating_sub(SETTLE.as_nanos() as i64);
                let read = rec.looked.iter().map(|l| l.path.clone()).collect();
                let kept = (!rec.tainted
                    && rec.looked.iter().all(|l| l.stat.settled_before(cutoff)))
                .then_some(rec.looked);
                Poll::Ready((
                    out,
                    Watched {
                        reusable: kept,
                        read,
                    },
                ))
            }
        }
    }
}

/// Whether every path in `looked` still has the metadata recorded
/// (project-relative paths only; anything else is a mismatch).
pub fn unchanged(root: &Path, looked: &[Looked]) -> bool {
    looked.iter().all(|l| {
        crate::clean_relative("", &l.path).as_deref() == Some(l.path.as_str())
            && !l.path.is_empty()
            && Stat::of(&root.join(&l.path)).is_ok_and(|s| s == l.stat)
    })
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = Box::pin(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn age(path: &Path) {
        // Only the modification time can be set back; the change time
        // stays recent, so these records are dropped as unsettled.
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(old))
            .expect("set mtime");
    }

    #[test]
    fn records_what_was_read_and_drops_unsettled_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("a.yaml"), "a: 1\n").expect("write");
        age(&root.join("a.yaml"));
        let ((), watched) = block_on(Recorded::new(root, async {
            crate::read_to_string(root, &root.join("a.yaml")).expect("read");
            note(&root.join("missing"));
        }));
        // The change time was just set: not settled.
        assert_eq!(watched.reusable, None);
        // What was read is known all the same.
        assert_eq!(watched.read, ["a.yaml", "missing"]);
    }

    #[test]
    fn settled_records_are_kept_and_see_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("a.yaml"), "a: 1\n").expect("write");
        std::thread::sleep(SETTLE + Duration::from_millis(50));
        let ((), watched) = block_on(Recorded::new(root, async {
            crate::read_to_string(root, &root.join("a.yaml")).expect("read");
            note(&root.join("missing"));
        }));
        let looked = watched.reusable.expect("settled, nothing tainted");
        assert_eq!(looked.len(), 2);
        assert_eq!(looked[0].path, "a.yaml");
        assert_eq!(looked[1].stat, Stat::Absent);
        assert!(unchanged(root, &looked));
        // Same size, same mtime: the change time still moves.
        std::fs::write(root.join("a.yaml"), "a: 2\n").expect("write");
        age(&root.join("a.yaml"));
        assert!(!unchanged(root, &looked));
        std::fs::write(root.join("missing"), "").expect("write");
        assert!(!unchanged(root, &looked[1..]));
    }

    #[test]
    fn taint_and_paths_outside_drop_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let ((), watched) = block_on(Recorded::new(root, async { taint() }));
        assert_eq!(watched.reusable, None);
        let ((), watched) = block_on(Recorded::new(root, async {
            note(Path::new("/etc/hostname"))
        }));
        assert_eq!(watched.reusable, None);
        assert!(watched.read.is_empty(), "nothing outside is listed");
        // Nothing recorded outside a `Recorded`.
        taint();
        note(Path::new("/etc/hostname"));
    }

    #[test]
    fn a_record_from_state_cannot_point_outside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let looked = vec![Looked {
            path: "../outside".to_owned(),
            stat: Stat::Absent,
        }];
        assert!(!unchanged(dir.path(), &looked));
        let looked = vec![Looked {
            path: "/etc/hostname".to_owned(),
            stat: Stat::Absent,
        }];
        assert!(!unchanged(dir.path(), &looked));
    }
}
