//! The wire format: a 4-byte big-endian length N, then N bytes of one protobuf `watchdog.v1.Frame`.
//!
//! [`FrameCodec`] decodes with tokio-util's [`LengthDelimitedCodec`] (big-endian, 4-byte length, explicit maximum)
//! and encodes straight into the output buffer (same format, one copy of the payload). It is public so tests and
//! tools can play the watchdog's side.

use bytes::{BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::proto::watchdog::v1::Frame;

/// Largest frame before HelloAck arrives (and the largest Hello).
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 64 * 1024;
/// `max_frame_bytes` when HelloAck leaves it unset.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;
/// `max_chunk_bytes` when HelloAck leaves it unset.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 64 * 1024;
/// `initial_window_bytes` when HelloAck leaves it unset.
pub const DEFAULT_INITIAL_WINDOW_BYTES: u32 = 256 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix (or an encoded frame) larger than the limit.
    #[error("frame of {len} bytes exceeds max_frame_bytes ({max})")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes that are not a `Frame`.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A `Frame` with no `kind`.
    #[error("frame on stream {0} has no kind")]
    NoKind(u64),
}

/// Length-prefixed `Frame` codec with a maximum frame length that can change after the handshake.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
    // The inner codec has consumed a length prefix and waits for the frame's bytes.
    in_body: bool,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max_frame_bytes` bytes (the prefix excluded), both ways.
    pub fn new(max_frame_bytes: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_type::<u32>()
            .max_frame_length(max_frame_bytes)
            .new_codec();
        FrameCodec { inner, max: max_frame_bytes, in_body: false }
    }

    /// The current maximum frame length.
    pub fn max_frame_bytes(&self) -> usize {
        self.max
    }

    /// Changes the maximum frame length (after HelloAck).
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max = max;
        self.inner.set_max_frame_length(max);
    }
}

/// Appends `frame`, length-prefixed, to `dst`; fails without writing when it exceeds `max` bytes.
pub fn encode_frame(frame: &Frame, dst: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    let len = frame.encoded_len();
    if len > max || len > u32::MAX as usize {
        return Err(CodecError::TooLarge { len, max });
    }
    dst.reserve(4 + len);
    dst.put_u32(len as u32);
    frame.encode_raw(dst);
    Ok(())
}

/// Appends only the head of a Data frame on `stream_id` with a `payload_len`-byte payload: the length prefix and
/// the protobuf bytes before the payload. Written after it, the payload completes a frame byte-for-byte equal to
/// [`encode_frame`]'s, so large chunks can go to the socket without being copied into the frame.
pub fn encode_data_head(stream_id: u64, payload_len: usize, dst: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    use prost::encoding::{encode_varint, encoded_len_varint};
    // Data { bytes data = 1; } — proto3 leaves an empty payload out.
    let data_len = if payload_len == 0 { 0 } else { 1 + encoded_len_varint(payload_len as u64) + payload_len };
    // Frame { uint64 stream_id = 1; oneof kind { Data data = 7; } } — fields in number order, 0 left out.
    let id_len = if stream_id == 0 { 0 } else { 1 + encoded_len_varint(stream_id) };
    let len = id_len + 1 + encoded_len_varint(data_len as u64) + data_len;
    if len > max || len > u32::MAX as usize {
        return Err(CodecError::TooLarge { len, max });
    }
    dst.reserve(4 + len - payload_len);
    dst.put_u32(len as u32);
    if stream_id != 0 {
        dst.put_u8(1 << 3); // field 1, varint
        encode_varint(stream_id, dst);
    }
    dst.put_u8((7 << 3) | 2); // field 7, length-delimited
    encode_varint(data_len as u64, dst);
    if payload_len != 0 {
        dst.put_u8((1 << 3) | 2); // field 1, length-delimited
        encode_varint(payload_len as u64, dst);
    }
    Ok(())
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let at_head = !self.in_body && src.len() >= 4;
        if at_head {
            // Report the offending length (LengthDelimitedCodec's own check would reject it too, without it).
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len > self.max {
                return Err(CodecError::TooLarge { len, max: self.max });
            }
        }
        match self.inner.decode(src)? {
            None => {
                self.in_body |= at_head;
                Ok(None)
            }
            Some(bytes) => {
                self.in_body = false;
                // Decoding from `Bytes` makes every `bytes` field a zero-copy slice of the read buffer.
                let frame = Frame::decode(bytes.freeze())?;
                if frame.kind.is_none() {
                    return Err(CodecError::NoKind(frame.stream_id));
                }
                Ok(Some(frame))
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&frame, dst, self.max)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(frame, dst, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::watchdog::v1::{frame::Kind, Data, Ping};
    use bytes::Bytes;

    fn ping(stream_id: u64, nonce: u64) -> Frame {
        Frame { stream_id, kind: Some(Kind::Ping(Ping { nonce })) }
    }

    fn data(stream_id: u64, len: usize) -> Frame {
        Frame { stream_id, kind: Some(Kind::Data(Data { data: Bytes::from(vec![7u8; len]) })) }
    }

    #[test]
    fn roundtrip_and_wire_format() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        codec.encode(ping(0, 42), &mut buf).unwrap();
        let body = ping(0, 42).encode_to_vec();
        assert_eq!(&buf[..4], &(body.len() as u32).to_be_bytes(), "4-byte big-endian length prefix");
        assert_eq!(&buf[4..], &body[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(ping(0, 42)));
        assert!(buf.is_empty());
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn partial_frames_byte_by_byte() {
        let mut codec = FrameCodec::new(64 * 1024);
        let mut wire = BytesMut::new();
        let frames = [ping(0, 1), data(3, 1000), ping(0, u64::MAX), data(5, 0)];
        for f in &frames {
            codec.encode(f, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer_then_a_split_one() {
        let mut codec = FrameCodec::new(64 * 1024);
        let mut wire = BytesMut::new();
        for i in 0..10 {
            codec.encode(ping(0, i), &mut wire).unwrap();
        }
        codec.encode(data(7, 5000), &mut wire).unwrap();
        let mut tail = wire.split_off(wire.len() - 100);
        for i in 0..10 {
            assert_eq!(codec.decode(&mut wire).unwrap(), Some(ping(0, i)));
        }
        assert_eq!(codec.decode(&mut wire).unwrap(), None, "the data frame is incomplete");
        wire.unsplit(tail.split());
        assert_eq!(codec.decode(&mut wire).unwrap(), Some(data(7, 5000)));
    }

    #[test]
    fn data_head_plus_payload_equals_the_encoded_frame() {
        for stream_id in [0u64, 1, 127, 128, 300, u64::MAX] {
            for len in [0usize, 1, 127, 128, 1000, 16_383, 16_384, 65_536, 2_000_000] {
                let f = data(stream_id, len);
                let mut want = BytesMut::new();
                encode_frame(&f, &mut want, usize::MAX).unwrap();
                let mut got = BytesMut::new();
                encode_data_head(stream_id, len, &mut got, usize::MAX).unwrap();
                got.extend_from_slice(&vec![7u8; len]);
                assert_eq!(got, want, "stream {stream_id}, {len} bytes");
            }
        }
        let mut buf = BytesMut::new();
        let n = data(5, 1000).encoded_len();
        assert!(encode_data_head(5, 1000, &mut buf, n).is_ok());
        assert!(matches!(encode_data_head(5, 1000, &mut buf, n - 1), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let mut codec = FrameCodec::new(100);
        let mut buf = BytesMut::new();
        buf.put_u32(101);
        match codec.decode(&mut buf) {
            Err(CodecError::TooLarge { len: 101, max: 100 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Exactly the limit is fine.
        let mut codec = FrameCodec::new(100);
        let f = data(1, 90);
        let n = f.encoded_len();
        codec.set_max_frame_bytes(n);
        let mut buf = BytesMut::new();
        codec.encode(&f, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(f));
    }

    #[test]
    fn raising_the_limit_after_the_handshake() {
        let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES);
        let big = data(1, 100 * 1024);
        let mut buf = BytesMut::new();
        assert!(matches!(codec.encode(&big, &mut buf), Err(CodecError::TooLarge { .. })));
        assert!(buf.is_empty(), "nothing written for a rejected frame");
        codec.set_max_frame_bytes(DEFAULT_MAX_FRAME_BYTES);
        codec.encode(&big, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(big));
    }

    #[test]
    fn garbage_and_kindless_frames_are_errors() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::Decode(_))));

        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        let kindless = Frame { stream_id: 9, kind: None }.encode_to_vec();
        buf.put_u32(kindless.len() as u32);
        buf.put_slice(&kindless);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::NoKind(9))));
    }
}
