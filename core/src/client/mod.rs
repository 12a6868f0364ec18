//! A client: a folder, a peer server that seeds it, and a session with the
//! tracker through which it registers, announces and looks up files.
//!
//! A download is three steps, each its own method so a driver (the scenario
//! runner) can interleave them as it needs; [`Client::download`] chains them:
//!
//! 1. [`Client::locate`] asks the tracker for a holder;
//! 2. [`Client::receive`] fetches the file from it into a temporary file,
//!    checks size and SHA-1 against the tracker's record, and renames it into
//!    place;
//! 3. [`Client::announce`] tells the tracker, so this client seeds it too.

mod serve;
mod session;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use session::SessionError;
pub use transfer::TransferError;

use crate::events::{Event, EventSink, Node, Reporter};
use crate::protocol::{ClientId, FileInfo, FileName, Trace, TrackerReply, TrackerRequest};
use crate::server::{self, Limits, ServerHandle};
use crate::storage::{Folder, StorageError};
use session::Session;

/// How a client behaves.
#[derive(Clone, Default)]
pub struct ClientConfig {
    /// Connection limits and timeouts, for its server and its downloads.
    pub limits: Limits,
    /// The address to give the tracker instead of the session's source IP
    /// and the server's port.
    pub advertise: Option<SocketAddr>,
    /// Where events go besides the tracing log.
    pub events: Option<Arc<dyn EventSink>>,
}

/// A holder of a file, as the tracker gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The holder.
    pub peer: ClientId,
    /// Where its peer server listens.
    pub addr: SocketAddr,
    /// The size and SHA-1 the tracker recorded: what the holder must deliver.
    pub info: FileInfo,
}

/// A file received, verified and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// The peer that delivered it.
    pub from: ClientId,
    /// Its size and SHA-1.
    pub info: FileInfo,
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client has no session with a tracker.
    #[error("client {0} is not registered with a tracker: call register first")]
    NotRegistered(ClientId),
    /// Talking to the tracker failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The tracker refused the request.
    #[error("the tracker refused: {0}")]
    Refused(String),
    /// The tracker answered something that makes no sense here.
    #[error("unexpected answer from the tracker: {0:?}")]
    Unexpected(TrackerReply),
    /// The client's folder failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a download ended without the file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Nobody else holds the file.
    #[error("no peer has {0}")]
    NoPeer(FileName),
    /// The chosen peer did not deliver it.
    #[error("{peer} did not deliver {file}: {error}")]
    Transfer {
        /// The file.
        file: FileName,
        /// The peer that failed.
        peer: ClientId,
        /// What went wrong.
        error: TransferError,
    },
    /// The client itself could not go on (not registered, tracker gone,
    /// folder failing): not the file's fault.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A running client.
#[derive(Debug)]
pub struct Client {
    /// Its id.
    id: ClientId,
    /// Its folder, shared with the peer server that seeds it.
    folder: Arc<Folder>,
    /// Its peer server.
    server: ServerHandle,
    /// Its session with the tracker, once registered. A tokio mutex: a
    /// request holds it across the wait for the reply.
    session: tokio::sync::Mutex<Option<Session>>,
    /// Reports its events.
    reporter: Reporter,
    /// Timeouts for the connections it opens.
    limits: Limits,
    /// The address it asks the tracker to give out, if not the default.
    advertise: Option<SocketAddr>,
}

impl Client {
    /// Starts client `id`: serves `folder` on `listener`. It is not
    /// registered with any tracker yet.
    pub fn start(id: ClientId, folder: Folder, listener: TcpListener, config: ClientConfig) -> std::io::Result<Client> {
        let folder = Arc::new(folder);
        let reporter = Reporter::new(Node::Client(id), config.events.clone());
        let server = {
            let (folder, reporter) = (folder.clone(), reporter.clone());
            server::spawn(listener, config.limits, move |connection| {
                serve::serve_peer(folder.clone(), reporter.clone(), connection)
            })?
        };
        Ok(Client {
            id,
            folder,
            server,
            session: tokio::sync::Mutex::new(None),
            reporter,
            limits: config.limits,
            advertise: config.advertise,
        })
    }

    /// The client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The client's folder.
    pub fn folder(&self) -> &Folder {
        &self.folder
    }

    /// The address its peer server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Whether the client has a session with a tracker.
    pub async fn is_registered(&self) -> bool {
        self.session.lock().await.is_some()
    }

