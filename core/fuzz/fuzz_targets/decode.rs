//! Feeds arbitrary bytes to the frame decoder and every message decoder:
//! whatever arrives on a socket must give an error or a message, never a
//! panic, a hang or unbounded memory.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use phile_core::protocol::{self, PeerReply, PeerRequest, Request, TrackerReply, TrackerRequest};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    let mut codec = protocol::frame_codec();
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        let _ = protocol::decode::<Request<TrackerRequest>>(&frame);
        let _ = protocol::decode::<TrackerReply>(&frame);
        let _ = protocol::decode::<Request<PeerRequest>>(&frame);
        let _ = protocol::decode::<PeerReply>(&frame);
    }
    let _ = codec.decode_eof(&mut buffer);
});
