//! The packet codec: MQTT 3.1.1 frames read from and written to the device's TLS
//! stream.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{self, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

use super::CLOSE_TIMEOUT;
use crate::stats::{Counters, Refusal};

/// Read buffer space reserved before each read.
const READ_CHUNK: usize = 2048;

/// A device's TLS stream.
pub(super) type Stream = TlsStream<TcpStream>;

/// Closes a TLS stream politely (close_notify), without waiting long.
pub(super) async fn close(mut stream: Stream) {
    let _ = timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// The device side: the TLS stream, the packet reader and a write buffer.
pub(super) struct DeviceIo {
    stream: Stream,
    reader: PacketReader,
    write_buffer: BytesMut,
    counters: Arc<Counters>,
}

impl DeviceIo {
    pub(super) fn new(stream: Stream, max_packet_size: usize, counters: Arc<Counters>) -> Self {
        Self {
            stream,
            reader: PacketReader::new(max_packet_size),
            write_buffer: BytesMut::new(),
            counters,
        }
    }

    /// Changes the largest packet the reader accepts from now on.
    pub(super) fn set_max_packet_size(&mut self, max_packet_size: usize) {
        self.reader.max_packet_size = max_packet_size;
    }

    /// Reads the next packet (cancel safe: partial input stays in the reader).
    pub(super) async fn read_packet(&mut self) -> Result<(Packet, u8), ReadError> {
        let before = self.reader.bytes_read;
        let read = self.reader.next(&mut self.stream).await;
        self.counters
            .bytes_received(self.reader.bytes_read - before);
        read
    }

    /// A complete packet already read, if there is one: no I/O.
    pub(super) fn buffered_packet(&mut self) -> Result<Option<(Packet, u8)>, ReadError> {
        self.reader.buffered()
    }

    /// Encodes packets as MQTT 3.1.1 and writes them in one go.
    pub(super) async fn write_packets(
        &mut self,
        packets: impl IntoIterator<Item = Packet>,
    ) -> io::Result<()> {
        for packet in packets {
            V4.write(strip_properties(packet), &mut self.write_buffer)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        }
        let result = self.stream.write_all(&self.write_buffer).await;
        if result.is_ok() {
            self.counters.bytes_sent(self.write_buffer.len() as u64);
        }
        self.write_buffer.clear();
        result?;
        self.stream.flush().await
    }

    /// Closes the connection politely, without waiting long.
    pub(super) async fn close(self) {
        close(self.stream).await;
    }
}

/// Drops MQTT 5 properties, which a 3.1.1 encoder cannot write (rumqttd's v4 encoder
/// panics on them).
fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(puback, _) => Packet::PubAck(puback, None),
        Packet::SubAck(suback, _) => Packet::SubAck(suback, None),
        Packet::UnsubAck(unsuback, _) => Packet::UnsubAck(unsuback, None),
        Packet::PubRec(pubrec, _) => Packet::PubRec(pubrec, None),
        Packet::PubRel(pubrel, _) => Packet::PubRel(pubrel, None),
        Packet::PubComp(pubcomp, _) => Packet::PubComp(pubcomp, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        other => other,
    }
}

/// Why reading a packet failed.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The device closed the connection.
    Closed,
    /// The connection failed.
    Io(io::Error),
    /// The packet's announced length is above the limit.
    TooLarge,
    /// The bytes are not MQTT 3.1.1.
    Protocol(protocol::Error),
}

impl ReadError {
    pub(super) fn refusal(&self) -> Refusal {
        match self {
            Self::TooLarge => Refusal::PacketTooLarge,
            Self::Closed | Self::Io(_) | Self::Protocol(_) => Refusal::ProtocolError,
        }
    }
}

/// Frames MQTT 3.1.1 packets out of a byte stream, refusing oversize ones from their
/// fixed header, before their body is read.
struct PacketReader {
    buffer: BytesMut,
    max_packet_size: usize,
    /// Bytes read from the stream so far.
    bytes_read: u64,
}

impl PacketReader {
    fn new(max_packet_size: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max_packet_size,
            bytes_read: 0,
        }
    }

    /// A complete packet already buffered, with its first byte.
    fn buffered(&mut self) -> Result<Option<(Packet, u8)>, ReadError> {
        let Some(&header) = self.buffer.first() else {
            return Ok(None);
        };
        match V4.read_mut(&mut self.buffer, self.max_packet_size) {
            Ok(packet) => Ok(Some((packet, header))),
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(protocol::Error::PayloadSizeLimitExceeded(_)) => Err(ReadError::TooLarge),
            Err(error) => Err(ReadError::Protocol(error)),
        }
    }

    /// The next packet, reading as needed. Cancel safe.
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(Packet, u8), ReadError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.buffer.reserve(READ_CHUNK);
            let read = stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(ReadError::Io)?;
            if read == 0 {
                return Err(ReadError::Closed);
            }
            self.bytes_read += read as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversize_packet_is_refused_from_its_header() {
        // PUBLISH announcing 1,000,000 bytes, of which only the header arrives.
        let mut input: &[u8] = &[0x30, 0xc0, 0x84, 0x3d];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut input).await,
            Err(ReadError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_and_eof_is_closed() {
        let mut garbage: &[u8] = &[0xf0, 0x00];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut garbage).await,
            Err(ReadError::Protocol(_))
        ));
        let mut empty: &[u8] = &[];
        let mut reader = PacketReader::new(1024);
        assert!(matches!(
            reader.next(&mut empty).await,
            Err(ReadError::Closed)
        ));
    }
}
