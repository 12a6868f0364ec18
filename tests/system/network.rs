//! The tracker and peers spoken to directly, over TCP, without a scenario.

use phile_core::client::{ClientError, DownloadError, SessionError};
use phile_core::protocol::ClientId;
use tokio::net::TcpListener;

use crate::fixture::{client, name, registered, tracker};

#[tokio::test]
async fn a_download_over_tcp_is_verified_stored_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = registered(2, dir.path(), &tracker).await;
    let c = registered(3, dir.path(), &tracker).await;
    a.folder().write(&name("f.txt"), "hello").await.unwrap();
    a.upload(&name("f.txt")).await.unwrap();
    let got = b.download(&name("f.txt")).await.unwrap();
    assert_eq!(got.downloaded.from, ClientId(1));
    assert_eq!(b.folder().read(&name("f.txt")).await.unwrap(), b"hello");
    // With a gone, only b, which downloaded it, can serve c.
    a.leave(std::time::Duration::ZERO).await.unwrap();
    let source = c.lookup(&name("f.txt")).await.unwrap().unwrap();
    assert_eq!(source.peer, ClientId(2));
    assert_eq!(c.receive(&name("f.txt"), source).await.unwrap().from, ClientId(2));
}

#[tokio::test]
async fn registering_with_no_tracker_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let a = client(1, dir.path()).await;
    let error = a.register(closed).await.unwrap_err();
    assert!(matches!(error, ClientError::Session(SessionError::Unreachable { .. })));
    assert!(error.to_string().contains(&closed.to_string()), "{error}");
}

/// A server that accepts connections and, on each, writes `answer` (if
/// any) and then keeps it open, reading nothing.
async fn not_a_tracker(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(answer).await;
            open.push(socket);
        }
    });
    addr
}

/// Registers a client with `server`, checks that it failed as
/// [`SessionError::NoAnswer`], and returns the error's message.
async fn no_answer_from(server: std::net::SocketAddr) -> String {
    let dir = tempfile::tempdir().unwrap();
    let error = client(1, dir.path()).await.register(server).await.unwrap_err();
    assert!(
        matches!(error, ClientError::Session(SessionError::NoAnswer { .. })),
        "{error:?}"
    );
    error.to_string()
}

#[tokio::test]
async fn registering_with_a_server_of_another_kind_asks_if_it_is_a_tracker() {
    let web = not_a_tracker(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
    let message = no_answer_from(web).await;
    assert!(
        message.contains(&web.to_string()) && message.contains("phile tracker"),
        "{message}"
    );
}

// On tokio's paused clock, which jumps to the next timer when every task
// waits: the silent server costs no real time.
#[tokio::test(start_paused = true)]
async fn a_silent_server_is_given_up_on_at_the_idle_timeout_as_no_tracker() {
    let message = no_answer_from(not_a_tracker(b"").await).await;
    assert!(message.contains("idle timeout"), "{message}");
}

#[tokio::test]
async fn the_tracker_forgets_a_client_that_stops() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = registered(2, dir.path(), &tracker).await;
    a.folder().write(&name("f"), "x").await.unwrap();
    a.upload(&name("f")).await.unwrap();
    a.leave(std::time::Duration::ZERO).await.unwrap();
    // A goodbye is processed before its Ack: the very next lookup misses a.
    assert!(matches!(b.download(&name("f")).await, Err(DownloadError::NoPeer(_))));
    assert!(b.folder().list().unwrap().is_empty());
}

#[tokio::test]
async fn two_downloads_of_one_file_by_one_client_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = registered(2, dir.path(), &tracker).await;
    let content = vec![7u8; 3 * 1024 * 1024];
    a.folder().write(&name("big"), content.clone()).await.unwrap();
    a.upload(&name("big")).await.unwrap();
    let big = name("big");
    let (first, second) = tokio::join!(b.download(&big), b.download(&big));
    first.unwrap();
    second.unwrap();
    assert_eq!(b.folder().read(&name("big")).await.unwrap(), content);
    let entries = std::fs::read_dir(b.folder().dir()).unwrap().count();
    assert_eq!(entries, 1, "a temporary file was left behind");
}
