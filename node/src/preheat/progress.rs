//! What a preheat has done so far, as `GET /preheat/<id>` reports it: per object its size,
//! chunks and bytes done, and errors; for the whole preheat, totals and whether it is over.

use std::sync::Mutex;

use serde::Serialize;

use crate::object::unix_now;

/// An object's errors kept for the report; further ones are only counted.
const MAX_ERRORS_KEPT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectState {
    /// Not started yet (the preheat works on a few objects at a time).
    Waiting,
    Fetching,
    /// Every chunk is cached.
    Done,
    /// The object could not be looked up, is not cacheable, or some chunks failed.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectProgress {
    pub path: String,
    pub state: ObjectState,
    /// The object's size once looked up.
    pub length: Option<u64>,
    pub chunks_total: Option<u64>,
    pub chunks_done: u64,
    pub chunks_failed: u64,
    /// Body bytes read so far.
    pub bytes: u64,
    /// The first few errors, each a short reason.
    pub errors: Vec<String>,
}

impl ObjectProgress {
    fn new(path: String) -> Self {
        ObjectProgress {
            path,
            state: ObjectState::Waiting,
            length: None,
            chunks_total: None,
            chunks_done: 0,
            chunks_failed: 0,
            bytes: 0,
            errors: Vec::new(),
        }
    }

    fn note_error(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(error);
        }
    }
}

/// The totals of a report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub objects: usize,
    pub objects_done: usize,
    pub objects_failed: usize,
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub chunks_failed: u64,
    pub bytes: u64,
}

/// `GET /preheat/<id>`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: String,
    /// `running`, or `done` once every object is done or failed.
    pub state: &'static str,
    /// Whether every chunk of every object is cached.
    pub complete: bool,
    pub requested_by: String,
    /// Unix seconds.
    pub started: u64,
    pub finished: Option<u64>,
    pub totals: Totals,
    pub objects: Vec<ObjectProgress>,
}

struct JobState {
    objects: Vec<ObjectProgress>,
    finished: Option<u64>,
}

/// One preheat: what was asked, and its progress so far.
pub struct Job {
    pub id: String,
    pub requested_by: String,
    pub started: u64,
    state: Mutex<JobState>,
}

impl Job {
    pub fn new(id: String, requested_by: String, paths: Vec<String>) -> Self {
        Job {
            id,
            requested_by,
            started: unix_now(),
            state: Mutex::new(JobState {
                objects: paths.into_iter().map(ObjectProgress::new).collect(),
                finished: None,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut JobState) -> T) -> T {
        f(&mut self.state.lock().expect("preheat progress lock"))
    }

    pub fn paths(&self) -> Vec<String> {
        self.with(|s| s.objects.iter().map(|o| o.path.clone()).collect())
    }

    pub fn is_finished(&self) -> bool {
        self.with(|s| s.finished.is_some())
    }

    pub fn started_object(&self, object: usize) {
        self.with(|s| s.objects[object].state = ObjectState::Fetching);
    }

    pub fn looked_up(&self, object: usize, length: u64, chunks: u64) {
        self.with(|s| {
            let o = &mut s.objects[object];
            o.length = Some(length);
            o.chunks_total = Some(chunks);
        });
    }

    pub fn read_bytes(&self, object: usize, bytes: u64) {
        self.with(|s| s.objects[object].bytes += bytes);
    }

    pub fn chunk_done(&self, object: usize) {
        self.with(|s| s.objects[object].chunks_done += 1);
    }

    pub fn chunk_failed(&self, object: usize, error: String) {
        self.with(|s| {
            let o = &mut s.objects[object];
            o.chunks_failed += 1;
            o.note_error(error);
        });
    }

    /// The object could not be preheated at all (lookup failed, not cacheable).
    pub fn object_failed(&self, object: usize, error: String) {
        self.with(|s| {
            let o = &mut s.objects[object];
            o.note_error(error);
            o.state = ObjectState::Failed;
        });
    }

    /// Ends an object's fetching: done when every chunk is, failed otherwise. Returns the state.
    pub fn finish_object(&self, object: usize) -> ObjectState {
        self.with(|s| {
            let o = &mut s.objects[object];
            if o.state == ObjectState::Fetching {
                let all = o.chunks_total == Some(o.chunks_done) && o.chunks_failed == 0;
                o.state = if all {
                    ObjectState::Done
                } else {
                    ObjectState::Failed
                };
            }
            o.state
        })
    }

    pub fn finish(&self) {
        self.with(|s| s.finished = Some(unix_now()));
    }

    pub fn report(&self) -> Report {
        self.with(|s| {
            let totals = totals(&s.objects);
            Report {
                id: self.id.clone(),
                state: if s.finished.is_some() {
                    "done"
                } else {
                    "running"
                },
                complete: s.finished.is_some() && totals.objects_done == totals.objects,
                requested_by: self.requested_by.clone(),
                started: self.started,
                finished: s.finished,
                totals,
                objects: s.objects.clone(),
            }
        })
    }
}

fn totals(objects: &[ObjectProgress]) -> Totals {
    let mut t = Totals {
        objects: objects.len(),
        ..Totals::default()
    };
    for o in objects {
        t.objects_done += usize::from(o.state == ObjectState::Done);
        t.objects_failed += usize::from(o.state == ObjectState::Failed);
        t.chunks_total += o.chunks_total.unwrap_or(0);
        t.chunks_done += o.chunks_done;
        t.chunks_failed += o.chunks_failed;
        t.bytes += o.bytes;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_done_only_with_every_chunk() {
        let job = Job::new("1".into(), "test".into(), vec!["/a".into(), "/b".into()]);
        job.started_object(0);
        job.looked_up(0, 10, 2);
        job.chunk_done(0);
        job.chunk_done(0);
        job.read_bytes(0, 10);
        assert_eq!(job.finish_object(0), ObjectState::Done);
        job.started_object(1);
        job.looked_up(1, 10, 2);
        job.chunk_done(1);
        job.chunk_failed(1, "upstream failed".into());
        assert_eq!(job.finish_object(1), ObjectState::Failed);
        let running = job.report();
        assert_eq!((running.state, running.complete), ("running", false));
        job.finish();
        let r = job.report();
        assert_eq!((r.state, r.complete), ("done", false));
        assert_eq!(
            r.totals,
            Totals {
                objects: 2,
                objects_done: 1,
                objects_failed: 1,
                chunks_total: 4,
                chunks_done: 3,
                chunks_failed: 1,
                bytes: 10,
            }
        );
        assert_eq!(r.objects[1].errors, ["upstream failed"]);
    }

    #[test]
    fn errors_kept_are_bounded() {
        let job = Job::new("1".into(), "test".into(), vec!["/a".into()]);
        job.started_object(0);
        for i in 0..100 {
            job.chunk_failed(0, format!("e{i}"));
        }
        let r = job.report();
        assert_eq!(r.objects[0].errors.len(), MAX_ERRORS_KEPT);
        assert_eq!(r.objects[0].chunks_failed, 100);
    }

    #[test]
    fn an_object_that_failed_its_lookup_stays_failed() {
        let job = Job::new("1".into(), "test".into(), vec!["/a".into()]);
        job.started_object(0);
        job.object_failed(0, "not cacheable: no-store".into());
        assert_eq!(job.finish_object(0), ObjectState::Failed);
        job.finish();
        let r = job.report();
        assert!(!r.complete);
        assert_eq!(r.objects[0].chunks_total, None);
    }
}
