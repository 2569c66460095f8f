//! The listening sockets: bound here, or taken over from the process this
//! one replaces (`handover`). Every worker gets at least one data listener;
//! taken-over sockets are all accepted on, so no queued connection waits on
//! a socket nobody accepts from.

use std::net::{SocketAddr, TcpListener};

use crate::server::handover::Listeners;
use crate::server::ServeError;

/// A TCP socket bound to `addr` with SO_REUSEADDR, and SO_REUSEPORT when
/// `reuse_port`.
fn bound_socket(addr: SocketAddr, reuse_port: bool) -> Result<socket2::Socket, ServeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |source| ServeError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(bind)?;
    socket.set_reuse_address(true).map_err(bind)?;
    socket.set_reuse_port(reuse_port).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    Ok(socket)
}

/// Binds `addr` with SO_REUSEPORT so that every worker has its own socket.
pub fn reuseport_listener(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let socket = bound_socket(addr, true)?;
    let listen = |source| ServeError::Bind { addr, source };
    socket.set_nonblocking(true).map_err(listen)?;
    socket.listen(4096).map_err(listen)?;
    Ok(socket.into())
}

/// Fails if another process listens on `addr`. SO_REUSEPORT would let a
/// second server (of the same user) join the port silently and take part
/// of its traffic; a probe bound without it fails instead, as nginx would.
/// A restart that should share the port takes it over (`handover`).
fn ensure_free(addr: SocketAddr) -> Result<(), ServeError> {
    bound_socket(addr, false).map(drop)
}

/// Whether a socket bound to `have` serves the configured `want` (port 0
/// in the configuration takes any port).
fn serves(have: SocketAddr, want: SocketAddr) -> bool {
    have.ip() == want.ip() && (want.port() == 0 || want.port() == have.port())
}

/// The data listeners per worker and the admin listener.
pub struct Bound {
    /// For each worker, the sockets it accepts on.
    pub data: Vec<Vec<TcpListener>>,
    /// The data port's address.
    pub data_addr: SocketAddr,
    /// The admin socket.
    pub admin: TcpListener,
    /// The admin address.
    pub admin_addr: SocketAddr,
}

/// Takes over `taken` where it matches the configured addresses and binds
/// the rest: `workers` data sockets at least, and the admin socket.
pub fn bind(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    workers: usize,
    taken: Option<Listeners>,
) -> Result<Bound, ServeError> {
    let addr_of = |l: &TcpListener, configured: SocketAddr| {
        l.local_addr().map_err(|source| ServeError::Bind {
            addr: configured,
            source,
        })
    };
    let (mut inherited, admin_inherited) = match taken {
        Some(t) => (t.data, t.admin),
        None => (Vec::new(), None),
    };
    // Port 0 takes the first socket's port.
    let mut data_addr = listen;
    if let Some(first) = inherited.first() {
        let have = addr_of(first, listen)?;
        if serves(have, listen) {
            data_addr = have;
        } else {
            tracing::warn!(%have, want = %listen, "listen address changed; binding anew (connections queued on the old address are lost)");
            inherited.clear();
        }
    }
    if inherited.is_empty() && listen.port() != 0 {
        ensure_free(listen)?;
    }
    let mut data: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, l) in inherited.into_iter().enumerate() {
        l.set_nonblocking(true).map_err(|source| ServeError::Bind {
            addr: data_addr,
            source,
        })?;
        data[i % workers].push(l);
    }
    for slot in data.iter_mut() {
        if slot.is_empty() {
            let l = reuseport_listener(data_addr)?;
            data_addr = addr_of(&l, listen)?;
            slot.push(l);
        }
    }
    let admin = match admin_inherited {
        Some(l) if serves(addr_of(&l, admin_listen)?, admin_listen) => l,
        _ => TcpListener::bind(admin_listen).map_err(|source| ServeError::Bind {
            addr: admin_listen,
            source,
        })?,
    };
    let admin_addr = addr_of(&admin, admin_listen)?;
    Ok(Bound {
        data,
        data_addr,
        admin,
        admin_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_server_listens_on_is_refused() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let other = reuseport_listener(any).unwrap();
        let port = other.local_addr().unwrap();
        match bind(port, any, 1, None) {
            Err(ServeError::Bind { addr, source }) => {
                assert_eq!(addr, port);
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("joined another server's port"),
        }
        drop(other);
        assert!(bind(port, any, 1, None).is_ok());
    }

    #[test]
    fn taken_sockets_are_all_used_and_missing_ones_bound() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = reuseport_listener(any).unwrap();
        let port = first.local_addr().unwrap();
        let taken = Listeners {
            data: vec![
                first,
                reuseport_listener(port).unwrap(),
                reuseport_listener(port).unwrap(),
            ],
            admin: Some(TcpListener::bind(any).unwrap()),
        };
        let admin_port = taken.admin.as_ref().unwrap().local_addr().unwrap();
        // Fewer workers than sockets: every socket is still accepted on.
        let b = bind(any, any, 2, Some(taken)).unwrap();
        assert_eq!(b.data_addr, port);
        assert_eq!(b.data.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(b.admin_addr, admin_port);
        // More workers than sockets: the rest are bound on the same port.
        let taken = Listeners {
            data: b.data.into_iter().flatten().take(1).collect(),
            admin: None,
        };
        let b = bind(port, any, 3, Some(taken)).unwrap();
        assert!(b.data.iter().all(|l| l.len() == 1));
        assert!(b
            .data
            .iter()
            .flatten()
            .all(|l| l.local_addr().unwrap() == port));
        // A changed address is bound anew.
        let elsewhere: SocketAddr = "127.0.0.2:0".parse().unwrap();
        let taken = Listeners {
            data: b.data.into_iter().flatten().collect(),
            admin: None,
        };
        let other = bind(elsewhere, any, 1, Some(taken)).unwrap();
        assert_eq!(other.data_addr.ip(), elsewhere.ip());
    }
}
