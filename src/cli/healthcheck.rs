//! `rwsplit healthcheck`: asks this instance's own `/healthz`, for container health checks
//! on an image that ships no HTTP client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(2);

/// Whether `GET /healthz` on `addr` answers 200 within two seconds.
pub fn check(addr: SocketAddr) -> Result<(), String> {
    // A wildcard bind address is reachable on loopback.
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let mut stream =
        TcpStream::connect_timeout(&target, LIMIT).map_err(|e| format!("{target}: {e}"))?;
    stream
        .set_read_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    match &head[9..12] {
        b"200" => Ok(()),
        other => Err(format!(
            "/healthz answered {}",
            String::from_utf8_lossy(other)
        )),
    }
}
