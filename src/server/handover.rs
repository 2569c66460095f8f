//! Zero-downtime restart. On SIGUSR2 the running server starts a new process
//! of its binary and passes it, over a Unix socket (SCM_RIGHTS), the very
//! listening sockets it accepts on. Connections queued on them stay queued
//! for whichever process accepts first, so none is refused or reset. Once
//! the new process accepts, the old one stops accepting, answers every
//! request it has read (with `Connection: close`), flushes, seals its
//! segments and exits. The two never write the same stream (`store::lease`).
//!
//! Protocol, on one Unix stream connection to `<data_dir>/handover.sock`:
//! 1. the new process connects (the old one checks the peer is the process
//!    it started);
//! 2. old → new: `trackplane-handover 1 data=N admin=A\n` with N data
//!    listeners and A (0 or 1) admin listeners attached, in that order;
//! 3. new → old: `ready\n` once every worker accepts.
//!
//! Until step 3 the old process serves as before; if the new one exits or
//! misses the deadline, the old one kills it and keeps serving.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Environment variable that tells a new process where to take its
/// listening sockets from.
pub const ENV: &str = "TRACKPLANE_HANDOVER";

/// How long the new process may take to connect and to start serving
/// (recovering its streams and loading catalogs included).
pub const TIMEOUT: Duration = Duration::from_secs(60);

const MAGIC: &str = "trackplane-handover 1";

/// Most sockets one handover carries: far above any core count.
const MAX_FDS: usize = 512;

/// Why a handover did not happen. The old process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A socket or the new process could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The new process exited before it served.
    #[error("the new process exited before serving ({0})")]
    Exited(ExitStatus),
    /// The new process did not serve in time; it was killed.
    #[error("the new process was not serving within {0:?}; it was stopped")]
    Timeout(Duration),
    /// The other side spoke something else.
    #[error("handover protocol: {0}")]
    Protocol(String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> HandoverError {
    move |source| HandoverError::Io { what, source }
}

/// A process started by [`offer`] inherits every descriptor of the old
/// one that lacks close-on-exec, and connections accepted through io_uring
/// do (monoio accepts without `SOCK_CLOEXEC`). Kept open here, they would
/// outlive the old process and leave its clients waiting for an answer
/// that never comes. Closes every descriptor above stderr.
///
/// # Safety
/// Call first in `main`, before this process opens any descriptor:
/// nothing may own one of those it closes.
#[allow(unsafe_code)]
pub unsafe fn close_inherited_descriptors() -> io::Result<()> {
    // SAFETY: the caller guarantees no descriptor above 2 is owned yet;
    // close_range(2) only closes.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Listening sockets as they pass from one process to the next.
#[derive(Debug)]
pub struct Listeners {
    /// The data port's SO_REUSEPORT sockets, one per worker of the sender.
    pub data: Vec<TcpListener>,
    /// The admin port's socket.
    pub admin: Option<TcpListener>,
}

/// The socket a server offers its listeners on.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("handover.sock")
}

/// The old side: starts `command` as the new process, passes it
/// `listeners`, and returns its pid once it serves.
pub fn offer(
    socket: &Path,
    listeners: &Listeners,
    mut command: Command,
) -> Result<u32, HandoverError> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot remove a stale handover socket")(e)),
    }
    let listener = UnixListener::bind(socket).map_err(io_err("cannot bind the handover socket"))?;
    // The new process inherits the notify socket; the watchdog becomes its
    // own once it is the main process.
    command.env(ENV, socket).env_remove("WATCHDOG_PID");
    let mut child = command
        .spawn()
        .map_err(io_err("cannot start the new process"))?;
    let result = offer_to(&listener, &mut child, listeners);
    let _ = std::fs::remove_file(socket);
    match result {
        Ok(pid) => Ok(pid),
        Err(e) => {
            // A child that did not take over must not take over later.
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn offer_to(
    listener: &UnixListener,
    child: &mut Child,
    listeners: &Listeners,
) -> Result<u32, HandoverError> {
    let deadline = Instant::now() + TIMEOUT;
    listener
        .set_nonblocking(true)
        .map_err(io_err("handover socket"))?;
    let conn = loop {
        if let Some(status) = child.try_wait().map_err(io_err("new process"))? {
            return Err(HandoverError::Exited(status));
        }
        match listener.accept() {
            Ok((conn, _)) => {
                let peer = rustix::net::sockopt::socket_peercred(&conn)
                    .map_err(|e| io_err("handover peer")(e.into()))?;
                if peer.pid.as_raw_nonzero().get() as u32 == child.id() {
                    break conn;
                }
                tracing::warn!(
                    pid = peer.pid.as_raw_nonzero().get(),
                    "handover socket: ignored a process that was not started for it"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(HandoverError::Timeout(TIMEOUT));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("handover socket")(e)),
        }
    };
    conn.set_nonblocking(false)
        .map_err(io_err("handover socket"))?;
    send_listeners(&conn, listeners)?;
    // Wait for "ready", watching the child and the deadline. The peer was
    // checked to be the child, so the answer needs no pid.
    let mut reader = BufReader::new(conn);
    let mut answer = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandoverError::Timeout(TIMEOUT));
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .map_err(io_err("handover socket"))?;
        match reader.read_line(&mut answer) {
            Ok(0) => {
                let status = child.wait().map_err(io_err("new process"))?;
                return Err(HandoverError::Exited(status));
            }
            Ok(_) if answer.ends_with('\n') => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(status) = child.try_wait().map_err(io_err("new process"))? {
                    return Err(HandoverError::Exited(status));
                }
            }
            Err(e) => return Err(io_err("handover socket")(e)),
        }
    }
    if answer != "ready\n" {
        return Err(HandoverError::Protocol(format!(
            "unexpected answer {answer:?}"
        )));
    }
    Ok(child.id())
}

