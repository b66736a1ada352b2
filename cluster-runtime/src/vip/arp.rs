//! Gratuitous ARP: tells the LAN that the VIP now lives at this MAC.
//!
//! Each round sends two broadcast frames, both with sender IP = target IP =
//! the VIP and sender MAC = the interface's MAC: an ARP *request*
//! (announcement, RFC 5227 §2.4, what `arping -U` sends) and an ARP *reply*
//! whose target MAC equals the sender MAC (what `arping -A` sends). Linux
//! treats both as gratuitous and overrides an existing neighbour entry even
//! inside its `locktime`; other stacks honour one or the other.
//!
//! Frames go out through an `AF_PACKET` socket opened for the burst and
//! closed right after (pnet's safe datalink API; no promiscuous mode).

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use pnet_datalink::{Channel, Config, MacAddr, NetworkInterface};

const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// One 42-byte Ethernet + ARP frame (the NIC pads it to 60).
pub(crate) fn frame(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP);
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target MAC: zero in a request (RFC 5227), ours in a reply (Linux
    // only takes a reply as gratuitous when it matches the sender's).
    if op == OP_REPLY {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends `rounds` request + reply pairs for `ip` out of `iface`. Blocking
/// (a few microseconds per frame); call from `spawn_blocking`.
pub(crate) fn send_burst(iface: &NetworkInterface, ip: Ipv4Addr, rounds: u32) -> io::Result<()> {
    let mac = match iface.mac {
        Some(m) if m != MacAddr::zero() => m.octets(),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "interface `{}` has no MAC address (gratuitous ARP needs an Ethernet-like interface)",
                    iface.name
                ),
            ))
        }
    };
    let config = Config {
        promiscuous: false,
        write_timeout: Some(Duration::from_secs(1)),
        read_timeout: Some(Duration::from_millis(1)),
        ..Config::default()
    };
    let mut tx = match pnet_datalink::channel(iface, config)? {
        Channel::Ethernet(tx, _rx) => tx,
        _ => {
            return Err(io::Error::other(
                "the datalink channel is not an Ethernet channel",
            ))
        }
    };
    for _ in 0..rounds {
        for op in [OP_REQUEST, OP_REPLY] {
            let f = frame(mac, ip, op);
            tx.send_to(&f, None)
                .unwrap_or_else(|| Err(io::Error::other("the datalink channel sent nothing")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_frames() {
        let mac = [2, 0, 0, 0, 0, 7];
        let ip = Ipv4Addr::new(10, 77, 1, 100);
        let req = frame(mac, ip, OP_REQUEST);
        assert_eq!(&req[0..6], &[0xff; 6], "broadcast destination");
        assert_eq!(&req[6..12], &mac, "source MAC");
        assert_eq!(&req[12..14], &[0x08, 0x06], "ARP ethertype");
        assert_eq!(&req[20..22], &[0, 1], "request");
        assert_eq!(&req[22..28], &mac, "sender MAC");
        assert_eq!(&req[28..32], &ip.octets(), "sender IP = VIP");
        assert_eq!(&req[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&req[38..42], &ip.octets(), "target IP = VIP");
        let rep = frame(mac, ip, OP_REPLY);
        assert_eq!(&rep[20..22], &[0, 2], "reply");
        assert_eq!(&rep[32..38], &mac, "target MAC = sender MAC");
    }
}
