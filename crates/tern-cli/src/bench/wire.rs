//! A connection to the broker under test, on tern-codec directly: open
//! (CONNECT), send, queue, receive, subscribe; and reading
//! acknowledgements on a publisher's split stream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use tern_codec::{
    Ack, Connect, Decoder, MqttString, Packet, PacketId, ProtocolVersion, QoS, Subscribe,
    SubscribeFilter, SubscriptionOptions, TopicFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{version, BenchArgs};

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) decoder: Decoder,
    pub(super) buf: BytesMut,
    pub(super) version: ProtocolVersion,
    /// Acknowledgements queued, written before the next wait for input:
    /// one system call for a batch, not one per message.
    pub(super) out: BytesMut,
}

impl Conn {
    pub(super) async fn open(args: &BenchArgs, id: &str, n: usize) -> Result<Conn, String> {
        let addr = SocketAddr::new(args.host, args.port);
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if args.sources > 1 {
            let src = Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(args.sources)) as u8);
            socket
                .bind(SocketAddr::new(IpAddr::V4(src), 0))
                .map_err(|e| format!("bind {src}: {e}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let v = version(args.version);
        let mut c = Conn {
            stream,
            decoder: Decoder::client(v).with_max_packet_size(u32::MAX),
            buf: BytesMut::with_capacity(64 * 1024),
            version: v,
            out: BytesMut::new(),
        };
        let mut connect = Connect::new(v, MqttString::from_str(id).map_err(|e| e.to_string())?);
        connect.keep_alive = 600;
        if v.is_v5() {
            connect.properties.receive_maximum = std::num::NonZeroU16::new(65_535);
        }
        if args.persistent {
            if v.is_v5() {
                connect.properties.session_expiry_interval = Some(3600);
            } else {
                connect.clean_start = false;
            }
        }
        c.send(&connect.into()).await?;
        match c.recv().await? {
            Some(Packet::ConnAck(a)) if !a.reason_code.is_error() => Ok(c),
            other => Err(format!("{id}: expected CONNACK, got {other:?}")),
        }
    }

    pub(super) async fn send(&mut self, p: &Packet) -> Result<(), String> {
        let b = p.to_bytes(self.version).map_err(|e| e.to_string())?;
        self.stream.write_all(&b).await.map_err(|e| e.to_string())
    }

    /// Writes what was queued.
    pub(super) async fn flush(&mut self) -> Result<(), String> {
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| e.to_string())?;
        self.out.clear();
        Ok(())
    }

    /// Queues `p`; it is written before the next wait for input.
    pub(super) fn queue(&mut self, p: &Packet) -> Result<(), String> {
        p.encode(self.version, &mut self.out)
            .map_err(|e| e.to_string())
    }

    pub(super) async fn recv(&mut self) -> Result<Option<Packet>, String> {
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| e.to_string())?
            {
                return Ok(Some(p));
            }
            if !self.out.is_empty() {
                self.stream
                    .write_all(&self.out)
                    .await
                    .map_err(|e| e.to_string())?;
                self.out.clear();
            }
            self.buf.reserve(64 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    pub(super) async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        let s = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new(filter).map_err(|e| e.to_string())?,
                options: SubscriptionOptions::new(qos),
            }],
            properties: Default::default(),
        };
        self.send(&Packet::Subscribe(s)).await?;
        match self.recv().await? {
            Some(Packet::SubAck(a)) if a.reason_codes.iter().all(|c| !c.is_error()) => Ok(()),
            other => Err(format!("expected SUBACK, got {other:?}")),
        }
    }
}

/// Reads acknowledgements; returns how many flows completed. With
/// `nowait`, only what is already buffered or readable at once.
pub(super) async fn read_acks(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    version: ProtocolVersion,
    nowait: bool,
) -> Result<usize, String> {
    let mut done = 0;
    let mut rels = BytesMut::new();
    loop {
        while let Some(p) = decoder.decode(buf).map_err(|e| e.to_string())? {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => done += 1,
                Packet::PubRec(a) => Packet::PubRel(Ack::new(a.packet_id))
                    .encode(version, &mut rels)
                    .map_err(|e| e.to_string())?,
                _ => {}
            }
        }
        // The PUBRELs of what was read, in one write, before any wait.
        if !rels.is_empty() {
            wr.write_all(&rels).await.map_err(|e| e.to_string())?;
            rels.clear();
        }
        if done > 0 {
            return Ok(done);
        }
        buf.reserve(16 * 1024);
        if nowait {
            match rd.try_read_buf(buf) {
                Ok(0) => return Err("broker closed the connection".into()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) => return Err(e.to_string()),
            }
        }
        if rd.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("broker closed the connection".into());
        }
    }
}
