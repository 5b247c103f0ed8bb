//! A real full file system (a small tmpfs; needs root, as the e2e tests
//! do): enqueues are refused with `DiskFull`, nothing refused is stored,
//! nothing accepted is lost, and accepting resumes once there is room.

use std::path::{Path, PathBuf};
use std::process::Command;

use flick_core::{ActivationId, Cause, Invocation};
use flick_queue::{EnqueueOptions, Queue, SqliteQueue};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&at).status();
        assert!(ok.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4 << 10, 512] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() {}
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_refuses_enqueues_without_losing_or_half_storing_any() {
    let outer = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(outer.path().join("mnt"), "8m");
    let path = mnt.0.join("queue.db");
    let q = SqliteQueue::open(&path).unwrap();
    let body = vec![b'x'; 4096];
    let (mut accepted, mut refused): (Vec<ActivationId>, Vec<ActivationId>) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let inv = Invocation::post("f", Cause::Async, body.clone());
        accepted.push(q.enqueue(inv, EnqueueOptions::default()).await.unwrap().id().clone());
    }
    fill(&mnt.0.join("filler"));

    // Concurrent enqueuers until the disk refuses (bounded).
    let mut rounds = 0;
    while refused.is_empty() && rounds < 200 {
        rounds += 1;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let q = q.clone();
                let inv = Invocation::post("f", Cause::Async, body.clone());
                tokio::spawn(async move { (inv.id.clone(), q.enqueue(inv, EnqueueOptions::default()).await) })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (id, Ok(_)) => accepted.push(id),
                (id, Err(e)) => {
                    assert!(e.is_disk_full(), "a full disk must say so, got: {e}");
                    refused.push(id);
                }
            }
        }
    }
    assert!(!refused.is_empty(), "the tmpfs never filled up");
    assert_eq!(q.depth("f").await.unwrap().ready, accepted.len() as u64, "counts only what was stored");

    // Room again: accepting resumes on the same queue.
    std::fs::remove_file(mnt.0.join("filler")).unwrap();
    let inv = Invocation::post("f", Cause::Async, body.clone());
    accepted.push(q.enqueue(inv, EnqueueOptions::default()).await.unwrap().id().clone());
    drop(q);

    let q = SqliteQueue::open(&path).unwrap();
    for id in &accepted {
        assert!(q.item(id).await.unwrap().is_some(), "accepted {id} lost");
    }
    for id in &refused {
        assert!(q.item(id).await.unwrap().is_none(), "refused {id} was stored");
    }
    eprintln!("{} accepted, {} refused with DiskFull, none lost or half-stored", accepted.len(), refused.len());
}
