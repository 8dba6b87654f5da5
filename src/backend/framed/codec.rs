//! `FrameCodec`: the watchdog.v1 framing (a 4-byte big-endian length, then one protobuf `Frame`), on top of
//! tokio-util's length-delimited codec with an explicit maximum. Does no I/O itself.

use bytes::{BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::envelope::pb::watchdog::v1::{Envelope, Frame};

/// Largest frame before the handshake has set the limit (a Hello must fit).
pub const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;
/// Largest frame once connected (a request head carries up to 1 MiB of headers).
pub const MAX_FRAME: usize = 2 * 1024 * 1024;

/// Why the byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix above the maximum.
    #[error("frame exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The limit in force.
        max: usize,
    },
    /// Bytes that are not a `watchdog.v1.Frame`.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A frame with no `kind`.
    #[error("frame without a kind")]
    Empty,
}

/// Encodes and decodes frames.
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max` bytes.
    pub fn new(max: usize) -> FrameCodec {
        let inner =
            LengthDelimitedCodec::builder().length_field_length(4).big_endian().max_frame_length(max).new_codec();
        FrameCodec { inner, max }
    }

    /// Changes the largest accepted frame (after the handshake).
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max;
        self.inner.set_max_frame_length(max);
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let decoded = self.inner.decode(src).map_err(|e| {
            let too_large = e.get_ref().is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
            if too_large {
                FrameError::TooLarge { max: self.max }
            } else {
                FrameError::Io(e)
            }
        })?;
        let Some(bytes) = decoded else { return Ok(None) };
        let frame = Frame::decode(bytes)?;
        if frame.kind.is_none() {
            return Err(FrameError::Empty);
        }
        Ok(Some(frame))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&frame, dst);
        Ok(())
    }
}

/// Appends `frame` with its length prefix to `dst`.
pub fn encode_frame(frame: &Frame, dst: &mut BytesMut) {
    let len = frame.encoded_len();
    dst.reserve(4 + len);
    dst.put_u32(len as u32);
    frame.encode(dst).expect("reserved enough room");
}

/// Appends the RequestHead frame of `envelope` on `stream_id`: byte-for-byte [`encode_frame`]'s output, but the
/// envelope's length is worked out once. prost writes a nested message's length before it, and so walks the
/// envelope (every header, the whole event) once per level of nesting: three times for a request head.
pub fn encode_request_head(stream_id: u64, envelope: &Envelope, dst: &mut BytesMut) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    // RequestHead { Envelope envelope = 1; }, always present.
    let envelope_len = envelope.encoded_len();
    let head_len = key_len(1) + encoded_len_varint(envelope_len as u64) + envelope_len;
    // Frame { uint64 stream_id = 1; oneof kind { RequestHead request_head = 6; } }: a zero id left out.
    let id_len = if stream_id == 0 { 0 } else { key_len(1) + encoded_len_varint(stream_id) };
    let len = id_len + key_len(6) + encoded_len_varint(head_len as u64) + head_len;
    dst.reserve(4 + len);
    dst.put_u32(len as u32);
    if stream_id != 0 {
        encode_key(1, WireType::Varint, dst);
        encode_varint(stream_id, dst);
    }
    encode_key(6, WireType::LengthDelimited, dst);
    encode_varint(head_len as u64, dst);
    encode_key(1, WireType::LengthDelimited, dst);
    encode_varint(envelope_len as u64, dst);
    envelope.encode_raw(dst);
}

/// Appends only the head of a Data frame on `stream_id` carrying `payload_len` bytes: the length prefix and the
/// protobuf bytes before the payload. Followed by the payload, it is byte-for-byte [`encode_frame`]'s output,
/// so a large chunk can go to the socket as it is instead of being copied into the frame.
pub fn encode_data_head(stream_id: u64, payload_len: usize, dst: &mut BytesMut) {
    use prost::encoding::{encode_varint, encoded_len_varint};
    // Data { bytes data = 1; }: proto3 leaves an empty payload out.
    let data_len = if payload_len == 0 { 0 } else { 1 + encoded_len_varint(payload_len as u64) + payload_len };
    // Frame { uint64 stream_id = 1; oneof kind { Data data = 7; } }: fields in number order, a zero id left out.
    let id_len = if stream_id == 0 { 0 } else { 1 + encoded_len_varint(stream_id) };
    let len = id_len + 1 + encoded_len_varint(data_len as u64) + data_len;
    dst.reserve(4 + len - payload_len);
    dst.put_u32(len as u32);
    if stream_id != 0 {
        dst.put_u8(1 << 3);
        encode_varint(stream_id, dst);
    }
    dst.put_u8((7 << 3) | 2);
    encode_varint(data_len as u64, dst);
    if payload_len != 0 {
        dst.put_u8((1 << 3) | 2);
        encode_varint(payload_len as u64, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::pb::watchdog::v1::{frame::Kind, Data, Ping};
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    fn ping(stream_id: u64, nonce: u64) -> Frame {
        Frame { stream_id, kind: Some(Kind::Ping(Ping { nonce })) }
    }

    #[tokio::test]
    async fn round_trip_over_a_duplex() {
        let (a, b) = tokio::io::duplex(64);
        let mut writer = FramedWrite::new(a, FrameCodec::new(MAX_FRAME));
        let mut reader = FramedRead::new(b, FrameCodec::new(MAX_FRAME));
        let data = Frame { stream_id: 3, kind: Some(Kind::Data(Data { data: vec![7u8; 10_000].into() })) };
        let sent = vec![ping(0, 1), data, ping(0, 2)];
        let to_send = sent.clone();
        tokio::spawn(async move {
            for f in to_send {
                writer.send(f).await.unwrap();
            }
        });
        for expected in sent {
            assert_eq!(reader.next().await.unwrap().unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn partial_frames_wait_for_the_rest() {
        let mut bytes = BytesMut::new();
        encode_frame(&ping(0, 42), &mut bytes);
        // A large frame arriving in pieces: the codec must not mistake payload bytes for a length prefix.
        let big = Frame { stream_id: 9, kind: Some(Kind::Data(Data { data: vec![0xAB; 200_000].into() })) };
        encode_frame(&big, &mut bytes);
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = FramedRead::new(b, FrameCodec::new(MAX_FRAME));
        tokio::spawn(async move {
            for piece in bytes.chunks(1000) {
                a.write_all(piece).await.unwrap();
            }
            // `a` drops here: the reader then sees the end.
        });
        assert_eq!(reader.next().await.unwrap().unwrap(), ping(0, 42));
        assert_eq!(reader.next().await.unwrap().unwrap(), big);
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn oversized_frames_are_rejected_from_the_prefix() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = FramedRead::new(b, FrameCodec::new(1000));
        a.write_all(&1001u32.to_be_bytes()).await.unwrap();
        match reader.next().await.unwrap() {
            Err(FrameError::TooLarge { max: 1000 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_and_empty_frames_are_errors() {
        let mut codec = FrameCodec::new(MAX_FRAME);
        let mut garbage = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut garbage), Err(FrameError::Decode(_))));
        let mut empty = BytesMut::new();
        encode_frame(&Frame { stream_id: 5, kind: None }, &mut empty);
        assert!(matches!(codec.decode(&mut empty), Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn raising_the_limit_after_the_handshake() {
        let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME);
        let big = Frame { stream_id: 1, kind: Some(Kind::Data(Data { data: vec![1u8; 100_000].into() })) };
        let mut bytes = BytesMut::new();
        encode_frame(&big, &mut bytes);
        assert!(matches!(codec.decode(&mut bytes.clone()), Err(FrameError::TooLarge { .. })));
        codec.set_max_frame(MAX_FRAME);
        assert_eq!(codec.decode(&mut bytes).unwrap().unwrap(), big);
    }

    #[test]
    fn a_data_head_and_its_payload_are_the_encoded_frame() {
        for stream_id in [0u64, 1, 127, 128, 300, u64::MAX] {
            for len in [0usize, 1, 127, 128, 1000, 16_383, 16_384, 65_536, 2_000_000] {
                let payload = vec![7u8; len];
                let frame = Frame { stream_id, kind: Some(Kind::Data(Data { data: payload.clone().into() })) };
                let mut want = BytesMut::new();
                encode_frame(&frame, &mut want);
                let mut got = BytesMut::new();
                encode_data_head(stream_id, len, &mut got);
                got.extend_from_slice(&payload);
                assert_eq!(got, want, "stream {stream_id}, {len} bytes");
            }
        }
    }

    #[test]
    fn a_request_head_is_the_encoded_frame() {
        use crate::envelope::pb::io::cloudevents::v1::CloudEvent;
        use crate::envelope::pb::watchdog::v1::RequestHead;
        let req = http::Request::post("/p?q=1").header("host", "h").header("x-a", "b").body(()).unwrap();
        let plain = crate::envelope::from_http(&req.into_parts().0, 13, None).unwrap();
        let event =
            CloudEvent { id: "1".into(), source: "/s".into(), spec_version: "1.0".into(), ..Default::default() };
        let as_event = plain.clone().into_kind(crate::envelope::Kind::Cloudevent(event));
        for envelope in [Envelope::default(), plain, as_event] {
            for stream_id in [0u64, 1, 127, 128, u64::MAX] {
                let frame = Frame {
                    stream_id,
                    kind: Some(Kind::RequestHead(Box::new(RequestHead { envelope: Some(envelope.clone()) }))),
                };
                let mut want = BytesMut::new();
                encode_frame(&frame, &mut want);
                let mut got = BytesMut::new();
                encode_request_head(stream_id, &envelope, &mut got);
                assert_eq!(got, want, "stream {stream_id}");
            }
        }
    }

    /// Every frame is moved several times between the socket and its stream, and a frame is as large as its
    /// largest kind: the two heads are boxed (build.rs) so the common small frames stay small.
    #[test]
    fn frames_stay_small() {
        let size = std::mem::size_of::<Frame>();
        assert!(size <= 128, "a Frame is {size} bytes");
    }
}
