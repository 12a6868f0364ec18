//! Properties of the wire protocol, over arbitrary input: decoding never
//! panics, and every message survives encoding and decoding unchanged.

use bytes::BytesMut;
use phile_core::protocol::{
    self, ClientId, Digest, FileInfo, FileName, PeerReply, PeerRequest, Problem, Request, SwarmPeer, Trace,
    TrackerReply, TrackerRequest,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Feeds `bytes` to the frame decoder and every message decoder.
fn decode_everything(bytes: &[u8]) {
    let mut buffer = BytesMut::from(bytes);
    let mut codec = protocol::frame_codec();
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        let _ = protocol::decode::<Request<TrackerRequest>>(&frame);
        let _ = protocol::decode::<TrackerReply>(&frame);
        let _ = protocol::decode::<Request<PeerRequest>>(&frame);
        let _ = protocol::decode::<PeerReply>(&frame);
    }
    let _ = protocol::decode::<Request<TrackerRequest>>(bytes);
    let _ = protocol::decode::<PeerReply>(bytes);
}

fn file_name() -> impl Strategy<Value = FileName> {
    "[^/\\\\\u{0}]{1,60}".prop_filter_map("not a valid name", |name| name.parse().ok())
}

fn info() -> impl Strategy<Value = FileInfo> {
    (any::<u64>(), any::<[u8; 20]>()).prop_map(|(size, sha1)| FileInfo {
        size,
        sha1: Digest(sha1),
    })
}

/// Socket addresses as they travel: a text form carries no IPv6 flow info
/// or scope id, so those are zero.
fn addr() -> impl Strategy<Value = std::net::SocketAddr> {
    any::<std::net::SocketAddr>().prop_map(|addr| match addr {
        std::net::SocketAddr::V6(v6) => std::net::SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0).into(),
        v4 => v4,
    })
}

fn client() -> impl Strategy<Value = ClientId> {
    any::<u64>().prop_map(ClientId)
}

fn trace() -> impl Strategy<Value = Trace> {
    (any::<u64>(), any::<u32>()).prop_map(|(op, step)| Trace { op, step })
}

fn problem() -> impl Strategy<Value = Problem> {
    prop_oneof![
        Just(Problem::Unreachable),
        Just(Problem::Cut),
        Just(Problem::Stalled),
        Just(Problem::Unresponsive),
        Just(Problem::Refused),
        Just(Problem::Garbled),
        Just(Problem::WrongSize),
        Just(Problem::WrongContent),
        Just(Problem::WrongPiece),
    ]
}

fn tracker_request() -> impl Strategy<Value = TrackerRequest> {
    prop_oneof![
        (client(), any::<u16>(), proptest::option::of(addr())).prop_map(|(client, port, advertise)| {
            TrackerRequest::Register {
                client,
                port,
                advertise,
            }
        }),
        (file_name(), info(), any::<[u8; 20]>()).prop_map(|(file, info, root)| TrackerRequest::Announce {
            file,
            info,
            root: Digest(root)
        }),
        (file_name(), any::<bool>()).prop_map(|(file, fresh)| TrackerRequest::Swarm { file, fresh }),
        (file_name(), any::<bool>()).prop_map(|(file, failover)| TrackerRequest::Lookup { file, failover }),
        Just(TrackerRequest::Leave),
        (file_name(), client(), any::<[u8; 20]>(), problem()).prop_map(|(file, peer, sha1, problem)| {
            TrackerRequest::Report {
                file,
                peer,
                sha1: Digest(sha1),
                problem,
            }
        }),
        Just(TrackerRequest::Ping),
        (
            file_name(),
            proptest::option::of(any::<[u8; 20]>()),
            proptest::option::of(problem())
        )
            .prop_map(|(file, sha1, reason)| TrackerRequest::Withdraw {
                file,
                sha1: sha1.map(Digest),
                reason,
            }),
    ]
}

