//! TLS and WebSocket transports: loading certificates, the client
//! certificate's common name, and a WebSocket connection seen as a byte
//! stream.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A TLS server configuration that can be replaced while running (SIGHUP).
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    /// Use the verified client certificate's common name as the user name.
    pub cn_as_username: bool,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cn_as_username", &self.cn_as_username)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Loads a PEM certificate chain and key, and, if `client_ca` is given,
    /// requires client certificates signed by it. Errors name the file.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        cn_as_username: bool,
    ) -> Result<TlsSettings, String> {
        let config = server_config(cert, key, client_ca)?;
        Ok(TlsSettings {
            config: Arc::new(RwLock::new(Arc::new(config))),
            cn_as_username,
        })
    }

    /// Loads the files again and uses them for new connections; on error
    /// the old ones stay.
    pub fn reload(&self, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<(), String> {
        let config = server_config(cert, key, client_ca)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// The TLS handshake of a server-side connection, with the current
    /// certificate (for servers beside the broker's, such as its HTTP
    /// listener).
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        self.acceptor().accept(stream).await
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))
}

/// The common name of the first certificate in `certs`.
pub(crate) fn common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Accepts a WebSocket on `stream` at `path` with subprotocol `mqtt`, and
/// returns a byte stream whose bytes are the binary frames' payloads. No
/// WebSocket message may be larger than `max` bytes (the broker's maximum
/// packet size): tungstenite would otherwise buffer up to 64 MiB of one.
// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
pub(crate) async fn websocket<S>(stream: S, path: String, max: usize) -> io::Result<DuplexStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some(format!("no MQTT here; try {path}")));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if !offered {
            let mut e = ErrorResponse::new(Some("the subprotocol must be mqtt".into()));
            *e.status_mut() = StatusCode::BAD_REQUEST;
            return Err(e);
        }
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(resp)
    };
    let limits = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(limits))
        .await
        .map_err(io::Error::other)?;
    let (mut sink, mut source) = ws.split();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    // Frames in, bytes out.
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                WsMessage::Binary(b) => b,
                WsMessage::Close(_) => break,
                // MQTT goes in binary frames only; pings are answered by
                // tungstenite.
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // Bytes in, frames out.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = WsMessage::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    Ok(ours)
}

/// A TLS client configuration: the server is checked against the PEM CA
/// certificates in `ca_file` (or, without one, the system's bundle at
/// `/etc/ssl/certs/ca-certificates.crt`), and `cert`/`key` give a client
/// certificate when the server asks for one. Errors name the file.
pub fn tls_client_config(
    ca_file: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let ca = ca_file.unwrap_or(system);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        // The system bundle may hold certificates webpki cannot use.
        if let Err(e) = roots.add(c) {
            if ca_file.is_some() {
                return Err(format!("{}: {e}", ca.display()));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("a client certificate needs both --cert and --key".into()),
    };
    Ok(Arc::new(config))
}

/// A client WebSocket seen as a byte stream: each write is one binary
/// frame, reads return the payloads of binary frames. No task of its own.
pub(crate) struct WsIo<S> {
    ws: tokio_tungstenite::WebSocketStream<S>,
    read: Bytes,
}

impl<S> WsIo<S> {
    pub(crate) fn new(ws: tokio_tungstenite::WebSocketStream<S>) -> WsIo<S> {
        WsIo {
            ws,
            read: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.read.is_empty() {
            match std::task::ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(WsMessage::Binary(b))) => self.read = b,
                Some(Ok(WsMessage::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        std::task::ready!(self.ws.poll_ready_unpin(cx)).map_err(io::Error::other)?;
        self.ws
            .start_send_unpin(WsMessage::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.ws.poll_close_unpin(cx).map_err(io::Error::other)
    }
}