/// Step 2 of the protocol: the offer line with the sockets attached.
fn send_listeners(conn: &UnixStream, listeners: &Listeners) -> Result<(), HandoverError> {
    let mut fds: Vec<BorrowedFd<'_>> = listeners.data.iter().map(AsFd::as_fd).collect();
    fds.extend(listeners.admin.as_ref().map(AsFd::as_fd));
    let line = format!(
        "{MAGIC} data={} admin={}\n",
        listeners.data.len(),
        usize::from(listeners.admin.is_some())
    );
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(HandoverError::Protocol("too many sockets to pass".into()));
    }
    let sent = sendmsg(
        conn,
        &[IoSlice::new(line.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| io_err("cannot pass the listening sockets")(e.into()))?;
    if sent != line.len() {
        return Err(HandoverError::Protocol("short handover message".into()));
    }
    Ok(())
}

/// The new side: listeners taken over, and the line back to the old
/// process.
#[derive(Debug)]
pub struct Taken {
    /// The sockets received.
    pub listeners: Listeners,
    /// Says "serving" to the old process.
    pub ready: Ready,
}

/// The line back to the old process.
#[derive(Debug)]
pub struct Ready(UnixStream);

impl Ready {
    /// Tells the old process this one serves; it then stops accepting.
    pub fn send(mut self) -> io::Result<()> {
        self.0.write_all(b"ready\n")
    }
}

impl Taken {
    /// When `$TRACKPLANE_HANDOVER` names a socket, takes the listeners
    /// offered there; otherwise `None` (a plain start).
    pub fn from_env() -> Result<Option<Taken>, HandoverError> {
        match std::env::var_os(ENV) {
            Some(path) => Taken::from(Path::new(&path)).map(Some),
            None => Ok(None),
        }
    }

    /// Takes the listeners offered on `socket`.
    pub fn from(socket: &Path) -> Result<Taken, HandoverError> {
        let conn =
            UnixStream::connect(socket).map_err(io_err("cannot reach the running server"))?;
        conn.set_read_timeout(Some(TIMEOUT))
            .map_err(io_err("handover socket"))?;
        let mut bytes = [0u8; 128];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            &conn,
            &mut [IoSliceMut::new(&mut bytes)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| io_err("cannot receive the listening sockets")(e.into()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let line = std::str::from_utf8(&bytes[..got.bytes])
            .ok()
            .and_then(|l| l.strip_suffix('\n'))
            .ok_or_else(|| HandoverError::Protocol("incomplete handover message".into()))?;
        let (data, admin) = parse_offer(line)?;
        if fds.len() != data + admin {
            return Err(HandoverError::Protocol(format!(
                "announced {} sockets, received {}",
                data + admin,
                fds.len()
            )));
        }
        let mut listeners: Vec<TcpListener> = fds.into_iter().map(TcpListener::from).collect();
        let admin = (admin == 1).then(|| listeners.pop()).flatten();
        Ok(Taken {
            listeners: Listeners {
                data: listeners,
                admin,
            },
            ready: Ready(conn),
        })
    }
}

/// Parses `trackplane-handover 1 data=N admin=A` into (N, A).
fn parse_offer(line: &str) -> Result<(usize, usize), HandoverError> {
    let bad = || HandoverError::Protocol(format!("unexpected offer {line:?}"));
    let rest = line.strip_prefix(MAGIC).ok_or_else(bad)?;
    let mut data = None;
    let mut admin = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("data", n)) => data = n.parse::<usize>().ok(),
            Some(("admin", n)) => admin = n.parse::<usize>().ok().filter(|&a| a <= 1),
            _ => return Err(bad()),
        }
    }
    match (data, admin) {
        (Some(d), Some(a)) if d + a <= MAX_FDS => Ok((d, a)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_parse_strictly() {
        assert_eq!(
            parse_offer("trackplane-handover 1 data=4 admin=1").unwrap(),
            (4, 1)
        );
        assert_eq!(
            parse_offer("trackplane-handover 1 data=0 admin=0").unwrap(),
            (0, 0)
        );
        for bad in [
            "",
            "trackplane-handover 2 data=1 admin=1",
            "trackplane-handover 1 data=1",
            "trackplane-handover 1 data=1 admin=2",
            "trackplane-handover 1 data=x admin=1",
            "trackplane-handover 1 data=1 admin=1 extra",
            "trackplane-handover 1 data=100000 admin=1",
        ] {
            assert!(parse_offer(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The same socket object reaches the other side: a connection queued
    /// before the handover is accepted from the received listener.
    #[test]
    fn listeners_cross_a_unix_socket_with_their_queues() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let data = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let queued = std::net::TcpStream::connect(data.local_addr().unwrap()).unwrap();
        let unix = UnixListener::bind(&path).unwrap();
        let taker = {
            let path = path.clone();
            std::thread::spawn(move || {
                let taken = Taken::from(&path).unwrap();
                let (conn, peer) = taken.listeners.data[0].accept().unwrap();
                drop(conn);
                (
                    taken.listeners.data.len(),
                    taken.listeners.admin.is_some(),
                    peer,
                )
            })
        };
        let (conn, _) = unix.accept().unwrap();
        let listeners = Listeners {
            data: vec![data],
            admin: Some(admin),
        };
        send_listeners(&conn, &listeners).unwrap();
        let (n, has_admin, peer) = taker.join().unwrap();
        assert_eq!((n, has_admin), (1, true));
        assert_eq!(peer, queued.local_addr().unwrap());
    }
}
