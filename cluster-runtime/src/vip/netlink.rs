//! Adding and removing the VIP over rtnetlink (`ip addr add|del`).
//!
//! One short-lived netlink connection per call: a VIP changes hands rarely,
//! and a fresh socket never carries state from an earlier failure.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nix::errno::Errno;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::{AddressMessageBuilder, Handle};

/// What an add found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// The address was added now.
    New,
    /// The address was already on the interface (`EEXIST`).
    Existing,
}

/// Opens a netlink route socket and drives it on the current runtime.
fn connect() -> io::Result<Handle> {
    let (connection, handle, _messages) = rtnetlink::new_connection()?;
    // The connection future ends once every handle is dropped.
    tokio::spawn(connection);
    Ok(handle)
}

/// The `RTM_NEWADDR`/`RTM_DELADDR` message for `addr/prefix` on `index`.
fn message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    match addr {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, prefix)
            .build(),
        IpAddr::V6(a) => {
            let mut m = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix)
                .build();
            // A moving VIP must be usable at once: skip duplicate address
            // detection (the previous holder has already let go), as
            // keepalived does.
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            m
        }
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Adds `addr/prefix` to interface `index`; an address already present is
/// not an error.
pub(crate) async fn add(index: u32, addr: IpAddr, prefix: u8) -> io::Result<Added> {
    let handle = connect()?;
    let mut req = handle.address().add(index, addr, prefix);
    *req.message_mut() = message(index, addr, prefix);
    match req.execute().await.map_err(to_io) {
        Ok(()) => Ok(Added::New),
        Err(e) if e.raw_os_error() == Some(Errno::EEXIST as i32) => Ok(Added::Existing),
        Err(e) => Err(e),
    }
}

/// Removes `addr/prefix` from interface `index`; returns `false` when it
/// was not there (or the interface is gone with it).
pub(crate) async fn del(index: u32, addr: IpAddr, prefix: u8) -> io::Result<bool> {
    let handle = connect()?;
    match handle
        .address()
        .del(message(index, addr, prefix))
        .execute()
        .await
        .map_err(to_io)
    {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The kernel's answers to deleting an address that is not there.
fn is_gone(e: &io::Error) -> bool {
    [Errno::EADDRNOTAVAIL, Errno::ENODEV, Errno::ENOENT]
        .iter()
        .any(|gone| e.raw_os_error() == Some(*gone as i32))
}
