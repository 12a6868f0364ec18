//! One conversation with a peer, as the downloader sees it: connecting,
//! joining, then writing what the download asks and reading what the peer
//! says, until either side ends it.
//!
//! It is apart from the rest because it runs apart: each conversation is a
//! future of its own that shares nothing with the download but a channel
//! each way ([`Heard`] in, [`Requests`] out), so nothing here touches the
//! download's state but [`Run::link`], which sets a conversation up.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Run;
use crate::connection::{Connection, ConnectionError};
use crate::pieces::{hashes_from_bytes, Bitfield, Layout};
use crate::protocol::{ClientId, Digest, PeerReply, PeerRequest, Problem, Request};
use crate::server::Limits;
use crate::swarm::wire;

/// What a connection to one peer reports to the download.
pub(super) enum Heard {
    /// Connected.
    Joined {
        /// Where requests go (the connection writes them).
        out: Requests,
        /// The pieces the peer holds.
        bits: Bitfield,
        /// The count of body bytes received from the peer, going up as
        /// they come.
        received: Arc<AtomicU64>,
    },
    /// The peer began to send the piece hashes (they follow).
    LayerBegun,
    /// The piece hashes.
    Layer(Vec<Digest>),
    /// The peer began to send a piece (its bytes follow). Timed here, as
    /// it is read: the download handles it later, maybe after other
    /// messages.
    Started {
        /// The piece.
        index: usize,
        /// When its header was read.
        at: Instant,
        /// The count of body bytes received from the peer then.
        received: u64,
    },
    /// A piece came whole.
    Piece {
        /// The piece.
        index: usize,
        /// Its bytes.
        bytes: Bytes,
        /// When the last of them was read.
        done: Instant,
    },
    /// The peer gained a piece.
    Have(usize),
    /// The peer does not hold a piece after all.
    Missing(usize),
    /// The peer checked its copy after a complaint.
    Checked,
    /// The connection is over; with the problem, if the peer misbehaved.
    Ended(Option<Problem>),
}

/// Requests to one peer, written by its connection's task: the download's
/// loop never waits on a peer's socket (two peers that each wait to write
/// to the other while neither reads would stall until the idle timeout).
pub(super) type Requests = mpsc::UnboundedSender<Request<PeerRequest>>;

/// A connection's reading side, run by the download itself.
pub(super) type Link = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Run<'_> {
    /// A connection to `peer` at `addr`: joins the conversation, then
    /// reports what it hears until it ends.
    pub(super) fn link(&self, peer: ClientId, addr: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
        let client = self.client;
        let (host, rate, limits, tell) = (
            client.host.clone(),
            client.rate.clone(),
            client.limits,
            self.tell.clone(),
        );
        let join = Request {
            trace: self.joining,
            body: PeerRequest::Join {
                file: self.file.clone(),
                client: client.id,
                sha1: self.info.sha1,
                piece_size: self.plan.layout().piece.bytes(),
            },
        };
        let layout = self.plan.layout();
        async move {
            let wrap = |stream| rate.wrap(stream);
            let connected = Connection::connect_wrapped(host.as_ref(), addr, limits.idle_timeout, wrap).await;
            let ended = match connected {
                Err(error) => {
                    tracing::debug!(%peer, %addr, %error, "could not reach a peer of the swarm");
                    Some(Problem::Unreachable)
                }
                Ok(connection) => match join_conversation(connection, join, layout, &limits).await {
                    Err(problem) => Some(problem),
                    Ok(joined) => match converse(joined, layout, peer, &tell).await {
                        Conversed::Ended(problem) => problem,
                        Conversed::LetGo => return,
                    },
                },
            };
            let _ = tell.send((peer, Heard::Ended(ended))).await;
        }
    }
}

/// A conversation joined: its two directions, and the pieces the peer
/// holds.
struct Joined {
    /// What the peer says.
    inbound: wire::Inbound,
    /// What the download asks of it.
    outbound: wire::Outbound,
    /// The pieces it holds.
    bits: Bitfield,
}

/// How a conversation went.
enum Conversed {
    /// It ended, with the problem if the peer misbehaved: the download is
    /// to be told.
    Ended(Option<Problem>),
    /// The download let the peer go (or is over): nothing to tell.
    LetGo,
}

/// The slowest a peer may send its bitfield, in bytes a second, past the
/// idle timeout: each read has the idle timeout, and a peer that sends a
/// byte now and then would otherwise keep the download waiting on its
/// join (a file of a million pieces has a 128 KiB bitfield).
const SLOWEST_BITFIELD: u64 = 1024;

/// Sends `join` on `connection`, reads the answer and the peer's bitfield.
async fn join_conversation(
    mut connection: Connection,
    join: Request<PeerRequest>,
    layout: Layout,
    limits: &Limits,
) -> Result<Joined, Problem> {
    read_join_answer(&mut connection, join, layout, limits.first_byte_timeout).await?;
    let (mut inbound, outbound) = wire::split(connection);
    let len = layout.count().div_ceil(8);
    let deadline = limits.idle_timeout + Duration::from_secs(len as u64 / SLOWEST_BITFIELD);
    let bytes = tokio::time::timeout(deadline, inbound.body(len))
        .await
        .map_err(|_| Problem::Stalled)?
        .map_err(|error| connection_problem(&error))?;
    let bits = Bitfield::from_bytes(layout.count(), bytes.to_vec()).map_err(|_| Problem::Garbled)?;
    Ok(Joined {
        inbound,
        outbound,
        bits,
    })
}

