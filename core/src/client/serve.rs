//! A client's peer server: sends the files of its folder to whoever asks.

use std::sync::Arc;
use std::time::Duration;

use crate::connection::{Connection, ConnectionError};
use crate::events::{Event, Reporter};
use crate::protocol::{ClientId, FileName, PeerReply, PeerRequest, Request};
use crate::storage::{Folder, StorageError};

/// What a peer server needs, shared by all its connections.
pub(crate) struct Seeder {
    /// The folder it serves.
    pub folder: Arc<Folder>,
    /// Reports its events.
    pub reporter: Reporter,
    /// How long a new connection may take to ask for something.
    pub request_timeout: Duration,
}

impl Seeder {
    /// Serves one downloader's connection: one `Get`, the file, the
    /// confirmation, then the connection closes.
    pub(crate) async fn serve(self: Arc<Self>, mut connection: Connection) {
        let remote = connection.peer_addr();
        if let Err(error) = self.serve_one(&mut connection).await {
            tracing::info!(node = %self.reporter.node(), %remote, %error, "peer connection ended early");
        }
    }

    async fn serve_one(&self, connection: &mut Connection) -> Result<(), ConnectionError> {
        // A connection that asks nothing frees its slot quickly.
        let Some(request) = connection
            .read_within::<Request<PeerRequest>>(self.request_timeout)
            .await?
        else {
            return Ok(());
        };
        match request.body {
            PeerRequest::Get { file, client } => self.send_file(connection, file, client).await,
            PeerRequest::Received { .. } => {
                let reason = "nothing was sent to confirm: ask with `get` first".to_owned();
                connection.write(&PeerReply::Refused { reason }).await
            }
        }
    }

    async fn send_file(
        &self,
        connection: &mut Connection,
        file: FileName,
        to: ClientId,
    ) -> Result<(), ConnectionError> {
        let node = self.reporter.node();
        let mut content = match self.folder.open_file(&file).await {
            Ok(opened) => opened,
            Err(error) => {
                let reason = match error {
                    StorageError::NotFound { .. } => format!("{node} does not hold {file}"),
                    StorageError::Io { .. } => format!("{node} cannot read {file}"),
                };
                tracing::warn!(%node, %error, "refused to send {file}");
                return connection.write(&PeerReply::Refused { reason }).await;
            }
        };
        let info = content.info();
        connection.write(&PeerReply::File { info }).await?;
        connection.write_body(&mut content, info.size).await?;
        // The downloader verifies and syncs what it received before it
        // confirms: that may take a while on a busy disk.
        let wait = connection.idle_timeout().max(super::CONFIRMATION_WAIT);
        match connection.read_within::<Request<PeerRequest>>(wait).await? {
            Some(Request {
                trace,
                body: PeerRequest::Received { sha1 },
            }) if sha1 == info.sha1 => {
                self.reporter.report(
                    trace,
                    Event::FileSent {
                        file,
                        to,
                        bytes: info.size,
                    },
                );
            }
            Some(Request {
                body: PeerRequest::Received { sha1 },
                ..
            }) => {
                tracing::warn!(%node, %to, "{to} received {file} with sha1 {sha1}, not {}", info.sha1);
            }
            Some(other) => tracing::info!(%node, %to, "{to} answered {other:?} instead of confirming {file}"),
            None => tracing::info!(%node, %to, "{to} closed the connection without confirming {file}"),
        }
        Ok(())
    }
}
