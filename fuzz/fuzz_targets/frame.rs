//! Arbitrary bytes on an authenticated link: the frame codec must return frames or an
//! error, never panic, and never allocate past its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecloud::wire::FrameCodec;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    // Frames until the codec wants more bytes or refuses the stream.
    while let Ok(Some(_frame)) = codec.decode(&mut buf) {}
    let _ = codec.decode_eof(&mut buf);
});
