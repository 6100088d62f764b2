//! A peer that sends arbitrary bytes to a listener: the accepting side of the handshake must
//! end with a peer or an error, never panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodecloud::wire::{accept, FrameCodec, Identity, MAX_HANDSHAKE_FRAME_BYTES};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut peer, node) = tokio::io::duplex(64 * 1024);
        // The whole input, then end of stream: the handshake sees EOF instead of waiting.
        let _ = peer.write_all(data).await;
        let _ = peer.shutdown().await;
        let me = Identity {
            cluster: "fuzz".into(),
            node: "master".into(),
            incarnation: uuid::Uuid::nil(),
            secret: b"fuzz-secret-0123456789".to_vec(),
            welcome: Default::default(),
        };
        let mut framed = Framed::new(node, FrameCodec::new(MAX_HANDSHAKE_FRAME_BYTES));
        let _ = accept(&mut framed, &me, Duration::from_millis(50), |_| Ok(())).await;
    });
});
