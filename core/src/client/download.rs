//! The whole-file download: a file fetched whole from one holder at a
//! time, failing over to the next holder the tracker offers until one
//! delivers, and what such a download hands back.
//!
//! Apart from the client's lifecycle (`mod.rs`) because it is one of the
//! things a running client does, with its own steps (look up, receive,
//! announce) and its own bounds on how many holders it tries and lists. The
//! types it hands back ([`Source`], [`Downloaded`], [`Fetched`]) are shared
//! with the swarm download (`swarm/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::error::refusal;
use super::transfer::Rejected;
use super::{Client, ClientError, DownloadError, Rejection};
use crate::events::Event;
use crate::protocol::{ClientId, Digest, FileInfo, FileName, Problem, TrackerReply, TrackerRequest};
use crate::storage::Received;
use crate::trace;

/// How many holders one download tries before it gives up: far more than
/// any honest swarm makes it fail, and a bound on what a tracker that keeps
/// offering failing holders can make it do.
pub const MAX_HOLDERS_TRIED: u64 = 1_000_000;

/// A holder of a file, as the tracker gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// The holder.
    pub peer: ClientId,
    /// Where its peer server listens.
    pub addr: SocketAddr,
    /// The size and SHA-1 the tracker recorded: what the holder must deliver.
    pub info: FileInfo,
    /// The root of the file's hash tree the tracker recorded (remembered
    /// with the file, so announcing it costs no pass over it).
    pub root: Digest,
}

/// A file received, verified and stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Downloaded {
    /// The peer that delivered it (of a swarm download: the one that sent
    /// the most).
    pub from: ClientId,
    /// Its size and SHA-1.
    pub info: FileInfo,
    /// How a swarm download went; `None` for a whole-file download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<Swarmed>,
}

/// How a swarm download went.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Swarmed {
    /// The bytes of checked pieces each peer sent.
    #[serde(with = "crate::protocol::client_keys")]
    pub sources: BTreeMap<ClientId, u64>,
    /// The bytes an earlier, interrupted attempt had left (not fetched
    /// again).
    pub resumed: u64,
    /// The piece size.
    pub piece_size: u64,
}

/// A file [`Client::download`] stored, and whether the tracker knows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    /// What arrived, from whom.
    pub downloaded: Downloaded,
    /// Whether the tracker recorded this client as a holder. A stored file
    /// is a success either way; a client that registers again announces
    /// everything it holds.
    pub announced: bool,
}

/// The whole-file download's steps, and the report of a download that
/// failed (shared with the swarm download).
impl Client {
    /// Asks the tracker for a holder of `file` other than this client, to
    /// begin a download: holders this client reported in an earlier download
    /// of `file` get a fresh chance. `Ok(None)`: nobody.
    pub async fn lookup(&self, file: &FileName) -> Result<Option<Source>, ClientError> {
        self.find(file, false).await
    }

    /// Asks the tracker for a holder of `file`; with `failover`, one this
    /// client did not report during the download under way.
    async fn find(&self, file: &FileName, failover: bool) -> Result<Option<Source>, ClientError> {
        let request = TrackerRequest::Lookup {
            file: file.clone(),
            failover,
        };
        match self.ask_tracker(request).await? {
            TrackerReply::Peer { peer, addr, info, root } => Ok(Some(Source { peer, addr, info, root })),
            TrackerReply::NoPeer => Ok(None),
            other => Err(refusal(other)),
        }
    }

    /// Fetches `file` from `source`, verifies it and stores it in the
    /// folder. When a holder fails (refuses, breaks off, stalls, sends the
    /// wrong size or content), the partial file is discarded; a holder that
    /// sent wrong bytes is told what arrived, so it can check its own copy;
    /// the tracker is told, and stops offering that holder to this client
    /// for the rest of the download; the next holder it offers is tried,
    /// until one delivers or none is left. No request grows with the
    /// number of holders that failed. Reports `download_finished` or
    /// `download_failed`, and `transfer_rejected` for each holder given up
    /// on.
    pub async fn receive(&self, file: &FileName, source: Source) -> Result<Downloaded, DownloadError> {
        // Counted, so that leaving waits until every download has ended.
        let _under_way = self.downloads.token();
        // A client that stops (or crashes) drops its downloads with it; a
        // file that arrived checked goes into place all the same, since a
        // rename cut short would store it yet report it lost.
        let delivered = tokio::select! {
            biased;
            _ = self.halt.cancelled() => None,
            delivered = self.receive_until_delivered(file, source) => Some(delivered),
        };
        let (received, source) = match delivered {
            Some(delivered) => delivered?,
            None => return Err(self.failed(file, ClientError::Stopped(self.id).into())),
        };
        if let Err(error) = self.folder.store(file, received).await {
            return Err(self.failed(file, ClientError::from(error).into()));
        }
        let Source {
            peer: from, info, root, ..
        } = source;
        self.folder.remember_root(file, info, root, None);
        let event = Event::DownloadFinished {
            file: file.clone(),
            from: Some(from),
            bytes: info.size,
            sha1: info.sha1,
            swarm: false,
            sources: None,
        };
        self.reporter.report(trace::next(), event);
        Ok(Downloaded {
            from,
            info,
            swarm: None,
        })
    }