    /// Opens a session with the tracker at `tracker` and registers on it,
    /// replacing any earlier session.
    pub async fn register(&self, tracker: SocketAddr, trace: &mut Trace) -> Result<(), ClientError> {
        let mut session = Session::open(tracker, self.limits.idle_timeout).await?;
        let request = TrackerRequest::Register {
            client: self.id,
            port: self.local_addr().port(),
            advertise: self.advertise,
        };
        match session.request(trace.advance(), request).await? {
            TrackerReply::Ack => {
                *self.session.lock().await = Some(session);
                Ok(())
            }
            other => Err(refusal(other)),
        }
    }

    /// Tells the tracker this client holds `file`, which must be in its folder.
    pub async fn upload(&self, file: &FileName, trace: &mut Trace) -> Result<FileInfo, ClientError> {
        let info = self.folder.info(file).await?;
        self.announce(file, info, trace).await?;
        Ok(info)
    }

    /// Tells the tracker this client holds `file` with content `info`.
    pub async fn announce(&self, file: &FileName, info: FileInfo, trace: &mut Trace) -> Result<(), ClientError> {
        let request = TrackerRequest::Announce {
            file: file.clone(),
            info,
        };
        match self.ask_tracker(trace.advance(), request).await? {
            TrackerReply::Ack => Ok(()),
            other => Err(refusal(other)),
        }
    }

    /// Asks the tracker for a holder of `file` other than this client and
    /// those in `exclude`. `Ok(None)`: nobody.
    pub async fn locate(
        &self,
        file: &FileName,
        exclude: &[ClientId],
        trace: &mut Trace,
    ) -> Result<Option<Source>, ClientError> {
        let request = TrackerRequest::Lookup {
            file: file.clone(),
            exclude: exclude.to_vec(),
        };
        match self.ask_tracker(trace.advance(), request).await? {
            TrackerReply::Peer { peer, addr, info } => Ok(Some(Source { peer, addr, info })),
            TrackerReply::NoPeer => Ok(None),
            other => Err(refusal(other)),
        }
    }

    /// Fetches `file` from `source`, verifies it and stores it in the
    /// folder. Reports `download_finished` or `download_failed`.
    pub async fn receive(
        &self,
        file: &FileName,
        source: Source,
        trace: &mut Trace,
    ) -> Result<Downloaded, DownloadError> {
        let fetched = transfer::fetch(self.id, &self.folder, file, &source, self.limits, trace).await;
        let stored = match fetched {
            Ok(received) => self
                .folder
                .store(file, received)
                .map_err(ClientError::from)
                .map_err(DownloadError::from),
            Err(error) => Err(DownloadError::Transfer {
                file: file.clone(),
                peer: source.peer,
                error,
            }),
        };
        match stored {
            Ok(()) => {
                let Source { peer: from, info, .. } = source;
                let event = Event::DownloadFinished {
                    file: file.clone(),
                    from,
                    bytes: info.size,
                    sha1: info.sha1,
                };
                self.reporter.report(trace.advance(), event);
                Ok(Downloaded { from, info })
            }
            Err(error) => Err(self.failed(file, error, trace)),
        }
    }

    /// Downloads `file`: locate, receive, announce.
    pub async fn download(&self, file: &FileName, trace: &mut Trace) -> Result<Downloaded, DownloadError> {
        let source = match self.locate(file, &[], trace).await {
            Ok(Some(source)) => source,
            Ok(None) => return Err(self.failed(file, DownloadError::NoPeer(file.clone()), trace)),
            Err(error) => return Err(self.failed(file, error.into(), trace)),
        };
        let downloaded = self.receive(file, source, trace).await?;
        self.announce(file, downloaded.info, trace).await?;
        Ok(downloaded)
    }

    /// Reports a failed download and hands the error back.
    pub fn failed(&self, file: &FileName, error: DownloadError, trace: &mut Trace) -> DownloadError {
        let event = Event::DownloadFailed {
            file: file.clone(),
            error: error.to_string(),
        };
        self.reporter.report(trace.advance(), event);
        error
    }

    /// Sends one request on the session and waits for its reply.
    async fn ask_tracker(&self, trace: Trace, request: TrackerRequest) -> Result<TrackerReply, ClientError> {
        let mut session = self.session.lock().await;
        let session = session.as_mut().ok_or(ClientError::NotRegistered(self.id))?;
        Ok(session.request(trace, request).await?)
    }

    /// Stops the peer server (cutting transfers in progress) and ends the
    /// tracker session.
    pub async fn shutdown(&self) {
        self.session.lock().await.take();
        self.server.shutdown().await;
    }
}

fn refusal(reply: TrackerReply) -> ClientError {
    match reply {
        TrackerReply::Refused { reason } => ClientError::Refused(reason),
        other => ClientError::Unexpected(other),
    }
}