fn tracker_reply() -> impl Strategy<Value = TrackerReply> {
    prop_oneof![
        Just(TrackerReply::Ack),
        (client(), addr(), info(), any::<[u8; 20]>()).prop_map(|(peer, addr, info, root)| TrackerReply::Peer {
            peer,
            addr,
            info,
            root: Digest(root)
        }),
        (
            info(),
            any::<[u8; 20]>(),
            proptest::collection::vec((client(), addr(), any::<bool>()), 0..24)
        )
            .prop_map(|(info, root, peers)| TrackerReply::Swarm {
                info,
                root: Digest(root),
                peers: peers
                    .into_iter()
                    .map(|(peer, addr, complete)| SwarmPeer { peer, addr, complete })
                    .collect(),
            }),
        Just(TrackerReply::NoPeer),
        ".{0,100}".prop_map(|reason| TrackerReply::Refused { reason }),
    ]
}

fn peer_request() -> impl Strategy<Value = PeerRequest> {
    prop_oneof![
        (file_name(), client()).prop_map(|(file, client)| PeerRequest::Get { file, client }),
        any::<[u8; 20]>().prop_map(|sha1| PeerRequest::Received { sha1: Digest(sha1) }),
        (file_name(), client(), any::<[u8; 20]>(), any::<u64>()).prop_map(|(file, client, sha1, piece_size)| {
            PeerRequest::Join {
                file,
                client,
                sha1: Digest(sha1),
                piece_size,
            }
        }),
        Just(PeerRequest::Layer),
        any::<u64>().prop_map(|index| PeerRequest::Piece { index }),
        any::<u64>().prop_map(|index| PeerRequest::Cancel { index }),
        any::<u64>().prop_map(|index| PeerRequest::BadPiece { index }),
    ]
}

fn peer_reply() -> impl Strategy<Value = PeerReply> {
    prop_oneof![
        info().prop_map(|info| PeerReply::File { info }),
        ".{0,100}".prop_map(|reason| PeerReply::Refused { reason }),
        any::<u64>().prop_map(|pieces| PeerReply::Joined { pieces }),
        any::<u64>().prop_map(|pieces| PeerReply::Layer { pieces }),
        any::<u64>().prop_map(|index| PeerReply::Piece { index }),
        any::<u64>().prop_map(|index| PeerReply::Missing { index }),
        any::<u64>().prop_map(|index| PeerReply::Have { index }),
        Just(PeerReply::Checked),
    ]
}

/// Encodes `message` into a frame and decodes it back.
fn round_trip<T>(message: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut wire = BytesMut::new();
    protocol::frame_codec()
        .encode(protocol::encode(message).unwrap(), &mut wire)
        .unwrap();
    let frame = protocol::frame_codec().decode(&mut wire).unwrap().unwrap();
    assert!(wire.is_empty());
    protocol::decode(&frame).unwrap()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_length_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        decode_everything(&framed);
    }

    #[test]
    fn mutated_valid_frames_never_panic(request in tracker_request(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = protocol::encode(&Request { trace: Trace::default(), body: request }).unwrap().to_vec();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        decode_everything(&bytes);
    }

    #[test]
    fn tracker_requests_round_trip(trace in trace(), body in tracker_request()) {
        let request = Request { trace, body };
        prop_assert_eq!(round_trip(&request), request);
    }

    #[test]
    fn tracker_replies_round_trip(reply in tracker_reply()) {
        prop_assert_eq!(round_trip(&reply), reply);
    }

    #[test]
    fn peer_requests_round_trip(trace in trace(), body in peer_request()) {
        let request = Request { trace, body };
        prop_assert_eq!(round_trip(&request), request);
    }

    #[test]
    fn peer_replies_round_trip(reply in peer_reply()) {
        prop_assert_eq!(round_trip(&reply), reply);
    }

    #[test]
    fn file_names_never_escape_the_folder(name in ".{0,300}") {
        if let Ok(file) = name.parse::<FileName>() {
            let joined = std::path::Path::new("/folder").join(file.as_str());
            prop_assert_eq!(joined.parent(), Some(std::path::Path::new("/folder")));
            prop_assert!(!matches!(file.as_str(), "." | ".."));
        }
    }

    #[test]
    fn accepted_file_names_hold_no_control_character(name in "(?s).{0,40}") {
        if let Ok(file) = name.parse::<FileName>() {
            prop_assert!(!file.as_str().chars().any(char::is_control), "{:?}", file);
        }
    }
}
