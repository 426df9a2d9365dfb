//! One preheat, start to end: each object looked up, then each of its chunks opened and read
//! through, as a client request would.

use std::{sync::Arc, time::Instant};

use futures::StreamExt;

use super::{progress::Job, ObjectState, Preheater, CHUNK_FETCHES, OBJECTS_AT_ONCE};
use crate::{
    metadata::Asker,
    object::ObjectMeta,
    policy::ClientDemands,
    source::{FetchError, Route, SourceKind},
};

impl Preheater {
    pub(super) async fn run(self: Arc<Self>, job: Arc<Job>) {
        let started = Instant::now();
        futures::stream::iter(job.paths().into_iter().enumerate())
            .for_each_concurrent(OBJECTS_AT_ONCE, |(object, path)| {
                self.preheat_object(&job, object, path)
            })
            .await;
        job.finish();
        self.metrics.running.dec();
        let t = job.report().totals;
        tracing::info!(preheat = %job.id, requested_by = %job.requested_by,
            objects = t.objects, done = t.objects_done, failed = t.objects_failed,
            chunks = t.chunks_done, chunks_failed = t.chunks_failed, bytes = t.bytes,
            seconds = started.elapsed().as_secs_f64(), "preheat finished");
    }

    async fn preheat_object(&self, job: &Job, object: usize, path: String) {
        job.started_object(object);
        match self.look_up(&path).await {
            // A stored error answer (a 404 kept for its lifetime) is not what a preheat is for.
            Ok(meta) if !(200..300).contains(&meta.status) => {
                job.object_failed(object, format!("the upstream answers {}", meta.status))
            }
            Ok(meta) => {
                job.looked_up(object, meta.length, meta.chunk_count());
                self.fetch_chunks(job, object, meta).await;
            }
            Err(why) => job.object_failed(object, why),
        }
        let state = job.finish_object(object);
        self.count_object(state);
        if state == ObjectState::Failed {
            let report = job.report();
            let errors = &report.objects[object].errors;
            tracing::warn!(preheat = %job.id, path, first_error = errors.first().map(String::as_str),
                "preheat of an object failed");
        }
    }

    /// The object's metadata as a client's `GET` of its first byte finds it: from wherever the
    /// cluster has it, else probed by the metadata's owner (whose probe is the first chunk).
    async fn look_up(&self, path: &str) -> Result<Arc<ObjectMeta>, String> {
        // Keyed as a client's request would be: a signed URL preheats the object its clients get.
        let keyed = self
            .cache
            .key_of(path.to_string())
            .map_err(|e| e.to_string())?;
        let headers = http::HeaderMap::new();
        let ask = Asker {
            first_byte: Some(0),
            headers: &headers,
            upstream_target: keyed.upstream_target.as_ref(),
        };
        let demands = ClientDemands::default();
        match self
            .cache
            .open(&keyed.key, Route::Cluster, ask, &demands)
            .await
        {
            // A first chunk this lookup fetched is already a flight of the fetcher, which the
            // chunk's own open below joins: its reader here is not needed.
            Ok(opened) => Ok(opened.meta),
            Err(missed) => Err(missed.error.to_string()),
        }
    }

    async fn fetch_chunks(&self, job: &Job, object: usize, meta: Arc<ObjectMeta>) {
        let version: Arc<str> = Arc::from(meta.version.as_str());
        futures::stream::iter(0..meta.chunk_count())
            .for_each_concurrent(CHUNK_FETCHES, |index| {
                let (meta, version) = (&meta, &version);
                async move {
                    let _slot = self.fetches.acquire().await.expect("never closed");
                    let source = match self.fetch_chunk(job, object, meta, version, index).await {
                        Ok(source) => {
                            job.chunk_done(object);
                            source.label()
                        }
                        Err(e) => {
                            job.chunk_failed(object, format!("chunk {index}: {e}"));
                            "failed"
                        }
                    };
                    self.metrics.chunks.with_label_values(&[source]).inc();
                }
            })
            .await;
    }

    /// Reads chunk `index` through: from this node's memory, its owner peer (which fetches it
    /// from its own tiers or the upstream) or, when this node owns it, its own tiers or the
    /// upstream. Returns where the bytes came from.
    async fn fetch_chunk(
        &self,
        job: &Job,
        object: usize,
        meta: &Arc<ObjectMeta>,
        version: &Arc<str>,
        index: u64,
    ) -> Result<SourceKind, FetchError> {
        let mut reader = self.fetcher.open(meta, version, index, Route::Cluster);
        let mut got = 0u64;
        while let Some(piece) = reader.next().await {
            let len = piece?.len() as u64;
            got += len;
            job.read_bytes(object, len);
            self.metrics.bytes.inc_by(len);
        }
        let expected = meta.chunk_len(index);
        if got != expected {
            return Err(FetchError::Short {
                from: reader.origin(),
                expected,
                got,
            });
        }
        Ok(reader.origin())
    }
}