/// Runs a joined conversation with `peer`: hands the download a way to
/// send requests (written here) and reports what the peer says, until
/// either side ends it.
async fn converse(joined: Joined, layout: Layout, peer: ClientId, tell: &mpsc::Sender<(ClientId, Heard)>) -> Conversed {
    let Joined {
        mut inbound,
        mut outbound,
        bits,
    } = joined;
    let (requests, mut queued) = mpsc::unbounded_channel::<Request<PeerRequest>>();
    if tell
        .send((
            peer,
            Heard::Joined {
                out: requests,
                bits,
                received: inbound.received(),
            },
        ))
        .await
        .is_err()
    {
        return Conversed::LetGo;
    }
    let writing = async move {
        while let Some(request) = queued.recv().await {
            if outbound.message(&request).await.is_err() {
                return Conversed::Ended(Some(Problem::Cut));
            }
        }
        // The download dropped the sender: it let the peer go.
        Conversed::LetGo
    };
    tokio::select! {
        biased;
        ended = listen(&mut inbound, layout, peer, tell) => Conversed::Ended(ended),
        cut = writing => cut,
    }
}

/// Sends `join` and reads the header of the answer (the bitfield follows).
async fn read_join_answer(
    connection: &mut Connection,
    join: Request<PeerRequest>,
    layout: Layout,
    first_byte: Duration,
) -> Result<(), Problem> {
    connection
        .write(&join)
        .await
        .map_err(|error| connection_problem(&error))?;
    match connection.read_within::<PeerReply>(first_byte).await {
        Ok(Some(PeerReply::Joined { pieces })) if pieces == layout.count() as u64 => Ok(()),
        Ok(Some(PeerReply::Refused { reason })) => {
            tracing::debug!(%reason, "the peer refused to join");
            Err(Problem::Refused)
        }
        Ok(None) => {
            tracing::debug!("the peer closed before it answered the join");
            Err(Problem::Cut)
        }
        Ok(Some(_)) => Err(Problem::Garbled),
        Err(ConnectionError::Idle(_)) => Err(Problem::Unresponsive),
        Err(error) => Err(connection_problem(&error)),
    }
}

/// Reads what a peer says until the conversation ends; returns the
/// problem, if the peer misbehaved.
async fn listen(
    inbound: &mut wire::Inbound,
    layout: Layout,
    peer: ClientId,
    tell: &mpsc::Sender<(ClientId, Heard)>,
) -> Option<Problem> {
    let counted = inbound.received();
    loop {
        let heard = match inbound.message::<PeerReply>(None).await {
            Ok(None) => return None,
            Err(error) => return Some(connection_problem(&error)),
            Ok(Some(reply)) => {
                // Told before the body is read, so the download knows the
                // answer began and judges it by its bytes from here.
                if let PeerReply::Layer { .. } = reply {
                    if tell.send((peer, Heard::LayerBegun)).await.is_err() {
                        return None;
                    }
                }
                // Told before the body is read: the download then takes
                // back the copies of this piece that wait with other peers
                // before they begin them too, and times the piece from here.
                if let PeerReply::Piece { index } = reply {
                    let began = Heard::Started {
                        index: index as usize,
                        at: Instant::now(),
                        received: counted.load(Ordering::Relaxed),
                    };
                    if index < layout.count() as u64 && tell.send((peer, began)).await.is_err() {
                        return None;
                    }
                }
                match read_reply(inbound, layout, reply).await {
                    Ok(heard) => heard,
                    Err(problem) => return Some(problem),
                }
            }
        };
        let last = matches!(heard, Heard::Checked);
        if tell.send((peer, heard)).await.is_err() || last {
            return None;
        }
    }
}

/// The meaning of one reply, with the body that follows it.
async fn read_reply(inbound: &mut wire::Inbound, layout: Layout, reply: PeerReply) -> Result<Heard, Problem> {
    let count = layout.count() as u64;
    let body_problem = |error: ConnectionError| connection_problem(&error);
    Ok(match reply {
        PeerReply::Piece { index } if index < count => {
            let bytes = inbound
                .body(layout.len(index as usize) as usize)
                .await
                .map_err(body_problem)?;
            Heard::Piece {
                index: index as usize,
                bytes,
                done: Instant::now(),
            }
        }
        PeerReply::Layer { pieces } if pieces == count => {
            let bytes = inbound.body(count as usize * 20).await.map_err(body_problem)?;
            Heard::Layer(hashes_from_bytes(&bytes).ok_or(Problem::Garbled)?)
        }
        PeerReply::Have { index } if index < count => Heard::Have(index as usize),
        PeerReply::Missing { index } if index < count => Heard::Missing(index as usize),
        PeerReply::Checked => Heard::Checked,
        PeerReply::Refused { .. } => return Err(Problem::Refused),
        _ => return Err(Problem::Garbled),
    })
}

/// What a connection's failure says about the peer.
fn connection_problem(error: &ConnectionError) -> Problem {
    match error {
        ConnectionError::Idle(_) => Problem::Stalled,
        ConnectionError::FrameTooLarge | ConnectionError::Protocol(_) => Problem::Garbled,
        _ => Problem::Cut,
    }
}
