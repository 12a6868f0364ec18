//! A client's peer server: sends the files of its folder to whoever asks.

use std::sync::Arc;

use crate::connection::{Connection, ConnectionError};
use crate::events::{Event, Reporter};
use crate::protocol::{ClientId, FileName, PeerReply, PeerRequest, Request};
use crate::storage::{Folder, StorageError};

/// Serves one downloader's connection: one `Get`, the file, the
/// confirmation, then the connection closes.
pub(crate) async fn serve_peer(folder: Arc<Folder>, reporter: Reporter, mut connection: Connection) {
    let remote = connection.peer_addr();
    if let Err(error) = serve_one(&folder, &reporter, &mut connection).await {
        tracing::warn!(node = %reporter.node(), %remote, %error, "peer connection failed");
    }
}

async fn serve_one(folder: &Folder, reporter: &Reporter, connection: &mut Connection) -> Result<(), ConnectionError> {
    let Some(request) = connection.read::<Request<PeerRequest>>().await? else {
        return Ok(());
    };
    match request.body {
        PeerRequest::Get { file, client } => send_file(folder, reporter, connection, file, client).await,
        PeerRequest::Received { .. } => {
            let reason = "nothing was sent to confirm: ask with `get` first".to_owned();
            connection.write(&PeerReply::Refused { reason }).await
        }
    }
}

async fn send_file(
    folder: &Folder,
    reporter: &Reporter,
    connection: &mut Connection,
    file: FileName,
    to: ClientId,
) -> Result<(), ConnectionError> {
    let (mut content, info) = match folder.open_file(&file).await {
        Ok(opened) => opened,
        Err(error) => {
            let reason = match error {
                StorageError::NotFound { .. } => format!("{} does not hold {file}", reporter.node()),
                StorageError::Io { .. } => format!("{} cannot read {file}", reporter.node()),
            };
            tracing::warn!(node = %reporter.node(), %error, "refused to send {file}");
            return connection.write(&PeerReply::Refused { reason }).await;
        }
    };
    connection.write(&PeerReply::File { info }).await?;
    connection.write_body(&mut content, info.size).await?;
    match connection.read::<Request<PeerRequest>>().await? {
        Some(Request {
            trace,
            body: PeerRequest::Received { sha1 },
        }) if sha1 == info.sha1 => {
            let event = Event::FileSent {
                file,
                to,
                bytes: info.size,
            };
            reporter.report(trace, event);
        }
        Some(Request {
            body: PeerRequest::Received { sha1 },
            ..
        }) => {
            tracing::warn!(node = %reporter.node(), %to, "{to} received {file} with sha1 {sha1}, not {}", info.sha1);
        }
        other => {
            tracing::warn!(node = %reporter.node(), %to, "{to} did not confirm {file}: {other:?}");
        }
    }
    Ok(())
}