    /// Fetches `file` into a temporary file and checks it, from `source`
    /// or, when it fails, the next holder the tracker offers: the file
    /// checked, and the holder it came from.
    async fn receive_until_delivered(
        &self,
        file: &FileName,
        source: Source,
    ) -> Result<(Received, Source), DownloadError> {
        let mut source = source;
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut tried = 0u64;
        loop {
            tried += 1;
            let fetched = self.fetch(file, &source).await;
            let Rejected { error, complaint } = match fetched {
                Ok(received) => return Ok((received, source)),
                Err(rejected) => rejected,
            };
            let Some(problem) = error.problem() else {
                // Our own folder failed: no other holder would do better.
                return Err(self.failed(file, ClientError::Store(error).into()));
            };
            tracing::info!(node = %self.id, peer = %source.peer, %error, "giving up on this holder of {file}");
            let report = self.reject(file, source.peer, source.info.sha1, problem);
            // Wrong bytes: tell the holder, which checks its own copy (and
            // withdraws it if it really went bad) before it hangs up.
            if let Some(complaint) = complaint {
                complaint.send().await;
            }
            match self.ask_tracker(report).await {
                Ok(TrackerReply::Ack) => {}
                // Past a quota the tracker would offer this holder again:
                // failing over further could only go round in circles.
                Ok(other) => return Err(self.failed(file, refusal(other).into())),
                Err(error) => return Err(self.failed(file, error.into())),
            }
            let rejection = Rejection {
                peer: source.peer,
                problem,
                error,
            };
            rejection.list_in(&mut rejected);
            let next = match tried {
                MAX_HOLDERS_TRIED.. => Ok(None),
                _ => self.find(file, true).await,
            };
            source = match next {
                Ok(Some(next)) => next,
                Ok(None) => {
                    let unlisted = tried - rejected.len() as u64;
                    let exhausted = DownloadError::Exhausted {
                        file: file.clone(),
                        rejected,
                        unlisted,
                    };
                    return Err(self.failed(file, exhausted));
                }
                Err(error) => return Err(self.failed(file, error.into())),
            };
        }
    }

    /// Asks the tracker for a holder of `file`; when there is none, reports
    /// the download as failed (`no peer has FILE`).
    pub async fn first_source(&self, file: &FileName) -> Result<Source, DownloadError> {
        match self.lookup(file).await {
            Ok(Some(source)) => Ok(source),
            Ok(None) => Err(self.failed(file, DownloadError::NoPeer(file.clone()))),
            Err(error) => Err(self.failed(file, error.into())),
        }
    }

    /// Downloads `file`: locate, receive, announce. A file stored and
    /// verified is a success even if the tracker cannot be told (it went
    /// away meanwhile): that is logged as a warning, and the file is
    /// announced with everything else when the client registers again.
    pub async fn download(&self, file: &FileName) -> Result<Fetched, DownloadError> {
        let source = self.first_source(file).await?;
        let downloaded = self.receive(file, source).await?;
        let announced = self.announce_stored(file, downloaded.info).await;
        Ok(Fetched { downloaded, announced })
    }

    /// Announces `file`, just stored and verified, as `info`; whether the
    /// tracker was told. A tracker that cannot be told (it went away
    /// meanwhile) is a warning, not a failure: the file is announced with
    /// everything else when the client registers again.
    pub(super) async fn announce_stored(&self, file: &FileName, info: FileInfo) -> bool {
        match self.announce(file, info).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(node = %self.id, %error, "stored {file} but could not tell the tracker");
                false
            }
        }
    }

    /// Gives up on `peer` for `file` (version `sha1`), for `problem`: the
    /// progress bar and the event log hear of it, and the report returned
    /// makes the tracker stop offering `peer` to this client, for this
    /// version, for the rest of this download.
    pub(super) fn reject(&self, file: &FileName, peer: ClientId, sha1: Digest, problem: Problem) -> TrackerRequest {
        if let Some(progress) = &self.progress {
            progress.rejected(file, peer, problem);
        }
        let event = Event::TransferRejected {
            file: file.clone(),
            peer,
            reason: problem.describe().to_owned(),
        };
        self.reporter.report(trace::next(), event);
        TrackerRequest::Report {
            file: file.clone(),
            peer,
            sha1,
            problem,
        }
    }

    /// Reports a failed download and hands the error back.
    pub(super) fn failed(&self, file: &FileName, error: DownloadError) -> DownloadError {
        let event = Event::DownloadFailed {
            file: file.clone(),
            error: error.to_string(),
        };
        self.reporter.report(trace::next(), event);
        error
    }
}
